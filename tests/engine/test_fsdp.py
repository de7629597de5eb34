"""Sharded training (``strategy: fsdp``, ``engine.sharding``): 2 gloo processes == 1 process.

One torchrun of 2 CPU processes (the module fixture) trains the runs below with
``strategy=fsdp`` (FSDP2 ``fully_shard`` on each DenoiseLayer, each block of ``blocks`` and the
root, ``reshard_after_forward=True``); the tests compare them with the same runs in this
process (one process, no sharding):

* the noise: as in test_accumulate.py / test_torchrun_phases.py, the forward-noising draw of
  every DenoiseLayer is replaced by a fixed function of each token (``token_noise``), so the
  two processes' half batches get the noise the one-process batch gets;
* the tolerance: atol 2e-6 on the weights after 12 AdamW steps (weights ~0.3), rel 1e-5 on the
  losses; 1e-4 on the head's D. What differs is only the order of the float32 sums: each
  rank's gradient is the mean over its half batch, reduce-scattered (summed, then divided by
  2), where one process sums the whole batch at once. AdamW divides each gradient entry by its
  own running scale, so entries near zero turn that rounding into visible steps: the head's D
  (64 x 64, fed 8 tokens a step, a gradient of rank <= 8) ends 5.5e-6 apart after the denoiser
  epoch of ``alternating`` and 2.8e-5 after 2 joint epochs with ``accumulate=2``; 2 processes
  under DDP end as far apart (5.5e-6 and 2.8e-5, measured 2026-12-05 with both strategies),
  every other weight < 1e-7.
* phase ``denoiser`` is the case where no module output needs a gradient: D's gradient comes
  only from the noise-prediction losses, which are not outputs of the layers; without
  ``sharding._watch_loss`` D would not train there (tried: D stayed at zero on both ranks).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.classification.step import ClassificationStep
from denoiserep.engine import sharding
from denoiserep.engine.trainer import TrainConfig, TrainerHook, fit
from tests.engine.test_accumulate import CrashAt, tiny_data, token_noise  # noqa: F401 (CrashAt: the worker)

CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, strategy="fsdp")
RUNS = {  # name: (converted, config changes)
    "plain": (False, {}),
    "joint": (True, {"phases": "joint", "grad_clip": 0.5}),
    "alternating": (True, {"phases": "alternating"}),  # denoiser, then backbone
    "accumulate": (True, {"phases": "joint", "accumulate": 2}),
    "lowrank": ("lowrank", {"phases": "joint"}),  # a structured D: the layer op, eager regression
}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gain = nn.Parameter(torch.ones(4, 1, 1))  # the block's own, outside the conv

    def forward(self, x):
        return x + torch.relu(self.conv(x)) * self.gain


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).flatten(1))


RESUME = {"phases": "alternating", "epochs": 3, "ckpt_every": 4}


def tiny_model(converted: bool) -> nn.Module:
    torch.manual_seed(0)
    net = Tiny()
    if not converted:
        return net
    structure = {"structure": "lowrank", "rank": 2} if converted == "lowrank" else {}
    return dr.convert(net, dr.DenoiseConfig(loss_weight=0.1, **structure), torch.randn(1, 1, 4, 4))


def probe(model: nn.Module) -> dict[str, float]:
    """An evaluation inside the fit (eval mode: the fused W·A_t of each DenoiseLayer)."""
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return {"probe": model.eval()(x).square().sum().item()}


def train(out: Path, name: str, converted: bool, **changes) -> tuple[nn.Module, list]:
    model = tiny_model(converted)
    cfg = dataclasses.replace(CFG, **changes)
    step = ClassificationStep(pad=1, flip=True)
    return model, fit(model, tiny_data(), cfg, step, out / name, eval_fn=probe, progress=False)


WORKER = """
import sys
import torch
import denoiserep as dr
from denoiserep.engine import dist, sharding

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[1]).parents[1]))  # tests.engine...
import test_fsdp as t

syncs = {}
set_sync = sharding.set_gradient_sync
sharding.set_gradient_sync = lambda model, sync: syncs[name].append(sync) or set_sync(model, sync)
torch.randn_like = t.token_noise
dist.init_distributed()
out = {}
for name, (converted, changes) in t.RUNS.items():
    syncs[name] = []
    model, history = t.train(t.Path(sys.argv[2]), name, converted, **changes)
    params = dict(model.named_parameters())
    fused = dr.fuse(model).state_dict() if converted else None
    out[name] = dict(
        state=model.state_dict(), history=history, fused=fused, cls=type(model).__name__,
        plain=all(type(p) is torch.nn.Parameter for p in params.values()),
        hooks=sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._state_dict_pre_hooks)
                  + len(m._load_state_dict_pre_hooks) for m in model.modules()),
    )
name, syncs["resume"] = "resume", []  # kill mid-run, resume: as the uninterrupted run
root = t.Path(sys.argv[2])
full, _ = t.train(root, "full", True, **t.RESUME)
try:
    t.fit(t.tiny_model(True), t.tiny_data(), t.dataclasses.replace(t.CFG, **t.RESUME),
          t.CrashAt(10), root / "crash", progress=False)
except KeyboardInterrupt:
    pass
latest = (root / "crash" / "checkpoints" / "latest").read_text()
if dist.is_main():  # for a 1-process resume in the test
    import shutil
    shutil.copytree(root / "crash", t.Path(sys.argv[4]))
dist.barrier()
resumed, history = t.train(root, "crash", True, **t.RESUME)
out["resume"] = dict(full=full.state_dict(), resumed=resumed.state_dict(), latest=latest,
                     phases=[h["phase"] for h in history])
name, syncs["bn"] = "bn", []
net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                          torch.nn.Linear(16, 3))
t.fit(net, t.tiny_data(), t.dataclasses.replace(t.CFG, epochs=1), t.ClassificationStep(),
      t.Path(sys.argv[2]) / "bn", progress=False)
stats = torch.cat([net[1].running_mean, net[1].running_var])
gathered = [torch.empty_like(stats) for _ in range(2)]
torch.distributed.all_gather(gathered, stats)
bn_equal = bool(torch.equal(*gathered)) and not torch.equal(net[1].running_var, torch.ones(4))
name, syncs["amp"] = "amp", []
seen = []  # amp: the dtype each DenoiseLayer's weight has inside its forward
model = t.tiny_model(True)
for layer in dr.denoise_layers(model).values():
    layer.register_forward_hook(lambda m, a, o: seen.append(m.base_layer.weight.dtype))
t.fit(model, t.tiny_data(), t.dataclasses.replace(t.CFG, amp=True, epochs=1, phases="joint"),
      t.ClassificationStep(), t.Path(sys.argv[2]) / "amp", progress=False)
if dist.is_main():
    amp = sorted(set(map(str, seen)))
    torch.save({"runs": out, "syncs": syncs, "amp": amp, "bn_equal": bn_equal}, sys.argv[3])
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """The RUNS trained by 2 gloo CPU processes with strategy=fsdp (one torchrun)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    here = str(Path(__file__).parent)
    crashed = tmp / "crashed"
    cmd = [*torchrun, str(worker), here, str(tmp / "runs"), str(tmp / "out.pt"), str(crashed)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp / "out.pt", weights_only=False)
    got["stdout"], got["crashed"] = done.stdout, crashed
    return got


def tolerance(key: str) -> float:
    head_denoiser = key in ("head.D", "head.d", "head.U", "head.V")
    return 1e-4 if head_denoiser else 2e-6  # the module docstring says why


def one_process(tmp_path: Path, monkeypatch, name: str) -> tuple[nn.Module, list]:
    monkeypatch.setattr(torch, "randn_like", token_noise)
    converted, changes = RUNS[name]
    return train(tmp_path, name, converted, **dict(changes, accumulate=1))


@pytest.mark.filterwarnings("ignore:denoise.rank=2 is capped")  # the 1-channel stem
@pytest.mark.parametrize("name", ["plain", "joint", "alternating", "accumulate", "lowrank"])
def test_fsdp_on_two_processes_equals_one_process(sharded, tmp_path, monkeypatch, name):
    one, h1 = one_process(tmp_path, monkeypatch, name)
    run = sharded["runs"][name]
    assert run["cls"] == "Tiny" and run["plain"] and run["hooks"] == 0  # handed back unsharded
    state = run["state"]
    assert state.keys() == one.state_dict().keys()
    for k, v in one.state_dict().items():
        assert type(state[k]) is torch.Tensor, k  # not a DTensor
        torch.testing.assert_close(state[k], v, rtol=0, atol=tolerance(k), msg=k)
    assert (
        max((v - tiny_model(RUNS[name][0]).state_dict()[k]).abs().max() for k, v in state.items())
        > 1e-2
    )  # it trained
    phases = {"plain": ["none"] * 2, "alternating": ["denoiser", "backbone"]}
    assert [h["phase"] for h in run["history"]] == phases.get(name, ["joint"] * 2)
    for a, b in zip(h1, run["history"], strict=True):
        assert b["world_size"] == 2 and b["steps_all_ranks"] == 12
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["probe"] == pytest.approx(b["probe"], rel=1e-5)
        if "ploss" in a:
            assert a["ploss"] == pytest.approx(b["ploss"], rel=1e-5)
    if RUNS[name][0]:
        denoisers = [k for k in state if k.endswith((".D", ".d"))]
        assert len(denoisers) == 4 and all(state[k].abs().max() > 0 for k in denoisers)
        fused = dr.fuse(one).state_dict()
        for k, v in fused.items():
            torch.testing.assert_close(run["fused"][k], v, rtol=0, atol=1e-4, msg=k)


def test_fused_model_of_a_sharded_run_loads_strictly_into_a_fresh_model(sharded):
    fresh = tiny_model(False)
    fresh.load_state_dict(sharded["runs"]["joint"]["fused"], strict=True)
    x = torch.randn(2, 1, 4, 4)
    assert fresh(x).shape == (2, 3)


def test_fsdp_skips_the_reduce_scatter_on_all_but_the_last_micro_batch(sharded):
    # accumulate=2: per step one micro-batch without sync, then one with (2 epochs x 6 steps)
    assert sharded["syncs"]["accumulate"] == [False, True] * 12
    assert sharded["syncs"]["joint"] == [True] * 12
    assert (
        "effective batch 8 = 2 per micro-batch x 2 accumulated x 2 processes" in (sharded["stdout"])
    )


def test_amp_under_fsdp_gathers_bfloat16_parameters(sharded):
    # MixedPrecisionPolicy(param_dtype=bfloat16): inside the forward the weight is bf16
    assert sharded["amp"] == ["torch.bfloat16"]


def test_sharded_checkpoint_resume_continues_exactly(sharded):
    run = sharded["runs"]["resume"]
    assert run["latest"] == "step-00000008"  # mid-epoch: 2 steps into epoch 2
    assert run["phases"] == ["denoiser", "backbone", "denoiser"]
    for k, v in run["full"].items():  # bit for bit
        torch.testing.assert_close(run["resumed"][k], v, rtol=0, atol=0, msg=k)
    shards = sharded["crashed"] / "checkpoints" / "step-00000008" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_a_two_process_sharded_checkpoint_resumes_on_one_process(sharded, monkeypatch):
    monkeypatch.setattr(torch, "randn_like", token_noise)
    resumed, history = train(sharded["crashed"].parent, "crashed", True, **RESUME)
    assert [h["world_size"] for h in history] == [2, 1, 1]  # epoch 2 resumed at its step 2
    for k, v in sharded["runs"]["resume"]["full"].items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=tolerance(k), msg=k)


def test_batchnorm_statistics_are_rank_0s_on_every_rank_after_a_sharded_fit(sharded):
    # not sharded, so each rank updated its own; DDP broadcasts rank 0's, unshard_model too
    assert sharded["bn_equal"]


def test_shard_units_are_the_denoise_layers_then_the_blocks():
    plain, converted = tiny_model(False), tiny_model(True)
    assert sharding.shard_units(plain) == list(plain.blocks)
    layers = list(dr.denoise_layers(converted).values())
    assert len(layers) == 4
    assert sharding.shard_units(converted) == layers + list(converted.blocks)


def test_one_process_trains_as_ddp_and_says_so(tmp_path, capsys):
    model, history = train(tmp_path, "one", False, epochs=1)
    printed = capsys.readouterr().out
    assert printed.count("train: strategy fsdp on one process: training as ddp\n") == 1
    assert history[0]["world_size"] == 1


def test_a_checkpoint_resumes_only_under_the_strategy_that_wrote_it(tmp_path):
    train(tmp_path, "run", False, epochs=1)  # fsdp (on one process): sharded checkpoints
    latest = tmp_path / "run" / "checkpoints" / "step-00000006"
    assert (latest / "shards" / ".metadata").is_file()
    with pytest.raises(ValueError, match=rf"^train: {latest} was written by a fsdp run; resume"):
        train(tmp_path, "run", False, epochs=2, strategy="ddp")
    steps = []

    class Steps(TrainerHook):
        def after_step(self, trainer, step, logs):
            steps.append(trainer.epoch)

    cfg = dataclasses.replace(CFG, epochs=2)
    model, step = tiny_model(False), ClassificationStep(pad=1, flip=True)
    history = fit(model, tiny_data(), cfg, step, tmp_path / "run", progress=False, hooks=[Steps()])
    assert [h["epoch"] for h in history] == [1, 2] and steps == [1] * 6  # epoch 2 only


def test_strategy_errors_in_one_line():
    assert TrainConfig().strategy == "ddp"
    with pytest.raises(ValueError, match=r"^strategy must be 'ddp' or 'fsdp', got 'zero'$"):
        TrainConfig(strategy="zero")
    model = tiny_model(True)
    for changes, what in [
        ({"compile": True}, "compile"),
        ({"denoiser_init": "closed_form"}, "denoiser_init=closed_form"),
        ({"denoiser_optimizer": "adafactor"}, "denoiser_optimizer=adafactor"),
    ]:
        cfg = dataclasses.replace(CFG, **changes)
        with pytest.raises(ValueError, match=rf"^t: strategy=fsdp does not support {what} yet$"):
            sharding.check_supported(model, cfg, "t")
    sharding.check_supported(model, CFG, "t")  # the default is supported
