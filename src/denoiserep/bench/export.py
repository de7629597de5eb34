"""Deployment checks of a fused model: ONNX (run by onnxruntime), torch.export, strict reload.

A fused DenoiseRep model is a plain model of the original classes, so it must export and
reload exactly like the baseline does; these functions check that and report differences.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (eval mode) traced on ``example`` to one self-contained ONNX file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=True,
            external_data=False,
        )
    return path


@torch.no_grad()
def check_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> float:
    """max |onnxruntime(path)(example) - model(example)|, on CPU."""
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} not found")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (got,) = session.run(None, {name: example.detach().cpu().numpy()})
    model.eval()
    expected = model(example).cpu()
    return _max_abs_diff(torch.from_numpy(np.asarray(got)), expected)


@torch.no_grad()
def check_torch_export(model: nn.Module, example: torch.Tensor) -> float:
    """Export with ``torch.export.export`` and return max |exported(example) - model(example)|.

    Raises whatever ``torch.export`` raises if the model cannot be exported.
    """
    model.eval()
    program = torch.export.export(model, (example,))
    return _max_abs_diff(program.module()(example), model(example))


def check_strict_reload(fused: nn.Module, fresh_model: nn.Module) -> nn.Module:
    """Load the fused state dict into a freshly built model with ``strict=True`` and return it.

    Raises RuntimeError (from ``load_state_dict``) if keys or shapes differ, and ValueError if
    a loaded tensor is not bit-identical to the fused one.
    """
    state = fused.state_dict()
    fresh_model.load_state_dict(state, strict=True)
    for name, value in fresh_model.state_dict().items():
        if not torch.equal(value.cpu(), state[name].cpu()):
            raise ValueError(f"reloaded tensor {name} differs from the fused model's")
    return fresh_model
