"""Fault injection: what a hostile-but-ordinary user does to an export folder, and the promised outcome.

Every probe runs for real (real files, real runtimes, real processes killed with SIGKILL) and asserts the
outcome: the exit status, one sentence and no traceback, and that nothing was lost. A command whose
outcome is the subject runs in this process (``t2t_here``: :func:`t2t.cli.main`, what the script calls);
one that must be a process of its own (killed, concurrent, another user, another umask, started after a
killed export whose leftovers it removes) is a child.

* a tampered, truncated or incomplete artifact (ONNX, .ptl, OpenVINO, ncnn) is refused by ``deploy.open`` /
  ``t2t predict``, is a failed row of ``t2t bench`` (exit 1), and fails ``t2t verify`` (exit 1);
* ``--no-verify`` runs a file changed on purpose; bench says where its agreement figure comes from;
* an export into an existing folder merges (other formats, ``bench/`` and the user's files are kept);
* a second concurrent export into the same folder is refused; a dead process's lock is taken over;
* an unwritable folder is refused before any work; an export killed with SIGKILL leaves the previous
  export byte-identical, and the next export cleans its leftovers; a converter child dies with its parent;
* a moved pipeline folder still verifies, and a failed ``redo`` of a stage keeps its previous result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from deploy import manifest as mf
from deploy.base import FORMATS
from deploy.export import export_checkpoint, export_lock, verify_artifacts, verify_folder
from t2tvit.errors import ConfigError
from tests.conftest import CONVERTED
from tests.conftest import t2t_here as t2t

IMG = 32
FORMATS_HERE = [n for n in CONVERTED if FORMATS[n].missing() is None]


@pytest.fixture(scope="module")
def export(converted_export) -> dict[str, Any]:
    """The digits model exported to every format the probes tamper with that can be built here (the
    session's shared export: a probe damages a copy)."""
    assert converted_export["formats"] == FORMATS_HERE
    return converted_export


def child_t2t(*args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
    """``python -m t2t ARGS`` in a process of its own."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "t2t", *args], capture_output=True, text=True, env=env, timeout=timeout, **kw
    )


def one_sentence(res: subprocess.CompletedProcess) -> str:
    """The refusal: exactly one non-empty line on stderr, no traceback."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[W")]  # torch's C++ warnings
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    return lines[0]


def copy_of(export: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(export["out"], dest)
    return dest


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def flip(path: Path, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def image() -> Path:
    from t2tvit.data import dataset_split

    return next(p for p in sorted((dataset_split("digits", "val") / "3").iterdir()) if p.is_file())


# ---------------------------------------------------------------- 1. integrity wherever an artifact is used

# (format, the file to damage, how): the artifact file itself, or its companion (the IR's or ncnn's weights)
DAMAGE = [
    ("onnx", ".onnx", "flip"),
    ("onnx", ".onnx", "truncate"),
    ("onnx", ".onnx", "delete"),
    ("ptl", ".ptl", "flip"),
    ("ptl", ".ptl", "delete"),
    ("openvino", ".bin", "flip"),
    ("openvino", ".bin", "delete"),
    ("ncnn", ".bin", "truncate"),
    ("ncnn", ".bin", "delete"),
]


@pytest.mark.parametrize(("name", "suffix", "how"), DAMAGE, ids=[f"{n}{s}-{h}" for n, s, h in DAMAGE])
def test_a_damaged_artifact_is_refused_by_open_and_fails_verify(export, tmp_path, name, suffix, how) -> None:
    import deploy

    if name not in FORMATS_HERE:
        pytest.skip(f"{name} cannot be built here: {FORMATS[name].missing()}")
    folder = copy_of(export, tmp_path / "copy")
    target = (folder / FORMATS[name].filename).with_suffix(suffix)
    {"flip": flip, "truncate": truncate, "delete": Path.unlink}[how](target)
    with pytest.raises(ConfigError) as e:
        deploy.open(folder, name)
    msg = str(e.value)
    assert "\n" not in msg and f"not the {name} artifact its manifest recorded" in msg and "--no-verify" in msg
    expected = {
        "flip": "sha256 differs",
        "truncate": "sha256 differs",
        "delete": "is missing",
    }[how]
    assert expected in msg, msg
    if how == "delete" and suffix == ".bin":
        assert f"companion file {target.name} is missing" in msg
    records = {r["format"]: r for r in verify_artifacts(folder)}
    assert not records[name]["ok"] and any(expected in p for p in records[name]["problems"])
    assert all(r["ok"] for n, r in records.items() if n != name)  # only the damaged one


def test_t2t_predict_refuses_a_tampered_file_and_no_verify_runs_it(export, tmp_path) -> None:
    folder = copy_of(export, tmp_path / "copy")
    intact = t2t("predict", str(folder), str(image()), "--format", "onnx", "--plain")
    assert intact.returncode == 0, intact.stderr
    flip(folder / FORMATS["onnx"].filename, 4096)
    res = t2t("predict", str(folder), str(image()), "--format", "onnx", "--plain")
    assert res.returncode == 2 and not res.stdout
    line = one_sentence(res)
    assert "model-onnx.onnx is not the onnx artifact its manifest recorded" in line and "--no-verify" in line
    # the lone file inside its export folder is checked the same way
    res = t2t("predict", str(folder / FORMATS["onnx"].filename), str(image()), "--plain")
    assert res.returncode == 2 and "sha256 differs" in one_sentence(res)
    edited = t2t("predict", str(folder), str(image()), "--format", "onnx", "--plain", "--no-verify")
    assert edited.returncode == 0 and edited.stdout.strip(), edited.stderr


def test_t2t_bench_fails_a_tampered_row_and_says_where_agreement_comes_from(export, tmp_path) -> None:
    folder = copy_of(export, tmp_path / "copy")
    flip(folder / FORMATS["onnx"].filename, 4096)
    out = tmp_path / "bench"
    common = ["--formats", "torch,onnx", "--duration", "0", "--min-runs", "2", "--rounds", "1", "--warmup", "0"]
    res = t2t("bench", str(folder), *common, "--no-memory", "--min-agreement", "0.99", "--out", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "onnx failed: integrity check failed" in " ".join(res.stdout.split())
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["onnx"]["status"] == "failed" and rows["onnx"]["agreement"] is None
    assert rows["onnx"]["reason"].startswith("integrity check failed: its sha256 differs")
    assert report["integrity"] == {"verified": True, "failures": ["onnx"], "passed": False}
    # the checks asked for cannot pass on a row that was not measured (before: "Checks: passed")
    assert report["checks"]["passed"] is False and report["checks"]["failures"][0].startswith("onnx: its file changed")
    md = (out / "report.md").read_text()
    assert "**onnx** failed: integrity check failed" in md
    # the intact row's agreement is the export's, and every output says so
    assert rows["torch"]["status"] == "ok" and rows["torch"]["agreement_source"] == "export"
    assert "agreement of torch: from the export's parity check recorded in manifest.json, not measured" in md
    assert "not measured in this run" in " ".join(res.stdout.split())
    # a file edited on purpose: timed, its row says it was not checked, exit 0
    res = t2t("bench", str(folder), *common, "--no-memory", "--no-verify", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["integrity"] == "not verified (--no-verify)"
    assert "not checked against the manifest's sha256 (--no-verify)" in rows["onnx"]["reason"]


def test_t2t_verify_exit_status_for_ci(export, tmp_path) -> None:
    folder = copy_of(export, tmp_path / "copy")
    ok = t2t("verify", str(folder))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(FORMATS_HERE)} of {len(FORMATS_HERE)} artifacts verified (parity against" in ok.stdout
    # the Python API beside it: the same images the export used, so parity is the export's own
    result = verify_folder(folder)
    assert result.ok and result.reference is not None
    recorded = {a["format"]: a["parity"] for a in json.loads((folder / mf.FILE).read_text())["artifacts"]}
    for r in result.results:
        assert r["parity"]["top1_agreement"] == recorded[r["format"]]["top1_agreement"]
    flip(folder / FORMATS["ptl"].filename, 4096)
    bad = t2t("verify", str(folder))
    assert bad.returncode == 1 and "ptl: FAILED: its sha256 differs" in bad.stdout
    quick = t2t("verify", str(folder), "--no-parity", "--json")
    assert quick.returncode == 1 and json.loads(quick.stdout)["reference"] is None
    for args in ([str(tmp_path / "nowhere")], [str(folder), "--checkpoint", str(tmp_path / "missing.pth")]):
        res = t2t("verify", *args)
        assert res.returncode == 2, res.stderr
        one_sentence(res)


# ---------------------------------------------------------------- 2. exports merge instead of replacing


def test_an_export_into_an_existing_folder_merges(export, tmp_path) -> None:
    folder = copy_of(export, tmp_path / "copy")
    (folder / "bench").mkdir()
    (folder / "bench" / "report.md").write_text("my benchmark")
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    old = {a["format"]: a for a in json.loads((folder / mf.FILE).read_text())["artifacts"]}
    res = t2t("export", "--checkpoint", str(export["checkpoint"]), "--formats", "torch-int8", "--out", str(folder),
              "--parity-images", "16", "--calib-size", "8")  # fmt: skip
    assert res.returncode == 0, res.stderr
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k != mf.FILE and k in before} == {
        k: v for k, v in before.items() if k != mf.FILE
    }
    assert FORMATS["torch-int8"].filename in after
    entries = {a["format"]: a for a in json.loads((folder / mf.FILE).read_text())["artifacts"]}
    assert list(entries) == [n for n in FORMATS if n in {*FORMATS_HERE, "torch-int8"}]  # table order
    for name in FORMATS_HERE:
        assert entries[name] == old[name]  # other formats' entries untouched
    # re-exporting a format with other settings replaces that format's entry only
    exp = export_checkpoint(
        export["checkpoint"], formats="onnx", out=folder, batch=(1, 1, 8), parity_images=16, calib_size=8,
        progress=False,
    )  # fmt: skip
    entries = {a.format: a.to_json() for a in exp.manifest.artifacts}
    assert entries["onnx"]["status"] == "ok" and entries["onnx"]["batch"] == [1, 1, 8] != old["onnx"]["batch"]
    assert all(entries[n] == old[n] for n in FORMATS_HERE if n != "onnx")
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "bench" / "report.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder, no lock left
    assert all(r["ok"] for r in verify_artifacts(folder))
    # an export of other weights is never mixed into this one
    kept = snapshot(folder)
    with pytest.raises(ConfigError, match="holds the export of another model or other weights"):
        export_checkpoint(None, formats="torch", out=folder, img_size=IMG, parity_images=4, progress=False)
    assert snapshot(folder) == kept


def test_a_second_concurrent_export_is_refused_and_a_dead_lock_is_taken_over(export, tmp_path) -> None:
    out = tmp_path / "out"
    ck = str(export["checkpoint"])
    args = ["export", "--checkpoint", ck, "--out", str(out), "--parity-images", "16", "--calib-size", "8"]
    env = dict(os.environ, COLUMNS="200")
    first = subprocess.Popen(
        [sys.executable, "-m", "t2t", *args, "--formats", "torch,onnx,ptl,torchscript"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lock = tmp_path / ".out.lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first export finished before the second could start"
    second = t2t(*args, "--formats", "torch-int8")
    assert second.returncode == 2, second.stderr
    assert f"another export into {out.resolve()} is running (process {first.pid})" in one_sentence(second)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    names = [a["format"] for a in json.loads((out / mf.FILE).read_text())["artifacts"]]
    assert names == ["torch", "torchscript", "ptl", "onnx"] and not lock.exists()
    # a lock left by a process that died (SIGKILL): the kernel released it, the next export takes it over
    lock.write_text("999999")
    exp = export_checkpoint(ck, formats="torch-int8", out=out, parity_images=8, calib_size=4, progress=False)
    assert exp.manifest.entry("torch-int8") is not None and not lock.exists()
    # and one held now (a real flock of this process) refuses in one sentence
    with export_lock(out.resolve()):
        res = child_t2t(*args, "--formats", "torch")
    assert res.returncode == 2 and "another export into" in one_sentence(res)


def _as_nobody() -> dict[str, Any]:
    """subprocess keywords that run a command as an unprivileged user (root writes anywhere)."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the read-only probe as (root ignores file permissions)")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def test_a_folder_the_user_cannot_write_is_refused_before_any_work(export, tmp_path) -> None:
    if os.geteuid() != 0:
        sudo: dict[str, Any] = {}
    else:  # root writes through mode 555: run the export as an unprivileged user, which it stops
        sudo = _as_nobody()
    room = Path(tempfile.mkdtemp(prefix="t2t-readonly-"))
    try:
        room.chmod(0o755)
        ck = room / "digits.pth"
        shutil.copy(export["checkpoint"], ck)
        ck.chmod(0o644)
        folder = copy_of(export, room / "ro")
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        before = snapshot(folder)
        env = dict(os.environ, HOME=str(room), COLUMNS="200", TMPDIR=str(room))
        argv = [sys.executable, "-m", "t2t", "export", "--checkpoint", str(ck), "--formats", "torch", "--out"]
        try:
            res = subprocess.run([*argv, str(folder)], capture_output=True, text=True, env=env, timeout=300, **sudo)
        except PermissionError as e:
            pytest.skip(f"cannot run as an unprivileged user here ({e})")
        if "Permission denied" in res.stderr and "t2t export: error" not in res.stderr:
            pytest.skip(f"the unprivileged user cannot run Python from this tree: {res.stderr.strip()[-200:]}")
        assert res.returncode == 2, res.stderr
        assert f"export folder {folder} is not writable by this user" in one_sentence(res)
        assert snapshot(folder) == before
        # a path under a file is refused too
        res = subprocess.run([*argv, str(ck / "sub")], capture_output=True, text=True, env=env, timeout=300, **sudo)
        assert res.returncode == 2 and "is a file" in one_sentence(res)
    finally:
        for p in [room, *room.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(room, ignore_errors=True)


# ---------------------------------------------------------------- 8. leftovers, SIGKILL, children


def _scratch(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"t2t-export-scratch-{pid}-*"))


def test_kill_9_mid_export_keeps_the_previous_export_and_the_next_one_cleans_up(export, tmp_path) -> None:
    folder = copy_of(export, tmp_path / "copy")
    before = snapshot(folder)
    ck = str(export["checkpoint"])
    argv = ["export", "--checkpoint", ck, "--out", str(folder), "--parity-images", "16", "--calib-size", "8"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "t2t", *argv, "--formats", "torch,onnx,ptl,torchscript,onnx-int8-static"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 180
    partial: list[Path] = []
    while time.time() < deadline and proc.poll() is None:  # kill it while it writes into its staging folder
        partial = [p for p in tmp_path.glob(".copy.partial-*") if any(p.iterdir())]
        if partial and _scratch(proc.pid):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(folder) == before  # byte-identical
    assert partial and partial[0].exists() and _scratch(proc.pid)  # what SIGKILL leaves ...
    legacy = Path(tempfile.mkdtemp(prefix="t2t-export-scratch-"))  # a leftover of an older version (no pid)
    (legacy / "job.pt").write_bytes(b"x" * 1024)
    past = time.time() - 3600
    os.utime(legacy, (past, past))
    res = child_t2t(*argv, "--formats", "torch")  # a new process: leftovers older than it are removed
    assert res.returncode == 0, res.stderr
    assert not partial[0].exists() and not _scratch(proc.pid) and not legacy.exists()  # ... the next run removes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k not in (mf.FILE, FORMATS["torch"].filename)} == {
        k: v for k, v in before.items() if k not in (mf.FILE, FORMATS["torch"].filename)
    }
    assert all(r["ok"] for r in verify_artifacts(folder))


def test_export_folders_follow_the_umask(export, tmp_path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$0" -m t2t export --checkpoint "$1" --formats torch --out "$2" '
         "--parity-images 4 --calib-size 4", sys.executable, str(export["checkpoint"]), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert out.stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700


def test_a_conversion_child_dies_with_its_parent(export, tmp_path) -> None:
    import psutil

    if FORMATS["openvino"].missing():
        pytest.skip(f"OpenVINO cannot be built here: {FORMATS['openvino'].missing()}")
    argv = ["export", "--checkpoint", str(export["checkpoint"]), "--formats", "openvino", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "t2t", *argv, "--parity-images", "4", "--calib-size", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parent = psutil.Process(proc.pid)
    child = None
    deadline = time.time() + 180
    while child is None and time.time() < deadline and proc.poll() is None:
        with_cmd = []
        for c in parent.children(recursive=True):
            try:
                with_cmd.append((c, c.cmdline()))
            except psutil.Error:
                continue
        child = next((c for c, cmd in with_cmd if "deploy.openvino" in cmd), None)
        time.sleep(0.02)
    assert child is not None, "the OpenVINO conversion child was not seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs([child], timeout=15)
    for p in alive:
        p.kill()
    assert not alive, "the conversion child outlived its parent"


# ---------------------------------------------------------------- 7. pipeline folders


def test_a_moved_pipeline_still_verifies_and_a_failed_redo_keeps_the_previous_result(export, tmp_path) -> None:
    from compress.distill import DistillConfig
    from deploy.pipeline import PipelineConfig, check_same_pipeline, run_pipeline
    from deploy.settings import ExportConfig
    from t2tvit.errors import T2TError

    student = DistillConfig.load("digits", distillation_type="none", model="t2t_vit_7", img_size=IMG)
    settings = PipelineConfig(student=student, export=ExportConfig(formats="torch,onnx"))
    root = tmp_path / "a"
    check_same_pipeline(root, settings.record(), None)

    def done(stage: str, summary: dict[str, Any]) -> None:
        (root / stage).mkdir(parents=True, exist_ok=True)
        (root / stage / "stage.json").write_text(json.dumps({"stage": stage, "status": "done", "summary": summary}))

    done("teacher", {"skipped": "--distillation-type none needs no teacher"})
    (root / "student").mkdir()
    shutil.copy(export["checkpoint"], root / "student" / "best.pth")
    done("student", {"checkpoint": "student/best.pth", "val_top1": None, "model": "t2t_vit_7"})
    old_cwd = os.getcwd()
    os.chdir(tmp_path)  # the pipeline as a user runs it: a relative --out
    try:
        export_checkpoint("a/student/best.pth", formats="torch,onnx", out="a/export", parity_images=8,
                          calib_size=4, progress=False)  # fmt: skip
    finally:
        os.chdir(old_cwd)
    done("export", {"folder": "export", "artifacts": {"ok": 2}})
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    shutil.move(root, moved)
    quiet = {"echo": lambda line: None}
    result = run_pipeline(settings, moved, redo="verify", stop_after="verify", **quiet)
    assert result.stages["verify"]["ok"] == 2 and not result.unverified
    assert json.loads((moved / "verify" / "stage.json").read_text())["summary"]["checked"] == 2
    assert verify_folder(moved / "export").ok  # t2t verify finds the checkpoint beside the moved folder
    before = snapshot(moved / "verify")
    (moved / "student" / "best.pth").rename(moved / "student" / "gone.pth")
    with pytest.raises(T2TError):
        run_pipeline(settings, moved, redo="verify", stop_after="verify", **quiet)
    assert snapshot(moved / "verify") == before  # the failed redo did not empty the previous result
    assert not (moved / ".verify.previous").exists()
