"""fetch_cached: files by URL and SHA-256 into a local cache, from nginx and from S3."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xchm import errors
from xchm.storage import fetch_cached

ROOT = Path(__file__).resolve().parents[2]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` except the zero-byte lock files."""
    if not folder.exists():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and "locks" not in p.parts]
    return sorted(str(p.relative_to(folder)) for p in found)


def _gets(nginx, path: str, since: int = 0) -> list:
    return [r for r in nginx.requests()[since:] if r.method == "GET" and r.path == path]


def test_fetch_cached__http_downloads_once_in_one_request_then_never_again(nginx, served, tmp_path):
    data = os.urandom(3_000_000)
    (served / "models").mkdir(exist_ok=True)
    (served / "models" / "ckpt.safetensors").write_bytes(data)
    url = f"{nginx.url}/models/ckpt.safetensors"
    cache = tmp_path / "cache"
    before = len(nginx.requests())
    path = fetch_cached(url, _sha(data), cache_dir=cache)
    assert path == cache / "sha256" / _sha(data) / "ckpt.safetensors"
    assert path.read_bytes() == data
    gets = _gets(nginx, "/models/ckpt.safetensors", before)
    assert len(gets) == 1 and gets[0].bytes == len(data)  # one streamed GET
    seen = len(nginx.requests())
    assert fetch_cached(url, _sha(data).upper(), cache_dir=cache) == path
    assert len(nginx.requests()) == seen  # no request at all the second time
    assert _files(cache) == [f"sha256/{_sha(data)}/ckpt.safetensors"]


def test_fetch_cached__s3_second_call_makes_no_request(s3, tmp_path):
    data = os.urandom(200_000)
    s3.put("models//vitl/model.pt", data)
    url = f"{s3.url}/models//vitl/model.pt"
    path = fetch_cached(url, _sha(data), cache_dir=tmp_path)
    assert path.read_bytes() == data and path.name == "model.pt"
    s3.delete("models//vitl/model.pt")  # gone from the store: only the cache can answer
    seen = len(s3.server.requests())
    assert fetch_cached(url, _sha(data), cache_dir=tmp_path) == path
    assert len(s3.server.requests()) == seen


def test_fetch_cached__wrong_digest_raises_and_keeps_nothing(nginx, served, tmp_path):
    data = b"weights" * 1000
    (served / "bad.bin").write_bytes(data)
    url = f"{nginx.url}/bad.bin"
    wrong = _sha(b"something else")
    with pytest.raises(errors.InputError) as err:
        fetch_cached(url, wrong, cache_dir=tmp_path)
    assert f"'{url}'" in str(err.value) and wrong in str(err.value) and _sha(data) in str(err.value)
    assert _files(tmp_path) == []
    assert not (tmp_path / "sha256" / wrong).exists()
    assert fetch_cached(url, _sha(data), cache_dir=tmp_path).read_bytes() == data  # then fine


def test_fetch_cached__missing_url_names_it_and_keeps_nothing(nginx, s3, tmp_path):
    for url in (f"{nginx.url}/no//such.bin", f"{s3.url}/no//such.bin"):
        with pytest.raises(errors.PathNotFoundError, match=f"'{url}'"):
            fetch_cached(url, "0" * 64, cache_dir=tmp_path)
    assert _files(tmp_path) == []


def test_fetch_cached__refuses_a_malformed_digest(tmp_path):
    with pytest.raises(errors.InputError, match="64 hexadecimal digits, got 'abc'"):
        fetch_cached("s3://b/k", "abc", cache_dir=tmp_path)


def test_fetch_cached__local_source_and_default_cache(tmp_path, monkeypatch):
    source = tmp_path / "weights.pt"
    source.write_bytes(b"w" * 100)
    monkeypatch.setenv("XCHM_CACHE", str(tmp_path / "env-cache"))
    path = fetch_cached(source, _sha(b"w" * 100))
    assert path == tmp_path / "env-cache" / "sha256" / _sha(b"w" * 100) / "weights.pt"
    assert path.read_bytes() == b"w" * 100


_WORKER = """
import os, sys, time
from pathlib import Path
from xchm.storage import fetch_cached
url, digest, cache, go = sys.argv[1:]
Path(cache + f".ready.{os.getpid()}").touch()
while not os.path.exists(go):
    time.sleep(0.005)
print(fetch_cached(url, digest, cache_dir=cache))
"""


def test_fetch_cached__concurrent_processes_download_once(nginx, served, tmp_path):
    """Four processes released at once: one download, the same verified file for all."""
    data = os.urandom(20_000_000)
    (served / "big.bin").write_bytes(data)
    url, cache, go = f"{nginx.url}/big.bin", tmp_path / "cache", tmp_path / "go"
    before = len(nginx.requests())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, _sha(data), str(cache), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("cache.ready.*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(cache / "sha256" / _sha(data) / "big.bin")}
    assert Path(paths.pop()).read_bytes() == data
    gets = _gets(nginx, "/big.bin", before)
    assert len(gets) == 1, gets
    assert _files(cache) == [f"sha256/{_sha(data)}/big.bin"]
