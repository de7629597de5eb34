"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page,
an unresolved API reference or a docstring griffe cannot parse fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_mkdocs_build_strict(tmp_path):
    # no skip: the docs packages are pinned in requirements-ci.txt (`pip install -e .[docs]`)
    import material  # noqa: F401
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # every page of the nav was written, the generated ones filled in
    for page in ("reference/api", "reference/cli", "reference/config", "reproduce", "faq"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "reference/api/index.html").read_text()
    assert "generated: api" not in api
    import denoiserep
    import denoiserep.models

    for name in denoiserep.__all__ + denoiserep.models.__all__:
        assert f'id="denoiserep.{name}"' in api or f'id="denoiserep.models.{name}"' in api, name
    assert ":func:" not in api and ":class:" not in api  # Sphinx roles rendered (docgen.roles)
    config = (site / "reference/config/index.html").read_text()
    assert "data.root" in config and "model.checkpoint" in config


def test_sphinx_roles_become_code_spans():
    from denoiserep.docgen.roles import plain

    text = "See :func:`fuse`, :class:`~denoiserep.DenoiseConfig` and :py:meth:`A.b` (``x``)."
    assert plain(text) == "See `fuse`, `denoiserep.DenoiseConfig` and `A.b` (``x``)."
