"""DeiT distillation: the loss against hand computation, the frozen teacher, its weight files and
input adaptation, the student's heads, bad input, and real runs of ``t2t distill`` on the digits."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

import t2tvit
from compress.distill import DistillationLoss, Teacher, TeacherInput, build_teacher, main
from t2tvit.errors import CheckpointError, ConfigError
from t2tvit.train import main as train_main
from tests.conftest import QUICK_START_DEMO, finished_demo

QUICK = ["--config", "digits", "-j", "0", "--log-interval", "1000"]


@pytest.fixture(scope="module")
def teacher_ckpt(digits: Path, tmp_path_factory) -> Path:
    """A ResNet-18 teacher trained by our trainer on the digits at 32 px: the quick start's demo teacher (4
    epochs) when that run is there and current, as in CI, else one trained here (3 epochs, ~30 s)."""
    out = tmp_path_factory.mktemp("teacher")
    if finished_demo(QUICK_START_DEMO):
        shutil.copy(QUICK_START_DEMO / "teacher" / "best.pth", out / "best.pth")
        return out / "best.pth"
    assert train_main(["digits", *QUICK, "--model", "resnet18", "--epochs", "3", "--output", str(out)]) == 0
    return out / "best.pth"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Fixed(nn.Module):
    """A real (linear) teacher network with fixed weights: logits = flatten(images) @ W."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_losses_equal_a_hand_computation(kind: str, tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 2, 2, generator=g)
    weight = torch.randn(5, 12, generator=g)
    cls_logits, dist_logits = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    targets = torch.tensor([0, 3, 4, 1])
    teacher = Teacher(_Fixed(weight), TeacherInput(None))
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, kind, alpha=0.3, tau=tau)
    got = float(loss(images, (cls_logits, dist_logits), targets))

    x, s, c = images.double().flatten(1).numpy(), dist_logits.double().numpy(), cls_logits.double().numpy()
    t = x @ weight.double().numpy().T  # the teacher's logits
    base = -np.mean(np.log(_softmax(c))[np.arange(4), targets.numpy()])
    if kind == "hard":
        distill = -np.mean(np.log(_softmax(s))[np.arange(4), t.argmax(1)])
    else:  # DeiT: KL(teacher || student) at temperature tau, summed, / (batch * classes), x tau^2
        p, q = _softmax(t / tau), _softmax(s / tau)
        distill = np.sum(p * (np.log(p) - np.log(q))) / s.size * tau * tau
    assert got == pytest.approx(0.7 * base + 0.3 * distill, rel=1e-5, abs=1e-6)
    assert kind != "soft" or loss.distill(dist_logits, dist_logits).abs() < 1e-7  # KL(p || p) = 0


def test_none_trains_both_heads_on_labels_and_a_plain_student() -> None:
    a, b, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    ce = nn.CrossEntropyLoss()
    loss = DistillationLoss(ce, None, "none")
    assert float(loss(None, (a, b), y)) == pytest.approx(float((ce(a, y) + ce(b, y)) / 2))
    assert float(loss(None, a, y)) == pytest.approx(float(ce(a, y)))
    with pytest.raises(ConfigError, match="needs a teacher"):
        DistillationLoss(ce, None, "hard")
    with pytest.raises(ConfigError, match="a \\*_distilled model"):
        DistillationLoss(ce, Teacher(nn.Flatten(), TeacherInput(None)), "hard")(torch.zeros(3, 1), a, y)


def test_distilled_student_gives_two_heads_in_training_and_their_mean_in_eval() -> None:
    torch.manual_seed(0)
    model = t2tvit.create_model("t2t_vit_7_distilled", img_size=32, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10) and not torch.allclose(cls_logits, dist_logits)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        assert torch.allclose(model(x), expected, atol=1e-6)


def _save_resnet18(path: Path, num_classes: int = 10, wrap: str | None = None) -> nn.Module:
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=num_classes)
    sd = model.state_dict()
    torch.save({wrap: sd} if wrap else sd, path)
    return model


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient(tmp_path: Path) -> None:
    src = _save_resnet18(tmp_path / "r18.pth")
    teacher = build_teacher("resnet18", tmp_path / "r18.pth", 10, img_size=32)  # no resize: compare below
    student = t2tvit.create_model("t2t_vit_7_distilled", img_size=32, num_classes=10)
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard")
    bn_before = teacher.model.bn1.running_mean.clone()
    loss.train()  # what a training loop might do to every module it owns
    student.train()
    images = torch.randn(4, 3, 32, 32)
    value = loss(images, student(images), torch.tensor([0, 1, 2, 3]))
    value.backward()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.model.bn1.running_mean, bn_before)  # eval BatchNorm: stats untouched
    assert student.head.weight.grad is not None and student.head_dist.weight.grad is not None
    with torch.no_grad():
        src.eval()
        assert torch.allclose(teacher(images), src(images), atol=1e-5)


def test_teacher_reads_every_weight_layout_to_the_same_logits(tmp_path: Path) -> None:
    src = _save_resnet18(tmp_path / "plain.pth").eval()
    torch.save({"model": src.state_dict()}, tmp_path / "deit.pth")  # DeiT's teacher checkpoints
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pth")
    torch.save({"model": src.state_dict(), "args": {"model": "resnet18", "img_size": 32}}, tmp_path / "ours.pth")
    tv = torchvision.models.resnet18(num_classes=10)
    tv.load_state_dict(src.state_dict())  # timm's ResNet has torchvision's keys
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = src(x)
    kinds = [("resnet18", "plain.pth"), ("resnet18", "deit.pth"), ("resnet18", "ddp.pth"), (None, "ours.pth")]
    kinds.append(("torchvision:resnet18", "tv.pth"))
    for name, file in kinds:
        teacher = build_teacher(name, tmp_path / file, 10, img_size=32)
        assert torch.allclose(teacher(x), want, atol=1e-4), (name, file)
    assert build_teacher(None, tmp_path / "ours.pth", 10).expects.img_size == 32  # the size it was trained at
    assert build_teacher("torchvision:resnet18", tmp_path / "tv.pth", 10).expects.img_size == 224


def test_teacher_input_is_resized_and_renormalised(tmp_path: Path) -> None:
    seen: list[torch.Tensor] = []
    probe = nn.Flatten()
    probe.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    expects = TeacherInput(48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    teacher = Teacher(probe, expects, student_mean=(0.485, 0.456, 0.406), student_std=(0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 32, 32)  # the images in [0, 1]
    s_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    teacher((pixels - s_mean) / s_std)
    assert seen[0].shape == (2, 3, 48, 48)
    want = torch.nn.functional.interpolate((pixels - 0.5) / 0.25, size=(48, 48), mode="bilinear")
    assert torch.allclose(seen[0], want, atol=1e-5)
    same = Teacher(nn.Identity(), TeacherInput(None))
    x = torch.randn(1, 3, 8, 8)
    assert not same.renormalise and torch.equal(same(x), x)  # nothing to adapt: the batch as is


def test_bad_teachers_give_one_clear_sentence(tmp_path: Path, small_digits: Path, capsys) -> None:
    _save_resnet18(tmp_path / "r18_1000.pth", num_classes=1000)
    with pytest.raises(ConfigError, match="predicts 1000 classes but the student has 10"):
        build_teacher("resnet18", tmp_path / "r18_1000.pth", 10)
    torch.save(timm.create_model("resnet34", num_classes=10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"does not fit the teacher resnet18: unexpected \d+ keys \(e\.g\. layer"):
        build_teacher("resnet18", tmp_path / "r34.pth", 10)
    with pytest.raises(ConfigError, match="unknown teacher model 'resnet_nope'"):
        build_teacher("resnet_nope", tmp_path / "r34.pth", 10)
    with pytest.raises(ConfigError, match="does not record its architecture"):
        build_teacher(None, tmp_path / "r34.pth", 10)

    base = [str(small_digits), *QUICK, "-b", "16", "--epochs", "1", "--output", str(tmp_path / "run")]
    cases = [
        (["--model", "t2t_vit_7", "--teacher-path", str(tmp_path / "r34.pth")], "use --model t2t_vit_7_distilled"),
        (["--model", "t2t_vit_7_distilled"], "needs the teacher's weights: --teacher-path"),
        (["--model", "t2t_vit_7_distilled", "--teacher-model", "resnet18", "--teacher-path", "nope.pth"], "nope.pth"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0 and "Traceback" not in err, err


@pytest.mark.slow
def test_distill_digits_end_to_end(digits: Path, teacher_ckpt: Path, tmp_path: Path, capsys) -> None:
    """Hard distillation from a trained ResNet-18 through the trainer; the student learns the digits."""
    out = tmp_path / "hard"
    args = ["digits", *QUICK, "--model", "t2t_vit_7_distilled", "--teacher-model", "resnet18"]
    args += ["--teacher-path", str(teacher_ckpt), "--distillation-type", "hard", "--epochs", "2"]
    assert main([*args, "--steps-per-epoch", "30", "--output", str(out)]) == 0
    log = capsys.readouterr().out
    assert "teacher resnet18" in log and "hard distillation, alpha 0.5" in log
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 2 epochs x 30 steps: 86% was measured (labels only: 86% too); chance is 10%.
    assert rows[-1]["top1"] >= 75.0, rows[-1]
    ck = t2tvit.checkpoint.read_checkpoint(out / "best.pth")
    assert ck["args"]["distillation_type"] == "hard" and ck["args"]["teacher_path"] == str(teacher_ckpt)
    student = t2tvit.create_model("t2t_vit_7_distilled", checkpoint=out / "best.pth", img_size=32).eval()
    assert student(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # eval: the averaged heads


@pytest.mark.slow
def test_soft_distillation_with_mixup_under_two_gloo_processes(
    small_digits: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "compress.distill", str(small_digits), *QUICK, "--model", "t2t_vit_7_distilled", "-b", "8",
        "--epochs", "1", "--device", "cpu",
        "--teacher-path", str(teacher_ckpt), "--distillation-type", "soft", "--distillation-tau", "2",
        "--mixup", "0.8", "--output", str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks_in_sync"] and summary["last"]["train_images"] == 80
    assert math.isfinite(summary["last"]["train_loss"])
    assert res.stdout.count("teacher resnet18") == 1  # printed by rank 0 only


@pytest.mark.parametrize("kind", ["hard", "soft", "none"])
def test_timm_deit_distilled_student_trains_both_heads(tmp_path: Path, kind: str) -> None:
    # timm's deit_*_distilled return the mean of their heads in training unless set_distilled_training(True):
    # the distillation criterion sets it, so the first step gets (cls, dist) and both heads get a gradient.
    from compress.distill import DistillConfig, distillation_criterion

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    student = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32)
    args = DistillConfig.load(
        model="deit_tiny_distilled_patch16_224", img_size=32, teacher_model="resnet18",
        teacher_path=str(path), distillation_type=kind,
    )  # fmt: skip
    criterion = distillation_criterion(args, student, mixup_active=False)
    student.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    outputs = student(images)
    assert isinstance(outputs, tuple) and len(outputs) == 2
    criterion(images, outputs, targets).backward()
    for head in (student.head, student.head_dist):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    student.eval()
    with torch.no_grad():
        mean = student(images)
    assert mean.shape == (4, 10)  # evaluation still averages the two heads


def test_teacher_in_channels_last_gives_the_same_logits() -> None:
    # On CUDA build_teacher puts a convolutional teacher in channels_last; the function must not change.
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10).eval()
    plain = Teacher(net, TeacherInput(None))
    images = torch.randn(2, 3, 32, 32)
    want = plain(images)
    nhwc = Teacher(timm.create_model("resnet18", num_classes=10), TeacherInput(None), channels_last=True)
    nhwc.model.load_state_dict(net.state_dict())
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(images), want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")
def test_cnn_teacher_on_cuda_runs_channels_last_with_the_cpu_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    cpu = build_teacher("resnet18", path, 10, img_size=32)
    gpu = build_teacher("resnet18", path, 10, img_size=32, device="cuda")
    assert gpu.channels_last and not cpu.channels_last
    images = torch.randn(4, 3, 32, 32)
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    try:
        torch.testing.assert_close(gpu(images.cuda()).cpu(), cpu(images), rtol=1e-3, atol=1e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
