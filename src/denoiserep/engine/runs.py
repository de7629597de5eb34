"""Run folders: one config per folder, never silently overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from .dist import barrier, is_main


class RunFolderConflict(ValueError):
    """The output folder already holds a different run."""


def prepare_run_folder(out: str | Path, config: dict[str, Any], overwrite: bool = False) -> Path:
    """Create ``out`` with ``config.yaml``; reuse it (resume) only if it holds the same config."""
    out = Path(out)
    saved = out / "config.yaml"
    if is_main():
        if overwrite and out.exists():
            shutil.rmtree(out)
        if saved.is_file():
            previous = yaml.safe_load(saved.read_text())
            if previous != config:
                keys = sorted(
                    k for k in set(previous) | set(config) if previous.get(k) != config.get(k)
                )
                raise RunFolderConflict(
                    f"output folder {out} holds a different run (config differs in: "
                    f"{', '.join(keys)}); pass --overwrite to replace it or choose another output"
                )
        elif out.exists() and any(out.iterdir()):
            raise RunFolderConflict(
                f"output folder {out} is not empty and holds no run config; "
                "pass --overwrite to replace it or choose another output"
            )
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(config, sort_keys=False))
    barrier()
    return out
