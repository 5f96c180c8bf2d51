import pytest

from neurobridge.data.synthetic import SyntheticConfig, generate_synthetic_recordings

SMALL = SyntheticConfig(n_sessions=2, units_per_region=6, duration=40.0, seed=3)


@pytest.fixture(scope="session")
def small_recordings(tmp_path_factory):
    """A tiny synthetic dataset on disk: 2 sessions × 18 units × 40 s, 3 regions."""
    root = tmp_path_factory.mktemp("small_recordings")
    generate_synthetic_recordings(root, SMALL)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the synthetic-data cache of every test inside its tmp folder."""
    monkeypatch.setenv("NEUROBRIDGE_CACHE", str(tmp_path / "cache"))
