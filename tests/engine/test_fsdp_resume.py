"""Sharded checkpoints (``strategy: fsdp``) across a real ``kill -9`` and across process counts.

Two torchruns of 2 gloo CPU processes and one fit in this process, on test_fsdp.py's tiny
converted model, config and token noise (``RESUME``: phases alternating, 3 epochs of 6 steps,
a checkpoint every 4 steps and at each epoch end):

* ``kill``: rank 0 SIGKILLs its own process inside the write of checkpoint step 12, right after
  ``torch.distributed.checkpoint`` has written every shard and ``.metadata`` (the most complete
  a killed write can be) and before ``state.pt`` and the rename; torchrun then stops rank 1;
* in this process: the same run on one process (``strategy=fsdp`` trains as ``ddp`` and writes
  sharded checkpoints), stopped by an exception at its 10th step (latest: step 8);
* ``resume``: the uninterrupted 2-process run, then the killed run resumed, then the
  1-process checkpoint resumed on 2 processes, counting each fit's optimizer steps; then one
  training step of a model sharded with ``amp`` (its MixedPrecisionPolicy, on CPU / gloo).

The killed run resumed ends bit for bit as the uninterrupted one, weights and per-epoch
losses (as the DDP kill test, test_kill_denoiserep.py). The losses were not equal at first:
each rank logs its own half batch into the epoch's running sums, and ``state.pt`` held rank
0's only, so on resume both ranks started the epoch from rank 0's (epoch 2's loss 1.1101
instead of 1.1320, the weights bit for bit equal). Sharded checkpoints now keep every rank's
sums (``checkpoint.gather_rank_sums`` / ``own_rank_sums``), and so do DDP's (``ddp``: a
2-process DDP run stopped mid-epoch and resumed). The run begun on 1 process and finished
on 2 agrees within test_fsdp.py's tolerance: its first 8 steps summed each batch in one
piece, not as two halves reduce-scattered.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from denoiserep.engine.trainer import fit
from tests.engine.test_accumulate import CrashAt, tiny_data, token_noise
from tests.engine.test_fsdp import CFG, RESUME, tiny_model, tolerance

WORKER = """
import os, signal, sys
from pathlib import Path
import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard
from torch.optim.optimizer import register_optimizer_step_pre_hook

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, str(Path(sys.argv[1]).parents[1]))  # tests.engine...
import test_fsdp as t
import denoiserep as dr
from denoiserep.engine import dist, sharding

torch.randn_like = t.token_noise
mode, root = sys.argv[2], Path(sys.argv[3])
dist.init_distributed()
if mode == "kill":
    save = dcp.save

    def save_then_die(*args, checkpoint_id, **kwargs):
        done = save(*args, checkpoint_id=checkpoint_id, **kwargs)
        if dist.is_main() and ".step-00000012.tmp" in checkpoint_id:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    dcp.save = save_then_die
    t.train(root, "killed", True, **t.RESUME)
    raise SystemExit("the run was not killed")
steps = [0]


def count(optimizer, args, kwargs):  # not the lr=0 step get_state_dict takes to create state
    steps[0] += optimizer.param_groups[0]["lr"] != 0


register_optimizer_step_pre_hook(count)
out = {}
for name in ("full", "killed", "one"):
    steps[0] = 0
    model, history = t.train(root, name, True, **t.RESUME)
    out[name] = dict(state=model.state_dict(), history=history, steps=steps[0])
# ddp: both ranks stopped by an exception at their 10th step (latest: step 8), then resumed
import dataclasses
from test_accumulate import CrashAt
from denoiserep.engine.trainer import fit
ddp = dict(t.RESUME, strategy="ddp")
try:
    cfg = dataclasses.replace(t.CFG, **ddp)
    fit(t.tiny_model(True), t.tiny_data(), cfg, CrashAt(10), root / "ddp_crash", progress=False)
except KeyboardInterrupt:
    pass
for name in ("ddp_full", "ddp_crash"):
    model, history = t.train(root, name, True, **ddp)
    out[name] = dict(state=model.state_dict(), history=history)
# amp: the policy, then one step with it (bf16 gradients reduce-scattered in float32)
model = t.tiny_model(True)
before = {k: v.clone() for k, v in model.state_dict().items()}
dr.set_phase(model, "joint")
undo = sharding.shard_model(model, amp=True)
policy = fully_shard.state(model)._mp_policy
scatter, reduced = tdist.reduce_scatter_single, set()
tdist.reduce_scatter_single = lambda *a, **k: reduced.add(str(k["input"].dtype)) or scatter(*a, **k)
x, y = t.tiny_data().tensors
x, y = x[dist.rank() * 4 :][:4], y[dist.rank() * 4 :][:4]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
logits = model(x)
loss = torch.nn.functional.cross_entropy(logits.float(), y) + 0.1 * dr.denoise_loss(model)
loss.backward()
optimizer.step()
tdist.reduce_scatter_single = scatter
sharded = sorted({str(p.dtype) for p in model.parameters()})
sharding.unshard_model(model, undo)
after = model.state_dict()
out["amp"] = dict(
    param=str(policy.param_dtype), reduce=str(policy.reduce_dtype), reduced=sorted(reduced),
    logits=str(logits.dtype), loss=loss.item(), sharded=sharded,
    moved=sorted(k for k in after if not torch.equal(after[k], before[k])),
)
if dist.is_main():
    torch.save(out, root / "out.pt")
dist.barrier()
torch.distributed.destroy_process_group()
"""


def torchrun(tmp: Path, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    here = str(Path(__file__).parent)
    cmd += [str(tmp / "worker.py"), here, mode, str(tmp / "runs")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp_resume")
    (tmp / "worker.py").write_text(WORKER)
    killed = torchrun(tmp, "kill")
    ckpts = tmp / "runs" / "killed" / "checkpoints"
    after_kill = dict(
        latest=(ckpts / "latest").read_text(),
        folders=sorted(p.name for p in ckpts.iterdir()),
        tmp_files=sorted(p.name for p in (ckpts / ".step-00000012.tmp").rglob("*")),
    )
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(torch, "randn_like", token_noise)
        cfg = dataclasses.replace(CFG, **RESUME)
        fit(tiny_model(True), tiny_data(), cfg, CrashAt(10), tmp / "runs" / "one", progress=False)
    one_latest = (tmp / "runs" / "one" / "checkpoints" / "latest").read_text()
    resumed = torchrun(tmp, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = torch.load(tmp / "runs" / "out.pt", weights_only=False)
    got.update(kill=killed, after_kill=after_kill, one_latest=one_latest, ckpts=ckpts)
    return got


def test_sigkill_mid_checkpoint_write_leaves_the_previous_checkpoint_latest(runs):
    killed = runs["kill"]
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    after = runs["after_kill"]
    assert after["latest"] == "step-00000008"  # mid-epoch: 2 steps into epoch 2
    # the killed write: every shard and .metadata, no state.pt, never renamed into step-12
    assert after["tmp_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "shards"]
    assert after["folders"] == [".step-00000012.tmp", "latest", "step-00000006", "step-00000008"]
    # the resume cleared it and went on to the end
    assert sorted(p.name for p in runs["ckpts"].iterdir()) == [
        "latest",
        "step-00000016",
        "step-00000018",
    ]


def test_a_killed_sharded_run_resumed_equals_the_uninterrupted_run_bit_for_bit(runs):
    full, resumed = runs["full"], runs["killed"]
    assert full["steps"] == 18 and resumed["steps"] == 10  # resumed from step 8
    assert full["state"].keys() == resumed["state"].keys()
    for k, v in full["state"].items():
        torch.testing.assert_close(resumed["state"][k], v, rtol=0, atol=0, msg=k)
    assert [h["phase"] for h in resumed["history"]] == ["denoiser", "backbone", "denoiser"]
    for a, b in zip(full["history"], resumed["history"], strict=True):
        for key in ("loss", "ploss", "probe", "world_size", "steps_all_ranks"):
            assert a.get(key) == b.get(key), key


def test_a_one_process_sharded_checkpoint_resumes_on_two_processes(runs):
    assert runs["one_latest"] == "step-00000008"
    one, full = runs["one"], runs["full"]
    assert one["steps"] == 10  # resumed from step 8, not started again
    assert [h["world_size"] for h in one["history"]] == [1, 2, 2]  # epoch 2 resumed at step 2
    for k, v in full["state"].items():
        torch.testing.assert_close(one["state"][k], v, rtol=0, atol=tolerance(k), msg=k)
    for a, b in zip(full["history"][1:], one["history"][1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["steps_all_ranks"] == b["steps_all_ranks"] == 12  # 1-process steps count 2


def test_amp_under_fsdp_gathers_bf16_reduces_float32_and_trains_on_cpu(runs):
    amp = runs["amp"]
    assert (amp["param"], amp["reduce"]) == ("torch.bfloat16", "torch.float32")
    assert amp["logits"] == "torch.bfloat16"  # the forward ran on bf16 parameters
    assert amp["reduced"] == ["torch.float32"]  # gradients reduce-scattered in float32
    assert amp["sharded"] == ["torch.float32"]  # the sharded master weights stay float32
    assert math.isfinite(amp["loss"]) and amp["loss"] > 0
    # one AdamW step moved every parameter (D included: zero before, from the noise loss)
    params = {k for k in runs["full"]["state"] if "running" not in k}
    assert set(amp["moved"]) == params


def test_a_ddp_run_resumed_mid_epoch_logs_the_uninterrupted_losses(runs):
    full, resumed = runs["ddp_full"], runs["ddp_crash"]
    for k, v in full["state"].items():
        torch.testing.assert_close(resumed["state"][k], v, rtol=0, atol=0, msg=k)
    for a, b in zip(full["history"], resumed["history"], strict=True):
        for key in ("loss", "ploss", "world_size", "steps_all_ranks"):
            assert a.get(key) == b.get(key), key
