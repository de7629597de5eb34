"""Does conversion and fusion stay exact across timm's and torchvision's architectures?

Converts, randomises and fuses a list of timm / torchvision architectures and prints one table.
Results: docs/guide/python.md, "Converting, training, fusing" (the item on what ``convert``
skips). Rerun, from the repository root: ``.venv/bin/python scripts/studies/arch_sweep.py``
(it also takes any timm / torchvision model names, to check an architecture of your own).

For each model: ``dr.convert(model, DenoiseConfig(targets="all"))`` on one image; every D set to
random values with which each step moves its input by about 10 %; then the fused model compared
with the converted model in eval mode (output equal bit for bit?) and, layer by layer, with the
explicit reference (``dr.explicit_denoising``: the reverse step applied to each layer's input,
then the original layer); and the layers ``convert`` skipped, with why.

    .venv/bin/python scripts/studies/arch_sweep.py                 # the default list (about 4 min)
    .venv/bin/python scripts/studies/arch_sweep.py timm:resnet50 tv:swin_t
"""

from __future__ import annotations

import re
import sys
import time
import warnings

import timm
import torch
import torchvision

import denoiserep as dr

TIMM = (
    "resnet18 efficientnet_b0 mobilenetv3_small_100 convnext_atto regnetx_002 densenet121 "
    "vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224 "
    "swinv2_cr_tiny_ns_224 eva02_tiny_patch14_224 mixer_s16_224 poolformer_s12 levit_128s "
    "coat_lite_tiny pvt_v2_b0 maxvit_nano_rw_256 efficientformer_l1 mobilevit_xxs ghostnet_100 "
    "repvgg_a0 fastvit_t8 edgenext_xx_small twins_svt_small xcit_nano_12_p16_224 "
    "crossvit_tiny_240 hrnet_w18_small nfnet_l0 dla34 inception_v3"
).split()
TORCHVISION = (
    "resnet18 vit_b_16 swin_t convnext_tiny efficientnet_b0 regnet_y_400mf mobilenet_v2 "
    "mobilenet_v3_small maxvit_t shufflenet_v2_x0_5 squeezenet1_0 googlenet densenet121 "
    "mnasnet0_5 resnext50_32x4d"
).split()


def build(spec: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """``timm:<name>`` or ``tv:<name>`` with 5 classes, and one image of its input size."""
    source, name = spec.split(":", 1)
    if source == "timm":
        model = timm.create_model(name, num_classes=5)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    elif source == "tv":
        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = torchvision.models.get_model(name, num_classes=5, **extra)
        size = (3, 224, 224)
    else:
        raise ValueError(f"{spec!r}: expected timm:<name> or tv:<name>")
    with torch.no_grad():  # zero-initialised heads would make every output 0
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model.eval(), torch.randn(1, *size)


def check(spec: str) -> str:
    start = time.time()
    torch.manual_seed(0)
    model, x = build(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = dr.convert(model, dr.DenoiseConfig(targets="all"), x)
    skipped = []
    for w in caught:
        hit = re.match(r"DenoiseRep skips (\d+) layer\(s\) (.*?): ", str(w.message))
        if hit:
            skipped.append(f"{hit[1]} {hit[2].split(' (')[0]}")
    layers = dr.denoise_layers(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            # each step k_t D moves its input by about 10 %
            scale = 0.1 / (layer.strength * layer.D.shape[1] ** 0.5)
            layer.D.copy_(torch.randn(layer.D.shape, generator=g) * scale)
        fused = dr.fuse(model)
        converted_out, fused_out = model(x), fused(x)
        fused_layers = outputs(fused, {n: fused.get_submodule(n) for n in layers}, x)
        with dr.explicit_denoising(model):
            explicit_layers = outputs(model, layers, x)
    # every denoised layer's output, fused vs explicit: a network's final output can hardly
    # depend on its input at random initialisation (e.g. torchvision's ShuffleNet, GoogLeNet)
    worst = max(rel_err(fused_layers[n], explicit_layers[n]) for n in layers)
    equal = "yes" if torch.equal(converted_out, fused_out) else "**no**"
    return (
        f"| {spec} | {len(layers)} | {equal} | {worst:.1e} | "
        f"{'; '.join(skipped) or '–'} | {time.time() - start:.0f} |"
    )


def outputs(model: torch.nn.Module, modules: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of each of ``modules`` (name -> module of ``model``) on one forward of x."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out))
        for name, m in modules.items()
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main(specs: list[str]) -> None:
    specs = specs or [f"timm:{n}" for n in TIMM] + [f"tv:{n}" for n in TORCHVISION]
    print(
        "| model | denoised layers | fused == converted (eval) "
        "| fused vs explicit: largest relative error of a denoised layer's output "
        "| skipped by convert | s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for spec in specs:
        try:
            print(check(spec), flush=True)
        except Exception as e:  # noqa: BLE001 - one broken model must not stop the table
            print(
                f"| {spec} | **error** | | | | {type(e).__name__}: {str(e)[:150]} | |", flush=True
            )


if __name__ == "__main__":
    main(sys.argv[1:])
