"""The ``adpo-ray`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adpo_ray.spec import SpecError, load_spec, method_name

#: The method a report measures every other against, unless --reference names another.
REFERENCE = method_name("adpo", "fixed")


def _console() -> Console:
    return Console(width=max(Console().width, 120))


def cmd_scenarios(args: argparse.Namespace) -> int:
    from adpo_ray.core.noise import scenario_rows

    table = Table(title="Noise scenarios (the twelve + clean reference)")
    for col in ("scenario", "type", "severity", "params", "in_twelve"):
        table.add_column(col)
    for row in scenario_rows():
        table.add_row(*row.values())
    _console().print(table)
    return 0


def print_spec_error(path: str, error: SpecError) -> None:
    """``<path>: invalid`` and one indented ``field.path: message`` line per problem, on stderr."""
    print(f"{path}: invalid", file=sys.stderr)
    for line in error.errors:
        print(f"  {line}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        path = resolve_config(path)  # a file, or the name of a preset (smoke, twelve_scenarios...)
        try:
            spec = load_spec(path, args.set or ())
        except SpecError as e:
            print_spec_error(path, e)
            status = 2
            continue
        print(f"{path}: ok, {spec.trial_count()} trials")
    return status


PRESETS = Path(__file__).resolve().parents[1] / "tune_configs"


def resolve_config(path: str) -> str:
    """A spec path as given, or the name of a shipped preset (``smoke``, ``twelve_scenarios``...),
    so that a script copied alone to a cluster's head node finds the presets of the install."""
    if Path(path).exists():
        return path
    candidates = [PRESETS / path, PRESETS / f"{path}.yaml"]
    if Path(path).parent == Path("tune_configs"):  # `tune_configs/x.yaml` from another folder
        candidates.append(PRESETS / Path(path).name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return path


def _load(path: str, sets=()):
    path = resolve_config(path)
    try:
        return load_spec(path, sets)
    except SpecError as e:
        print_spec_error(path, e)
        if not Path(path).exists():
            names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
            print(f"  presets you can name instead: {names}", file=sys.stderr)
        return None


def local_capacity():
    """This machine, as an embedded Ray would see it."""
    import os

    import torch

    from adpo_ray.orchestration.planning import Capacity, NodeType

    res = {"CPU": float(os.cpu_count() or 1)}
    if torch.cuda.is_available():
        res["GPU"] = float(torch.cuda.device_count())
    return Capacity((NodeType("this machine", res, 1),), "an embedded Ray on this machine")


def _bundles(plan) -> str:
    from collections import Counter

    counts = Counter(", ".join(f"{k}={v:g}" for k, v in sorted(b.items())) for b in plan.bundles)
    return " + ".join(f"{n} x {{{b}}}" if n > 1 else f"{{{b}}}" for b, n in counts.items())


def print_plan(spec, plans, options, capacity, concurrency: int, steps_per_second: dict, sps_source: str) -> None:
    """The dry run: trials grouped by env, method and bundles; what runs at once on the cluster;
    the work and the estimated wall time."""
    from collections import Counter

    from adpo_ray.orchestration.planning import (
        DRIVER_CPU_S_PER_RESULT,
        STARTUP_S,
        env_figure,
        estimate_wall_time,
    )

    console = _console()
    # one row per env, method, bundle and budget; a pack's members count as trials, each showing
    # its pack's bundle and its own budget
    members = [(t, p, p.env_steps // len(p.trials)) for p in plans for t in p.trials]
    groups = Counter((t.env, t.base_method, _bundles(p), steps) for t, p, steps in members)
    hiddens: dict[tuple, list[int]] = {}
    for t, p, steps in members:
        key = (t.env, t.base_method, _bundles(p), steps)
        hiddens.setdefault(key, [])
        if t.hidden_size not in hiddens[key]:
            hiddens[key].append(t.hidden_size)
    table = Table(title=f"{spec.name}: {len(members)} trials")
    steps_label = "dataset states / student" if spec.distill else "env steps / trial"
    for col in ("env", "method", "hidden sizes", "trials", "bundles / Tune trial", steps_label):
        table.add_column(col, justify="right" if col in ("trials", steps_label) else "left")
    for key, n in groups.items():
        env, method, bundles, steps = key
        table.add_row(env, method, ", ".join(map(str, hiddens[key])), str(n), bundles, f"{steps:,}")
    console.print(table)
    packs = [p for p in plans if p.members]
    if packs:
        sizes = Counter((len(p.members), _bundles(p)) for p in packs)
        print(f"trial packs (resources.pack: {spec.resources.pack}): {len(plans)} Tune trials for {len(members)} "
              f"trials: " + "; ".join(f"{n} pack(s) of {k} members, each asking {b}"
                                      for (k, b), n in sorted(sizes.items()))
              + f"; {len(plans) - len(packs)} trial(s) alone (one shape, or a pack cannot run them)")
    total = sum(p.env_steps for p in plans)
    if spec.distill:
        d = spec.distill
        work = (f"students train on {total:,} dataset states in all; before them, per env, a PPO teacher "
                f"({d.teacher.env_steps:,} env steps) and per scenario a dataset of {d.dataset.states:,} states x "
                f"{d.dataset.candidates} candidates scored by {d.dataset.signal} "
                f"({d.dataset.states * d.dataset.candidates * d.dataset.steps_per_candidate:,} simulator steps: "
                f"candidates x {d.dataset.steps_per_candidate} per state), unless MLflow already holds them "
                f"(experiment {d.teacher.experiment!r})")
    else:
        work = f"total env steps: {total:,}"
        init = spec.anchors.init
        if init is not None and init.pretrain is not None:
            n = len(spec.environments) * len(spec.hidden_sizes)
            p = init.pretrain
            budget = f"{p.env_steps:,} env steps" + (f" or {p.iterations:,} iterations, whichever comes first,"
                                                     if p.iterations else "")
            work += (f"; before them, {n} pretrained starting polic{'y' if n == 1 else 'ies'} (PPO on the clean env, "
                     f"{budget} each, one per env and hidden size), unless MLflow "
                     f"already holds them (experiment {p.experiment!r})")
        elif init is not None:
            work += f"; every trial starts from the checkpoint(s) {init.checkpoint}"
    for path, why in spec.departs_from_defaults.items():
        work += f"\ndeparts from the MuJoCo defaults: {path} ({why})"
    methods = len({t.base_method for t, _, _ in members})
    gpu_trials = sum(1 for p in plans if p.required.get("GPU"))
    device = (f"learners: {gpu_trials} Tune trial(s) on a GPU share, {len(plans) - gpu_trials} on CPU "
              f"(resources.learner_device: {spec.resources.learner_device})")
    startup = {env: env_figure(STARTUP_S, env, slowest=max)[0] for env in spec.environments}
    seconds = estimate_wall_time(plans, concurrency, steps_per_second, startup, cpus=capacity.total().get("CPU"),
                                 cpu_s_per_result=DRIVER_CPU_S_PER_RESULT)
    own = seconds - estimate_wall_time(plans, concurrency, steps_per_second, startup)
    low, high = min(startup.values()), max(startup.values())
    starts = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    results = sum(p.results for p in plans)

    def took(s: float) -> str:
        return f"{s / 3600:,.1f} h" if s >= 3600 else f"{max(1, round(s / 60))} min"

    rates = ", ".join(f"{env} {steps_per_second[env]:,.0f}" for env in spec.environments)
    axes = spec.grid_axes()
    points = 1
    for values in axes.values():
        points *= len(values)
    if spec.search is not None:
        s = spec.search
        shape = (f"trials: {len(plans)} = search.num_samples {s.num_samples}"
                 + (f" x {points} grid point(s)" if s.algorithm != "optuna" and points > 1 else "")
                 + f" of one setting ({spec.trials()[0].tag})")
    else:
        shape = (f"trials: {len(members)} = {len(spec.environments)} env(s) x {len(spec.scenario_names)} scenario(s) x "
                 f"{methods} method(s) x {len(spec.hidden_sizes)} hidden size(s) x {len(spec.seeds)} seed(s)"
                 + (f" x {points} sweep point(s)" if spec.sweep else ""))
        alike = spec.grid_size() - len(members)
        if alike:
            shape += (f", less {alike:,} that would train exactly as another (at a point that differs only "
                      "in knobs their method does not read, e.g. adpo.* for ppo)")
    for path, value in spec.sweep.items():
        shape += (f"\nsweep {path}: " + (", ".join(map(str, value)) + f" ({len(value)} values)"
                  if isinstance(value, list) else f"{value.kind} {getattr(value, value.kind)}"))
    if spec.search is not None:
        s = spec.search
        shape += (f"\nsearch: {s.algorithm}, {s.mode} {s.metric}"
                  + (f", ASHA early stopping (grace {s.asha.grace_period} iterations, reduction factor "
                     f"{s.asha.reduction_factor:g}; the wall time below assumes no trial stops early)" if s.asha else ""))
    print(
        f"{shape}\n"
        f"{work}\n"
        f"{device}\n"
        f"cluster at full scale: {capacity.describe()}\n"
        f"at once: {concurrency} {'Tune trial(s) (packs or trials)' if packs else 'trial(s)'}\n"
        f"estimated wall time: {took(seconds)} at {rates} {'dataset states' if spec.distill else 'env steps'}/s per trial and "
        f"{starts} s to start each ({sps_source})"
        f"{'; packs at the speed-ups bench/throughput.py --packs measured (CPU)' if packs else ''}"
        + (f"; {took(own)} of it the launch's own CPU work ({results:,} trial results, "
           f"{DRIVER_CPU_S_PER_RESULT * 1000:g} ms of CPU each for Tune's driver, the MLflow tracker and Ray, "
           f"bench/driver.py), taken from the trials' CPUs" if own >= 30 else "") + "\n"
        f"tracking: {options.tracking_uri}\nresults:  {options.run_dir}"
    )


def print_summary(run) -> None:
    """The end of a launch or a resume (a :class:`~adpo_ray.orchestration.launch.GridRun`): the
    headline table per env, unfinished and errored trials, where MLflow and the results are,
    then the report (or why there is none)."""
    from adpo_ray.report.summary import headline_table

    spec, frame, options = run.spec, run.summary, run.options
    console = _console()
    for env in spec.environments:
        pivot, metric = headline_table(frame, env)
        if pivot is None:
            continue
        pivot = pivot.reindex([s for s in spec.scenario_names if s in pivot.index])
        table = Table(title=f"{env}: final {metric} (mean over seeds and hidden sizes)")
        table.add_column("scenario")
        for col in pivot.columns:
            table.add_column(str(col), justify="right")
        for scenario, row in pivot.iterrows():
            table.add_row(str(scenario), *(f"{v:.3f}" if v == v else "-" for v in row.values))
        console.print(table)
    unfinished = frame[frame["status"] == "UNFINISHED"] if len(frame) else frame
    if len(unfinished):
        console.print(f"{len(unfinished)} trial(s) unfinished, left out of the table above")
    errored = frame[frame["status"] == "ERROR"] if len(frame) else frame
    if len(errored):
        console.print(f"[red]{len(errored)} trial(s) errored[/red]: {', '.join(errored['env'] + ':' + errored['scenario'] + ':' + errored['method'])}")
    from adpo_ray.orchestration.cluster import console_script

    board = console_script("tensorboard")
    tensorboard = f"   (TensorBoard: {board} --logdir {options.run_dir})" if board else ""
    ui = ui_command(options.tracking_uri, options.artifact_location)
    if make_ui_serves(options.tracking_uri):
        ui += "   (or `make mlflow-ui`)"
    print(
        f"\nMLflow experiment '{spec.experiment_name}' at {options.tracking_uri}\n"
        f"  open the UI:  {ui}, then http://127.0.0.1:5000\n"
        f"  Tune results: {options.run_dir}{tensorboard}\n"
        f"  summary CSV:  {options.run_dir}/summary.csv"
    )
    for note in run.notes:
        print(note)
    if run.report:
        print(report_line(run.report))


def ui_command(tracking_uri: str, artifact_location: str | None = None) -> str:
    """The ``mlflow ui`` command that serves ``tracking_uri`` on http://127.0.0.1:5000."""
    from adpo_ray.orchestration.cluster import console_script

    ui = f"{console_script('mlflow') or 'mlflow'} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    if tracking_uri.startswith("sqlite:") and artifact_location:
        ui += f" --default-artifact-root {artifact_location}"
    return ui


def make_ui_serves(tracking_uri: str) -> bool:
    """Whether ``make mlflow-ui`` serves ``tracking_uri``: the repository's own ``./mlflow.db``
    (from anywhere else it would show another store)."""
    from adpo_ray.orchestration.mlflow_store import default_tracking_uri

    root = Path(__file__).resolve().parents[1]
    return (root / "Makefile").is_file() and tracking_uri == default_tracking_uri(root)


def report_line(files: dict[str, Path]) -> str:
    """``report: <report.html> (...)``: what a report holds, from its files by name."""
    return (f"report: {files['report.html']}  ({files['report.md'].name}, results.csv, "
            f"{sum(p.suffix == '.png' for p in files.values())} plots)")


def write_report(args_out: str | None, data, tracking_uri: str | None, reference: str = REFERENCE) -> Path:
    from adpo_ray.report.build import build_report, log_report

    out = Path(args_out)
    files = build_report(data, out, reference=reference)
    if tracking_uri and data.parent_run_id:
        log_report(tracking_uri, data.parent_run_id, out)
    print(report_line(files))
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from adpo_ray.orchestration.mlflow_store import default_tracking_uri, existing_store
    from adpo_ray.orchestration.run_folder import local_run_dir
    from adpo_ray.report.data import load_mlflow, load_tune_folder

    try:
        if args.results:
            data = load_tune_folder(local_run_dir(args.results, "--results", "adpo-ray report --results"))
            uri = None
        else:
            if not args.experiment:
                print("error: give --experiment NAME (MLflow) or --results DIR (Tune folder)", file=sys.stderr)
                return 2
            uri = args.tracking_uri or default_tracking_uri()
            data = load_mlflow(existing_store(uri), args.experiment, args.run)
    except (LookupError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(args.out, data, uri if not args.no_log else None, reference=args.reference)
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from adpo_ray.orchestration.launch import resolve_options, run_grid
    from adpo_ray.orchestration.mlflow_store import TrackingError
    from adpo_ray.orchestration.planning import ResourceError, plan_trials

    spec = _load(args.config, args.set or ())
    if spec is None:
        return 2
    try:
        options = resolve_options(
            spec, tracking_uri=args.tracking_uri, storage_path=args.storage_path, name=args.name,
            address=args.address, max_concurrent=args.max_concurrent,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        plans = plan_trials(spec)
    except ValueError as e:
        print(f"{args.config}: the RLlib config of a trial is invalid: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            return dry_run(spec, options, args, plans)
        except ResourceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        run = run_grid(spec, options, plans=plans, report=not args.no_report)
    except (ResourceError, TrackingError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _after_grid(run)


def _after_grid(run) -> int:
    """Print the end of a launch or a resume; its exit status (1: a trial errored, or a grid that
    was not interrupted left a trial unfinished; 130: interrupted)."""
    print_summary(run)
    if run.interrupted:
        return _interrupted(run.options)
    if run.unfinished and not run.errors:
        print(f"\n{run.unfinished} trial(s) ended before their budget without an error; finish them with\n"
              f"  adpo-ray resume {run.options.run_dir}")
    return 1 if run.errors or run.unfinished else 0


#: The exit status of an interrupted launch or resume (128 + SIGINT, as a shell reports Ctrl-C).
EXIT_INTERRUPTED = 130


def _interrupted(options) -> int:
    print(f"\ninterrupted: the unfinished trials stopped where they were (MLflow: KILLED); finish the "
          f"grid with\n  adpo-ray resume {options.run_dir}")
    return EXIT_INTERRUPTED


def dry_run(spec, options, args, plans) -> int:
    """Print the capacity plan: on the cluster YAML given (full scale), else on this machine.
    ``plans``: :func:`~adpo_ray.orchestration.planning.plan_trials` of ``spec``, made again only
    where the cluster gives learners a GPU share."""
    from adpo_ray.orchestration.planning import (
        STUDENT_THROUGHPUT,
        STUDENT_THROUGHPUT_SOURCE,
        THROUGHPUT,
        THROUGHPUT_SOURCE,
        capacity_from_yaml,
        check_fits,
        env_figure,
        max_concurrent,
        plan_trials,
        resolve_learner_gpus,
    )

    capacity = capacity_from_yaml(args.cluster, args.max_workers) if args.cluster else local_capacity()
    resolved = resolve_learner_gpus(spec, capacity)
    if resolved is not spec:
        spec, plans = resolved, plan_trials(resolved)
    check_fits(plans, capacity)
    concurrency = max_concurrent(plans, capacity, options.max_concurrent or spec.resources.max_concurrent_trials)
    if args.steps_per_second:
        sps, source = dict.fromkeys(spec.environments, args.steps_per_second), "--steps-per-second"
    else:
        table, source = ((STUDENT_THROUGHPUT, STUDENT_THROUGHPUT_SOURCE) if spec.distill is not None
                         else (THROUGHPUT, THROUGHPUT_SOURCE))
        figures = {env: env_figure(table, env) for env in spec.environments}
        sps = {env: rate for env, (rate, _) in figures.items()}
        source = "; ".join([source, *(note for _, note in figures.values() if note)])
    print_plan(spec, plans, options, capacity, concurrency, sps, source)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from adpo_ray.orchestration.launch import resume_grid

    try:
        run = resume_grid(args.run_dir, address=args.address, report=not args.no_report)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _after_grid(run)


def cmd_status(args: argparse.Namespace) -> int:
    """Trials by state, env steps done over budget per env, an ETA, the MLflow parent run; given a
    run id, that trial's progress first (a pack member's own), then its launch's."""
    import os

    from adpo_ray.orchestration import storage
    from adpo_ray.orchestration.status import grid_status, run_status

    target = args.run_dir
    folder = os.path.exists(target) or storage.is_uri(target) or os.sep in target
    try:
        if folder or not (_looks_like_run_id(target) or args.tracking_uri):
            _print_grid_status(grid_status(target))
            return 0
        from adpo_ray.orchestration.mlflow_store import default_tracking_uri

        found = run_status(target, args.tracking_uri or default_tracking_uri())
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if found.trial is not None:
        t = found.trial
        state = t.state or t.run_status.lower()
        print(f"trial {t.trial} ({t.method}, {t.env} / {t.scenario}): {state}")
        if t.pack is not None:
            print(f"  member {t.member} of the trial pack {t.pack!r} (its Tune trial)")
        budget = f" / {t.steps_budget:,} ({t.logged_steps / t.steps_budget:.0%})" if t.steps_budget else ""
        print(f"  env steps: {t.logged_steps:,}{budget} in its MLflow run {t.run_id} ({t.run_status})")
    if found.grid is not None:
        print(f"launch folder: {found.run_dir}")
        _print_grid_status(found.grid)
    else:
        print(f"launch folder: {found.run_dir or 'unknown'} ({found.note}); `adpo-ray status RUN_DIR` on a machine "
              "that has it shows the whole grid")
    return 0


def _looks_like_run_id(text: str) -> bool:
    """An MLflow run id: 32 hex digits."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def _print_grid_status(st) -> None:
    from adpo_ray.orchestration.status import STATES

    run_dir = st.run_dir
    table = Table(title=f"{st.launch}: {'running' if st.alive else 'not running'}")
    for col in ("env", *STATES, "env steps done / budget"):
        table.add_column(col, justify="left" if col == "env" else "right")
    for env, p in st.envs.items():
        share = p.steps_done / p.steps_budget if p.steps_budget else 0.0
        table.add_row(env, *(str(p.trials[s]) for s in STATES),
                      f"{p.steps_done:,} / {p.steps_budget:,} ({share:.0%})")
    _console().print(table)
    eta = st.eta_s
    lines = ["trials: " + ", ".join(f"{n} {s}" for s, n in st.trials.items() if n)]
    if eta is not None:
        lines.append(f"ETA: {eta / 3600:.1f} h at the pace so far" if eta >= 3600 else f"ETA: {max(1, round(eta / 60))} min at the pace so far")
    elif not st.alive and st.trials["finished"] < sum(st.trials.values()):
        lines.append(f"the launch is not running: `adpo-ray resume {run_dir}` finishes it")
    if st.parent_run_id:
        lines.append(f"MLflow parent run: {st.parent_run_id} (experiment {st.experiment_id}) at {st.tracking_uri}")
        if st.ui_link:
            hint = "" if st.tracking_uri.startswith("http") else \
                f"  (after `{ui_command(st.tracking_uri)}`{' or `make mlflow-ui`' if make_ui_serves(st.tracking_uri) else ''})"
            lines.append(f"  {st.ui_link}{hint}")
    if st.mlflow_pending:
        lines.append(f"MLflow writes pending: {st.mlflow_pending} (`adpo-ray sync {run_dir}` delivers them)")
    print("\n".join(lines))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Roll a trained policy out on a scenario; with a run id, log the result to that run. Reads
    the checkpoint's files and rolls out in this process: no Ray starts."""
    from adpo_ray.core.noise import get_scenario
    from adpo_ray.orchestration.evaluate import checkpoint_of, evaluate, log_evaluation
    from adpo_ray.orchestration.mlflow_store import default_tracking_uri

    try:
        get_scenario(args.scenario)
    except ValueError as e:
        print(f"error: --scenario: {e}", file=sys.stderr)
        return 2
    uri = args.tracking_uri or default_tracking_uri()
    try:
        checkpoint, run_id, member = checkpoint_of(args.source, uri, args.member)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = run_id or (checkpoint.name if member is None else f"{checkpoint.name}_member{member}")
    video = Path(args.video_dir or ".") / f"{name}_{args.scenario}.mp4" if args.video else None
    try:
        result = evaluate(checkpoint, scenario=args.scenario, episodes=args.episodes, video=video, member=member)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if member is not None:
        print(f"trial pack member {member}:", end=" ")
    if result.metric == "winmass":
        print(f"{result.env} / {result.scenario}: WinMass {result.mean:.4f} (held-out nominal contexts)")
    else:
        print(f"{result.env} / {result.scenario}: clean return {result.mean:.1f} ± {result.std:.1f} "
              f"over {result.episodes} episode(s) of the mean action")
    if result.video_note:
        print(result.video_note)
    if run_id:
        log_evaluation(uri, run_id, result)
        print(f"logged to run {run_id}: {', '.join(result.metrics())}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Deliver a launch's MLflow writes that its tracker could not send (store unreachable); exit
    1 while some are still pending, 0 when none is (writes MLflow refused for good are counted
    and kept aside, never retried)."""
    from adpo_ray.orchestration.run_folder import load_grid_file, resolve_run_dir
    from adpo_ray.orchestration.tracking import sync

    try:
        run_dir = resolve_run_dir(args.run_dir)
        _, options = load_grid_file(run_dir)
        res = sync(run_dir, options.name, timeout_s=args.timeout)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rejected = (f"; {res.rejected} refused by MLflow for good now, {res.rejected_total} in all "
                f"(kept with MLflow's reasons in {res.rejected_file})" if res.rejected_total else "")
    if res.pending:
        print(f"MLflow: {res.delivered} write(s) delivered, {res.pending} still pending ({res.last_error}){rejected}; "
              f"run `adpo-ray sync {run_dir}` again once the tracking store answers")
        return 1
    print(f"MLflow: {res.delivered} write(s) delivered; nothing pending{rejected}")
    return 0


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``, with a message naming what is allowed."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be a whole number >= {minimum}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE",
                   help="experiment spec (YAML), or the name of a preset in tune_configs/ (e.g. smoke)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--storage-path", help="Tune results folder or URI, e.g. s3://bucket/path (default: ./ray_results)")
    p.add_argument("--name", help="name of this launch (default: <spec name>-<timestamp>)")
    p.add_argument("--address", help="Ray cluster address ('auto' to join a running cluster; default: $RAY_ADDRESS or an embedded Ray)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the trials, their bundles, what runs at once and an estimated wall time; start nothing")
    p.add_argument("--cluster", metavar="YAML",
                   help="with --dry-run: plan for this cluster YAML at full scale (default: this machine)")
    p.add_argument("--max-workers", type=_int_at_least(0), metavar="N",
                   help="with --cluster: plan for at most N worker nodes (default: the YAML's max_workers), "
                        "e.g. 0 for the head alone")
    p.add_argument("--steps-per-second", type=_positive_float, metavar="R",
                   help="with --dry-run: env steps per second of one trial, for the time estimate "
                        "(default: the measured figures of bench/throughput.py)")
    p.add_argument("--max-concurrent", type=_int_at_least(1), metavar="N",
                   help="run at most N trials at once (default: resources.max_concurrent_trials, else "
                        "as many as the cluster holds at full scale, its autoscaler's node types included)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    add_set_argument(p)


def add_set_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec field by its dotted path, e.g. --set train.lr=0.001 or "
                        "--set 'sweep.adpo.beta_q=[0.5, 1, 2]' (VALUE is YAML; repeatable; validated like the file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpo-ray",
        description="Anchored Direct Preference Optimization experiments on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scenarios", help="print the table of noise scenarios")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("validate", help="check experiment spec files; exit 2 on errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    add_set_argument(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("grid", help="run an experiment grid on Ray Tune, tracked in MLflow")
    add_grid_arguments(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("report", help="tables with confidence intervals and plots for a grid")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (the spec's name)")
    p.add_argument("--run", help="parent run id of one launch (default: the latest launch)")
    p.add_argument("--results", metavar="DIR", help="read a Tune results folder instead of MLflow")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the report")
    p.add_argument("--no-log", action="store_true", help="do not attach the report to the parent MLflow run")
    p.add_argument("--reference", default=REFERENCE, metavar="METHOD",
                   help="the method every other is measured against (default: %(default)s)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="roll a trained policy out on a scenario (a child run id or a checkpoint)")
    p.add_argument("source", metavar="CHILD_RUN_ID|CHECKPOINT",
                   help="a grid's child run (a solo trial's or a trial pack member's) or a checkpoint folder")
    p.add_argument("--member", type=_int_at_least(0), metavar="K",
                   help="with a trial pack's checkpoint folder: the member to evaluate, counted from 0 (its "
                        "run's pack_member tag; a member's run id needs none)")
    p.add_argument("--scenario", default="clean", help="a scenario name (default: clean; `adpo-ray scenarios` lists them)")
    p.add_argument("--episodes", type=_int_at_least(1), default=10, metavar="N", help="MuJoCo episodes (default 10)")
    p.add_argument("--video", action="store_true", help="also record one episode as an MP4 (MuJoCo, offscreen)")
    p.add_argument("--video-dir", metavar="DIR", help="where the MP4 goes (default: .)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a run id (default: sqlite:///<cwd>/mlflow.db)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("status", help="where a grid stands: trials by state, env steps, ETA, MLflow run")
    p.add_argument("run_dir", metavar="RUN_DIR|RUN_ID",
                   help="a launch's results folder, or an MLflow run id: a trial's child run (a solo trial's or "
                        "a trial pack member's: that trial's progress, then its launch's) or a launch's parent run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a run id (default: sqlite:///<cwd>/mlflow.db)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sync", help="deliver a launch's MLflow writes kept while the tracking store was away")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (default 300)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("resume", help="finish an interrupted grid from its results folder")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--address", help="Ray cluster address (default: as launched)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.set_defaults(func=cmd_resume)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    # RLlib warns "You are running ADPO on the new API stack!" for every config built: a choice
    # this project made on purpose, not news for its users.
    logging.getLogger("ray.rllib.algorithms.algorithm_config").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
