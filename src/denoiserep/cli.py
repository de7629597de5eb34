"""The ``denoiserep`` command line.

Each pipeline is a module exposing ``Config`` (a dataclass), ``run(cfg, overwrite, progress)``
returning a report dict, ``summarize(report) -> str`` and ``DEFAULT_CONFIG`` (a file name in
``denoiserep/configs`` or None). Config files are YAML; ``key.sub=value`` arguments override.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import resources
from pathlib import Path

import yaml

from .engine.config import apply_overrides, from_dict

COMMANDS = {
    "demo": ("denoiserep.classification.protocol", "the main job: DenoiseRep on sklearn digits"),
    "classify": (
        "denoiserep.classification.protocol",
        "classification: baseline, control and DenoiseRep arms",
    ),
    "ablate": (
        "denoiserep.classification.ablation",
        "classification ablation: DenoiseRep variants against one control arm",
    ),
    "reid": ("denoiserep.reid.protocol", "re-identification: baseline, control and DenoiseRep"),
    "detect": ("denoiserep.dense.detection", "detection (Faster/Mask R-CNN) with DenoiseRep"),
    "segment": ("denoiserep.dense.segmentation", "segmentation (FCN/DeepLabV3) with DenoiseRep"),
    "bench": ("denoiserep.bench.run", "inference/training cost of fused vs baseline models"),
}
DEMO_CONFIG = "digits_demo.yaml"


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (``denoiserep/configs``)."""
    return Path(str(resources.files("denoiserep") / "configs" / name))


def load_task_config(cls: type, path: str | Path | None, overrides: list[str], output: str | None):
    """Defaults <- YAML file <- ``key=value`` overrides <- ``--output``."""
    data = {}
    if path is not None:
        path = Path(path)
        if not path.is_file() and packaged_config(path.name).is_file() and path.name == str(path):
            path = packaged_config(path.name)  # `--config fashion_vit.yaml`: a shipped config
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping")
    apply_overrides(data, overrides)
    if output:
        data["output"] = output
    return from_dict(cls, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denoiserep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name != "demo":
            p.add_argument("--config", help="YAML config (examples in src/denoiserep/configs)")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key.sub=value",
            help="config overrides, e.g. finetune.epochs=5 seeds=[0,1,2]",
        )
        p.add_argument("--output", help="output folder (overrides the config's `output`)")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an output folder that holds a different run",
        )
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def run_command(args: argparse.Namespace) -> int:
    module = importlib.import_module(COMMANDS[args.command][0])
    config = getattr(args, "config", None)
    if args.command == "demo":
        config = packaged_config(DEMO_CONFIG)
    elif config is None and getattr(module, "DEFAULT_CONFIG", None):
        config = packaged_config(module.DEFAULT_CONFIG)
    cfg = load_task_config(module.Config, config, list(args.overrides), args.output)
    report = module.run(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    from .engine import dist

    if dist.is_main():
        print(module.summarize(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        print(
            "interrupted; rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        print(f"denoiserep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
