"""Tasks by name: ``task=<name>`` runs the :class:`Task` of module ``neurobridge.tasks.<name>``.

Adding a task is one module and one yaml: ``neurobridge/tasks/<name>.py`` defines
``TASK = Task(name="<name>", ...)`` and ``configs/task/<name>.yaml`` its options (with
``name: <name>``). A task outside this package sets ``task.module`` in its yaml to the module
that defines its ``TASK``. Modules are imported when their task runs, so a task's dependencies
(open_clip, diffusers) are loaded only by the tasks that need them.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

__all__ = ["Task", "get_task", "task_names"]


@dataclass(frozen=True)
class Task:
    """What ``examples/train.py`` needs to run one task.

    Attributes:
        name: the value of ``task.name``.
        build: ``cfg -> (LightningModule, LightningDataModule)`` for a task that trains; the run
            fits, tests (the module needs a ``test_step``) and writes ``metrics.json`` and
            ``checkpoints/last.ckpt``. Under FSDP it is called a second time, after fitting, to
            get an unsharded module for the test.
        run: ``(cfg, run_dir) -> metrics`` for a task that does not train (it writes its own
            outputs); exactly one of ``build`` and ``run`` is set.
        checkpoint_kind: what the task's checkpoints hold (``"masked"``, ``"alignment"``,
            ``"adapter"``, or a name of the task's own): a run resumes only from a checkpoint of
            its kind. The module writes it (``checkpoint_payload(config, kind)`` in its
            ``on_save_checkpoint``); use one constant for both.
        check: ``cfg -> None``, the task's config checks, run before any data is read.
        plots: ``(module, datamodule, run_dir) -> None``, figures written after the test when
            the task's config sets ``plots: true``.
        resume_needs_same_model: refuse ``resume_from`` when the checkpoint's model config
            differs from ``cfg.model`` (tasks whose model comes from ``cfg.model``).
        after_test: ``(module, datamodule, cfg, run_dir) -> metrics``, further scores after the
            test (e.g. the NLB protocol), merged into ``metrics.json``.
    """

    name: str
    build: Callable[[DictConfig], tuple[Any, Any]] | None = None
    run: Callable[[DictConfig, Path], dict] | None = None
    checkpoint_kind: str | None = None
    check: Callable[[DictConfig], None] | None = None
    plots: Callable[[Any, Any, Path], None] | None = None
    resume_needs_same_model: bool = False
    after_test: Callable[[Any, Any, DictConfig, Path], dict] | None = None

    def __post_init__(self) -> None:
        if (self.build is None) == (self.run is None):
            raise ValueError(f"Task {self.name!r}: set exactly one of build and run.")
        if self.build is not None and self.checkpoint_kind is None:
            raise ValueError(f"Task {self.name!r} trains: set its checkpoint_kind.")


def _defines_task(path: Path) -> bool:
    """Whether a module assigns ``TASK`` at its top level (read without importing it)."""
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "TASK" for t in targets):
            return True
    return False


def task_names() -> list[str]:
    """The tasks of this package (its modules that define ``TASK``), sorted. Helper modules
    (``common``, ``registry``) define none."""
    folder = Path(__file__).parent
    return sorted(info.name for info in pkgutil.iter_modules([str(folder)])
                  if _defines_task(folder / f"{info.name}.py"))


def get_task(task_cfg: DictConfig | dict) -> Task:
    """The :class:`Task` a ``task`` config names (``task.name``, or ``task.module``)."""
    name = task_cfg.get("name")
    module_name = task_cfg.get("module") or f"neurobridge.tasks.{name}"
    if not task_cfg.get("module") and name not in task_names():
        raise ValueError(f"Unknown task {name!r}; valid tasks: {task_names()}.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(
            f"task.module={module_name!r} cannot be imported: set it to the module that defines "
            f"the TASK of task {name!r}."
        ) from None
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task) or task.name != name:
        raise ValueError(
            f"{module_name} must define TASK = Task(name={name!r}, ...) for task={name}."
        )
    return task
