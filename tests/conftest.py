import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The grids the tests launch (in this process or as subprocesses) start Ray without its dashboard:
# about 3 s of CPU saved per Ray start (its 7 or 8 processes); test_embedded_grid_serves_its_dashboard
# turns it back on.
os.environ.setdefault("ADPO_RAY_DASHBOARD", "0")
# One torch thread per process (Ray gives its actors one already): three pytest-xdist workers
# and their grids share two cores, where a second thread mostly spins; measured on
# tests/integration/test_fused_learner.py alone, 14% less CPU.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long_running`` first, the others in their order (the integration tests
    before the unit tests, as `make test` names them): a parallel run hands the long tests out
    while the short ones can still fill the other workers, instead of ending on one of them alone."""
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)


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
