"""A griffe extension for the documentation site: Sphinx roles in docstrings become code spans.

The docstrings use ``:func:`fuse``` / ``:class:`~denoiserep.DenoiseConfig``` (as ``help()``
and IDEs show them); mkdocstrings does not read Sphinx roles, so the API reference would print
them literally. Each becomes a code span of the name (not a link: many name internal modules
the reference does not document). ``mkdocs.yml`` loads this file.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc):`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its name."""
    return ROLE.sub(lambda match: f"`{match.group(1).strip()}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
