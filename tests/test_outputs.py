"""The output rule: new, empty or xchm's own folder; nothing of the user's touched."""

from __future__ import annotations

import inspect
import os
import re

import pytest

from xchm.errors import OutputError, OutputExistsError
from xchm.outputs import (
    MARKER,
    output_kind,
    prepare_output_dir,
    prepare_output_file,
    upload_file,
    write_atomic,
)


def test_prepare_output_dir__new_folder_is_created_and_marked(tmp_path):
    out = tmp_path / "a" / "run"
    assert prepare_output_dir(out, "training run") is False
    assert output_kind(out) == "training run"


def test_prepare_output_dir__empty_folder_is_taken(tmp_path):
    assert prepare_output_dir(tmp_path, "chip cube") is False
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_prepare_output_dir__foreign_folder_is_never_touched(tmp_path, overwrite):
    (tmp_path / "config.json").write_text('{"mine": 1}')
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        prepare_output_dir(tmp_path, "training run", overwrite=overwrite, exist_ok=True)
    assert (tmp_path / "config.json").read_text() == '{"mine": 1}'
    assert not (tmp_path / MARKER).exists()


def test_prepare_output_dir__other_kind_is_refused_even_with_overwrite(tmp_path):
    prepare_output_dir(tmp_path, "chip cube")
    (tmp_path / "zarr.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="holds an xchm chip cube, not a training run"):
        prepare_output_dir(tmp_path, "training run", overwrite=True)
    assert (tmp_path / "zarr.json").exists()


def test_prepare_output_dir__same_kind_needs_overwrite_or_exist_ok(tmp_path):
    prepare_output_dir(tmp_path, "demo")
    (tmp_path / "chm.tif").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="holds an xchm demo"):
        prepare_output_dir(tmp_path, "demo")
    assert prepare_output_dir(tmp_path, "demo", exist_ok=True) is True
    assert (tmp_path / "chm.tif").exists()
    assert prepare_output_dir(tmp_path, "demo", overwrite=True) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]


def test_prepare_output_dir__legacy_output_is_recognised_and_marked(tmp_path):
    (tmp_path / "zarr.json").write_text("{}")
    legacy = lambda p: (p / "zarr.json").exists()  # noqa: E731
    assert prepare_output_dir(tmp_path, "chip cube", exist_ok=True, legacy=legacy) is True
    assert output_kind(tmp_path) == "chip cube"


def test_prepare_output_dir__a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_output_dir(tmp_path / "f", "chip cube", overwrite=True)
    assert (tmp_path / "f").read_text() == "mine"


def test_prepare_output_dir__uncreatable_folder_is_an_output_error(tmp_path):
    (tmp_path / "f").write_text("mine")  # a file where a parent folder should be
    with pytest.raises(OutputError, match="cannot create"):
        prepare_output_dir(tmp_path / "f" / "run", "training run")


def test_prepare_output_file__rules(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        prepare_output_file(tmp_path / "no" / "o.tif")
    (tmp_path / "o.tif").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="exists"):
        prepare_output_file(tmp_path / "o.tif")
    assert prepare_output_file(tmp_path / "o.tif", overwrite=True) == tmp_path / "o.tif"
    with pytest.raises(OutputExistsError, match="is a folder"):
        prepare_output_file(tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="must end in"):
        prepare_output_file(tmp_path / "o.png", suffixes=(".tif", ".tiff"))


def test_prepare_output_dir__marker_only_counts_as_empty(tmp_path):
    prepare_output_dir(tmp_path, "report")
    assert prepare_output_dir(tmp_path, "report") is False
    with pytest.raises(OutputExistsError, match="not a chip cube"):
        prepare_output_dir(tmp_path, "chip cube")


def test_write_atomic__a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_atomic__owner_only_writers_get_normal_permissions(tmp_path):
    def private(tmp):
        tmp.write_text("x")
        tmp.chmod(0o600)  # as safetensors creates its files

    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "w", private)
    finally:
        os.umask(mask)
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o644


# -- the same rule on an object store (a real S3 server: tests/servers.py) -------------


def test_prepare_output_dir_s3__new_prefix_is_marked_and_named_as_typed(s3):
    url = f"{s3.url}/runs//a/run"  # keys keep their //
    assert prepare_output_dir(url, "training run") is False
    assert s3.get("runs//a/run/" + MARKER).startswith(b'{"kind": "training run"')
    assert output_kind(url) == "training run"
    assert prepare_output_dir(url, "training run") is False  # only its marker: still empty
    s3.put("runs//a/run/metrics.csv", b"epoch\n")
    with pytest.raises(OutputExistsError, match=f"^{re.escape(url)} holds an xchm training run"):
        prepare_output_dir(url, "training run")
    assert prepare_output_dir(url, "training run", exist_ok=True) is True


@pytest.mark.parametrize("overwrite", [False, True])
def test_prepare_output_dir_s3__foreign_prefix_is_never_touched(s3, overwrite):
    s3.put("data/config.json", b'{"mine": 1}')
    s3.put("data/sub/deep.bin", b"deep")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/data is not empty and was not"):
        prepare_output_dir(f"{s3.url}/data", "chip cube", overwrite=overwrite, exist_ok=True)
    assert s3.get("data/config.json") == b'{"mine": 1}' and s3.get("data/sub/deep.bin") == b"deep"
    with pytest.raises(Exception, match="NoSuchKey|does not exist"):
        s3.get("data/" + MARKER)


def test_prepare_output_dir_s3__overwrite_replaces_only_the_same_kind(s3):
    prepare_output_dir(f"{s3.url}/cube", "chip cube")
    s3.put("cube/zarr.json", b"{}")
    with pytest.raises(OutputExistsError, match="holds an xchm chip cube, not a training run"):
        prepare_output_dir(f"{s3.url}/cube", "training run", overwrite=True)
    assert s3.get("cube/zarr.json") == b"{}"
    prepare_output_dir(f"{s3.url}/demo", "demo")
    s3.put("demo/chm.tif", b"x")
    s3.put("demo/sub/a.bin", b"a")
    assert prepare_output_dir(f"{s3.url}/demo", "demo", overwrite=True) is False
    from xchm.storage import location

    assert location(f"{s3.url}/demo").listdir() == [MARKER]


def test_prepare_output_dir_s3__legacy_test_gets_the_location(s3):
    s3.put("old/zarr.json", b"{}")
    seen = []

    def legacy(place):
        seen.append(place)
        return place.join("zarr.json").exists()

    assert prepare_output_dir(f"{s3.url}/old", "chip cube", exist_ok=True, legacy=legacy) is True
    assert [str(p) for p in seen] == [f"{s3.url}/old"]
    assert output_kind(f"{s3.url}/old") == "chip cube"


def test_prepare_output_file_s3__rules(s3):
    with pytest.raises(OutputError, match="its bucket s3://no-such-bucket does not exist"):
        prepare_output_file("s3://no-such-bucket/o.tif")
    assert str(prepare_output_file(f"{s3.url}/a//o.tif")) == f"{s3.url}/a//o.tif"
    s3.put("o.tif", b"x")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/o.tif exists"):
        prepare_output_file(f"{s3.url}/o.tif")
    prepare_output_file(f"{s3.url}/o.tif", overwrite=True)
    s3.put("d.tif/inside", b"x")
    with pytest.raises(OutputExistsError, match="is a folder"):
        prepare_output_file(f"{s3.url}/d.tif", overwrite=True)
    with pytest.raises(OutputError, match="must end in"):
        prepare_output_file(f"{s3.url}/o.png", suffixes=(".tif", ".tiff"))


def test_upload_file__whole_or_refused(s3, tmp_path):
    staged = tmp_path / "staged.bin"
    staged.write_bytes(b"z" * 3000)
    upload_file(staged, f"{s3.url}/u.bin")
    assert s3.get("u.bin") == b"z" * 3000
    with pytest.raises(OutputExistsError, match="u.bin exists"):
        upload_file(staged, f"{s3.url}/u.bin")
    with pytest.raises(OutputError, match="'s3://no-such-bucket/u.bin'"):
        upload_file(staged, "s3://no-such-bucket/u.bin")
    upload_file(staged, tmp_path / "copy.bin")  # locally: a copy renamed into place
    assert (tmp_path / "copy.bin").read_bytes() == b"z" * 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "staged.bin"]


def test_write_atomic__is_the_storage_layers_atomic_write(tmp_path, monkeypatch):
    """One implementation: outputs.write_atomic goes through storage's atomic write."""
    import xchm.outputs
    from xchm.storage import disk

    calls = []
    real = disk.atomic_write

    def spy(path, data):
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(xchm.outputs, "atomic_write", spy)
    write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("a"))
    assert calls == [tmp_path / "a.txt"] and (tmp_path / "a.txt").read_text() == "a"
    assert "os.replace" not in inspect.getsource(xchm.outputs)


def test_prepare_output_dir_s3__keys_after_a_double_slash_count_as_content(s3):
    """``data//x`` lies under ``data`` too: a prefix holding only such keys is not empty."""
    s3.put("data//mine.bin", b"mine")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/data is not empty and was not"):
        prepare_output_dir(f"{s3.url}/data", "chip cube")
    # An xchm output holding such keys is not cleared either: they are not xchm's.
    prepare_output_dir(f"{s3.url}/cube", "chip cube")
    s3.put("cube/zarr.json", b"{}")
    s3.put("cube//mine.bin", b"mine")
    with pytest.raises(OutputExistsError, match=f"holds keys beginning {s3.url}/cube//"):
        prepare_output_dir(f"{s3.url}/cube", "chip cube", overwrite=True)
    assert s3.get("cube/zarr.json") == b"{}" and s3.get("cube//mine.bin") == b"mine"
    # The empty "folder" object a console creates is no content.
    s3.put("console/", b"")
    assert prepare_output_dir(f"{s3.url}/console", "chip cube") is False
