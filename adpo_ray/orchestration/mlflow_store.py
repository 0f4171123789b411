"""Everything this project asks of an MLflow tracking store, in one place.

* :func:`client`: an ``MlflowClient`` whose HTTP calls give up after a bounded time (MLflow's own
  defaults retry one call for about four minutes);
* :func:`check_tracking`: reach the store once, quickly, before anything starts;
* :func:`experiment_id`: get-or-create an experiment (restoring a deleted one);
* :func:`download`: an artifact of a run in a local cache, once per machine;
* :func:`mlflow_key`: a metric, param or tag name MLflow takes, made from any label;
* the default local store: :func:`default_tracking_uri`, :func:`default_artifact_location`.

The tracker (:mod:`adpo_ray.orchestration.tracking`), the launch and distillation import it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

#: MLflow's HTTP retry settings for this project's clients (read by MLflow at each request; a
#: value the user exported wins). With these a dead server fails a call in about a minute.
BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
#: For the reachability probe: one try, a short timeout.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


#: What MLflow refuses in a key: anything but letters, digits, ``_-. /`` (colons too: stores on
#: Windows refuse them); a run of such characters ending a path segment is dropped, others become ``_``.
_KEY_REFUSED_AT_END = re.compile(r"[^A-Za-z0-9_\-. /]+(?=/|$)")
_KEY_REFUSED = re.compile(r"[^A-Za-z0-9_\-. /]+")
#: MLflow's longest metric, param or tag key.
MAX_KEY_LENGTH = 250


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric, param or tag key: refused characters replaced (see
    :data:`_KEY_REFUSED`; ``adpo-dynamic (adpo.beta_q=0.5)`` becomes ``adpo-dynamic _adpo.beta_q_0.5``),
    empty, ``.`` and ``..`` path segments dropped (MLflow refuses keys that resolve to another
    path), and a key over :data:`MAX_KEY_LENGTH` characters cut, ending in a hash of the whole
    name so that two long names stay apart. A key of letters, digits and ``_-. /`` alone, with no
    such segments, comes back unchanged."""
    key = _KEY_REFUSED.sub("_", _KEY_REFUSED_AT_END.sub("", name))
    key = "/".join(seg for seg in key.split("/") if seg not in ("", ".", "..")) or "_"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        key = f"{key[:MAX_KEY_LENGTH - 9].rstrip('/')}-{digest}"
    return key


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached."""


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:///<absolute cwd>/mlflow.db``: absolute, because Tune changes working directories."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def default_artifact_location(cwd: str | Path | None = None) -> str:
    return str(Path(cwd or os.getcwd()).resolve() / "mlartifacts")


def client(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` with bounded HTTP retries (:data:`BOUNDED_HTTP`)."""
    from mlflow.tracking import MlflowClient

    for key, value in BOUNDED_HTTP.items():
        os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=tracking_uri)


def existing_store(tracking_uri: str) -> str:
    """``tracking_uri``, for a command that only reads: an ``sqlite:///`` store must already be a
    file, since MLflow would otherwise create an empty database (tables and all) where none was,
    typically an ``mlflow.db`` in whatever folder the command ran from. Other stores (a server)
    are returned as they are: reaching them says whether they hold anything.

    Raises:
        FileNotFoundError: an ``sqlite:///`` store whose file does not exist.
    """
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise FileNotFoundError(
                f"no MLflow store at {tracking_uri}: {path} does not exist. Run the command from the folder "
                "the grid was launched in (its default store is ./mlflow.db), or pass --tracking-uri"
            )
    return tracking_uri


def check_tracking(uri: str) -> None:
    """Reach the tracking store once, quickly, before anything starts; raise :class:`TrackingError`."""
    from unittest import mock

    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # a local file: its folder must be there and writable
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise TrackingError(f"cannot create the MLflow store {uri!r}: {folder} is not a writable folder")
        return
    try:
        with mock.patch.dict(os.environ, QUICK_HTTP):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "not reachable", said plainly
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"cannot reach the MLflow tracking store {uri!r} ({first_line}). Start the server, or "
            "pass another --tracking-uri (default: sqlite:///<cwd>/mlflow.db)"
        ) from None


def experiment_id(mlflow_client, name: str, artifact_location: str | None) -> str:
    """The id of the MLflow experiment ``name``, restored or created as needed."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        # "custom model development": the MLflow UI opens on the runs table, not GenAI traces
        return mlflow_client.create_experiment(
            name, artifact_location=artifact_location,
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
    except Exception:  # created concurrently by another launch
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def cache_root() -> Path:
    """Where downloaded artifacts are kept on this machine (``$ADPO_RAY_CACHE``)."""
    return Path(os.environ.get("ADPO_RAY_CACHE", Path(tempfile.gettempdir()) / "adpo_ray_cache"))


def download(tracking_uri: str, run_id: str, artifact_path: str) -> Path:
    """``artifact_path`` of ``run_id`` in the local cache, downloaded once per machine (atomic:
    concurrent trials on one node never see a half-written copy)."""
    import mlflow

    final = cache_root() / run_id / artifact_path
    if final.exists():
        return final
    tmp = cache_root() / run_id / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        for key, value in BOUNDED_HTTP.items():
            os.environ.setdefault(key, value)
        got = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(tmp), tracking_uri=tracking_uri
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(got, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
