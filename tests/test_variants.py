"""Comparing models (``deploy.profiler.profile_folders`` / ``compare_models``, ``t2t bench A B``).

Two tiny models at 32 px, random weights: a T2T-ViT-7 and a timm CNN (``resnet10t``), each exported to
torch, torch-int8 and TorchScript through the format table. The comparison is measured on the bundled digits, so
every row's agreement is against its own model's fp32 torch predictions (a random model's predictions are
its own; the other model's would agree on about one image in ten). Timings are tiny: behaviour, not speed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import deploy
from deploy import manifest as mf
from deploy.profiler import PUBLISHED_TOP1, ProfileConfig, compare_models, profile_folders
from deploy.report import MACS_NAME, PARETO_NAME, comparison_points, read_csv, read_report, write_report
from t2t.cli import main
from t2tvit.errors import ConfigError

IMG, CNN, T2T = 32, "resnet10t", "t2t_vit_7"
FORMATS = "torch,torch-int8,torchscript"  # TorchScript, not ONNX: its export takes 1 s, not 6

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**kw: object) -> ProfileConfig:
    base = dict(batch_sizes=(1, 2), threads=1, duration=0.0, min_runs=2, warmup=0, rounds=1, memory=False)
    return ProfileConfig(**(base | kw))


def _export(name: str, out: Path, formats: str = FORMATS, img: int = IMG) -> Path:
    result = deploy.export_checkpoint(
        model=name, num_classes=10, img_size=img, formats=formats, out=out, batch=(1, 1, 2),
        parity_images=8, calib_size=8, progress=False,
    )  # fmt: skip
    return result.folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {T2T: _export(T2T, root / T2T), CNN: _export(CNN, root / CNN)}


@pytest.fixture(scope="module")
def report(folders: dict[str, Path]) -> object:
    config = _config(data="digits", max_images=40)
    return profile_folders([folders[T2T], folders[CNN]], config, command="test", progress=False)


def test_every_model_format_row_with_its_own_macs_and_agreement(report: object) -> None:
    rows = {r.name: r for r in report.rows}
    assert set(rows) == {f"{m}/{f}" for m in (T2T, CNN) for f in FORMATS.split(",")}
    assert all(r.status == "ok" and set(r.latency) == {"1", "2"} for r in rows.values())
    models = {m["name"]: m for m in report.model["models"]}
    for m in (T2T, CNN):
        mine = [r for r in rows.values() if r.model == m]
        assert {r.macs for r in mine} == {models[m]["macs_per_image"]} and models[m]["macs_per_image"] > 0
        assert {r.params for r in mine} == {models[m]["params"]}
        assert rows[f"{m}/torch"].agreement == 1.0  # its own reference
        assert rows[f"{m}/torchscript"].agreement >= 0.9  # same function; another model's would be ~0.1
        assert models[m]["published_top1"] == PUBLISHED_TOP1.get(m, (None,))[0]
    assert models[T2T]["macs_per_image"] != models[CNN]["macs_per_image"]
    # torch-int8 quantizes only nn.Linear: the CNN's file keeps its fp32 convolutions
    size = {n: r.file_bytes for n, r in rows.items()}
    assert size[f"{CNN}/torch-int8"] > 0.8 * size[f"{CNN}/torch"]
    assert size[f"{T2T}/torch-int8"] < 0.5 * size[f"{T2T}/torch"]
    assert report.settings["img_size"] == IMG and report.settings["images"] == 40


def test_report_round_trips_and_plots_are_written(report: object, tmp_path: Path) -> None:
    written = write_report(report, tmp_path)
    assert {p.name for p in written} >= {"report.json", "report.csv", "report.md", MACS_NAME, PARETO_NAME}
    for name in (MACS_NAME, PARETO_NAME):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    back = read_report(tmp_path)
    assert back.to_dict() == read_report(tmp_path).to_dict()
    assert [r.name for r in back.rows] == [r.name for r in report.rows]
    assert [(r.model, r.macs, r.agreement) for r in back.rows] == [(r.model, r.macs, r.agreement) for r in report.rows]
    assert back.model["models"] == report.model["models"]
    csv = read_csv(tmp_path / "report.csv")
    assert {(c["model"], c["batch"]) for c in csv} == {(m, b) for m in (T2T, CNN) for b in (1, 2)}
    md = (tmp_path / "report.md").read_text()
    assert f"| {CNN} | torchscript | fp32 | ok |" in md and "top-1 %" in md
    assert comparison_points(back)["measured"]  # digits top-1 measured: no published numbers plotted


def test_a_mismatch_is_refused_in_one_sentence_unless_allowed(folders: dict[str, Path], tmp_path: Path, capsys) -> None:
    other = _export(CNN, tmp_path / "cnn48", formats="torch", img=48)
    with pytest.raises(ConfigError) as e:
        profile_folders([folders[T2T], other], _config(), progress=False)
    text = str(e.value)
    assert "image size" in text and "--allow-mismatch" in text and "\n" not in text and text.count(". ") == 0
    assert main(["bench", str(folders[T2T]), str(other), "--no-memory"]) == 2
    assert "image size" in capsys.readouterr().err
    batch = _export(CNN, tmp_path / "cnn_b4", formats="torch", img=IMG)
    manifest = mf.path(batch).read_text().replace('"max": 2', '"max": 4')
    mf.path(batch).write_text(manifest)
    with pytest.raises(ConfigError, match="batch settings"):
        profile_folders([folders[CNN], batch], _config(), progress=False)
    allowed = profile_folders(
        [folders[T2T], other], _config(formats="torch", batch_sizes=(1,)), allow_mismatch=True, progress=False
    )
    assert allowed.settings["img_size"] == [IMG, 48]
    assert [(r.name, r.status) for r in allowed.rows] == [(f"{T2T}/torch", "ok"), (f"{CNN}/torch", "ok")]


def test_a_failed_format_and_a_failed_model_are_rows_with_their_reason(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = shutil.copytree(folders[CNN], tmp_path / "broken")
    (broken / "model-torchscript.pt").unlink()
    rep = profile_folders([folders[T2T], broken], _config(formats="torch,torchscript"), progress=False)
    row = next(r for r in rep.rows if r.name == f"{CNN}/torchscript")
    assert row.status == "failed" and "missing" in row.reason
    assert next(r for r in rep.rows if r.name == f"{T2T}/torchscript").status == "ok"

    import deploy.export

    real = deploy.export.export_checkpoint

    def fails_for_the_t2t(checkpoint: object = None, **kw: object) -> object:
        if kw["model"] == T2T:
            raise RuntimeError("converter crashed")
        return real(checkpoint, **kw)

    monkeypatch.setattr(deploy.export, "export_checkpoint", fails_for_the_t2t)
    rep = compare_models(
        [T2T, CNN], tmp_path / "work", _config(batch_sizes=(1,)), formats="torch", img_size=IMG, num_classes=10,
        batch=(1, 1, 2), calib_size=4, parity_images=4, progress=False,
    )  # fmt: skip
    rows = {r.name: r for r in rep.rows}
    assert rows[f"{T2T}/torch"].status == "failed" and "converter crashed" in rows[f"{T2T}/torch"].reason
    assert rows[f"{CNN}/torch"].status == "ok" and rows[f"{CNN}/torch"].latency["1"]["p50_ms"] > 0
    with pytest.raises(ConfigError, match="unknown model"):
        compare_models(["t2t_vit_8"], tmp_path / "w2", _config(), progress=False)


def test_t2t_bench_with_two_folders_writes_the_comparison(folders: dict[str, Path], tmp_path: Path) -> None:
    fast = ["--no-memory", "--duration", "0", "--min-runs", "2", "--rounds", "1", "--warmup", "0", "--threads", "1"]
    out = tmp_path / "bench"
    assert main(["bench", str(folders[T2T]), str(folders[CNN]), "--formats", "torch", *fast, "--out", str(out)]) == 0
    rep = read_report(out)
    assert [r.name for r in rep.rows] == [f"{T2T}/torch", f"{CNN}/torch"]
    assert (out / MACS_NAME).is_file() and (out / PARETO_NAME).is_file()
    assert "published" in (out / "report.md").read_text()  # no data: the published top-1, marked


def test_a_row_whose_parity_failed_is_timed_only_as_a_field(folders: dict[str, Path], tmp_path: Path) -> None:
    from deploy.report import render_comparison

    moved = shutil.copytree(folders[CNN], tmp_path / "moved")
    manifest = mf.read(moved)
    entry = manifest.entry("torch-int8")
    entry.status, entry.reason = "failed", "parity check failed: agreement 0.5 < 0.99"
    entry.parity["passed"] = False
    mf.write(moved, manifest)
    config = _config(formats="torch,torch-int8", batch_sizes=(1,), time_unverified=True)
    rep = profile_folders([folders[T2T], moved], config, progress=False)
    rows = {r.name: r for r in rep.rows}
    assert rows[f"{CNN}/torch-int8"].status == "ok" and rows[f"{CNN}/torch-int8"].timed_only is True
    assert not any(r.timed_only for name, r in rows.items() if name != f"{CNN}/torch-int8")
    saved = rep.to_dict()
    assert [r["name"] for r in saved["rows"] if "timed_only" in r] == [f"{CNN}/torch-int8"]
    text = render_comparison(saved, plots=())
    assert f"**{CNN}/torch-int8** ok but unverified: " in text
    # the state is the field, not the wording of the reason
    saved["rows"] = [{**r, "reason": "x"} if r.get("timed_only") else r for r in saved["rows"]]
    assert f"**{CNN}/torch-int8** ok but unverified: x" in render_comparison(saved, plots=())
