"""One storage layer for every path xchm reads or writes: local paths and URLs.

A :class:`Location` is made by :func:`location` from a local path or a URL and is what
the rest of the package uses to test, list, read, write and remove files, to open zarr
v3 stores and to hand rasters to GDAL (rasterio, rioxarray). It prints back exactly
what the user typed (``s3://b/a//k`` stays ``s3://b/a//k``: object keys are strings,
and ``//`` in them is never collapsed).

Schemes
-------
- local paths and ``file://`` URLs: the local disk (writes of :meth:`Location.write_bytes`
  are atomic: a temporary file in the same folder, then a rename);
- ``s3://`` (and ``s3a://``): Amazon S3 or an S3-compatible store (MinIO, Ceph...)
  through s3fs;
- ``gs://`` / ``gcs://``: Google Cloud Storage through gcsfs (``pip install 'xchm[gcs]'``);
- ``az://``, ``abfs://``, ``abfss://``: Azure Blob Storage through adlfs
  (``pip install 'xchm[azure]'``);
- ``http://`` / ``https://``: read only (range requests), through fsspec's HTTP
  filesystem and GDAL's ``/vsicurl/``;
- ``memory://``: fsspec's in-process memory filesystem (tests, scratch).

Credentials and endpoints come from the standard environment of each backend, read
in the process that does the work (so a Dask worker uses its own environment, never
the client's): for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an on-premises store); for Google
``GOOGLE_APPLICATION_CREDENTIALS``; for Azure ``AZURE_STORAGE_CONNECTION_STRING`` or
``AZURE_STORAGE_ACCOUNT`` + ``AZURE_STORAGE_KEY``/``AZURE_STORAGE_SAS_TOKEN``. The
``storage_options=`` of :func:`location` (fsspec's options of that backend: ``key``,
``secret``, ``endpoint_url``, ``anon``...) override the environment; they travel with
the :class:`Location`, so they are pickled into Dask graphs: prefer the environment
for secrets on a cluster.

GDAL does not read ``AWS_ENDPOINT_URL``: :meth:`Location.gdal_options` and
:func:`gdal_env` translate it (and the ``storage_options``) into GDAL's configuration
(``AWS_S3_ENDPOINT``, ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``...).

Zarr stores are zarr v3's ``LocalStore`` on the local disk and ``FsspecStore``
elsewhere. Files named by URL and a SHA-256 (checkpoints) are fetched once per
machine into a cache keyed by the digest with :func:`fetch_cached`.

Modules
-------
- :mod:`xchm.storage.schemes`: the schemes, their backends, GDAL's prefixes, the S3
  endpoint of the environment, which exceptions are storage failures;
- :mod:`xchm.storage.address`: what a path or URL is, and how fsspec and GDAL reach it
  (the base of :class:`Location`);
- :mod:`xchm.storage.location`: :class:`Location` (files, zarr stores) and
  :func:`location`;
- :mod:`xchm.storage.gdal`: :func:`gdal_env` and :func:`gdal_environment`;
- :mod:`xchm.storage.cache`: :func:`fetch_cached`, :func:`fetch_version` and
  :func:`default_cache_dir`;
- :mod:`xchm.storage.disk`: atomic writes, synced folders and locks on the local disk.

Import from ``xchm.storage`` itself; the modules are its implementation.
"""

from xchm.storage.cache import default_cache_dir, fetch_cached, fetch_version
from xchm.storage.gdal import gdal_env, gdal_environment
from xchm.storage.location import Location, PathOrURL, location
from xchm.storage.schemes import SCHEMES

__all__ = [
    "Location",
    "location",
    "gdal_env",
    "gdal_environment",
    "fetch_cached",
    "fetch_version",
    "default_cache_dir",
    "PathOrURL",
    "SCHEMES",
]
