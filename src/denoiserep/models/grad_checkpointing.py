"""Activation (gradient) checkpointing through the model library's own switch.

Checkpointing recomputes each block's activations in backward instead of keeping them: less
memory for about one more forward of time. DenoiseRep's noise-prediction losses train D under
it as without it, with re-entrant checkpoints too (``core/layer.py``,
``DenoiseLayer._record_loss``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from denoiserep.core.convert import unwrap

Switch = tuple[Callable[[nn.Module], None], Callable[[nn.Module], None]]  # (on, off)
# by the method that marks a switch: timm; Hugging Face transformers >= 5; older transformers
_SWITCHES: dict[str, Switch] = {
    "set_grad_checkpointing": (
        lambda m: m.set_grad_checkpointing(True),
        lambda m: m.set_grad_checkpointing(False),
    ),
    "activation_checkpointing_enable": (
        lambda m: m.activation_checkpointing_enable(),
        lambda m: m.activation_checkpointing_disable(),
    ),
    "gradient_checkpointing_enable": (
        lambda m: m.gradient_checkpointing_enable(),
        lambda m: m.gradient_checkpointing_disable(),
    ),
}
_MARK = "_denoiserep_grad_checkpointing"  # set on the model by enable_grad_checkpointing


def checkpointable_modules(model: nn.Module) -> dict[str, tuple[nn.Module, Switch]]:
    """The outermost submodules of ``model`` that have a checkpointing switch (name -> the
    module and its (on, off); ``""``: the model itself). Raises ``ValueError`` when none has one
    (torchvision models, for instance)."""
    found: dict[str, tuple[nn.Module, Switch]] = {}
    for name, module in unwrap(model).named_modules():
        if any(d == "" or name.startswith(d + ".") for d in found):
            continue
        for method, switch in _SWITCHES.items():
            if callable(getattr(module, method, None)):
                found[name] = module, switch
                break
    if not found:
        raise ValueError(
            f"grad_checkpointing: {type(unwrap(model)).__name__} has no submodule with timm's "
            "set_grad_checkpointing or Hugging Face's gradient_checkpointing_enable; use a timm "
            "(or hf:) model, or turn grad_checkpointing off"
        )
    return found


def enable_grad_checkpointing(model: nn.Module) -> list[str]:
    """Turn checkpointing on in every outermost submodule that offers it (timm's
    ``set_grad_checkpointing``, Hugging Face's ``activation_checkpointing_enable`` or, before
    it, ``gradient_checkpointing_enable``) and return their names (``""``: the model itself).
    Raises ``ValueError`` when none does, or when one refuses (timm's Inception, SENet, CSPNet
    and others have the switch only to assert that it stays off)."""
    found = checkpointable_modules(model)
    for module, (on, _) in found.values():
        try:
            on(module)
        except (AssertionError, NotImplementedError) as e:
            raise ValueError(
                f"grad_checkpointing: {type(module).__name__} refuses it ({e}); turn "
                "grad_checkpointing off for this model"
            ) from e
    setattr(unwrap(model), _MARK, True)
    return list(found)


def disable_grad_checkpointing(model: nn.Module) -> list[str]:
    """Turn off the checkpointing :func:`enable_grad_checkpointing` turned on in ``model`` (or in
    the model it was copied from) and return the names; checkpointing turned on otherwise is
    left as it is (``[]``)."""
    if not getattr(unwrap(model), _MARK, False):
        return []
    found = checkpointable_modules(model)
    for module, (_, off) in found.values():
        off(module)
    delattr(unwrap(model), _MARK)
    return list(found)
