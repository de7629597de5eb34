"""The fusion identity on single layers: fused layer == original layer on A_t x."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import denoiserep as dr
from tests.conftest import reference_reverse_matrix, rel_err

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def make_layer(
    kind: str,
    c_in: int,
    c_out: int,
    groups: int,
    k: int,
    stride: int,
    dil: int,
    pad: int,
    mode: str,
    bias: bool,
) -> nn.Module:
    if kind == "linear":
        return nn.Linear(c_in, c_out, bias=bias)
    conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[kind]
    return conv(
        c_in,
        c_out,
        k,
        stride=stride,
        padding=pad,
        dilation=dil,
        groups=groups,
        bias=bias,
        padding_mode=mode,
    )


def input_for(kind: str, c_in: int, size: int) -> torch.Tensor:
    shape = {
        "linear": (2, 3, c_in),
        "conv1d": (2, c_in, size),
        "conv2d": (2, c_in, size, size),
        "conv3d": (1, c_in, size, size, size),
    }[kind]
    return torch.randn(*shape, dtype=torch.float64)


@st.composite
def layer_cases(draw):
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d", "conv3d"]))
    groups = 1 if kind == "linear" else draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.integers(1, 4))
    depthwise = kind != "linear" and draw(st.booleans())
    c_in = groups * cg
    c_out = groups * draw(st.integers(1, 3))
    if depthwise:
        groups, c_in, c_out = c_in, c_in, c_in * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    return dict(
        kind=kind,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        k=k,
        stride=draw(st.integers(1, 2)),
        dil=draw(st.integers(1, 2)),
        pad=pad,
        mode=draw(st.sampled_from(PADDING_MODES)) if pad else "zeros",
        bias=draw(st.booleans()),
        t=draw(st.integers(1, 1000)),
    )


def check_case(case: dict, seed: int) -> None:
    torch.manual_seed(seed)
    t = case.pop("t")
    base = make_layer(**case).double()
    schedule = dr.linear_schedule(1000, 1e-4, 2e-3)
    layer = dr.DenoiseLayer(base, t, schedule).eval()
    with torch.no_grad():
        # k_t D = 0.5 I + U(-0.1, 0.1): a step that always moves the input clearly
        c_in, cg = layer.D.shape
        layer.D.uniform_(-0.1, 0.1)
        layer.D.view(c_in // cg, cg, cg).diagonal(dim1=1, dim2=2).add_(0.5)
        layer.D.div_(layer.strength)
    x = input_for(case["kind"], case["c_in"], 6)
    A = reference_reverse_matrix(layer)
    ch = -1 if case["kind"] == "linear" else 1
    x_denoised = torch.einsum("ji,...i->...j", A, x.movedim(ch, -1)).movedim(-1, ch)
    expected = base(x_denoised)
    fused = layer.to_fused()
    assert type(fused) is type(base)
    assert rel_err(fused(x), expected) < 1e-10
    assert rel_err(layer(x), expected) < 1e-10  # eval-mode converted layer == fused layer
    assert rel_err(expected, base(x)) > 1e-3  # the denoiser is not trivial


@settings(max_examples=60, deadline=None)
@given(layer_cases(), st.integers(0, 2**16))
def test_fusion_identity_property(case, seed):
    check_case(case, seed)


@pytest.mark.parametrize(
    "case",
    [
        dict(
            kind="conv2d",
            c_in=6,
            c_out=6,
            groups=6,
            k=3,
            stride=2,
            dil=2,
            pad=2,
            mode="reflect",
            bias=True,
            t=1,
        ),
        dict(
            kind="conv1d",
            c_in=4,
            c_out=8,
            groups=2,
            k=3,
            stride=1,
            dil=1,
            pad=1,
            mode="circular",
            bias=False,
            t=1000,
        ),
        dict(
            kind="linear",
            c_in=5,
            c_out=3,
            groups=1,
            k=1,
            stride=1,
            dil=1,
            pad=0,
            mode="zeros",
            bias=True,
            t=17,
        ),
        dict(
            kind="conv3d",
            c_in=3,
            c_out=3,
            groups=3,
            k=2,
            stride=2,
            dil=1,
            pad=1,
            mode="replicate",
            bias=True,
            t=500,
        ),
    ],
)
def test_fusion_identity_regressions(case):
    check_case(dict(case), seed=1234)


def test_reverse_step_matrix_matches_formula():
    D = torch.randn(6, 3, dtype=torch.float64)
    A = dr.reverse_step_matrix(D, 0.5, 2.0)
    expected_block0 = (torch.eye(3, dtype=torch.float64) - 0.5 * D[:3]) * 2.0
    torch.testing.assert_close(A[:3], expected_block0)
    torch.testing.assert_close(A[3:], (torch.eye(3, dtype=torch.float64) - 0.5 * D[3:]) * 2.0)


def test_fuse_weight_keeps_memory_layout():
    w = torch.randn(8, 4, 3, 3)
    A = torch.randn(4, 4)
    assert dr.fuse_weight(w, A).is_contiguous()
    w_cl = w.contiguous(memory_format=torch.channels_last)
    assert dr.fuse_weight(w_cl, A).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(dr.fuse_weight(w_cl, A), dr.fuse_weight(w, A))
    w1 = torch.randn(8, 4, 1, 1)  # 1x1 kernels: strides of size-1 dims must match too
    assert dr.fuse_weight(w1, A).stride() == w1.stride()


def test_fuse_weight_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected"):
        dr.fuse_weight(torch.randn(4, 3), torch.randn(4, 4))


def test_schedule_values():
    s = dr.linear_schedule(1000, 1e-4, 2e-3)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(2e-3)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - s.betas[1].item()))
    k, inv = s.reverse_coefficients(1)
    assert k == pytest.approx(1e-4 / (1e-4) ** 0.5)
    assert inv == pytest.approx(1 / (1 - 1e-4) ** 0.5)
    with pytest.raises(ValueError, match="outside"):
        s.reverse_coefficients(1001)
    c = dr.cosine_schedule(100)
    assert c.alphas_cumprod[-1].item() < 1e-3 and torch.all(c.betas > 0)
