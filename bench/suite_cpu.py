"""Where the test suite's CPU goes: by kind of process, and by test.

    python bench/suite_cpu.py [--workers 3] [--top 25] [-- PYTEST_ARGS ...]

Runs the suite as `make test` does (pytest-xdist, ``--dist loadgroup``; by default
``tests/integration tests/unit``) and watches every process on the machine meanwhile (``/proc``,
once a second): the CPU seconds each one used while the suite ran, summed by kind (pytest's own
processes, Ray's workers and daemons, the grids and CLIs the tests start as subprocesses, MLflow
servers, the browser, the kernel's threads, the rest). With ``ADPO_RAY_TEST_CPU_LOG`` set
(``tests/conftest.py``), each test also records its own CPU: in its pytest process, and in the
child processes it waited for. On a 2-core machine the suite is CPU-bound, so its wall time follows
the CPU it spends, and a test's wall time says less than its CPU (it shares the machine with two
other tests). A process that lived less than a second may be missed; its CPU is then in the
machine's total, not in any kind.

Prints the run's wall time and pytest's exit code, the machine's busy CPU seconds, the table by
kind, the ``--top`` tests by CPU, and last ``ratio=<CPU of the processes the suite started /
the machine's busy CPU>``: the rest went to the kernel's threads and to processes that were
running before.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")

#: (kind, substrings of a command line, any of which makes a process that kind), first match wins
KINDS = [
    ("pytest (controller and xdist workers)", ("-m pytest", "exec(eval(sys.stdin")),
    ("Ray workers (trials, actors, tasks)", ("ray::", "default_worker.py", "setup_worker.py")),
    ("Ray daemons (GCS, raylet, agents, monitors)", ("raylet", "gcs_server", "log_monitor.py", "dashboard",
                                                     "monitor.py", "runtime_env", "bin/ray ")),
    ("grids and CLIs started by tests", ("run_grid.py", "adpo_ray.cli", "adpo-ray")),
    ("MLflow servers", ("bin/mlflow", "uvicorn", "mlflow.server")),
    ("browser (UI test)", ("chrom", "playwright")),
]


def kind_of(cmdline: str, name: str, new: bool) -> str:
    """The kind of a process, from its command line (``name``: the kernel's, for its threads);
    ``new``: started after the watch began."""
    if not cmdline:  # a kernel thread
        return f"kernel thread {name.split('/')[0]}"
    if not new:
        return OLDER
    for kind, marks in KINDS:
        if any(m in cmdline for m in marks):
            return kind
    return "other processes started meanwhile"


OLDER = "processes already running before"


def read_ticks(pid: str) -> tuple[str, int, str] | None:
    """``(start time, CPU ticks so far, the kernel's name)`` of process ``pid``; None if it ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19], int(fields[11]) + int(fields[12]), stat[stat.find("(") + 1:stat.rfind(")")]


def read_cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:  # ended meanwhile
        return ""


def pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


class Watcher(threading.Thread):
    """The latest CPU ticks of every process seen, less what it had used before the watch began."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.before = {(pid, r[0]): r[1] for pid in pids() if (r := read_ticks(pid))}
        self.seen: dict[tuple[str, str], list] = {}  # (pid, start) -> [ticks, command line, name]

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in pids():
                if (r := read_ticks(pid)) is None:
                    continue
                start, ticks, name = r
                if (pid, start) in self.seen:
                    self.seen[(pid, start)][0] = ticks
                else:  # the command line read once, when first seen: a Ray worker renames itself later
                    self.seen[(pid, start)] = [ticks, read_cmdline(pid), name]
            self.stop.wait(self.interval)

    def by_kind(self) -> dict[str, tuple[int, float]]:
        """kind -> (processes, CPU seconds), the kernel threads under 1 % of the total together."""
        count, cpu = collections.Counter(), collections.Counter()
        for key, (ticks, cmdline, name) in self.seen.items():
            used = (ticks - self.before.get(key, 0)) / TICKS
            if used > 0:
                kind = kind_of(cmdline, name, key not in self.before)
                count[kind] += 1
                cpu[kind] += used
        total = sum(cpu.values())
        for kind in [k for k in cpu if k.startswith("kernel thread ") and cpu[k] < 0.01 * total]:
            count["kernel threads (other)"] += count.pop(kind)
            cpu["kernel threads (other)"] += cpu.pop(kind)
        return {kind: (count[kind], cpu[kind]) for kind, _ in cpu.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=3, help="pytest-xdist workers (make test's TEST_WORKERS)")
    parser.add_argument("--top", type=int, default=25, help="tests to list, by CPU")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between looks at /proc")
    parser.add_argument("pytest_args", nargs="*", default=["tests/integration", "tests/unit"],
                        help="after --: what pytest runs (default: both tiers)")
    args = parser.parse_args()
    if not Path("/proc/stat").exists():
        parser.error("needs Linux's /proc")

    log = Path(tempfile.mkdtemp(prefix="suite-cpu-")) / "tests.jsonl"
    watcher = Watcher(args.interval)
    busy0, start = machine_busy_ticks(), time.monotonic()
    watcher.start()
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers), "--dist", "loadgroup", *args.pytest_args],
        cwd=ROOT, env={**os.environ, "ADPO_RAY_TEST_CPU_LOG": str(log)})
    wall, busy = time.monotonic() - start, (machine_busy_ticks() - busy0) / TICKS
    watcher.stop.set()
    watcher.join()

    cores = os.cpu_count() or 1
    kinds = watcher.by_kind()
    print(f"\npytest exit code {rc}, wall {wall:.0f} s; the machine's {cores} cores busy {busy:.0f} CPU s "
          f"({busy / (cores * wall):.0%} of them)")
    print(f"\n{'kind of process':48s} {'processes':>9s} {'CPU s':>8s} {'share':>6s}")
    for kind, (n, cpu) in kinds.items():
        print(f"{kind:48s} {n:9d} {cpu:8.1f} {cpu / busy:6.1%}")
    tests = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if tests:
        own, kids = sum(t["self"] for t in tests), sum(t["children"] for t in tests)
        print(f"\n{len(tests)} tests: {own:.0f} CPU s in their pytest processes, {kids:.0f} in child processes "
              f"they waited for; the {args.top} that used most:")
        print(f"{'CPU s':>7s} {'self':>7s} {'children':>8s} {'wall s':>7s}  test")
        for t in sorted(tests, key=lambda t: -(t["self"] + t["children"]))[:args.top]:
            print(f"{t['self'] + t['children']:7.1f} {t['self']:7.1f} {t['children']:8.1f} {t['wall']:7.1f}  {t['test']}")
    suite = sum(cpu for kind, (_, cpu) in kinds.items()
                if not kind.startswith("kernel thread") and kind != OLDER)
    print(f"ratio={suite / busy:.3f}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
