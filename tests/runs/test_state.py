"""Training state helpers: atomic saves of model directories, the job fingerprint."""

import pytest

import xchm
import xchm.chips
from xchm.runs.job import differences, fingerprint, source_identity
from xchm.runs.state import save_model_dir


def test_save_model_dir__replaces_an_earlier_save(tmp_path):
    dest = tmp_path / "best"
    save_model_dir(xchm.load_model("test-tiny", seed=0), dest)
    second = xchm.load_model("test-tiny", seed=1)
    save_model_dir(second, dest)
    loaded = xchm.load_model(dest).state_dict()
    assert all((loaded[k] == v).all() for k, v in second.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dirs left


def test_save_model_dir__a_failed_save_keeps_the_previous_one(tmp_path):
    dest = tmp_path / "best"
    first = xchm.load_model("test-tiny", seed=0)
    save_model_dir(first, dest)

    class Failing:
        def save(self, path):
            path.mkdir()
            (path / "partial").write_text("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_dir(Failing(), dest)
    loaded = xchm.load_model(dest).state_dict()
    assert all((loaded[k] == v).all() for k, v in first.state_dict().items())


# -- the job fingerprint that resume checks -----------------------------------------------
@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    from ..training.test_trainer import _learnable_scene

    img, chm = _learnable_scene(256)
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="s")],
        tmp_path_factory.mktemp("c") / "c.zarr",
        bands=("nir", "red", "green"),
        block_size=1,
        progress=False,
    )


def test_differences__none_for_the_same_job(small_cube):
    assert differences(fingerprint(small_cube, "test-tiny", None, 1), _job(small_cube)) == []


def test_differences__names_another_selection_of_chips(small_cube):
    run = fingerprint(small_cube, "test-tiny", None, 1)
    now = fingerprint(small_cube.sel(split="train"), "test-tiny", None, 1)
    assert differences(run, now) == [
        f"cube: another selection of chips ({len(small_cube)} chips in the run, "
        f"{len(small_cube.sel(split='train'))} now)"
    ]


def test_differences__names_the_number_of_processes(small_cube):
    (found,) = differences(fingerprint(small_cube, "test-tiny", None, 4), _job(small_cube))
    assert found.startswith("world_size: the run used 4 processes, this call 1")
    assert "--nproc_per_node=4" in found


def test_differences__a_weights_file_changed_in_place_is_another_job(small_cube, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"a" * 3_000_000)
    run = fingerprint(small_cube, "test-tiny", weights, 1)
    weights.write_bytes(b"a" * 2_999_999 + b"b")  # same size, last byte differs
    assert differences(run, fingerprint(small_cube, "test-tiny", weights, 1)) == [
        f"weights: {weights} changed since the run started"
    ]


def test_source_identity__a_checkpoint_by_its_weights_digest(tmp_path):
    xchm.load_model("test-tiny", seed=0).save(tmp_path / "a")
    xchm.load_model("test-tiny", seed=1).save(tmp_path / "b")
    a, b = source_identity(tmp_path / "a"), source_identity(tmp_path / "b")
    assert a["checkpoint"] != b["checkpoint"] and len(a["checkpoint"]) == 64


def _job(cube):
    return fingerprint(cube, "test-tiny", None, 1)
