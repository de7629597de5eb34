"""A converted model trains under DistributedDataParallel (2 CPU processes, gloo), also with
``batch_loss``, whose noise regression runs after DDP's forward (in ``denoise_loss``)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import denoiserep as dr

RUNS = {"backbone": False, "joint": False, "denoiser+batch_loss": True, "joint+batch_loss": True}


def make_model(batch_loss: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    model = dr.convert(net, dr.DenoiseConfig(batch_loss=batch_loss), torch.randn(1, 3, 4, 4))
    with torch.no_grad():
        for layer in dr.denoise_layers(model).values():
            layer.D.normal_(0, 1.0)
    return model


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str, steps: int = 3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 0.1 * dr.denoise_loss(model)
        loss.backward()
        opt.step()


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y = data()
    shard = slice(rank * 4, rank * 4 + 4)
    results = {}
    for run, batch_loss in RUNS.items():
        phase = run.split("+")[0]
        model = make_model(batch_loss)
        dr.set_phase(model, phase)
        model.train()
        ddp = nn.parallel.DistributedDataParallel(model)
        train(ddp, x[shard], y[shard], phase)
        results[run] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ddp_two_processes(tmp_path):
    out = str(tmp_path / "state")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    start = make_model().state_dict()
    for run in RUNS:
        for k in r0[run]:
            torch.testing.assert_close(r0[run][k], r1[run][k])  # ranks stay in sync
    # joint and denoiser: the denoisers learned; backbone: they did not
    for run in ("joint", "denoiser+batch_loss", "joint+batch_loss"):
        assert not torch.equal(r0[run]["0.D"], start["0.D"]), run
    assert torch.equal(r0["backbone"]["0.D"], start["0.D"])
    assert torch.equal(
        r0["denoiser+batch_loss"]["0.base_layer.weight"], start["0.base_layer.weight"]
    )
    # backbone phase is deterministic: DDP over 2 shards == one process on the whole batch
    single = make_model()
    dr.set_phase(single, "backbone")
    single.train()
    train(single, *data(), "backbone")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0["backbone"][k], v, rtol=1e-5, atol=1e-6)
