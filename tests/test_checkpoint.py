"""Checkpoints: official .pth.tar layout, our own files, safetensors, resizing, bad input."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import t2tvit
from t2tvit.checkpoint import read_state_dict
from t2tvit.models import guess_variant, sinusoid_table


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A t2t_vit_7 whose weights differ from any fresh init, standing in for official weights."""
    torch.manual_seed(1)
    model = timm.create_model("t2t_vit_7").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return model


def _official_file(model: torch.nn.Module, path: Path, ema_delta: float = 0.0) -> Path:
    """The layout of the official release: timm-0.3.4 trainer under DataParallel/DDP."""
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + ema_delta if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(
        {
            "epoch": 309,
            "arch": "t2t_vit_7",
            "state_dict": sd,
            "state_dict_ema": ema,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
            "args": argparse.Namespace(model="T2t_vit_7", lr=1e-3, img_size=224, model_ema=True),
            "version": 2,
            "metric": 71.7,
        },
        path,
    )
    return path


def _x(size: int = 224) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_official_pth_tar_loads_and_answers_identically(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "71.7_T2T_ViT_7.pth.tar")
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), trained(_x()))
    assert model.load_report.source_key == "state_dict_ema"
    assert model.load_report.checkpoint_model == "T2t_vit_7"


@pytest.mark.parametrize("num_classes", [None, 10])
def test_loaded_model_is_real_trainable_and_fp32(trained, tmp_path, num_classes) -> None:
    """create_model builds on the meta device and adopts the checkpoint's tensors: nothing may
    stay on meta, the fixed tables stay buffers, and a half-precision file still gives fp32."""
    path = tmp_path / "half.pth"
    torch.save({"state_dict": {k: v.half() for k, v in trained.state_dict().items()}}, path)
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path, num_classes=num_classes, new_head=True)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert not any(t.is_meta for t in [*params.values(), *buffers.values()])
    assert {t.dtype for t in [*params.values(), *buffers.values()]} == {torch.float32}
    assert all(p.requires_grad for p in params.values())
    assert set(buffers) == {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
    assert torch.equal(buffers["pos_embed"], trained.pos_embed.half().float())
    assert torch.equal(params["norm.weight"], trained.norm.weight.half().float())
    assert model.head.weight.shape[0] == (num_classes or 1000)
    model(_x()).sum().backward()  # trains
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_use_ema_chooses_between_ema_and_raw_weights(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar", ema_delta=0.5)
    fresh = timm.create_model("t2t_vit_7")
    report = t2tvit.load_checkpoint(fresh, path, use_ema=False)
    assert report.source_key == "state_dict"
    assert torch.equal(fresh.head.weight, trained.head.weight)
    t2tvit.load_checkpoint(fresh, path, use_ema=True)
    assert torch.equal(fresh.head.weight, trained.head.weight + 0.5)


@pytest.mark.parametrize("layout", ["raw", "model", "own", "safetensors"])
def test_other_layouts(trained, tmp_path, layout) -> None:
    sd = trained.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "raw":
        torch.save(sd, path)
    elif layout == "model":  # DeiT style
        torch.save({"model": sd}, path)
    elif layout == "own":  # our trainer: model + EMA + args as plain data
        torch.save({"model": sd, "model_ema": sd, "epoch": 3, "args": {"model": "t2t_vit_7"}}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), trained(_x()))


def test_new_image_size_regenerates_the_position_table_exactly(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar")
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path, img_size=384)
    assert torch.equal(model.pos_embed, sinusoid_table(24 * 24 + 1, 256))
    assert torch.equal(model.blocks[3].attn.qkv.weight, trained.blocks[3].attn.qkv.weight)
    assert any("position table regenerated" in n for n in model.load_report.notes)
    assert model.eval()(_x(384)).shape == (2, 1000)


def test_new_class_count_replaces_the_head_only(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar")
    with pytest.raises(t2tvit.ConfigError, match=r"1000-class head but 10 classes were asked for; pass --new-head"):
        t2tvit.create_model("t2t_vit_7", checkpoint=path, num_classes=10)
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path, num_classes=10, new_head=True)
    assert model.head.weight.shape == (10, 256)
    assert torch.equal(model.norm.weight, trained.norm.weight)
    assert any("new 10-class head" in n for n in model.load_report.notes)


def test_feature_extractor_without_a_head(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar")
    model = t2tvit.create_model("t2t_vit_7", checkpoint=path, num_classes=0).eval()
    with torch.no_grad():
        feats = model(_x())
    assert feats.shape == (2, 256)
    with torch.no_grad():
        torch.testing.assert_close(trained.head(feats), trained(_x()))


def test_wrong_class_count_without_reset_is_a_clear_error(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar")
    with pytest.raises(t2tvit.CheckpointError, match=r"1000-class head but the model has 10 classes; pass num_classes"):
        t2tvit.load_checkpoint(timm.create_model("t2t_vit_7", num_classes=10), path)


def test_distilled_student_starts_from_a_plain_checkpoint(trained, tmp_path) -> None:
    path = _official_file(trained, tmp_path / "ck.pth.tar")
    model = t2tvit.create_model("t2t_vit_7_distilled", checkpoint=path)
    assert torch.equal(model.dist_token, trained.cls_token)
    assert torch.equal(model.head_dist.weight, trained.head.weight)
    assert model.pos_embed.shape == (1, 198, 256)


def test_wrong_architecture_names_the_likely_variant_and_keys(tmp_path) -> None:
    path = tmp_path / "t14.pth"
    torch.save({"state_dict": timm.create_model("t2t_vit_14").state_dict()}, path)
    with pytest.raises(t2tvit.CheckpointError) as err:
        t2tvit.load_checkpoint(timm.create_model("t2t_vit_7"), path)
    msg = str(err.value)
    assert "does not fit t2t_vit_7" in msg and "looks like t2t_vit_14" in msg
    assert "unexpected 77 keys (e.g. blocks.7.norm1.weight" in msg and "84 shape mismatches" in msg
    assert "\n" not in msg


def test_guess_variant() -> None:
    for name in ["t2t_vit_7", "t2t_vit_12", "t2t_vit_t_19", "t2t_vit_14_wide", "t2t_vit_10_distilled"]:
        assert guess_variant(timm.create_model(name).state_dict()) == name


def test_pickled_code_is_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"a": torch.zeros(1)}, "payload": Evil()}, f)
    with pytest.raises(t2tvit.CheckpointError, match="safe loader refuses.*could run arbitrary code") as e:
        t2tvit.create_model("t2t_vit_7", checkpoint=path)
    assert not marker.exists()
    assert "weights_only" not in str(e.value)
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": Evil()}, path)  # a torch.save zip this time
    unsafe = r"not on the allow-list \(builtins\.getattr, pathlib\.Path, pathlib\.PosixPath\)"
    with pytest.raises(t2tvit.CheckpointError, match=unsafe):
        t2tvit.create_model("t2t_vit_7", checkpoint=path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"not a checkpoint at all", r"\(23 bytes\) is neither a zip archive \(torch.save\) nor a pickle"),
        (b"PK\x03\x04garbage", "is a zip archive of 11 bytes but not a complete PyTorch checkpoint"),
        (b"<!DOCTYPE html><html>404</html>", "HTML/XML page"),
    ],
)
def test_corrupt_files_are_one_clear_sentence(tmp_path, content: bytes, what: str) -> None:
    """Never torch's multi-line message, which advises re-running with weights_only=False."""
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(t2tvit.CheckpointError, match=f"{what}.*; expected a PyTorch checkpoint") as e:
        t2tvit.create_model("t2t_vit_7", checkpoint=path)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"state_dict": timm.create_model("t2t_vit_7").state_dict()}, good)
    bad = tmp_path / "cut.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(t2tvit.CheckpointError, match="zip archive of .* bytes but not a complete PyTorch checkpoint"):
        t2tvit.create_model("t2t_vit_7", checkpoint=bad)


def test_missing_file_and_unknown_model(tmp_path) -> None:
    with pytest.raises(t2tvit.CheckpointError, match="does not exist"):
        t2tvit.create_model("t2t_vit_7", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(t2tvit.ConfigError, match="did you mean t2t_vit_7"):
        t2tvit.create_model("t2t_vit7")


def test_read_state_dict_rejects_containers_without_tensors() -> None:
    with pytest.raises(t2tvit.CheckpointError, match="found no weights"):
        read_state_dict({"epoch": 3, "args": {}})
