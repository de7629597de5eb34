"""Run folders: one run per folder, claimed only once the run has started, never lost.

A run folder holds ``config.yaml`` (the run's configuration) and the marker file
``.denoiserep-run`` (``state: pending`` until the run has started, then ``state: started``).

- The run's identity is its configuration without ``output``: the same run may be reached as
  ``out/a``, ``./out/a``, an absolute path, or after the folder was moved.
- A folder whose run never started (pending: the configuration, model or data failed) is
  nobody's: the next run takes it, whatever its configuration.
- A started run is resumed by the same configuration and refused to any other, unless
  ``overwrite``. Overwriting moves the old folder aside (``.<name>.denoiserep-replaced``
  beside it) and deletes it only when the new run has started; if the new run fails before,
  the old folder is put back as it was. A crash in between is repaired on the next open.
- A folder is a run only if it carries the marker. A folder that holds anything else (a
  user's files, their own ``config.yaml`` included) is never written into, replaced or
  deleted, even with ``overwrite``.
- An output path that is a symbolic link is followed: the run is written where it points,
  and the link itself is never renamed or removed.

API: ``run = open_run_folder(out, config, overwrite)``; write into ``run.path``; call
``run.started()`` once everything was validated and training begins, or ``run.failed()`` if
the start fails (or use ``with open_run_folder(...) as run:``, which does both). The older
``prepare_run_folder`` returns the path; inside :func:`run_scope` (the command line) its
folder is claimed at the first checkpoint or when the command succeeds, and released if the
command fails first; outside a scope it is claimed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .config import from_dict, to_dict
from .dist import barrier, is_main

CONFIG = "config.yaml"
MARKER = ".denoiserep-run"
ASIDE_SUFFIX = ".denoiserep-replaced"
PENDING, STARTED = "pending", "started"

_open_runs: list[RunFolder] = []  # pending folders of this process
_scopes: list[list[RunFolder]] = []


class RunFolderConflict(ValueError):
    """The output folder already holds a different run, or files that are not a run."""


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same: the configuration without its output path."""
    plain = yaml.safe_load(yaml.safe_dump(config, sort_keys=False)) or {}
    return {k: v for k, v in plain.items() if k != "output"}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                out.extend(_differences(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [prefix.rstrip(".")]


def _write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def _aside(out: Path) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new one has started: beside
    ``out``, hidden, and within the file system's 255-byte name limit whatever ``out``'s."""
    name = f".{out.name}{ASIDE_SUFFIX}"
    if len(name.encode()) > 255:
        digest = hashlib.sha1(out.name.encode()).hexdigest()[:12]
        name = f".{out.name[:64]}.{digest}{ASIDE_SUFFIX}"
    return out.parent / name


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _inspect(out: Path) -> str:
    """``missing``, ``file``, ``empty``, ``pending``, ``started`` or ``foreign``."""
    if not out.exists():
        return "missing"
    if not out.is_dir():
        return "file"
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return "empty"
    if MARKER in entries:
        marker = _read_yaml(out / MARKER)
        state = marker.get("state") if isinstance(marker, dict) else None
        return PENDING if state == PENDING else STARTED  # unreadable: keep it (started)
    return "foreign"  # no marker: the user's folder (a config.yaml of theirs included)


def _saved_identity(out: Path, schema: type | None = None) -> dict[str, Any]:
    """The identity of the run saved in ``out``. With ``schema`` (the run's config dataclass)
    the saved config is read through it first, so that a key added to the package since the
    run started counts as its default, not as a difference; a saved config the schema no
    longer reads is compared as it is."""
    saved = _read_yaml(out / CONFIG)
    if not isinstance(saved, dict):
        return {}
    if schema is not None:
        try:
            saved = to_dict(from_dict(schema, saved))
        except (TypeError, ValueError):
            pass
    return run_identity(saved)


def _clear(out: Path) -> None:
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _recover(out: Path) -> None:
    """Finish or undo an ``overwrite`` that a crash interrupted."""
    aside = _aside(out)
    if not aside.exists():
        return
    state = _inspect(out)
    if state == STARTED:  # the new run had started: the old one was to be deleted
        shutil.rmtree(aside)
    elif state in ("missing", "empty", PENDING):  # it never started: put the old one back
        if out.exists():
            shutil.rmtree(out)
        os.rename(aside, out)
        print(f"denoiserep: restored {out} (an --overwrite had not started)", file=sys.stderr)
    else:
        raise RunFolderConflict(
            f"{aside} holds the run an interrupted --overwrite replaced, and {out} holds "
            "other files; move one of them away"
        )


class RunFolder:
    """A run's output folder; ``started()`` claims it, ``failed()`` gives it back as it was."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        state: str,
        aside: Path | None = None,
        existed: bool = True,
    ) -> None:
        self.path = path
        self.config = config
        self.state = state
        self._aside = aside
        self._existed = existed
        if state == PENDING:
            _open_runs.append(self)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, state={self.state!r})"

    @property
    def is_started(self) -> bool:
        return self.state == STARTED

    def started(self) -> None:
        """The run has really started: claim the folder and delete the run it replaces."""
        if self.state != PENDING:
            return
        self.state = STARTED
        if self in _open_runs:
            _open_runs.remove(self)
        if not is_main():
            return
        _write(self.path / MARKER, yaml.safe_dump({"denoiserep_run": 1, "state": STARTED}))
        if self._aside is not None and self._aside.exists():
            shutil.rmtree(self._aside)

    def failed(self) -> None:
        """The run failed before it started: leave the folder as it was before (or none)."""
        if self.state != PENDING:
            return
        self.state = "failed"
        if self in _open_runs:
            _open_runs.remove(self)
        if not is_main():
            return
        if self._aside is not None and self._aside.exists():
            if self.path.exists():
                shutil.rmtree(self.path)
            os.rename(self._aside, self.path)
        elif self._existed:
            if self.path.is_dir():
                _clear(self.path)
        elif self.path.exists():
            shutil.rmtree(self.path)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.started()
        else:
            self.failed()


def open_run_folder(
    out: str | Path, config: dict[str, Any], overwrite: bool = False, schema: type | None = None
) -> RunFolder:
    """Prepare ``out`` for the run ``config`` (pending until ``started()``); see the module doc.

    ``schema``, the dataclass ``config`` was made from, lets a run started by an older version
    of the package resume although the package has added config keys since (with their
    defaults). Raises :class:`RunFolderConflict` if ``out`` holds a started run of another
    configuration (without ``overwrite``) or files that are not a run (always).
    """
    out = Path(out)
    if out.is_symlink():  # follow it: the link stays, the run goes where it points
        out = Path(os.path.realpath(out))
    identity = run_identity(config)
    text = yaml.safe_dump(config, sort_keys=False)
    pending = yaml.safe_dump({"denoiserep_run": 1, "state": PENDING})
    state, aside, existed = PENDING, None, True
    if is_main():
        _recover(out)
        found = _inspect(out)
        if found == "file":
            raise RunFolderConflict(f"output {out} is a file, not a folder; choose another output")
        if found == "foreign":
            example = sorted(p.name for p in out.iterdir())[0]
            raise RunFolderConflict(
                f"output folder {out} holds files that are not a denoiserep run (e.g. {example}; "
                f"no {MARKER} marker): it is never written into or replaced, not even with "
                f"--overwrite; choose another output, e.g. --output {out / 'run'}"
            )
        if found == STARTED:
            previous = _saved_identity(out, schema)
            if previous == identity and not overwrite:  # the same run (maybe moved): resume
                _write(out / MARKER, yaml.safe_dump({"denoiserep_run": 1, "state": STARTED}))
                _write(out / CONFIG, text)
                state = STARTED
            elif not overwrite:
                keys = _differences(previous, identity)
                raise RunFolderConflict(
                    f"output folder {out} holds a different run (config differs in: "
                    f"{', '.join(keys)}); pass --overwrite to replace it or choose another output"
                )
            else:  # replaced once the new run has started
                aside = _aside(out)
                os.rename(out, aside)
                out.mkdir()
        elif found == PENDING:  # a run that never started: nobody's
            existed = False  # a failed start removes it
            if overwrite or _saved_identity(out, schema) != identity:
                _clear(out)
        else:
            existed = found == "empty"
            out.mkdir(parents=True, exist_ok=True)
        if state == PENDING:
            _write(out / MARKER, pending)  # first: a folder with our marker is ours
            _write(out / CONFIG, text)
    barrier()
    run = RunFolder(out, config, state if is_main() else PENDING, aside, existed)
    for scope in _scopes:
        scope.append(run)
    return run


def prepare_run_folder(
    out: str | Path, config: dict[str, Any], overwrite: bool = False, schema: type | None = None
) -> Path:
    """Older API: open ``out`` for ``config`` and return its path.

    Inside :func:`run_scope` the folder is claimed at the run's first checkpoint or when the
    scope ends without error, and given back as it was if the scope fails first; outside a
    scope it is claimed at once.
    """
    run = open_run_folder(out, config, overwrite, schema)
    if not _scopes:
        run.started()
    return run.path


def note_started(path: str | Path) -> None:
    """Something durable (a checkpoint) was written at ``path``: claim the folders above it."""
    path = Path(path).resolve()
    for run in list(_open_runs):
        root = run.path.resolve()
        if path == root or root in path.parents:
            run.started()


@contextlib.contextmanager
def run_scope() -> Iterator[list[RunFolder]]:
    """Claim the run folders opened inside when the block succeeds; give them back if it fails."""
    runs: list[RunFolder] = []
    _scopes.append(runs)
    try:
        yield runs
    except BaseException:
        for run in runs:
            try:
                run.failed()
            except OSError as e:  # never hide the error that stopped the run
                print(f"denoiserep: warning: could not restore {run.path}: {e}", file=sys.stderr)
        raise
    else:
        for run in runs:
            run.started()
    finally:
        _scopes.remove(runs)
