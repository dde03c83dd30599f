"""Fault injection: what a hostile-but-ordinary user does to every command, and the promised outcome.

Each probe runs the real ``t2t`` command and asserts the exit status, that stderr is exactly one line
with no traceback, and that nothing was lost. Ctrl-C probes run it in a child process (a real SIGINT to
its process group, as a terminal sends it); the others in this process (``t2t_here``: :func:`t2t.cli.main`,
what the script calls), which saves an interpreter start and ``import torch`` per probe.

The probes: Ctrl-C in export/predict/bench/train/visualize, outputs that cannot be written, 16-bit
and palette PNGs against their 8-bit twins, decompression bombs and corrupt images in every reader, a
head of another class count, ``--classes`` of the wrong size, and a pickle whose ``__reduce__`` would
create a file, per loader that unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import t2t_here as t2t
from tests.conftest import val_images

# --------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    return dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def one_line(stderr: str) -> str:
    """The only non-empty line of ``stderr`` (asserting there is exactly one and no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def _as_from_a_terminal() -> None:
    """The child's Ctrl-C as a terminal's process has it: a runner started in the background by a shell without
    job control (``cmd &``, nohup) ignores SIGINT, which its children inherit and Python then keeps ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(args: list[str], ready: Callable[[str, str], bool], tmp: Path, wait: float = 300) -> tuple[int, str, str]:
    """Run ``t2t args``, send SIGINT to its process group once ``ready(stdout, stderr)`` (or after ``wait``
    seconds), and return ``(exit status, stdout, stderr)``."""
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "t2t", *args],
            stdout=fo,
            stderr=fe,
            env=_env(),
            start_new_session=True,
            preexec_fn=_as_from_a_terminal,
        )
        t0 = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() - t0 < wait:
                if ready(out.read_text(), err.read_text()):
                    break
                time.sleep(0.1)
            assert proc.poll() is None, f"finished before it could be interrupted: {err.read_text()[-2000:]}"
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return rc, out.read_text(), err.read_text()


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A real 16-bit PNG (greyscale for 2-D ``pixels``, RGB for (H, W, 3)), written chunk by chunk: Pillow
    cannot write 16-bit RGB."""
    a = np.asarray(pixels, dtype=">u2")
    colour = 0 if a.ndim == 2 else 2
    a3 = a[:, :, None] if a.ndim == 2 else a
    raw = b"".join(b"\x00" + row.tobytes() for row in a3)
    h, w = a3.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def bomb(path: Path) -> Path:
    """A tiny PNG whose header claims 40000 x 40000 pixels: over twice Pillow's MAX_IMAGE_PIXELS, so
    opening it raises DecompressionBombError (as a real bomb does) without using any memory."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return path


def corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return path


def labelled_folder(root: Path, per_class: int = 2, extra: dict[str, Callable[[Path], Path]] | None = None) -> Path:
    """``root/<class>/<image>``: the first ``per_class`` digits of each class, plus ``extra`` bad files in 0/."""
    for f in val_images(per_class):
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    for name, make in (extra or {}).items():
        make(root / "0" / name)
    return root


@pytest.fixture
def export_copy(digits_export, tmp_path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(digits_export["out"], out)
    return out


def _no_write_probe_leftover(folder: Path) -> None:
    assert not list(folder.glob(".t2t-write-probe-*"))


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_export_keeps_the_previous_folder(digits_export, export_copy, tmp_path) -> None:
    before = digests(export_copy)
    names_before = set(os.listdir(tmp_path))
    ck = str(digits_export["checkpoint"])
    args = ["export", "--checkpoint", ck, "--formats", "onnx,ptl-int8", "--parity-images", "16", "--calib-size", "8"]

    def working(_: str, __: str) -> bool:  # a staging folder or file has appeared: the export is under way
        return bool(set(os.listdir(tmp_path)) - names_before - {"stdout.txt", "stderr.txt"}) or bool(
            set(os.listdir(export_copy)) - set(before)
        )

    rc, out, err = interrupt([*args, "--out", str(export_copy), "--json"], working, tmp_path)
    assert rc == 130
    line = one_line(err)
    assert line.startswith("t2t export: interrupted; ") and "intact" in line
    assert digests(export_copy) == before  # nothing lost, nothing half-written
    assert out == ""


def test_ctrl_c_in_predict(digits_export, tmp_path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    corrupt(folder / "000-broken.png")
    good = val_images(1)
    for i in range(3000):
        os.link(good[i % len(good)], folder / f"{i + 1:05d}.png")
    rc, out, err = interrupt(
        ["predict", str(digits_export["out"]), str(folder), "-b", "1", "--plain"],
        lambda _, e: "cannot read" in e,
        tmp_path,
    )
    assert rc == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert lines[0].startswith(f"t2t predict: cannot read {folder / '000-broken.png'}")
    assert lines[1:] == ["t2t predict: interrupted; nothing was written"]
    assert out == ""


def test_ctrl_c_in_bench_writes_no_report(export_copy, tmp_path) -> None:
    report = tmp_path / "report"
    args = ["bench", str(export_copy), "--formats", "onnx", "--duration", "60", "--no-memory"]
    # interrupted in the timing, which starts once the artifact has loaded (the progress line on stderr)
    rc, out, err = interrupt([*args, "--out", str(report)], lambda _, e: "onnx: loaded" in e, tmp_path)
    assert rc == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("t2t bench: interrupted; no report was written"), err
    assert not report.exists() and not (export_copy / "bench").exists()


def test_ctrl_c_in_train_says_how_to_resume(small_digits, tmp_path) -> None:
    run = tmp_path / "run"
    # -j 1: the group's SIGINT reaches the loader worker too, which ignores it (t2tvit.data._seed_worker)
    args = ["train", str(small_digits), "--config", "digits", "-j", "1", "--log-interval", "1000", "-b", "16"]
    args += ["--img-size", "32", "--epochs", "300", "--device", "cpu", "--output", str(run)]
    rc, out, err = interrupt(args, lambda o, _: "epoch 0:" in o, tmp_path)
    assert rc == 130
    assert one_line(err) == f"t2t train: interrupted; resume with --resume {run / 'last.pth'}"
    import t2tvit

    assert t2tvit.checkpoint.read_checkpoint(run / "last.pth")["epoch"] >= 0  # intact, resumable


_HANG_UP = """
import os, sys, time
from multiprocessing import connection, resource_sharer
from t2tvit.data import _seed_worker

def hang_up():
    read, _ = os.pipe()
    shared = resource_sharer.DupFd(read)  # how a worker hands a batch over: a thread serves the descriptor
    connection.Client(shared._id[0]).close()  # a receiver that hangs up mid-handshake, as Ctrl-C makes it
    time.sleep(1)

hang_up()
print("== as a loader worker", file=sys.stderr, flush=True)
_seed_worker(0)  # what the DataLoader runs first in each worker
hang_up()
sys.excepthook(ValueError, ValueError("any other error"), None)
"""


def test_a_loader_worker_is_quiet_when_the_interrupted_main_process_hangs_up() -> None:
    # The race behind a traceback under "t2t train: interrupted": Ctrl-C lands while the main process is
    # connecting to the worker's descriptor server, whose thread reports the dropped connection through
    # sys.excepthook. A plain process prints it (so this probe reaches the real mechanism); a worker does not,
    # and still reports every other error.
    err = subprocess.run(
        [sys.executable, "-c", _HANG_UP], capture_output=True, text=True, env=_env(), timeout=60
    ).stderr
    plain, worker = err.split("== as a loader worker\n")
    assert "Traceback" in plain and "resource_sharer.py" in plain, err
    assert "Traceback" not in worker and "resource_sharer" not in worker, err
    assert "ValueError: any other error" in worker, err


def test_ctrl_c_in_visualize_leaves_no_half_drawn_folder(digits_export, tmp_path) -> None:
    out = tmp_path / "vis"
    # 60 images: the drawing after the first PNG takes long enough that the Ctrl-C lands in it (with 20, an
    # idle CI machine once finished the last image between the first PNG and the signal)
    images = [str(p) for p in val_images(6)]

    def drawing(_: str, __: str) -> bool:
        return out.is_dir() and any(out.glob(".visualize-partial-*/000-*/*.png"))

    rc, stdout, err = interrupt(
        ["visualize", str(digits_export["checkpoint"]), *images, "--out", str(out), "--limit", "60"], drawing, tmp_path
    )
    assert rc == 130
    assert one_line(err) == "t2t visualize: interrupted; no image folder was written"
    assert not out.exists()  # it did not exist before: no folder, no staging left


def test_visualize_publishes_whole_folders_over_an_earlier_run(digits_export, tmp_path) -> None:
    from deploy.visualize import visualize

    out = tmp_path / "vis"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    (out / "000-old").mkdir()
    (out / "000-old" / "stale.png").write_bytes(b"x")
    first = val_images(1)[0]
    result = visualize(digits_export["checkpoint"], [first], out, heads=False)
    assert result.out == out and all(p.is_file() and out in p.parents for p in result.files)
    assert (out / "mine.txt").read_text() == "keep me"
    assert not list(out.glob(".visualize-partial-*"))
    assert Path(result.images[0]["folder"]).is_dir()


# --------------------------------------------------------------------------- unwritable outputs


def _cli_outputs(tmp: Path, export: Path, ck: str, out: str) -> dict[str, list[str]]:
    data = str(labelled_folder(tmp / "data-for-outputs", per_class=1))
    return {
        "export": ["export", "--checkpoint", ck, "--formats", "torch", "--out", out],
        "bench": ["bench", str(export), "--formats", "onnx", "--duration", "100", "--rounds", "1", "--out", out],
        "visualize": ["visualize", ck, data, "--out", out],
        "validate": ["validate", ck, data, "--out", out],
        "compress": ["compress", "digits", "--out", out],
        "train": ["train", "digits", "--config", "digits", "--output", out],
        "distill": ["distill", "digits", "--config", "digits", "--output", out],
    }


@pytest.mark.parametrize("command", ["export", "bench", "visualize", "validate", "compress", "train", "distill"])
def test_an_output_through_a_file_is_refused_before_any_work(command, digits_export, export_copy, tmp_path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("a file, not a folder")
    target = afile / "sub"
    argv = _cli_outputs(tmp_path, export_copy, str(digits_export["checkpoint"]), str(target))[command]
    t0 = time.monotonic()
    res = t2t(*argv)
    assert res.returncode == 2, res.stderr
    line = one_line(res.stderr)
    assert f"{target} goes through {afile}, which is a file; choose a folder path" in line
    assert afile.read_text() == "a file, not a folder"
    if command == "bench":  # refused before the 100 s profiling run, not after it
        assert time.monotonic() - t0 < 90
        assert not (export_copy / "bench").exists()


def _unwritable_parent(tmp: Path) -> Path:
    """A folder this process really cannot create entries in, or skip. Root ignores permission bits, so
    as root a kernel filesystem that refuses new entries (/sys) is used."""
    if os.geteuid() != 0:
        ro = tmp / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    for candidate in (Path("/sys"), Path("/proc/sys")):
        try:
            os.rmdir(tempfile.mkdtemp(dir=candidate))
        except OSError:
            return candidate
    pytest.skip("running as root and no folder refuses root's writes here (root ignores 0555)")


@pytest.mark.parametrize("command", ["export", "bench", "visualize", "validate", "train"])
def test_an_unwritable_parent_is_refused_before_any_work(command, digits_export, export_copy, tmp_path) -> None:
    parent = _unwritable_parent(tmp_path)
    target = parent / "t2t-out"
    argv = _cli_outputs(tmp_path, export_copy, str(digits_export["checkpoint"]), str(target))[command]
    res = t2t(*argv)
    assert res.returncode == 2, res.stderr
    assert f"{target} cannot be written ({parent}: " in one_line(res.stderr)
    assert not target.exists()
    _no_write_probe_leftover(parent)


# --------------------------------------------------------------------------- no empty output folders


@pytest.mark.parametrize(
    ("command", "extra", "why"),
    [
        ("train", ["--model", "t2t_vit_nonexistent"], "unknown model"),
        ("distill", ["--model", "t2t_vit_7_distilled", "--teacher-path", "no-teacher.pth"], "no-teacher.pth"),
    ],
)
def test_an_early_training_error_leaves_no_output_folder(command, extra, why, small_digits, tmp_path) -> None:
    out = tmp_path / "runs" / "new"
    res = t2t(command, str(small_digits), "--config", "digits", "-j", "0", *extra, "--output", str(out))
    assert res.returncode == 2
    assert why in one_line(res.stderr)
    assert not (tmp_path / "runs").exists()


def test_an_early_pipeline_error_leaves_no_output_folder(tmp_path) -> None:
    out = tmp_path / "pipe"
    res = t2t("compress", str(tmp_path / "no-such-data"), "--out", str(out))
    assert res.returncode == 2
    assert "does not exist" in res.stderr.splitlines()[-1]
    assert not out.exists()


# --------------------------------------------------------------------------- images


def _twins(tmp: Path) -> dict[str, Path]:
    """One digit as an 8-bit greyscale PNG and its 16-bit greyscale and 16-bit RGB twins (value x 257)."""
    from PIL import Image

    grey = np.asarray(Image.open(val_images(1)[3]).convert("L"), dtype=np.uint16)
    tmp.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey.astype(np.uint8), "L").save(tmp / "eight.png")
    return {
        "eight": tmp / "eight.png",
        "grey16": write_png16(tmp / "grey16.png", grey * 257),
        "rgb16": write_png16(tmp / "rgb16.png", np.dstack([grey * 257] * 3)),
    }


def test_16bit_pngs_read_like_their_8bit_twin_in_every_reader(tmp_path) -> None:
    from PIL import Image

    from compress.quantize import load_images
    from t2tvit.data import SafeImageFolder, open_rgb

    twins = _twins(tmp_path / "twins")
    assert Image.open(twins["grey16"]).mode.startswith("I")  # really 16-bit on disk
    ref = np.asarray(open_rgb(twins["eight"]), dtype=np.int16)
    assert ref.max() > 200  # a real digit, not a black square
    for name in ("grey16", "rgb16"):
        got = np.asarray(open_rgb(twins[name]), dtype=np.int16)
        assert np.abs(got - ref).max() <= 1, name  # scaled, not clipped (clipping makes every stroke white)
    # The trainer's dataset and calibration read through the same reader.
    folder = tmp_path / "ds"
    (folder / "c").mkdir(parents=True)
    for name, p in twins.items():
        shutil.copy(p, folder / "c" / f"{name}.png")
    ds = SafeImageFolder(folder, transform=lambda im: np.asarray(im, dtype=np.int16))
    arrays = {Path(ds.samples[i][0]).stem: ds[i][0] for i in range(len(ds))}
    assert all(np.abs(arrays[n] - ref).max() <= 1 for n in ("grey16", "rgb16"))
    calib, files = load_images(folder, lambda im: np.asarray(im, dtype=np.float32), None)
    assert len(files) == 3 and np.abs(calib - calib[0]).max() <= 1


def test_a_mid_grey_16bit_value_is_scaled_not_clipped(tmp_path) -> None:
    from t2tvit.data import open_rgb

    px = np.asarray(open_rgb(write_png16(tmp_path / "g.png", np.full((4, 4), 4096, np.uint16))))
    assert px.max() == px.min() == 16  # 4096 / 65535 of full scale; convert("RGB") gave 255


def test_16bit_pngs_predict_like_their_8bit_twin(digits_export, tmp_path) -> None:
    twins = _twins(tmp_path / "twins")
    res = t2t("predict", str(digits_export["out"]), *map(str, twins.values()), "--json")
    assert res.returncode == 0, res.stderr
    preds = {Path(p["image"]).stem: p["top"] for p in json.loads(res.stdout)["predictions"]}
    for name in ("grey16", "rgb16"):
        assert preds[name][0]["index"] == preds["eight"][0]["index"]
        assert abs(preds[name][0]["probability"] - preds["eight"][0]["probability"]) < 0.02


def test_palette_images_with_transparency_are_read_without_warnings(tmp_path) -> None:
    import warnings

    from PIL import Image

    from t2tvit.data import open_rgb

    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = b"\x00" + b"\xff" * 255  # colour 0 transparent, in bytes
    p.save(tmp_path / "pal.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = open_rgb(tmp_path / "pal.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("make", [bomb, corrupt], ids=["bomb", "corrupt"])
def test_bad_images_are_named_by_predict_and_the_others_predicted(make, digits_export, tmp_path) -> None:
    bad = make(tmp_path / "bad.png")
    good = val_images(1)[0]
    res = t2t("predict", str(digits_export["out"]), str(bad), str(good), "--plain")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert line.startswith(f"t2t predict: cannot read {bad}: ")
    if make is bomb:
        assert "DecompressionBombError" in line
    assert res.stdout.startswith(str(good))


@pytest.mark.parametrize("make", [bomb, corrupt], ids=["bomb", "corrupt"])
def test_bad_images_are_skipped_and_counted_by_calibration(make, tmp_path) -> None:
    import warnings

    from compress.quantize import load_images

    folder = labelled_folder(tmp_path / "calib", 1, {"zz-bad.png": make})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, files = load_images(folder, lambda im: np.asarray(im, np.float32), None)
    assert len(files) == 10 and images.shape[0] == 10
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "skipped 1 unreadable image(s) (zz-bad.png)" in said[0]


def test_bad_images_in_bench_data_are_counted_on_one_line(export_copy, tmp_path) -> None:
    data = labelled_folder(tmp_path / "data", 1, {"zz-bomb.png": bomb, "zz-corrupt.png": corrupt})
    args = ["bench", str(export_copy), "--formats", "onnx", "--data", str(data), "--duration", "0.05"]
    res = t2t(
        *args,
        "--min-runs",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--json",
        "--out",
        str(tmp_path / "b"),
    )
    assert res.returncode == 0, res.stderr
    line = one_line(res.stderr)
    assert line.startswith("t2t bench: warning: data folder") and "skipped 2 unreadable image(s)" in line


def test_bad_images_are_named_by_visualize(digits_export, tmp_path) -> None:
    bad = bomb(tmp_path / "bomb.png")
    out = tmp_path / "vis"
    res = t2t(
        "visualize", str(digits_export["checkpoint"]), str(bad), str(val_images(1)[0]), "--out", str(out), "--no-heads"
    )
    assert res.returncode == 1
    assert one_line(res.stderr).startswith(f"t2t visualize: cannot read {bad}: DecompressionBombError")
    assert len(list(out.glob("000-*/*.png"))) >= 3


def test_train_skips_a_bomb_and_counts_it(tmp_path) -> None:
    from t2tvit.data import SafeImageFolder, SkippedSample

    folder = labelled_folder(tmp_path / "ds", 1, {"zz-bomb.png": bomb})
    ds = SafeImageFolder(folder)
    skipped = [ds[i] for i in range(len(ds)) if isinstance(ds[i], SkippedSample)]
    assert len(skipped) == 1 and skipped[0].reason == "unreadable" and "DecompressionBombError" in skipped[0].error


# --------------------------------------------------------------------------- export settings


def test_a_format_option_no_chosen_format_takes_is_refused_not_ignored(digits_export, tmp_path) -> None:
    from deploy.base import FORMATS, ExportContext
    from deploy.export import export_checkpoint
    from deploy.settings import FORMAT_OPTIONS, ExportConfig
    from t2tvit import ConfigError

    ck = str(digits_export["checkpoint"])
    argv = ["export", "--checkpoint", ck, "--formats", "onnx,openvino", "--qengine", "x86"]
    res = t2t(*argv, "--out", str(tmp_path / "a"))
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "--qengine is an option of torch-int8, torchscript-int8, ptl-int8, and none of the chosen formats" in line
    assert "(onnx, openvino)" in line and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match=r"--opset is an option of onnx, .*\(torch\) takes it"):
        export_checkpoint(ck, formats="torch", opset=17, out=tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="export has no option frobnicate"):
        export_checkpoint(ck, formats="torch", frobnicate=1)
    assert not (tmp_path / "b").exists()
    # a chosen format that takes it: accepted (one of the rows is enough)
    assert [f.name for f in ExportConfig(formats="torch,ptl-int8", qengine="qnnpack", jit="script").check()] == [
        "torch", "ptl-int8"
    ]  # fmt: skip
    # every format option is some row's, names an ExportContext field, and no row declares another
    declared = {o for f in FORMATS.values() for o in f.settings}
    assert declared == set(FORMAT_OPTIONS) and declared <= set(ExportContext.__dataclass_fields__)


# --------------------------------------------------------------------------- heads and class names


def test_a_new_class_count_needs_new_head(digits_export, tmp_path) -> None:
    ck = str(digits_export["checkpoint"])
    out = tmp_path / "export100"
    base = ["export", "--checkpoint", ck, "--formats", "torch", "--num-classes", "100", "--parity-images", "8"]
    res = t2t(*base, "--calib-size", "4", "--out", str(out), "--json")
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "has a trained 10-class head but 100 classes were asked for; pass --new-head" in line
    assert not out.exists()
    res = t2t(*base, "--calib-size", "4", "--out", str(out), "--json", "--new-head")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["model"]["num_classes"] == 100 and manifest["classes"] is None  # names of the old head dropped


def test_a_new_class_count_needs_new_head_in_python(digits_export) -> None:
    import t2tvit

    ck = digits_export["checkpoint"]
    with pytest.raises(t2tvit.ConfigError, match="pass --new-head"):
        t2tvit.create_model("t2t_vit_7", checkpoint=ck, num_classes=100)
    assert t2tvit.create_model("t2t_vit_7", checkpoint=ck, num_classes=100, new_head=True).num_classes == 100
    assert t2tvit.create_model("t2t_vit_7", checkpoint=ck, num_classes=10).num_classes == 10  # same count: no flag


@pytest.mark.parametrize("count", [3, 20])
def test_classes_must_name_every_output(count, digits_export, tmp_path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"c{i}" for i in range(count)) + "\n")
    res = t2t("predict", str(digits_export["out"]), str(val_images(1)[0]), "--classes", str(names), "--plain")
    assert res.returncode == 2 and res.stdout == ""
    assert f"names {count} classes but model-torch.pt predicts 10" in one_line(res.stderr)
    names.write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    res = t2t("predict", str(digits_export["out"]), str(val_images(1)[0]), "--classes", str(names), "--plain")
    assert res.returncode == 0 and " c0 " in res.stdout


# --------------------------------------------------------------------------- evil pickles


class _Evil:
    """Unpickling this object would create the file its path names."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def _evil_checkpoint(path: Path, touched: Path, like: dict) -> Path:
    import torch

    torch.save({**like, "payload": _Evil(touched)}, path)
    return path


@pytest.mark.parametrize(
    "loader", ["predict-checkpoint", "info", "export", "visualize", "train-resume", "eager-artifact"]
)
def test_an_evil_pickle_is_refused_without_advising_weights_only_false(loader, digits_export, tmp_path) -> None:
    import torch

    touched = tmp_path / "touched"
    image = str(val_images(1)[0])
    if loader == "eager-artifact":  # model-torch.pt in an export folder, the eager artifact's own loader
        folder = tmp_path / "export"
        shutil.copytree(digits_export["out"], folder)
        real = torch.load(folder / "model-torch.pt", weights_only=True)
        _evil_checkpoint(folder / "model-torch.pt", touched, real)
        argv = ["predict", str(folder / "model-torch.pt"), image, "--no-verify"]
    else:
        ck = _evil_checkpoint(tmp_path / "evil.pth", touched, {"model": {}, "args": {"model": "t2t_vit_7"}})
        argv = {
            "predict-checkpoint": ["predict", str(ck), image],
            "info": ["info", "--checkpoint", str(ck)],
            "export": ["export", "--checkpoint", str(ck), "--formats", "torch", "--out", str(tmp_path / "o")],
            "visualize": ["visualize", str(ck), image, "--out", str(tmp_path / "v")],
            "train-resume": ["train", "digits", "--config", "digits", "--resume", str(ck)],
        }[loader]
    res = t2t(*argv)
    assert res.returncode == 2, res.stderr
    line = one_line(res.stderr)
    assert "could run arbitrary code" in line and "weights_only" not in line
    assert not touched.exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "v").exists()


# --------------------------------------------------------------------------- native load errors


def test_openvino_and_ncnn_load_errors_are_one_sentence(converted_export, tmp_path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("ncnn")
    folder = tmp_path / "export"
    shutil.copytree(converted_export["out"], folder)
    xml = folder / "model-openvino.xml"
    xml.write_text(xml.read_text().replace("<layers>", '<layers><layer id="999" type="Bogus"/>', 1))
    param = folder / "model-ncnn.param"
    lines = param.read_text().splitlines()
    lines[3] = "BogusLayer" + lines[3][len(lines[3].split()[0]) :]
    param.write_text("\n".join(lines) + "\n")
    image = str(val_images(1)[0])
    for artifact, says in ((xml, "is not a loadable OpenVINO IR ("), (param, "could not be parsed by ncnn: ")):
        res = t2t("predict", str(artifact), image, "--no-verify")
        assert res.returncode == 2
        line = one_line(res.stderr)
        assert f"{artifact} {says}" in line and "Exception from" not in line and "Check '" not in line


_DAMAGES = {  # how a manifest is damaged -> what the refusal says
    "not-json": (lambda m: "{ not json", "is not valid JSON"),
    "other-schema": (lambda m: json.dumps({**m, "schema": "t2t-export/0"}), "has manifest schema 't2t-export/0'"),
    "not-a-manifest": (lambda m: json.dumps([m]), "is not an export manifest"),
}


def test_a_damaged_manifest_is_one_sentence_in_every_reader(export_copy, tmp_path) -> None:
    # Every reader goes through deploy.manifest.read, whose refusals tests/test_manifest.py checks one by one;
    # here each command meets one kind of damage.
    from deploy import manifest as mf
    from t2tvit.errors import ConfigError

    good = json.loads(mf.path(export_copy).read_text())
    image = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    readers = (["verify", str(export_copy)], ["predict", str(export_copy), str(image)], ["bench", str(export_copy)])
    for args, (damage, said) in zip(readers, _DAMAGES.values(), strict=True):
        mf.path(export_copy).write_text(damage(good))
        r = t2t(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        line = one_line(r.stderr)
        assert said in line and "export again" in line, (args, line)
        with pytest.raises(ConfigError, match=said):
            mf.read(export_copy)
