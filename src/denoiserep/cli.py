"""The ``denoiserep`` command: ``demo``, ``classify`` (and the other task pipelines)."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import yaml

from .engine.config import apply_overrides, from_dict


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (``denoiserep/configs``)."""
    return Path(str(resources.files("denoiserep") / "configs" / name))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides, e.g. finetune.epochs=5 data.name=fashion_mnist",
    )
    p.add_argument("--output", help="output folder (overrides the config's `output`)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder that holds a different run",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _load(cls: type, path: str | Path | None, args: argparse.Namespace):
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    if path and not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    apply_overrides(data, list(args.overrides))
    if args.output:
        data["output"] = args.output
    return from_dict(cls, data)


def _classify(args: argparse.Namespace, config: str | Path | None) -> int:
    from .classification.protocol import ClassifyConfig, run_classification
    from .classification.report import markdown_table

    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file {config} not found")
    cfg = _load(ClassifyConfig, config, args)
    report = run_classification(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    from .engine import dist

    if dist.is_main():
        print(markdown_table(report))
        print(
            f"results: {Path(cfg.output) / 'results.json'}, {Path(cfg.output) / 'results.md'}, "
            f"{Path(cfg.output) / 'curves.png'}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denoiserep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: DenoiseRep on scikit-learn digits (~1 min)")
    _add_common(demo)
    cls = sub.add_parser("classify", help="classification protocol: baseline, control, DenoiseRep")
    cls.add_argument("--config", help="YAML config (see src/denoiserep/configs)")
    _add_common(cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _classify(args, packaged_config("digits_demo.yaml"))
        if args.command == "classify":
            return _classify(args, args.config)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
