"""T2T-ViT keeps the contract timm's own tooling relies on (features, tracing, scripting, cfgs)."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import t2tvit

SMALL = 64  # every contract below holds at any multiple of 16; small inputs keep the tests fast


def _images(n: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", t2tvit.list_variants())
def test_every_pretrained_cfg_is_complete(name: str) -> None:
    cfg = get_pretrained_cfg(name).to_dict()
    for key in (
        "architecture",
        "num_classes",
        "input_size",
        "fixed_input_size",
        "interpolation",
        "crop_pct",
        "crop_mode",
        "mean",
        "std",
        "classifier",
        "license",
        "origin_url",
        "paper_ids",
    ):
        assert cfg.get(key) is not None, key
    assert cfg["architecture"] == name and cfg["fixed_input_size"] is True
    assert cfg["input_size"] == (3, 224, 224)
    with torch.device("meta"):  # only the model's own cfg and module names are read
        model = timm.create_model(name, img_size=SMALL, num_classes=3, dynamic_img_size=True)
    assert model.pretrained_cfg["input_size"] == (3, SMALL, SMALL) and model.pretrained_cfg["num_classes"] == 3
    assert model.pretrained_cfg["fixed_input_size"] is False
    heads = cfg["classifier"] if isinstance(cfg["classifier"], tuple) else (cfg["classifier"],)
    for head in heads:
        assert isinstance(model.get_submodule(head), torch.nn.Linear)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_dense", "t2t_vit_7_distilled"])
def test_features_only_gives_a_pyramid_matching_feature_info(name: str) -> None:
    model = timm.create_model(name, features_only=True, img_size=SMALL).eval()
    assert model.feature_info.reduction() == [4, 8, 16]  # default: one map per stride
    x = _images(2, SMALL)
    with torch.no_grad():
        feats = model(x)
    for f, chs, red in zip(feats, model.feature_info.channels(), model.feature_info.reduction(), strict=True):
        assert f.shape == (2, chs, SMALL // red, SMALL // red)
    full = timm.create_model(name, img_size=SMALL)
    last = full.feature_info[-1]
    assert model.feature_info.channels()[-1] == last["num_chs"] == full.num_features
    picked = timm.create_model(name, features_only=True, img_size=SMALL, out_indices=(2, 3))
    assert picked.feature_info.reduction() == [16, 16] and len(picked.model.blocks) == 2  # pruned after block 1


def test_forward_intermediates_are_the_forward_pass() -> None:
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7_distilled", img_size=SMALL, num_classes=5).eval()
    x = _images(2, SMALL)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=None, output_fmt="NLC", return_prefix_tokens=True)
        tokens = model.forward_features(x)
        torch.testing.assert_close(final, tokens)
        assert len(inter) == len(model.feature_info) == 2 + len(model.blocks)
        (s4, p4), (s8, _), (last, last_prefix) = inter[0], inter[1], inter[-1]
        assert s4.shape == (2, (SMALL // 4) ** 2, 64) and p4.shape == (2, 0, 64)
        assert s8.shape == (2, (SMALL // 8) ** 2, 64)
        torch.testing.assert_close(model.norm(torch.cat((last_prefix, last), 1)), tokens)
        t2t = model.tokens_to_token
        torch.testing.assert_close(s4, t2t.stage1(x))
        maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True, stop_early=True)
        assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 16), (2, 256, 4, 4)]
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True, output_fmt="NLC")
        torch.testing.assert_close(normed[0], tokens[:, 2:])
        with pytest.raises(t2tvit.ConfigError, match="norm=True"):
            model.forward_intermediates(x, indices=[0], norm=True)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_dense", "t2t_vit_16_ghost", "t2t_vit_14_se"])
def test_fx_symbolic_trace_timm_fx_feature_extractor_and_torchscript(name: str) -> None:
    from timm.models import create_feature_extractor

    model = timm.create_model(name, img_size=SMALL).eval()
    x = _images(2, SMALL)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
        extractor = create_feature_extractor(model, return_nodes={"blocks.1": "b1", "norm": "out"})
        got = extractor(x)
        _, inter = model.forward_intermediates(x, indices=[3], output_fmt="NLC", return_prefix_tokens=True)
    spatial, prefix = inter[0]
    torch.testing.assert_close(got["b1"], torch.cat((prefix, spatial), 1))
    torch.testing.assert_close(got["out"], model.forward_features(x))
    with pytest.raises(t2tvit.ConfigError, match=r"\(B, 3, 64, 64\)"):  # the check survives tracing
        traced(_images(1, 80))
    scripted = torch.jit.script(model)  # at the size the model was built for
    graph_scripted = torch.jit.script(traced)  # timm's test_model_forward_fx_torchscript: the FX graph scripts
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(graph_scripted(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14_distilled"])
def test_backward_reaches_every_parameter_and_the_fixed_tables_stay_fixed(name: str) -> None:
    """timm's test_model_backward: every named parameter gets a gradient; the fixed tables are buffers."""
    model = timm.create_model(name, img_size=SMALL, num_classes=4).train()
    tables = {k: v.clone() for k, v in t2tvit.models.fixed_tables(model).items()}
    out = model(_images(2, SMALL))
    (torch.cat(out) if isinstance(out, tuple) else out).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    for key, table in t2tvit.models.fixed_tables(model).items():
        assert torch.equal(table, tables[key]), key


def test_features_only_is_built_by_timm_with_its_cfg() -> None:
    """build_model_with_cfg wraps the model in FeatureGetterNet and gives the wrapper timm's cfg."""
    from timm.models._features import FeatureGetterNet

    model = timm.create_model("t2t_vit_7", features_only=True, img_size=SMALL)
    assert isinstance(model, FeatureGetterNet)
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["architecture"] == "t2t_vit_7" and "num_classes" not in model.pretrained_cfg
    assert model.pretrained_cfg["input_size"] == (3, SMALL, SMALL)
    assert model.model.pretrained_cfg["first_conv"] == "tokens_to_token.attention1.kqv"
    with pytest.raises(t2tvit.ConfigError, match="getter"):
        timm.create_model("t2t_vit_7", features_only=True, feature_cls="hook")


def test_reset_classifier_and_pooling() -> None:
    model = timm.create_model("t2t_vit_7", img_size=SMALL).eval()
    x = _images(2, SMALL)
    model.reset_classifier(7)
    assert model.get_classifier().in_features == model.num_features == model.head_hidden_size == 256
    assert model(x).shape == (2, 7)
    model.reset_classifier(0, "avg")
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
    model.reset_classifier(0, "")
    assert model(x).shape == (2, (SMALL // 16) ** 2 + 1, 256)
    with pytest.raises(t2tvit.ConfigError, match="global_pool"):
        model.reset_classifier(3, "max")
    with pytest.raises(t2tvit.ConfigError, match="distillation"):
        timm.create_model("t2t_vit_7_distilled", img_size=SMALL).reset_classifier(3, "avg")


def test_group_matcher_and_no_weight_decay_cover_every_parameter() -> None:
    from timm.models import group_parameters

    model = timm.create_model("t2t_vit_7_distilled", img_size=SMALL)
    groups = group_parameters(model, model.group_matcher())
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert "tokens_to_token.attention1.kqv.weight" in groups[0]  # the T2T module is the stem
    assert len(groups) == 1 + 7 + 1  # stem, the 7 blocks, the final norm with the heads
    assert {"cls_token", "dist_token"} <= model.no_weight_decay()


def test_grad_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """With dropout and drop path active: checkpointing replays the same random masks."""

    def run(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = timm.create_model("t2t_vit_7", img_size=SMALL, num_classes=10, drop_path_rate=0.2, drop_rate=0.1)
        model.set_grad_checkpointing(checkpointing)
        model.train()
        torch.manual_seed(1)
        loss = torch.nn.functional.cross_entropy(model(_images(4, SMALL)), torch.arange(4))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = run(False)
    loss_b, grads_b = run(True)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_a[key], grads_b[key], rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_7_distilled", "t2t_vit_dense"])
def test_dynamic_img_size_is_exact_against_a_model_built_at_that_size(name: str) -> None:
    """The position table is a fixed sinusoid of the flattened token index, so a model built at 64
    and run at another multiple of 16 equals a model built at that size with the same weights."""
    torch.manual_seed(0)
    dynamic = timm.create_model(name, img_size=SMALL, num_classes=4, dynamic_img_size=True).eval()
    sizes = [(80, 48)] if name == "t2t_vit_dense" else [(96, 96), (80, 48), (SMALL, SMALL)]
    for size in sizes:
        fixed = timm.create_model(name, img_size=size, num_classes=4).eval()
        fixed.load_state_dict(t2tvit.models.filter_state_dict(dynamic.state_dict(), fixed)[0], strict=True)
        x = _images(2, size)
        with torch.no_grad():
            assert torch.equal(dynamic(x), fixed(x)), size
    with pytest.raises(t2tvit.ConfigError, match="multiples of 16"):
        dynamic(_images(1, 72))
    traced = torch.fx.symbolic_trace(dynamic)  # the dynamic path traces too
    with torch.no_grad():
        torch.testing.assert_close(traced(_images(1, 96)), dynamic(_images(1, 96)), rtol=0, atol=0)


def test_fixed_size_model_refuses_other_sizes_with_the_fix_named() -> None:
    model = timm.create_model("t2t_vit_7", img_size=SMALL).eval()
    with pytest.raises(t2tvit.ConfigError, match="dynamic_img_size=True"):
        model(_images(1, 96))
