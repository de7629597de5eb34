"""What does running the noise regression's product D·x_t in bf16 cost, and what does it save?

Results: docs/results/training-cost.md, "The full record", the "The noise regression in the
autocast dtype" item (``denoise.loss_dtype=autocast``). Rerun, from the repository root:

    .venv/bin/python scripts/studies/regression_precision.py synthetic
    .venv/bin/python scripts/studies/regression_precision.py timing
    .venv/bin/python scripts/studies/regression_precision.py features runs/robust_cf_cnns/resnet18

The worry: at small t the noise b·eps is about 1 % of x_t, and bf16 keeps x_t to 0.4 %, so
the rounding of x_t is input noise the regression sees. It matters where a layer's input
has directions of variance below b² and coordinates far larger than b: there the optimum
D* = b (a² M + b² I)⁻¹ is large, and the rounding noise lowers it.

    features RUN [RUN ...]  per target layer of each run's seed-0 baseline (authors' schedule),
                            the least-squares D on 50 000 of its input tokens with x_t rounded to
                            bf16, scored with float32 x_t on fresh noise: the share of the
                            float32 D's loss reduction it keeps (D's own rounding is not in it)
    synthetic               the same on synthetic inputs with a mean of 1-100 and variances down
                            to 1e-8 of it, then D trained by Adam (2000 steps, 256 tokens, lr 3e-3)
                            from D = 0 under bf16 autocast with either product: excess risk
                            over D*, as a share of D = 0's
    timing                  fwd + bwd of the 50 noise regressions of ViT-B/16 at 256 tokens under
                            bf16 autocast, 2 threads, both products; then the three operators
                            with the most self time in one profiled step of each
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import time
from pathlib import Path

import torch
from seed_study import run_seeds, saved_model
from torch import nn

import denoiserep as dr
from denoiserep.bench.training import profile_step
from denoiserep.core.diagnostics import layer_inputs


def kept_share(x0: torch.Tensor, a: float, b: float) -> float:
    """Share of the float32 least-squares D's loss reduction that the bf16-x_t one keeps."""
    eps, fresh = torch.randn_like(x0), torch.randn_like(x0)
    xt = a * x0 + b * eps
    test = (a * x0 + b * fresh).double()

    def loss(inputs: torch.Tensor) -> float:
        s = torch.linalg.solve(inputs.T @ inputs, inputs.T @ eps.double())  # pred = x_t S
        return ((test @ s - fresh.double()) ** 2).mean().item()

    zero = (fresh.double() ** 2).mean().item()
    return (zero - loss(xt.bfloat16().double())) / (zero - loss(xt.double()))


def sampled_inputs(model: nn.Module, images: torch.Tensor, tokens: int) -> dict[str, torch.Tensor]:
    """About ``tokens`` input tokens of every target layer, drawn evenly from 250-image chunks."""
    layers = dr.denoise_layers(model)
    per_chunk = math.ceil(tokens / math.ceil(len(images) / 250))
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(name: str, x: torch.Tensor) -> None:
        t = layers[name].input_tokens(x).float()
        seen[name].append(t[torch.randperm(len(t))[:per_chunk]])

    with layer_inputs(model, keep):
        for chunk in images.split(250):
            model(chunk)
    return {name: torch.cat(parts) for name, parts in seen.items()}


@torch.no_grad()
def features(runs: list[Path], tokens: int = 50_000) -> None:
    for exp, sets, seed_dir in run_seeds(runs):
        if seed_dir.name != "seed0":
            continue
        model = saved_model(exp, sets, seed_dir / "baseline")
        images = sets.train.tensors[0]
        cfg = dr.DenoiseConfig(targets=exp["denoise"]["targets"])  # the authors' schedule
        converted = dr.convert(copy.deepcopy(model), cfg, example_input=images[:2]).eval()
        layers = dr.denoise_layers(converted)
        seen = sampled_inputs(converted, images, tokens)
        print(f"\n{seed_dir.parent.name or seed_dir.parent}: {exp['model']['name']}")
        print("| layer | t | C_in | tokens | max abs x | bf16 x_t keeps |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, layer in sorted(layers.items(), key=lambda kv: -kv[1].t):
            x0 = seen[name]
            if layer.D.shape[0] != layer.D.shape[1] or len(x0) < 20 * x0.shape[1]:
                continue  # grouped, or too few tokens for a C x C least-squares fit
            share = kept_share(x0, *layer.noise_coefficients)
            print(
                f"| {name} | {layer.t} | {x0.shape[1]} | {len(x0)} | "
                f"{x0.abs().max():.2f} | {share:.2%} |"
            )


def synthetic(c: int = 64, steps: int = 2000, m: int = 256) -> None:
    print("| mean, spread | b | bf16 x_t keeps (least squares) | Adam, float32 | Adam, autocast |")
    print("| --- | --- | --- | --- | --- |")
    for scale, low, b in [(1, -3, 0.01), (1, -3, 0.1), (10, -6, 0.01), (100, -8, 0.01)]:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
        chol = q @ torch.diag(torch.logspace(0, low / 2, c, dtype=torch.float64)) * scale
        mean = torch.randn(c, generator=g, dtype=torch.float64) * scale
        a = math.sqrt(1 - b * b)
        x0 = (torch.randn(200_000, c, dtype=torch.float64) @ chol.T + mean).float()
        share = kept_share(x0, a, b)
        s = a * a * (chol @ chol.T + torch.outer(mean, mean)) + b * b * torch.eye(c).double()
        d_star = b * torch.linalg.inv(s)
        at_zero = torch.trace(d_star @ s @ d_star.T)
        risk = {}
        for loss_dtype in ("float32", "autocast"):
            torch.manual_seed(1)
            # a one-step schedule whose abar is a²: the layer's (a, b) are the ones above
            schedule = dr.NoiseSchedule(torch.tensor([b * b], dtype=torch.float64))
            layer = dr.DenoiseLayer(nn.Linear(c, 4), 1, schedule, loss_dtype=loss_dtype)
            layer.phase = "denoiser"
            opt = torch.optim.Adam([layer.D], lr=3e-3)
            for _ in range(steps):
                x = (torch.randn(m, c, dtype=torch.float64) @ chol.T + mean).float()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    layer(x)
                opt.zero_grad()
                layer.last_loss.backward()
                opt.step()
            e = layer.D.detach().double() - d_star
            risk[loss_dtype] = float(torch.trace(e @ s @ e.T) / at_zero)
        print(
            f"| {scale}, 1e{low} | {b} | {share:.2%} | {risk['float32']:.4f} | "
            f"{risk['autocast']:.4f} |",
            flush=True,
        )


def timing(repeats: int = 5) -> None:
    import timm

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)  # 1576 tokens per layer: 256 of them are sampled
    cfg = dr.DenoiseConfig(loss_tokens=256)
    model = dr.convert(timm.create_model("vit_base_patch16_224"), cfg, example_input=x[:1])
    layers = dr.denoise_layers(model)
    inputs: dict[str, torch.Tensor] = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with layer_inputs(model.eval(), lambda name, t: inputs.__setitem__(name, t)):
            model(x)

    def step(loss_dtype: str) -> None:
        for layer in layers.values():
            layer.loss_dtype = loss_dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(layer.noise_prediction_loss(inputs[n]) for n, layer in layers.items())
        loss.backward()

    for loss_dtype in ("float32", "autocast") * 2:
        step(loss_dtype)
        start = time.perf_counter()
        for _ in range(repeats):
            step(loss_dtype)
        ms = (time.perf_counter() - start) / repeats * 1e3
        print(f"loss_dtype={loss_dtype}: {ms:.0f} ms per step (50 layers, forward + backward)")
    for loss_dtype in ("float32", "autocast"):  # where the time goes: matmuls against casts
        profiled = profile_step(functools.partial(step, loss_dtype), torch.device("cpu"), 3)
        top = ", ".join(f"{op['op']} {op['self_ms']:.0f} ms" for op in profiled["top_ops"])
        print(f"loss_dtype={loss_dtype}, one profiled step: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["features", "synthetic", "timing"])
    parser.add_argument("runs", nargs="*", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.what == "features":
        if not args.runs:
            parser.error("features needs at least one run folder")
        features(args.runs)
    elif args.what == "synthetic":
        synthetic()
    else:
        timing()


if __name__ == "__main__":
    main()
