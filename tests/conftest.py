import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The grids the tests launch (in this process or as subprocesses) start Ray without its dashboard:
# about 5 s of CPU saved per Ray start; test_embedded_grid_serves_its_dashboard turns it back on.
os.environ.setdefault("ADPO_RAY_DASHBOARD", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance (2 CPUs, no dashboard) shared by the tests that need it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def float64():
    """Exact comparisons in double precision, restored afterwards (RLlib tests share the process)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
