"""Errors and warnings as one line: what a user reads before ``--debug``."""

from __future__ import annotations

import logging

#: Messages about weights and checkpoints (the model being built) go to this logger.
log = logging.getLogger("denoiserep.models")


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its type's name when it has none), cut to
    ``limit`` characters when given."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if limit is not None and len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line


_said: set[str] = set()


def warn_once(message: str) -> None:
    """Log a warning the first time it occurs in this process (a run builds its model, and
    reads its checkpoint, once per seed: the user needs to read it once)."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


def short_cause(error: BaseException, limit: int = 120) -> str:
    """``Type: first sentence`` of an exception, on one line, at most about ``limit`` chars."""
    text = " ".join(str(error).split())
    sentence = text.split(". ")[0]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__
