"""The ``t2t`` command line: the installed script and ``--help`` as real processes, the ``info`` command in this
process (``t2t_here``: :func:`t2t.cli.main`, which the script calls)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import t2t_here as t2t


def child_t2t(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "t2t", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_subcommands_without_importing_torch() -> None:
    code = "import sys; from t2t.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    res = child_t2t("--help")
    assert res.returncode == 0 and "info" in res.stdout


def test_info_prints_params_macs_tokens_and_input_size() -> None:
    res = t2t("info", "--model", "t2t_vit_7")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "4,310,222" in out and "1.147 G" in out
    assert "3 x 224 x 224" in out
    for stage in ("soft split 0", "3136", "784", "backbone (7 blocks, +1 prefix)", "197"):
        assert stage in out


def test_info_json_at_another_size() -> None:
    res = t2t("info", "--model", "t2t_vit_14", "--img-size", "384", "--num-classes", "10", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["input_size"] == [3, 384, 384] and info["num_classes"] == 10
    assert info["stages"][-1]["tokens"] == 24 * 24 + 1
    assert info["frozen_params"] == 577 * 384 + 2 * 32 * 64


def test_info_reports_how_a_checkpoint_was_mapped(tmp_path) -> None:
    import timm
    import torch

    import t2tvit  # noqa: F401

    path = tmp_path / "ck.pth.tar"
    torch.save({"state_dict_ema": timm.create_model("t2t_vit_7").state_dict()}, path)
    res = t2t(
        "info",
        "--model",
        "t2t_vit_7",
        "--checkpoint",
        str(path),
        "--num-classes",
        "10",
        "--img-size",
        "256",
        "--new-head",
    )
    assert res.returncode == 0, res.stderr
    assert "[state_dict_ema]" in res.stdout and "new 10-class head" in res.stdout
    assert "position table regenerated for 257 tokens" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "t2t_vit_8"], "unknown model 't2t_vit_8'"),
        (["--img-size", "230"], "img_size 230 is not a positive multiple of 16"),
        (["--checkpoint", "/nonexistent/ck.pth"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message) -> None:
    res = t2t("info", *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_checkpoint_is_one_sentence_that_never_advises_unsafe_loading(tmp_path) -> None:
    path = tmp_path / "download.pth.tar"
    path.write_bytes(b"\x80\x02garbage that is not a checkpoint" * 3)
    res = t2t("info", "--model", "t2t_vit_7", "--checkpoint", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "is a pickle of 102 bytes that the safe loader refuses" in res.stderr
    assert "weights_only" not in res.stderr


def test_info_lists_the_cnn_to_t2t_variants() -> None:
    res = t2t("info", "--list", "--json")
    rows = {r["model"]: r for r in json.loads(res.stdout)}
    assert (rows["t2t_vit_dense"]["params"], rows["t2t_vit_dense"]["backbone"]) == (23_647_062, "dense")
    assert (rows["t2t_vit_14_se"]["params"], rows["t2t_vit_14_se"]["backbone"]) == (21_803_598, "se")
    assert (rows["t2t_vit_16_ghost"]["params"], rows["t2t_vit_16_ghost"]["backbone"]) == (16_253_262, "ghost")
    assert round(rows["t2t_vit_dense"]["macs"] / 1e9, 2) == 5.28
    assert round(rows["t2t_vit_14_se"]["macs"] / 1e9, 2) == 4.78
    assert round(rows["t2t_vit_16_ghost"]["macs"] / 1e9, 2) == 3.80
    assert "t2t_vit_16_ghost_distilled" in rows


def test_console_script_is_installed() -> None:
    exe = shutil.which("t2t") or os.path.join(os.path.dirname(sys.executable), "t2t")
    if not os.path.exists(exe):
        pytest.skip("the t2t console script is not installed (run pip install -e .)")
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("t2t ")


def test_a_flag_several_commands_take_means_the_same_in_each() -> None:
    from t2t import flags
    from t2t.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "predict" in a.choices).choices
    for command in ("predict", "validate", "visualize"):  # the flags that open an artifact: one declaration
        helps = {a.option_strings[-1]: a.help for a in sub[command]._actions if a.option_strings}
        for flag in set(helps) & {"--batch-size", "--device", "--model", "--img-size", "--no-verify"}:
            assert helps[flag] == flags._SHARED[flag][1]["help"], (command, flag)
    args = parser.parse_args(["predict", "model.onnx", "a.png", "--no-verify", "--img-size", "64"])
    assert flags.opening(args) == {"device": None, "model": None, "img_size": 64, "verify": False}
    args = parser.parse_args(["validate", "model.onnx", "digits", "--threads", "1", "--device", "cpu"])
    assert flags.opening(args) == {"device": "cpu", "threads": 1, "verify": True}
    assert parser.parse_args(["bench", "x"]).device == "cpu"  # a command may change a shared flag's default
