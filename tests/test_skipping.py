"""A sample whose transform raises is skipped, counted and named once; a broken run is stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

import t2tvit.train
from t2tvit.data import SkippedSample, collate_skip
from t2tvit.engine import LabelLoss, SkipGuard, TooManySkipped, TrainStep, train_one_epoch
from t2tvit.train import main

QUICK = ["--config", "digits", "-j", "0", "--log-interval", "1000"]


class _FailOn:
    """A real transform that raises on images of one size (an injected fault); ``None`` fails on all."""

    def __init__(self, inner, size: tuple[int, int] | None):
        self.inner, self.size = inner, size

    def __call__(self, img):
        if self.size is None or img.size == self.size:
            raise RuntimeError("injected failure")
        return self.inner(img)


def _inject(monkeypatch, size: tuple[int, int] | None) -> None:
    real = t2tvit.train.build_transforms
    monkeypatch.setattr(
        t2tvit.train, "build_transforms", lambda *a: tuple(_FailOn(t, size) for t in real(*a))
    )  # fmt: skip


@pytest.fixture
def tiny_digits(digits_subset) -> Path:
    """20 training and 10 validation digits (64x64): two batches of the loop, quick on 2 cores."""
    return digits_subset(2, 1)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_failing_transform_is_skipped_counted_and_named_once(tiny_digits: Path, tmp_path: Path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_digits, data)
    next((data / "train" / "3").iterdir()).unlink()  # 19 good + the poisoned one: 2 full batches of 10
    Image.new("RGB", (64, 63)).save(data / "train" / "3" / "poison.png")
    Image.new("RGB", (64, 63)).save(data / "val" / "5" / "poison_val.png")
    _inject(monkeypatch, (64, 63))
    out = tmp_path / "run"
    # Two loader workers, recreated each epoch, and two epochs: the file must still be named only once.
    with pytest.warns(RuntimeWarning) as caught:
        assert main([str(data), *QUICK, "-j", "2", "-b", "10", "--epochs", "2", "--output", str(out)]) == 0
    named = [str(w.message) for w in caught if "poison" in str(w.message)]
    assert sorted(named) == [
        f"skipped image whose transform failed {data / 'train' / '3' / 'poison.png'}: RuntimeError: injected failure",
        f"skipped image whose transform failed {data / 'val' / '5' / 'poison_val.png'}: RuntimeError: injected failure",
    ]
    for row in _rows(out):
        assert row["skipped_images"] == row["skipped_transform"] == 1 and row["skipped_unreadable"] == 0
        assert row["train_images"] == 19
        assert row["val_skipped_images"] == row["val_skipped_transform"] == 1 and row["val_images"] == 10
    line = "(images skipped: train: 1 failed their transform; val: 1 failed their transform; each file named once"
    assert capsys.readouterr().out.count(line) == 2  # one per epoch


def test_a_transform_failing_on_every_sample_stops_the_run(tiny_digits: Path, tmp_path: Path, monkeypatch, capsys):
    _inject(monkeypatch, None)
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="injected failure"):
        assert main([str(tiny_digits), *QUICK, "-b", "10", "--epochs", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stopped: 20 of the 20 samples tried in training epoch 0 were skipped (100%" in err
    assert "RuntimeError: injected failure" in err and "raise --max-skipped-fraction" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "last.pth").exists()
    assert main([str(tiny_digits), *QUICK, "--max-skipped-fraction", "5"]) == 2
    assert "--max-skipped-fraction 5 is not a fraction; give a value from 0" in capsys.readouterr().err


def _batches(pattern: str) -> list:
    """One batch per letter: ``g`` two good samples, ``b`` two skipped ones, ``h`` one of each."""
    good, bad = (torch.ones(3, 2, 2), 1), SkippedSample("bad.png", "transform", "RuntimeError: boom")
    parts = {"g": [good, good], "b": [bad, bad], "h": [good, bad]}
    return [collate_skip(parts[c]) for c in pattern]


def _epoch(model: nn.Module, batches: list, guard: SkipGuard) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, LabelLoss(nn.CrossEntropyLoss()), opt, torch.device("cpu"), skip_guard=guard)
    return train_one_epoch(step, batches, epoch=0)


def test_skip_guard_waits_for_enough_samples_then_stops_a_broken_epoch() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    # One bad sample early (25% of the first 4) is no reason to stop: 1 of 6 is under 20%, and 1 of 10 at the end.
    with pytest.warns(RuntimeWarning, match="bad.png"):
        stats = _epoch(model, _batches("hgggg"), SkipGuard(0.2, min_samples=6))
    assert stats["skipped_transform"] == 1 and stats["train_images"] == 9
    # Every sample failing stops the epoch as soon as min_samples were tried, not at its end.
    with pytest.warns(RuntimeWarning), pytest.raises(TooManySkipped, match="4 of the 4 samples tried in training"):
        _epoch(model, _batches("bbbbbbbb"), SkipGuard(0.2, min_samples=4))
    # A pass shorter than min_samples is judged at its end.
    with pytest.warns(RuntimeWarning), pytest.raises(TooManySkipped, match="3 of the 6 samples .* \\(50%"):
        _epoch(model, _batches("ghb"), SkipGuard(0.2, min_samples=1000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str, scenarios: list[tuple[list[str], float]]) -> None:
    """One gloo rank: for each scenario, a DDP model over this rank's batches; writes stats or errors to ``out``."""
    import torch.distributed as dist

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results: list[dict] = []
    try:
        for patterns, max_fraction in scenarios:
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
            try:
                stats = _epoch(model, _batches(patterns[rank]), SkipGuard(max_fraction, min_samples=8))
                weights = [float(p.detach().double().sum()) for p in model.parameters()]
                results.append({"stats": stats, "weights": weights})
            except TooManySkipped as e:
                results.append({"error": str(e)})
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        results.append({"crash": traceback.format_exc()})
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_ddp_ranks_agree_on_skipped_batches_and_stop_together(tmp_path: Path) -> None:
    scenarios = [
        # Rank 0's second batch is entirely skipped, rank 1's is not: both skip the step (no hang), before the
        # forward pass (DDP's second forward rebuilds its buckets, a collective); rank 1's 2 images go unused.
        (["gbgg", "gggh"], 1.0),
        # Rank 0 alone holds the bad samples, yet both ranks stop at the same step with the same counts.
        (["gbbg", "gggg"], 0.3),
    ]
    ctx = mp.start_processes(
        _rank_main, args=(_free_port(), str(tmp_path), scenarios), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120  # a rank waiting in a collective the other skipped would hang
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the ranks hung: they disagreed on a skipped step")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert not [r["crash"] for results in ranks for r in results if "crash" in r]
    (a, b), (a2, b2) = zip(*ranks, strict=True)
    assert a["stats"]["num_updates"] == b["stats"]["num_updates"] == 3
    assert a["stats"]["skipped_transform"] == b["stats"]["skipped_transform"] == 3  # summed over ranks
    assert a["stats"]["train_images"] == 11 and a["weights"] == b["weights"]
    assert a2["error"].startswith("stopped: 4 of the 12 samples tried in training epoch 0 were skipped (33%")
    assert b2["error"].startswith("stopped: 4 of the 12 samples tried in training epoch 0 were skipped (33%")
    assert "bad.png" in a2["error"] and "last on this rank" not in b2["error"]
