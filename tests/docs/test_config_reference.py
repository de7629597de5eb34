"""The generated configuration reference lists exactly the keys of the config dataclasses."""

from __future__ import annotations

import dataclasses
import re

import pytest

from denoiserep import docgen
from denoiserep.tasks.registry import get_task, task_names


def _field_value(f: dataclasses.Field, default=None):
    """Field ``f``'s value in ``default`` (an instance), else the field's own default."""
    if default is not None:
        return getattr(default, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _keys(cls: type, default=None, prefix: str = "") -> set[str]:
    """Every dotted key of a config dataclass, walked here independently of docgen."""
    out = set()
    for f in dataclasses.fields(cls):
        value = _field_value(f, default)
        out.add(prefix + f.name)
        if dataclasses.is_dataclass(value):
            out |= _keys(type(value), value, prefix + f.name + ".")
    return out


@pytest.fixture(scope="module")
def reference() -> str:
    return docgen.config_reference()


def test_every_key_in_the_reference_is_a_field_and_vice_versa(reference):
    listed = docgen.reference_keys(reference)
    for name in task_names():
        cls = get_task(name).Config
        keys = listed[name]
        if not keys:  # "Same keys as": the section of the command with the same config class
            same = re.search(
                rf"## `denoiserep {name}`\n\nSame keys as `denoiserep (\w+)`", reference
            )
            assert same, name
            keys = listed[same.group(1)]
        assert keys == _keys(cls), (name, sorted(keys ^ _keys(cls)))


def test_every_key_has_a_type_default_and_meaning(reference):
    keys_part = reference.split("## Classification datasets")[0]
    rows = [line for line in keys_part.splitlines() if re.match(r"\| `[\w.]+` \|", line)]
    assert len(rows) > 300
    for row in rows:
        masked = re.sub(r"`[^`]*`", lambda m: "C" * len(m.group()), row)  # code spans may hold |
        bounds = [i for i, ch in enumerate(masked) if ch == "|" and masked[i - 1] != "\\"]
        cells = [row[a + 1 : b].strip() for a, b in zip(bounds, bounds[1:], strict=False)]
        assert len(cells) == 5, row
        assert cells[1] and cells[4], row  # type and meaning
        assert cells[2] or cells[1].startswith("section"), row  # default


def test_packaged_values_are_what_the_command_reads(reference):
    """The "packaged file" column: bench.yaml's device / export, not BenchConfig's defaults."""
    bench = reference.split("## `denoiserep bench`")[1].split("\n## ")[0]
    device = next(line for line in bench.splitlines() if line.startswith("| `device` |"))
    assert "`cpu`" in device and "`auto`" in device
    export = next(line for line in bench.splitlines() if line.startswith("| `export` |"))
    assert "`false`" in export and "`true`" in export


def _classes(cls: type, default=None, found=None) -> dict[str, type]:
    """Every config dataclass reachable from ``cls`` (sections and their bases), by both names."""
    found = {} if found is None else found
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            found[klass.__name__] = klass
            found[f"{klass.__module__}.{klass.__qualname__}"] = klass
    for f in dataclasses.fields(cls):
        value = _field_value(f, default)
        if dataclasses.is_dataclass(value):
            _classes(type(value), value, found)
    return found


def test_meanings_table_names_only_real_fields():
    classes: dict[str, type] = {}
    for name in task_names():
        classes.update(_classes(get_task(name).Config))
    for key in docgen.MEANINGS:
        owner, _, field = key.rpartition(".")
        assert owner in classes, key
        assert field in {f.name for f in dataclasses.fields(classes[owner])}, key
