"""A 2-process run sees exactly the 1-process run's training batches, augmentation included.

``fit`` shards each global batch of B items over the ranks with a ``DistributedSampler``:
rank r's j-th item of step k is item 2j + r of the 1-process step-k batch. The augmentation is
drawn per step from one generator seeded by (seed, epoch, step), the same on every rank; each
rank draws the crops / flips of the whole global batch and keeps its rows (``BatchRows``), so
every image is augmented as in the 1-process run. Checked on the batches ``fit`` feeds the model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from denoiserep.classification.step import ClassificationStep
from denoiserep.engine.trainer import TrainConfig, fit

BATCH = 16


def dataset() -> TensorDataset:
    # 64 distinct 1x6x6 images (image i is filled with i plus a ramp, so crops and flips show)
    ramp = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6) / 100
    x = torch.stack([torch.full((1, 6, 6), float(i)) + ramp for i in range(64)])
    return TensorDataset(x, torch.arange(64) % 3)


class Recording(ClassificationStep):
    def __init__(self, pad: int, flip: bool) -> None:
        super().__init__(pad=pad, flip=flip)
        self.seen: list[torch.Tensor] = []

    def forward(self, model, batch):
        self.seen.append(batch[0].clone())
        return super().forward(model, batch)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))


def run_fit(out, pad: int, flip: bool) -> list[torch.Tensor]:
    task = Recording(pad, flip)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=1e-2)
    fit(model(), dataset(), cfg, task, out, seed=3, progress=False)
    return task.seen


CASES = ((0, False), (1, True))  # (pad, flip): no augmentation, then crops and flips


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        seen = {case: run_fit(f"{out}/run-{case[0]}", *case) for case in CASES}
        torch.save(seen, f"{out}/seen.{rank}")
    finally:
        dist.destroy_process_group()


def two_process_batches(tmp_path) -> dict[tuple[int, bool], list[torch.Tensor]]:
    """Per case, the global batches of a 2-process fit: the ranks' batches interleaved."""
    out = tmp_path / "two"
    out.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    r0, r1 = torch.load(out / "seen.0"), torch.load(out / "seen.1")
    batches = {}
    for case in CASES:
        assert len(r0[case]) == len(r1[case])
        assert all(len(b) == BATCH // 2 for b in r0[case] + r1[case])
        pairs = zip(r0[case], r1[case], strict=True)
        batches[case] = [torch.stack([b0, b1], 1).flatten(0, 1) for b0, b1 in pairs]
    return batches


def test_two_processes_see_the_single_process_batches_with_and_without_augmentation(tmp_path):
    two_runs = two_process_batches(tmp_path)
    for (pad, flip), two in two_runs.items():
        one = run_fit(tmp_path / f"one-{pad}", pad, flip)
        assert len(one) == len(two) == 2 * (64 // BATCH)
        for a, b in zip(one, two, strict=True):
            assert torch.equal(a, b)
    # and the augmentation did act: the augmented batches are not the plain ones
    plain, augmented = two_runs[(0, False)], two_runs[(1, True)]
    assert not all(torch.equal(a, b) for a, b in zip(plain, augmented, strict=True))
