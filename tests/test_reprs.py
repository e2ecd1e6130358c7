"""Rich Jupyter displays (``_repr_html_``): compact tables, every piece of text escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import xchm.chips
from xchm._html import MAX_ROWS, html_grid, html_table
from xchm.evaluation import EvaluationResult
from xchm.evaluation.metrics import height_metrics
from xchm.models.card import BandStats, ModelCard
from xchm.pretraining import PretrainResult
from xchm.training import TrainResult

SCRIPT = "<script>alert(1)</script>"
#: The only elements the helper writes itself.
OWN_TAGS = {"div", "style", "span", "table", "tr", "th", "td"}


class _Reader(HTMLParser):
    """The elements and the text of an HTML string (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if not self._in_style:
            self.text.append(data)


def _read(markup: str) -> _Reader:
    reader = _Reader()
    reader.feed(markup)
    reader.close()
    return reader


def _safe(markup: str) -> _Reader:
    """Check ``markup`` holds only the helper's own elements; return what it says."""
    reader = _read(markup)
    assert set(reader.tags) <= OWN_TAGS, set(reader.tags) - OWN_TAGS
    assert SCRIPT not in markup
    return reader


@given(st.text(max_size=60), st.text(max_size=60))
def test_html_table__any_text_is_shown_never_run(label, value):
    reader = _safe(html_table("xchm.Thing", [(label, value)], subtitle=f"at {value}"))
    assert "".join(reader.text) == f"xchm.Thingat {value}{label}{value}"  # shown as given


@given(st.lists(st.text(max_size=20), min_size=2, max_size=2), st.integers(0, 2 * MAX_ROWS))
def test_html_grid__headers_and_cells_escaped_and_long_tables_cut(columns, n):
    rows = [[f"{SCRIPT}{i}", i] for i in range(n)]
    reader = _safe(html_table("t", [("rows", html_grid(columns, rows))]))
    shown = "".join(reader.text)
    assert [f"{SCRIPT}{i}" in reader.text for i in range(n)] == [i < MAX_ROWS for i in range(n)]
    assert (f"... {n - MAX_ROWS} more" in shown) == (n > MAX_ROWS)


def test_modelcard_repr_html__bands_and_statistics_escaped():
    stats = tuple(BandStats(clip_max=100.0 + i, mean=0.25, std=0.125) for i in range(3))
    card = ModelCard(
        preset="test-tiny",
        bands=(SCRIPT, "red", "green"),
        band_map=("red", "red", "green"),
        statistics=stats,
        provenance={"trained_on": f"/data/{SCRIPT}.zarr"},
    )
    reader = _safe(card._repr_html_())
    text = reader.text
    assert text[:2] == ["xchm.ModelCard", "test-tiny"]
    assert SCRIPT in text and "101" in text and "0.125" in text  # band and its statistics
    assert f"/data/{SCRIPT}.zarr" in text
    assert card.digest() in text


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """A labeled cube of four chips whose first band is named like a script."""
    rng = np.random.default_rng(0)
    coords = {"y": 1e4 - 2.0 * np.arange(128), "x": 5e5 + 2.0 * np.arange(128)}
    image = xr.DataArray(
        rng.uniform(100, 900, (3, 128, 128)).astype("float32"),
        dims=("band", "y", "x"),
        coords=coords,
    ).rio.write_crs("EPSG:32617")
    chm = xr.DataArray(
        rng.uniform(0, 20, (128, 128)).astype("float32"), dims=("y", "x"), coords=coords
    ).rio.write_crs("EPSG:32617")
    return xchm.chips.build(
        [xchm.chips.ScenePair(image, chm, scene="s")],
        tmp_path_factory.mktemp("reprs") / "c.zarr",
        bands=(SCRIPT, "red", "green"),
        split_by="random",
        progress=False,
    )


def test_chipcube_repr_html__what_summary_says_escaped(cube):
    reader = _safe(cube._repr_html_())
    text = reader.text
    assert text[:2] == ["xchm.ChipCube", str(cube.path)]
    assert SCRIPT in text and "64 px" in text and "2 m" in text
    for label, count in cube.splits.items():
        assert [label, str(count)] == text[text.index(label) : text.index(label) + 2]
    selection = _safe(cube.sel(split="train")._repr_html_()).text
    assert f"{len(cube.sel(split='train'))} (a selection of {len(cube)})" in selection


def test_run_results_repr_html__fields_and_history_rows():
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "note": SCRIPT} for e in range(3)]
    train = TrainResult(best_checkpoint=Path(f"runs/{SCRIPT}/best"), history=history)
    text = _safe(train._repr_html_()).text
    assert text[0] == "xchm.TrainResult"
    assert f"runs/{SCRIPT}/best" in text
    assert ["epoch", "train_loss", "note"] == text[text.index("epoch") : text.index("epoch") + 3]
    assert ["2", "0.3333", SCRIPT] in [text[i : i + 3] for i in range(len(text))]
    pretrain = PretrainResult(backbone="s3://bucket/ssl/backbone", history=history[:1])
    text = _safe(pretrain._repr_html_()).text
    assert text[0] == "xchm.PretrainResult" and "s3://bucket/ssl/backbone" in text


def test_evaluationresult_repr_html__metrics_classes_baseline_scenes():
    ref = np.array([1.0, 3.0, 7.0, 12.0, 25.0])
    metrics = height_metrics(ref + 1.0, ref)
    baseline = {"height": 9.6, **height_metrics(np.full(5, 9.6), ref)}
    result = EvaluationResult(
        {
            **metrics,
            "model": f"runs/{SCRIPT}/best",
            "split": "val",
            "baseline": baseline,
            "scenes": {SCRIPT: metrics},
        }
    )
    text = _safe(result._repr_html_()).text
    assert text[0] == "xchm.EvaluationResult"
    row = text[text.index("all") : text.index("all") + 7]
    assert row == ["all", "5", "1", "1", "1", *row[5:]]  # every error is +1 m
    assert "0-2 m" in text and "20+ m" in text  # height classes
    assert "baseline (9.6 m)" in text and f"scene {SCRIPT}" in text
    assert f"runs/{SCRIPT}/best" in text
