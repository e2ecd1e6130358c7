"""Smoke runs of the benchmark scripts (numbers live in benchmarks/RESULTS.md, not here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import servers

ROOT = Path(__file__).resolve().parents[1]


def test_model_forward__runs_and_reports(tmp_path):
    out = tmp_path / "forward.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "model_forward.py"),
            "--presets",
            "test-tiny",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    text = json.dumps(results)
    assert "test-tiny" in text and "chips" in text


def test_predict_overhead__runs_and_predict_matches_its_numpy_check(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--presets", "test-tiny", "--size", "128", "--repeats", "1", "--warmup", "0"]
    args += ["--decoders", "reference", "--parts", "overhead", "seams"]
    args += ["--seam-shape", "128", "192", "--seam-overlaps", "0", "16", "--seam-seeds", "5"]
    args += ["--seam-repeats", "1", "--json", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "predict_overhead.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    (overhead,) = results["overhead"]
    # predict equals an independent numpy loop over the same lattice and Hann weights
    assert overhead["max_abs_diff_a_lattice_numpy_m"] < 1e-4
    assert overhead["std_height_a_m"] > 0.1
    by_overlap = {row["overlap"]: row for row in results["seams"]}
    # the fitted model shows seams without overlap, fewer with the default (the strict
    # thresholds live in tests/inference/test_predict.py)
    assert by_overlap[0]["seam_x"]["median"] > by_overlap[16]["seam_x"]["median"]


def test_predict_overhead__targets_are_ratios_of_the_measured_times(tmp_path):
    """Issue 20's ratios per precision and decoder row, from that run's medians."""
    import torch

    from xchm.inference.runtime import autocast_dtype

    out = tmp_path / "overhead.json"
    args = ["--presets", "test-tiny", "--size", "128", "--repeats", "1", "--warmup", "0"]
    args += ["--parts", "overhead", "--precisions", "auto", "fp32"]
    args += ["--decoders", "reference", "light", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "predict_overhead.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    rows = results["overhead"]
    light = not results["notes"]  # the note says load_model has no decoder= yet
    assert {(r["decoder"], r["precision"]) for r in rows} == {
        (d, p) for d in ("reference", "light")[: 1 + light] for p in ("auto", "fp32")
    }
    naive = {s: rows[0]["times_s"][f"c_naive_s{s}"]["median"] for s in (48, 32)}
    for row in rows:
        ran = autocast_dtype(row["precision"], torch.device("cpu")) or torch.float32
        assert row["dtype"] == str(ran).removeprefix("torch.")  # what the model ran in
        assert row["naive_precision"] == "fp32" and row["naive_decoder"] == "reference"
        # the naive loop is measured once and shared by every row
        assert {s: row["times_s"][f"c_naive_s{s}"]["median"] for s in (48, 32)} == naive
        assert row["windows"] == 16 and row["naive_windows"] == {"48": 9, "32": 25}
        assert 0 < row["windows_run"] <= row["windows"]
        t = {k: v["median"] for k, v in row["times_s"].items()}
        targets = {x["key"]: x for x in row["targets"]}
        assert targets["windows_per_s_vs_naive"]["value"] == t["c_naive_s48"] / t["a_predict"]
        assert targets["speedup_vs_reference"]["value"] == t["c_naive_s32"] / t["a_predict"]
        assert targets["pipeline_overhead"]["value"] == t["a_predict"] / t["b_forward"]
        assert targets["pipeline_overhead"]["met"] == (t["a_predict"] / t["b_forward"] <= 1.1)
        # predict's windows/s counted over the naive loop's windows: the same ratio
        rate = row["windows_per_s_a_naive_coverage"]["48"] / row["windows_per_s_c"]["48"]
        assert abs(rate - targets["windows_per_s_vs_naive"]["value"]) < 1e-9
    assert "| test-tiny | fp32 (float32) | reference | 128 | pipeline_overhead |" in proc.stdout


def test_predict_overhead__border_counts_and_tally(tmp_path):
    import inspect

    from xchm.inference.benchmark import lattice_windows, windows_run
    from xchm.inference.windows import window_span

    out = tmp_path / "border.json"
    args = ["--parts", "border", "--border-sizes", "128", "146", "256", "8192"]
    args += ["--border-chunk", "128", "--border-timed-sizes", "128", "146"]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "predict_overhead.py"), *args]
        + ["--border-repeats", "1", "--json", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = {(r["size"], r["stride"]): r for r in json.loads(out.read_text())["border"]}
    assert set(rows) == {(n, s) for n in (128, 146, 256, 8192) for s in (48, 32)}
    for (size, stride), row in rows.items():
        assert row["windows_run"] == windows_run(size, size, 128, stride)
        assert row["lattice"] == lattice_windows(size, size, stride)
        assert row["ideal"] == (size / stride) ** 2
        assert row["run_over_ideal"] == row["windows_run"] / row["ideal"]
        assert ("time_s" in row) == (size in (128, 146))  # timed only where asked
    # 256 px in 128 px chunks: windows near the chunk border run twice
    assert rows[(256, 48)]["windows_run"] > rows[(256, 48)]["lattice"] == 49
    assert rows[(128, 32)]["naive"] == 25  # padding 32: origins -32, 0, 32, 64, 96
    if "size" in inspect.signature(window_span).parameters:  # predict's border cut
        # 146 px: the window at 144 covers 2 px at a weight < 1 %: not run
        assert rows[(146, 48)]["one_chunk"] == 16 < rows[(146, 48)]["lattice"] == 25
    for key in ((128, 48), (128, 32), (146, 48), (146, 32)):
        row = rows[key]
        # one chunk, no nodata: the kernel ran (telemetry) what the counts say
        assert row["tally_windows"] == row["windows_run"] == row["one_chunk"]
        assert row["tally_windows_skipped"] in (0, None)
        assert row["time_s"]["median"] > 0
        assert row["ms_per_ideal_window"] == 1e3 * row["time_s"]["median"] / row["ideal"]


def test_gpu_predict_options__runs_one_configuration_on_cpu(tmp_path):
    out = tmp_path / "row.json"
    args = ["--preset", "test-tiny", "--size", "128", "--repeats", "3", "--decoder", "light"]
    args += ["--precision", "fp32", "--compare-eager", "--json", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_predict_options.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    row = json.loads(out.read_text())["row"]
    if "skipped" in row:  # an xchm without decoder=
        assert "decoder" in row["skipped"]
        return
    assert (row["precision"], row["dtype"], row["decoder"]) == ("fp32", "float32", "light")
    assert row["windows"] == 16 and row["windows_run"] == 16  # one chunk: the lattice
    assert row["repeats"] == 3 and row["seconds"]["min"] <= row["seconds"]["median"]
    assert row["windows_per_s"]["median"] == 16 / row["seconds"]["median"]  # odd count
    assert row["max_abs_diff_vs_eager_m"] == 0.0  # eager against itself
    assert row["mfu"] is None  # no peak on the CPU


def test_chip_cube__runs_and_reports(tmp_path):
    out = tmp_path / "chip_cube.json"
    args = ["--chips", "64", "--repeats", "1", "--random-reads", "20"]
    args += ["--tmp", str(tmp_path), "--json", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chip_cube.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    build, storage, read = results["build"], results["storage"], results["read"]
    n = storage["chips"]
    assert n == build["chips"] == 64  # an 8 x 8 chip scene; every synthetic chip is kept
    assert build["chips_per_s"] > 0
    assert build["ru_maxrss_bytes"]["median"] > build["baseline_rss_bytes"]["median"] > 0
    assert storage["raw_bytes_per_chip"] == (3 * 2 + 4) * 64 * 64  # 3 uint16 bands + float32
    assert 0 < storage["bytes_per_chip"] < storage["raw_bytes_per_chip"]
    assert storage["compression_ratio"] > 1
    assert read["chunk_sequential"]["chips"] == read["chunk_shuffled"]["chips"] == n
    assert read["random_single"]["chips"] == 20
    for mode in ("chunk_sequential", "chunk_shuffled", "random_single"):
        assert read[mode]["chips_per_s"] > 0
    assert not list(tmp_path.glob("xchm-chip-cube-*"))  # the temporary scene is removed


def test_chip_stream__runs_and_reports(tmp_path):
    out = tmp_path / "chip_stream.json"
    args = ["--chips", "64", "--repeats", "1", "--batch-size", "8", "--workers", "0", "1"]
    args += ["--split", "all", "--tmp", str(tmp_path), "--json", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chip_stream.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    assert results["cube"]["chips"] == 64  # an 8 x 8 chip scene; every synthetic chip is kept
    rows = {(r["workers"], r["image_dtype"], r["augment"]): r for r in results["stream"]}
    assert set(rows) == {
        (w, d, a) for w in (0, 1) for d in ("default", "native") for a in (False, True)
    }
    for row in rows.values():
        assert row["chips"] == 64 and row["batches"] == 8  # the whole split, 8 per batch
        assert row["chips_per_s"] > 0 and row["cpu_us_per_chip"] > 0
    assert results["decode_only"]["chips"] == 64
    assert not list(tmp_path.glob("xchm-chip-stream-*"))  # the temporary scene is removed


def test_pretrain_neon__runs_both_arms_and_reports(tmp_path, neon_dir):
    out = tmp_path / "pretrain.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "pretrain_neon.py"), "--out"]
    args += [str(tmp_path / "run"), "--data", str(neon_dir), "--ssl-epochs", "1"]
    args += ["--epochs", "1", "--ssl-stride", "32", "--stride", "16", "--out-dim", "64"]
    subprocess.run([*args, "--json", str(out)], check=True, capture_output=True, text=True)
    res = json.loads(out.read_text())
    assert res["unlabeled_scenes"][0].startswith("BART")  # the crop without a lidar plot
    assert len(res["unlabeled_scenes"]) == 15
    for arm in ("pretrained", "random"):
        assert set(res[arm]["best"]) == {"mae", "rmse", "bias", "r2", "pearson_r2"}
    assert res["pretrained"]["baseline"] == res["random"]["baseline"]  # same val plots


def test_pretrain_speed__reports_chips_per_second(tmp_path):
    out = tmp_path / "speed.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "pretrain_speed.py"), "--presets"]
    args += ["test-tiny", "--batch-size", "8", "--steps", "1", "--epochs", "2", "--out-dim", "64"]
    subprocess.run([*args, "--json", str(out)], check=True, capture_output=True, text=True)
    (row,) = json.loads(out.read_text())["results"]
    assert row["preset"] == "test-tiny" and row["chips_per_s"] > 0 and row["epochs_timed"] == 1


def test_storage_read__runs_and_reports(tmp_path):
    """Local disk vs /vsis3/ (moto) vs /vsicurl/ (nginx); fails under CI without them."""
    for missing in (servers.moto_missing(), servers.nginx_missing()):
        if missing:
            servers.unavailable(missing)
    out = tmp_path / "storage.json"
    # the script points S3 at its moto server; hide the machine's AWS setup from it
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    args = ["--size", "512", "--tile", "256", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "storage_read.py"), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["size"] == 512 and report["file_bytes"] > 0
    rows = {r["source"].split()[0]: r for r in report["results"]}
    assert set(rows) == {"local", "S3", "HTTP"}  # each read equals the local one (checked)
    for row in rows.values():
        assert row["seconds_median"] > 0 and len(row["seconds"]) == 1
    assert rows["S3"]["gdal_name"] == "/vsis3/bench/imagery/scene.tif"
    assert rows["HTTP"]["gdal_name"].startswith("/vsicurl/http://127.0.0.1:")
    assert rows["S3"]["requests_per_read"] > 0 and rows["HTTP"]["requests_per_read"] > 0
    assert rows["HTTP"]["bytes_sent_per_read"] > 0


def test_predict_storage__runs_and_reports(tmp_path):
    """Prediction from disk, S3 and HTTP and to S3; the script checks every map is equal."""
    for missing in (servers.moto_missing(), servers.nginx_missing()):
        if missing:
            servers.unavailable(missing)
    out = tmp_path / "predict_storage.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    args = ["--size", "256", "--tile", "128", "--chunk", "128", "--region", "128"]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "predict_storage.py"),
            *args,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["source"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {
        "local disk -> local",
        "S3 (moto) -> local",
        "HTTP (nginx) -> local",
        "local disk -> S3 (moto)",
    }
    assert runs["S3 (moto) -> local"]["requests"] > 0
    assert runs["HTTP (nginx) -> local"]["bytes_read_over_file"] > 0


def test_split_guarantee_bench__no_empty_split_once_ranked():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "split_guarantee.py"), "--seeds", "50"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines()[2:]]
    assert len(rows) == 6
    for fractions, blocks, _, ranked in rows:
        splits = len(fractions.split("/"))
        assert (ranked.strip() == "0.0%") == (int(blocks) >= splits), (fractions, blocks)
