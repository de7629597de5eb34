"""The ``denoiserep`` command line.

Each command runs a task of :mod:`denoiserep.tasks.registry` (a
:class:`~denoiserep.tasks.contract.Task`: its ``Config`` dataclass, ``run``, ``summarize`` and
the packaged config it runs without ``--config``). Config files are YAML; ``key.sub=value``
arguments override, anywhere on the command line. Errors are one line (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

import yaml

from .engine.config import apply_overrides, from_dict
from .tasks.registry import get_task, task_info, task_names
from .util.config import load_yaml, yaml_error_line

FOLDER_COMMANDS = {
    "report": "rebuild results.md and the plots of a run folder from its results.json",
}
# exception types whose message alone does not say what went wrong
_NAMED = (KeyError, IndexError, AttributeError, TypeError, AssertionError, NotImplementedError)


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (``denoiserep/configs``)."""
    return Path(str(resources.files("denoiserep") / "configs" / name))


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML config file; a missing, unreadable or malformed file is one line
    naming it (and the line of a YAML error)."""
    path = Path(path)
    if not path.is_file() and packaged_config(path.name).is_file() and path.name == str(path):
        path = packaged_config(path.name)  # `--config fashion_vit.yaml`: a shipped config
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path}: {yaml_error_line(e)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: a config must be a YAML mapping of keys")
    return data


def load_task_config(cls: type, path: str | Path | None, overrides: list[str], output: str | None):
    """Defaults <- YAML file <- ``key=value`` overrides <- ``--output``."""
    data = read_config_file(path) if path is not None else {}
    apply_overrides(data, overrides)
    if output is not None:
        data["output"] = output
    if "output" in data and not str(data["output"] or "").strip():
        raise ValueError("the output folder is empty (--output / output); name a folder")
    return from_dict(cls, data)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="denoiserep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"denoiserep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in task_names():
        info = task_info(name)
        description = info.help
        if info.fixed_config:
            description += f"; runs the packaged {info.default_config}"
        elif info.default_config:
            description += f"; without --config: the packaged {info.default_config}"
        p = sub.add_parser(name, help=info.help, description=description)
        if not info.fixed_config:
            p.add_argument(
                "--config",
                metavar="FILE",
                help="YAML config file, or the name of a packaged one (src/denoiserep/configs)",
            )
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key.sub=value",
            help="config overrides, anywhere on the line, e.g. finetune.epochs=5 seeds=[0,1,2]",
        )
        p.add_argument(
            "--output", metavar="DIR", help="output folder (overrides the config's `output`)"
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an output folder that holds a different run (once the new run starts)",
        )
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    for name, help_text in FOLDER_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output folder")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may come before, between or after
    options. Anything else unrecognised is a one-line usage error."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in FOLDER_COMMANDS:
        if extra:
            parser.error(f"{args.command}: unrecognized arguments {' '.join(extra)}")
        return args
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        options = [a for a in unknown if a.startswith("-")]
        what = (
            f"unrecognized option {options[0]}"
            if options
            else f"{unknown[0]!r} is neither an option nor a key.sub=value override"
        )
        parser.error(f"{args.command}: {what}")
    args.overrides = list(args.overrides) + extra
    return args


def worker_error_message(message: str) -> str:
    """The original error of an exception a DataLoader worker process re-raised.

    Torch re-raises it in the main process as "Caught ValueError in DataLoader worker
    process 0." followed by the worker's whole traceback; the last line of that traceback
    (without its exception type) is what the user needs.
    """
    lines = message.splitlines()
    starts = [
        i
        for i, line in enumerate(lines)
        if line.lstrip().startswith(("Traceback", "Original Traceback"))
    ]
    if not starts:
        return lines[0] if lines else message
    for line in lines[starts[-1] + 1 :]:
        if line and not line.startswith((" ", "\t")):
            kind, sep, text = line.partition(": ")
            if sep and kind.replace(".", "").replace("_", "").isalnum():
                return text.strip()
            return line.strip()
    return lines[0]


def error_line(e: BaseException) -> str:
    """Any exception as one line: its message's first line (a worker's original error)."""
    message = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        message = e.args[0]  # not its repr
    if "in DataLoader worker process" in message:
        message = worker_error_message(message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0] + (" (--debug shows the rest)" if len(lines) > 1 else "")
    return f"{type(e).__name__}: {text}" if isinstance(e, _NAMED) else text


def rebuild_command(args: argparse.Namespace) -> int:
    """``denoiserep report RUN_DIR``: rewrite the run's tables and plots, print its table."""
    from .tasks.rebuild import rebuild_report

    report = rebuild_report(args.run_dir)
    print(get_task(report["task"]).summarize(report))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from .engine import dist
    from .engine.runs import run_scope

    if args.command in FOLDER_COMMANDS:
        return rebuild_command(args)
    task, info = get_task(args.command), task_info(args.command)
    config = getattr(args, "config", None)
    if info.default_config and (info.fixed_config or config is None):
        config = packaged_config(info.default_config)
    cfg = load_task_config(task.Config, config, list(args.overrides), args.output)
    with run_scope():  # a run that fails before it started gives its folder back as it was
        report = task.run(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    if dist.is_main():
        print(task.summarize(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        print(f"denoiserep {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
