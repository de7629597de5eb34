"""TENT's update (Wang et al., ICLR 2021) against a hand computation of the entropy gradient:
a LayerNorm -> Linear toy model, one optimizer step per batch on the LayerNorm's affine
parameters, everything else frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from denoiserep.adaptation.methods import softmax_entropy, tent


def toy() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.LayerNorm(5), nn.Linear(5, 4))
    with torch.no_grad():
        m[0].weight.copy_(1 + 0.3 * torch.randn(5))
        m[0].bias.copy_(0.2 * torch.randn(5))
    return m.double()


def entropy_gradient(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean_i H(softmax(z_i)) / d(gamma, beta), by the chain rule written out:
    dH/dz = -p (log p + H), dz/dh = W, h = gamma * xhat + beta."""
    gamma, beta = m[0].weight.detach(), m[0].bias.detach()
    w, c = m[1].weight.detach(), m[1].bias.detach()
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    xhat = (x - mu) / torch.sqrt(var + m[0].eps)
    z = (gamma * xhat + beta) @ w.T + c
    logp = z - torch.logsumexp(z, -1, keepdim=True)
    p = logp.exp()
    h = -(p * logp).sum(-1, keepdim=True)
    dz = -p * (logp + h) / len(x)
    dh = dz @ w
    return (dh * xhat).sum(0), dh.sum(0)


def test_entropy_is_the_softmax_entropy():
    z = torch.tensor([[0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(softmax_entropy(z), torch.tensor([0.6931471805599453, 0.0]).double())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_tent_step_is_the_hand_computed_entropy_step(optimizer):
    m = toy()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(16, 5, dtype=torch.float64)
    lr = 0.1
    adapted = tent(m, [(x, torch.zeros(16))], lr=lr, optimizer=optimizer, momentum=0.0)
    g_gamma, g_beta = entropy_gradient(m, x)
    if optimizer == "sgd":
        step_gamma, step_beta = lr * g_gamma, lr * g_beta
    else:  # Adam's first step: bias-corrected m = g, v = g², so lr g / (|g| + eps)
        step_gamma = lr * g_gamma / (g_gamma.abs() + 1e-8)
        step_beta = lr * g_beta / (g_beta.abs() + 1e-8)
    assert torch.allclose(adapted[0].weight, m[0].weight - step_gamma, atol=1e-10)
    assert torch.allclose(adapted[0].bias, m[0].bias - step_beta, atol=1e-10)
    assert torch.equal(adapted[1].weight, m[1].weight)  # frozen
    assert torch.equal(adapted[1].bias, m[1].bias)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # input untouched
    assert not adapted.training and not any(p.requires_grad for p in adapted.parameters())


def test_tent_takes_one_sgd_step_per_batch_in_one_pass():
    m = toy()
    batches = [torch.randn(8, 5, dtype=torch.float64) for _ in range(3)]
    adapted = tent(m, [(b,) for b in batches], lr=0.5, optimizer="sgd", momentum=0.0)
    ref = toy()
    for b in batches:
        g_gamma, g_beta = entropy_gradient(ref, b)
        with torch.no_grad():
            ref[0].weight -= 0.5 * g_gamma
            ref[0].bias -= 0.5 * g_beta
    assert torch.allclose(adapted[0].weight, ref[0].weight, atol=1e-10)
    assert torch.allclose(adapted[0].bias, ref[0].bias, atol=1e-10)
    # the entropy fell on the adaptation batches
    with torch.no_grad():
        h0 = sum(softmax_entropy(m(b)).mean() for b in batches)
        h1 = sum(softmax_entropy(adapted(b)).mean() for b in batches)
    assert h1 < h0


def test_tent_uses_batch_statistics_then_reestimates_batchnorm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 4)).eval()
    x = 3 + 2 * torch.randn(64, 3)
    adapted = tent(m, [(x,)], lr=1e-3)
    h = adapted[0](x)
    assert torch.allclose(adapted[1].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(adapted[1].running_var, h.var(0, unbiased=True), atol=1e-4)
    assert not torch.equal(adapted[1].weight, m[1].weight)
    assert torch.equal(adapted[0].weight, m[0].weight) and torch.equal(
        adapted[2].weight, m[2].weight
    )


def test_a_model_without_normalisation_is_refused_in_one_line():
    with pytest.raises(ValueError, match="no normalisation layer") as e:
        tent(nn.Linear(3, 2), [(torch.randn(4, 3),)])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tent(toy(), [(torch.randn(4, 5, dtype=torch.float64),)], optimizer="rmsprop")
