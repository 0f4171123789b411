import json
import os
import resource
import time

import pytest

pytest_plugins = ["pytester"]  # tests/unit/test_conftest.py

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The grids the tests launch (in this process or as subprocesses) start Ray without its dashboard:
# about 3 s of CPU saved per Ray start (its 7 or 8 processes); test_embedded_grid_serves_its_dashboard
# turns it back on.
os.environ.setdefault("ADPO_RAY_DASHBOARD", "0")
# No worker processes started ahead of a Ray's first driver: Tune's trial actors never ran in them
# (34 of the suite's Ray workers did nothing but start), and each cost about a second of CPU.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
# One torch thread per process (Ray gives its actors one already): three pytest-xdist workers
# and their grids share two cores, where a second thread mostly spins; measured on
# tests/integration/test_fused_learner.py alone, 14% less CPU.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long_running`` first, the others in their order (the integration tests
    before the unit tests, as `make test` names them): a parallel run hands the long tests out
    while the short ones can still fill the other workers, instead of ending on one of them alone."""
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)


class FailuresAsTheyHappen:
    """Names a failure on its own line the moment it is reported (setup, call or teardown), not
    only in pytest's summary at the end: a run cut short (a CI time limit, a killed machine) still
    says which test failed. Registered where the terminal is (under pytest-xdist, the controller)."""

    def __init__(self, config):
        self.config = config

    def pytest_runtest_logreport(self, report):
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if report.failed and terminal is not None:
            terminal.write("\n")  # after the progress dots, which do not end their line
            terminal.write_line(f"FAILED {report.nodeid} ({report.when}); details in the summary at the end")


#: A file each test's CPU is appended to (one JSON line per test), where set: `bench/suite_cpu.py`.
CPU_LOG = "ADPO_RAY_TEST_CPU_LOG"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``ADPO_RAY_TEST_CPU_LOG`` set, the CPU seconds of each test (setup, call and teardown):
    of this process (``self``: in-process RLlib, Tune drivers, MLflow clients) and of the child
    processes it waited for (``children``: subprocess launches and CLIs, with what they waited
    for), beside its wall time. Ray workers of the shared Ray are the xdist controller's, not a
    test's, and are not in either."""
    log = os.environ.get(CPU_LOG)
    if not log:
        yield
        return
    own, kids, wall = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as f:
        f.write(json.dumps({
            "test": item.nodeid, "self": time.process_time() - own, "wall": time.monotonic() - wall,
            "children": max(0.0, after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime)}) + "\n")


#: The address of the Ray instance a pytest-xdist controller starts for its workers (`ray_local`).
SHARED_RAY = "ADPO_RAY_TESTS_SHARED_RAY"


def pytest_configure(config):
    """Under pytest-xdist, the controller starts one Ray (2 CPUs, no dashboard) before its workers,
    which share it for their in-process tests instead of starting one each: a Ray's own processes
    cost about 2 CPU-s a minute while it lives and about 4 to start. 2 CPUs, as each worker's own
    Ray had: with 6, a grid ran more trials at once, each in a new process (the suite measured
    757 s against 679 s)."""
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(FailuresAsTheyHappen(config), "failures-as-they-happen")
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None) or SHARED_RAY in os.environ:
        return
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    os.environ[SHARED_RAY] = context.address_info["address"]  # the workers inherit it
    config.add_cleanup(ray.shutdown)


@pytest.fixture(scope="session")
def ray_local():
    """One real Ray instance shared by the tests that need it: the xdist controller's (see
    `pytest_configure`), else a local one of 2 CPUs without its dashboard."""
    import ray

    if not ray.is_initialized():
        if SHARED_RAY in os.environ:
            ray.init(address=os.environ[SHARED_RAY], log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()  # a worker only disconnects from the controller's Ray


@pytest.fixture
def float64():
    """Exact comparisons in double precision, restored afterwards (RLlib tests share the process)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
