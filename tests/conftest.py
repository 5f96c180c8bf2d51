import os

import pytest
import torch

from neurobridge.datasets.synthetic import SyntheticConfig, generate_synthetic_recordings

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each, for this process and the ones it starts
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# high firing rates and strong modulation: enough signal per cell for a short training run
SMALL = SyntheticConfig(
    n_sessions=2, units_per_region=12, duration=120.0, seed=3, mean_rate_median=20.0,
    mean_rate_range=(5.0, 40.0), log_rate_std_range=(1.0, 1.4),
)


@pytest.fixture(scope="session")
def small_recordings(tmp_path_factory):
    """A small synthetic dataset on disk: 2 sessions × 36 units × 120 s, 3 regions."""
    root = tmp_path_factory.mktemp("small_recordings")
    generate_synthetic_recordings(root, SMALL)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the synthetic-data cache of every test inside its tmp folder."""
    monkeypatch.setenv("NEUROBRIDGE_CACHE", str(tmp_path / "cache"))
