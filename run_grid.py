#!/usr/bin/env python
"""Run an adpo-ray experiment grid: the entry that `ray submit cluster/gpu.yaml run_grid.py` copies
to the head node. It only parses arguments and calls the installed package.

    python run_grid.py --config tune_configs/smoke.yaml [--tracking-uri URI] [--storage-path DIR]
                       [--name NAME] [--address ADDR] [--dry-run]
"""

import sys

try:
    from adpo_ray.cli import main
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(
        f"adpo-ray is not installed in this Python ({sys.executable}): {e}\n"
        "In a checkout where `make run` or `make install` has run: `.venv/bin/python run_grid.py ...` "
        "(or `source .venv/bin/activate` first). On a cluster: install it on every node from the repo "
        "(`pip install -e .`: the presets in tune_configs/ are read from there; see cluster/*.yaml "
        "setup_commands) or use the project's Docker image."
    )

if __name__ == "__main__":
    sys.exit(main(["grid", *sys.argv[1:]]))
