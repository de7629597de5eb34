"""Selective scan: the chunked parallel scan equals the sequential recurrence, values and grads."""

from __future__ import annotations

import math

import pytest
import torch

from denoiserep.models.scan import selective_scan, selective_scan_ref

F64 = torch.float64


def make_inputs(b, d, length, n, groups=None, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    bc_shape = (b, n, length) if groups is None else (b, groups, n, length)
    return dict(
        u=randn(b, d, length),
        delta=randn(b, d, length).abs(),
        A=-torch.rand(d, n, generator=g, dtype=dtype) * 2,
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(d),
        z=randn(b, d, length),
        delta_bias=randn(d),
    )


def test_reference_matches_hand_computed_recurrence():
    # d = n = 1, exp(delta * A) = 1/2, B = C = 1: h = 1, 0.5 + 2, 1.25 + 3; y = h + 2 u.
    u = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=F64)
    args = dict(
        delta=torch.ones_like(u),
        A=torch.tensor([[-math.log(2.0)]], dtype=F64),
        B=torch.ones(1, 1, 3, dtype=F64),
        C=torch.ones(1, 1, 3, dtype=F64),
    )
    expected = torch.tensor([[[1.0, 2.5, 4.25]]], dtype=F64)
    torch.testing.assert_close(selective_scan_ref(u, **args), expected)
    torch.testing.assert_close(selective_scan(u, **args), expected)
    with_skip = selective_scan(u, **args, D=torch.tensor([2.0], dtype=F64))
    torch.testing.assert_close(with_skip, expected + 2 * u)


@pytest.mark.parametrize(
    "b,d,length,n,groups",
    [(1, 1, 1, 1, None), (2, 3, 7, 4, None), (2, 6, 49, 5, 3), (1, 8, 100, 3, 4), (2, 4, 33, 2, 1)],
)
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 256])
def test_chunked_scan_matches_sequential_loop(b, d, length, n, groups, chunk_size):
    inputs = make_inputs(b, d, length, n, groups)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    actual = selective_scan(**inputs, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_D", [False, True])
@pytest.mark.parametrize("use_z", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
def test_optional_arguments_match_reference(use_D, use_z, use_bias, softplus):
    inputs = make_inputs(2, 4, 20, 3, groups=2, seed=1)
    for name, used in (("D", use_D), ("z", use_z), ("delta_bias", use_bias)):
        if not used:
            inputs[name] = None
    if not softplus and use_bias:
        inputs["delta_bias"] = inputs["delta_bias"].abs()  # keep delta >= 0 without softplus
    expected = selective_scan_ref(**inputs, delta_softplus=softplus)
    actual = selective_scan(**inputs, delta_softplus=softplus, chunk_size=6)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_grouped_B_C_equal_repeated_per_channel_B_C():
    inputs = make_inputs(2, 6, 9, 3, groups=3)
    # channel i reads group i // 2: run each group's channels on their own with 3-D B, C
    y = selective_scan(**inputs, delta_softplus=True)
    for group in range(3):
        ch = slice(2 * group, 2 * group + 2)
        part = selective_scan(
            inputs["u"][:, ch],
            inputs["delta"][:, ch],
            inputs["A"][ch],
            inputs["B"][:, group],
            inputs["C"][:, group],
            inputs["D"][ch],
            inputs["z"][:, ch],
            inputs["delta_bias"][ch],
            delta_softplus=True,
        )
        torch.testing.assert_close(y[:, ch], part, rtol=1e-12, atol=1e-12)


def test_gradients_pass_gradcheck_and_match_reference():
    inputs = {k: v.requires_grad_() for k, v in make_inputs(1, 2, 6, 2, groups=2).items()}
    names = list(inputs)

    def scan(*tensors):
        kwargs = dict(zip(names, tensors, strict=True))
        return selective_scan(**kwargs, delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()))
    weights = torch.randn(1, 2, 6, dtype=F64)
    grads = torch.autograd.grad((scan(*inputs.values()) * weights).sum(), list(inputs.values()))
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), list(inputs.values()))
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_inputs_are_not_modified():
    inputs = make_inputs(2, 3, 12, 2)
    before = {k: v.clone() for k, v in inputs.items()}
    selective_scan(**inputs, delta_softplus=True, chunk_size=4)
    for name, value in inputs.items():
        assert torch.equal(value, before[name]), name


def test_large_steps_stay_finite():
    # exp(-cumsum(delta * A)) would overflow here (delta * A = -800 per step).
    inputs = make_inputs(1, 2, 40, 2, dtype=torch.float32)
    inputs["delta"] = torch.full_like(inputs["delta"], 50.0)
    inputs["A"] = torch.full_like(inputs["A"], -16.0)
    y = selective_scan(**inputs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, selective_scan_ref(**inputs))


def test_half_precision_input_is_computed_in_float32_and_returned_in_input_dtype():
    inputs = make_inputs(2, 4, 16, 3, dtype=torch.float32)
    low = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    y = selective_scan(**low, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    exact = selective_scan_ref(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(y.float(), exact, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("A", torch.zeros(5, 3), r"A must have shape \(4, n\)"),
        ("B", torch.zeros(2, 3, 3, 10), r"B must have shape"),  # 3 groups do not divide d = 4
        ("C", torch.zeros(2, 3, 9), r"C must have shape \(2, 3, 10\)"),
        ("D", torch.zeros(3), r"D must have shape \(4,\)"),
        ("delta", torch.zeros(2, 4, 9), r"delta must have u's shape"),
    ],
)
def test_bad_shapes_are_rejected(name, value, message):
    inputs = make_inputs(2, 4, 10, 3, dtype=torch.float32)
    inputs[name] = value
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def test_bad_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        selective_scan(**make_inputs(1, 1, 3, 1), chunk_size=0)
