"""A durable local queue of MLflow writes, and the sender that drains it off Tune's hot path.

The grid's tracker (:mod:`adpo_ray.orchestration.tracking`) never talks to MLflow itself: every
write — run creation with its tags and params, metric batches, tags, statuses, artifacts — is
appended to ``records.jsonl`` in the spool folder (one JSON line each, flushed), and a
:class:`Sender` thread delivers the records in order with short timeouts, bounded retries and a
back-off. ``sent.json`` (written atomically) counts the records delivered, so a sender that dies
and starts again, `adpo-ray sync` or `adpo-ray resume`, goes on where it stopped. Delivery is
idempotent: a run is found again by its ``adpo_ray.run_key`` tag before one is created, a metric
batch whose step MLflow already holds is skipped, params, tags, statuses and artifacts are
rewritten with the same values. So every write reaches MLflow exactly once, however often the
store went away.

A write MLflow refuses for good (:func:`is_permanent`: a name or value it does not take, a param
logged again with another value) is set aside once with MLflow's reason in ``rejected.jsonl``
beside the records, and the records behind it go on; anything else (connection errors, timeouts,
5xx, a locked database) is retried. A run deleted in the MLflow UI while writes for it are still
coming is restored (``restore_run``: its id, history and its children's links stay valid); a run
purged from the store altogether is created again from its run record and linked to its parent
(the history it held is gone with it). When a run cannot be created at all, each later write of
that run is rejected naming that cause.

Records the tracker may not deliver yet (those of a trial, or a metric step of an iteration, that
Tune's experiment snapshot does not hold yet) wait in ``held.jsonl`` beside the records, keyed by
Tune trial id (:meth:`Spool.hold`), until they are let out (:meth:`Spool.release`). A driver killed
in between leaves them there, and the resume moves those its snapshot holds into the records
(:meth:`Spool.held`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from adpo_ray.metrics import ENV_STEPS
from adpo_ray.orchestration import storage

SPOOL_DIR = "mlflow_spool"
RECORDS = "records.jsonl"
SENT = "sent.json"
HEADER = "spool.json"
REJECTED = "rejected.jsonl"
HELD = "held.jsonl"
RUN_KEY_TAG = "adpo_ray.run_key"

#: MLflow error codes that say the write itself is wrong (the same write always fails); every
#: other failure (INTERNAL_ERROR for connection errors, timeouts and exhausted 5xx retries,
#: TEMPORARILY_UNAVAILABLE, DEADLINE_EXCEEDED, REQUEST_LIMIT_EXCEEDED, auth) may pass later.
#: The sqlite store raises these codes directly; over REST, ``RestException`` carries the code
#: the server raised (INVALID_STATE arrives with HTTP 500 but its JSON body names it).
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
    "RESOURCE_ALREADY_EXISTS",
})


class Rejected(Exception):
    """A record that can never be delivered (its reason is the message)."""


def is_permanent(error: BaseException) -> bool:
    """Whether ``error``, raised by an MLflow client call, means the same write will always fail."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, Rejected) or (
        isinstance(error, MlflowException) and error.error_code in PERMANENT_CODES)


def reason_of(error: BaseException) -> str:
    """``error`` in one line: its type (and MLflow code) and the first line of its message."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    code = getattr(error, "error_code", None)
    return f"{type(error).__name__}{f' {code}' if code else ''}: {first}"


class Spool:
    """The append-only record file of one launch (thread-safe appends)."""

    def __init__(self, folder: str | Path, header: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "files").mkdir(exist_ok=True)
        if header is not None and not (self.folder / HEADER).exists():
            storage.write_text(str(self.folder / HEADER), json.dumps(header, indent=2))
        self._lock = threading.Lock()
        path = self.folder / RECORDS
        # a line torn by a crash stays a line of its own (skipped when read), never a prefix
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with open(path, "a") as f:
                f.write("\n")
        self._file = open(path, "a")  # noqa: SIM115 - kept open for appends
        self._held_file = None

    @property
    def header(self) -> dict[str, Any]:
        return json.loads((self.folder / HEADER).read_text())

    def relative(self, path: str) -> str:
        """``path`` as the spool records it: relative to the spool folder for a local path (the
        results folder may move before the record is sent), unchanged for a URI."""
        return path if "://" in path else os.path.relpath(os.path.abspath(path), self.folder)

    def resolve(self, path: str) -> str:
        return path if "://" in path or os.path.isabs(path) else os.path.normpath(self.folder / path)

    def append(self, op: str, **fields: Any) -> None:
        line = json.dumps({"op": op, **fields}, default=float)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def hold(self, trial_id: str, record: dict[str, Any], iteration: int | None = None) -> None:
        """Keep ``record`` of Tune trial ``trial_id`` aside (flushed) until :meth:`release`;
        ``iteration``: the training iteration of a metric step (None for other records)."""
        self._append_held({"trial_id": trial_id, "record": record, "iteration": iteration})

    def release(self, trial_id: str, count: int) -> None:
        """Note that the first ``count`` held records of ``trial_id`` were appended to the records."""
        self._append_held({"released": trial_id, "count": count})

    def _append_held(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=float)
        with self._lock:
            if self._held_file is None:
                path = self.folder / HELD
                torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
                self._held_file = open(path, "a")  # noqa: SIM115 - kept open for appends
                if torn:  # a line torn by a crash stays a line of its own
                    self._held_file.write("\n")
            self._held_file.write(line + "\n")
            self._held_file.flush()

    def held(self) -> dict[str, list[tuple[int | None, dict[str, Any]]]]:
        """Trial id -> its held records not released, in order, each with its iteration (see
        :meth:`hold`; lines torn by a crash are skipped)."""
        out: dict[str, list[tuple[int | None, dict[str, Any]]]] = {}
        try:
            lines = (self.folder / HELD).read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                entry = json.loads(line)
                if "released" in entry:
                    trial_id = entry["released"]
                    out[trial_id] = out.get(trial_id, [])[int(entry["count"]):]
                    if not out[trial_id]:
                        del out[trial_id]
                else:
                    out.setdefault(entry["trial_id"], []).append((entry.get("iteration"), entry["record"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def clear_held(self) -> None:
        """Forget every held record (once a resume has moved those it keeps into the records)."""
        with self._lock:
            if self._held_file is not None:
                self._held_file.close()
                self._held_file = None
            (self.folder / HELD).unlink(missing_ok=True)

    def keep_file(self, source: str | Path, name: str) -> str:
        """A copy of ``source`` (file or folder) in the spool, to upload later; its path."""
        target = self.folder / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return str(target)

    def records(self, offset: int = 0) -> list[tuple[dict | None, int]]:
        """The complete records from byte ``offset`` on, each with the offset after it; None
        for a line that does not parse (torn by a crash)."""
        out: list[tuple[dict | None, int]] = []
        with open(self.folder / RECORDS, "rb") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written right now
                offset += len(line)
                try:
                    out.append((json.loads(line), offset))
                except ValueError:
                    out.append((None, offset))
        return out

    def sent(self) -> int:
        """The byte offset up to which records were delivered."""
        try:
            return int(json.loads((self.folder / SENT).read_text())["offset"])
        except (OSError, ValueError, KeyError):
            return 0

    def mark_sent(self, offset: int) -> None:
        storage.write_text(str(self.folder / SENT), json.dumps({"offset": offset, "time": time.time()}))

    def pending(self) -> int:
        """Records not delivered yet."""
        return sum(1 for r, _ in self.records(self.sent()) if r is not None)

    def reject(self, record: dict, offset: int, reason: str) -> None:
        """Set ``record`` (ending at byte ``offset``) aside with MLflow's ``reason``; flushed to
        disk before the watermark moves past it, so a crash in between rejects it again at worst
        (:meth:`rejected` counts it once)."""
        line = json.dumps({"offset": offset, "time": time.time(), "reason": reason, "record": record}, default=float)
        path = self.folder / REJECTED
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        with open(path, "a") as f:
            f.write(("\n" if torn else "") + line + "\n")  # never glued onto a line torn by a crash
            f.flush()
            os.fsync(f.fileno())

    def rejected(self) -> list[dict]:
        """The records set aside (``{"offset", "time", "reason", "record"}``), once each, in order."""
        try:
            lines = (self.folder / REJECTED).read_text().splitlines()
        except OSError:
            return []
        out: dict[int, dict] = {}
        for line in lines:
            try:
                entry = json.loads(line)
                out.setdefault(int(entry["offset"]), entry)
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: its record is rejected again or delivered
        return list(out.values())

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Sender:
    """Delivers a spool's records to MLflow, in order (see the module docstring).

    ``drain()`` sends what is pending and returns whether everything went; ``start()`` runs it in
    a background thread until ``stop()``, backing off while the store is unreachable."""

    def __init__(self, spool: Spool, on_run=None):
        self.spool = spool
        header = spool.header
        self.tracking_uri = header["tracking_uri"]
        self.experiment = header["experiment"]
        self.artifact_location = header.get("artifact_location")
        self.on_run = on_run  # called with (run key, run id, experiment id) when a run is known
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}
        self._max_step: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one drain at a time
        self.last_error: str | None = None
        self.rejected = 0  # records this sender set aside
        # runs whose creation MLflow refused, with the reason: their later writes are refused too
        self._failed_runs = {e["record"]["key"]: e["reason"] for e in spool.rejected()
                             if e["record"].get("op") == "run"}

    @property
    def client(self):
        if self._client is None:
            from adpo_ray.orchestration.mlflow_store import client

            self._client = client(self.tracking_uri)
        return self._client

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="adpo-ray-mlflow-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            ok = self.drain()
            backoff = 1.0 if ok else min(backoff * 2, 30.0)
            self._wake.wait(timeout=1.0 if ok else backoff)
            self._wake.clear()

    def stop(self, flush_timeout: float = 30.0) -> int:
        """Stop the thread after one last drain within ``flush_timeout`` s; the records still
        pending afterwards."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout + 30)
        deadline = time.time() + flush_timeout
        while self.spool.pending() and time.time() < deadline:
            if self.drain():
                break
            time.sleep(min(2.0, max(0.0, deadline - time.time())))
        return self.spool.pending()

    # -- delivery --------------------------------------------------------------------------
    def drain(self) -> bool:
        """Send every pending record; True when none is left (False: stopped at a failure that
        may pass). A record MLflow refuses for good is tried once more on its own (after restoring
        its run, if that was deleted), then set aside (:meth:`Spool.reject`) and counted in
        ``rejected``; delivery goes on behind it."""
        with self._lock:
            pending = self.spool.records(self.spool.sent())
            i = 0
            while i < len(pending):
                record, offset = pending[i]
                try:
                    try:
                        end = self._deliver(pending, i)
                    except Exception as e:  # noqa: BLE001 - sorted into permanent and transient
                        if not is_permanent(e):
                            raise
                        end = self._deliver(pending, i, alone=True)
                except Exception as e:  # noqa: BLE001 - see above
                    if not is_permanent(e):  # the store is down or busy: retry later
                        self.last_error = reason_of(e)
                        return False
                    self.spool.reject(record, offset, reason_of(e))
                    self.rejected += 1
                    if record["op"] == "run" and self.known_run(record["key"]) is None:
                        self._failed_runs[record["key"]] = reason_of(e)
                    end = i + 1
                i = end
                self.spool.mark_sent(pending[i - 1][1])
            self.last_error = None
            return True

    def _deliver(self, pending: list, i: int, alone: bool = False) -> int:
        """Send ``pending[i]`` (with the metric records after it unless ``alone``); the index after
        what went. ``alone`` is the second try after a permanent error: first restore the run."""
        record = pending[i][0]
        if record is None:
            return i + 1  # a torn line
        if alone:
            self._revive(record)
        if record["op"] == "metrics":
            return self._send_metrics(pending, i, max_values=0 if alone else 5000)
        self._send(record)
        return i + 1

    def _revive(self, record: dict) -> None:
        """Undo what the MLflow UI may have done to ``record``'s run since it was last seen: a
        deleted experiment or run is restored; a run purged for good is forgotten (the next
        :meth:`run_id` creates it again)."""
        from mlflow.exceptions import MlflowException

        if record["op"] == "run":
            self._experiment_id = None  # looked up again: restored if deleted
        run_id = self._runs.get(record["key"])
        if run_id is None:
            return
        try:
            info = self.client.get_run(run_id).info
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self._runs.pop(record["key"])
            self._max_step.pop(run_id, None)
            return
        if info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)

    def _experiment(self) -> str:
        if self._experiment_id is None:
            from adpo_ray.orchestration.mlflow_store import experiment_id

            self._experiment_id = experiment_id(self.client, self.experiment, self.artifact_location)
            note = self.spool.header.get("experiment_note")
            if note:  # the experiment's description in the MLflow UI
                self.client.set_experiment_tag(self._experiment_id, "mlflow.note.content", note)
        return self._experiment_id

    def run_id(self, key: str) -> str | None:
        """The MLflow run of ``key``: known, or found by its tag (None if not created yet). A
        run found deleted is restored: it is the one its writes belong to."""
        from mlflow.entities import ViewType

        if key not in self._runs:
            found = self.client.search_runs(
                [self._experiment()], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1,
                run_view_type=ViewType.ALL,
            )
            if found:
                if found[0].info.lifecycle_stage == "deleted":
                    self.client.restore_run(found[0].info.run_id)
                self._remember(key, found[0].info.run_id)
        return self._runs.get(key)

    def known_run(self, key: str) -> str | None:
        """The MLflow run of ``key`` if this sender has met it (no request is made)."""
        return self._runs.get(key)

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    def _remember(self, key: str, run_id: str) -> None:
        self._runs[key] = run_id
        if self.on_run is not None:
            self.on_run(key, run_id, self._experiment_id)

    def _send(self, record: dict) -> None:
        op, key = record["op"], record["key"]
        if op == "run":
            self._create(record)
        elif op == "tag":
            self.client.set_tag(self._require(key), record["name"], record["value"])
        elif op == "status":
            self.client.set_terminated(self._require(key), status=record["status"])
        elif op == "artifact":
            self._send_artifact(self._require(key), record)
        else:
            raise Rejected(f"unknown spool record {op!r}")

    def _create(self, record: dict) -> str:
        """Create the run of a ``run`` record unless it exists, and log its params; its id. A
        param MLflow refuses does not cost the others: they go one by one, then the refused ones
        are named (:class:`Rejected`)."""
        from mlflow.entities import Param

        key = record["key"]
        if self.run_id(key) is None:
            tags = {**record["tags"], RUN_KEY_TAG: key}
            if record.get("parent"):
                tags["mlflow.parentRunId"] = self._require(record["parent"])
            run = self.client.create_run(self._experiment(), run_name=record["name"], tags=tags)
            self._remember(key, run.info.run_id)
        run_id = self._runs[key]
        items = [Param(k, str(v)) for k, v in (record.get("params") or {}).items()]
        refused = []
        for i in range(0, len(items), 100):  # MLflow takes 100 params per batch
            try:
                self.client.log_batch(run_id, params=items[i:i + 100])
            except Exception as e:  # noqa: BLE001 - a refused batch is retried param by param
                if not is_permanent(e):
                    raise
                for item in items[i:i + 100]:
                    try:
                        self.client.log_batch(run_id, params=[item])
                    except Exception as one:  # noqa: BLE001 - transient ones propagate
                        if not is_permanent(one):
                            raise
                        refused.append(f"{item.key}: {reason_of(one)}")
        if refused:
            raise Rejected(f"run {key!r} created, {len(refused)} param(s) refused: " + "; ".join(refused))
        return run_id

    def _require(self, key: str) -> str:
        """The MLflow run of ``key``, created again from its run record if the store lost it;
        :class:`Rejected` naming the cause when it cannot be had."""
        run_id = self.known_run(key)
        if run_id is None and key in self._failed_runs:
            raise Rejected(f"the run of {key!r} was never created: {self._failed_runs[key]}")
        run_id = run_id or self.run_id(key)
        if run_id is None:
            record = next((r for r, _ in self.spool.records() if r and r["op"] == "run" and r["key"] == key), None)
            if record is None:
                raise Rejected(f"the spool holds no run record for {key!r}")
            try:
                run_id = self._create(record)
            except Rejected:  # only its params were refused: that was said when the record went
                run_id = self._runs[key]
        return run_id

    def _send_metrics(self, pending: list, start: int, max_values: int = 5000) -> int:
        """The consecutive metric records from ``start`` (any runs, up to ``max_values`` values),
        one ``log_batch`` per run (1,000 values each at most): a backlog after an outage goes out
        in a few requests, not one per result. Steps a run already holds in MLflow are skipped, so
        a batch sent again after a failure lands once. Returns the index after the records."""
        from mlflow.entities import Metric

        by_run: dict[str, list] = {}
        end, values = start, 0
        while end < len(pending):
            r = pending[end][0]
            if r is None or r["op"] != "metrics" or (end > start and values + len(r["metrics"]) > max_values):
                break
            by_run.setdefault(r["key"], []).append(r)
            values += len(r["metrics"])
            end += 1
        for key, records in by_run.items():
            run_id = self._require(key)
            if run_id not in self._max_step:
                history = self.client.get_metric_history(run_id, ENV_STEPS)
                self._max_step[run_id] = max((m.step for m in history), default=-1)
            batch: list = []
            for r in records:  # whole steps per request: a failed request leaves no step half-sent
                if r["step"] <= self._max_step[run_id]:
                    continue
                if batch and len(batch) + len(r["metrics"]) > 1000:
                    self._log_steps(run_id, batch)
                    batch = []
                batch += [Metric(k, float(v), int(r["time"] * 1000), r["step"]) for k, v in r["metrics"].items()]
            if batch:
                self._log_steps(run_id, batch)
        return max(end, start + 1)

    def _log_steps(self, run_id: str, metrics: list) -> None:
        self.client.log_batch(run_id, metrics=metrics)
        self._max_step[run_id] = max(m.step for m in metrics)

    def _send_artifact(self, run_id: str, record: dict) -> None:
        path, artifact_path = self.spool.resolve(record["path"]), record.get("artifact_path")
        if "://" in path:  # a checkpoint on remote storage (s3://...): fetch it first
            from pyarrow import fs as pafs

            filesystem, remote = pafs.FileSystem.from_uri(path)
            with tempfile.TemporaryDirectory() as tmp:
                pafs.copy_files(remote, tmp, source_filesystem=filesystem)
                self.client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
            return
        if not os.path.exists(path):
            return  # gone (a checkpoint Tune has since replaced): nothing to upload
        if os.path.isdir(path):
            self.client.log_artifacts(run_id, path, artifact_path=artifact_path)
        else:
            self.client.log_artifact(run_id, path, artifact_path=artifact_path)
