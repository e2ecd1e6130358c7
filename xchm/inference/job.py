"""The job fingerprint of a prediction store: what decides its pixels, and how two differ.

:func:`xchm.predict_to_zarr` records :func:`job_fingerprint` when it lays a store
out and compares it on every restart; :func:`differences` says in words what
changed, for the ``ResumeError`` that refuses another job's store. What counts as
the same job is documented in ``docs/mosaics.md`` ("Same job").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xchm.storage import location

__all__ = ["job_fingerprint", "differences", "HEADER_BYTES"]


def job_fingerprint(
    obj: xr.DataArray | xr.Dataset,
    ds: xr.Dataset,
    model: Any,
    step: tuple[int, int],
    predict_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Return the fingerprint of predicting ``obj`` (dask-backed) into ``ds`` by regions."""
    model_digest, card = model_identity(
        model, predict_kwargs.get("weights"), predict_kwargs.get("backbone_weights")
    )
    bands = predict_kwargs.get("bands")
    source = {
        "input": input_identity(obj),
        "bands": band_selection(obj, card, bands),
        "nodata": nodata_value(obj, card, bands, predict_kwargs.get("nodata")),
    }
    return fingerprint(ds, model_digest, step, source)


def weights_digest(model: Any) -> str:
    """SHA-256 of a model object's parameters and buffers (its card digest misses them)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model: Any, weights: Any, backbone_weights: Any = None) -> tuple[str, Any]:
    """Return the model's digest (weights included) and its card."""
    from xchm.inference.runtime import spec_for

    if hasattr(model, "state_dict") and hasattr(model, "card"):
        return weights_digest(model), model.card
    spec, card = spec_for(model, weights=weights, backbone_weights=backbone_weights)
    return spec.digest, card


#: Bytes of an input file hashed into its identity (the header: size, layout, georeferencing).
HEADER_BYTES = 65536


#: GDAL's virtual file systems of object stores and the URL scheme of each.
_GDAL_SCHEMES = {"/vsis3/": "s3://", "/vsigs/": "gs://", "/vsiaz/": "az://"}


def source_url(source: str) -> str | None:
    """Return the URL of an input read from an object store or over HTTP, else None.

    ``source`` is what xarray/rioxarray record in ``encoding["source"]``: a URL as
    given (``s3://b/k.tif``), or GDAL's name of it (``/vsis3/b/k.tif``,
    ``/vsicurl/https://host/k.tif``). Local paths and ``file://`` URLs give None.

    Examples
    --------
    >>> source_url("/vsis3/imagery/ak//a.tif"), source_url("/vsicurl/https://h/a.tif")
    ('s3://imagery/ak//a.tif', 'https://h/a.tif')
    >>> source_url("/data/a.tif") is None, source_url("file:///data/a.tif") is None
    (True, True)
    """
    text = str(source)
    for prefix, scheme in _GDAL_SCHEMES.items():
        if text.startswith(prefix):
            return scheme + text[len(prefix) :]
    if text.startswith("/vsicurl/"):
        text = text[len("/vsicurl/") :]
    try:
        loc = location(text)
    except ValueError:  # InputError: a scheme xchm does not read (zip://...): a name only
        return None
    return None if loc.is_local or not loc.is_url else loc.text


def url_identity(source: str, url: str) -> dict[str, Any]:
    """Name, size, ETag and modification time of an object or HTTP file (no download).

    One metadata request (fsspec's ``info``: a HEAD on S3 and HTTP). The ETag changes
    with the content (a replaced object gets another one, even with the same size and
    time). Where the store cannot be asked (no access, no backend package), the name is
    all that is recorded, as for a file that is gone.
    """
    identity: dict[str, Any] = {"path": str(source)}
    try:
        fs, path = location(url).filesystem()
        fs.invalidate_cache(path)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - unreachable store: the name only (see docstring)
        return identity
    if info.get("size") is not None:
        identity["size"] = int(info["size"])
    for key, names in (
        ("etag", ("ETag", "etag", "md5Hash", "Content-MD5", "generation")),
        ("modified", ("LastModified", "last_modified", "Last-Modified", "updated", "mtime")),
    ):
        value = next((info[n] for n in names if info.get(n) is not None), None)
        if value is not None:
            identity[key] = str(value)
    return identity


def file_identity(source: str) -> dict[str, Any]:
    """Identify one input file (or folder): what a replaced file changes.

    A local file: resolved path, size, modification time and the SHA-256 of its first
    :data:`HEADER_BYTES`. A file read from a URL (``s3://``, ``/vsis3/``,
    ``/vsicurl/https://``...): the source as given, size, ETag and modification time
    (:func:`url_identity`; nothing is downloaded).
    """
    url = source_url(str(source))
    if url is not None:
        return url_identity(str(source), url)
    if str(source).startswith("file://"):
        source = str(location(str(source)).path)
    path = Path(source).expanduser()
    try:
        path = path.resolve()
        stat = path.stat()
    except (OSError, RuntimeError):  # a URL or a path that is gone: the name is all we have
        return {"path": str(source)}
    identity: dict[str, Any] = {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    header = path / "zarr.json" if path.is_dir() else path
    try:
        with open(header, "rb") as f:
            identity["header_sha256"] = hashlib.sha256(f.read(HEADER_BYTES)).hexdigest()
    except OSError:
        pass
    return identity


def input_identity(obj: xr.DataArray | xr.Dataset) -> dict[str, Any]:
    """Describe what the input *is*: its files (if read from files) and its graph token.

    ``obj`` is dask-backed here. A Dask array's name is the token of its whole graph:
    files opened by rioxarray or xarray (or :func:`xchm.merge_scenes`, whose scenes
    are named in ``attrs["xchm_scenes"]``) are tokenized by the path as given,
    modification time and chunks; in-memory arrays by their content (xarray's
    ``.chunk`` hashes NumPy buffers); every operation on them adds its own token. So
    the same file opened the same way, or the same array chunked the same way, gives
    the same token in any process; other data, another file or another computation
    give another one. The token is strict: the same file opened through another
    spelling of its path (``"a.tif"``, ``Path("a.tif")``, ``"/data/a.tif"``) is
    another token, and a resume is refused rather than risk mixing two inputs. The
    files' own identity (resolved path, size, modification time, header digest)
    catches a file replaced under the same name and modification time, which the
    token misses, and names the files in a refusal. Files read from object stores or
    over HTTP are identified by URL, size, ETag and modification time instead.
    """
    arrays = {"": obj} if isinstance(obj, xr.DataArray) else dict(obj.data_vars)
    tokens = {str(k): [str(v.data.name), str(v.dtype)] for k, v in arrays.items()}
    sources = {str(s) for s in (obj.encoding.get("source"),) if s}
    sources |= {str(v.encoding["source"]) for v in arrays.values() if v.encoding.get("source")}
    scenes = obj.attrs.get("xchm_scenes", [])  # xchm.merge_scenes: the scenes' paths
    sources |= {
        str(s)
        for s in scenes
        if isinstance(s, str | os.PathLike) and (Path(s).is_file() or source_url(str(s)))
    }
    return {
        "files": [file_identity(s) for s in sorted(sources)],
        "data": hashlib.sha256(json.dumps(tokens, sort_keys=True).encode()).hexdigest(),
    }


def band_selection(obj: xr.DataArray | xr.Dataset, card: Any, bands: Any) -> list[str]:
    """Which input band feeds each model band, in words (``"nir=band 1 ('nir')"``)."""
    from xchm.inference.inputs import _labels, _match, spatial_dims
    from xchm.models.bands import normalize_band_name, parse_bands

    if isinstance(bands, str):  # the one-string syntax, as as_band_array reads it
        bands = parse_bands(bands)
    if isinstance(obj, xr.Dataset):  # as_band_array: a mapping, else variables by name
        pairs = bands.items() if isinstance(bands, Mapping) else ((v, v) for v in obj.data_vars)
        chosen = {normalize_band_name(str(k)): v for k, v in pairs}
        return [f"{b}=variable {chosen[b]!r}" for b in card.bands]
    ydim, xdim = spatial_dims(obj)
    (band_dim,) = [d for d in obj.dims if d not in (ydim, xdim)]
    labels = _labels(obj, band_dim)
    indices = _match(card, obj, band_dim, bands)
    return [f"{b}=band {i + 1} ({labels[i]!r})" for b, i in zip(card.bands, indices, strict=True)]


def nodata_value(obj: xr.DataArray | xr.Dataset, card: Any, bands: Any, nodata: Any) -> Any:
    """Return the nodata value predict will use (argument, else the input's), JSON-safe."""
    from xchm.inference.inputs import as_band_array
    from xchm.inference.predict import _nodata

    value = _nodata(as_band_array(obj, card, bands), nodata)
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)  # NaN, inf: not JSON numbers


def fingerprint(
    ds: xr.Dataset,
    model_digest: str,
    step: tuple[int, int],
    source: dict[str, Any],
) -> dict[str, Any]:
    """Describe what makes two runs the same job: input, model, grid, settings, layout."""
    chm = ds["chm"]
    crs = chm.rio.crs
    ydim, xdim = chm.dims
    coords = hashlib.sha256(
        np.ascontiguousarray(ds[ydim].values).tobytes()
        + np.ascontiguousarray(ds[xdim].values).tobytes()
    ).hexdigest()
    keys = ("xchm_card_digest", "xchm_window", "xchm_overlap", "xchm_model", "xchm_precision")
    fingerprint = {
        **source,
        "model_digest": model_digest,
        **{k.removeprefix("xchm_"): chm.attrs.get(k) for k in keys},
        "variables": sorted(str(v) for v in ds.data_vars),
        "dims": [str(ydim), str(xdim)],
        "shape": list(chm.shape),
        "chunks": [chm.data.chunks[0][0], chm.data.chunks[1][0]],
        "region": list(step),
        "coords_sha256": coords,
        "crs": crs.to_wkt() if crs is not None else None,
    }
    return json.loads(json.dumps(fingerprint))  # as stored (lists, plain numbers)


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "x".join(_show(v) for v in value) if value else "[]"
    return str(value)


def _input_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Say in words how the input of a resume differs from the store's."""
    old_paths = [f.get("path") for f in old.get("files", [])]
    new_paths = [f.get("path") for f in new.get("files", [])]
    if old_paths != new_paths:
        return (
            f"the input data differ: input file(s) {', '.join(old_paths) or '(none: an array)'}"
            f" -> {', '.join(new_paths) or '(none: an array)'}"
        )
    if old.get("files") != new.get("files"):
        pairs = zip(old.get("files", []), new.get("files", []), strict=True)
        changed = [b.get("path") for a, b in pairs if a != b]
        return (
            f"the input data differ: {', '.join(changed)} changed since the store was "
            "started (size, modification time, header or ETag)"
        )
    if new_paths:
        return (
            "the input data differ: same file(s), but opened another way (other chunks, or "
            "another spelling of the path: 'a.tif', Path('a.tif') and '/data/a.tif' count as "
            "different) or computed differently; open it exactly as in the first run"
        )
    return "the input data differ (another array, or the same one chunked or computed differently)"


#: How each fingerprint entry is named in a refusal.
_NAMES = {
    "bands": "bands",
    "nodata": "nodata",
    "model": "model preset",
    "window": "window",
    "overlap": "overlap",
    "variables": "layers",
    "dims": "dimensions",
    "shape": "grid size",
    "chunks": "chunks",
    "region": "region size",
    "precision": "precision",
}

#: Entries a store laid out by an older xchm lacks, and the value its chunks were made with.
#: ``precision``: before ``precision=`` existed predict ran what "auto" runs now (bf16
#: on CUDA, fp32 on the CPU; the one exception is a CPU with native bf16, fp32 then,
#: bf16 under "auto" now), so such a store resumes with the default and only then.
_BEFORE = {"precision": "auto"}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """List what differs between a store's fingerprint and this call's, in plain words."""
    if "input" not in old:
        return [
            "the store was started by an older xchm that did not record its input, so a "
            "resume cannot be checked"
        ]
    old = {**_BEFORE, **old}
    found: list[str] = []
    if old["input"] != new["input"]:
        found.append(_input_change(old["input"], new["input"]))
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "input" or a == b:
            continue
        if key == "bands":
            found.append(f"bands: {', '.join(a or [])} -> {', '.join(b or [])}")
        elif key in _NAMES:
            found.append(f"{_NAMES[key]}: {_show(a)} -> {_show(b)}")
        elif key in ("model_digest", "card_digest"):
            if "the model or its weights differ" not in found:
                found.append("the model or its weights differ")
        elif key == "coords_sha256":
            found.append("the x/y coordinates differ (another area or pixel grid)")
        elif key == "crs":
            found.append("the CRS differs")
        else:
            found.append(f"{key} differs")
    return found
