"""The task contract and registry: what a ``denoiserep`` command runs.

A *task* (``classify``, ``ablate``, ``reid``, ``detect``, ``segment``, ``bench``, ``probe``) is
one module ending with one :class:`~denoiserep.tasks.contract.Task` object, listed once in
:mod:`denoiserep.tasks.registry` (or added by another package through the ``denoiserep.tasks``
entry-point group). The CLI and ``denoiserep report`` read only the registry.
"""

from denoiserep.tasks.contract import Task
from denoiserep.tasks.registry import get_task, register_task, task_info, task_names

__all__ = ["Task", "get_task", "register_task", "task_info", "task_names"]
