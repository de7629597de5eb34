"""Reference pages generated from the code, so that they cannot drift from it.

- :func:`cli_reference`: every ``denoiserep`` command and the options its argument parser
  really takes (``denoiserep.cli.build_parser``);
- :func:`config_reference`: every configuration key of every command, read from the config
  dataclasses (type, default, meaning, and the value the command's packaged default config
  file sets);
- :func:`api_reference`: one mkdocstrings block per name in ``denoiserep.__all__`` and
  ``denoiserep.models.__all__``.

``mkdocs.yml`` loads this file as a hook: a page containing ``<!-- generated: cli -->``,
``<!-- generated: config -->`` or ``<!-- generated: api -->`` gets that text at build time.
A key's meaning comes from its dataclass's docstring (a Google ``Args:`` entry, else the first
sentence naming the key in double backticks), else from a ``#`` comment on its line, else from
:data:`MEANINGS` below (whose entries a test checks against the dataclasses).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

import yaml

from denoiserep.docgen.meanings import MEANINGS  # noqa: E402 - after the docstring

SHARED = ("TrainConfig", "DenoiseConfig", "RobustnessConfig")
GENERATED = re.compile(r"<!-- generated: (\w+) -->")


# -- CLI --------------------------------------------------------------------------------------
def subcommands(parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Each ``denoiserep`` command's own parser, by name, in the order of ``--help``."""
    from denoiserep.cli import build_parser

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the denoiserep parser has no subcommands")


def parser_options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``(flags, help)`` of every argument a parser takes (``-h`` included), in order."""
    rows = []
    for action in parser._actions:
        text = action.help or ""
        if action.option_strings:
            flags = ", ".join(action.option_strings)
            if action.nargs != 0:
                flags += " " + (action.metavar or action.dest.upper())
        elif isinstance(action, argparse._SubParsersAction):
            flags = "COMMAND"
            text = text or "one of: " + ", ".join(action.choices)
        else:
            flags = action.metavar or action.dest
            if action.nargs in ("*", "+"):
                flags += " ..."
        rows.append((flags, text.replace("%(prog)s", parser.prog)))
    return rows


def command_help(name: str) -> str:
    """The one-line help of a command, as ``denoiserep --help`` lists it."""
    from denoiserep.cli import FOLDER_COMMANDS
    from denoiserep.tasks.registry import task_info, task_names

    return task_info(name).help if name in task_names() else FOLDER_COMMANDS[name]


def cli_reference() -> str:
    """Markdown: every command, what it runs without ``--config``, and its options."""
    from denoiserep.cli import build_parser
    from denoiserep.tasks.registry import task_info, task_names

    parser = build_parser()
    out = [
        "Generated from the argument parser (`denoiserep.cli.build_parser`); "
        "`denoiserep COMMAND --help` prints the same options.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        "| option | meaning |",
        "| --- | --- |",
    ]
    out += [f"| `{f}` | {_cell(h)} |" for f, h in parser_options(parser)]
    for name, sub in subcommands(parser).items():
        out += ["", f"## `denoiserep {name}`", "", command_help(name) + ".", ""]
        info = task_info(name) if name in task_names() else None
        if info is not None and info.fixed_config:
            out += [f"Always runs the packaged `{info.default_config}`; it takes no `--config`."]
            out += [""]
        elif info is not None and info.default_config:
            out += [
                f"Without `--config` it runs the packaged `{info.default_config}` "
                "(see the [configuration reference](config.md)).",
                "",
            ]
        out += ["| option | meaning |", "| --- | --- |"]
        out += [f"| `{f}` | {_cell(h)} |" for f, h in parser_options(sub)]
    return "\n".join(out) + "\n"


# -- configuration -----------------------------------------------------------------------------
@dataclass
class Key:
    """One configuration key: dotted path, annotation, dataclass default, meaning."""

    path: str
    type: str
    default: Any
    meaning: str
    owner: str  # the dataclass that declares it
    section: str = ""  # a shared section's class name when the key opens one


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _docstring_meanings(cls: type) -> tuple[dict[str, str], list[str]]:
    """A class docstring's ``Args:`` / ``Attributes:`` entries and its sentences."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    found: dict[str, str] = {}
    m = re.search(r"^(Args|Attributes):\n((?:[ \t]+.*\n?|\n)+)", doc, flags=re.M)
    if m:
        for entry in re.split(r"\n(?=    \S)", "\n" + m.group(2)):
            head, sep, text = entry.strip().partition(":")
            if sep:
                for name in head.split(","):
                    found.setdefault(name.strip(), " ".join(text.split()))
        doc = doc[: m.start()] + doc[m.end() :]
    sentences = re.split(r"(?<=[.;])\s+(?=[A-Z`(])", " ".join(doc.split()))
    return found, [s.rstrip(";") for s in sentences]


def _comment_meanings(cls: type) -> dict[str, str]:
    """``name: type = value  # meaning`` comments in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, flags=re.M))


def field_meaning(cls: type, name: str) -> str:
    """What a field means, from the code (see the module docstring for the order)."""
    owners = [
        k
        for k in cls.__mro__
        if dataclasses.is_dataclass(k) and name in k.__dict__.get("__annotations__", {})
    ]
    mentions = ""
    for klass in owners + [k for k in cls.__mro__ if k not in owners]:
        entries, sentences = _docstring_meanings(klass)
        if name in entries:
            return entries[name]
        lead = [s for s in sentences if re.match(rf"(The )?``{name}``", s)]
        if lead:
            return re.sub(rf"^(The )?``{name}``(:\s*|\s+(?=\())?", "", lead[0]).strip()
        for key in (f"{klass.__name__}.{name}", f"{_qualname(klass)}.{name}"):
            if key in MEANINGS:
                return MEANINGS[key]
        comment = _comment_meanings(klass).get(name)
        if comment:
            return comment
        mentions = mentions or next((s for s in sentences if f"``{name}``" in s), "")
    return mentions


def _owner(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_keys(cls: type, prefix: str = "", default: Any = None) -> list[Key]:
    """Every key of config dataclass ``cls``, nested sections flattened to dotted paths.

    ``default``: an instance whose values are the defaults (a section's default can differ
    from its class's, e.g. ``finetune.phases``); None: the fields' own defaults.
    """
    keys = []
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name) if default is not None else _default(f)
        path = prefix + f.name
        owner = _owner(cls, f.name)
        meaning = field_meaning(cls, f.name)
        if dataclasses.is_dataclass(value):
            meaning = meaning or inspect.cleandoc(type(value).__doc__ or "").split("\n\n")[0]
            keys.append(Key(path, type(value).__name__, None, meaning, owner.__name__, "section"))
            keys += config_keys(type(value), path + ".", value)
        else:
            keys.append(Key(path, str(f.type), value, meaning, owner.__name__))
    return keys


def task_configs() -> dict[str, tuple[type, str | None]]:
    """Config class and packaged default config file of every command that runs a config."""
    from denoiserep.tasks.registry import get_task, task_info, task_names

    return {name: (get_task(name).Config, task_info(name).default_config) for name in task_names()}


def _lookup(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return dataclasses.MISSING
        data = data[part]
    return data


def _yaml(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _cell(text: str, code: bool = False) -> str:
    """Table-cell text on one line; ``|`` escaped outside code spans (inside one it is safe)."""
    text = " ".join(str(text).split())
    if code:
        return text
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def config_reference() -> str:
    """Markdown: per command, every key with type, default, packaged value and meaning."""
    from denoiserep.cli import read_config_file

    out = [
        "Generated from the config dataclasses. Keys are set in a YAML file (`--config FILE`) "
        "or as `key.sub=value` arguments; nested sections are dotted paths. *default* is the "
        "dataclass default; *packaged file* is what the command's packaged default config "
        "(used when no `--config` is given) sets, blank where it leaves the default.",
    ]
    seen: dict[type, str] = {}
    for command, (cls, default_file) in task_configs().items():
        if cls in seen:
            out += ["", f"## `denoiserep {command}`", "", f"Same keys as `{seen[cls]}`.", ""]
            if default_file:
                out += [f"Packaged default config: `{default_file}`.", ""]
            continue
        seen[cls] = f"denoiserep {command}"
        packaged = read_config_file(_packaged(default_file)) if default_file else {}
        out += ["", f"## `denoiserep {command}`", ""]
        if default_file:
            out += [f"Packaged default config: `{default_file}`.", ""]
        out += [
            "| key | type | default | packaged file | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key in config_keys(cls):
            if key.section:
                out.append(f"| `{key.path}` | section ({key.type}) | | | {_cell(key.meaning)} |")
                continue
            value = _lookup(packaged, key.path)
            shown = "" if value is dataclasses.MISSING else f"`{_cell(_yaml(value), True)}`"
            out.append(
                f"| `{key.path}` | `{_cell(key.type, True)}` | `{_cell(_yaml(key.default), True)}` "
                f"| {shown} | {_cell(key.meaning)} |"
            )
    out += ["", "## Classification datasets", "", dataset_readers()]
    return "\n".join(out) + "\n"


def dataset_readers() -> str:
    """Markdown: every registered classification reader and the options it takes."""
    from denoiserep.data.classification.registry import get_dataset, list_datasets

    out = ["| `data.name` | reads | `data.options` it takes |", "| --- | --- | --- |"]
    by_function: dict[str, list[str]] = {}
    for name in list_datasets():
        builder = get_dataset(name).builder
        params = inspect.signature(builder).parameters.values()
        options = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        if any(p.kind is p.VAR_KEYWORD for p in params):  # **options: what its docstring lists
            listed = re.search(r"Options \(([^)]*)\)", builder.__doc__ or "")
            same = re.search(r"Options as `(\w+)`", builder.__doc__ or "")
            if listed:
                options += re.findall(r"`(\w+)`", listed.group(1))
            elif same:
                options += by_function.get(same.group(1), [])
        by_function[builder.__name__] = options
        options = [f"`{o}`" for o in options if not o.endswith("_transform")]
        doc = " ".join(inspect.cleandoc(builder.__doc__ or "").split())
        doc = re.split(r"(?<=[.:])\s", doc)[0].rstrip(":")
        out.append(f"| `{name}` | {_cell(doc)} | {', '.join(options) or 'none'} |")
    return "\n".join(out) + "\n"


def _packaged(name: str):
    from denoiserep.cli import packaged_config

    return packaged_config(name)


def reference_keys(markdown: str) -> dict[str, set[str]]:
    """The keys a generated configuration reference lists, per command (for tests)."""
    keys: dict[str, set[str]] = {}
    command = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            m = re.match(r"## `denoiserep (\w+)`", line)
            command = m.group(1) if m else None
            if command:
                keys[command] = set()
            continue
        m = re.match(r"\| `([\w.]+)` \|", line)
        if m and command:
            keys[command].add(m.group(1))
    return keys


# -- API ---------------------------------------------------------------------------------------
def api_reference() -> str:
    """Markdown: an mkdocstrings block for every public name."""
    import denoiserep
    import denoiserep.models

    out = []
    for module in (denoiserep, denoiserep.models):
        title = "`denoiserep` (`import denoiserep as dr`)" if module is denoiserep else None
        out += ["", f"## {title or '`' + module.__name__ + '`'}", ""]
        for name in sorted(module.__all__, key=str.lower):
            out += [f"::: {module.__name__}.{name}", ""]
    return "\n".join(out) + "\n"


GENERATORS = {"cli": cli_reference, "config": config_reference, "api": api_reference}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs hook: fill ``<!-- generated: NAME -->`` markers at build time."""
    return GENERATED.sub(lambda m: GENERATORS[m.group(1)](), markdown)
