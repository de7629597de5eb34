"""Which DenoiseRep phase trains in which epoch."""

from __future__ import annotations

SCHEDULES = ("none", "denoiser", "backbone", "joint", "alternating")


def phase_for_epoch(
    schedule: str, epoch: int, denoiser_epochs: int = 0, every: int = 1
) -> str | None:
    """The phase of ``epoch`` (0-based), or None for a plain (unconverted) run.

    ``denoiser_epochs`` label-free epochs come first; then ``schedule`` applies:
    ``alternating`` switches between ``denoiser`` and ``backbone`` every ``every`` epochs,
    starting with ``denoiser`` (the authors' trick).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"phase schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "none":
        return None
    if epoch < denoiser_epochs:
        return "denoiser"
    if schedule == "alternating":
        if every < 1:
            raise ValueError(f"alternate_every must be >= 1, got {every}")
        return ("denoiser", "backbone")[((epoch - denoiser_epochs) // every) % 2]
    return schedule
