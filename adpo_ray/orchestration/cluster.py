"""The Ray cluster a grid runs on: connecting to it (or starting an embedded Ray) and what it can
hold at full scale, its autoscaler's node types included."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from adpo_ray.orchestration import _ray_private
from adpo_ray.orchestration.planning import (
    Capacity,
    capacity_from_cluster_config,
    capacity_from_nodes,
)


def connect(address: str | None) -> None:
    """Connect this driver to the Ray cluster at ``address`` (e.g. ``auto``), or start an embedded
    Ray on this machine when there is none; nothing when Ray is already initialised. The embedded
    Ray serves its dashboard on 127.0.0.1 unless ``$ADPO_RAY_DASHBOARD`` is ``0`` (its processes
    cost a few seconds of CPU at each start)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        # A cluster started with a token (cluster/*.yaml) admits drivers that use it; Ray's
        # drivers use a token only in token mode, so a token on this machine turns that on.
        has_token = os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
        if has_token and "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
        ray.init(address=address, log_to_driver=False)
    else:
        # an embedded Ray with its dashboard on this machine's loopback, to watch the grid
        dashboard = os.environ.get("ADPO_RAY_DASHBOARD", "1") != "0"
        context = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False)
        url = getattr(context, "dashboard_url", None)
        if url:
            token = "" if os.environ.get("RAY_AUTH_MODE") == "disabled" else \
                f" (sign in with the token `{console_script('ray') or 'ray'} get-auth-token` prints)"
            print(f"Ray dashboard: http://{url}{token}", flush=True)


def console_script(name: str) -> str | None:
    """How to call the console script ``name`` (``mlflow``, ``ray``, ``tensorboard``) in a
    command printed for the user: the one installed beside this Python (a venv that need not be
    activated: ``make run`` runs ``.venv/bin/python``), by its bare name where the shell finds that
    very one, else by its path; another one on the shell's path where none is beside this Python;
    None where neither is installed."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name)
    if beside.exists():
        return name if found == str(beside) else str(beside)
    return name if found else None


def _read_autoscaling_config(monitor_pid: int | None) -> dict | None:
    """On the head node: the autoscaler monitor's ``--autoscaling-config`` file (``ray up``
    writes ``~/ray_bootstrap_config.yaml``), parsed; None when the monitor runs without one."""
    import psutil
    import yaml

    path = None
    if monitor_pid:
        try:
            cmd = psutil.Process(monitor_pid).cmdline()
            path = next((a.split("=", 1)[1] for a in cmd if a.startswith("--autoscaling-config=")), None)
        except psutil.Error:
            path = None
    if path is None and os.path.exists(os.path.expanduser("~/ray_bootstrap_config.yaml")):
        path = "~/ray_bootstrap_config.yaml"
    if path is None:
        return None
    with open(os.path.expanduser(path)) as f:
        config = yaml.safe_load(f)  # JSON is YAML too
    return config if isinstance(config, dict) else None


def autoscaler_config() -> dict | None:
    """The node types of the connected cluster's autoscaler, or None (a fixed cluster, or an
    embedded Ray). Ray 2.60 keeps them in the monitor's config file on the head: a zero-CPU task
    pinned to the head reads it; the monitor's pid is in its status in Ray's internal KV."""
    import ray

    try:
        raw = _ray_private.autoscaling_status()
        pid = json.loads(raw).get("monitor_pid") if raw else None
        task = ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})(_read_autoscaling_config)
        config = ray.get(task.remote(pid), timeout=60)
    except Exception:  # noqa: BLE001 - unknown: plan with the live nodes (or --max-concurrent)
        return None
    if not config or config.get("provider", {}).get("type") in (None, "readonly"):
        return None
    return config


def cluster_capacity(address: str | None) -> Capacity:
    """What the connected cluster can hold at full scale: its autoscaler's node types when it
    autoscales (so the grid does not stop at the nodes alive at launch), else its live nodes
    (an embedded Ray: this machine)."""
    import ray

    config = autoscaler_config() if address else None
    if config:
        try:
            capacity = capacity_from_cluster_config(config, "the cluster's autoscaler config")
        except Exception:  # noqa: BLE001 - a config we cannot read: count the live nodes
            capacity = None
        if capacity is not None and capacity.autoscaling:
            return capacity
    return capacity_from_nodes(ray.nodes(), "the cluster's live nodes")
