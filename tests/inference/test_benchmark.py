"""Smoke runs of the throughput benchmark (benchmarks/throughput.py and ``xchm bench``).

The numbers belong in benchmarks/RESULTS.md; these tests check that both entry
points run the real prediction path and report consistent counts.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xchm.cli.bench import add_bench_parser
from xchm.errors import InputError, XCHMError
from xchm.inference.benchmark import BenchConfig, lattice_windows, windows_run
from xchm.inference.windows import window_span

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("read", "h2d", "normalise", "model", "blend", "write", "other")


def bench_main(argv):
    """``xchm.cli.main(argv)``; until xchm.cli registers ``bench``, the same on a fresh parser."""
    import xchm.cli

    commands = [a for a in xchm.cli.build_parser()._actions if a.dest == "command"]
    if "bench" in commands[0].choices:
        return xchm.cli.main(argv)
    parser = argparse.ArgumentParser(prog="xchm")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except XCHMError as err:  # as xchm.cli.main does
        print(f"xchm: error: {err}", file=sys.stderr)
        return 1


def test_throughput_script__reports_rates_shares_and_lattice_windows(tmp_path):
    out = tmp_path / "throughput.json"
    args = ["--presets", "test-tiny", "--size", "128", "--repeats", "1"]
    args += ["--sources", "memory", "cog", "--workers", "1", "-o", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(out.read_text())
    rows = result["results"]
    assert {(r["source"], r["overlap"]) for r in rows} == {
        (s, o) for s in ("memory", "cog") for o in (0, 16)
    }
    for r in rows:
        stride = 64 - r["overlap"]
        expected = window_span(0, 128, 64, stride).count ** 2
        assert r["windows"] == expected
        assert r["windows_run"] == expected  # one chunk: no window is run twice
        assert r["windows_per_s"]["median"] > 0 and r["km2_per_h"]["median"] > 0
        assert set(r["shares"]) == set(STAGES)
        assert r["shares"]["model"] > 0 and r["shares"]["write"] > 0
        assert r["mfu"] is None  # CPU without --peak-tflops
    local, cluster = result["scaling"]  # dask's local threads, then one worker process
    assert (local["workers"], cluster["workers"]) == (0, 1)
    assert cluster["windows_per_s"]["median"] > 0 and cluster["speedup"] == 1.0
    assert result["environment"]["loadavg_start"] is not None


def test_xchm_bench__prints_tables_and_counts_border_windows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--presets", "test-tiny", "--size", "192", "--chunk", "96"]
    argv += ["--overlaps", "16", "--sources", "memory", "--repeats", "1", "--workers"]
    assert bench_main([*argv, "--peak-tflops", "1", "-o", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    # 2 x 2 chunks: windows near the chunk borders run once per chunk they touch
    assert row["windows"] == lattice_windows(192, 192, 48) == 25
    assert row["windows_run"] == windows_run(192, 192, 96, 48) == 36
    assert 0 < row["mfu"] < 1
    printed = capsys.readouterr().out
    assert "| test-tiny | memory | 16 (48) | 192x192 | 25 (36) |" in printed


def test_xchm_bench__measures_chmv2_at_the_bench_window(tmp_path):
    """CHMv2 (RGB, 256 px windows by default) runs on the bench's scene at 64 px windows."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--presets", "test-tiny-chmv2", "--size", "128", "--chunk", "128"]
    argv += ["--overlaps", "0", "--sources", "memory", "--repeats", "1", "--workers"]
    assert bench_main([*argv, "-o", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["preset"] == "test-tiny-chmv2" and row["windows"] == 4
    gflop = row["gflop_per_window"]
    assert gflop["decoder"] > 0 and gflop["total"] == gflop["backbone"] + gflop["decoder"]


def test_bench_config__bad_options_listed_at_once():
    with pytest.raises(InputError, match="unknown preset 'vit-x'.*overlap 64.*repeats must be"):
        BenchConfig(presets=("vit-x",), overlaps=(64,), repeats=0)


def test_xchm_bench__bad_option_exits_1_with_the_problem(capsys):
    assert bench_main(["bench", "--sources", "tape", "--size", "8"]) == 1
    err = capsys.readouterr().err
    assert "unknown source 'tape'" in err and "size must be >= 64 px" in err
