"""A trial pack's tanh layers: ``torch.tanh`` against :func:`adpo_ray.core.packed.tanh` (NumPy's
kernel on CPU), one op and whole bandit pack iterations, side by side on one thread.

    python bench/tanh.py [--hidden 64 256] [--rounds 4]

On CPU ``torch.tanh`` calls MKL's vector math library, whose kernel on non-Intel CPUs is a
generic one. First the op alone on a stacked hidden layer (16 members x 128 rows x hidden, float32),
forward and forward + backward, median of 200 calls. Then, per hidden size, a bandit pack of 16
(the twelve_scenarios preset's bandit shape, built by the grid's ``PackTrainable`` on an embedded
Ray with one CPU) trains 3 iterations with each tanh in turn, ``--rounds`` times, alternated so
that both see the same machine load. Prints one JSON line per measurement, then
``ratio=<pack iteration with packed.tanh / with torch.tanh, at the largest hidden size>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adpo_ray.core.packed as packed  # noqa: E402

TANHS = {"torch": torch.tanh, "packed": packed.tanh}


def op_ms(fn, x: torch.Tensor, backward: bool, calls: int = 200) -> float:
    """Median ms of one call of ``fn(x)`` (and its backward)."""
    times = []
    for i in range(calls + 10):
        leaf = x.detach().requires_grad_(backward)
        t0 = time.perf_counter()
        y = fn(leaf)
        if backward:
            y.backward(torch.ones_like(y))
        if i >= 10:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "mkl": torch.backends.mkl.is_available()}), flush=True)
    for hidden in args.hidden:
        x = torch.randn(16, 128, hidden)
        for backward in (False, True):
            ms = {name: round(op_ms(fn, x, backward), 4) for name, fn in TANHS.items()}
            print(json.dumps({"op": "tanh" + (" + backward" if backward else ""), "shape": list(x.shape),
                              "ms": ms, "ratio": round(ms["packed"] / ms["torch"], 3)}), flush=True)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from adpo_ray.cli import resolve_config
    from adpo_ray.orchestration.pack_trainable import PackTrainable
    from adpo_ray.spec import load_spec

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    ratio = None
    for hidden in args.hidden:
        spec = load_spec(resolve_config("twelve_scenarios"),
                         ["environments=[PreferenceBandit]", f"hidden_sizes=[{hidden}]"])
        members = next(p for p in spec.packs() if len(p) >= 16)[:16]
        trainable = PackTrainable({"spec": spec.model_dump(mode="json", by_alias=True),
                                   "trials": [t.as_dict() for t in members]})
        trainable.train()  # build and first sampling, apart
        seconds = dict.fromkeys(TANHS, 0.0)
        for r in range(args.rounds):
            for name in (TANHS if r % 2 == 0 else reversed(TANHS)):
                packed.tanh = TANHS[name]
                t0 = time.perf_counter()
                for _ in range(3):
                    trainable.train()
                seconds[name] += time.perf_counter() - t0
        packed.tanh = TANHS["packed"]
        trainable.stop()
        per_iter = {name: round(s / (3 * args.rounds), 4) for name, s in seconds.items()}
        ratio = per_iter["packed"] / per_iter["torch"]
        print(json.dumps({"pack": "PreferenceBandit", "K": 16, "hidden": hidden, "s_per_iteration": per_iter,
                          "env_steps_per_s": {n: round(16 * 256 / s) for n, s in per_iter.items()},
                          "ratio": round(ratio, 3)}), flush=True)
    ray.shutdown()
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
