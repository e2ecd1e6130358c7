"""Checkpoints by URL: saved to and loaded from the S3 server and nginx, fetched once.

Workers load a checkpoint named by URL into their own download cache, keyed and
verified by the SHA-256 in its card; nothing is shared through a file system.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio)
import torch
import xarray as xr

import xchm
from xchm.errors import ModelNotFoundError, OutputExistsError, WeightsError
from xchm.inference.runtime import get_model, spec_for


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """This test's own download cache (never the user's ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("XCHM_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def model():
    return xchm.load_model("test-tiny")


def _same(a, b) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _gets(s3, key: str, since: int = 0) -> int:
    return sum(
        1
        for r in s3.requests(since)
        if r.method == "GET" and r.path.split("?")[0] == f"/{s3.bucket}/{key}"
    )


def test_checkpoint_url__s3_round_trip_is_bit_identical_and_fetched_once(s3, cache, model):
    url = f"{s3.url}/models//chm"  # an odd key is kept as typed, never collapsed
    assert str(model.save(url)) == url
    assert {"models//chm/card.json", "models//chm/model.safetensors"} <= {
        o["Key"] for o in s3.server.client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    }
    start = len(s3.server.requests())
    first = xchm.load_model(url)
    second = xchm.load_model(url)
    _same(first, model)
    _same(second, model)
    # The weights came once, into the cache keyed by their digest; the card each time.
    assert _gets(s3, "models//chm/model.safetensors", start) == 1
    digest = spec_for(url)[0].digest
    assert (cache / "sha256" / digest / "model.safetensors").is_file()


def test_checkpoint_url__https_from_nginx(nginx, served, cache, model):
    model.save(served / "ckpt")
    try:
        loaded = xchm.load_model(f"{nginx.url}/ckpt/")
        _same(loaded, model)
        assert xchm.models.api.is_checkpoint(f"{nginx.url}/ckpt/")
    finally:
        shutil.rmtree(served / "ckpt")


def test_checkpoint_url__weights_from_another_checkpoint_are_refused(s3, cache, model):
    model.save(f"{s3.url}/a")
    other = xchm.load_model("test-tiny", seed=1)
    other.save(f"{s3.url}/b")
    s3.put("a/model.safetensors", s3.get("b/model.safetensors"))
    with pytest.raises(WeightsError, match="SHA-256"):
        xchm.load_model(f"{s3.url}/a")
    assert not list((cache / "sha256").rglob("model.safetensors"))


def test_checkpoint_url__missing_names_the_url(s3, cache):
    with pytest.raises(ModelNotFoundError, match=f"'{s3.url}/nothing//here'"):
        xchm.load_model(f"{s3.url}/nothing//here")
    s3.put("weights-only/model.safetensors", b"x")
    with pytest.raises(WeightsError, match="card.json is missing"):
        xchm.load_model(f"{s3.url}/weights-only")


def test_checkpoint_url__save_refuses_a_foreign_prefix(s3, model):
    s3.put("maps/notes.txt", b"mine")
    with pytest.raises(OutputExistsError, match="not an xchm checkpoint"):
        model.save(f"{s3.url}/maps")
    assert s3.get("maps/notes.txt") == b"mine"


def test_checkpoint_url__storage_options_without_environment(s3, cache, model, monkeypatch):
    model.save(f"{s3.url}/m")
    options = {
        "endpoint_url": s3.server.endpoint_url,
        "key": s3.server.key,
        "secret": s3.server.secret,
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    loaded = xchm.load_model(f"{s3.url}/m", storage_options=options)
    _same(loaded, model)


def test_checkpoint_url__predict_with_a_url_matches_the_object(s3, cache, model):
    url = f"{s3.url}/predict-model"
    model.save(url)
    rng = np.random.default_rng(0)
    image = (
        xr.DataArray(
            rng.random((3, 96, 80), dtype=np.float32) * 2000,
            dims=("band", "y", "x"),
            coords={
                "band": ["nir", "red", "green"],
                "y": -2.0 * np.arange(96),
                "x": 2.0 * np.arange(80),
            },
        )
        .rio.write_crs(32606)
        .chunk({"x": 40, "y": 48})
    )
    by_url = xchm.predict(image, url).compute()
    by_object = xchm.predict(image, model).compute()
    xr.testing.assert_identical(by_url, by_object)


def test_checkpoint_url__a_changed_checkpoint_is_refused_by_workers(s3, cache, model):
    url = f"{s3.url}/changing"
    model.save(url)
    spec, _ = spec_for(url)
    assert spec.kind == "checkpoint" and spec.source == url
    xchm.load_model("test-tiny", seed=2).save(url)  # replaced after the graph was built
    with pytest.raises(WeightsError, match="changed since the graph was built"):
        get_model(spec, torch.device("cpu"))


def test_backbone_weights_url__fetched_once_per_version(s3, cache, tmp_path):
    """weights= by URL (Meta's .pth here): downloaded once, again only when it changes."""
    from xchm.testing import write_meta_weights

    write_meta_weights(tmp_path / "a.pth", seed=0)
    write_meta_weights(tmp_path / "b.pth", seed=1)
    s3.put("weights/backbone.pth", (tmp_path / "a.pth").read_bytes())
    url = f"{s3.url}/weights/backbone.pth"
    start = len(s3.server.requests())
    first = xchm.load_model("test-tiny", weights=url)
    again = xchm.load_model("test-tiny", weights=url)
    _same(first, xchm.load_model("test-tiny", weights=tmp_path / "a.pth"))
    _same(again, first)
    assert _gets(s3, "weights/backbone.pth", start) == 1
    assert first.card.provenance["weights_url"] == url
    s3.put("weights/backbone.pth", (tmp_path / "b.pth").read_bytes())  # a new version
    changed = xchm.load_model("test-tiny", weights=url)
    _same(changed, xchm.load_model("test-tiny", weights=tmp_path / "b.pth"))
    assert _gets(s3, "weights/backbone.pth", start) == 2
    spec, _ = spec_for("test-tiny", weights=url)  # what a worker is sent: the URL, a version
    assert dict(spec.options)["weights"] == url
    with pytest.raises(xchm.errors.PathNotFoundError, match=f"'{s3.url}/weights/none.pth'"):
        spec_for("test-tiny", weights=f"{s3.url}/weights/none.pth")
