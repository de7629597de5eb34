"""``denoiserep COMMAND --help``, the parser and the generated CLI reference agree."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import denoiserep
from denoiserep import cli, docgen
from denoiserep.tasks.registry import get_task, task_info, task_names


def default_configs() -> dict[str, str]:
    """What each command that takes --config runs without one."""
    infos = {name: task_info(name) for name in task_names()}
    return {
        n: i.default_config for n, i in infos.items() if i.default_config and not i.fixed_config
    }


def _parser_flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _reference_sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## `denoiserep (\w+)`$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _reference_rows(section: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def test_every_command_is_in_the_reference_with_exactly_its_arguments():
    sections = _reference_sections(docgen.cli_reference())
    commands = docgen.subcommands()
    assert list(sections) == list(commands)
    assert set(commands) == set(task_names()) | set(cli.FOLDER_COMMANDS)
    for name, parser in commands.items():
        rows = _reference_rows(sections[name])
        flags = {f.split(" ")[0] for row in rows for f in row.split(", ") if f.startswith("-")}
        assert flags == _parser_flags(parser), (name, flags ^ _parser_flags(parser))
        positionals = {row.split(" ")[0] for row in rows if not row.startswith("-")}
        expected = {a.metavar or a.dest for a in parser._actions if not a.option_strings}
        assert positionals == expected, name


def test_help_lists_every_option_the_command_takes():
    for name, parser in docgen.subcommands().items():
        text = parser.format_help()
        for flag in _parser_flags(parser):
            assert flag in text, (name, flag)
        if name in task_names():
            assert "key.sub=value" in text
        if name in default_configs():
            assert default_configs()[name] in text  # what runs without --config


@pytest.mark.parametrize("argv", [["demo", "--config", "x.yaml"], ["report", "d", "--no-progress"]])
def test_options_a_command_does_not_take_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert "unrecognized" in capsys.readouterr().err


def test_default_configs_are_the_modules_own():
    for name, default in default_configs().items():
        assert get_task(name).default_config == default, name
        assert cli.packaged_config(default).is_file()


def test_version_and_help_from_the_installed_command():
    out = subprocess.run(
        [sys.executable, "-m", "denoiserep", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"denoiserep {denoiserep.__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "denoiserep", "segment", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in _parser_flags(docgen.subcommands()["segment"]):
        assert flag in out.stdout
    assert "LR-ASPP" in out.stdout and "SegFormer" in out.stdout
