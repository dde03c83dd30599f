"""The deploy graph (deploy.graph): every converter's view of the model, proven equal to it.

Weights look trained: every trainable tensor is perturbed by N(0, 0.02) (``benchmarks.faithful.perturb_``),
which brings the token Performer's denominators to its official ``+ 1e-8``; fresh initialisations never
do. The oracle is ``benchmarks.reference`` (the official formulation) in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import deploy.graph
from benchmarks.faithful import perturb_
from benchmarks.reference import ReferenceT2TViT, reference_model
from deploy.graph import (
    GRAPH_TOLERANCE,
    RUNTIMES,
    T2T_FORM,
    T2T_FORMS,
    ChannelMajorT2T,
    DeployGraphMismatch,
    deploy_graph,
    graph_check,
)
from t2tvit.errors import ConfigError
from t2tvit.models.layers import SoftSplit
from t2tvit.models.t2t_vit import T2TViT

pytestmark = pytest.mark.usefixtures("one_thread")

# T2T-ViT-7's backbone with the token-transformer T2T module (no official t2t_vit_t_7 is registered).
T_7 = dict(tokens_type="transformer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)


def _pair(name: str, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Ours (perturbed, fp32) and the float64 oracle with the same weights."""
    torch.manual_seed(0)
    if name == "t2t_vit_t_7":
        ours, ref = T2TViT(img_size=size, **T_7), ReferenceT2TViT(img_size=size, **T_7)
    else:
        ours, ref = timm.create_model(name, img_size=size), reference_model(name, img_size=size)
    perturb_(ours).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref.double().eval()


@pytest.mark.parametrize(
    ("name", "size"),
    [("t2t_vit_7", 224), ("t2t_vit_7", 32), ("t2t_vit_t_7", 224), ("t2t_vit_t_7", 48), ("t2t_vit_14_se", 64)],
)
def test_channel_major_t2t_is_the_official_function(name: str, size: int) -> None:
    """fp32: as close to the float64 oracle as the model itself (measured ~3e-7..8e-7 of the largest logit);
    in float64 the channel-major algebra (folded LayerNorm, Performer on maps, one project conv) equals the
    official formula to float64 rounding (measured ~1e-15)."""
    ours, ref = _pair(name, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    graph = deploy_graph(ours, "openvino", size, t2t="channel_major")
    assert isinstance(graph.tokens_to_token, ChannelMajorT2T)
    assert not any(isinstance(m, SoftSplit) for m in graph.modules())
    with torch.no_grad():
        exact = ref(x.double())
        model32, graph32 = ours(x).double(), graph(x).double()
        graph64 = deploy_graph(ours.double(), "openvino", size, t2t="channel_major")(x.double())
    scale = exact.abs().max().item()
    assert (graph32 - model32).abs().max().item() <= 2e-6 * scale
    assert (graph32 - exact).abs().max().item() <= 2e-6 * scale
    assert (graph64 - exact).abs().max().item() <= 1e-12 * scale
    assert torch.equal(graph32.argmax(1), exact.argmax(1))
    assert type(ours.float().tokens_to_token.soft_split0) is SoftSplit  # the model itself is not changed


def test_the_official_quirks_decide_the_graph_logits() -> None:
    """The graph keeps the Performer's epsilon and LayerNorm's eps: dropping either moves the logits past
    the tolerance the exporter holds graphs to (so the equality test above can fail)."""
    ours, _ = _pair("t2t_vit_7", 224)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    graph = deploy_graph(ours, "onnx", 224, t2t="channel_major")
    graph_check(ours, graph, x)
    no_eps = deploy_graph(ours, "onnx", 224, t2t="channel_major")
    no_eps.tokens_to_token.attention2.null = -1e4  # the null feature gone: the official formula without + 1e-8
    with pytest.raises(DeployGraphMismatch, match=r"differs from the model by .* > "):
        graph_check(ours, no_eps, x)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_gets_a_proven_graph_of_its_form(runtime: str) -> None:
    ours, _ = _pair("t2t_vit_7", 32)
    distilled = perturb_(timm.create_model("t2t_vit_7_distilled", img_size=32, num_classes=10)).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for model in (ours, distilled):
        graph = deploy_graph(model, runtime, 32)
        rec = graph_check(model, graph, x)
        assert rec["runtime"] == runtime and rec["t2t"] == T2T_FORM[runtime] and rec["images"] == 3
        with torch.no_grad():
            assert rec["max_abs_diff"] <= rec["limit"] == GRAPH_TOLERANCE * max(1.0, float(model(x).abs().max()))
        assert graph is not model and not graph.training
    for form in T2T_FORMS:  # every form of every T2T variant family at another size
        if runtime in deploy.graph.PHONE and form == "gather":
            with pytest.raises(ConfigError, match="one_hot"):
                deploy_graph(ours, runtime, 32, t2t=form)
            continue
        graph_check(ours, deploy_graph(ours, runtime, 32, t2t=form), x)
    with pytest.raises(ConfigError, match="unknown deploy runtime"):
        deploy_graph(ours, "tensorflow")


def test_a_broken_graph_fails_the_artifact_with_the_measured_difference(export_digits, monkeypatch) -> None:
    """A deploy graph that computes something else is never shipped: the row fails, its reason carries
    the measured difference, no file is written, and the other rows still build."""
    real = deploy.graph.deploy_graph

    def broken(model, runtime, img_size=None, t2t=None):
        g = real(model, runtime, img_size, t2t)
        if runtime == "onnx":  # a rewrite bug: one channel of the projection's bias off by 0.05
            with torch.no_grad():
                g.tokens_to_token.project.bias[0] += 0.05
        return g

    monkeypatch.setattr(deploy.graph, "deploy_graph", broken)
    exp = export_digits("torch,onnx,onnx-int8-dynamic,ncnn", 32)
    e = exp["entries"]
    for name in ("onnx", "onnx-int8-dynamic"):
        assert e[name]["status"] == "failed"
        why = f"the deploy graph for onnx ({T2T_FORM['onnx']} T2T module) differs from the model by"
        assert why in e[name]["reason"], e[name]["reason"]
        assert e[name]["file"] is None
    assert not list(exp["out"].glob("*.onnx"))
    assert e["torch"]["status"] == "ok"
    if e["ncnn"]["status"] != "skipped":
        assert e["ncnn"]["status"] == "ok" and e["ncnn"]["deploy_graph"]["t2t"] == "one_hot"


def test_every_converted_row_records_its_graph_proof(converted_export) -> None:
    e = converted_export["entries"]  # the session's export to every converted format that can be built here
    converted = [n for n in converted_export["formats"] if n not in ("torch", "ptl")]
    assert {"onnx", "openvino"} <= set(converted)
    for name in converted:
        a = e[name]
        assert a["status"] == "ok", (name, a["reason"])
        g = a["deploy_graph"]
        assert g["t2t"] == T2T_FORM[g["runtime"]] and g["images"] == 16  # proven on the real calibration images
        assert 0 <= g["max_abs_diff"] <= g["limit"]
    assert e["torch"]["deploy_graph"] is None and e["ptl"]["deploy_graph"] is None  # PyTorch runs (traces) the model
    assert e["openvino"]["deploy_graph"]["runtime"] == "openvino"


def test_openvino_runs_the_channel_major_t2t_module_without_reference_kernels() -> None:
    """The point of the rewrite: OpenVINO's per-node profile of the deploy graph shows no soft-split
    Transpose/Gather on a reference kernel in the T2T module (the plain model's gather has them)."""
    import openvino as ov

    from benchmarks.bench_deploy_graph import summarize_profile

    ours, _ = _pair("t2t_vit_7", 64)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    core = ov.Core()
    found = {}
    for form in ("plain", "channel_major"):
        net = ours if form == "plain" else deploy_graph(ours, "openvino", 64, t2t="channel_major")
        with torch.no_grad():
            ir = ov.convert_model(net, example_input=torch.from_numpy(x))
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True}
        req = core.compile_model(ir, "CPU", cfg).create_infer_request()
        for _ in range(3):  # the profile of a warm call (the first one also runs one-off shape arithmetic)
            out = req.infer({0: x})[0]
        with torch.no_grad():
            ref = ours(torch.from_numpy(x)).numpy()
        assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        found[form] = summarize_profile(req.get_profiling_info())["t2t_reference_kernels_ms"]
    assert any(k.startswith(("Transpose", "Gather")) for k in found["plain"]), found["plain"]
    # what is left is scalar bookkeeping (logsumexp's Log, the null feature's Concat, a few shape ops):
    # microseconds, where the plain model's soft-split gathers and transposes take a tenth of a millisecond
    # or more; which bookkeeping nodes OpenVINO reports varies between runs, so the time is what is held
    left, before = sum(found["channel_major"].values()), sum(found["plain"].values())
    assert left < 0.05 and left < 0.2 * before, found


def test_the_one_hot_soft_split_exports_to_onnx_as_one_convolution_with_the_same_tokens(tmp_path) -> None:
    # ONNX Runtime runs the gather's 5-D/6-D transposes slowly, so the one_hot form writes the soft split
    # as a grouped convolution with one-hot kernels: the same tokens, bit for bit, in ORT too.
    import contextlib
    import io

    import onnx
    import onnxruntime as ort

    from deploy.graph import OneHotSoftSplit
    from t2tvit.models.layers import windows_conv

    x = torch.randn(2, 28, 20, 64)
    img = torch.randn(2, 3, 32, 48)
    for (k, s, p, c, last), inp in (((3, 2, 1, 64, True), x), ((7, 4, 2, 3, False), img)):
        nchw = inp.permute(0, 3, 1, 2) if last else inp
        ref = torch.nn.functional.unfold(nchw, k, padding=p, stride=s).transpose(1, 2)
        assert torch.equal(windows_conv(inp, k, s, p, last), ref)
        split = OneHotSoftSplit(k, s, p, c, last)
        assert torch.equal(split(inp), ref)
        path = tmp_path / f"split{k}.onnx"
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(split, (inp,), str(path), dynamo=True, external_data=False)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count("Conv") == 1, ops
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        np.testing.assert_array_equal(out, ref.numpy())


def test_a_preferred_form_that_misses_the_tolerance_falls_back_to_the_exact_one(digits_checkpoint, monkeypatch) -> None:
    """The channel-major form's folded LayerNorm loses float32 precision on near-uniform windows; when a
    runtime's default or a row's preferred form misses the tolerance on the export's images, the bit-exact
    one-hot form is proven and converted instead and the record says why. A form asked for explicitly
    (``t2t`` without ``fallback``) never falls back."""
    from types import SimpleNamespace

    from conftest import val_images

    from deploy.graph import checked_graph
    from t2tvit.data import eval_transform_for, open_rgb

    model = digits_checkpoint(32)["model"].eval()
    tf = eval_transform_for(model)
    images = torch.stack([tf(open_rgb(p)) for p in val_images(1)])
    ctx = SimpleNamespace(img_size=(32, 32), calib=images.numpy(), example=lambda n: images[:n])
    preferred = {"t2t": "channel_major", "fallback": True}  # the openvino-int8 row's preferred form
    graph, record = checked_graph(model, "openvino", ctx, **preferred)
    assert record["t2t"] == "channel_major" and "fallback" not in record
    monkeypatch.setattr(deploy.graph, "GRAPH_TOLERANCE", 1e-12)  # tighter than float32 rounding of the fold
    graph, record = checked_graph(model, "openvino", ctx, **preferred)
    assert record["t2t"] == "one_hot" and record["max_abs_diff"] == 0.0, record
    assert record["fallback"].startswith("the channel_major form was not converted: the deploy graph for openvino")
    with torch.no_grad():
        assert torch.equal(graph(images), model(images))
    with pytest.raises(DeployGraphMismatch, match="channel_major T2T module"):
        checked_graph(model, "openvino", ctx, t2t="channel_major")
