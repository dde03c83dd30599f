"""The model family: registration, exact sizes, shapes, official layout, numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

import t2tvit
from benchmarks.reference import RefTokenPerformer, reference_model
from t2tvit.models import TokenPerformer, sinusoid_table
from t2tvit.models.layers import _performer_core_fp32

# Exact official counts: parameters() plus the fixed tables (random features, position table), which the
# official code keeps as frozen parameters and this package as persistent buffers.
OFFICIAL_PARAMS = {
    "t2t_vit_7": 4_310_222,
    "t2t_vit_10": 5_889_230,
    "t2t_vit_12": 6_941_902,
    "t2t_vit_14": 21_545_550,
    "t2t_vit_19": 39_177_422,
    "t2t_vit_24": 64_105_934,
    "t2t_vit_t_14": 21_541_070,
    "t2t_vit_t_19": 39_172_942,
    "t2t_vit_t_24": 64_101_454,
    "t2t_vit_14_resnext": 21_545_550,
    "t2t_vit_14_wide": 25_156_302,
    # The paper's "CNN to T2T-ViT" variants (official models/t2t_vit_{dense,se,ghost}.py).
    "t2t_vit_dense": 23_647_062,
    "t2t_vit_14_se": 21_803_598,
    "t2t_vit_16_ghost": 16_253_262,
}


def _images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_exact_parameter_counts(name: str) -> None:
    model = timm.create_model(name)
    assert t2tvit.models.official_param_count(model) == OFFICIAL_PARAMS[name]
    tables = t2tvit.models.fixed_tables(model)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name] - sum(t.numel() for t in tables.values())


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_distilled_twin_adds_exactly_a_token_a_head_and_a_position(name: str) -> None:
    v = t2tvit.VARIANTS[name]
    model = timm.create_model(name + "_distilled")
    # dist_token, head_dist (on the backbone's output width), one more position row
    extra = v.embed_dim + (model.num_features * 1000 + 1000) + v.embed_dim
    assert t2tvit.models.official_param_count(model) == OFFICIAL_PARAMS[name] + extra


def test_every_variant_is_registered_with_timm() -> None:
    names = set(timm.list_models("t2t_vit*"))
    assert set(t2tvit.list_variants()) <= names
    cfg = timm.create_model("t2t_vit_7").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.9


def test_official_key_names_and_shapes() -> None:
    sd = timm.create_model("t2t_vit_7").state_dict()
    expected = {
        "cls_token": (1, 1, 256),
        "pos_embed": (1, 197, 256),
        "tokens_to_token.attention1.kqv.weight": (192, 147),
        "tokens_to_token.attention1.w": (32, 64),
        "tokens_to_token.attention1.mlp.0.weight": (64, 64),
        "tokens_to_token.attention2.kqv.weight": (192, 576),
        "tokens_to_token.project.weight": (256, 576),
        "blocks.0.attn.qkv.weight": (768, 256),
        "blocks.6.mlp.fc2.weight": (256, 512),
        "norm.weight": (256,),
        "head.weight": (1000, 256),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "blocks.0.attn.qkv.bias" not in sd  # qkv_bias=False, as in the official code
    t_sd = timm.create_model("t2t_vit_t_14").state_dict()
    assert tuple(t_sd["tokens_to_token.attention1.attn.qkv.weight"].shape) == (192, 147)
    assert "tokens_to_token.attention1.w" not in t_sd


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
@pytest.mark.parametrize("size", [224, 384])
def test_forward_shapes(name: str, size: int) -> None:
    model = timm.create_model(name, img_size=size, num_classes=10).eval()
    with torch.inference_mode():
        out = model(_images(1, size))
        tokens = model.forward_features(_images(1, size))
    assert out.shape == (1, 10)
    assert tokens.shape == (1, (size // 16) ** 2 + 1, model.num_features)
    assert torch.isfinite(out).all()


def test_non_square_input_and_drop_path() -> None:
    model = timm.create_model("t2t_vit_7", img_size=(224, 160), num_classes=5, drop_path_rate=0.1)
    assert model(_images(2, 224)[..., :160]).shape == (2, 5)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [230, 0, (224, 200)])
def test_image_size_must_be_multiple_of_16(bad) -> None:
    with pytest.raises(t2tvit.ConfigError, match="multiple of 16"):
        timm.create_model("t2t_vit_7", img_size=bad)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = timm.create_model("t2t_vit_7").eval()
    with pytest.raises(t2tvit.ConfigError, match=r"\(B, 3, 224, 224\).*img_size"):
        model(_images(1, 256))


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_resnext", "t2t_vit_7_distilled"])
def test_matches_straightforward_formulation(name: str) -> None:
    """Same weights in the official layout (strict load both ways), same outputs and gradients."""
    torch.manual_seed(0)
    ours = timm.create_model(name).eval()
    ref = reference_model(name).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = _images(2)
    a, b = ours(x), ref(x)
    assert (a - b).abs().max().item() <= 1e-4
    a.square().sum().backward()
    b.square().sum().backward()
    # The official code's frozen tables are parameters there and buffers here (same state-dict keys).
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in ours.named_parameters()} | set(t2tvit.models.fixed_tables(ours))
    for key, pa in ours.named_parameters():
        pb = ref_params[key]
        if pa.grad is not None:  # summation order differs: compare against each tensor's scale
            assert (pa.grad - pb.grad).abs().max() <= 1e-3 * pb.grad.abs().max() + 1e-8, key


def _official_core_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The official Performer attention, evaluated directly in float64 (epsilon included)."""
    qd, kd, vd, wd = q.double(), k.double(), v.double(), w.double()
    m = wd.shape[0]
    qp = torch.exp(qd @ wd.t() - 0.5 * (qd * qd).sum(-1, keepdim=True)) / math.sqrt(m)
    kp = torch.exp(kd @ wd.t() - 0.5 * (kd * kd).sum(-1, keepdim=True)) / math.sqrt(m)
    d = qp @ kp.sum(1, keepdim=True).transpose(1, 2)
    return (qp @ (kp.transpose(1, 2) @ vd)) / (d + 1e-8)


@pytest.mark.parametrize("kqv_scale", [1.0, 3.0])
def test_performer_core_computes_the_official_formula_epsilon_included(kqv_scale: float) -> None:
    """Against a float64 evaluation of the official formula (``+ 1e-8`` included) the core is exact
    to fp32 rounding, including rows whose denominator is at or below the epsilon, where the
    formula without it is not."""
    torch.manual_seed(0)
    p = TokenPerformer(147, 64).eval()
    with torch.no_grad():
        p.kqv.weight.mul_(kqv_scale)
        k, q, v = p.kqv(p.norm1(torch.randn(2, 3136, 147))).split(64, dim=-1)
        ours = _performer_core_fp32(q, k, v, p.w).double()
        exact = _official_core_float64(q, k, v, p.w)
        qd, kd, wd = q.double(), k.double(), p.w.double()
        qp = torch.exp(qd @ wd.t() - 0.5 * (qd * qd).sum(-1, keepdim=True)) / math.sqrt(32)
        kp = torch.exp(kd @ wd.t() - 0.5 * (kd * kd).sum(-1, keepdim=True)) / math.sqrt(32)
        d = qp @ kp.sum(1, keepdim=True).transpose(1, 2)
    scale = exact.abs().max().item()
    assert (ours - exact).abs().max().item() <= 1e-5 * scale
    if kqv_scale > 1:  # the case the epsilon decides: denominators far below 1e-8
        assert d.min().item() < 1e-8
        no_eps = exact * (d + 1e-8) / d
        assert (no_eps - exact).abs().max().item() > 100 * (ours - exact).abs().max().item()


def test_performer_core_gradient_is_finite_where_the_direct_ratio_underflows() -> None:
    """Queries favour a feature that every key has underflowed in: in float32 the official
    kernel's features underflow (its ratio is noise; a ratio clamped away from 0 has an infinite
    gradient). The core's value and gradient stay finite and match the official formula
    evaluated in float64, where nothing underflows."""
    w = torch.eye(2) * 30.0
    k = torch.tensor([[[3.0, -3.0]] * 4])  # every key along feature 0
    q = torch.tensor([[[-3.0, 3.0]] * 3])  # every query along feature 1
    v = torch.randn(1, 4, 2)
    q.requires_grad_(True)
    out = _performer_core_fp32(q, k, v, w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
    assert q.grad.abs().max() > 0
    torch.testing.assert_close(out.double(), _official_core_float64(q.detach(), k, v, w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [2.0, 8.0])
def test_performer_is_finite_under_autocast_with_large_activations(dtype: torch.dtype, scale: float) -> None:
    """Scaled kqv weights give |k|, |q| of 10-60: the official kernel overflows in fp16 (NaN)
    and underflows to a zero attention in fp32; ours stays finite and close to exact fp32."""
    torch.manual_seed(0)
    ours = TokenPerformer(147, 64).eval()
    with torch.no_grad():
        ours.kqv.weight.mul_(scale)
    ref = RefTokenPerformer(147, 64).eval()
    ref.load_state_dict(ours.state_dict())
    u = torch.randn(2, 3136, 147)
    with torch.no_grad():
        fp32 = ours(u)
        with torch.autocast("cpu", dtype=dtype):
            low = ours(u)
            ref_low = ref(u)
    assert torch.isfinite(low).all()
    tol = 0.02 if dtype == torch.float16 else 0.1  # relative to the output's range
    assert (low.float() - fp32).abs().max().item() <= tol * fp32.abs().max().item()
    if dtype == torch.float16:
        assert not torch.isfinite(ref_low).all(), "the straightforward formulation was expected to overflow"


def test_whole_model_autocast_fp16_close_to_fp32_on_large_inputs() -> None:
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7").eval()
    x = _images(2) * 50
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.float16):
            fp16 = model(x)
    assert torch.isfinite(fp16).all()
    assert (fp16.float() - fp32).abs().max().item() < 1e-2


def test_sinusoid_table_is_bit_identical_to_the_official_loop() -> None:
    def official(n_position: int, d_hid: int) -> torch.Tensor:
        table = np.array(
            [[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)]
        )
        table[:, 0::2] = np.sin(table[:, 0::2])
        table[:, 1::2] = np.cos(table[:, 1::2])
        return torch.FloatTensor(table).unsqueeze(0)

    for n, d in [(197, 256), (577, 384), (198, 448)]:
        assert torch.equal(sinusoid_table(n, d), official(n, d))


def test_distilled_heads_train_vs_eval_vs_script_vs_trace() -> None:
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7_distilled", num_classes=10)
    x = _images(2)
    model.train()
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    model.eval()
    with torch.no_grad():
        avg = model(x)
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(avg, expected)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(scripted(x), avg)
        torch.testing.assert_close(traced(x), avg)
        scripted.train()  # a scripted model gives the average even in training mode
        assert isinstance(scripted(x), torch.Tensor)


def test_fixed_tables_are_persistent_buffers_and_everything_else_trains() -> None:
    # timm's suite wants a gradient for every named parameter: the fixed tables are buffers, kept in
    # the state dict under their official keys.
    model = timm.create_model("t2t_vit_7")
    assert "cls_token" in model.no_weight_decay()
    tables = {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
    assert set(t2tvit.models.fixed_tables(model)) == tables == {n for n, _ in model.named_buffers()}
    assert tables <= set(model.state_dict()) and not tables & {n for n, _ in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())


def test_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = timm.create_model("t2t_vit_24_distilled", img_size=384)
    assert {p.device.type for p in [*model.parameters(), *model.buffers()]} == {"meta"}
    extra = (24 * 24 + 2 - 197) * 512 + 512 + 512 * 1000 + 1000  # 384 positions, dist token, dist head
    assert t2tvit.models.official_param_count(model) == OFFICIAL_PARAMS["t2t_vit_24"] + extra


def test_reset_classifier() -> None:
    model = timm.create_model("t2t_vit_7_distilled")
    model.reset_classifier(7)
    assert model.head.out_features == model.head_dist.out_features == 7 == model.num_classes
    model.reset_classifier(0)
    assert model.eval()(_images(1)).shape == (1, 256)  # pre-logits: the average of both tokens


def test_pretrained_without_a_file_explains_how_to_load_weights(tmp_path) -> None:
    with pytest.raises(t2tvit.ConfigError, match=r"71\.7_T2T_ViT_7\.pth\.tar.*checkpoint=PATH"):
        timm.create_model("t2t_vit_7", pretrained=True)
    path = tmp_path / "w.pth"
    src = timm.create_model("t2t_vit_7")
    torch.save({"state_dict_ema": src.state_dict()}, path)
    model = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert torch.equal(model.head.weight, src.head.weight)
    assert "state_dict" not in model.pretrained_cfg  # the tensors are the model's, not kept twice


def test_timm_pretrained_takes_the_files_class_count_and_maps_through_the_filter(tmp_path) -> None:
    """timm's loader with the project's filter: the file's class count is the model's default, another
    count gets a fresh head, a distilled twin starts from the plain file, a wrong file is one sentence."""
    src = timm.create_model("t2t_vit_7", num_classes=10)
    path = tmp_path / "ten.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    overlay = {"file": str(path)}
    ten = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=overlay)
    assert ten.num_classes == 10 and torch.equal(ten.head.weight, src.head.weight)
    three = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3)
    assert three.head.weight.shape == (3, 256) and torch.equal(three.norm.weight, src.norm.weight)
    dist = timm.create_model("t2t_vit_7_distilled", pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(dist.dist_token, src.cls_token) and any("distillation" in n for n in dist.load_report.notes)
    with pytest.raises(t2tvit.CheckpointError, match="looks like t2t_vit_7"):
        timm.create_model("t2t_vit_10", pretrained=True, pretrained_cfg_overlay=overlay)


def test_soft_split_matches_nn_unfold_forward_and_backward() -> None:
    from t2tvit.models.layers import SoftSplit

    x = torch.randn(2, 28, 28, 64, requires_grad=True)
    ours = SoftSplit(3, 2, 1, channels_last=True)(x)
    ref = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), 3, padding=1, stride=2).transpose(1, 2)
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(ga, gb)
    img = torch.randn(2, 3, 32, 48)
    ref0 = torch.nn.functional.unfold(img, 7, padding=2, stride=4).transpose(1, 2)
    assert torch.equal(SoftSplit(7, 4, 2, channels_last=False)(img), ref0)
    assert math.prod(ref0.shape[1:]) == 8 * 12 * 147


def test_make_model_builds_every_library_with_weights_class_count_size_and_head_policy(tmp_path) -> None:
    """The one factory: T2T-ViT, timm and torchvision names, a checkpoint's class count as the default,
    the head policies, and a report saying what was built and loaded."""
    from t2tvit.models.factory import make_model

    src, report = make_model("t2t_vit_7", num_classes=10, img_size=64)
    assert report.library == "t2tvit" and report.path is None and str(report) == "random initialisation"
    path = tmp_path / "t2t.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    same, report = make_model("t2t_vit_7", checkpoint=path, img_size=64)
    assert same.num_classes == 10 and torch.equal(same.head.weight, src.head.weight) and same.load_report is report
    fresh, report = make_model("t2t_vit_7", checkpoint=path, img_size=64, head="new")
    assert not torch.equal(fresh.head.weight, src.head.weight) and torch.equal(fresh.norm.weight, src.norm.weight)
    assert not fresh.head.weight.is_meta and "new 10-class head" in str(report)
    with pytest.raises(t2tvit.ConfigError, match="trained 10-class head but 3 classes were asked for"):
        make_model("t2t_vit_7", checkpoint=path, img_size=64, num_classes=3)  # head="keep", the default

    cnn, report = make_model("resnet18", num_classes=5, img_size=96)
    assert report.library == "timm" and cnn.img_size == (96, 96)
    torch.save(cnn.state_dict(), tmp_path / "cnn.pth")
    again, report = make_model("resnet18", checkpoint=tmp_path / "cnn.pth")
    assert again.num_classes == 5 and torch.equal(again.fc.weight, cnn.fc.weight)
    with pytest.raises(t2tvit.ConfigError, match="pass --new-head"):
        make_model("timm:resnet18", checkpoint=tmp_path / "cnn.pth", num_classes=7)
    seven, report = make_model("timm:resnet18", checkpoint=tmp_path / "cnn.pth", num_classes=7, head="auto")
    assert seven.fc.out_features == 7 and "new 7-class head (checkpoint had 5)" in str(report)

    tv, report = make_model("torchvision:mobilenet_v3_small", num_classes=4)
    assert report.library == "torchvision" and tv.num_classes == 4 and tv.img_size == (224, 224)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    with pytest.raises(t2tvit.CheckpointError, match="does not fit resnet18"):
        make_model("resnet18", checkpoint=tmp_path / "tv.pth")
    with pytest.raises(t2tvit.ConfigError, match="did you mean t2t_vit_7"):
        make_model("t2t_vit_77")
    with pytest.raises(t2tvit.ConfigError, match="head must be"):
        make_model("t2t_vit_7", head="fresh")
