"""Every task by name: the one table the CLI and ``denoiserep report`` read.

Built-in tasks are listed in :data:`BUILTIN` by module path with what ``denoiserep --help``
shows, so listing them imports nothing (a task module imports torch and its models); the
task itself is imported when it runs. Another package adds a task from its own
``pyproject.toml``::

    [project.entry-points."denoiserep.tasks"]
    mytask = "mypkg.mod:TASK"

and :func:`register_task` adds one at run time (tests, notebooks).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from denoiserep.util.errors import first_line

from .contract import Task

ENTRY_POINT_GROUP = "denoiserep.tasks"


@dataclass(frozen=True)
class TaskInfo:
    """What ``denoiserep --help`` shows of a task, and where its :class:`Task` object lives
    (``"module:attribute"``); a test checks each built-in line against its object."""

    target: str
    help: str
    default_config: str | None = None
    fixed_config: bool = False


# name -> where the Task is and what --help says; `demo` is `classify` on digits_demo.yaml
BUILTIN: dict[str, TaskInfo] = {
    "demo": TaskInfo(
        "denoiserep.classification.task:TASK",
        "the demo: DenoiseRep on scikit-learn's digits",
        "digits_demo.yaml",
        fixed_config=True,
    ),
    "classify": TaskInfo(
        "denoiserep.classification.task:TASK",
        "classification: baseline, control and DenoiseRep arms",
        "digits_demo.yaml",
    ),
    "ablate": TaskInfo(
        "denoiserep.classification.ablation:TASK",
        "classification ablation: DenoiseRep variants against one control arm",
        "ablation_fashion.yaml",
    ),
    "reid": TaskInfo(
        "denoiserep.reid.task:TASK",
        "re-identification: baseline, control and DenoiseRep",
        "reid_fashion.yaml",
    ),
    "detect": TaskInfo(
        "denoiserep.dense.detection:TASK",
        "detection (Faster/Mask R-CNN) with DenoiseRep",
        "detect_canvas.yaml",
    ),
    "segment": TaskInfo(
        "denoiserep.dense.segmentation:TASK",
        "segmentation (FCN, DeepLabV3, LR-ASPP, SegFormer) with DenoiseRep",
        "segment_canvas.yaml",
    ),
    "bench": TaskInfo(
        "denoiserep.bench.run:TASK",
        "inference/training cost of fused vs baseline models",
        "bench.yaml",
    ),
    "memory": TaskInfo(
        "denoiserep.bench.memory_estimate:TASK",
        "estimated per-GPU training memory (ViT-B/L/H), with and without DenoiseRep and fsdp",
        "memory.yaml",
    ),
    "probe": TaskInfo(
        "denoiserep.probe.task:TASK",
        "linear-probe accuracy of a frozen (fused) backbone",
        "probe_digits.yaml",
    ),
    "adapt": TaskInfo(
        "denoiserep.adaptation.task:TASK",
        "label-free adaptation to a corrupted domain: DenoiseRep vs BN adaptation and TENT",
        "adapt_fashion.yaml",
    ),
}

_registered: dict[str, Task] = {}  # register_task
_plugins: dict[str, metadata.EntryPoint] | None = None  # entry points, read once


def register_task(task: Task, replace: bool = False) -> Task:
    """Add ``task`` under ``task.name`` (a name already taken is an error unless ``replace``)."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a denoiserep.tasks.Task, got {type(task).__name__}")
    if not replace and task.name in task_names():
        raise ValueError(f"a task named {task.name!r} is already registered")
    _registered[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task added by :func:`register_task` (tests)."""
    _registered.pop(name, None)


def plugins(reload: bool = False) -> dict[str, metadata.EntryPoint]:
    """The ``denoiserep.tasks`` entry points of the installed packages, by name (read once;
    ``reload`` reads them again)."""
    global _plugins
    if _plugins is None or reload:
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
        _plugins = {ep.name: ep for ep in found if ep.name not in BUILTIN}
    return _plugins


def task_names() -> list[str]:
    """Every task's name: built-ins in their order, then entry points, then registered ones."""
    names = list(BUILTIN) + sorted(plugins())
    return names + [n for n in _registered if n not in names]


def _load_plugin(ep: metadata.EntryPoint) -> Task:
    where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
    try:
        task = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plug-in is one line naming it
        raise ValueError(f"task plug-in {where} cannot be loaded: {first_line(e)}") from None
    if not isinstance(task, Task):
        raise ValueError(
            f"task plug-in {where} is a {type(task).__name__}, not a denoiserep.tasks.Task"
        )
    if task.name != ep.name:
        raise ValueError(f"task plug-in {where} names its task {task.name!r}, not {ep.name!r}")
    return task


def get_task(name: str) -> Task:
    """The task run by ``denoiserep NAME`` (imported now); an unknown name is one line
    listing the known ones."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN:
        module_name, _, attribute = BUILTIN[name].target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    if name in plugins():
        return _load_plugin(plugins()[name])
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")


def task_info(name: str) -> TaskInfo:
    """What ``denoiserep --help`` shows of a task; built-ins without importing them. A
    plug-in that cannot be loaded says so in its help (running it gives the error)."""
    if name in BUILTIN and name not in _registered:
        return BUILTIN[name]
    try:
        task = get_task(name)
    except ValueError as e:
        if name not in plugins():
            raise
        return TaskInfo(plugins()[name].value, f"(broken plug-in: {first_line(e, 160)})")
    target = f"{type(task).__module__}:{name}"
    return TaskInfo(target, task.help, task.default_config, task.fixed_config)
