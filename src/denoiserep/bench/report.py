"""The Markdown report of a bench run, and the targets its results are held to."""

from __future__ import annotations

from typing import Any

from .config import LATENCY_TOLERANCE, TRAIN_MEMORY_LIMIT, TRAIN_STEP_LIMIT


def evaluate_targets(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target checked per model: latency ratio per batch, step and memory ratio per phase."""
    rows = []
    for name, rep in models.items():
        for batch, variants in rep["inference"].items():
            if "fused" in variants:
                ratio = variants["fused"]["latency_ratio"]
                rows.append(
                    {
                        "target": f"fused/baseline inference latency in 1 ± {LATENCY_TOLERANCE}",
                        "model": name,
                        "case": f"batch {batch}",
                        "value": ratio,
                        "met": abs(ratio - 1) <= LATENCY_TOLERANCE,
                    }
                )
        for phase, row in rep.get("train", {}).get("variants", {}).items():
            if phase == "baseline":
                continue
            checks = [("step_ratio", "train step", TRAIN_STEP_LIMIT[phase])]
            checks.append(("peak_ratio", "train peak memory", TRAIN_MEMORY_LIMIT))
            for key, what, limit in checks:
                if row[key] is not None:
                    rows.append(
                        {
                            "target": f"DenoiseRep/baseline {what} <= {limit}",
                            "model": name,
                            "case": f"phase {phase}",
                            "value": row[key],
                            "met": row[key] <= limit,
                        }
                    )
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _inference_table(models: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "### Inference",
        "",
        "| model | batch | variant | params (M) | GFLOPs/image | latency ms (median, IQR) "
        "| × baseline | peak MB | × baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in models.items():
        for batch, rows in rep["inference"].items():
            for v, row in rows.items():
                lines.append(
                    f"| {name} | {batch} | {v} | {rep['params'][v] / 1e6:.3f} | "
                    f"{rep['gflops_per_image'][v]:.3f} | "
                    f"{row['median_ms']:.2f} ({row['iqr_ms']:.2f}) | "
                    f"{row['latency_ratio']:.3f} | {_num(row['peak_mb'], '.1f')} | "
                    f"{_num(row['peak_ratio'], '.3f')} |"
                )
    return lines


def _precision(products: dict[str, str] | None) -> str:
    return ", ".join(f"{p} {dtype}" for p, dtype in products.items()) if products else "-"


def _float32_share(row: dict[str, Any]) -> str:
    if row.get("gflops_float32") is None or not row["gflops_per_step"]:
        return "-"
    return f"{100 * row['gflops_float32'] / row['gflops_per_step']:.1f} %"


def _added_float32(trained: dict[str, dict[str, Any]]) -> list[str]:
    """Of the FLOPs each phase adds to the baseline's step, the share that ran in float32
    (under autocast: the work left off the fast path)."""
    lines = []
    for name, train in trained.items():
        base = train["variants"]["baseline"]
        for v, row in train["variants"].items():
            added = row["gflops_per_step"] - base["gflops_per_step"]
            if v == "baseline" or added <= 0 or row.get("gflops_float32") is None:
                continue
            added32 = row["gflops_float32"] - base["gflops_float32"]
            lines.append(
                f"\n{name}, {v}: of the {added:.2f} GFLOPs it adds to the baseline's step, "
                f"{100 * added32 / added:.1f} % ran in float32."
            )
    return lines


def _training_table(trained: dict[str, dict[str, Any]]) -> list[str]:
    factored = any(t.get("denoiser_optimizer") == "adafactor" for t in trained.values())
    update = "AdamW update, D's with Adafactor" if factored else "AdamW update"
    lines = [
        f"### Training (one step: forward, loss, backward, {update})",
        "",
        "Products: W·A_t the fused weight of a training forward, D·x_t the noise regression; "
        "the export (`dr.fuse`) always computes W·A_t in float64.",
        "",
        "| model | batch | variant | step ms (median, IQR) | × baseline | peak MB "
        "| × baseline | GFLOPs/step | × baseline | in float32 | products ran in |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, train in trained.items():
        for v, row in train["variants"].items():
            label = v if v == "baseline" else f"DenoiseRep {v}"
            lines.append(
                f"| {name} | {train['batch_size']} | {label} | "
                f"{row['median_ms']:.1f} ({row['iqr_ms']:.1f}) | {row['step_ratio']:.3f} | "
                f"{_num(row['peak_mb'], '.1f')} | {_num(row['peak_ratio'], '.3f')} | "
                f"{row['gflops_per_step']:.2f} | {row['gflops_ratio']:.3f} | "
                f"{_float32_share(row)} | {_precision(row.get('precision'))} |"
            )
    lines += _added_float32(trained)
    for name, train in trained.items():
        # (results.json of bench runs before train.denoiser_optimizer: "denoiser_adamw_mb")
        state = train.get("denoiser_state_mb", train.get("denoiser_adamw_mb"))
        if state is not None:
            base = train["variants"]["baseline"]["peak_mb"]
            share = f"{state / base:.2f}× the baseline's peak" if base else "peak not measured"
            opt = train.get("denoiser_optimizer", "same")
            how = {"same": "AdamW's two moments", "adafactor": "Adafactor's factored moment"}
            lines.append(
                f"\n{name}: the denoisers have {train['denoiser_params'] / 1e6:.1f} M parameters; "
                f"with their gradients and {how[opt]} they hold {state:.0f} MB while they "
                f"train ({share}): a floor for any implementation with this optimizer on D "
                f"(`train.denoiser_optimizer={opt}`)."
            )
    return lines


def _profile_table(trained: dict[str, dict[str, Any]]) -> list[str]:
    """The operators with the most self time in one step of each training variant
    (``train.profile_top``), with their share of that variant's median step."""
    lines = [
        "### Training profile (self time of one step)",
        "",
        "| model | variant | operator | calls | self ms | % of step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, train in trained.items():
        for v, row in train["variants"].items():
            for op in row.get("top_ops") or []:
                share = 100 * op["self_ms"] / row["median_ms"]
                label = op["op"].replace("|", "/")  # keep the Markdown table intact
                lines.append(
                    f"| {name} | {v} | `{label}` | {op['calls']} | {op['self_ms']:.1f} | "
                    f"{share:.1f} |"
                )
    kernels = [
        f"| {name} | {v} | {row['kernels']} | {row['kernel_ms']:.1f} | {row['median_ms']:.1f} "
        f"| {100 * row['kernel_ms'] / row['median_ms']:.0f} |"
        for name, train in trained.items()
        for v, row in train["variants"].items()
        if row.get("kernel_ms") is not None
    ]
    if kernels:  # on a GPU: is the step bound by its kernels or by launching them?
        lines += [
            "",
            "GPU kernels of the profiled step: a kernel time well under the step time leaves "
            "the GPU waiting on the host to launch them.",
            "",
            "| model | variant | kernels | kernel ms | median step ms | kernel time % of step |",
            "| --- | --- | --- | --- | --- | --- |",
            *kernels,
        ]
    return lines


def _checks_table(models: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "### Fusion and deployment checks",
        "",
        "| model | denoised layers | max abs(fused − explicit) | max abs(fused − baseline) "
        "| fused weights with other strides | ONNX max abs diff | torch.export max abs diff "
        "| strict reload |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in models.items():
        check, exp = rep["fusion_check"], rep.get("export", {})
        onnx = _num(exp.get("onnx_max_abs_diff"), ".3g") if exp.get("onnx_ok", True) else "failed"
        tex = exp.get("torch_export_max_abs_diff")
        tex = _num(tex, ".3g") if exp.get("torch_export_ok", True) else "failed"
        reload = {True: "ok", None: "-"}[exp.get("strict_reload_ok")]
        lines.append(
            f"| {name} | {rep['denoise_layers']} | "
            f"{_num(check.get('max_abs_diff_fused_vs_explicit'), '.3g')} | "
            f"{_num(check.get('max_abs_diff_fused_vs_baseline'), '.3g')} | "
            f"{_num(check.get('weights_with_other_strides'), 'd')} | {onnx} | {tex} | {reload} |"
        )
    return lines


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["### Targets", "", "| target | model | case | value | met |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for t in targets:
        met = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['model']} | {t['case']} | {t['value']:.3f} | {met} |")
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """Inference, training, deployment and target tables in Markdown."""
    env, models = report["environment"], report["models"]
    lines = [
        f"Device: {env['device']} ({env['device_name'] or env['processor']}), "
        f"torch {env['torch']}, {env['threads']} thread(s), "
        f"bf16 autocast: {report['config']['bf16']}, "
        f"torch.compile (training): {report['config']['train'].get('compile', False)}. "
        f"Peak memory: {env['memory_method']}.",
        "",
        *_inference_table(models),
    ]
    trained = {n: r["train"] for n, r in models.items() if "train" in r}
    if trained:
        lines += ["", *_training_table(trained)]
        if any(row.get("top_ops") for t in trained.values() for row in t["variants"].values()):
            lines += ["", *_profile_table(trained)]
    lines += ["", *_checks_table(models)]
    if report["targets"]:
        lines += ["", *_targets_table(report["targets"])]
    lines += ["", f"Wall time: {report['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"
