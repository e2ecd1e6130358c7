"""STAC: search a catalog for scenes, load them lazily, and describe the predicted map.

::

    import xchm, xchm.stac

    items = xchm.stac.search((-72.20, 42.52, -72.16, 42.55), collections="naip",
                             years=range(2018, 2024), catalog=URL,
                             missing_cloud_cover="keep")
    image = xchm.stac.load(items, resolution=2.0)     # (band, y, x), lazy, CRS + nodata
    chm = xchm.predict(image, "my-checkpoint/")       # lazy canopy height map
    xchm.write_cog(chm, "chm.tif")
    item = xchm.stac.item_for(chm, href="https://.../chm.tif", items=items)

:func:`search` is built on pystac-client, :func:`load` on odc-stac; both are imported
only when called (``pip install 'xchm[stac]'``), so ``import xchm.stac`` is light and
``import xchm`` does not import this package at all. See ``docs/stac.md``.

Layering: stac may import :mod:`xchm.models` (band names), :mod:`xchm.inference` and
the leaf utilities (:mod:`xchm.errors`, :mod:`xchm.storage`); never chips, training,
evaluation, pretraining or the command line.

Layout: ``search.py`` (requests, retries, cloud cover, overflow), ``dates.py``
(datetime parsing, per-year month windows), ``checks.py`` (search arguments),
``bands.py`` (which asset and band is nir, red, ...), ``load.py`` (odc-stac, CRS and
pixel-budget guards, date mosaic), ``publish.py`` (the output's STAC Item),
``_common.py`` (bbox, items, times). ``xchm predict --stac`` is :mod:`xchm.cli.stac`.
"""

from xchm.stac.load import load
from xchm.stac.publish import item_for
from xchm.stac.search import search

__all__ = ["item_for", "load", "search"]
