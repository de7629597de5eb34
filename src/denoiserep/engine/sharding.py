"""Sharded training (``strategy: fsdp``): FSDP2's ``fully_shard`` on each block, then the root,
and its undoing at the end of a fit.

* :func:`shard_model` applies ``fully_shard`` in place, innermost first: each DenoiseLayer (its
  base weight and its denoiser in one unit, so W·A_t is formed from gathered weights), then
  each transformer block / residual stage that :func:`shard_units` identifies, then the root.
  ``amp``: ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``.
* The noise-prediction loss of a DenoiseLayer is built inside its forward but is not its
  output, so FSDP's pre-backward hook (registered on module outputs) would not see it: in
  phase ``denoiser`` no output needs a gradient, nothing would gather the unit again before
  backward nor reduce-scatter D's gradient. A forward hook registered after ``fully_shard``
  hands ``last_loss`` to the unit's FSDP state as one more output (:func:`_watch_loss`); the
  hook fires when backward reaches that loss, i.e. in the layer's own place in the backward
  order, so the unit is gathered then and resharded after, as for its output.
* :func:`unshard_model` gathers the full state dict
  (``torch.distributed.checkpoint.state_dict.get_model_state_dict(full_state_dict=True)``, a
  collective: every rank receives the full tensors), removes every hook ``fully_shard`` and
  :func:`shard_model` added (the hook tables are snapshotted before sharding; whatever is new
  goes), gives each module back its own class, and replaces every DTensor parameter by a
  plain ``nn.Parameter`` holding the full tensor (same ``requires_grad``); buffers (BatchNorm
  statistics, never sharded) become rank 0's on every rank, as under DDP. The model is then
  the plain module it was, with the trained weights: ``dr.fuse`` and a strict
  ``load_state_dict`` into a fresh model work as after a DDP run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import denoiserep as dr

BLOCK_LISTS = ("blocks", "layers", "stages", "layer1", "layer2", "layer3", "layer4")
_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_FSDP_ATTRS = ("_is_fsdp_managed_module", "_fsdp_use_orig_params")


def check_supported(model: nn.Module, cfg: Any, tag: str) -> None:
    """One-line error for what ``fsdp`` does not support yet (docs/guide/extending-training.md,
    "Sharded training"): each of these computes with parameters outside the units' forward, or
    is untested under sharding."""
    refused = {
        "compile": cfg.compile,
        "grad_checkpointing": cfg.grad_checkpointing,
        "denoiser_optimizer=adafactor": cfg.denoiser_optimizer != "same",
        "denoiser_init=closed_form": cfg.denoiser_init == "closed_form",
        "batch_loss": dr.is_converted(model) and dr.config_of(model).batch_loss,
    }
    for name, on in refused.items():
        if on:
            raise ValueError(f"{tag}: strategy=fsdp does not support {name} yet")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units below the root, innermost first: every DenoiseLayer,
    then each item of a ``ModuleList`` / ``Sequential`` named like a block list
    (``BLOCK_LISTS``: timm / torchvision transformer blocks, residual stages) that holds
    parameters of its own outside the DenoiseLayers."""
    layers = list(dr.denoise_layers(model).values()) if dr.is_converted(model) else []
    inside = {id(p) for layer in layers for p in layer.parameters()}
    blocks = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in BLOCK_LISTS:
            continue
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        for block in module:
            if any(id(p) not in inside for p in block.parameters()):
                blocks.append(block)
    return layers + blocks


def _watch_loss(layer: nn.Module, args: Any, output: Any) -> None:
    """Register the layer's noise-prediction loss with its FSDP state's pre-backward hook."""
    from torch.distributed.fsdp import fully_shard

    loss = getattr(layer, "last_loss", None)
    if loss is not None and loss.requires_grad:
        fully_shard.state(layer)._register_pre_backward_hook(loss)


def _hook_snapshot(model: nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {t: set(getattr(m, t, {})) for t in _HOOK_TABLES} for m in model.modules()}


def shard_model(model: nn.Module, amp: bool, reshard_after_forward: bool = True) -> dict:
    """``fully_shard`` each unit of :func:`shard_units`, then the root, in place. Returns what
    :func:`unshard_model` needs to undo it (the hook tables as they were)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    undo = {"hooks": _hook_snapshot(model)}
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    options: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if amp:
        options["mp_policy"] = policy
    layers = set(dr.denoise_layers(model).values()) if dr.is_converted(model) else set()
    for unit in shard_units(model):
        fully_shard(unit, **options)
        if unit in layers:  # after fully_shard's own hook: the loss exists by then
            unit.register_forward_hook(_watch_loss)
    fully_shard(model, **options)
    return undo


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters the gradients (off: each rank accumulates its
    unsharded gradients locally; the micro-batches before the last one of a step)."""
    model.set_requires_gradient_sync(sync)


def unshard_model(model: nn.Module, undo: dict) -> None:
    """Make the sharded ``model`` a plain module again, in place, with full parameters (the
    module docstring says how). A collective: every rank calls it."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    for buffer in model.buffers():  # not sharded: rank 0's, as DDP broadcasts them
        torch.distributed.broadcast(buffer, src=0)
    for m in model.modules():
        before = undo["hooks"].get(id(m), {})
        for table in _HOOK_TABLES:
            hooks = getattr(m, table, None)
            for key in [k for k in (hooks or {}) if k not in before.get(table, set())]:
                del hooks[key]
        if isinstance(m, FSDPModule):
            m.__class__ = next(c for c in type(m).__bases__ if not issubclass(c, FSDPModule))
        for key in (STATE_KEY, REGISTRY_KEY, *_FSDP_ATTRS):
            m.__dict__.pop(key, None)
    owners = dict(model.named_modules())
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        value = full[name].detach().clone()
        owners[owner]._parameters[leaf] = nn.Parameter(value, requires_grad=p.requires_grad)
