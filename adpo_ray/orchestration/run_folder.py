"""A grid's folder: the launch options that name it, the one way a folder given on the command
line (a local path or a URI) becomes the folder every command works on, the claim a launch holds
on it, and the grid file that records what was launched there."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from adpo_ray.orchestration import storage
from adpo_ray.orchestration.mlflow_store import default_artifact_location, default_tracking_uri
from adpo_ray.spec import ExperimentSpec

#: What a launch records in its folder: the spec, the options and what was prepared for it.
GRID_FILE = "adpo_grid.json"
#: The claim of the launch (or resume) working in a folder.
LOCK_FILE = ".adpo_launch.json"


@dataclass
class GridOptions:
    """Where a launch runs and is tracked; recorded in its grid file, read back by a resume."""

    tracking_uri: str
    artifact_location: str | None
    storage_path: str
    name: str
    address: str | None = None
    max_concurrent: int | None = None  # --max-concurrent

    @property
    def run_dir(self) -> str:
        """The launch's folder: ``name`` under ``storage_path``."""
        return storage.join(self.storage_path, self.name)


#: A launch name: one folder name under --storage-path, never a path.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def check_name(name: str) -> str:
    """``name``, or a ValueError: letters, digits, ``_.-``, 1-128 characters, starting with a
    letter or digit (so it can never leave --storage-path: no ``/``, no ``..``)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"--name {name!r}: use 1-128 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit (it names one folder under --storage-path)")
    return name


def check_storage_path(path: str, what: str = "--storage-path") -> str:
    """``path`` (a folder, or a URI such as ``s3://bucket/dir``), or a ValueError naming ``what``
    (the option or argument that gave it) for a URI that is malformed, e.g. ``s3:/bucket/x``,
    which would otherwise become a local folder named ``s3:``."""
    match = _SCHEME.match(path)
    if match and len(match.group(1)) > 1:  # a scheme (one letter would be a Windows drive)
        scheme, rest = match.group(1), path[match.end():]
        if not rest.startswith("//"):
            raise ValueError(f"{what} {path!r}: a URI needs '://' after its scheme, e.g. "
                             f"{scheme}://{rest.lstrip('/')}")
        if scheme != "file" and not rest[2:].split("/")[0].split("?")[0]:
            raise ValueError(f"{what} {path!r}: no bucket or host after {scheme}://")
        if scheme == "file" and not rest[2:].startswith("/"):
            raise ValueError(f"{what} {path!r}: a file:// URI takes an absolute path, file:///dir")
    elif "://" in path:
        raise ValueError(f"{what} {path!r}: not a folder, and not a URI (scheme://...)")
    return path


#: Trailing slashes of a URI's path, but never those of ``scheme://`` or ``file:///``.
_TRAILING_SLASHES = re.compile(r"(?<![:/])/+$")


def resolve_run_dir(path: str | os.PathLike, what: str = "RUN_DIR") -> str:
    """The one spelling of a folder given on the command line, which every command works on: a
    local path (relative to the working directory, ``..`` and symlinks resolved, no trailing
    slash) becomes absolute; a URI (``s3://bucket/dir/``, ``file:///dir``) stays a URI without
    trailing slashes, its query string (``?region=...``) kept. A malformed URI raises a
    ValueError naming ``what``, the option or argument that gave it."""
    path = check_storage_path(os.fspath(path), what)
    if not path:
        raise ValueError(f"{what}: empty; give a folder or a URI (scheme://...)")
    if storage.is_uri(path):
        base, sep, query = path.partition("?")
        return _TRAILING_SLASHES.sub("", base) + sep + query
    return str(Path(path).resolve())


def local_run_dir(path: str | os.PathLike, what: str, command: str) -> str:
    """:func:`resolve_run_dir` for a command that reads a folder on this machine only: a URI
    raises a ValueError saying so, naming ``what`` and ``command``."""
    run_dir = resolve_run_dir(path, what)
    if storage.is_uri(run_dir):
        raise ValueError(f"{what} {run_dir}: {command} reads local folders only; run it on a machine "
                         f"that has the folder (e.g. the head node), or copy the folder here first")
    return run_dir


def resolve_options(
    spec: ExperimentSpec,
    *,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> GridOptions:
    """The options of a launch of ``spec``, each from its argument, else the spec, else the
    default: tracking URI (``sqlite:///<cwd>/mlflow.db``), artifact location (next to a sqlite
    store), storage path (``./ray_results``; resolved by :func:`resolve_run_dir`), name
    (``<spec name>-<timestamp>-<4 hex>``), Ray address (``$RAY_ADDRESS``). A bad ``name`` or
    ``storage_path`` raises a ValueError naming the option."""
    uri = tracking_uri or spec.tracking.tracking_uri or default_tracking_uri()
    artifacts = spec.tracking.artifact_location
    if artifacts is None and uri.startswith("sqlite:"):
        artifacts = default_artifact_location()
    path = resolve_run_dir(storage_path or "ray_results", "--storage-path")
    if name is not None:
        check_name(name)
    return GridOptions(
        tracking_uri=uri,
        artifact_location=artifacts,
        storage_path=path,
        name=name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        address=address or os.environ.get("RAY_ADDRESS"),
        max_concurrent=max_concurrent,
    )


def claim_folder(run_dir: str, name: str, *, take_over: bool = False) -> None:
    """Claim ``run_dir`` for this launch before anything is written there: an exclusive lock file
    (atomic on a local or shared file system; on object storage, a check then a write). A second
    launch with the same name gets a :class:`FileExistsError` naming the first. ``take_over``
    (resume): a claim by a process that is no longer alive on this host is taken over."""
    import socket

    me = {"launch": name, "host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = storage.join(run_dir, LOCK_FILE)
    if storage.is_uri(run_dir):
        if storage.exists(path) and not take_over:
            raise FileExistsError(_claimed(run_dir, storage.read_text(path)))
        storage.write_text(path, json.dumps(me))
        return
    os.makedirs(run_dir, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                holder = {}
            if take_over and not _alive_here(holder):
                os.unlink(path)
                continue
            raise FileExistsError(_claimed(run_dir, json.dumps(holder))) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return


def _alive_here(holder: dict) -> bool:
    import socket

    import psutil

    return holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
        and psutil.pid_exists(int(holder.get("pid", 0) or 0))


def _claimed(run_dir: str, holder: str) -> str:
    try:
        h = json.loads(holder)
        who = f"launch {h.get('launch')!r} (pid {h.get('pid')} on {h.get('host')}, since {h.get('since')})"
    except ValueError:
        who = "another launch"
    return (f"{run_dir} is taken by {who}; resume that grid with `adpo-ray resume {run_dir}` "
            f"once it has stopped, or pick another --name")


def release_folder(run_dir: str) -> None:
    """Give up this launch's claim on ``run_dir`` (a launch that stopped before recording anything)."""
    storage.delete(storage.join(run_dir, LOCK_FILE))


def write_grid_file(run_dir: str, spec: ExperimentSpec, options: GridOptions, prepared: dict) -> None:
    """Record the launch in ``run_dir``: ``spec``, ``options`` and what was ``prepared`` for it
    (``concurrency``, ``distill_runs``, ``init_runs``), read back by :func:`read_grid_file`."""
    storage.write_text(storage.join(run_dir, GRID_FILE), json.dumps({
        "spec": spec.model_dump(mode="json", by_alias=True),
        "options": options.__dict__,
        **prepared,
    }, indent=2))


def read_grid_file(run_dir: str) -> dict:
    """The grid file of ``run_dir`` as written by :func:`write_grid_file` (a dict); a
    FileNotFoundError when the folder holds none (it is no grid folder)."""
    path = storage.join(str(run_dir), GRID_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{run_dir} is not an adpo-ray grid folder (no {GRID_FILE})")
    return json.loads(storage.read_text(path))


def load_grid_file(run_dir: str) -> tuple[ExperimentSpec, GridOptions]:
    """The spec and the options recorded in the grid file of ``run_dir`` (see :func:`read_grid_file`)."""
    data = read_grid_file(run_dir)
    return ExperimentSpec.model_validate(data["spec"]), GridOptions(**data["options"])
