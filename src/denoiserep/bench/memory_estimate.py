"""``denoiserep memory``: per-GPU training memory of models, with and without DenoiseRep and
sharding, estimated on the meta device (nothing is allocated, ViT-H included).

The arithmetic is ``engine.memory.estimate_memory`` (its docstring and docs/guide/memory.md
give the counting rules). Added through the task contract: this module, a packaged config
(``memory.yaml``) and one registry line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from denoiserep.engine.config import to_dict
from denoiserep.engine.memory import estimate_memory, meta_model
from denoiserep.engine.report import write_json
from denoiserep.engine.runs import prepare_run_folder
from denoiserep.tasks.contract import Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 1024**3
VIT_MODELS = ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224")


@dataclass
class MemoryConfig:
    """Which models, at which per-GPU batch, compute dtype and shard counts."""

    models: list[str] = field(default_factory=lambda: list(VIT_MODELS))  # timm names
    num_classes: int = 1000  # the classifier head's classes
    image_size: int = 224  # input side in pixels
    batch_size: int = 32  # images per GPU per forward (a micro-batch under accumulation)
    dtype: str = "bfloat16"  # compute dtype of the activations: float32, bfloat16, float16
    shards: list[int] = field(default_factory=lambda: [1, 8])  # GPUs: 1 = DDP, N > 1 = fsdp
    output: str = "runs/memory"  # output folder (results.json, results.md)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.batch_size < 1 or self.image_size < 1 or self.num_classes < 1:
            raise ValueError("batch_size, image_size and num_classes must be >= 1")
        if not self.shards or min(self.shards) < 1:
            raise ValueError(f"shards must be GPU counts >= 1, got {self.shards}")


def estimate_rows(cfg: MemoryConfig) -> list[dict[str, Any]]:
    """One row per model, with and without DenoiseRep, per shard count: bytes of each part."""
    rows = []
    for name in cfg.models:
        model = meta_model(name, num_classes=cfg.num_classes, img_size=cfg.image_size)
        example = torch.empty(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device="meta")
        for denoise in (False, True):
            for shards in cfg.shards:
                est = estimate_memory(
                    model, example, denoise=denoise, dtype=DTYPES[cfg.dtype], shards=shards
                )
                row = dict(model=name, denoiserep=denoise, shards=shards, **asdict(est))
                rows.append(dict(row, total=est.total))
    return rows


def run_memory(cfg: MemoryConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Estimate every row of ``cfg``; write results.json / results.md; return the report."""
    rows = estimate_rows(cfg)
    out = prepare_run_folder(cfg.output, to_dict(cfg), overwrite, type(cfg))
    report = {"task": "memory", "config": to_dict(cfg), "rows": rows}
    write_reports(report, out)
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """GiB per GPU of each part, one line per model, arm and shard count."""
    c = report["config"]
    lines = [
        f"estimated training memory per GPU (GiB): AdamW, float32 weights, {c['dtype']} "
        f"activations, batch {c['batch_size']} per GPU at {c['image_size']} px",
        "",
        "| model | DenoiseRep | GPUs | params | denoisers | grads | AdamW | activations "
        "| gathered | total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    parts = ("params", "denoisers", "gradients", "optimizer", "activations", "gathered", "total")
    for r in report["rows"]:
        how = "1 (ddp)" if r["shards"] == 1 else f"{r['shards']} (fsdp)"
        cells = " | ".join(f"{r[p] / GIB:.2f}" for p in parts)
        arm = "yes" if r["denoiserep"] else "no"
        lines.append(f"| {r['model']} | {arm} | {how} | {cells} |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out: Path) -> None:
    """results.json and results.md."""
    write_json(report, out)
    (Path(out) / "results.md").write_text(markdown_table(report))


TASK = Task(
    name="memory",
    help="estimated per-GPU training memory (ViT-B/L/H), with and without DenoiseRep and fsdp",
    Config=MemoryConfig,
    run=run_memory,
    table=markdown_table,
    default_config="memory.yaml",
    writer=write_reports,
)
