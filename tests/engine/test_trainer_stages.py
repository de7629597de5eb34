"""The trainer's stages one at a time, and its hook list (engine.trainer, stages, hooks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from denoiserep.engine import checkpoint, stages
from denoiserep.engine.hooks import HookList, TensorBoardHook, TrainerHook
from denoiserep.engine.trainer import (
    Task,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TrainStep,
    fit,
)


class Regression:
    """A TrainStep for a linear model under squared error, with no augmentation."""

    def to_device(self, batch, device):
        return [t.to(device) for t in batch]

    def augment(self, batch, generator):
        return batch

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, output, batch):
        loss = ((output - batch[1]) ** 2).mean()
        return loss, {"mse": loss.item()}


def data(n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g))


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def by_hand(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of mean((xW^T + b - y)^2) written out."""
    r = (x @ model.weight.detach().T + model.bias.detach() - y) * 2 / len(x)
    return r.T @ x, r.sum(0)


CFG = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", lr=0.1, weight_decay=0.0)


def test_the_step_stages_give_the_gradient_descent_update():
    model = linear()
    x, y = data(4).tensors
    gw, gb = by_hand(model, x, y)
    before = model.weight.detach().clone(), model.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    losses = stages.forward_loss(
        Regression(), model, model, [x, y], phase=None, converted=False, lam=0.0, amp=False
    )
    assert losses.ploss.item() == 0.0 and losses.loss is not None
    stages.backward(losses.loss, opt)
    stages.optimizer_step(model, opt, sched, grad_clip=0.0)
    torch.testing.assert_close(model.weight.detach(), before[0] - 0.1 * gw)
    torch.testing.assert_close(model.bias.detach(), before[1] - 0.1 * gb)
    logs = stages.step_logs(losses, None, converted=False)
    assert set(logs) == {"mse", "loss", "task_loss"} and logs["loss"] == logs["mse"]


def test_gradient_clipping_bounds_the_update():
    model = linear()
    x, y = data(4).tensors
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    losses = stages.forward_loss(
        Regression(), model, model, [x, y], phase=None, converted=False, lam=0.0, amp=False
    )
    stages.backward(losses.loss, opt)
    stages.optimizer_step(model, opt, sched, grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_trainer_run_step_applies_the_configured_optimizer():
    """SGD with Nesterov momentum 0.9: the first step moves by lr * 1.9 * gradient."""
    model = linear()
    trainer = Trainer(model, data(), CFG, Regression(), "unused", progress=False)
    trainer.prepare_model()
    trainer.build_loader()
    trainer.build_optimization()
    assert trainer.steps_per_epoch == 3 and trainer.rows is None
    assert trainer.wrap_model() is model
    x, y = data(4).tensors
    gw, gb = by_hand(model, x, y)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    logs = trainer.run_step(0, 0, [x, y])
    torch.testing.assert_close(model.weight.detach(), w - 0.1 * 1.9 * gw)
    torch.testing.assert_close(model.bias.detach(), b - 0.1 * 1.9 * gb)
    assert logs["loss"] == pytest.approx(((x @ w.T + b - y) ** 2).mean().item())


def test_epoch_end_reduction_is_the_mean_of_the_logged_values():
    sums: dict[str, float] = {}
    logged = [{"loss": 1.0, "acc": 0.5}, {"loss": 2.0, "acc": 0.25}, {"loss": 6.0, "acc": 0.0}]
    for logs in logged:
        stages.add_logs(sums, logs)
    assert sums["n"] == 3
    means, steps = stages.reduce_epoch(sums)
    assert steps == 3 and "n" not in sums
    assert means == pytest.approx({"loss": 3.0, "acc": 0.25})


def test_loader_stage_splits_the_batch_and_checks_it():
    loader, sampler, rows = stages.build_loader(data(), 4, 0, torch.device("cpu"), seed=0)
    assert len(loader) == 3 and rows is None and hasattr(sampler, "set_epoch")
    big = dataclasses.replace(CFG, batch_size=16)
    trainer = Trainer(linear(), data(), big, Regression(), "unused", tag="probe")
    with pytest.raises(ValueError, match="probe: 12 training items give no batch of 16"):
        trainer.build_loader()


def test_divergence_check_names_epoch_step_and_checkpoint(tmp_path):
    trainer = Trainer(linear(), data(), CFG, Regression(), tmp_path, progress=False)
    trainer.check_finite(torch.tensor(1.0), 0, 0)
    with pytest.raises(TrainingDiverged, match=r"loss is inf at epoch 2, step 3; .*: none"):
        trainer.check_finite(torch.tensor(float("inf")), 1, 2)


class Recorder(TrainerHook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.state["global_step"]))

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def before_step(self, trainer, step):
        self.calls.append(("before_step", step))

    def after_backward(self, trainer, step, loss):
        grads = [p.grad is not None for p in trainer.model.parameters()]
        self.calls.append(("after_backward", step, all(grads), loss.item()))

    def after_step(self, trainer, step, logs):
        self.calls.append(("after_step", step, logs["loss"]))

    def on_epoch_end(self, trainer, epoch, record):
        self.calls.append(("epoch_end", epoch, record["loss"]))

    def on_fit_end(self, trainer, error):
        self.calls.append(("fit_end", error))


def test_hooks_are_called_at_each_point_in_order_and_see_the_loss(tmp_path):
    hook = Recorder()
    history = fit(linear(), data(), CFG, Regression(), tmp_path, progress=False, hooks=[hook])
    names = [c[0] for c in hook.calls]
    step = ["before_step", "after_backward", "after_step"]
    epoch = ["epoch_start", *step * 3, "epoch_end"]
    assert names == ["fit_start", *epoch * 2, "fit_end"]
    assert hook.calls[-1] == ("fit_end", None)
    for e, record in enumerate(history):
        losses = [c[2] for c in hook.calls if c[0] == "after_step"][3 * e : 3 * e + 3]
        backward = [c[3] for c in hook.calls if c[0] == "after_backward"][3 * e : 3 * e + 3]
        assert all(c[2] for c in hook.calls if c[0] == "after_backward")
        assert losses == backward
        assert record["loss"] == pytest.approx(sum(losses) / 3)
        assert ("epoch_end", e, record["loss"]) in hook.calls


def test_a_resumed_run_calls_no_hook_for_the_steps_it_skips(tmp_path):
    fit(linear(), data(), dataclasses.replace(CFG, epochs=1), Regression(), tmp_path)
    hook = Recorder()
    fit(linear(), data(), CFG, Regression(), tmp_path, progress=False, hooks=[hook])
    assert hook.calls[0] == ("fit_start", 3)
    assert [c[1] for c in hook.calls if c[0] == "epoch_start"] == [1]


class Boom(TrainerHook):
    def __init__(self, where: str) -> None:
        self.where = where

    def after_step(self, trainer, step, logs):
        if self.where == "after_step":
            raise RuntimeError("hook failed")

    def on_fit_end(self, trainer, error):
        if self.where == "on_fit_end":
            raise RuntimeError("hook failed at the end")


@pytest.mark.parametrize("where", ["after_step", "on_fit_end"])
def test_a_hook_that_raises_leaves_the_log_writer_closed(tmp_path, where):
    seen = []

    class Spy(TrainerHook):
        def on_fit_start(self, trainer):
            seen.append(board.writer)

    board = TensorBoardHook()
    trainer = Trainer(
        linear(), data(), CFG, Regression(), tmp_path, progress=False, hooks=[board, Spy()]
    )
    trainer.hooks = HookList([Boom(where), *trainer.hooks.hooks])  # the failing hook first
    with pytest.raises(RuntimeError, match="hook failed"):
        trainer.fit()
    assert board.writer is None and seen[0] is not None
    assert seen[0].all_writers is None  # SummaryWriter.close() ran
    assert (tmp_path / "tb").is_dir()


def test_the_old_protocol_name_still_works():
    assert Task is TrainStep


def test_training_state_round_trip(tmp_path):
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"epoch": 1, "step": 2, "global_step": 5, "history": [{"loss": 1.0}], "sums": {}}
    path = checkpoint.save_training_state(tmp_path, model, opt, None, state)
    assert path.name == "step-00000005" and checkpoint.latest_checkpoint(tmp_path) == path
    other = nn.Linear(3, 1)
    back = checkpoint.load_training_state(path, other, None, None)
    assert back["history"] == [{"loss": 1.0}] and back["global_step"] == 5
    torch.testing.assert_close(other.weight, model.weight, rtol=0, atol=0)
