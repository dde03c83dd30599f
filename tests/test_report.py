"""The profiler's report writers, from a synthetic report dict: every file, every row, whatever its status."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from deploy.report import (
    BARS_NAME,
    CSV_NAME,
    JSON_NAME,
    MD_NAME,
    SCATTER_NAME,
    accuracy_points,
    latency_bars_data,
    pareto_front,
    print_table,
    read_csv,
    read_report,
    render_markdown,
    write_report,
)
from t2tvit.errors import ConfigError

FAIL_REASON = "onnxruntime: Unsupported op | DequantizeLinear (opset 21) [int8]"
SKIP_REASON = "needs a CUDA GPU; install tensorrt"


def _latency(p50: float, batch: int) -> dict[str, Any]:
    return {
        "runs": 120,
        "mean_ms": p50 * 1.03,
        "std_ms": p50 * 0.05,
        "min_ms": p50 * 0.95,
        "p50_ms": p50,
        "p90_ms": p50 * 1.08,
        "p95_ms": p50 * 1.12,
        "p99_ms": p50 * 1.3,
        "p50_ci_ms": [p50 * 0.98, p50 * 1.02],
        "ci_level": 0.95,
        "throughput_ips": batch * 1000 / (p50 * 1.03),
    }


def _row(name: str, fmt: str, precision: str, p50: float | None, **kw: Any) -> dict[str, Any]:
    ok = p50 is not None
    row = {
        "name": name,
        "format": fmt,
        "precision": precision,
        "device": "cpu",
        "file": f"artifacts/{name}.bin" if ok and name != "reference" else None,
        "file_bytes": 17_400_000 if ok else None,
        "status": "ok",
        "reason": None,
        "load_s": 0.42 if ok else None,
        "first_inference_ms": 3 * p50 if ok else None,
        "latency": {str(b): _latency(p50 * b**0.8, b) for b in (1, 8)} if ok else {},
        "peak_rss_mb": 612.5 if ok else None,
        "cuda_peak_mb": None,
        "gmacs_per_s": 45.6 if ok else None,
        "peak_share": 0.31 if ok else None,
        "top1": None,
        "top5": None,
        "agreement": None,
        "checks": [],
    }
    row.update(kw)
    return row


def make_report() -> dict[str, Any]:
    rows = [
        _row("reference", "pytorch", "fp32", 24.1, top1=71.2, top5=90.1, agreement=1.0),
        _row("torchscript", "torchscript", "fp32", 22.5, top1=71.2, top5=90.1, agreement=1.0),
        _row("onnx-fp32", "onnx", "fp32", 18.3, top1=71.2, top5=90.1, agreement=1.0),
        _row(
            "onnx-int8-static",
            "onnx",
            "int8",
            9.7,
            top1=69.8,
            top5=89.4,
            agreement=0.962,
            peak_share=0.18,
            checks=["agreement 0.962 < 0.97"],
        ),
        _row("onnx-int8-dynamic", "onnx", "int8", None, status="failed", reason=FAIL_REASON),
        _row("tensorrt-fp16", "tensorrt", "fp16", None, device="cuda", status="skipped", reason=SKIP_REASON),
    ]
    return {
        "schema": 2,
        "created": "2025-01-02T03:04:05+00:00",
        "command": "t2t bench --model t2t_vit_7 --artifacts artifacts/ --batch 1 8",
        "machine": {
            "cpu": "Intel(R) Xeon(R) Platinum 8480+",
            "cores": 2,
            "logical_cpus": 4,
            "threads": 2,
            "gpu": None,
            "os": "Linux-6.8-x86_64",
            "python": "3.12.3",
        },
        "versions": {"torch": "2.15.0", "onnxruntime": "1.31.1", "timm": "1.0.31"},
        "settings": {
            "batch_sizes": [1, 8],
            "threads": 2,
            "duration_s": 3.0,
            "min_runs": 50,
            "warmup": 10,
            "img_size": 224,
            "data": "imagenette/val",
            "images": 500,
            "rounds": 3,
        },
        "model": {
            "name": "t2t_vit_7",
            "num_classes": 1000,
            "params": 4_256_320,
            "macs_per_image": 1_100_000_000,
            "source": "71.7_T2T_ViT_7.pth.tar",
        },
        "peak": {
            "fp32": {"gmacs_per_s": 147.2, "op": "torch.mm", "shape": "1024x1024x1024"},
            "int8": {"gmacs_per_s": 402.9, "op": "torch._int_mm", "shape": "1024x1024x1024"},
        },
        "rows": rows,
        "checks": {
            "max_latency_ms": 12.0,
            "min_agreement": 0.97,
            "passed": False,
            "failures": ["onnx-int8-static: agreement 0.962 < 0.97"],
        },
    }


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    from PIL import Image

    with Image.open(path) as im:
        assert im.width >= 600 and im.height >= 300
        return im.size


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, list[Path]]:
    report = make_report()
    out = tmp_path_factory.mktemp("report") / "nested"  # created by write_report
    return report, out, write_report(report, out)


def test_every_file_is_written(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    _, out, paths = written
    names = {JSON_NAME, CSV_NAME, MD_NAME, SCATTER_NAME, BARS_NAME}
    assert {p.name for p in paths} == names and all(p.parent == out and p.is_file() for p in paths)
    for name in (SCATTER_NAME, BARS_NAME):
        _check_png(out / name)


def test_json_round_trips(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    report, out, _ = written
    assert json.loads((out / JSON_NAME).read_text()) == report
    assert read_report(out).to_dict() == report == read_report(out / JSON_NAME).to_dict()


def test_csv_has_one_line_per_row_and_batch(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    report, out, _ = written
    lines = read_csv(out / CSV_NAME)
    assert len(lines) == 4 * 2 + 2  # 4 ok rows x 2 batch sizes + one line each for the failed and skipped rows
    by_name: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_name.setdefault(line["name"], []).append(line)
    assert list(by_name) == [r["name"] for r in report["rows"]]
    (failed,) = by_name["onnx-int8-dynamic"]
    assert failed["status"] == "failed" and failed["reason"] == FAIL_REASON
    assert failed["batch"] is None and failed["p50_ms"] is None and failed["model"] == "t2t_vit_7"
    (skipped,) = by_name["tensorrt-fp16"]
    assert skipped["status"] == "skipped" and skipped["reason"] == SKIP_REASON and skipped["device"] == "cuda"
    int8 = by_name["onnx-int8-static"]
    assert [x["batch"] for x in int8] == [1, 8] and int8[0]["runs"] == 120
    stats = report["rows"][3]["latency"]["8"]
    assert int8[1]["p50_ms"] == stats["p50_ms"] and int8[1]["p50_ci_hi_ms"] == stats["p50_ci_ms"][1]
    assert int8[0]["agreement"] == 0.962 and int8[0]["file_bytes"] == 17_400_000


def _md_table(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def test_markdown_holds_rows_checks_machine_and_plots(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    report, out, _ = written
    md = (out / MD_NAME).read_text()
    assert md.startswith("# Latency report: t2t_vit_7 on Intel(R) Xeon(R) Platinum 8480+")
    for row in report["rows"]:
        assert row["name"] in md
    assert "Intel(R) Xeon(R) Platinum 8480+" in md and f"`{report['command']}`" in md
    assert "2 physical cores" in md and "onnxruntime 1.31.1" in md and report["created"] in md
    assert "- Checks (p50 <= 12 ms, agreement >= 0.97): FAILED" in md
    assert "- onnx-int8-static: agreement 0.962 < 0.97" in md and "target" not in md
    assert "fp32 147.2 GMAC/s (torch.mm, 1024x1024x1024)" in md and "int8 402.9 GMAC/s" in md
    assert f"**onnx-int8-dynamic** failed: {FAIL_REASON}" in md
    assert f"**tensorrt-fp16** skipped: {SKIP_REASON}" in md
    assert f"]({SCATTER_NAME})" in md and f"]({BARS_NAME})" in md
    assert "not plotted: onnx-int8-dynamic (failed: onnxruntime" in md

    table = _md_table(md)
    assert len(table) == 2 + 4 * 2 + 2
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in table]
    assert len(set(cells)) == 1, "a reason's | must be escaped, not split the cell"
    failed = next(line for line in table if "onnx-int8-dynamic" in line)
    assert "Unsupported op \\| DequantizeLinear" in failed
    int8 = next(line for line in table if line.startswith("| onnx-int8-static"))
    # p50 [CI] at batch 1, mean ± std, size, peak share, top-1 and agreement in their formats
    for text in ("| 9.70 [9.51, 9.89] |", "| 9.99 ± 0.48 |", "| 17.40 |", "| 18.0 |", "| 69.80 |", "| 96.2 |"):
        assert text in int8


def test_plot_data_leaves_out_only_what_cannot_be_plotted() -> None:
    report = make_report()
    scatter = accuracy_points(report)
    assert scatter["batch"] == 1 and scatter["metric"] == "top1"
    assert [p["name"] for p in scatter["points"]] == [r["name"] for r in report["rows"][:4]]
    assert scatter["skipped"] == [
        ("onnx-int8-dynamic", f"failed: {FAIL_REASON}"),
        ("tensorrt-fp16", f"skipped: {SKIP_REASON}"),
    ]
    bars = latency_bars_data(report)
    assert [b["name"] for b in bars["bars"]] == ["onnx-int8-static", "onnx-fp32", "torchscript", "reference"]
    # without any top-1 the y axis falls back to agreement x 100; a row without agreement is left out
    for row in report["rows"]:
        row["top1"] = None
    report["rows"][1]["agreement"] = None
    scatter = accuracy_points(report)
    assert scatter["metric"] == "agreement" and "agreement" in scatter["ylabel"]
    assert [p["accuracy"] for p in scatter["points"]] == [100.0, 100.0, pytest.approx(96.2)]
    assert ("torchscript", "no agreement") in scatter["skipped"]


def test_pareto_front() -> None:
    pts = [
        ("slow-best", 30.0, 80.0),
        ("fast-worst", 5.0, 60.0),
        ("dominated", 20.0, 70.0),  # mid beats it: faster and as accurate... and more
        ("mid", 10.0, 75.0),
        ("same-lat-worse", 10.0, 74.0),  # same latency as mid, lower accuracy
        ("same-acc-slower", 12.0, 75.0),  # same accuracy as mid, slower
        ("mid-twin", 10.0, 75.0),  # exact tie with mid: neither dominates the other
        ("no-accuracy", 1.0, None),
        ("nan", float("nan"), 99.0),
    ]
    assert pareto_front(pts) == ["fast-worst", "mid", "mid-twin", "slow-best"]
    assert pareto_front([]) == []
    assert pareto_front([("only", 1.0, 1.0)]) == ["only"]
    assert pareto_front([("a", 1.0, 50.0), ("b", 2.0, 50.0)]) == ["a"]


def test_report_without_ok_rows_still_writes_everything(tmp_path: Path) -> None:
    report = make_report()
    for row in report["rows"]:
        if row["status"] == "ok":
            row.update(status="failed", reason="ModuleNotFoundError: No module named 'onnxruntime'", latency={})
    paths = write_report(report, tmp_path)
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    for name in (SCATTER_NAME, BARS_NAME):
        _check_png(tmp_path / name)
    assert len(read_csv(tmp_path / CSV_NAME)) == 6
    md = (tmp_path / MD_NAME).read_text()
    assert all(r["name"] in md for r in report["rows"]) and md.count("not plotted:") == 2
    assert read_report(tmp_path).to_dict() == report


def test_sparse_report_does_not_crash(tmp_path: Path) -> None:
    """Every optional field None or absent: dashes in the table, still every file."""
    report = {"schema": 2, "rows": [{"name": "x", "status": "ok", "latency": {"1": {"p50_ms": 2.0}}}, {"name": "y"}]}
    write_report(report, tmp_path)
    md = render_markdown(report)
    assert "| x |" in md and "| y |" in md and "## Checks" not in md
    assert len(read_csv(tmp_path / CSV_NAME)) == 2


def test_print_table(capsys: pytest.CaptureFixture[str]) -> None:
    report = make_report()
    print_table(report)
    text = capsys.readouterr().out
    for row in report["rows"]:
        assert row["name"] in text
    assert "FAILED" in text and "Unsupported op | DequantizeLinear (opset 21) [int8]" in text
    assert "9.70 [9.51, 9.89]" in text  # not squeezed into a wrapped cell when piped
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120  # a normal terminal, no wrapping
    header = next(line for line in lines if "p50 ms" in line)
    assert [h.strip() for h in header.strip("│┃ ").split("┃")] == [
        "name", "precision", "MB", "batch", "p50 ms [95% CI]", "img/s", "top-1 %", "agree %", "checks"
    ]  # fmt: skip
    int8 = next(line for line in lines if line.lstrip("│ ").startswith("onnx-int8-static"))
    assert "FAIL" in int8  # the row that misses a check is marked


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "No profiler report"),
        ("{not json", "not a readable JSON report"),
        ('["a", "list"]', "not a profiler report"),
        ('{"schema": 1, "rows": []}', "schema 1"),
    ],
)
def test_read_report_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / JSON_NAME
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_report(tmp_path)


def test_write_report_leaves_the_dict_alone(tmp_path: Path) -> None:
    report = make_report()
    before = copy.deepcopy(report)
    write_report(report, tmp_path)
    assert report == before


def test_cuda_memory_column_and_cuda_peak() -> None:
    report = make_report()
    report["rows"][2].update(device="cuda", cuda_peak_mb=301.25)
    report["peak_cuda"] = {"fp16": {"gmacs_per_s": 250_000.0, "op": "torch.matmul fp16 (cuda)", "shape": "8192"}}
    md = render_markdown(report)
    assert "| CUDA peak MB |" in md and "| 301.2 |" in md
    assert "CUDA: fp16 250000.0 GMAC/s (torch.matmul fp16 (cuda), 8192)." in md
    report["peak_cuda"] = {"error": "CUDA driver too old"}
    assert "CUDA: not measured (CUDA driver too old)." in render_markdown(report)
    assert "CUDA peak MB" not in render_markdown(make_report())  # no CUDA row: no empty column


def test_an_int8_row_slower_than_its_float_sibling_gets_a_note_and_a_faster_one_does_not(tmp_path: Path) -> None:
    from deploy.profiler.schema import Report

    data = make_report()
    data["rows"] = [
        _row("openvino", "openvino", "bf16", 10.0),
        _row("openvino-fp16", "openvino-fp16", "bf16", 11.0),
        _row("openvino-int8", "openvino-int8", "int8", 12.5, reason="OpenVINO inference precision bf16 (auto)"),
        _row("onnx", "onnx", "fp32", 20.0),
        _row("onnx-int8-dynamic", "onnx-int8-dynamic", "int8", 15.0),
        _row("onnx-int8-static", "onnx-int8-static", "int8", None, status="failed", reason=FAIL_REASON),
    ]
    report = Report.from_dict(data)
    report.notes = report.find_notes()
    note = (
        "openvino-int8 (int8) is 1.25x slower than openvino (bf16) at batch 1 (12.5 vs 10 ms p50): int8 does not "
        "pay on this CPU, so openvino is the faster choice unless file size matters"
    )
    assert report.notes == [note]
    assert report.row("openvino-int8").reason == f"OpenVINO inference precision bf16 (auto); {note}"
    assert report.row("onnx-int8-dynamic").reason is None  # faster than onnx: nothing to say
    assert report.find_notes() == [note] and report.row("openvino-int8").reason.count(note) == 1  # idempotent
    files = write_report(report, tmp_path)
    md = (tmp_path / MD_NAME).read_text()
    assert f"## Notes\n\n- {note}\n" in md and md.index("## Notes") < md.index("## Results")
    assert read_report(tmp_path).notes == [note]
    assert note in (tmp_path / CSV_NAME).read_text()
    assert len(files) == 5
    plain = make_report()  # a report without such a row has no Notes section, and its JSON no "notes" key
    assert "## Notes" not in render_markdown(plain) and "notes" not in Report.from_dict(plain).to_dict()


def test_t2t_compress_summary_repeats_the_report_notes(tmp_path: Path) -> None:
    from deploy.pipeline import PipelineResult

    note = "openvino-int8 (int8) is 1.25x slower than openvino (bf16) at batch 1 (12.5 vs 10 ms p50): ..."
    result = PipelineResult(tmp_path, {"report": {"folder": str(tmp_path / "report"), "notes": [note]}}, 1.0)
    assert f"  note: {note}" in result.summary()
    ship = "ship onnx-int8-dynamic (model-onnx-int8-dynamic.onnx): the fastest artifact that ..."
    result = PipelineResult(tmp_path, {"report": {"folder": str(tmp_path / "report"), "verdict": [ship]}}, 1.0)
    assert f"  {ship}" in result.summary()
    result = PipelineResult(tmp_path, {"report": {"folder": str(tmp_path / "report")}}, 1.0)  # an older record
    assert not [line for line in result.summary() if "note:" in line]


def _verdict_report(rows: list[dict[str, Any]], checks: dict[str, Any] | None = None) -> Any:
    from deploy.profiler.schema import Report

    data = make_report()
    data["rows"], data["checks"] = rows, checks
    report = Report.from_dict(data)
    report.conclude()
    return report


def test_the_verdict_picks_the_fastest_faithful_artifact_and_the_best_of_each_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.report import verdict_lines

    report = _verdict_report(
        [
            _row("torch", "torch", "fp32", 20.0, agreement=1.0, file_bytes=16_000_000),
            _row("onnx", "onnx", "fp32", 18.0, agreement=1.0),
            _row("openvino-int8", "openvino-int8", "int8", 10.0, agreement=0.98),  # faster, not faithful
            _row("onnx-int8-dynamic", "onnx-int8-dynamic", "int8", 12.5, agreement=0.995, file_bytes=4_000_000),
            _row("reference", "pytorch", "fp32", 2.0, agreement=1.0),  # outside the format table: not a file to ship
            _row("torch-int8", "torch-int8", "int8", 3.0, agreement=1.0, timed_only=True),  # its parity failed
            _row("tensorrt-fp16", "tensorrt-fp16", "fp16", None, status="skipped", reason=SKIP_REASON),
        ]
    )
    v = report.verdict
    assert v["batch"] == 1 and v["pick"]["row"] == "onnx-int8-dynamic" and v["pick"]["baseline"] == "torch"
    assert v["pick"]["speedup"] == pytest.approx(20.0 / 12.5) and v["pick"]["size_ratio"] == pytest.approx(0.25)
    assert [(r["runtime"], r["row"]) for r in v["runtimes"]] == [
        ("ONNX Runtime", "onnx-int8-dynamic"),
        ("PyTorch eager", "torch"),
    ]
    lines = verdict_lines(report)
    assert lines[0].startswith("ship onnx-int8-dynamic (artifacts/onnx-int8-dynamic.bin): the fastest artifact that")
    assert "1.60x the speed of torch (fp32 eager) and 0.25x its size" in lines[0]
    write_report(report, tmp_path)
    md = (tmp_path / MD_NAME).read_text()
    assert md.splitlines()[2] == "## Verdict" and md.index("## Verdict") < md.index("## Machine")
    assert read_report(tmp_path).verdict == v  # saved and read back
    print_table(report)
    assert lines[0] in " ".join(capsys.readouterr().out.split())


def test_the_verdict_follows_the_users_checks_and_says_when_nothing_qualifies() -> None:
    rows = [
        _row("torch", "torch", "fp32", 20.0, agreement=1.0),
        _row("onnx-int8-dynamic", "onnx-int8-dynamic", "int8", 12.5, agreement=1.0, checks=["p50 12.5 > 12"]),
        _row("onnx", "onnx", "fp32", 18.0, agreement=1.0),
    ]
    checked = _verdict_report(rows, checks={"max_latency_ms": 19.0, "passed": False, "failures": []})
    assert checked.verdict["rule"] == "meets your checks" and checked.verdict["pick"]["row"] == "onnx"
    unknown = _verdict_report([_row("torch", "torch", "fp32", 20.0), _row("onnx", "onnx", "fp32", 18.0)])
    assert unknown.verdict["pick"] is None and "pass --data" in unknown.verdict["why"]
    from deploy.report import verdict_lines

    assert verdict_lines(unknown) == [f"no file to recommend: {unknown.verdict['why']}"]
    assert verdict_lines(make_report()) == []  # a report saved before verdicts: nothing, no crash


def test_a_comparisons_verdict_measures_the_pick_against_its_own_models_fp32_row() -> None:
    from deploy.report import render_comparison

    report = _verdict_report(
        [
            _row("a/torch", "torch", "fp32", 40.0, agreement=1.0, model="a"),
            _row("a/onnx", "onnx", "fp32", 30.0, agreement=1.0, model="a"),
            _row("b/torch", "torch", "fp32", 10.0, agreement=1.0, model="b"),
            _row("b/onnx", "onnx", "fp32", 8.0, agreement=1.0, model="b"),
        ]
    )
    assert report.verdict["pick"]["row"] == "b/onnx" and report.verdict["pick"]["baseline"] == "b/torch"
    assert report.verdict["pick"]["speedup"] == pytest.approx(1.25)
    assert "## Verdict" in render_comparison(report, plots=())


def _comparison_report() -> Any:
    """Two models, two formats each: the shape ``profile_folders`` gives (``model.models``, each row's model)."""
    rows = [
        _row(f"{m}/{f}", f, "fp32", p50, agreement=1.0, model=m, params=n, macs=n * 250)
        for m, n in (("t2t_vit_7", 4_300_000), ("resnet18", 11_700_000))
        for f, p50 in (("torch", 20.0), ("onnx", 15.0))
    ]
    report = _verdict_report(rows)
    report.model = {
        "name": "t2t_vit_7, resnet18",
        "models": [
            {"name": m, "model": m, "img_size": [224, 224], "params": n, "macs_per_image": n * 250}
            for m, n in (("t2t_vit_7", 4_300_000), ("resnet18", 11_700_000))
        ],
    }
    return report


def test_one_write_report_writes_both_views_each_with_its_files_and_the_verdict_first(tmp_path: Path) -> None:
    """The typed Report says which view (``is_comparison``), for the Report and for its JSON document alike; each
    view writes its own plots, and both report.md open with the verdict."""
    import deploy.report
    from deploy.report import MACS_NAME, PARETO_NAME, is_comparison

    single = _verdict_report([_row("torch", "torch", "fp32", 20.0, agreement=1.0), _row("onnx", "onnx", "fp32", 18.0)])
    comparison = _comparison_report()
    assert not single.is_comparison and comparison.is_comparison
    assert not is_comparison(single.to_dict()) and is_comparison(comparison.to_dict())
    assert not hasattr(deploy.report, "write_comparison")  # one writer
    views = {"single": (SCATTER_NAME, BARS_NAME), "comparison": (MACS_NAME, PARETO_NAME)}
    for name, report in (("single", single), ("comparison", comparison)):
        for kind, given in (("typed", report), ("dict", report.to_dict())):
            out = tmp_path / name / kind
            written = write_report(given, out)
            assert [p.name for p in written] == [JSON_NAME, CSV_NAME, MD_NAME, *views[name]]
            assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
            for png in views[name]:
                _check_png(out / png)
            md = (out / MD_NAME).read_text()
            sections = [line for line in md.splitlines() if line.startswith("## ")]
            assert sections[0] == "## Verdict", sections
            assert md.startswith("# Model comparison on " if name == "comparison" else "# Latency report: ")
            assert read_report(out).is_comparison is (name == "comparison")
    assert "## Models" in (tmp_path / "comparison" / "typed" / MD_NAME).read_text()


def test_the_comparison_table_declares_its_columns_with_the_single_models() -> None:
    """A column the two views share has one header and one format: the same text in both tables."""
    from deploy.report import comparison_table, table

    report = _comparison_report()
    single_header, single_lines, _ = table(report)
    comp_header, comp_lines = comparison_table(report)
    for header in ("format", "precision", "status", "size MB", "peak RSS MB", "% of peak", "agreement %"):
        single = single_lines[0][single_header.index(header)]
        assert single == comp_lines[0][comp_header.index(header)], header
    assert "p50 ms [95% CI]" in single_header and "p50 ms b1 [95% CI]" in comp_header
    p50 = single_lines[0][single_header.index("p50 ms [95% CI]")]
    assert comp_lines[0][comp_header.index("p50 ms b1 [95% CI]")] == p50


def test_no_module_of_the_report_package_imports_a_private_name_of_a_sibling() -> None:
    """A name two modules use is public in the one that owns it: no ``from .x import _y``, no ``x._y``."""
    import ast

    package = Path(__file__).resolve().parents[1] / "deploy" / "report"
    siblings = {p.stem for p in package.glob("*.py")}
    wrong = []
    for path in sorted(package.glob("*.py")):
        nodes = list(ast.walk(ast.parse(path.read_text())))
        modules: set[str] = set()  # sibling modules bound to a name here (``from . import x``)
        for node in nodes:
            inside = isinstance(node, ast.ImportFrom) and (
                node.level == 1 or (node.module or "").startswith("deploy.report")
            )
            for alias in node.names if inside else []:
                if alias.name.startswith("_"):
                    wrong.append(f"{path.name}: from {'.' * node.level}{node.module or ''} import {alias.name}")
                if node.module is None and alias.name in siblings:
                    modules.add(alias.asname or alias.name)
        for node in nodes:
            private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            if private and isinstance(node.value, ast.Name) and node.value.id in modules:
                wrong.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert wrong == []
    assert siblings >= {"text", "columns", "markdown", "comparison", "plots", "files"}
