"""Train NeuroBridge from the Hydra configs in ``configs/``.

    python examples/train.py                                   # masked pretraining, synthetic data, CPU
    python examples/train.py trainer.max_steps=200             # shorter
    python examples/train.py task=pretrain data=recordings data.root=DIR hydra.run.dir=RUN
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from neurobridge.training.run import run

    metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    for key in sorted(metrics):
        print(f"{key:45s} {metrics[key]: .4f}")


if __name__ == "__main__":
    main()
