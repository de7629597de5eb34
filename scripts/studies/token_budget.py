"""How much does a per-layer token budget (``DenoiseConfig.loss_tokens``) cost the denoiser?

Results: docs/results/training-cost.md, "The full record", the items "A token budget for the
noise regression" and (``adafactor``) "The denoisers' own optimizer". Rerun, from the
repository root: ``.venv/bin/python scripts/studies/token_budget.py 2000`` (and ``2000
adafactor``); the Fashion-MNIST side is ``token_budget_fashion.sh``.

A synthetic layer input with a known covariance (variances 10 .. 1e-3 on random axes) has a
closed-form optimal denoiser D* = b (a^2 Sigma + b^2 I)^-1 (tests/core/test_objective.py derives
it). D is trained with Adam (or, with ``adafactor``, the factored optimizer of
``train.denoiser_optimizer=adafactor``) on 4096-token batches, the loss computed on all tokens or
on a budget of them; printed: the excess risk R(D) - R(D*) as a share of that of D = 0.

    .venv/bin/python scripts/studies/token_budget.py [steps [adam|adafactor]]   # docs: 2000, ~1 min
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

import denoiserep as dr
from denoiserep.engine.optim import factored_optimizer

C, N = 64, 4096
A2, B2 = 0.4, 0.6  # a^2 and b^2 at t = 2 of the two-step schedule below
SCHEDULE = dr.NoiseSchedule(torch.tensor([0.2, 0.5], dtype=torch.float64))


def main(steps: int, optimizer: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))
    sigma = q @ torch.diag(torch.logspace(1, -3, C, dtype=torch.float64)) @ q.T
    S = A2 * sigma + B2 * torch.eye(C, dtype=torch.float64)
    d_star = math.sqrt(B2) * torch.linalg.inv(S)
    chol = torch.linalg.cholesky(sigma)

    def excess(D: torch.Tensor) -> float:
        E = D.detach().double() - d_star
        return (torch.trace(E @ S @ E.T) / C).item()

    at_zero = excess(torch.zeros(C, C))
    print(f"{steps} {optimizer} steps (lr 3e-3) on {N}-token batches, C = {C}")
    for tokens in (0, 1024, 256, 64, 16):
        torch.manual_seed(1)
        layer = dr.DenoiseLayer(nn.Linear(C, 8), t=2, schedule=SCHEDULE, loss_tokens=tokens)
        layer.phase = "denoiser"
        layer.train()
        if optimizer == "adam":
            opt = torch.optim.Adam([layer.D], lr=3e-3)
        else:
            opt = factored_optimizer([layer.D], lr=3e-3)
        for _ in range(steps):
            x = (torch.randn(N, C, dtype=torch.float64) @ chol.T).float()
            opt.zero_grad()
            layer(x)
            layer.last_loss.backward()
            opt.step()
        risk = excess(layer.D)
        print(
            f"loss_tokens {tokens:5d} ({tokens or N:5d} of {N} tokens): excess risk "
            f"{risk:.2e} = {risk / at_zero:.3%} of D = 0's"
        )


if __name__ == "__main__":
    name = sys.argv[2] if len(sys.argv) > 2 else "adam"
    if name not in ("adam", "adafactor"):
        sys.exit(f"optimizer must be adam or adafactor, got {name!r}")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, name)
