"""Which DenoiseRep phase trains in which epoch."""

from __future__ import annotations

SCHEDULES = ("none", "denoiser", "backbone", "joint", "alternating")
# the phases each schedule asks for: every one of them must get at least one epoch
REQUESTED = {
    "none": (),
    "denoiser": ("denoiser",),
    "backbone": ("backbone",),
    "joint": ("joint",),
    "alternating": ("denoiser", "backbone"),
}


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
    if denoiser_epochs < 0:
        raise ValueError(f"denoiser_epochs must be >= 0, got {denoiser_epochs}")
    if schedule == "none":
        return None
    if epoch < denoiser_epochs:
        return "denoiser"
    if schedule == "alternating":
        if every < 1:
            raise ValueError(f"alternate_every must be >= 1, got {every}")
        return ("denoiser", "backbone")[((epoch - denoiser_epochs) // every) % 2]
    return schedule


def epochs_per_phase(
    schedule: str, epochs: int, denoiser_epochs: int = 0, every: int = 1
) -> dict[str, int]:
    """How many of ``epochs`` each phase gets, e.g. ``{"denoiser": 2, "joint": 0}``."""
    counts = dict.fromkeys(REQUESTED[schedule] if schedule in REQUESTED else (), 0)
    for epoch in range(epochs):
        phase = phase_for_epoch(schedule, epoch, denoiser_epochs, every)
        if phase is not None:
            counts[phase] = counts.get(phase, 0) + 1
    return counts


def schedule_problem(
    schedule: str, epochs: int, denoiser_epochs: int = 0, every: int = 1, where: str = ""
) -> str | None:
    """Why this schedule leaves a phase it asks for without an epoch, or None if it does not.

    A schedule that trains (``epochs > 0``) must give each of its phases an epoch: with
    ``phases=joint, epochs=2, denoiser_epochs=2`` the label-free epochs take both epochs and
    the "joint" arm is the baseline plus denoisers that never met a label.
    """
    if schedule == "none" or epochs <= 0:
        return None
    counts = epochs_per_phase(schedule, epochs, denoiser_epochs, every)
    starved = [p for p in REQUESTED[schedule] if counts.get(p, 0) == 0]
    if not starved:
        return None
    prefix = f"{where}." if where else ""
    split = ", ".join(f"{p} {n}" for p, n in counts.items())
    every_text = f", {prefix}alternate_every={every}" if schedule == "alternating" else ""
    return (
        f"{prefix}phases={schedule} with {prefix}epochs={epochs}, "
        f"{prefix}denoiser_epochs={denoiser_epochs}{every_text} gives the "
        f"{' and '.join(starved)} phase no epoch (epochs per phase: {split}); "
        f"raise {prefix}epochs or lower {prefix}denoiser_epochs"
    )
