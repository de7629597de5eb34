"""Official VMamba (v0) checkpoints: random weights written in the official layout, converted.

The official layout (github.com/MzeroMiko/VMamba, classification/models/vmamba.py, first
release and the later code's v0 path) is rebuilt here from its parameter names and shapes; a
reference forward written from the stacked official tensors (einsum over the four directions,
the official scan and merge order) checks that the converted model computes what the file
describes, and DenoiseRep converts and fuses the converted model exactly.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

import denoiserep as dr
from denoiserep.cli import main
from denoiserep.models import create_model
from denoiserep.models.scan import selective_scan_ref
from denoiserep.models.vmamba import VMamba
from denoiserep.models.vmamba_official import (
    checkpoint_filter_fn,
    convert_official_vmamba,
    is_official_vmamba,
    load_vmamba_checkpoint,
)
from tests.conftest import check_fused_against_reference, randomize_denoisers, rel_err

K = 4
DIMS, DEPTHS, D_STATE, PATCH = (16, 32), (1, 2), 4, 2
KW = {"dims": 16, "depths": DEPTHS, "d_state": D_STATE, "patch_size": PATCH}

# the later official code's names for the v0 modules (its _load_from_state_dict renames them)
LATER_PREFIXES = [
    ("patch_embed.proj.", "patch_embed.0."),
    ("patch_embed.norm.", "patch_embed.2."),
    ("norm.", "classifier.norm."),
    ("head.", "classifier.head."),
]


def official_state(
    in_chans: int = 3, num_classes: int = 5, layout: str = "v0", seed: int = 0
) -> dict[str, Tensor]:
    """Random weights in the official VMamba v0 layout (names and shapes of the official code)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str, dim: int) -> dict[str, Tensor]:
        return {
            f"{prefix}.weight": 1 + rand(dim, scale=0.1),
            f"{prefix}.bias": rand(dim, scale=0.1),
        }

    s = {
        "patch_embed.proj.weight": rand(DIMS[0], in_chans, PATCH, PATCH),
        "patch_embed.proj.bias": rand(DIMS[0]),
        **norm("patch_embed.norm", DIMS[0]),
    }
    for i, (dim, depth) in enumerate(zip(DIMS, DEPTHS, strict=True)):
        d_inner, rank = 2 * dim, math.ceil(dim / 16)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            a = f"{b}.self_attention"
            dt = torch.exp(torch.rand(K, d_inner, generator=g) * math.log(100) + math.log(1e-3))
            s |= norm(f"{b}.ln_1", dim)
            s |= {
                f"{a}.in_proj.weight": rand(2 * d_inner, dim),
                f"{a}.conv2d.weight": rand(d_inner, 1, 3, 3),
                f"{a}.conv2d.bias": rand(d_inner),
                f"{a}.x_proj_weight": rand(K, rank + 2 * D_STATE, d_inner),
                f"{a}.dt_projs_weight": rand(K, d_inner, rank, scale=0.5),
                f"{a}.dt_projs_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
                f"{a}.A_logs": torch.log(torch.arange(1.0, D_STATE + 1)).repeat(K * d_inner, 1)
                + rand(K * d_inner, D_STATE),
                f"{a}.Ds": 1 + rand(K * d_inner),
                f"{a}.out_proj.weight": rand(dim, d_inner),
            }
            s |= norm(f"{a}.out_norm", d_inner)
        if i < len(DIMS) - 1:
            s[f"layers.{i}.downsample.reduction.weight"] = rand(DIMS[i + 1], 4 * dim)
            s |= norm(f"layers.{i}.downsample.norm", 4 * dim)
    s |= norm("norm", DIMS[-1])
    s |= {"head.weight": rand(num_classes, DIMS[-1]), "head.bias": rand(num_classes)}
    if layout == "later":
        s = {_later(k): v for k, v in s.items()}
    return s


def _later(key: str) -> str:
    key = key.replace(".ln_1.", ".norm.").replace(".self_attention.", ".op.")
    for old, new in LATER_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# -- an independent reference written from the official tensors --------------------------------
def reference_ss2d(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """The official v0 SS2D on channels-last x, from its stacked parameters (prefix stripped)."""
    bsz, h, w, _ = x.shape
    length = h * w
    u, z = (x @ p["in_proj.weight"].T).chunk(2, dim=-1)
    u = u.permute(0, 3, 1, 2)  # (b, d, h, w): the official SS2D scans channels-first
    d = u.shape[1]
    u = F.silu(F.conv2d(u, p["conv2d.weight"], p["conv2d.bias"], padding=1, groups=d))
    hw = torch.stack([u.reshape(bsz, d, length), u.transpose(2, 3).reshape(bsz, d, length)], 1)
    xs = torch.cat([hw, hw.flip(-1)], dim=1)  # (b, k, d, l)
    n = p["A_logs"].shape[1]
    rank = p["dt_projs_weight"].shape[2]
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, p["x_proj_weight"])
    dts, Bs, Cs = x_dbl.split([rank, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, p["dt_projs_weight"])
    ys = selective_scan_ref(
        xs.reshape(bsz, K * d, length),
        dts.reshape(bsz, K * d, length),
        -torch.exp(p["A_logs"]),
        Bs,
        Cs,
        p["Ds"],
        delta_bias=p["dt_projs_bias"].reshape(-1),
        delta_softplus=True,
    ).view(bsz, K, d, length)
    inv = ys[:, 2:4].flip(-1)
    col = ys[:, 1].view(bsz, d, w, h).transpose(2, 3).reshape(bsz, d, length)
    inv_col = inv[:, 1].view(bsz, d, w, h).transpose(2, 3).reshape(bsz, d, length)
    y = (ys[:, 0] + inv[:, 0] + col + inv_col).transpose(1, 2).reshape(bsz, h, w, d)
    y = F.layer_norm(y, (d,), p["out_norm.weight"], p["out_norm.bias"]) * F.silu(z)
    return y @ p["out_proj.weight"].T


def reference_model(s: dict[str, Tensor], img: Tensor) -> Tensor:
    """The official v0 VSSM forward (first-release names) on images, from its state dict."""

    def ln(x: Tensor, prefix: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], s[f"{prefix}.weight"], s[f"{prefix}.bias"])

    x = F.conv2d(img, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    x = ln(x.permute(0, 2, 3, 1), "patch_embed.norm")
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            a = f"{b}.self_attention."
            params = {k[len(a) :]: v for k, v in s.items() if k.startswith(a)}
            x = x + reference_ss2d(params, ln(x, f"{b}.ln_1"))
        if i < len(DEPTHS) - 1:
            x = torch.cat(
                [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1
            )
            x = (
                ln(x, f"layers.{i}.downsample.norm")
                @ s[f"layers.{i}.downsample.reduction.weight"].T
            )
    x = ln(x, "norm").mean(dim=(1, 2))
    return x @ s["head.weight"].T + s["head.bias"]


def converted_model(state: dict[str, Tensor], dtype=torch.float32) -> VMamba:
    model = timm.create_model("vmamba_tiny", num_classes=5, **KW).to(dtype).eval()
    model.load_state_dict(convert_official_vmamba(state), strict=True)
    return model


# -- (a) layout and strict loading --------------------------------------------------------------
@pytest.mark.parametrize("layout", ["v0", "later"])
def test_official_layout_converts_and_loads_strictly(layout):
    state = official_state(layout=layout)
    assert is_official_vmamba(state)
    model = timm.create_model("vmamba_tiny", num_classes=5, **KW)
    assert not is_official_vmamba(model.state_dict())
    converted = convert_official_vmamba(state)
    assert converted.keys() == model.state_dict().keys()
    model.load_state_dict(converted, strict=True)
    a = "layers.1.blocks.1.self_attention." if layout == "v0" else "layers.1.blocks.1.op."
    op = model.layers[1].blocks[1].op
    for k in range(K):
        assert torch.equal(op.x_proj[k].weight, state[a + "x_proj_weight"][k])
        assert torch.equal(op.dt_proj[k].weight, state[a + "dt_projs_weight"][k])
    assert torch.equal(op.dt_bias, state[a + "dt_projs_bias"])
    assert torch.equal(op.A_logs, state[a + "A_logs"]) and torch.equal(op.Ds, state[a + "Ds"])
    assert checkpoint_filter_fn(state, model).keys() == converted.keys()
    ours = model.state_dict()
    assert checkpoint_filter_fn(ours, model).keys() == ours.keys()  # not official: unchanged


# -- (b) the converted model computes what the official tensors describe ------------------------
def test_converted_ss2d_equals_reference_from_stacked_tensors():
    state = {k: v.double() for k, v in official_state().items()}
    model = converted_model(state, torch.float64)
    a = "layers.1.blocks.1.self_attention."
    params = {k[len(a) :]: v for k, v in state.items() if k.startswith(a)}
    x = torch.randn(2, 3, 5, DIMS[1], dtype=torch.float64)  # non-square: catches transposes
    with torch.no_grad():
        torch.testing.assert_close(
            model.layers[1].blocks[1].op(x), reference_ss2d(params, x), rtol=1e-9, atol=1e-10
        )


def test_converted_model_equals_reference_and_is_deterministic():
    state = official_state()
    model = converted_model(state)
    img = torch.randn(2, 3, 12, 16)
    with torch.no_grad():
        logits = model(img)
        reference = reference_model(state, img)
        assert torch.isfinite(logits).all() and logits.shape == (2, 5)
        assert torch.equal(logits, model(img))
    assert rel_err(logits, reference) < 1e-5


# -- (c) DenoiseRep converts and fuses the converted model exactly -------------------------------
def test_denoiserep_fusion_of_converted_model_is_exact():
    original = converted_model(official_state())
    x = torch.randn(2, 3, 12, 16)
    converted = dr.convert(copy.deepcopy(original), dr.DenoiseConfig(targets="all"), x)
    layers = dr.denoise_layers(converted)
    assert len(layers) == 1 + 3 * 11 + 1 + 1  # stem, 3 blocks, 1 merge, head
    randomize_denoisers(converted, strength=0.1)
    fused = dr.fuse(converted).eval()
    out = check_fused_against_reference(original, converted, fused, x, 1e-5)
    assert type(fused) is VMamba
    assert rel_err(out["fused"], out["converted"]) < 1e-5


# -- (d) layouts it does not know ----------------------------------------------------------------
@pytest.mark.parametrize(
    "change,match",
    [
        (lambda s: s | {"patch_embed.5.weight": torch.zeros(1)}, "unknown key 'patch_embed.5"),
        (
            lambda s: s | {"layers.0.downsample.1.weight": torch.zeros(1)},
            "unknown key 'layers.0.downsample.1",
        ),
        (
            lambda s: s | {"layers.0.blocks.0.self_attention.x_proj_bias": torch.zeros(1)},
            "unknown SS2D parameter",
        ),
        (
            lambda s: s | {"layers.0.blocks.0.self_attention.x_proj_weight": torch.zeros(2, 9, 32)},
            r"shape \(2, 9, 32\)",
        ),
        (lambda s: {"fc.weight": torch.zeros(1)}, "not an official VMamba checkpoint"),
    ],
    ids=["v2-stem", "v2-downsample", "x_proj_bias", "two-directions", "not-vmamba"],
)
def test_unknown_layout_is_refused_in_one_line(change, match):
    with pytest.raises(ValueError, match=match) as info:
        convert_official_vmamba(change(official_state()))
    message = str(info.value)
    assert "\n" not in message and "v0" in message, message


def test_unknown_layout_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "vssm1_tiny_0230s.pth"
    torch.save({"model": official_state() | {"patch_embed.5.weight": torch.zeros(1)}}, path)
    model = timm.create_model("vmamba_tiny", num_classes=5, **KW)
    with pytest.raises(ValueError, match="vssm1_tiny_0230s.pth: unknown key") as info:
        load_vmamba_checkpoint(model, path)
    assert "\n" not in str(info.value)


def test_pretrained_error_says_how_to_load_the_official_file():
    with pytest.raises(ValueError, match="model.checkpoint=PATH"):
        timm.create_model("vmamba_micro", pretrained=True)


# -- (e) through create_model and the command line -----------------------------------------------
def test_create_model_loads_an_official_checkpoint(tmp_path):
    state = official_state()
    path = tmp_path / "vssmtiny_dp01_ckpt_epoch_292.pth"
    torch.save({"model": state, "epoch": 292}, path)  # as published: weights under "model"
    model = create_model("vmamba_tiny", checkpoint=path, num_classes=5, **KW).eval()
    expected = convert_official_vmamba(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_classify_runs_from_an_official_checkpoint(tmp_path, caplog):
    path = tmp_path / "official.pth"
    torch.save({"model": official_state(num_classes=5)}, path)
    out = tmp_path / "run"
    argv = [
        "classify",
        "--config",
        "digits_demo.yaml",
        "--no-progress",
        "--output",
        str(out),
        "model.name=vmamba_tiny",
        "model.kwargs={dims: 16, depths: [1, 2], d_state: 4, patch_size: 2, img_size: 8}",
        f"model.checkpoint={path}",
        "robustness.enabled=false",
        "baseline.epochs=0",
        "arms=[]",
        "seeds=[0]",
    ]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    head_lines = [
        r.getMessage() for r in caplog.records if "re-initialised for 10 classes" in r.getMessage()
    ]
    assert len(head_lines) == 1 and "(checkpoint" in head_lines[0] and "has 5)" in head_lines[0]
    loaded = load_file(str(Path(out) / "seed0" / "baseline" / "model.safetensors"))
    expected = convert_official_vmamba(official_state(num_classes=5))
    for key, value in expected.items():
        if key.startswith("head."):
            continue
        if key == "patch_embed.proj.weight":  # 3 input channels summed for the 1-channel digits
            value = value.sum(dim=1, keepdim=True)
        torch.testing.assert_close(loaded[key], value, rtol=1e-6, atol=1e-7, msg=key)
