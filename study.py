# The generalisation study: train every (method, seed), then score each trained population as the
# focal player beside every population it never met, with confidence intervals, tables and plots.
# Protocol, statistics and outputs: docs/study.md
import glob
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

import cluster
import eval_scenarios
import utils

ROOT = os.path.dirname(os.path.abspath(__file__))
RANDOM, UNTRAINED = "uniform_random", "untrained"  # the two reference backgrounds
RUNNER_FLAGS = ("--seed", "--total-timesteps", "--substrate", "--resume")  # set by the study, per run


@dataclass
class Args:
    out: str = "studies/study"
    """the study's directory: runs, evaluation results, tables and plots; a second call continues it"""
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate every method trains and is evaluated on"""
    methods: list[str] = field(default_factory=lambda: ["mappo", "bidist_mappo"])
    """training scripts by name, each optionally with flags and a label: `bidist_mappo`, or
    `"bidist_p03=bidist_mappo --p 0.3"` (label=script flags)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """training seeds: every method trains once per seed (unless --seeds-of names its own)"""
    seeds_of: list[str] = field(default_factory=list)
    """LABEL=SEED,SEED,...: the seeds of one method instead of --seeds, e.g. `bidist_mappo=1,2,3,4,5` (five
    seeds for the methods whose intervals overlap, three for the rest)"""
    total_timesteps: int = 300_000
    """environment steps of every training run"""
    train_flags: str = ""
    """flags for every training run, before each method's own (e.g. "--num-envs 16")"""
    runs: list[str] = field(default_factory=list)
    """populations trained elsewhere, added to the study: checkpoints or run directories, optionally
    `label=path` (default label: the run's exp_name); one exported by another study (RESULTS/runs/NAME/
    population.pt) brings the pairs that study played of it (RESULTS/crossplay_episodes.csv)"""
    parallel: Optional[int] = None
    """training runs at a time (default: one per core; with --ray, as many as the cluster's free CPUs take)"""
    threads: Optional[int] = None
    """torch threads and env workers of each training run, and the CPUs it asks a Ray cluster for (default:
    cores / parallel, 1 with --ray; 1 leaves room for a run started outside the study)"""
    snapshot_every: Optional[int] = None
    """passed to the training scripts (default: about 10 snapshots per run)"""
    num_episodes: int = 10
    """evaluation episodes per (focal population, background population) pair"""
    num_focal: int = 1
    """focal slots per evaluation episode; the other slots play the background population"""
    num_untrained: int = 3
    """untrained (randomly initialised) networks forming the `untrained` reference background"""
    seed: int = 1
    """seeds the evaluation episodes (derived per pair and episode from the populations' names)"""
    num_workers: Optional[int] = None
    """evaluation worker processes (default: one per core)"""
    reference: Optional[tuple[float, float]] = None
    """MIN MAX reference returns of the substrate: adds min-max normalised scores"""
    bootstrap_samples: int = 10_000
    """resamples of the (stratified, hierarchical) bootstrap behind every confidence interval"""
    policy_space: bool = True
    """draw the policy-space picture from the runs' snapshots (--no-policy-space: skip it)"""
    train_only: bool = False
    """stop after training"""
    results: Optional[str] = None
    """a folder to commit (e.g. results/NAME) that the study exports to as it goes and reads back: each
    finished run's population (actor-only, float16) and its training log binned over env steps, as soon as
    the run finishes; every cross-play episode; the tables and plots. A run or pair found there is not
    trained or played again, so a later call on another machine adds only what is new"""
    ray: Optional[str] = None
    """run every training run and every cross-play episode as a task of this Ray cluster: its address, `auto`
    (the cluster this machine belongs to, or $RAY_ADDRESS) or `local` (a new one on this machine); needs
    `pip install -r requirements-ray.txt` (docs/study.md#on-a-ray-cluster)"""
    ray_gpus: float = 0.0
    """with --ray: the GPUs (or share of one, e.g. 0.25) each training run asks the cluster for"""
    from_results: Optional[str] = None
    """regenerate the tables and plots of a study exported with --results from that folder alone: no
    training, no episode played (every other flag is read from its study.json)"""
    against: Optional[str] = None
    """an exported study (a --results folder, e.g. results/coins_1m) as the yardstick: this study's
    populations play beside each of its populations, and every method's held-out return is its return beside
    them alone. Its runs are not trained and its pairs not played again, and its own numbers do not change,
    so a new method is measured against a published study"""
    all_pairs: bool = False
    """with --against: also play this study's populations beside each other, and the yardstick's beside
    them, so that the held-out-by-background-method table has a column for every method (held-out itself stays
    the return beside the yardstick); the pairs grow with the square of the populations"""


@dataclass(frozen=True)
class Method:
    label: str
    script: str
    flags: tuple


def parse_method(spec, check=True):
    """`[label=]script [flags]` -> Method; one-line errors for an unknown script or a flag the study sets, and
    (`check`) for a flag the script does not take. --from-results does not check that: it trains nothing, and
    the study it reads may have trained with a flag the script has since dropped (a scheme that lost)."""
    label, _, rest = spec.partition("=") if "=" in spec.split(" ")[0] else (None, None, spec)
    words = shlex.split(rest)
    if not words:
        raise SystemExit(f"error: --methods {spec!r} names no script")
    script, flags = words[0].removesuffix(".py"), tuple(words[1:])
    module = utils.training_script(script, f"--methods {spec!r} names", root=eval_scenarios.HERE)
    for flag in flags:
        if flag.split("=")[0] in RUNNER_FLAGS:
            raise SystemExit(
                f"error: --methods {spec!r} sets {flag.split('=')[0]}, which the study sets per run "
                f"(use --seeds / --total-timesteps / --substrate)"
            )
    if check:
        check_flags(module, script, flags, f"--methods {spec!r}")
    if label is None:
        label = script + "".join(f"_{w.lstrip('-')}" for w in flags)
    if not label or any(c in label for c in "/ "):
        raise SystemExit(f"error: --methods {spec!r}: the label must be non-empty, without '/' or spaces")
    return Method(label, script, flags)


def seeds_by_method(seeds, seeds_of, methods):
    """{label: its training seeds}: `seeds` (--seeds), or the seeds that `seeds_of` (--seeds-of, each
    LABEL=SEED,SEED,...) gives a method; one-line errors for a malformed entry, a label no method has, a
    method named twice, and a seed listed twice."""
    by_method = {m.label: list(seeds) for m in methods}
    given = {}
    for spec in seeds_of:
        label, _, listed = spec.partition("=")
        try:
            listed = [int(seed) for seed in listed.split(",")]
        except ValueError:
            raise SystemExit(f"error: --seeds-of {spec!r}: write LABEL=SEED,SEED,... (e.g. bidist_mappo=1,2,3,4,5)") from None
        if label not in by_method:
            raise SystemExit(f"error: --seeds-of {spec!r}: no method labelled {label!r} (--methods: {', '.join(by_method)})")
        if label in given:
            raise SystemExit(f"error: --seeds-of names {label} twice; give all its seeds in one {label}=SEED,SEED,...")
        given[label] = listed
    by_method.update(given)
    for label, listed in by_method.items():
        if len(set(listed)) < len(listed):
            where = f"--seeds-of {label}=..." if label in given else "--seeds"
            raise SystemExit(f"error: {where} lists seed {max(listed, key=listed.count)} twice")
    return by_method


def check_flags(module, script, words, what):
    """A one-line error, before any training starts, for a flag in `words` that `script`'s Args has no field for."""
    names = {f.name.replace("_", "-") for f in fields(module.Args)}
    for word in words:
        flag = word.split("=")[0]
        if flag.startswith("--") and flag[2:] not in names and not (flag.startswith("--no-") and flag[5:] in names):
            raise SystemExit(f"error: {what} passes {flag}, which {script}.py does not take (python {script}.py --help)")


# ---------------------------------------------------------------------------------------------
# Training: every (method, seed) as a subprocess in its own directory, resumed where it stopped


@dataclass
class Run:
    method: Method
    seed: int
    directory: str  # the training script's working directory: its run lands in directory/runs/
    results: Optional[str] = None  # the --results folder of its export when that is another study's (--against)

    @property
    def name(self):
        return f"{self.method.label}__seed{self.seed}"

    def checkpoint(self):
        found = sorted(glob.glob(f"{self.directory}/runs/*/checkpoint.pt"))
        return found[-1] if found else None


def run_status(run, total_timesteps):
    """ "done" (its final checkpoint has `total_timesteps`), "resume" (a checkpoint short of it) or "new"."""
    path = run.checkpoint()
    if path is None:
        return "new"
    checkpoint = utils.read_file(path, f"the checkpoint of {run.name}:")
    saved = checkpoint["args"]
    iterations = total_timesteps // (saved["num_envs"] * saved["num_steps"])
    return "done" if checkpoint["iteration"] >= iterations else "resume"


def train_job(run, args, threads):
    """The training job of `run`: the study's flags, then every run's (--train-flags), then the method's own;
    whoever runs it adds --resume when the run's folder holds a checkpoint (cluster.command_in)."""
    flags = ["--seed", str(run.seed), "--substrate", args.substrate, "--total-timesteps", str(args.total_timesteps)]
    flag_names = {f.split("=")[0] for f in shlex.split(args.train_flags) + list(run.method.flags)}
    if "--num-workers" not in flag_names:
        flags += ["--num-workers", str(threads)]
    if "--torch-threads" not in flag_names:
        flags += ["--torch-threads", str(threads)]
    if "--snapshot-every" not in flag_names:
        flags += ["--snapshot-every", str(args.snapshot_every)]
    flags += shlex.split(args.train_flags) + list(run.method.flags)
    return cluster.TrainJob(run.name, f"{run.method.script}.py", flags, os.path.abspath(run.directory), threads)


class Progress:
    """A running run's progress from its own TensorBoard log (read incrementally), as one short line: its env
    steps, `charts/SPS` and the mean of its last 20 `charts/episodic_return`s. The log is flushed every two
    minutes, so the line may be that old."""

    def __init__(self, run, total_timesteps):
        self.run, self.total, self.events = run, total_timesteps, None

    def line(self):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        if self.events is None:
            found = sorted(glob.glob(f"{self.run.directory}/runs/*/events.out.tfevents.*"))
            if not found:
                return ""
            self.events = EventAccumulator(os.path.dirname(found[-1]), size_guidance={"scalars": 0})
        self.events.Reload()
        tags = set(self.events.Tags()["scalars"])
        if "charts/SPS" not in tags:
            return ""
        sps = self.events.Scalars("charts/SPS")[-1]
        returns = [e.value for e in self.events.Scalars(RETURN_TAG)[-20:]] if RETURN_TAG in tags else []
        return f"step {sps.step:,}/{self.total:,} ({sps.step / self.total:.0%}) | SPS {sps.value:,.0f} | return/player " + (
            f"{np.mean(returns):.2f}" if returns else "-"
        )


def train_all(runs, args, runner):
    """Trains every run that is not done, `parallel` at a time, as `runner` runs them (cluster.Local: here,
    cluster.OnRay: on a Ray cluster); returns when all are done. A run exported to --results is done; any other
    finished run is exported there as soon as it finishes. A failed run is reported once, with the last lines
    of its log, and ends the study with one line naming it after the others finish."""
    cores = os.cpu_count() or 1
    on_ray = isinstance(runner, cluster.OnRay)
    parallel = args.parallel or (len(runs) if on_ray else cores)  # on Ray, the cluster's free CPUs decide
    per_run = args.threads or (1 if on_ray else max(1, cores // parallel))  # torch threads and env workers
    pending = []
    for run in runs:
        status = run_status(run, args.total_timesteps)
        if exported_population(run, args) and status != "done":
            print(f"{run.name}: finished, in {args.results}, not retrained")
            continue
        if status == "done":
            print(f"{run.name}: finished, not retrained ({run.checkpoint()})")
            if args.results and not exported_population(run, args):
                export_run(run, args)
        else:
            pending.append((run, status))
    if not pending:
        return
    print(
        f"training {len(pending)} run(s) on {runner.where}, {min(parallel, len(pending))} at a time, {per_run} torch "
        f"thread(s) and {per_run} env worker(s) each; logs in {args.out}/<run>/train.log",
        flush=True,
    )
    running, failed, last_print = {}, [], 0.0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                run, status = pending.pop(0)
                runner.start(train_job(run, args, per_run))
                running[run.name] = (run, Progress(run, args.total_timesteps))
                print(f"{run.name}: {'resumed from ' + run.checkpoint() if status == 'resume' else 'started'}", flush=True)
            time.sleep(1)
            for done in runner.finished():
                run, _ = running.pop(done.name)
                where = f" on {done.where}" if done.where else ""
                if done.returncode == 0:
                    hours = run_wall_time(os.path.dirname(run.checkpoint())) if run.checkpoint() else np.nan
                    took = "" if np.isnan(hours) else f" ({hours:.2f} h of training)"
                    print(f"{done.name}: finished{where}{took}", flush=True)
                    if args.results:
                        export_run(run, args)
                else:
                    failed.append(run)
                    print(
                        f"{done.name}: FAILED (exit code {done.returncode}){where}, see {run.directory}/train.log; "
                        f"its last lines:\n" + "\n".join(f"    {line}" for line in done.tail.splitlines()),
                        flush=True,
                    )
            if running and time.time() - last_print > 60:
                last_print = time.time()
                for name, (_, progress) in running.items():
                    line = progress.line()
                    if line:
                        print(f"  {name}: {line}", flush=True)
    except KeyboardInterrupt:
        runner.interrupt()  # the scripts save a checkpoint on Ctrl-C
        raise SystemExit("interrupted: checkpoints saved; the same command continues the study") from None
    if failed:
        raise SystemExit(
            f"error: {len(failed)} training run(s) failed: {', '.join(f'{r.name} ({r.directory}/train.log)' for r in failed)}"
        )


# ---------------------------------------------------------------------------------------------
# What the runs' own logs say: the return every script logs, and each method's own scalars, read by name
# space so that a new method's diagnostics reach training.md with no edit here

RETURN_TAG = "charts/episodic_return"  # the contract: every script's trained slots' per-player episode return
RETURN_COLUMN = "return (trained slots), last 10%"
WALL_COLUMN = "wall time per run, hours"
SHARED_NAMESPACES = ("charts", "losses", "players")  # what every script logs; any other namespace is a method's own
OWN_STATISTICS = ("last 10%", "minimum", "final")


def last_tenth(steps, values, last_step):
    """The mean of `values` logged after 90% of `last_step`, or nan when none was."""
    late = steps > 0.9 * last_step
    return values[late].mean() if late.any() else np.nan


def training_row(scalars):
    """One run's statistics from its {tag: (steps, values)}: RETURN_COLUMN, and for every scalar in a namespace
    of the method's own (not SHARED_NAMESPACES) its mean over the last 10% of env steps, its minimum and its
    final value, as `{tag} ({statistic})`."""
    last_step = max((steps.max() for steps, _ in scalars.values() if len(steps)), default=0)
    row = {}
    if RETURN_TAG in scalars and len(scalars[RETURN_TAG][0]):
        row[RETURN_COLUMN] = last_tenth(*scalars[RETURN_TAG], last_step)
    for tag, (steps, values) in sorted(scalars.items()):
        if tag.split("/")[0] in SHARED_NAMESPACES or not len(steps):
            continue
        statistics = last_tenth(steps, values, last_step), values.min(), values[np.argmax(steps)]
        row.update({f"{tag} ({name})": float(value) for name, value in zip(OWN_STATISTICS, statistics)})
    return row


def run_scalars(run_dir, tags=None):
    """{tag: (steps, values)} of the tags (default: all) a run's TensorBoard log holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a resumed run logs again the steps after its last checkpoint: the later values replace the earlier
    # ones, as they should, with a warning per run that says nothing to a user
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags()["scalars"])
    return {
        tag: np.array([(e.step, e.value) for e in events.Scalars(tag)]).reshape(-1, 2).T
        for tag in (sorted(found) if tags is None else tags)
        if tag in found
    }


def run_wall_time(run_dir):
    """Hours a run's training took: per TensorBoard event file (one per process: a resumed run writes
    another), the time from its first logged value to its last, summed, so that the pauses between sessions
    count for nothing; nan when none was logged."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seconds = np.nan
    for path in glob.glob(f"{run_dir}/events.out.tfevents.*"):
        times = [event.wall_time for event in EventFileLoader(path).Load() if event.summary.value]
        if times:
            seconds = np.nansum([seconds, max(times) - min(times)])
    return seconds / 3600


def mean_and_range(values, digits="{:.2f}"):
    """'mean' of one value, 'mean (min to max)' of several, '-' of none (nan dropped), each as `digits` writes it."""
    values = np.array(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return "-"
    mean, low, high = (digits.format(v) for v in (values.mean(), values.min(), values.max()))
    return mean if len(values) == 1 else f"{mean} ({low} to {high})"


def mean_interval_and_range(values):
    """'mean [low, high] (min to max)': the mean, its 95% t-interval and the range of several values (nan
    dropped); `mean_and_range` of fewer than two."""
    values = np.array(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return mean_and_range(values)
    half = eval_scenarios.confidence_interval(values)
    mean = values.mean()
    return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] ({values.min():.2f} to {values.max():.2f})"


def training_summary(runs, results=None):
    """Per method, the mean over its seeds of the return over the last 10% of training with its 95% t-interval
    and range over the seeds, and each of its own scalars' statistics (`training_row`) as the mean over seeds
    (range), from the runs' own logs, or for a run known
    only from its export in `results`, from the statistics exported with it; markdown, or '' when no run has
    either."""
    per_method = {}
    for run in runs:
        checkpoint = run.checkpoint()
        exported = exported_file(run, results, "summary.json")
        if checkpoint is not None:
            row = training_row(run_scalars(os.path.dirname(checkpoint)))
            row[WALL_COLUMN] = run_wall_time(os.path.dirname(checkpoint))
        elif exported and os.path.exists(exported):
            with open(exported) as f:
                row = {k: np.nan if v is None else v for k, v in json.load(f)["training"].items()}
        else:
            continue
        per_method.setdefault(run.method.label, []).append(row)
    if not per_method:
        return ""
    lines = [f"| method | seeds | {RETURN_COLUMN} | {WALL_COLUMN} |", "|---|---|---|---|"]
    lines += [
        f"| {method} | {len(rows)} | {mean_interval_and_range([row.get(RETURN_COLUMN, np.nan) for row in rows])} | "
        f"{mean_and_range([row.get(WALL_COLUMN, np.nan) for row in rows])} |"
        for method, rows in per_method.items()
    ]
    own = [
        f"| {method} | {tag} | "
        + " | ".join(mean_and_range([row.get(f"{tag} ({name})", np.nan) for row in rows]) for name in OWN_STATISTICS)
        + " |"
        for method, rows in per_method.items()
        for tag in sorted({k.rsplit(" (", 1)[0] for row in rows for k in row if k != RETURN_COLUMN and k.endswith(")")})
    ]
    if own:
        lines += [
            "",
            f"each method's own scalars (TensorBoard namespaces other than {', '.join(n + '/' for n in SHARED_NAMESPACES)}): "
            "mean over seeds (range) of each run's mean over its last 10% of env steps, minimum and final value",
            "",
            "| method | scalar | " + " | ".join(OWN_STATISTICS) + " |",
            "|---|---|" + "---|" * len(OWN_STATISTICS),
            *own,
        ]
    return "\n".join(lines)


def run_curve(run, results=None):
    """A run's training curves, every scalar binned over env steps (`binned_curves`): from its own log, or from
    the training.csv exported with it to `results`; None when it has neither."""
    import pandas as pd

    exported = exported_file(run, results, "training.csv")
    if run.checkpoint() is not None:
        last = utils.read_file(run.checkpoint(), f"the checkpoint of {run.name}:")["global_step"]
        return binned_curves(run_scalars(os.path.dirname(run.checkpoint())), last)
    return pd.read_csv(exported) if exported and os.path.exists(exported) else None


def method_curves(runs, results=None):
    """{method label: [each of its runs' curves (`run_curve`)]}, every run's log read once for the learning
    curves and the method's own scalars alike; runs with neither a log nor an export left out."""
    curves = {}
    for run in runs:
        curve = run_curve(run, results)
        if curve is not None:
            curves.setdefault(run.method.label, []).append(curve)
    return curves


def per_interval(curve, tag, edges):
    """A run's `tag` averaged over each interval of env steps between `edges`, from its binned curve: the bins'
    means weighted by the episodes they hold (RETURN_TAG, which counts them) or equally (any other scalar);
    nan where no bin of an interval has a value."""
    values = curve[tag].to_numpy(dtype=float)
    count_column = f"{tag} (count)"
    weights = curve[count_column].to_numpy(dtype=float) if count_column in curve else np.ones(len(curve))
    weights = np.where(np.isnan(values), 0.0, weights)
    which = np.clip(np.searchsorted(edges, curve.step_end.to_numpy(), side="left") - 1, 0, len(edges) - 2)
    with np.errstate(invalid="ignore"):
        return np.bincount(which, weights * np.nan_to_num(values), len(edges) - 1) / np.bincount(
            which, weights, len(edges) - 1
        )


def tenths_header(total, points):
    """The edges of `points` equal intervals of `total` env steps, and a table's header and rule over them."""
    edges = np.linspace(0, total, points + 1)
    label = lambda x: f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}K"  # noqa: E731
    return edges, " | ".join(f"{label(a)}-{label(b)}" for a, b in zip(edges[:-1], edges[1:]))


def learning_curves(curves, total, path, title, points=10):
    """Per method, the trained slots' return over each tenth of training (mean over seeds, and their range),
    as a markdown table, and learning_curves.png at `path` (one thin line per seed, the methods' means
    thick), from `method_curves`. '' when no run has a curve of the return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m: [c for c in cs if RETURN_TAG in c] for m, cs in curves.items()}
    curves = {m: cs for m, cs in curves.items() if cs}
    if not curves:
        return ""
    edges, header = tenths_header(total, points)
    lines = [f"| method | seeds | {header} |", "|" + "---|" * (points + 2)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, (method, runs_curves) in enumerate(curves.items()):
        per_seed = np.array([per_interval(curve, RETURN_TAG, edges) for curve in runs_curves])
        for curve in runs_curves:
            ax.plot(curve.step_end, curve[RETURN_TAG], color=f"C{m}", alpha=0.3, linewidth=0.8)
        lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(mean_and_range(c) for c in per_seed.T) + " |")
        with np.errstate(invalid="ignore"):
            mean = np.nansum(per_seed, 0) / (~np.isnan(per_seed)).sum(0)
        ax.plot((edges[:-1] + edges[1:]) / 2, mean, color=f"C{m}", linewidth=2.5, label=method)
    ax.set_xlabel("env steps")
    ax.set_ylabel("return per player (trained slots)")
    ax.set_title(f"{title}: learning curves\n(thin: seeds, binned; thick: mean over seeds per tenth)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "\n".join(lines)


def own_scalars_through_training(curves, total, path, title, points=10):
    """Every scalar of a method's own TensorBoard namespaces (BiDist's distill/ and mixed/, say) through
    training, from `method_curves`: per method and scalar, its mean over each tenth of training (mean over
    seeds, and their range), as a markdown table, and diagnostics.png at `path`, a panel per scalar (thin:
    seeds, binned; thick: the method's mean per tenth). '' and no picture when no method logs a scalar of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = lambda curve: [t for t in curve if "/" in t and t.split("/")[0] not in SHARED_NAMESPACES and not t.endswith(")")]  # noqa: E731
    tags = sorted({tag for method_curves in curves.values() for curve in method_curves for tag in own(curve)})
    if not tags:
        return ""
    edges, header = tenths_header(total, points)
    lines = [f"| method | scalar | seeds | {header} |", "|" + "---|" * (points + 3)]
    columns = min(4, len(tags))
    rows = -(-len(tags) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for m, (method, method_curves) in enumerate(curves.items()):
            logged = [curve for curve in method_curves if tag in curve]
            if not logged:
                continue
            per_seed = np.array([per_interval(curve, tag, edges) for curve in logged])
            cells = (mean_and_range(c, digits="{:.3g}") for c in per_seed.T)  # per-step rewards are ~0.01
            lines.append(f"| {method} | {tag} | {len(logged)} | " + " | ".join(cells) + " |")
            for curve in logged:  # bins where it was not logged (a forward phase's KL in a reverse phase's bin) skipped
                valid = curve[tag].notna()
                ax.plot(curve.step_end[valid], curve[tag][valid], color=f"C{m}", alpha=0.3, linewidth=0.8)
            with np.errstate(invalid="ignore"):
                mean = np.nansum(per_seed, 0) / (~np.isnan(per_seed)).sum(0)
            ax.plot((edges[:-1] + edges[1:]) / 2, mean, color=f"C{m}", linewidth=2, label=method)
        ax.set_title(tag, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_offset_text().set_fontsize(7)
    for ax in axes.flat[len(tags) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{title}: each method's own scalars over env steps (thin: seeds, binned; thick: mean per tenth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Results that outlive the machine: what --results holds, written as runs and pairs finish

CURVE_BINS = 100  # rows of an exported run's training.csv


def exported_file(run, results, name):
    """The path of the file `name` in `run`'s export: under --results (`results`), or under the folder of the
    other study it belongs to (`run.results`, --against); beside an ExternalRun's population; None without either."""
    if isinstance(run, ExternalRun):
        return f"{os.path.dirname(run.path)}/{name}"
    folder = run.results or results
    return folder and f"{folder}/runs/{run.name}/{name}"


def exported_population(run, args):
    """The path of `run`'s population in --results when it is there and trained to --total-timesteps, else None."""
    path = exported_file(run, args.results, "population.pt")
    if not path or not os.path.exists(path):
        return None
    saved = utils.load_checkpoint(path, "--results")
    iterations = args.total_timesteps // (saved["args"]["num_envs"] * saved["args"]["num_steps"])
    return path if saved["iteration"] >= iterations else None


def binned_curves(scalars, last, bins=CURVE_BINS):
    """Every tag's mean over `bins` equal bins of env steps up to `last` (the run's global step), and the
    count of returns in each bin: the run's learning curves and diagnostics in a few kilobytes, as a DataFrame."""
    import pandas as pd

    edges = np.linspace(0, last, bins + 1)
    table = {"step_start": edges[:-1].round().astype(int), "step_end": edges[1:].round().astype(int)}
    for tag, (steps, values) in scalars.items():
        which = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore"):
            table[tag] = np.bincount(which, weights=values, minlength=bins) / counts
        if tag == RETURN_TAG:  # how many episodes each bin's mean return is of, for weighting bins together
            table[f"{tag} (count)"] = counts
    return pd.DataFrame(table)


def export_run(run, args):
    """Writes a finished run to --results/runs/{name}/: population.pt (the checkpoint less the critic,
    optimisers and RNG, its networks' weights in float16: under 1 MB with BiDist's second network), training.csv
    (binned_curves of every logged scalar) and summary.json (training.md's statistics, the training
    command). The study's cross-play then plays this population, so that episodes played now and
    episodes a later call plays on another machine are of the same network."""
    out = f"{args.results}/runs/{run.name}"
    checkpoint = export_population(run.checkpoint(), f"{out}/population.pt")
    with open(f"{run.directory}/train.log") if os.path.exists(f"{run.directory}/train.log") else open(os.devnull) as f:
        commands = [line[2:].strip() for line in f if line.startswith("$ ")]
    export_training(run.checkpoint(), checkpoint["global_step"], out, run, commands)
    print(f"{run.name}: exported to {out}/", flush=True)


def export_training(checkpoint, global_step, out, run, commands=()):
    """Writes the training log of `run` (a Run or an ExternalRun) beside its population in `out`: training.csv
    and summary.json, from the log beside its training `checkpoint`."""
    scalars = run_scalars(os.path.dirname(checkpoint))
    utils.write_atomically(f"{out}/training.csv", "w", lambda f: binned_curves(scalars, global_step).to_csv(f, index=False))
    row = training_row(scalars)
    row[WALL_COLUMN] = run_wall_time(os.path.dirname(checkpoint))
    utils.save_json(
        f"{out}/summary.json",
        {
            "name": f"{run.method.label}__seed{run.seed}",
            "method": run.method.label,
            "seed": run.seed,
            "global_step": global_step,
            "commands": list(dict.fromkeys(portable(command) for command in commands)),
            "training": {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()},
        },
    )


def export_external(run, out):
    """Exports a --runs population (`run`, an ExternalRun) to `out`, a folder of this study's --results/runs/, with
    its training where there is one: from the log beside a training checkpoint, or the training.csv and
    summary.json exported beside a population (relabelled as this study knows it). Returns the population's
    new path; what is there already stays."""
    to, beside = f"{out}/population.pt", os.path.dirname(run.path)
    if not os.path.exists(to):
        export_population(run.path, to)
    if not os.path.exists(f"{out}/summary.json"):
        if run.checkpoint():
            export_training(run.path, utils.load_checkpoint(run.path, "--runs")["global_step"], out, run)
        elif os.path.exists(f"{beside}/summary.json"):
            with open(f"{beside}/summary.json") as f:
                summary = json.load(f)
            summary.update(name=f"{run.method.label}__seed{run.seed}", method=run.method.label, seed=run.seed)
            if os.path.exists(f"{beside}/training.csv"):
                shutil.copyfile(f"{beside}/training.csv", f"{out}/training.csv")
            utils.save_json(f"{out}/summary.json", summary)
    return to


def portable(command):
    """A training command as anyone can type it: `python mappo.py ...`, not this machine's paths (a resume of
    the same run, whose checkpoint path is this machine's, is the same command)."""
    words = shlex.split(command)
    if "--resume" in words:
        del words[words.index("--resume") : words.index("--resume") + 2]
    words = ["python" if i == 0 else os.path.basename(w) if w.endswith(".py") else w for i, w in enumerate(words)]
    return shlex.join(words)


def export_population(path, to):
    """Writes the checkpoint at `path` less everything but its populations, their weights in float16, to `to`;
    returns the checkpoint. The populations are `actor` and every other network of the actor's architecture
    the checkpoint holds (a state dict with the same keys: BiDist's `phi`); critics, optimisers, pools and
    memories stay out."""
    checkpoint = utils.load_checkpoint(path, "population")
    population = {
        k: checkpoint[k] for k in ("algorithm", "substrate", "args", "run_name", "iteration", "global_step") if k in checkpoint
    }
    for network, weights in checkpoint.items():
        if isinstance(weights, dict) and weights.keys() == checkpoint["actor"].keys():
            population[network] = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    utils.save_checkpoint(to, population)
    return checkpoint


def identity(path):
    """What a cross-play cache key knows a background checkpoint by: its bytes' digest, so that a pair
    is reused wherever the same population sits (--out relative or absolute, a checkpoint or its copy
    in --results) and played again once a checkpoint changed; the references by name."""
    if path == eval_scenarios.RANDOM_BACKGROUND or os.path.basename(os.path.dirname(path)) == "reference":
        return os.path.basename(path).removesuffix(".pt")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


EPISODE_COLUMNS = [
    "focal",
    "background",
    "episode",
    "focal_per_capita_return",
    "focal_id",
    "background_ids",
    "seed",
    "num_focal",
]


def committed_episodes(results):
    """{(focal, background): (key, episodes)} from --results/crossplay_episodes.csv (one row per episode)."""
    import pandas as pd

    path = results and f"{results}/crossplay_episodes.csv"
    if not path or not os.path.exists(path):
        return {}
    pairs = {}
    # the returns as text, parsed by Python's float(): exact on every pandas (older ones' fast parser is off by an
    # ulp or two, and a study continued there would rewrite every committed episode's last digits)
    table = pd.read_csv(path, keep_default_na=False, dtype={"focal_per_capita_return": str})
    table["focal_per_capita_return"] = [float(v) for v in table.focal_per_capita_return]
    for (focal, background), rows in table.groupby(["focal", "background"], sort=False):
        first = rows.iloc[0]
        key = {
            "focal": [focal, first.focal_id],
            "background": [background, first.background_ids.split("|")],
            "seed": int(first.seed),
            "num_focal": int(first.num_focal),
        }
        pairs[focal, background] = key, rows.sort_values("episode").focal_per_capita_return.tolist()
    return pairs


def write_committed_episodes(results, keys, episodes):
    """--results/crossplay_episodes.csv: every episode of every pair in `episodes`, with its pair's key, and
    the pairs committed before that this call did not play (a call with fewer methods keeps the others'). The
    committed pairs keep their place and new pairs follow them, so a commit's diff is the pairs it adds."""
    import pandas as pd

    pairs = committed_episodes(results)
    pairs.update({pair: (keys[pair], values) for pair, values in episodes.items()})  # in place where committed
    rows = [
        {
            "focal": pair[0],
            "background": pair[1],
            "episode": i,
            "focal_per_capita_return": value,
            "focal_id": key["focal"][1],
            "background_ids": "|".join(key["background"][1]),
            "seed": key["seed"],
            "num_focal": key["num_focal"],
        }
        for pair, (key, values) in pairs.items()
        for i, value in enumerate(values)
    ]
    table = pd.DataFrame(rows, columns=EPISODE_COLUMNS)
    utils.write_atomically(f"{results}/crossplay_episodes.csv", "w", lambda f: table.to_csv(f, index=False))


RESULT_FILES = [
    "results.md",
    "training.md",
    "learning_curves.png",
    "diagnostics.png",
    "crossplay.csv",
    "crossplay_heatmap.png",
    "methods.png",
    "policy_space.csv",
    "policy_space.png",
]


def export_study(args):
    """Copies the study's tables and plots from OUT to --results."""
    for name in RESULT_FILES:
        if os.path.exists(f"{args.out}/{name}") and os.path.realpath(args.out) != os.path.realpath(args.results):
            shutil.copyfile(f"{args.out}/{name}", f"{args.results}/{name}")


def check_record(args):
    """A one-line error when --results holds a study on another substrate."""
    record = f"{args.results}/study.json"
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
        if saved["args"]["substrate"] != args.substrate:
            raise SystemExit(
                f"error: --results {args.results} holds a study on {saved['args']['substrate']}, not "
                f"{args.substrate}; use another --results"
            )


def record_study(args, external, pool=()):
    """--results/study.json: the command and flags of the call that wrote the tables there, the populations
    it added with --runs (`external`) and those of its --against study (`pool`), for a later call (--from-results
    reads them). Written with the tables, not before training, so that a folder committed while a longer call
    trains still regenerates its tables."""
    flags = {k: v for k, v in asdict(args).items() if k not in ("out", "results", "from_results", "train_only")}
    command = shlex.join(["python", "study.py", *sys.argv[1:]])
    utils.save_json(
        f"{args.results}/study.json",
        {
            "command": command,
            "args": flags,
            "external": [{"method": p.method, "seed": p.seed, "name": p.name} for p in external],
            **({"yardstick": [p.name for p in pool]} if pool else {}),
        },
    )


def args_from_results(results):
    """The Args of the study exported to `results`, set to regenerate its outputs there from it alone."""
    if not os.path.exists(f"{results}/study.json"):
        raise SystemExit(f"error: --from-results {results}: no study.json there (a folder written by study.py --results)")
    with open(f"{results}/study.json") as f:
        saved = json.load(f)["args"]
    known = {f for f in Args.__dataclass_fields__} - {"runs"}
    with open(f"{results}/study.json") as f:
        external = json.load(f).get("external", [])
    runs = [f"{r['method']}={results}/runs/{r['name']}/population.pt" for r in external]
    return Args(
        **{k: v for k, v in saved.items() if k in known},
        runs=runs,
        out=tempfile.mkdtemp(prefix="study_"),
        results=results,
        from_results=results,
    )


# ---------------------------------------------------------------------------------------------
# Cross-play: every focal population beside every background population, in parallel episodes


@dataclass(frozen=True)
class Population:
    """A trained population: the theta of one run's final checkpoint."""

    method: str
    seed: int
    checkpoint: str

    @property
    def name(self):
        return f"{self.method}__seed{self.seed}"


@dataclass(frozen=True)
class ExternalRun:
    """The training behind a --runs population, as training.md reads it (like a Run): the TensorBoard log beside
    a training checkpoint, or the summary.json and training.csv exported beside a population.pt (by another
    study, or copied into this one's --results with it); left out of training.md where it has neither."""

    method: Method
    seed: int
    path: str

    def checkpoint(self):
        return self.path if glob.glob(f"{os.path.dirname(self.path)}/events.out.tfevents.*") else None


def external_population(spec, substrate):
    """`[label=]path` of --runs (a checkpoint or a run directory) trained on `substrate` -> its ExternalRun, or a
    one-line error."""
    label, _, path = spec.partition("=") if "=" in spec and not os.path.exists(spec) else (None, None, spec)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    saved = utils.load_checkpoint(path, "--runs")
    if not isinstance(saved["args"].get("seed"), int) or not isinstance(label or saved["args"].get("exp_name"), str):
        raise SystemExit(f"error: --runs {path} records no seed or exp_name in its args")
    if saved["substrate"] != substrate:
        raise SystemExit(f"error: --runs {path} was trained on {saved['substrate']}, not --substrate {substrate}")
    return ExternalRun(Method(label or saved["args"]["exp_name"], saved["algorithm"], ()), saved["args"]["seed"], path)


# what a yardstick study must share with the one measured against it: a pair is known by the first four (its
# episodes' seeds and slots), and the budget makes the comparison fair
SHARED_WITH_YARDSTICK = ("seed", "num_focal", "num_episodes", "num_untrained", "substrate", "total_timesteps")


def yardstick(args, pinned=None):
    """The populations of the study exported to --against, each its exported population.pt, and its runs (for
    their exported training logs), in that study's order; `pinned` (the names a study made --against it
    recorded) keeps those alone, so its tables regenerate as they were after the yardstick grew. One-line
    errors for a folder that holds no exported study, one made --against another, one whose settings differ
    (SHARED_WITH_YARDSTICK), a population it lacks, and cross-play it has not finished."""
    against = args.against
    if not os.path.exists(f"{against}/study.json"):
        raise SystemExit(f"error: --against {against}: no study.json there (a folder written by study.py --results)")
    with open(f"{against}/study.json") as f:
        saved = json.load(f)
    if saved["args"].get("against"):
        raise SystemExit(
            f"error: --against {against} was itself measured --against {saved['args']['against']}; measure against "
            f"that study, or against one that cross-played all its populations"
        )
    for name in SHARED_WITH_YARDSTICK:
        theirs = saved["args"].get(name, Args.__dataclass_fields__[name].default)  # a flag newer than that study: its default
        if theirs != getattr(args, name):
            flag = f"--{name.replace('_', '-')}"
            raise SystemExit(
                f"error: {flag} {getattr(args, name)} differs from the --against study's ({theirs}, in {against}/study.json): "
                + ("methods are compared at equal budgets" if name == "total_timesteps" else f"pass {flag} {theirs}")
            )
    methods = [parse_method(spec, check=False) for spec in saved["args"]["methods"]]
    runs = [
        Run(m, seed, f"{against}/runs/{m.label}__seed{seed}", results=against)
        for m in methods
        for seed in seeds_by_method(saved["args"]["seeds"], saved["args"].get("seeds_of", []), methods)[m.label]
    ]
    populations = [Population(r.method.label, r.seed, f"{against}/runs/{r.name}/population.pt") for r in runs]
    populations += [
        Population(e["method"], e["seed"], f"{against}/runs/{e['name']}/population.pt") for e in saved.get("external", [])
    ]
    if pinned is not None:
        gone = sorted(set(pinned) - {p.name for p in populations})
        if gone:
            raise SystemExit(
                f"error: --against {against} no longer holds {', '.join(gone)}, which this study was measured against"
            )
        populations = [p for p in populations if p.name in pinned]
        runs = [r for r in runs if r.name in pinned]
    missing = [p.name for p in populations if not os.path.exists(p.checkpoint)]
    if missing:
        raise SystemExit(
            f"error: --against {against}: {len(missing)} population(s) of its study.json not exported there "
            f"({', '.join(missing)}); run that study's command to train them"
        )
    played = committed_episodes(against)
    backgrounds = [p.name for p in populations] + [RANDOM] + ([UNTRAINED] if args.num_untrained else [])
    lacking = [
        (p.name, b) for p in populations for b in backgrounds if len(played.get((p.name, b), ({}, []))[1]) < args.num_episodes
    ]
    if lacking:
        raise SystemExit(
            f"error: --against {against}: its cross-play lacks {len(lacking)} pair(s) (first: {lacking[0][0]} vs "
            f"{lacking[0][1]}); finish that study with its own command first"
        )
    return populations, runs


def untrained_checkpoints(out, substrate, like, count):
    """`count` randomly initialised actors (seeds 1..count) of the network of the population `like` (the
    study's first: its script's own Actor, with that run's flags), written once as checkpoints under
    OUT/reference/, for the `untrained` reference background. Written once, they stay the reference of the
    study when later calls add methods."""
    checkpoint = utils.load_checkpoint(like, "population")
    module = utils.training_script(checkpoint["algorithm"], f"population {like} was written by", root=eval_scenarios.HERE)
    saved = {**asdict(module.Args()), **checkpoint["args"]}
    paths = []
    for seed in range(1, count + 1):
        path = f"{out}/reference/untrained_{seed}.pt"
        if not os.path.exists(path):
            _, sizes = utils.actor_sizes(substrate, saved["downsample"])
            torch.manual_seed(seed)
            actor = module.Actor(sizes, SimpleNamespace(**saved))
            utils.save_checkpoint(
                path,
                {
                    "algorithm": checkpoint["algorithm"],
                    "substrate": substrate,
                    "iteration": 0,
                    "global_step": 0,
                    "actor": actor.state_dict(),
                    "args": {**checkpoint["args"], "exp_name": UNTRAINED, "seed": seed},
                },
            )
        paths.append(path)
    return paths


def crossplay(populations, backgrounds, args, runner=None, wanted=None, elsewhere=()):
    """Focal per-capita returns of every (focal population, background) pair: {(focal, background):
    [episode returns]}. `backgrounds` maps a name to the checkpoints a background slot samples from.
    A pair's episodes are cached in OUT/crossplay/{focal}__vs__{background}.json as soon as they are
    all done, so an interrupted evaluation continues where it stopped; with --results, they are also
    written to its crossplay_episodes.csv then (a commit at any time holds every finished pair), and the
    pairs found there are not played again. A pair is keyed by the two populations' names and their bytes (`identity`): a
    checkpoint trained further since makes its pairs stale. A pair played with fewer episodes than
    --num-episodes plays only those it lacks (episode i has the same seed either way); a call with fewer
    episodes uses the first ones, and the files keep every episode played. `wanted(focal, background name)`
    (default: every pair) picks the pairs; with --against, the yardstick's own pairs are read from its
    crossplay_episodes.csv, and not copied to this study's; the pairs of the exported studies in `elsewhere`
    (where --runs populations come from) are, as this study's own."""
    scenario = f"{args.substrate}__background_{args.num_focal}_focal"
    committed = committed_episodes(getattr(args, "results", None))
    inherited = committed_episodes(getattr(args, "against", None))
    sources = [committed, *(committed_episodes(results) for results in elsewhere), inherited]
    results, todo, keys, ids = {}, [], {}, {}
    played = {}  # (focal, background) -> every episode known of the pair: what the files keep

    def identified(path):
        if path not in ids:
            ids[path] = identity(path)
        return ids[path]

    for focal in populations:
        for name, paths in backgrounds.items():
            if wanted and not wanted(focal, name):
                continue
            cache = f"{args.out}/crossplay/{focal.name}__vs__{name}.json"
            key = keys[focal.name, name] = {
                "focal": [focal.name, identified(focal.checkpoint)],
                "background": [name, [identified(p) for p in paths]],
                "seed": args.seed,
                "num_focal": args.num_focal,
            }
            found = [pairs[focal.name, name] for pairs in sources if (focal.name, name) in pairs]
            if os.path.exists(cache):
                with open(cache) as f:
                    cached = json.load(f)
                found.append((cached["key"], cached["episodes"]))
            known = max((e for k, e in found if k == key), key=len, default=[])
            if len(known) >= args.num_episodes:
                results[focal.name, name] = known[: args.num_episodes]
                if (focal.name, name) not in inherited or inherited[focal.name, name][1] is not known:
                    played[focal.name, name] = known
                continue
            target = eval_scenarios.Target(scenario, args.substrate, tuple(paths), args.num_focal)
            todo.append((focal, name, key, cache, target, known))
    if todo and getattr(args, "from_results", None):
        raise SystemExit(
            f"error: --from-results {args.from_results}: {len(todo)} (focal, background) pair(s) have no "
            f"committed episodes (first: {todo[0][0].name} vs {todo[0][1]}); run the study's command "
            f"(study.json) with --results {args.from_results} to play them"
        )
    if not todo:
        if getattr(args, "results", None):
            write_committed_episodes(args.results, keys, played)
        return results
    os.makedirs(f"{args.out}/crossplay", exist_ok=True)
    num_workers = args.num_workers or os.cpu_count() or 1
    jobs, episodes, owners = [], {}, []
    for focal, name, key, cache, target, known in todo:
        episodes[focal.name, name] = known + [None] * (args.num_episodes - len(known))
        for episode in range(len(known), args.num_episodes):
            # from the two populations' names: adding a method leaves the other pairs' episodes as they were
            seed = eval_scenarios.episode_seed(args.seed, [focal.name, name], episode)
            jobs.append((f"{focal.name} vs {name} episode {episode}", (target, seed, focal.checkpoint, "cpu")))
            owners.append((focal.name, name, key, cache, episode))
    print(
        f"cross-play: {len(todo)} (focal, background) pair(s), {len(jobs)} episode(s) to play "
        f"({args.num_episodes} a pair), "
        + (runner.where if isinstance(runner, cluster.OnRay) else f"{num_workers} worker(s)"),
        flush=True,
    )

    def record(i, result):
        focal, name, key, cache, episode = owners[i]
        pair = episodes[focal, name]
        pair[episode] = result["focal_per_capita_return"]
        if all(r is not None for r in pair):
            results[focal, name] = played[focal, name] = pair
            utils.save_json(cache, {"key": key, "episodes": pair})
            if getattr(args, "results", None):  # at once: a study killed or its machine lost keeps it in git's reach
                write_committed_episodes(args.results, keys, played)

    start = time.time()
    try:
        (runner or cluster.Local()).episodes(jobs, num_workers, "cross-play", record)
        print(f"cross-play: {len(jobs)} episode(s) played in {(time.time() - start) / 60:.1f} minutes", flush=True)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: finished pairs are saved; the same command continues the study") from None
    finally:
        if getattr(args, "results", None):  # what finished, also when interrupted
            write_committed_episodes(args.results, keys, played)
    return results


# ---------------------------------------------------------------------------------------------
# Statistics: a bootstrap over focal seeds and background populations (stratified) and the episodes of each pair


def held_out_mask(own, background):
    """True where a background population is one the focal never met: every trained population but
    the focal's own run. `own` (..., focal) holds each focal's own column, `background` (..., background)
    the columns met; the result is (..., focal, background), for the point estimate and for a whole
    batch of bootstrap draws alike."""
    return background[..., None, :] != own[..., :, None]


def held_out_of_draws(episodes, focal, background, own, rng):
    """The held-out return of each bootstrap draw, (samples,): the drawn focal rows (samples, seeds) beside the
    drawn background columns (samples, backgrounds), each pair's episodes redrawn; nan where a draw holds no
    held-out pair."""
    n = episodes.shape[-1]
    picked = rng.integers(n, size=(*focal.shape, background.shape[1], n))  # the episodes of every pair drawn
    values = episodes[focal[:, :, None, None], background[:, None, :, None], picked].mean(-1)  # (samples, focal, bg)
    mask = held_out_mask(own[focal], background)
    with np.errstate(invalid="ignore"):
        return (values * mask).sum((1, 2)) / mask.sum((1, 2))


def summarise_method(episodes, rows, own, samples, rng, columns=None):
    """Point estimates and 95% percentile-bootstrap intervals for one method.

    `episodes` (focal, trained background, episode) holds the focal returns of every pair's episodes, `rows`
    the focal rows of this method and `own[r]` the column of row r's own run; `columns`, the backgrounds
    met (default: every trained population; one method's runs for its held-out return beside that method
    alone; self-play is the own runs' whichever columns are met). Each bootstrap sample redraws,
    with replacement, the method's focal seeds and the background populations (stratified: the two are drawn
    separately, as rliable stratifies by task), then the episodes of every pair drawn (hierarchical: a pair's
    mean over a few episodes is itself uncertain; one episode's return varies by about 0.3 to 0.6 on the
    default substrate, as much as the seeds' means do), and averages every held-out pair of the draw; the
    same draw gives the self-play mean and the gap, so the three intervals agree."""
    rows, own = np.asarray(rows), np.asarray(own)
    matrix, n = episodes.mean(-1), episodes.shape[-1]
    columns = np.arange(matrix.shape[1]) if columns is None else np.asarray(columns)
    held = held_out_mask(own[rows], columns)
    estimate = {"self_play": matrix[rows, own[rows]].mean(), "held_out": matrix[np.ix_(rows, columns)][held].mean()}
    estimate["gap"] = estimate["self_play"] - estimate["held_out"]
    focal = rng.choice(rows, size=(samples, len(rows)))
    background = rng.choice(columns, size=(samples, len(columns)))
    held_out = held_out_of_draws(episodes, focal, background, own, rng)
    picked = rng.integers(n, size=(samples, len(rows), n))
    self_play = episodes[focal[:, :, None], own[focal][:, :, None], picked].mean((1, 2))
    draws = {"held_out": held_out, "self_play": self_play, "gap": self_play - held_out}
    return {key: (float(estimate[key]), *np.nanpercentile(draws[key], [2.5, 97.5]).tolist()) for key in estimate}


def held_out_differences(episodes, methods_rows, samples, rng, columns=None):
    """Is one method harder to exploit, or better beside strangers, than another? For every ordered pair of
    methods (a, b): a's held-out return minus b's, {(a, b): (difference, low, high)} with a 95% percentile-
    bootstrap interval. `methods_rows` maps each method to its focal rows of `episodes` (focal, trained
    background, episode). A draw redraws the background populations once for all methods (paired: both
    meet the same strangers, so the difference does not vary with which strangers were drawn), then each
    method's focal seeds and the episodes of every pair drawn, as summarise_method does. `columns`: the
    backgrounds met (default: every trained population)."""
    matrix = episodes.mean(-1)
    own = np.arange(matrix.shape[0])
    columns = np.arange(matrix.shape[1]) if columns is None else np.asarray(columns)
    background = rng.choice(columns, size=(samples, len(columns)))
    estimate, draws = {}, {}
    for method, rows in methods_rows.items():
        rows = np.asarray(rows)
        estimate[method] = matrix[np.ix_(rows, columns)][held_out_mask(own[rows], columns)].mean()
        draws[method] = held_out_of_draws(episodes, rng.choice(rows, size=(samples, len(rows))), background, own, rng)
    return {
        (a, b): (float(estimate[a] - estimate[b]), *np.nanpercentile(draws[a] - draws[b], [2.5, 97.5]).tolist())
        for a in methods_rows
        for b in methods_rows
        if a != b
    }


def summarise_reference(episodes, samples, rng):
    """Mean over focal seeds of one method's return beside a reference background, `episodes` (seed, episode),
    with a 95% percentile-bootstrap interval that redraws the seeds, then each drawn seed's episodes."""
    episodes = np.asarray(episodes, dtype=float)
    seeds, n = episodes.shape
    drawn = rng.integers(seeds, size=(samples, seeds))
    draws = episodes[drawn[:, :, None], rng.integers(n, size=(samples, seeds, n))].mean((1, 2))
    return (float(episodes.mean()), *np.percentile(draws, [2.5, 97.5]).tolist())


def played_beside(episodes, rows, columns):
    """Whether every population of `rows` played beside every other one of `columns` (--against plays
    only some pairs unless --all-pairs)."""
    return not any(np.isnan(episodes[r, c]).any() for r in rows for c in columns if r != c)


def statistics(populations, results, args, pool=None):
    """The study's numbers: the cross-play matrix and, per method, the summaries of the table. `pool` (--against:
    the yardstick's population names) are the backgrounds that held-out means; default: every population. A
    pair not played (a population outside the pool as background) is nan and never drawn."""
    names = [p.name for p in populations]
    unplayed = [np.nan] * args.num_episodes
    episodes = np.array([[results.get((f, b), unplayed) for b in names] for f in names], dtype=float)  # (focal, bg, ep)
    matrix = episodes.mean(-1)
    columns = np.arange(len(names)) if pool is None else np.array([names.index(name) for name in pool])
    if np.isnan(episodes[:, columns]).any() or np.isnan(episodes[np.arange(len(names)), np.arange(len(names))]).any():
        raise ValueError("a pair the statistics draw from was not played")  # crossplay returns every pair it is asked
    rng = np.random.default_rng(args.seed)
    methods = list(dict.fromkeys(p.method for p in populations))
    by_method = {m: [i for i, p in enumerate(populations) if p.method == m] for m in methods}
    summary = {}
    for method, rows in by_method.items():
        entry = {"focal_seeds": len(rows)}
        if len(populations) > 1:
            entry.update(summarise_method(episodes, rows, np.arange(len(names)), args.bootstrap_samples, rng, columns))
        if len(methods) > 1:  # held-out beside each method's runs alone (its own method: its other seeds)
            entry["held_out_by_method"] = {
                other: summarise_method(
                    episodes, rows, np.arange(len(names)), args.bootstrap_samples, rng, columns=backgrounds
                )["held_out"]
                for other, backgrounds in by_method.items()
                if (other != method or len(rows) > 1) and played_beside(episodes, rows, backgrounds)
            }
        for reference in (RANDOM, UNTRAINED):
            if (names[rows[0]], reference) in results:
                entry[reference] = summarise_reference(
                    [results[names[r], reference] for r in rows], args.bootstrap_samples, rng
                )
        if args.reference and "held_out" in entry:
            low, high = args.reference
            entry["held_out_normalised"] = tuple((v - low) / (high - low) for v in entry["held_out"])
        summary[method] = entry
    if len(methods) > 1:
        for (a, b), difference in held_out_differences(episodes, by_method, args.bootstrap_samples, rng, columns).items():
            summary[a].setdefault("held_out_minus", {})[b] = difference
    return matrix, summary


# ---------------------------------------------------------------------------------------------
# Outputs: markdown table, CSV/JSON matrix, heatmap, per-method intervals


def interval(value):
    return "-" if value is None else f"{value[0]:.2f} [{value[1]:.2f}, {value[2]:.2f}]"


def markdown_table(summary, args):
    normalised = args.reference is not None
    header = [
        "method",
        "focal seeds",
        "self-play",
        "held-out (never met)",
        "gap (self-play - held-out)",
        "vs uniform random",
        "vs untrained",
    ] + (["held-out, normalised"] if normalised else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summary.items():
        cells = [
            method,
            str(s["focal_seeds"]),
            interval(s.get("self_play")),
            interval(s.get("held_out")),
            interval(s.get("gap")),
            interval(s.get(RANDOM)),
            interval(s.get(UNTRAINED)),
        ]
        if normalised:
            cells.append(interval(s.get("held_out_normalised")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_by_method(summary):
    """Focal method rows x background method columns: the held-out return beside that method's runs alone."""
    methods = list(summary)
    lines = ["| focal / background | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for method, s in summary.items():
        by_method = s.get("held_out_by_method", {})
        lines.append(f"| {method} | " + " | ".join(interval(by_method.get(other)) for other in methods) + " |")
    return "\n".join(lines)


def markdown_differences(summary):
    """Row method x column method: the row's held-out return minus the column's [95% interval], in bold where
    the interval excludes zero (the two methods are separated)."""
    methods = list(summary)
    lines = ["| method / minus | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for method, s in summary.items():
        cells = []
        for other in methods:
            difference = s.get("held_out_minus", {}).get(other)
            separated = difference is not None and (difference[1] > 0 or difference[2] < 0)
            cells.append(f"**{interval(difference)}**" if separated else interval(difference))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_by_population(populations, results, pool=None):
    """One row per focal population: its mean return beside itself, beside the populations it never met
    (every episode of those pairs pooled; `pool`, --against: beside the yardstick's alone), and beside each
    reference, each +- the half-width of a 95% Student-t interval over the episodes: which seeds learned, and
    whose held-out returns differ."""
    names = [p.name for p in populations]
    strangers = pool or names
    columns = [
        ("self-play", lambda f, b: b == f),
        ("held-out (never met)", lambda f, b: b in strangers and b != f),
        ("vs uniform random", lambda f, b: b == RANDOM),
        ("vs untrained", lambda f, b: b == UNTRAINED),
    ]
    lines = ["| population | " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for focal in names:
        cells = []
        for _, wanted in columns:
            episodes = [r for (f, b), returns in results.items() if f == focal and wanted(f, b) for r in returns]
            cells.append(
                "-"
                if not episodes
                else f"{np.mean(episodes):.2f} ± {eval_scenarios.confidence_interval(episodes):.2f} ({len(episodes)})"
            )
        lines.append(f"| {focal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(populations, backgrounds, results, matrix, summary, args, pool=None):
    """OUT/results.md (the table), crossplay.csv (one row per pair), crossplay.json (matrix, summary,
    every episode), crossplay_heatmap.png and methods.png. `pool`: the names of the --against study's
    populations. Returns the table."""
    import pandas as pd

    table = markdown_table(summary, args)
    names = [p.name for p in populations]
    with open(f"{args.out}/results.md", "w") as f:
        f.write(
            f"# Generalisation study: {args.substrate}\n\n{len(populations)} populations, {args.num_episodes} "
            f"episodes per pair, {args.num_focal} focal slot(s); focal per-capita return, mean "
            f"[95% bootstrap interval over seeds, backgrounds and episodes]\n\n"
            + (
                f"Measured against the study in `{args.against}` (--against): held-out is the return beside its "
                f"populations alone, which this study's populations never met; its own numbers are its study's."
                + (" Every other pair was played too (--all-pairs).\n\n" if getattr(args, "all_pairs", False) else "\n\n")
                if getattr(args, "against", None)
                else ""
            )
            + f"{table}\n"
        )
        if len(summary) > 1:
            f.write(
                f"\n## Held-out by background method\n\nThe focal method's return beside one method's "
                f"runs alone (beside its own method: its other seeds, never its own run)\n\n"
                f"{markdown_by_method(summary)}\n"
            )
            f.write(
                f"\n## Held-out differences between methods\n\nThe row method's held-out return minus the column "
                f"method's [95% paired bootstrap interval: each draw meets both methods with the same background "
                f"populations]; bold where the interval excludes zero\n\n{markdown_differences(summary)}\n"
            )
        f.write(
            f"\n## Per population\n\nmean ± half-width of a 95% t-interval over the episodes (episodes)\n\n"
            f"{markdown_by_population(populations, results, pool)}\n"
        )
    rows = []
    for focal in populations:
        for name in backgrounds:
            if (focal.name, name) in results:
                returns = results[focal.name, name]
                rows.append(
                    {
                        "focal": focal.name,
                        "focal_method": focal.method,
                        "focal_seed": focal.seed,
                        "background": name,
                        "relation": "self-play"
                        if name == focal.name
                        else "reference"
                        if name in (RANDOM, UNTRAINED)
                        else "held-out",
                        "episodes": len(returns),
                        "focal_per_capita_return": float(np.mean(returns)),
                        "std": float(np.std(returns, ddof=1)) if len(returns) > 1 else float("nan"),
                    }
                )
    pd.DataFrame(rows).to_csv(f"{args.out}/crossplay.csv", index=False)
    utils.save_json(
        f"{args.out}/crossplay.json",
        {
            "substrate": args.substrate,
            "num_episodes": args.num_episodes,
            "num_focal": args.num_focal,
            "seed": args.seed,
            "populations": [asdict(p) for p in populations],
            "matrix": {
                "focal": names,
                "background": names,
                "mean_focal_return": [[None if np.isnan(v) else v for v in row] for row in matrix.tolist()],
            },
            "summary": summary,
            "episodes": [dict(r, returns=results[r["focal"], r["background"]]) for r in rows],
        },
    )
    plot_heatmap(populations, backgrounds, results, f"{args.out}/crossplay_heatmap.png", args.substrate)
    plot_methods(summary, f"{args.out}/methods.png", args.substrate)
    return table


def plot_heatmap(populations, backgrounds, results, path, title):
    """Focal rows x background columns of mean focal per-capita return; self-play cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [name for name in backgrounds if all((p.name, name) in results for p in populations)]
    values = np.array([[np.mean(results[p.name, c]) for c in columns] for p in populations])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(columns), 1.2 + 0.55 * len(populations)))
    image = ax.imshow(values, cmap="viridis")
    for i, p in enumerate(populations):
        for j, c in enumerate(columns):
            ax.text(
                j,
                i,
                f"{values[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if values[i, j] > values.mean() else "white",
            )
            if c == p.name:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(populations)), [p.name for p in populations], fontsize=8)
    ax.set_xlabel("background population")
    ax.set_ylabel("focal population")
    ax.set_title(f"cross-play: focal per-capita return\n{title} (red: self-play)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_methods(summary, path, title):
    """Per method: held-out return with its 95% interval, self-play and the reference backgrounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(methods), 3.5))
    kinds = [
        ("held_out", "held-out (never met)"),
        ("self_play", "self-play"),
        (RANDOM, "vs uniform random"),
        (UNTRAINED, "vs untrained"),
    ]
    width = 0.8 / len(kinds)
    for k, (key, label) in enumerate(kinds):
        x = [i + (k - (len(kinds) - 1) / 2) * width for i, m in enumerate(methods) if key in summary[m]]
        entries = [summary[m][key] for m in methods if key in summary[m]]
        if entries:
            means = np.array([e[0] for e in entries])
            errors = np.array([[e[0] - e[1], e[2] - e[0]] for e in entries]).T
            ax.bar(x, means, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("focal per-capita return")
    ax.set_title(f"{title}\nmean and 95% bootstrap interval (seeds, backgrounds, episodes)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Policy space: where the snapshots of theta (and BiDist's phi) sit, by their action distributions


def probe_observations(substrate, downsample, seed, num_envs=4, num_steps=100):
    """A fixed probe set: `num_steps` steps of uniformly random play in `num_envs` environments, as
    time-major actor inputs (rgb, vector, dones) of shape (num_steps, num_envs * players, ...)."""
    envs = utils.MeltingPotVecEnv(substrate, num_envs, seed=seed, num_workers=1, downsample=downsample)
    try:
        obs, rng = envs.reset(), np.random.default_rng(seed)
        done = np.zeros(num_envs * envs.num_players, dtype=np.float32)
        rgb, vector, dones = [], [], []
        for _ in range(num_steps):
            rgb.append(obs["rgb"]), vector.append(obs["vector"]), dones.append(done)
            obs, _, done, _ = envs.step(rng.integers(envs.num_actions, size=num_envs * envs.num_players))
            done = done.astype(np.float32)
    finally:
        envs.close()
    return tuple(torch.as_tensor(np.stack(x)) for x in (rgb, vector, dones))


@torch.no_grad()
def action_distributions(actor, probe):
    """The actor's action probabilities on every probe observation, flattened to one vector: the
    LSTM unrolled over each probe sequence from a zero state, as in training."""
    rgb, vector, dones = probe
    state = actor.initial_state(rgb.shape[1], "cpu")
    hidden, _ = actor.get_states(rgb.flatten(0, 1), vector.flatten(0, 1), state, dones.flatten())
    return actor.policy(hidden).softmax(-1).flatten().numpy()


def policy_space(populations, args, snapshot_dirs=None):
    """Embeds the action distributions of every run's snapshots (theta, and phi where the run has one)
    and final theta on the probe set with t-SNE, and draws them: one colour per method and
    population, later snapshots larger, final populations as stars, each run's theta path as a line.
    Writes OUT/policy_space.png and the points to OUT/policy_space.csv. With --results, each run's
    points and action distributions (in 1/255 steps) are exported as runs/{name}/policy_features.npz
    and read back where the run's snapshots are not on this machine, so an extended study embeds
    every run's path; every embedding uses the quantised distributions, so both give one picture."""
    import pandas as pd
    from sklearn.manifold import TSNE

    first = eval_scenarios.CheckpointPolicy(populations[0].checkpoint)
    probe = probe_observations(args.substrate, first.downsample, args.seed)
    probe_key = f"{args.substrate} seed {args.seed} downsample {first.downsample} shape {tuple(probe[0].shape)}"
    points, features = [], []
    for population in populations:
        policy = eval_scenarios.CheckpointPolicy(population.checkpoint)
        if policy.downsample != first.downsample:
            print(f"policy space: {population.name} skipped (other --downsample than {populations[0].name})")
            continue
        folder = getattr(args, "results", None)
        if getattr(args, "against", None) and population.checkpoint.startswith(f"{args.against}/runs/"):
            folder = args.against  # a yardstick population: its own study's export
        exported = folder and f"{folder}/runs/{population.name}/policy_features.npz"
        run_dir = (snapshot_dirs or {}).get(population.name)
        if exported and os.path.exists(exported) and not run_dir:
            saved = np.load(exported)
            if str(saved["probe"]) == probe_key:
                points += json.loads(str(saved["points"]))
                features += list(saved["features"])
                continue
        first_point = len(points)
        checkpoint = utils.load_checkpoint(population.checkpoint, "population")
        snapshots = sorted(glob.glob(f"{run_dir or os.path.dirname(population.checkpoint)}/snapshots/*.pt"))
        for path in snapshots + [population.checkpoint]:
            snapshot = utils.read_file(path, "snapshot")
            if (
                path != population.checkpoint
                and snapshot["iteration"] == checkpoint["iteration"]
                and snapshot["population"] == "theta"
            ):
                continue  # the final theta is the checkpoint's
            policy.actor.load_state_dict(snapshot["actor"])
            final = path == population.checkpoint
            points.append(
                {
                    "method": population.method,
                    "seed": population.seed,
                    "population": "theta" if final else snapshot["population"],
                    "iteration": snapshot["iteration"],
                    "fraction": snapshot["iteration"] / max(1, checkpoint["args"]["num_iterations"]),
                    "final": final,
                    "last_phase": snapshot.get("last_phase"),
                }
            )
            features.append(np.round(action_distributions(policy.actor, probe) * 255).astype(np.uint8))
        if exported and run_dir:
            os.makedirs(os.path.dirname(exported), exist_ok=True)
            utils.write_atomically(
                exported,
                "wb",
                lambda f: np.savez_compressed(
                    f, probe=probe_key, points=json.dumps(points[first_point:]), features=np.stack(features[first_point:])
                ),
            )
    if len(points) < 4:
        print("policy space: fewer than 4 snapshots, no picture")
        return
    features = np.stack(features).astype(np.float32) / 255
    init = "pca" if features.std(0).sum() > 0 else "random"  # PCA of identical rows (untrained runs) divides by 0
    embedding = TSNE(perplexity=min(30.0, (len(points) - 1) / 3), init=init, random_state=args.seed).fit_transform(features)
    table = pd.DataFrame(points).assign(
        x=embedding[:, 0], y=embedding[:, 1], probe_observations=probe[0].shape[0] * probe[0].shape[1]
    )
    table.to_csv(f"{args.out}/policy_space.csv", index=False)
    plot_policy_space(table, f"{args.out}/policy_space.png", args.substrate)


def plot_policy_space(table, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    groups = list(dict.fromkeys(zip(table["method"], table["population"])))
    colours = plt.get_cmap("tab10")
    for g, (method, population) in enumerate(groups):
        rows = table[(table["method"] == method) & (table["population"] == population)]
        colour = colours(g % 10)
        for _, run in rows[~rows["final"] & (rows["population"] == "theta")].groupby("seed"):  # theta's path
            run = run.sort_values("iteration")
            ax.plot(run["x"], run["y"], color=colour, alpha=0.25, linewidth=0.8)
        snaps = rows[~rows["final"]]
        ax.scatter(
            snaps["x"], snaps["y"], s=10 + 50 * snaps["fraction"], color=colour, alpha=0.7, label=f"{method} {population}"
        )
        finals = rows[rows["final"]]
        ax.scatter(finals["x"], finals["y"], s=200, marker="*", color=colour, edgecolor="black", linewidth=0.8)
    ax.set_title(
        f"{title}: policy space (t-SNE of action distributions on {table['probe_observations'].iloc[0]} "
        f"probe observations)\nlarger = later in training, lines = theta's path, stars = final trained "
        f"populations",
        fontsize=8,
    )
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_study(args):
    """One-line errors for impossible settings; records the study's substrate in OUT/study.json, so
    that a later call with another substrate is refused instead of mixing populations."""
    for name in ["total_timesteps", "num_episodes", "num_focal", "bootstrap_samples"]:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ["parallel", "threads", "num_workers", "snapshot_every"]:
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "snapshot_every" else 1):
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.ray_gpus < 0:
        raise SystemExit(f"error: --ray-gpus must be at least 0 (a share of a GPU per training run), got {args.ray_gpus:g}")
    if args.ray_gpus and not args.ray:
        raise SystemExit("error: --ray-gpus asks a Ray cluster for GPUs: it needs --ray")
    if args.num_untrained < 0:
        raise SystemExit(f"error: --num-untrained must be >= 0, got {args.num_untrained}")
    if args.all_pairs and not args.against:
        raise SystemExit(
            "error: --all-pairs plays every pair of a study measured --against another; without --against every pair is played"
        )
    if args.against and args.results and os.path.realpath(args.against) == os.path.realpath(args.results):
        raise SystemExit(f"error: --against {args.against} is this study's own --results; measure against another study")
    if args.reference is not None and args.reference[1] <= args.reference[0]:
        raise SystemExit(f"error: --reference MIN MAX needs MIN < MAX, got {args.reference[0]} {args.reference[1]}")
    utils.check_substrate(args.substrate)
    methods = [parse_method(m, check=not args.from_results) for m in args.methods]
    for flag in shlex.split(args.train_flags):
        if flag.split("=")[0] in RUNNER_FLAGS:
            raise SystemExit(
                f"error: --train-flags sets {flag.split('=')[0]}, which the study sets per run "
                f"(use --seeds / --total-timesteps / --substrate)"
            )
    for method in [] if args.from_results else methods:  # --from-results trains nothing (parse_method)
        check_flags(
            utils.training_script(method.script, "--methods names", root=eval_scenarios.HERE),
            method.script,
            shlex.split(args.train_flags),
            "--train-flags",
        )
    labels = [m.label for m in methods]
    if len(set(labels)) < len(labels):
        raise SystemExit(
            f"error: --methods: two methods have the label {max(labels, key=labels.count)!r}; "
            f"name them apart with label=script ..."
        )
    seeds_by_method(args.seeds, args.seeds_of, methods)
    os.makedirs(args.out, exist_ok=True)
    record = f"{args.out}/study.json"
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
        if saved["substrate"] != args.substrate:
            raise SystemExit(
                f"error: --out {args.out} holds a study on {saved['substrate']}, not {args.substrate}; use another --out"
            )
    with open(record, "w") as f:
        json.dump(
            {
                "substrate": args.substrate,
                "methods": args.methods,
                "seeds": args.seeds,
                "seeds_of": args.seeds_of,
                "total_timesteps": args.total_timesteps,
            },
            f,
            indent=1,
        )
    return methods


if __name__ == "__main__":
    utils.quiet_interrupt("interrupted: the same command continues the study")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill`, a scheduler's stop: a Ctrl-C
    args = utils.cli(Args)
    if args.from_results:
        args = args_from_results(args.from_results)
    methods = check_study(args)
    if args.results and not args.from_results:
        check_record(args)
    if args.snapshot_every is None:  # about 10 snapshots per run at the default 8 envs x 128 steps
        args.snapshot_every = max(1, args.total_timesteps // (8 * 128) // 10)
    seeds = seeds_by_method(args.seeds, args.seeds_of, methods)
    runs = [Run(m, seed, f"{args.out}/{m.label}__seed{seed}") for m in methods for seed in seeds[m.label]]
    pool, pool_runs = [], []
    if args.against:
        pinned = None  # --from-results: the yardstick's populations this study was measured against
        if args.from_results:
            with open(f"{args.results}/study.json") as f:
                pinned = json.load(f).get("yardstick")
        pool, pool_runs = yardstick(args, pinned)
        clash = sorted({m.label for m in methods} & {p.method for p in pool})
        if clash:
            raise SystemExit(
                f"error: --methods {clash[0]}: the --against study {args.against} has a method of that label; label "
                f"yours apart (label=script ...), or add seeds to it with that study's own command"
            )
    # before any training, so that a wrong --runs fails at once; with their training, for training.md, where a log
    # or an export of it sits beside them
    external_runs = [external_population(spec, args.substrate) for spec in args.runs]
    external = [Population(run.method.label, run.seed, run.path) for run in external_runs]
    clash = sorted({p.method for p in external} & {p.method for p in pool})
    if clash:
        raise SystemExit(
            f"error: --runs labelled {clash[0]}: the --against study has a method of that label; label yours apart"
        )
    names = [r.name for r in runs] + [p.name for p in external + pool]
    if len(set(names)) < len(names):
        raise SystemExit(f"error: two populations are named {max(names, key=names.count)}; label --runs apart with label=path")
    if args.from_results:
        missing = [run.name for run in runs if not exported_population(run, args)]
        if missing:
            raise SystemExit(
                f"error: --from-results {args.results}: {len(missing)} run(s) not exported there "
                f"({', '.join(missing)}); run the study's command (study.json) to train them"
            )
    else:
        runner = cluster.backend(args)
        if isinstance(runner, cluster.OnRay):
            print(runner.description, flush=True)
        train_all(runs, args, runner)
    training = training_summary(runs + external_runs + pool_runs, args.results)
    logs = method_curves(runs + external_runs + pool_runs, args.results)
    curves = learning_curves(logs, args.total_timesteps, f"{args.out}/learning_curves.png", args.substrate)
    diagnostics = own_scalars_through_training(logs, args.total_timesteps, f"{args.out}/diagnostics.png", args.substrate)
    if training:
        with open(f"{args.out}/training.md", "w") as f:
            f.write(
                f"# Training logs: {args.substrate}\n\n"
                "per method: the return, mean over seeds [95% t-interval over seeds] (range); the wall time of a "
                "run's training (its processes' time from first to last logged value: pauses between sessions "
                f"left out), mean over seeds (range)\n\n{training}\n"
            )
            if curves:
                f.write(
                    f"\n## Learning curves\n\nthe trained slots' return per player over each tenth of training, "
                    f"mean over seeds (range); learning_curves.png\n\n{curves}\n"
                )
            if diagnostics:
                f.write(
                    f"\n## Each method's own scalars through training\n\nmean over each tenth of training, mean over "
                    f"seeds (range); diagnostics.png\n\n{diagnostics}\n"
                )
        print(f"\nfrom the runs' logs (mean over seeds, range):\n{training}\n\n{curves}\n")
    if args.train_only:
        if args.results:
            export_study(args)
        raise SystemExit(0)

    # with --results, a run's population is its export, the network every later call will play
    populations = [Population(r.method.label, r.seed, exported_population(r, args) or r.checkpoint()) for r in runs]
    populations += external
    exported = {os.path.dirname(os.path.dirname(os.path.dirname(p.checkpoint))) for p in populations[len(runs) :]}
    elsewhere = sorted(d for d in exported if os.path.exists(f"{d}/crossplay_episodes.csv") and d != args.results)
    if args.results and not args.from_results and args.runs:  # populations trained elsewhere are exported too
        for i, (p, run) in enumerate(zip(external, external_runs)):
            to = export_external(run, f"{args.results}/runs/{p.name}")
            external[i] = populations[len(runs) + i] = Population(p.method, p.seed, to)
    backgrounds = {p.name: (p.checkpoint,) for p in populations + pool}
    backgrounds[RANDOM] = ("uniform_random",)
    if args.num_untrained:  # with --against, the yardstick's own: its first population's network, seeds 1..n
        backgrounds[UNTRAINED] = tuple(
            untrained_checkpoints(args.out, args.substrate, (pool or populations)[0].checkpoint, args.num_untrained)
        )
    met = {p.name for p in pool} | {RANDOM, UNTRAINED}

    def wanted(focal, background):  # --against: the yardstick's pairs, and each new population beside it and itself
        return not pool or args.all_pairs or background in met or background == focal.name

    results = crossplay(populations + pool, backgrounds, args, None if args.from_results else runner, wanted, elsewhere)
    yardstick = [p.name for p in pool] or None
    matrix, summary = statistics(populations + pool, results, args, yardstick)
    table = write_outputs(populations + pool, backgrounds, results, matrix, summary, args, yardstick)
    print(f"\n{table}\n")
    if len(summary) > 1:
        print(f"held-out by background method:\n{markdown_by_method(summary)}\n")
        print(f"held-out differences (row minus column):\n{markdown_differences(summary)}\n")
    run_dirs = {r.name: os.path.dirname(r.checkpoint()) for r in runs if r.checkpoint()}  # where snapshots are
    if args.policy_space and not args.from_results and (run_dirs or args.runs):
        policy_space(populations + pool, args, run_dirs)
    elif args.results and os.path.exists(f"{args.results}/policy_space.csv"):  # no snapshots here: redraw the export
        import pandas as pd

        plot_policy_space(pd.read_csv(f"{args.results}/policy_space.csv"), f"{args.out}/policy_space.png", args.substrate)
    if args.results:
        export_study(args)
        if not args.from_results:
            record_study(args, populations[len(runs) :], pool)
    written = args.results if args.results else args.out
    print(
        f"written to {written}/: results.md, crossplay.csv, crossplay_heatmap.png, methods.png"
        + (", policy_space.png" if os.path.exists(f"{args.out}/policy_space.png") else "")
        + (", crossplay_episodes.csv, runs/" if args.results else ", crossplay.json")
    )
