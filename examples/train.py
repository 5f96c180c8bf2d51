"""Train NeuroBridge from the Hydra configs in ``configs/``.

    python examples/train.py                                   # masked pretraining, synthetic data, CPU
    python examples/train.py trainer.max_steps=200             # shorter
    python examples/train.py task=pretrain data=recordings data.root=DIR hydra.run.dir=RUN

An error (a bad file, field or config value) is printed as one block naming what to fix and
the run exits with status 1; ``NEUROBRIDGE_TRACEBACK=1`` shows the full traceback instead.
SIGTERM or SIGUSR1 saves the step in progress and exits with status 143 (resume with
``resume_from=RUN/checkpoints/last.ckpt``, or ``resume_from=auto`` in the same run folder).
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def _fail(err: Exception) -> None:
    """Print a NeuroBridge error as one block and exit with status 1 (or re-raise it with
    ``NEUROBRIDGE_TRACEBACK=1``)."""
    if os.environ.get("NEUROBRIDGE_TRACEBACK"):
        raise err
    print(f"\nneurobridge: {type(err).__name__}: {err}\n\n(the full traceback: "
          "NEUROBRIDGE_TRACEBACK=1 python examples/train.py ...)", file=sys.stderr)
    sys.exit(1)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from neurobridge.config_checks import check_config  # no torch yet: refused in a second

    try:
        check_config(cfg)
    except Exception as err:  # noqa: BLE001  (shown as one block; the traceback on request)
        _fail(err)
    from neurobridge.training.run import PREEMPTED_EXIT, Preempted, run

    try:
        metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    except Preempted as stop:
        print(f"\nneurobridge: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    except Exception as err:  # noqa: BLE001
        _fail(err)
    for key in sorted(metrics):
        print(f"{key:45s} {metrics[key]: .4f}")


if __name__ == "__main__":
    main()
