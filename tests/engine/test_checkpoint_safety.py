"""Two checkpoints kept; a killed or corrupt checkpoint write loses nothing (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

# A tiny converted model trained by the shared loop; ``kill N`` makes the N-th state.pt write
# stop half-way (as a kill -9 during the write would leave it) and wait to be killed.
SCRIPT = textwrap.dedent(
    """
    import io, os, sys, time
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from torch import nn
    from torch.utils.data import TensorDataset

    import denoiserep as dr
    from denoiserep.engine.trainer import TrainConfig, fit

    out, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "kill":
        real_save, calls = torch.save, [0]

        def save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] == int(sys.argv[3]):
                buffer = io.BytesIO()
                real_save(obj, buffer)
                with open(f, "wb") as fh:
                    fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    fh.flush()
                # the marker appears whole (the test polls for it, then reads it)
                (out / "WRITING.tmp").write_text(str(f))
                (out / "WRITING.tmp").replace(out / "WRITING")
                time.sleep(600)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save

    class Task:
        calls = 0

        def to_device(self, batch, device):
            return [t.to(device) for t in batch]

        def augment(self, batch, generator):
            x, y = batch
            return x + 0.1 * torch.randn(x.shape, generator=generator), y

        def forward(self, model, batch):
            Task.calls += 1
            return model(batch[0])

        def loss(self, output, batch):
            loss = nn.functional.cross_entropy(output, batch[1])
            return loss, {}

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model = dr.convert(net, dr.DenoiseConfig(loss_weight=0.1), torch.randn(2, 6))
    cfg = TrainConfig(
        epochs=4, batch_size=8, lr=1e-2, phases="alternating", denoiser_epochs=1, ckpt_every=4
    )
    out.mkdir(parents=True, exist_ok=True)
    fit(model, data, cfg, Task(), out, progress=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.st"))
    print(f"steps run: {Task.calls}")
    """
)


def train(out, *mode: str, wait: bool = True):
    cmd = [sys.executable, "-c", SCRIPT, str(out), *(mode or ("train",))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def steps(ckpt) -> list[str]:
    return sorted(p.name for p in ckpt.glob("step-*"))


def assert_same_weights(a, b) -> None:
    wa, wb = load_file(str(a / "final.st")), load_file(str(b / "final.st"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    (out / "stdout").write_text(train(out).stdout)
    return out


def test_the_last_two_checkpoints_are_kept(uninterrupted):
    assert (uninterrupted / "stdout").read_text().strip() == "steps run: 24"
    # 6 steps per epoch, 4 epochs, a checkpoint every 4 steps and at each epoch's end
    assert steps(uninterrupted / "checkpoints") == ["step-00000020", "step-00000024"]
    assert (uninterrupted / "checkpoints" / "latest").read_text() == "step-00000024"


@pytest.mark.parametrize("kill_at", [3, 6])
def test_sigkill_while_writing_a_checkpoint_loses_nothing(tmp_path, uninterrupted, kill_at):
    out = tmp_path / "killed"
    out.mkdir()
    proc = train(out, "kill", str(kill_at), wait=False)
    deadline = time.time() + 240
    while not (out / "WRITING").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "WRITING").exists(), "the checkpoint write was never reached"
    ckpt = out / "checkpoints"
    partial = (out / "WRITING").read_text()
    assert "/.step-" in partial and partial.endswith(".tmp/state.pt")  # killed mid-write
    kept = steps(ckpt)
    assert len(kept) == 2 and (ckpt / "latest").read_text() == kept[-1]
    for name in kept:  # the previous checkpoints survive, complete
        assert torch.load(ckpt / name / "state.pt", weights_only=False)["global_step"] > 0
    done = train(out)  # rerun: resumes from the newest checkpoint that reads
    assert "warning" not in done.stderr
    assert f"steps run: {24 - int(kept[-1][5:])}" in done.stdout
    assert_same_weights(uninterrupted, out)
    assert not list(ckpt.glob(".step-*.tmp"))


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, uninterrupted):
    out = tmp_path / "corrupt"
    out.mkdir()
    proc = train(out, "kill", "5", wait=False)
    deadline = time.time() + 240
    while not (out / "WRITING").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = out / "checkpoints"
    older, newest = steps(ckpt)
    state = ckpt / newest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # e.g. a disk that filled up
    done = train(out)
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, done.stderr
    assert f"checkpoint {ckpt / newest} cannot be read" in warnings[0] and "skipped" in warnings[0]
    assert f"steps run: {24 - int(older[5:])}" in done.stdout  # resumed from the older one
    assert_same_weights(uninterrupted, out)
