"""``t2t visualize`` and the extraction under it: the maps are the model's own, rollout is rollout, files get written.

The attention tests build fresh T2T-ViT-7s at 224 and 384 px (batch 1, well under a second each);
the end-to-end test runs the command on the ``t2t compress --demo`` student, teacher and export that
the session already has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import val_images

import t2tvit  # noqa: F401 - registers the models with timm
from t2t.cli import main
from t2tvit.models import T2TViT
from t2tvit.visualize import attention_rollout, grad_cam, inspect_t2t, token_attention

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [224, 384])
def test_attention_rows_sum_to_one_on_the_patch_grid_from_the_same_forward(size: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=size).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        fast = model(x)  # the default path: fused SDPA, no matrix kept
    look = inspect_t2t(model, x)
    grid, n = (size // 16, size // 16), (size // 16) ** 2 + 1
    assert look.grid == grid and len(look.blocks) == 7 and look.prefix == ("class",)
    for attn in look.blocks:
        assert attn.shape == (1, 4, n, n)
        torch.testing.assert_close(attn.sum(-1), torch.ones(1, 4, n), atol=1e-5, rtol=0)
        assert token_attention(attn, grid).shape == (1, 4, *grid)
    torch.testing.assert_close(look.logits, fast, atol=1e-5, rtol=0)
    assert [t.shape[-2:] for t in look.tokens] == [(size // 4,) * 2, (size // 8,) * 2, grid]
    recorders = [m for m in model.modules() if hasattr(m, "record_attention")]
    assert len(recorders) == 7 and all(not m.record_attention and m.attention_map is None for m in recorders)


def test_recorded_attention_is_the_softmax_of_the_blocks_own_queries_and_keys() -> None:
    """The map of block 0 equals softmax(q k^T * scale) computed in float64 from that block's input."""
    torch.manual_seed(0)
    model = T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, token_dim=8, num_classes=3).eval()
    seen: list[torch.Tensor] = []
    model.blocks[0].attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    look = inspect_t2t(model, torch.randn(1, 3, 32, 32))
    attn = model.blocks[0].attn
    q, k, _ = attn.qkv(seen[0]).double().reshape(1, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)
    torch.testing.assert_close(look.blocks[0].double(), expected, atol=1e-6, rtol=0)


def test_rollout_matches_a_hand_computation_on_a_two_block_toy() -> None:
    torch.manual_seed(1)
    model = T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, token_dim=8, num_classes=3).eval()
    look = inspect_t2t(model, torch.randn(1, 3, 32, 32))
    a1, a2 = (b[0].double().mean(0).numpy() for b in look.blocks)
    eye = np.eye(5)
    by_hand = (0.5 * a2 + 0.5 * eye) @ (0.5 * a1 + 0.5 * eye)
    np.testing.assert_allclose(attention_rollout(look.blocks)[0].numpy(), by_hand, atol=1e-6)
    np.testing.assert_allclose(by_hand.sum(1), np.ones(5), atol=1e-9)


@pytest.mark.parametrize("name", ["t2t_vit_7_distilled", "t2t_vit_t_14", "t2t_vit_16_ghost"])
def test_every_attention_kind_is_recorded_without_changing_the_logits(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
    look = inspect_t2t(model, x)
    torch.testing.assert_close(look.logits, fast, atol=1e-5, rtol=0)
    assert look.prefix == (("class", "distillation") if name.endswith("_distilled") else ("class",))
    # the token transformer has a matrix per T2T block (8x8 then 4x4 tokens); the token Performer has none
    assert [a.shape[-1] for a in look.token_attention] == ([64, 16] if "_t_" in name else [])
    for attn in look.blocks + look.token_attention:
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-5, rtol=0)


def test_grad_cam_uses_a_cnns_last_stage() -> None:
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", num_classes=10).eval()
    for p in cnn.parameters():
        p.requires_grad_(False)  # as a frozen teacher's are
    x = torch.randn(2, 3, 64, 64)
    cam, logits = grad_cam(cnn, x)
    assert cam.shape == (2, 64, 64) and logits.shape == (2, 10)
    assert float(cam.min()) >= 0 and torch.allclose(cam.flatten(1).amax(1), torch.ones(2))
    # by hand on layer4, the stage Grad-CAM is defined on
    feats: list[torch.Tensor] = []
    cnn.layer4.register_forward_hook(lambda m, i, o: feats.append(o))
    xg = x.clone().requires_grad_(True)
    out = cnn(xg)
    (g,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), feats[0])
    raw = torch.relu((g.mean((2, 3), keepdim=True) * feats[0]).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(cam, up / up.flatten(1).amax(1).view(-1, 1, 1), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_visualize_end_to_end_on_the_demo_student(compress_demo, tmp_path: Path, capsys) -> None:
    demo = compress_demo["out"]
    image = val_images(1)[3]
    out = tmp_path / "vis"
    argv = ["visualize", str(demo / "student" / "best.pth"), str(image), "--out", str(out)]
    argv += ["--teacher", str(demo / "teacher" / "best.pth"), "--compare", str(demo / "export")]
    assert main([*argv, "--compare-format", "torch-int8"]) == 0
    printed = capsys.readouterr().out
    folder = out / f"000-{image.stem}"
    names = ["attention-class", "attention-distillation", "rollout", "t2t-tokens", "teacher", "compare-attention"]
    for name in names:
        png = folder / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "compare-logits.png").is_file() and "| 000 |" in (out / "compare-logits.md").read_text()
    assert "predicted 3" in printed and "same top-1" in printed

    # an artifact that keeps no attention: compared by its logits, and the note says why
    onnx = demo / "export" / "model-onnx.onnx"
    assert (
        main(
            ["visualize", str(demo / "export"), str(image), "--out", str(tmp_path / "v2"), "--no-heads"]
            + ["--compare", str(onnx)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "does not expose attention, so its logits and probabilities are compared" in printed
    assert "max |logit diff|" in printed
    assert not (tmp_path / "v2" / f"000-{image.stem}" / "compare-attention.png").exists()


def test_bad_input_ends_in_one_sentence(digits_export, tmp_path: Path, capsys) -> None:
    export = digits_export["out"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    cases = [
        (["visualize", str(export / "model-torch.pt"), str(broken)], "cannot read"),
        (["visualize", str(export / "model-onnx.onnx"), str(val_images(1)[0])], "does not expose attention"),
        (["visualize", str(export), str(val_images(1)[0]), "--teacher", str(tmp_path / "nope.pth")], "does not exist"),
    ]
    for argv, words in cases:
        assert main([*argv, "--out", str(tmp_path / "v")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err and err.startswith("t2t visualize: error:"), err
