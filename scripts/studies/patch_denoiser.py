"""Can a step at the patch embedding remove the noise the ViT cannot?

Results: docs/results/robustness.md, "Does the ViT fail to denoise?" ("A step on whole
patches"). Rerun, from the repository root, on the ViT run of ``robustness_denoisers.sh
closed_form`` (command on that page):

    .venv/bin/python scripts/studies/patch_denoiser.py runs/robust_cf_bits/vit

``layer_noise.py`` found the small ViT's feature-noise damage entering at its patch embedding,
whose per-pixel step is a scalar on the 1-channel image. A patch embedding is a convolution
with kernel = stride, i.e. one Linear map of each patch's C_in·k·k values, so a denoiser can
act on the whole patch instead and still fuse exactly (W' = W·A_t on the flattened weight).
This script tests that, with no training: for every seed's baseline of a ViT run it fits the
closed-form strong-schedule denoisers twice, once as DenoiseRep converts the model (per pixel)
and once with the patch embedding rewritten as that Linear (``PatchLinear``: the same outputs),
fuses both, and scores the three models on the first ``--images`` test images, clean, with
Gaussian noise on the image (σ relative to its std, the feature noise at the patch embedding's
input) and with feature noise at every target layer. The same noise for every model.

    .venv/bin/python scripts/studies/patch_denoiser.py RUN_DIR [RUN_DIR ...] [--images 1000]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from denoising_snr import STRONG
from seed_study import mean_table, paired_table, run_seeds, run_targets, saved_model
from torch import nn
from torch.utils.data import Subset

import denoiserep as dr
from denoiserep.classification.step import evaluate
from denoiserep.core.closed_form import SecondMoment
from denoiserep.core.diagnostics import layer_inputs
from denoiserep.robustness.feature_noise import feature_noise

COLUMNS = ["clean", "image σ=0.2", "image σ=0.5", "every layer σ=0.5"]
MODELS = ("baseline", "per_pixel", "per_patch")


class PatchLinear(nn.Module):
    """A kernel = stride, unpadded, ungrouped Conv2d as one Linear on each flattened patch."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.groups != 1:
            raise ValueError(f"not a patch embedding: {conv}")
        self.kernel = conv.kernel_size
        self.linear = nn.Linear(conv.weight[0].numel(), conv.out_channels, conv.bias is not None)
        self.linear.weight.data.copy_(conv.weight.detach().flatten(1))
        if conv.bias is not None:
            self.linear.bias.data.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (n, _, h, w), (kh, kw) = x.shape, self.kernel
        patches = F.unfold(x, self.kernel, stride=self.kernel).transpose(1, 2)
        return self.linear(patches).transpose(1, 2).reshape(n, -1, h // kh, w // kw)


def fitted(model: nn.Module, exp: dict, images: list[torch.Tensor]) -> tuple[nn.Module, float]:
    """``model`` with closed-form strong-schedule steps fused, and the SNR gain of its first
    layer's step under isotropic noise (see denoising_snr.py)."""
    config = dr.DenoiseConfig(**{**exp["denoise"], **STRONG})
    converted = dr.convert(copy.deepcopy(model), config, example_input=images[0][:2])
    name, layer = max(dr.denoise_layers(converted).items(), key=lambda kv: kv[1].t)
    moment = SecondMoment(layer)
    with layer_inputs(converted, lambda n, x: moment.add(x) if n == name else None):
        dr.fit_denoisers(converted, images)
    m = moment.sum[0] / moment.tokens
    a = layer.reverse_matrix(torch.float64)
    gain = torch.trace(a @ m @ a.T) / torch.trace(a @ a.T) / (torch.trace(m) / m.shape[0])
    return dr.fuse(converted).eval(), float(gain)


def run_seed(exp: dict, sets: object, seed_dir: Path, images: int) -> dict[str, list[float]]:
    baseline = saved_model(exp, sets, seed_dir / "baseline")
    targets = run_targets(exp, sets, baseline)
    if "patch_embed.proj" not in targets:
        raise SystemExit(f"{seed_dir}: no patch_embed.proj among the targets; a timm ViT run?")
    train = list(sets.train.tensors[0].split(500))
    patched = copy.deepcopy(baseline)
    patched.patch_embed.proj = PatchLinear(baseline.patch_embed.proj)
    torch.testing.assert_close(patched(train[0][:8]), baseline(train[0][:8]))  # the same map
    per_pixel, pixel_gain = fitted(baseline, exp, train)
    per_patch, patch_gain = fitted(patched, exp, train)
    print(f"  first step's SNR gain: per pixel {pixel_gain:.2f}, per patch {patch_gain:.2f}")
    test = Subset(sets.test, range(min(images, len(sets.test))))
    # the patch embedding's input is the image; hooked on its parent, the same in all three
    noise_targets = ["patch_embed"] + [t for t in targets if t != "patch_embed.proj"]
    out = {}
    for name, model in zip(MODELS, (baseline, per_pixel, per_patch), strict=True):
        scores = [evaluate(model, test, 500)["acc1"]]
        for sigma, where in ((0.2, ["patch_embed"]), (0.5, ["patch_embed"]), (0.5, noise_targets)):
            with feature_noise(model, sigma, seed=0, targets=where):
                scores.append(evaluate(model, test, 500)["acc1"])
        out[name] = scores
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")
    torch.manual_seed(0)
    results = []
    for exp, sets, seed_dir in run_seeds(args.runs):
        with torch.no_grad():
            results.append(run_seed(exp, sets, seed_dir, args.images))
        row = " | ".join(" / ".join(f"{v:.2f}" for v in results[-1][m]) for m in MODELS)
        print(f"{seed_dir.parent.name}/{seed_dir.name}: {row}", flush=True)
    print(f"\n{len(results)} seeds; mean acc@1\n")
    print(mean_table(results, MODELS, COLUMNS))
    print(f"\n{len(results)} seeds; paired difference (p)\n")
    pairs = [("per_pixel", "baseline"), ("per_patch", "baseline"), ("per_patch", "per_pixel")]
    print(paired_table(results, pairs, COLUMNS))


if __name__ == "__main__":
    main()
