"""Model-level life cycle: convert -> set_phase / denoise_loss -> fuse (PEFT's inject / merge)."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from denoiserep.util.forward import call, modes_restored
from denoiserep.util.modules import unwrap

from .config import DenoiseConfig
from .layer import PHASES, DenoiseLayer
from .main_path import main_path
from .objective import compute_pending_losses
from .structure import warn_capped_ranks
from .support import SUPPORTED_TYPES, is_supported, unsupported_reason

_STATE = "_denoiserep"
_KIND_TYPES = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "all": SUPPORTED_TYPES,
    "main_path": SUPPORTED_TYPES,  # then only those on the least-layer route (main_path.py)
}


@dataclass
class ConvertState:
    """What a converted model remembers: its config and the parameters frozen before conversion."""

    config: DenoiseConfig
    frozen: frozenset[str]
    phase: str = "joint"


def is_converted(model: nn.Module) -> bool:
    """True if ``model`` holds DenoiseRep layers."""
    return any(isinstance(m, DenoiseLayer) for m in unwrap(model).modules())


def _excluded(name: str, patterns: list[str]) -> bool:
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def select_targets(
    model: nn.Module, config: DenoiseConfig, example_input: Any = None
) -> dict[str, nn.Module]:
    """The modules ``config.targets`` names, by qualified name, in registration order.

    ``targets="main_path"`` needs ``example_input``: the layers are found on one forward
    (:func:`denoiserep.core.main_path.main_path`).
    """
    modules = dict(model.named_modules())
    modules.pop("", None)
    if config.targets == "main_path" and example_input is None:
        raise ValueError("targets='main_path' needs example_input: the path is found on a forward")
    if isinstance(config.targets, str) and config.targets in _KIND_TYPES:
        kinds = _KIND_TYPES[config.targets]
        chosen = {n: m for n, m in modules.items() if isinstance(m, kinds)}
        reasons = {n: unsupported_reason(m) for n, m in chosen.items()}
        for why in dict.fromkeys(r for r in reasons.values() if r):
            _warn_skipped(why, [n for n, r in reasons.items() if r == why])
        chosen = {n: m for n, m in chosen.items() if not reasons[n]}
        if config.targets == "main_path":
            on_path = main_path(model, chosen, example_input)
            chosen = {n: chosen[n] for n in on_path}
    else:
        patterns = [config.targets] if isinstance(config.targets, str) else config.targets
        chosen = {}
        for pattern in patterns:
            hits = {n: m for n, m in modules.items() if fnmatch.fnmatchcase(n, pattern)}
            wrappable = {n: m for n, m in hits.items() if is_supported(m)}
            bad = [
                n for n, m in hits.items() if isinstance(m, SUPPORTED_TYPES) and n not in wrappable
            ]
            if bad:
                raise ValueError(
                    f"target pattern {pattern!r} matches {bad[0]} "
                    f"({type(modules[bad[0]]).__name__}), {unsupported_reason(modules[bad[0]])}"
                )
            if not wrappable:
                examples = [n for n, m in modules.items() if is_supported(m)][:6]
                raise ValueError(
                    f"target pattern {pattern!r} matches no Linear/Conv layer; "
                    f"examples of layer names: {', '.join(examples)}"
                )
            chosen.update(wrappable)
        chosen = {n: m for n, m in modules.items() if n in chosen}
    chosen = {n: m for n, m in chosen.items() if not _excluded(n, config.exclude)}
    tied = _tied_weights(model, chosen)
    if tied and _by_kind(config):
        _warn_skipped("whose weight is tied to another parameter (fusion would untie it)", tied)
        chosen = {n: m for n, m in chosen.items() if n not in tied}
    elif tied:
        raise ValueError(
            f"target(s) {'; '.join(f'{n}.weight (= {o})' for n, o in tied.items())} share their "
            "weight (tied weights); fusion gives each target its own W·A_t, so the tie cannot "
            "survive it: exclude them with DenoiseConfig(exclude=[...])"
        )
    if not chosen:
        raise ValueError(f"no layer of {type(model).__name__} matches targets={config.targets!r}")
    return chosen


def _by_kind(config: DenoiseConfig) -> bool:
    """Targets named by kind ("all", "linear", ...): layers that cannot be denoised are skipped."""
    return isinstance(config.targets, str) and config.targets in _KIND_TYPES


def _warn_skipped(why: str, names: Iterable[str]) -> None:
    names = list(names)
    warnings.warn(
        f"DenoiseRep skips {len(names)} layer(s) {why}: {', '.join(names[:8])}"
        + (", ..." if len(names) > 8 else ""),
        stacklevel=4,
    )


def _tied_weights(model: nn.Module, targets: dict[str, nn.Module]) -> dict[str, str]:
    """Targets whose weight another module also holds (name -> the other holders).

    Fusion gives each target its own W·A_t, so a tie cannot survive it: the fused model would
    compute correctly, but loading its state dict into a fresh (re-tied) model would silently
    keep only one of the fused weights.
    """
    owners: dict[int, list[tuple[nn.Module, str]]] = {}  # parameter -> (module, qualified name)
    for path, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, f"{path}.{pname}".lstrip(".")))
    tied = {}
    for n, m in targets.items():
        # the same module registered at several paths stays one module when fused: not a tie
        others = [q for owner, q in owners.get(id(m.weight), ()) if owner is not m]
        if others:
            tied[n] = ", ".join(others)
    return tied


def execution_order(
    model: nn.Module, targets: dict[str, nn.Module], example_input: Any, skip: bool = False
) -> list[str]:
    """Names of ``targets`` in the order a forward on ``example_input`` first calls them.

    The forward runs in eval mode without gradients, and every module's mode is restored after.
    A target called more than once (shared weights) or never (e.g. ``nn.MultiheadAttention``'s
    ``out_proj``, whose weight the attention reads directly) is an error naming it, or, with
    ``skip``, left out of the order with a warning.
    """
    calls = dict.fromkeys(targets, 0)
    order: list[str] = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            calls[name] += 1
            if calls[name] == 1:
                order.append(name)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in targets.items()]
    try:
        with modes_restored(model), torch.no_grad():
            model.eval()
            call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    repeated = [f"{n} ({c}x)" for n, c in calls.items() if c > 1]
    never = [n for n, c in calls.items() if c == 0]
    if skip:
        if repeated:
            _warn_skipped("that run more than once per forward (one timestep each)", repeated)
        if never:
            _warn_skipped("whose forward is never called on example_input", never)
        return [n for n in order if calls[n] == 1]
    if repeated:
        raise ValueError(
            f"layer(s) {', '.join(repeated)} run more than once per forward (shared weights?); "
            "DenoiseRep gives each layer one timestep: "
            "exclude them with DenoiseConfig(exclude=[...])"
        )
    if never:
        raise ValueError(
            f"layer(s) {', '.join(never)} never run on example_input (their module's forward is "
            "not called); exclude them with DenoiseConfig(exclude=[...])"
        )
    return order


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Swap ``old`` for ``new`` at every path where ``old`` is registered."""
    for module in list(model.modules()):  # each parent once: its own names are all scanned
        # ``_modules`` rather than ``named_children()``, which lists a module once however many
        # names it is registered under
        for child_name, child in list(module._modules.items()):
            if child is old:
                setattr(module, child_name, new)


def convert(
    model: nn.Module,
    config: DenoiseConfig | None = None,
    example_input: Any = None,
    *,
    timesteps: dict[str, int] | None = None,
) -> nn.Module:
    """Wrap the target layers of ``model`` (in place) with DenoiseRep layers and return it.

    Timesteps follow execution order measured on ``example_input`` (a tensor, a tuple of
    positional args, or a dict of keyword args): the first executed target gets
    t = stride * N, the last t = stride. Pass ``timesteps`` (name -> t) instead to restore a
    saved conversion. Denoisers start at zero, so the model equals the baseline up to the
    1 / sqrt(alpha_t) scale of each reverse step.
    """
    config = config or DenoiseConfig()
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs an nn.Module, got {type(model).__name__}")
    if is_converted(model):
        raise ValueError(
            "model is already converted; convert the original model, or fuse() this one"
        )
    if timesteps is not None and _by_kind(config):  # restoring: the saved names are the targets
        kind = "all" if config.targets == "main_path" else config.targets
        every = select_targets(model, dataclasses.replace(config, targets=kind))
        targets = {n: m for n, m in every.items() if n in timesteps}
    else:
        targets = select_targets(model, config, example_input)
    if timesteps is None:
        if example_input is None:
            raise ValueError("convert() needs example_input to order the layers by execution")
        order = execution_order(model, targets, example_input, skip=_by_kind(config))
        if not order:
            raise ValueError(f"no target layer of {type(model).__name__} runs on example_input")
        ran = set(order)  # the skipped go
        targets = {n: m for n, m in targets.items() if n in ran}
        n = len(order)
        timesteps = {name: config.timestep_stride * (n - k) for k, name in enumerate(order)}
    elif set(timesteps) != set(targets):
        diff = sorted(set(timesteps) ^ set(targets))
        raise ValueError(f"timesteps do not match the model's target layers: {', '.join(diff[:8])}")
    too_late = {n: t for n, t in timesteps.items() if not 1 <= t <= config.timesteps}
    if too_late:
        raise ValueError(
            f"{len(too_late)} layer(s) get a timestep outside 1..{config.timesteps} "
            f"(e.g. {next(iter(too_late.items()))}): raise timesteps or lower timestep_stride"
        )
    if config.structure == "lowrank":  # C_in / groups of each layer
        warn_capped_ranks(config.rank, {n: m.weight.shape[1] for n, m in targets.items()})
    schedule = config.build_schedule()
    shared_draws: dict | None = {} if config.batch_loss else None  # one per model
    for name, module in targets.items():
        layer = DenoiseLayer(
            module,
            timesteps[name],
            schedule,
            name,
            config.loss,
            config.loss_fraction,
            config.loss_tokens,
            config.batch_loss,
            config.loss_dtype,
            config.structure,
            config.rank,
        )
        layer.shared_draws = shared_draws
        _replace(model, module, layer)
    frozen = frozenset(n for n, p in model.named_parameters() if not p.requires_grad)
    setattr(model, _STATE, ConvertState(config, frozen))
    set_phase(model, "joint")
    return model


def config_of(model: nn.Module) -> DenoiseConfig:
    """The DenoiseConfig a converted model was built with."""
    return _state(model).config


def _state(model: nn.Module) -> ConvertState:
    state = getattr(unwrap(model), _STATE, None)
    if state is None:
        raise ValueError("not a DenoiseRep model: call denoiserep.convert(model, config, x) first")
    return state


def _layers(model: nn.Module) -> Iterator[DenoiseLayer]:
    return (m for m in unwrap(model).modules() if isinstance(m, DenoiseLayer))


def denoise_layers(model: nn.Module) -> dict[str, DenoiseLayer]:
    """Qualified name (in the original model) -> DenoiseLayer, in execution order (t falling)."""
    _state(model)
    return {layer.name: layer for layer in sorted(_layers(model), key=lambda m: -m.t)}


def set_phase(model: nn.Module, phase: str) -> None:
    """Choose what trains (docs/method.md, "Phases").

    ``denoiser``: only the denoisers (label-free; the forward uses the original weights).
    ``backbone``: everything but the denoisers (forward through the fused weights).
    ``joint``: both. Parameters frozen before conversion stay frozen. Wrap the model in
    DistributedDataParallel after choosing the phase (DDP records trainable parameters).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    root = unwrap(model)
    state = _state(root)
    denoisers = set()
    for layer in _layers(root):
        layer.phase = phase
        for p in layer.denoiser_parameters():
            p.requires_grad_(phase != "backbone")
            denoisers.add(id(p))
    for name, p in root.named_parameters():
        if id(p) not in denoisers:
            p.requires_grad_(phase != "denoiser" and name not in state.frozen)
    state.phase = phase


def get_phase(model: nn.Module) -> str:
    """The phase last set with :func:`set_phase`."""
    return _state(model).phase


def denoiser_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The denoisers' parameters (every layer's ``D``, or its structure's ``d``, ``U``,
    ``V``), e.g. for their own optimizer group."""
    return [p for layer in _layers(model) for p in layer.denoiser_parameters()]


def denoise_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-layer noise-prediction losses of the last training forward (for logging).

    With ``DenoiseConfig.batch_loss`` the first call after a forward computes them (grouped,
    :func:`~denoiserep.core.objective.compute_pending_losses`); later calls return the same tensors.
    """
    layers = denoise_layers(model)
    compute_pending_losses(layers.values())
    return {n: m.last_loss for n, m in layers.items() if m.last_loss is not None}


def denoise_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the noise-prediction losses of the last training forward (unweighted).

    The training loss is ``task_loss + config_of(model).loss_weight * denoise_loss(model)``:
    lambda lives in the model's DenoiseConfig only. Zero (a float32 scalar without gradient)
    when the last forward computed none (before any forward, eval mode, phase ``backbone``).
    """
    losses = list(denoise_losses(model).values())
    if not losses:
        p = next(unwrap(model).parameters())
        return torch.zeros((), device=p.device)
    total = torch.stack([loss.float() for loss in losses]).sum()
    return total


def train_frozen_backbone(model: nn.Module) -> None:
    """Training mode for the denoisers only: every other module (BatchNorm, dropout) in eval.

    Use it in phase ``denoiser`` so the frozen backbone really stays frozen (no BatchNorm
    running-statistics updates) and computes exactly the baseline's eval outputs.
    """
    root = unwrap(model)
    root.eval()
    for layer in _layers(root):
        layer.train()


def fuse(model: nn.Module) -> nn.Module:
    """A new plain model of the original classes with every denoising step folded in.

    The result has the original architecture, ``state_dict`` keys, parameter count and FLOPs;
    each fused weight is W A_t computed in float64 and cast back. ``model`` is not modified,
    so training can continue and fusing again gives identical weights.
    """
    root = unwrap(model)
    state = _state(root)
    fused = copy.deepcopy(root)
    for name, p in fused.named_parameters():
        p.requires_grad_(name not in state.frozen)
    for layer in list(_layers(fused)):
        _replace(fused, layer, layer.to_fused())
    delattr(fused, _STATE)
    return fused
