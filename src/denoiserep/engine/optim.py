"""Optimizers and the cosine-with-warmup learning-rate schedule.

The denoisers may get their own optimizer (``denoiser_optimizer``): D has C_in² entries per
layer, often more than the backbone (ViT-S: 33.8 M against 22.1 M), so AdamW's two moments
on D are most of what DenoiseRep adds to training memory. ``"adafactor"`` trains D with timm's
Adafactor (factored second moment, no first moment: a C_in + C_in state per layer instead of
2·C_in²; layers of 16 channels or fewer keep a full second moment), stepped together with
the backbone's optimizer as one :class:`OptimizerChain`. Structured denoisers
(``DenoiseConfig.structure``) work too: U and V are factored like D, and the 1-D diagonal ``d``
gets Adafactor's unfactored second moment (a vector like ``d``), no first moment.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import denoiserep as dr

OPTIMIZERS = ("adamw", "sgd")
DENOISER_OPTIMIZERS = ("same", "adafactor")


class OptimizerChain(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one.

    ``param_groups`` is the inner optimizers' groups (the same dicts), so a learning-rate
    scheduler drives all of them, also after a checkpoint is loaded; each inner optimizer keeps
    its own state, and the state dict holds one entry per inner optimizer.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        # Optimizer.__init__ is not called: it would build groups and a state of its own
        self.optimizers = list(optimizers)
        # (nor are Optimizer's hooks supported: register them on the inner optimizers)
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The inner optimizers' groups, looked up anew (``load_state_dict`` replaces them)."""
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:  # type: ignore[override]
        """Every inner optimizer's per-parameter state (read-only view)."""
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Step every inner optimizer (a closure, if given, is evaluated once)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "chain": [type(o).__name__ for o in self.optimizers],
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if state_dict.get("chain") != [type(o).__name__ for o in self.optimizers]:
            raise ValueError(_mismatch(state_dict, self))
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        inner = ", ".join(type(o).__name__ for o in self.optimizers)
        return f"{type(self).__name__}({inner})"


def _names(optimizer_or_state: Any) -> str:
    if isinstance(optimizer_or_state, OptimizerChain):
        return " + ".join(type(o).__name__ for o in optimizer_or_state.optimizers)
    if isinstance(optimizer_or_state, torch.optim.Optimizer):
        return type(optimizer_or_state).__name__
    return " + ".join(optimizer_or_state.get("chain", ["one optimizer (denoiser_optimizer=same)"]))


def _mismatch(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> str:
    return (
        f"the checkpoint's optimizer state is for {_names(saved)}, this run's optimizer is "
        f"{_names(optimizer)}: resume with the train.denoiser_optimizer the run started with"
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, with a clear error when the saved state comes from
    a run with another ``denoiser_optimizer`` (a chain into one optimizer, or back)."""
    if ("chain" in saved) != isinstance(optimizer, OptimizerChain):
        raise ValueError(_mismatch(saved, optimizer))
    optimizer.load_state_dict(saved)


def check_optimizer_names(optimizer: str, denoiser_optimizer: str, prefix: str = "") -> None:
    """One-line errors for an unknown optimizer or denoiser optimizer (``prefix``: the
    config section, e.g. ``train.``)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{prefix}optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if denoiser_optimizer not in DENOISER_OPTIMIZERS:
        raise ValueError(
            f"{prefix}denoiser_optimizer must be one of {DENOISER_OPTIMIZERS}, "
            f"got {denoiser_optimizer!r}"
        )


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    denoiser_optimizer: str = "same",
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases, norms (1-D tensors) or denoisers.

    ``denoiser_optimizer="adafactor"``: the denoisers' D go to their own Adafactor at the same
    learning rate (its update is clipped to RMS 1, as Adam's is about), and the result is an
    :class:`OptimizerChain` of the two.
    ``fused``: torch's fused AdamW / SGD kernel (one pass over each parameter) where every
    parameter is a floating-point CPU or CUDA tensor, else torch's default implementation (on
    CPU a loop of about ten elementwise operations per parameter, on CUDA ``foreach``). D
    multiplies the parameters to step (ViT-S: 56 M against 22 M): one AdamW step of a converted
    ViT-S on one CPU thread took 309 ms unfused and 53 ms fused
    (``scripts/studies/optimizer_step.py``).
    The two round differently in the last bits, which changes a trained model's last digits.
    """
    check_optimizer_names(name, denoiser_optimizer)
    root = dr.unwrap(model)
    d_params = dr.denoiser_parameters(root) if dr.is_converted(root) else []
    denoisers = {id(p) for p in d_params}
    own = denoiser_optimizer != "same" and bool(d_params)
    decay, no_decay = [], []
    for p in root.parameters():
        if own and id(p) in denoisers:
            continue
        (no_decay if p.ndim <= 1 or id(p) in denoisers else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kernel = {"fused": True} if fused and _fusable(decay + no_decay) else {}
    if name == "adamw":
        main: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, **kernel)
    else:
        main = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **kernel)
    if not own:
        return main
    return OptimizerChain(main, factored_optimizer(d_params, lr))


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused optimizer kernels take every one of ``params``."""
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def factored_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """timm's Adafactor as the denoisers' optimizer: a factored second moment, no first
    moment, no weight decay; steps of ``lr`` times an update clipped to RMS 1, as Adam's are
    about (``scale_parameter=False``: not relative to |D|, which starts at zero)."""
    from timm.optim import Adafactor

    return Adafactor(params, lr=lr, scale_parameter=False, weight_decay=0.0)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base LR, then cosine decay to ``min_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
