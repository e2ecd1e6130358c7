"""Chip cubes on a real S3 server (moto on 127.0.0.1, over HTTP): build, open, refuse.

Every guarantee the local tests prove for a cube folder is proved here for an S3
prefix: a cube built into the store holds the same objects, byte for byte, as the same
build on disk (and ``xchm.chips.open`` reads the same chips back); scenes may be URLs
themselves; a prefix xchm did not write is refused with its objects untouched;
``overwrite`` replaces a previous cube and nothing else; an interrupted build is never
taken for a cube; a missing URL is named exactly as typed. No mocks: s3fs, botocore and
GDAL talk HTTP to the server.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

import xchm.chips
from tests import servers
from tests.chips.conftest import make_pair, write_pair
from xchm.chips import writer as writer_module
from xchm.chips.layout import CHIP_ARRAYS
from xchm.errors import InputError, OutputExistsError, PathNotFoundError
from xchm.outputs import MARKER
from xchm.storage import location

# Most scenes here are one split block, so their cubes hold one split; the build's
# warning about the other is what test_splits.py checks.
pytestmark = pytest.mark.filterwarnings("ignore:split .* has no chip:xchm.errors.XCHMWarning")

BANDS = ("nir", "red", "green")
#: Attrs that differ between two builds of the same chips (the clock, the place).
_VOLATILE = ("created",)


def objects(s3, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` of the test's bucket, by key relative to it."""
    client = s3.server.client()
    found: dict[str, bytes] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) + 1 :]] = s3.get(obj["Key"])
    return dict(sorted(found.items()))


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by path relative to it."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def stable_attrs(data: bytes) -> dict:
    """A root ``zarr.json``'s attributes without what differs from build to build."""
    attrs = json.loads(data)["attributes"]
    for key in _VOLATILE:
        attrs["provenance"].pop(key)
    return attrs


def same_chips(a: xchm.chips.ChipCube, b: xchm.chips.ChipCube) -> None:
    assert len(a) == len(b) and a.bands == b.bands and a.statistics == b.statistics
    np.testing.assert_array_equal(a.image[...], b.image[...])
    if a.labeled:
        np.testing.assert_array_equal(a.height[...], b.height[...])  # NaN == NaN here
    for name in CHIP_ARRAYS:
        np.testing.assert_array_equal(a.coord(name), b.coord(name))


def build(pairs, output, **kwargs):
    kwargs.setdefault("bands", BANDS)
    kwargs.setdefault("progress", False)
    return xchm.chips.build(pairs, output, **kwargs)


@pytest.fixture
def pair_files(tmp_path):
    image, chm = make_pair()
    return write_pair(tmp_path / "src", image, chm)


# -- the same cube as on disk ----------------------------------------------------------------
def test_build_s3__objects_equal_the_local_build_byte_for_byte(s3, tmp_path, pair_files):
    local = build([pair_files], tmp_path / "cube.zarr")
    url = f"{s3.url}/chips//ak.zarr"  # '//' is part of the key, never collapsed
    remote = build([pair_files], url)
    assert str(remote.path) == url and remote.location.is_url

    on_disk, in_store = files(tmp_path / "cube.zarr"), objects(s3, "chips//ak.zarr")
    # Same keys (no staging arrays, no marker left), same bytes but for the build time.
    assert list(in_store) == list(on_disk)
    assert MARKER not in in_store and not any(k.startswith("_staging") for k in in_store)
    assert {k: v for k, v in in_store.items() if k != "zarr.json"} == {
        k: v for k, v in on_disk.items() if k != "zarr.json"
    }
    assert stable_attrs(in_store["zarr.json"]) == stable_attrs(on_disk["zarr.json"])

    opened = xchm.chips.open(url)
    same_chips(opened, local)
    assert repr(opened).startswith(f"<ChipCube {url!r}")
    assert opened.read([3, 0])[0].tobytes() == local.read([3, 0])[0].tobytes()
    servers.close_s3_clients()


def test_build_s3__scenes_by_url_give_the_chips_of_local_files(s3, tmp_path, pair_files):
    image, chm = pair_files
    s3.put(f"scenes/a//{image.name}", image.read_bytes())
    s3.put(f"scenes/a//{chm.name}", chm.read_bytes())
    urls = (f"{s3.url}/scenes/a//{image.name}", f"{s3.url}/scenes/a//{chm.name}")
    local = build([pair_files], tmp_path / "cube.zarr")
    remote = build([urls], f"{s3.url}/cube.zarr")
    same_chips(remote, local)
    inputs = remote.attrs["provenance"]["inputs"][0]
    assert (inputs["image"], inputs["chm"], inputs["scene"]) == (*urls, "scene_image")
    with pytest.raises(PathNotFoundError, match=f"no such file: '{s3.url}/scenes/a//nope.tif'"):
        build([(f"{s3.url}/scenes/a//nope.tif", urls[1])], f"{s3.url}/other.zarr")
    assert objects(s3, "other.zarr") == {}
    servers.close_s3_clients()


def test_build_s3__with_storage_options_instead_of_the_environment(
    s3, tmp_path, pair_files, monkeypatch
):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the options know where the store is
    options = {"endpoint_url": s3.server.endpoint_url}
    cube = build([pair_files], f"{s3.url}/cube.zarr", storage_options=options)
    same_chips(cube, build([pair_files], tmp_path / "cube.zarr"))
    same_chips(xchm.chips.open(f"{s3.url}/cube.zarr", storage_options=options), cube)
    assert cube.location.storage_options == options
    servers.close_s3_clients()


def test_from_directories_s3__equals_the_local_import(s3, tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        np.save(images / f"chip{i}.npy", rng.uniform(0, 1, (3, 16, 16)).astype("float32"))
        np.save(labels / f"chip{i}.npy", rng.uniform(1, 20, (1, 16, 16)).astype("float32"))
    kwargs = {"bands": BANDS, "split_by": "random", "progress": False}
    local = xchm.chips.from_directories(images, labels, tmp_path / "c.zarr", **kwargs)
    remote = xchm.chips.from_directories(images, labels, f"{s3.url}/c.zarr", **kwargs)
    same_chips(xchm.chips.open(f"{s3.url}/c.zarr"), local)
    assert remote.attrs["provenance"]["created_by"] == "xchm.chips.from_directories"
    servers.close_s3_clients()


def test_from_hf_dataset_s3__equals_the_local_import(s3, tmp_path):
    pytest.importorskip("datasets")
    from tests.chips.test_importers import hf_rows, import_hf, save_hf

    path = save_hf(tmp_path / "hf", train=hf_rows(6), validation=hf_rows(3, seed=1))
    local = import_hf(path, tmp_path / "c.zarr", split_by="source")
    import_hf(path, f"{s3.url}/hf//c.zarr", split_by="source")
    same_chips(xchm.chips.open(f"{s3.url}/hf//c.zarr"), local)
    servers.close_s3_clients()


def test_preview_s3__writes_the_same_png_as_on_disk(s3, tmp_path, pair_files):
    cube = build([pair_files], f"{s3.url}/cube.zarr")
    local = cube.preview(tmp_path / "p.png", n=4)
    written = cube.preview(f"{s3.url}/previews//p.png", n=4)
    assert str(written) == f"{s3.url}/previews//p.png"
    assert s3.get("previews//p.png") == local.read_bytes()
    with pytest.raises(OutputExistsError, match=f"{s3.url}/previews//p.png exists"):
        cube.preview(f"{s3.url}/previews//p.png", n=4)
    from PIL import Image

    with Image.open(io.BytesIO(s3.get("previews//p.png"))) as png:
        assert png.format == "PNG" and png.size[0] > 0
    servers.close_s3_clients()


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_build_s3__refuses_a_prefix_xchm_did_not_write_and_touches_nothing(
    s3, pair_files, overwrite
):
    group = zarr.open_group(location(f"{s3.url}/mine.zarr").zarr_store(), mode="w")
    group.attrs["project"] = "my survey"
    group.create_array("heights", shape=(4,), dtype="float32")[:] = [1, 2, 3, 4]
    s3.put("mine.zarr/notes.txt", b"keep me")
    before = objects(s3, "mine.zarr")
    with pytest.raises(OutputExistsError, match="not written by xchm; nothing in it is touched"):
        build([pair_files], f"{s3.url}/mine.zarr", overwrite=overwrite)
    assert objects(s3, "mine.zarr") == before
    servers.close_s3_clients()


def test_from_directories_s3__refuses_a_foreign_prefix_before_reading(s3, tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("chips were read before the store was checked")

    monkeypatch.setattr("xchm.chips.importers._read_header", no_reading)
    s3.put("mine/data.bin", b"\x00\x01")
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        xchm.chips.from_directories(
            tmp_path, tmp_path, f"{s3.url}/mine", bands=BANDS, overwrite=True, progress=False
        )
    assert objects(s3, "mine") == {"data.bin": b"\x00\x01"}


def test_build_s3__overwrite_replaces_a_previous_cube_and_nothing_else(s3, tmp_path, pair_files):
    url = f"{s3.url}/cube.zarr"
    s3.put("cube.zarr.txt", b"a neighbour with the same prefix")
    first = build([pair_files], url, window=32)
    assert first.window == 32
    with pytest.raises(OutputExistsError, match=f"{url} holds an xchm chip cube; pass overwrite"):
        build([pair_files], url)
    second = build([pair_files], url, window=64, overwrite=True)
    assert second.window == 64 and len(second) == 30
    fresh = build([pair_files], tmp_path / "fresh.zarr", window=64)
    # Nothing of the first cube is left (its 32 px arrays had other chunk objects).
    assert list(objects(s3, "cube.zarr")) == list(files(tmp_path / "fresh.zarr"))
    same_chips(xchm.chips.open(url), fresh)
    assert s3.get("cube.zarr.txt") == b"a neighbour with the same prefix"
    servers.close_s3_clients()


def test_build_s3__an_interrupted_build_is_never_a_cube_and_is_redone(s3, pair_files, monkeypatch):
    url = f"{s3.url}/cube.zarr"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(writer_module.ChipWriter, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            build([pair_files], url)
    assert MARKER in objects(s3, "cube.zarr")
    with pytest.raises(InputError, match=f"chip cube {url} is incomplete"):
        xchm.chips.open(url)
    with pytest.raises(OutputExistsError, match="did not finish"):
        build([pair_files], url)
    assert len(build([pair_files], url, overwrite=True)) == 30
    assert MARKER not in objects(s3, "cube.zarr")
    servers.close_s3_clients()


# -- names -------------------------------------------------------------------------------------
def test_open_s3__a_missing_cube_is_named_exactly_as_typed(s3):
    url = f"{s3.url}/a//k.zarr"
    with pytest.raises(PathNotFoundError) as err:
        xchm.chips.open(url)
    assert f"no Zarr store at {url}: " in str(err.value)
    s3.put("a/k.zarr/zarr.json", b"{}")  # 'a/k' is another key than 'a//k'
    with pytest.raises(PathNotFoundError, match=f"no Zarr store at {url}: "):
        xchm.chips.open(url)
    s3.put("user.zarr/zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    with pytest.raises(InputError, match=f"{s3.url}/user.zarr is not an xchm chip cube"):
        xchm.chips.open(f"{s3.url}/user.zarr")
    servers.close_s3_clients()


def test_cli_s3__chips_build_info_preview_by_url(s3, tmp_path, pair_files, capsys):
    from xchm.cli import main

    image, chm = pair_files
    s3.put(f"scenes/{image.name}", image.read_bytes())
    s3.put(f"scenes/{chm.name}", chm.read_bytes())
    url = f"{s3.url}/cli//cube.zarr"
    scenes = [f"{s3.url}/scenes/{image.name}", f"{s3.url}/scenes/{chm.name}"]
    args = ["chips", "build", "-o", url, "--pair", *scenes, "--bands", *BANDS, "-q"]
    assert main(args) == 0
    assert f"chip cube   {url}" in capsys.readouterr().out  # the summary, URL as typed
    same_chips(xchm.chips.open(url), build([pair_files], tmp_path / "cube.zarr"))
    assert main(["chips", "info", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == url
    assert main(["chips", "preview", url, "-o", f"{s3.url}/p.png", "--n", "4"]) == 0
    assert s3.get("p.png").startswith(b"\x89PNG")
    servers.close_s3_clients()


def test_cli_s3__images_and_csv_cells_may_be_urls(s3, tmp_path, pair_files):
    """`--image URL` and URL cells of --pairs-csv are kept as typed (no s3:/ collapse)."""
    from xchm.cli import main

    image, chm = pair_files
    s3.put(f"scenes//{image.name}", image.read_bytes())
    s3.put(f"scenes//{chm.name}", chm.read_bytes())
    image_url, chm_url = f"{s3.url}/scenes//{image.name}", f"{s3.url}/scenes//{chm.name}"
    unlabeled = tmp_path / "images.zarr"
    args = ["chips", "build", "-o", str(unlabeled), "--image", image_url, "--bands", *BANDS]
    assert main([*args, "-q"]) == 0
    assert not xchm.chips.open(unlabeled).labeled
    table = tmp_path / "pairs.csv"
    table.write_text(f"image,chm\n{image_url},{chm_url}\n")
    labeled = tmp_path / "pairs.zarr"
    args = ["chips", "build", "-o", str(labeled), "--pairs-csv", str(table), "--bands", *BANDS]
    assert main([*args, "-q"]) == 0
    same_chips(xchm.chips.open(labeled), build([pair_files], tmp_path / "local.zarr"))
    servers.close_s3_clients()
