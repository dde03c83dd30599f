"""The latency profiler (``deploy.profiler``) and ``t2t bench``.

Statistics are checked on hand-computable samples; the interleaving on real callables that record
the order they ran in; the whole profile on a tiny real export folder (real ONNX Runtime, real
artifacts) with a failed, a skipped and a corrupt artifact among the good ones. Timings here
are tiny: these tests check behaviour, ``t2t bench`` measures speed.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

import t2tvit
from benchmarks.reference_row import REFERENCE
from benchmarks.targets import compute_targets
from compress.quantize import load_images
from deploy import manifest as mf
from deploy.artifacts import identify
from deploy.base import ExportContext, sha256_file
from deploy.export import PARITY_RANDOM_WEIGHTS, export_all
from deploy.profiler import (
    Checks,
    ProfileConfig,
    interleave_schedule,
    latency_stats,
    load_labelled,
    measure_peak,
    median_ci,
    median_ci_ranks,
    percentile,
    profile_folder,
    run_interleaved,
)
from t2tvit.data import bundled_dataset_path, eval_transform_for
from t2tvit.errors import ConfigError
from t2tvit.summary import summarize

IMG = 32


pytestmark = pytest.mark.usefixtures("one_thread")


# -- statistics ---------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    xs = list(range(1, 11))
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 10
    assert percentile(xs, 90) == pytest.approx(9.1)  # rank 1 + 0.9 * 9 = 9.1
    assert percentile(reversed(xs), 95) == pytest.approx(9.55)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_median_interval_uses_binomial_order_statistics() -> None:
    # n = 10: P(B <= 1) = 11/1024 <= 0.025 < P(B <= 2) = 56/1024, so ranks 2 and 9
    lo, hi, coverage = median_ci_ranks(10)
    assert (lo, hi) == (2, 9) and coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert median_ci(range(10, 0, -1)) == (2.0, 9.0)
    assert median_ci_ranks(100)[:2] == (40, 61)  # the textbook ranks for n = 100
    # too few samples for 95%: the whole range, with the coverage it really has
    assert median_ci_ranks(5) == (1, 5, pytest.approx(1 - 2 / 32))
    assert median_ci_ranks(1)[:2] == (1, 1)
    # every n: at least the level, and the next narrower interval would fall below it
    for n in [*range(6, 120), 1999, 2000, 2001, 5000]:
        l, u, cov = median_ci_ranks(n)
        assert u == n + 1 - l and cov >= 0.95
        if l + 1 <= (n + 1) // 2:
            assert median_ci_ranks(n, 0.5)[0] > l  # a lower level gives a narrower interval
            narrower = 1 - 2 * sum(math.comb(n, i) for i in range(l + 1)) / 2**n if n <= 2001 else None
            assert narrower is None or narrower < 0.95
    # large n agrees with the normal approximation n/2 -+ 1.96 sqrt(n)/2
    l, u, _ = median_ci_ranks(5000)
    assert abs(l - (2500 - 1.96 * math.sqrt(5000) / 2)) <= 2 and abs(u - (2501 + 1.96 * math.sqrt(5000) / 2)) <= 2


def test_latency_stats_on_known_samples() -> None:
    s = latency_stats([float(x) for x in range(10, 0, -1)], batch=4)
    assert s["runs"] == 10 and s["mean_ms"] == 5.5 and s["min_ms"] == 1.0
    assert s["std_ms"] == pytest.approx(math.sqrt(82.5 / 9))
    assert (s["p50_ms"], s["p90_ms"], s["p95_ms"], s["p99_ms"]) == pytest.approx((5.5, 9.1, 9.55, 9.91))
    assert s["p50_ci_ms"] == [2.0, 9.0] and s["ci_level"] == 0.95
    assert s["throughput_ips"] == pytest.approx(4 * 1000 / 5.5)
    assert latency_stats([3.0])["std_ms"] == 0.0


# -- interleaving --------------------------------------------------------------------------------


def test_schedule_rotates_the_order_every_round() -> None:
    assert interleave_schedule(["a", "b", "c"], 4) == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_variants_really_run_interleaved() -> None:
    calls: list[str] = []

    def step(name: str):
        def run() -> float:
            calls.append(name)
            return 1.0

        return run

    samples, errors = run_interleaved({n: step(n) for n in "abc"}, rounds=3, min_runs=6, duration=0.0, warmup=1)
    # warm-up once each, then per round a chunk of ceil(6 / 3) = 2 runs per variant, order rotated
    assert calls == list("abc") + list("aabbcc") + list("bbccaa") + list("ccaabb")
    assert errors == {} and {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6, "c": 6}


def test_duration_budget_and_a_failing_variant() -> None:
    calls: list[str] = []

    def sleeper() -> float:
        calls.append("slow")
        t0 = time.perf_counter()
        time.sleep(0.005)
        return (time.perf_counter() - t0) * 1e3

    def broken() -> float:
        calls.append("broken")
        if calls.count("broken") > 2:
            raise RuntimeError("kernel exploded\nsecond line")
        return 0.5

    samples, errors = run_interleaved({"slow": sleeper, "broken": broken}, rounds=2, min_runs=1, duration=0.1)
    # at least duration / rounds seconds per chunk: ~10 runs of 5 ms per round
    assert sum(samples["slow"]) >= 100 and len(samples["slow"]) >= 2 * 5
    assert errors == {"broken": "RuntimeError: kernel exploded"}
    assert samples["broken"] == [0.5, 0.5]  # kept what it had, dropped from later rounds
    assert calls[-1] == "slow"


def test_peak_gemm_rates_say_which_op_and_shape() -> None:
    peak = measure_peak(1, sizes=(128, 256), reps=1)
    fp32 = peak["fp32"]
    assert (
        fp32["gmacs_per_s"] > 0
        and fp32["op"].startswith("torch.matmul fp32")
        and fp32["shape"] in ("128x128x128", "256x256x256")
    )
    assert fp32["gmacs_per_s"] == max(c["gmacs_per_s"] for c in fp32["candidates"])
    assert peak["int8"] is not None and peak["int8"]["gmacs_per_s"] > 0 and "int8" in peak["int8"]["op"]
    assert torch.get_num_threads() == 1  # restored


def test_a_process_reuses_its_own_peak_rate_for_the_same_threads(monkeypatch) -> None:
    from deploy.profiler import peak as peak_module

    calls: list[tuple] = []  # the sweep itself is tested above: here, when it runs
    monkeypatch.setattr(peak_module, "_MEASURED", {})
    monkeypatch.setattr(peak_module, "measure_peak", lambda *a: calls.append(a) or {"fp32": {"gmacs_per_s": 1.0}})
    first = peak_module.peak_rate(1)
    first["fp32"]["gmacs_per_s"] = -1.0  # the caller's copy
    assert peak_module.peak_rate(1) == {"fp32": {"gmacs_per_s": 1.0}} and calls == [(1, "cpu")]
    peak_module.peak_rate(2)  # other threads: measured
    monkeypatch.setattr(peak_module, "PEAK_REUSE_S", 0.0)
    peak_module.peak_rate(1)  # too old: measured again
    assert calls == [(1, "cpu"), (2, "cpu"), (1, "cpu")]


def test_format_from_file_name() -> None:
    assert identify("x/model-onnx-int8-dynamic.onnx") == (identify("model-onnx-int8-dynamic.onnx")[0], {})
    assert identify("model-onnx-int8-dynamic.onnx")[0].name == "onnx-int8-dynamic"
    assert identify("mine-onnx-int8-static.onnx")[0].name == "onnx-int8-static"
    fmt, info = identify("whatever.onnx")
    assert fmt.name == "onnx" and "guessed" in info["note"]
    assert identify("weights.bin") == (None, {})  # a checkpoint suffix: not an artifact
    with pytest.raises(ConfigError, match="cannot tell what weights.xyz is"):
        identify("weights.xyz")


# -- a real export folder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = t2tvit.create_model("t2t_vit_7", img_size=IMG, num_classes=10).eval()
    images, _ = load_images(bundled_dataset_path() / "val", eval_transform_for(model), 16)
    out = tmp_path_factory.mktemp("profile") / "export"
    ctx = ExportContext(img_size=(IMG, IMG), calib=images)
    # random weights: int8 agreement is meaningless, so held to logit movement as `t2t export` does
    export_all(
        model,
        ["torch", "onnx", "onnx-int8-dynamic", "tensorrt"],
        out,
        ctx,
        images,
        thresholds=PARITY_RANDOM_WEIGHTS,
        progress=False,
    )
    manifest = json.loads((out / mf.FILE).read_text())
    template = manifest["artifacts"][0]
    manifest["artifacts"].append(
        {**template, "format": "onnx-int8-static", "precision": "int8", "status": "failed", "file": None,
         "bytes": None, "sha256": None, "parity": None, "reason": "export failed: RuntimeError: calibration broke"}
    )  # fmt: skip
    (out / "model-torchscript.pt").write_bytes(b"this is not a zip archive" * 100)
    broken = {"file": "model-torchscript.pt", "sha256": sha256_file(out / "model-torchscript.pt")}  # as recorded
    manifest["artifacts"].append({**template, "format": "torchscript", "reason": None, **broken})
    (out / mf.FILE).write_text(json.dumps(manifest, indent=2))
    return out


def test_profile_has_a_row_for_every_artifact(export_dir, tmp_path) -> None:
    corrupt = tmp_path / "model-onnx.onnx"
    corrupt.write_bytes(b"\x00garbage" * 64)
    config = ProfileConfig(
        batch_sizes=(40, 1),  # 40: beyond the ONNX files' exported batch range 1..32
        threads=1,
        duration=0.05,
        min_runs=3,
        warmup=1,
        rounds=2,
        data=bundled_dataset_path() / "val",
        max_images=40,
        memory=False,  # measured in test_t2t_bench_writes_the_report (each probe in a process of its own)
    )
    # the project's baseline, a row outside the format table (benchmarks/), measured like any artifact
    files = [corrupt, (REFERENCE, export_dir / "model-torch.pt")]
    typed = profile_folder(export_dir, config, files=files, command="test", progress=False)
    report = typed.to_dict()
    json.dumps(report, allow_nan=False)  # plain JSON types only
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == [
        "torch", "onnx", "onnx-int8-dynamic", "tensorrt", "onnx-int8-static", "torchscript", "onnx-2", "reference"
    ]  # fmt: skip
    assert rows["tensorrt"]["status"] == "skipped" and "tensorrt not installed" in rows["tensorrt"]["reason"]
    assert rows["onnx-int8-static"]["status"] == "failed" and "calibration broke" in rows["onnx-int8-static"]["reason"]
    assert rows["torchscript"]["status"] == "failed" and rows["torchscript"]["reason"].startswith("load failed")
    assert rows["onnx-2"]["status"] == "failed" and "not a loadable ONNX model" in rows["onnx-2"]["reason"]
    for name in ("tensorrt", "onnx-int8-static", "torchscript", "onnx-2"):
        assert rows[name]["latency"] == {} and rows[name]["load_s"] is None

    assert report["settings"]["batch_sizes"] == [1, 40] and report["settings"]["threads"] == 1
    assert report["settings"]["images"] == 40 and report["machine"]["threads"] == 1
    assert report["model"]["name"] == "t2t_vit_7" and report["model"]["num_classes"] == 10
    macs = report["model"]["macs_per_image"]
    assert macs == summarize(t2tvit.create_model("t2t_vit_7", img_size=IMG, num_classes=10)).macs
    assert report["peak"]["fp32"]["gmacs_per_s"] > 0 and report["peak"]["int8"]["gmacs_per_s"] > 0
    assert {"torch", "onnxruntime", "numpy"} <= set(report["versions"])

    for name in ("torch", "onnx", "onnx-int8-dynamic", "reference"):
        r = rows[name]
        assert r["status"] == "ok", (name, r["reason"])
        assert r["load_s"] > 0 and r["first_inference_ms"] > 0
        if name.startswith("onnx"):
            assert set(r["latency"]) == {"1"} and "batch 40 not timed: the artifact accepts 1..32" in r["reason"]
        else:
            assert set(r["latency"]) == {"1", "40"}
        for b, s in r["latency"].items():
            assert s["runs"] >= 3
            assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"]
            assert s["p50_ci_ms"][0] <= s["p50_ms"] <= s["p50_ci_ms"][1]
            assert s["throughput_ips"] == pytest.approx(int(b) * 1000 / s["mean_ms"])
        assert r["peak_rss_mb"] is None and r["cuda_peak_mb"] is None
        assert r["gmacs_per_s"] == pytest.approx(macs / r["latency"]["1"]["p50_ms"] / 1e6)
        peak = report["peak"][r["precision"]]["gmacs_per_s"]
        assert r["peak_share"] == pytest.approx(r["gmacs_per_s"] / peak)
        assert 0 <= r["top1"] <= r["top5"] <= 100
    assert rows["torch"]["file_bytes"] == (export_dir / "model-torch.pt").stat().st_size
    assert rows["reference"]["file_bytes"] == rows["torch"]["file_bytes"] and rows["reference"]["precision"] == "fp32"
    assert rows["torch"]["agreement"] == 1.0
    # same arithmetic in another runtime or formulation: the same decisions
    assert rows["onnx"]["agreement"] >= 0.95 and rows["reference"]["agreement"] >= 0.95
    assert 0 <= rows["onnx-int8-dynamic"]["agreement"] <= 1

    assert "targets" not in report and report["schema"] == 2  # the project's goals are not the user's report
    eager, int8, share = compute_targets(report)
    assert eager["name"].startswith("fp32 eager") and eager["target"] == "<= 0.8"
    p50 = {n: rows[n]["latency"]["1"]["p50_ms"] for n in rows if rows[n]["latency"]}
    assert eager["value"] == pytest.approx(p50["torch"] / p50["reference"])
    assert int8["target"] == "<= 0.4" and int8["value"] == pytest.approx(p50["onnx-int8-dynamic"] / p50["torch"])
    assert "onnx-int8-dynamic" in int8["note"]
    best = min(("torch", "onnx", "onnx-int8-dynamic"), key=p50.__getitem__)
    assert share["target"] == ">= 0.35" and share["value"] == pytest.approx(rows[best]["peak_share"])
    assert f"best artifact: {best}" in share["note"]
    for t, limit in ((eager, 0.8), (int8, 0.4)):
        assert t["met"] == (t["value"] <= limit) and (t["met"] or t["note"].endswith("not met"))
    assert share["met"] == (share["value"] >= 0.35) and (share["met"] or share["note"].endswith("not met"))


def test_files_without_a_manifest_and_user_errors(export_dir, tmp_path) -> None:
    files = [tmp_path / "model-torch.pt", tmp_path / "model-onnx-int8-dynamic.onnx"]
    for f in files:
        shutil.copy(export_dir / f.name, f)
    config = ProfileConfig(threads=1, duration=0.0, min_runs=2, warmup=0, rounds=1, memory=False)
    report = profile_folder(None, config, files=files, progress=False)
    assert [(r.name, r.status) for r in report.rows] == [("torch", "ok"), ("onnx-int8-dynamic", "ok")]
    assert report.model["name"] == "t2t_vit_7" and report.settings["img_size"] == IMG
    assert report.rows[1].agreement is None  # no data and no manifest parity to fall back on

    with pytest.raises(ConfigError, match="does not exist"):
        profile_folder(tmp_path / "nowhere", config, progress=False)
    with pytest.raises(ConfigError, match="no manifest.json"):
        profile_folder(tmp_path, config, progress=False)
    with pytest.raises(ConfigError, match="batch sizes"):
        profile_folder(export_dir, ProfileConfig(batch_sizes=(0,)), progress=False)
    with pytest.raises(ConfigError, match="class sub-folders"):
        load_labelled(tmp_path, None)
    with pytest.raises(ConfigError, match="--min-top1 needs labelled images"):
        profile_folder(export_dir, ProfileConfig(checks=Checks(min_top1=50)), progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory probes fork only on Linux")
def test_forked_memory_probes_measure_what_fresh_processes_measure(export_dir, tmp_path) -> None:
    from deploy.profiler.memory import measure_all
    from deploy.profiler.variants import collect
    from t2tvit.progress import Progress

    def measured(fork: bool, formats: str, folder: Path) -> list:
        variants = collect(folder, mf.read(folder), [], "cpu", formats=formats, verify=False)
        with Progress(1, "memory", enabled=False) as bar:
            measure_all(variants, (IMG, IMG), [1], 1, bar, fork=fork)
        return variants

    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    (folder / "model-onnx-int8-dynamic.onnx").write_bytes(b"not a model")
    torch_row, broken = measured(True, "torch,onnx-int8-dynamic", folder)
    (fresh,) = measured(False, "torch", folder)
    # the server's library pages are not counted as the artifact's (without touching them again: +15 MB here)
    assert torch_row.peak_rss_mb and fresh.peak_rss_mb and not _memory_notes(torch_row), torch_row.notes
    assert abs(torch_row.peak_rss_mb - fresh.peak_rss_mb) <= max(4.0, 0.15 * fresh.peak_rss_mb)
    # an artifact that cannot load is its row's note; the others are measured all the same
    assert broken.peak_rss_mb is None and _memory_notes(broken)[0].startswith("memory probe failed:"), broken.notes


def _memory_notes(v) -> list[str]:
    return [n for n in v.notes if "memory" in n]


def test_t2t_bench_writes_the_report(export_dir, tmp_path, capsys) -> None:
    from t2t.cli import main

    out = tmp_path / "bench"
    args = ["bench", str(export_dir), "--formats", "torch,onnx-int8-dynamic,tensorrt", "--threads", "1"]
    args += ["--duration", "0.02", "--min-runs", "2", "--warmup", "0", "--rounds", "2"]
    args += ["--data", "digits", "--max-images", "20", "--batch-sizes", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["name"], r["status"]) for r in report["rows"]] == [
        ("torch", "ok"), ("onnx-int8-dynamic", "ok"), ("tensorrt", "skipped")
    ]  # fmt: skip
    assert report["settings"]["images"] == 20
    for r in report["rows"][:2]:  # the weights are resident after loading: at least half the file
        assert r["peak_rss_mb"] * 2**20 >= 0.5 * r["file_bytes"], r
        assert r["peak_rss_mb"] < 1000 and r["cuda_peak_mb"] is None
    assert "checks" not in report
    capsys.readouterr()

    # the user's checks mark rows and set the exit status; the compact table fits 120 columns
    args = ["bench", str(export_dir), "--formats", "torch,onnx-int8-dynamic", "--threads", "1", "--no-memory"]
    args += ["--duration", "0", "--min-runs", "2", "--warmup", "0", "--rounds", "1", "--out", str(out)]
    # random weights: the export's own parity agreement means nothing, so a gate on it needs --data
    assert main([*args, "--min-agreement", "0.0"]) == 1
    assert "torch: agreement with fp32 not measured" in capsys.readouterr().out
    assert main([*args, "--min-top1", "50"]) == 2
    assert "--min-top1 needs labelled images" in capsys.readouterr().err
    args += ["--data", "digits", "--max-images", "10"]
    assert main([*args, "--max-latency-ms", "10000", "--min-agreement", "0.0"]) == 0
    table = capsys.readouterr().out
    assert "Checks (p50 <= 10000 ms, agreement >= 0): passed" in table
    assert max(len(line) for line in table.splitlines()) <= 120, table
    assert main([*args, "--max-latency-ms", "0.0001"]) == 1
    table = capsys.readouterr().out
    assert "FAILED" in table and "torch: p50" in table
    report = json.loads((out / "report.json").read_text())
    assert report["checks"]["passed"] is False and all("p50" in r["checks"][0] for r in report["rows"])

    assert main(["bench", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", str(export_dir), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes takes comma-separated positive integers" in capsys.readouterr().err
    assert main(["bench", str(export_dir), "--data", str(tmp_path / "nope")]) == 2
    assert "--data folder" in capsys.readouterr().err
    assert main(["bench", str(tmp_path)]) == 2  # a folder without manifest.json
    assert "no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--batch-sizes" in capsys.readouterr().out
