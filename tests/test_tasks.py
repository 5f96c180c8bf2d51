"""The task registry: every task is found by name, and a task from outside the package runs
through ``task.module`` with nothing else edited."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from neurobridge.tasks import Task, get_task, task_names
from neurobridge.training.run import run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_every_task_config_names_a_registered_task():
    yamls = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml"))
    assert task_names() == yamls
    kinds = {}
    for name in yamls:
        task = get_task({"name": name})
        assert isinstance(task, Task) and task.name == name
        kinds[name] = task.checkpoint_kind
    assert kinds == {"pretrain": "masked", "adapt_session": "masked", "evaluate": None,
                     "align": "alignment", "finetune": "alignment", "adapter": "adapter",
                     "reconstruct": None}


def test_an_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown task 'pretrian'.*'pretrain'"):
        get_task({"name": "pretrian"})
    with pytest.raises(ValueError, match="cannot be imported"):
        get_task({"name": "x", "module": "no_such_module_anywhere"})


def test_a_task_outside_the_package_runs_from_its_module(tmp_path, monkeypatch):
    (tmp_path / "my_lab_task.py").write_text(
        "from neurobridge.io import write_json_atomic\n"
        "from neurobridge.tasks import Task\n\n"
        "def _run(cfg, run_dir):\n"
        "    metrics = {'answer': float(cfg.task.answer)}\n"
        "    write_json_atomic(run_dir / 'metrics.json', metrics)\n"
        "    return metrics\n\n"
        "TASK = Task(name='my_lab_task', run=_run)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config")
    OmegaConf.set_struct(cfg, False)
    cfg.task = {"name": "my_lab_task", "module": "my_lab_task", "answer": 42}
    assert run(cfg, tmp_path / "run") == {"answer": 42.0}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"answer": 42.0}
    cfg.task = {"name": "other_name", "module": "my_lab_task"}
    with pytest.raises(ValueError, match="must define TASK = Task\\(name='other_name'"):
        run(cfg, tmp_path / "run2")
