"""Activation (gradient) checkpointing through the model library's own switch.

Checkpointing recomputes each block's activations in backward instead of keeping them: less
memory for about one more forward of time. DenoiseRep's noise-prediction losses train D under
it as without it, with re-entrant checkpoints too (``core/layer.py``,
``DenoiseLayer._record_loss``).
"""

from __future__ import annotations

from torch import nn

from denoiserep.core.convert import unwrap


def enable_grad_checkpointing(model: nn.Module) -> list[str]:
    """Turn checkpointing on in every outermost submodule that offers it (timm's
    ``set_grad_checkpointing``, Hugging Face's ``activation_checkpointing_enable`` or, before
    it, ``gradient_checkpointing_enable``) and return
    their names (``""``: the model itself). Raises ``ValueError`` when none does (torchvision
    models, for instance, have no such switch)."""
    done: list[str] = []
    for name, module in unwrap(model).named_modules():
        if any(d == "" or name.startswith(d + ".") for d in done):
            continue
        if callable(getattr(module, "set_grad_checkpointing", None)):
            module.set_grad_checkpointing(True)
        elif callable(getattr(module, "activation_checkpointing_enable", None)):
            module.activation_checkpointing_enable()  # transformers >= 5.x
        elif callable(getattr(module, "gradient_checkpointing_enable", None)):
            module.gradient_checkpointing_enable()
        else:
            continue
        done.append(name)
    if not done:
        raise ValueError(
            f"grad_checkpointing: {type(unwrap(model)).__name__} has no submodule with timm's "
            "set_grad_checkpointing or Hugging Face's gradient_checkpointing_enable; use a timm "
            "(or hf:) model, or turn grad_checkpointing off"
        )
    return done
