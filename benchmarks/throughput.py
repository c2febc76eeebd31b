"""Throughput and memory of the vectorised Melting Pot environment and of every algorithm script, in one run.

    python benchmarks/throughput.py                       # the table of docs/throughput.md
    python benchmarks/throughput.py --scripts mappo bidist_mappo --substrate clean_up

1. raw: MeltingPotVecEnv stepped with uniformly random actions (no learner), and one environment stepped the same
   way inside this process (what one core gives, the reference for the workers' scaling);
2. every training script (utils.training_scripts, or --scripts) at its defaults plus SCRIPT_FLAGS: short
   training runs in subprocesses with the same sizes (their own SPS, start-up excluded; BiDist's includes its
   distillation phases), run in turn --repeats times; the median of each is reported, because the speed of a shared
   machine drifts between runs by more than the difference being measured. mappo.py runs twice per
   round: at its default --torch-threads and with a thread per core (torch's own default).
3. the peer, when BenchMARL is installed (`make peer`): benchmarks/peer_benchmarl.py, BenchMARL's MAPPO at the same
   envs, rollout length and PPO schedule, in a subprocess --repeats times; its row's time split is collection
   (acting and env stepping) / training, and the last lines give mappo.py's speed and memory as ratios to it,
   at its defaults and with --no-downsample (an extra row: full-resolution inputs, as the peer's networks read).
4. --side-by-side: two mappo.py runs at once on the same machine, as a study's parallel runs are, first with
   torch's own thread default (a thread per core) and then with the scripts' default --torch-threads: the
   measurement behind that default.
Prints env steps/s (one step = every player acts once), agent steps/s, the ratio of each row to
the raw environment and to mappo.py (a method's overhead), the peak memory (sum of PSS over the
process and its workers) and the method's own state at the end of the run: the bytes of what its
final checkpoint holds beyond mappo.py's (BiDist's phi, its optimiser and its distillation window; a
pool or memory of past policies).
"""

import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import eval_scenarios  # noqa: E402
import utils  # noqa: E402

# the parts of an iteration the scripts time (charts/time_*): acting, env stepping, the PPO update, BiDist's
# distillation phases, and the rest (storage, GAE, logging)
TIME_PARTS = ["act", "env", "update", "distill", "other"]
# flags for the training rows besides the script's defaults: the policy pools fill within the measured
# iterations (FSP's reaches its default cap of 20; RPM's memory takes a snapshot every iteration), so the rows
# measure acting beside a full pool, as late in a real run, rather than beside the few snapshots of its start
SCRIPT_FLAGS = {"fsp_mappo": ["--pool-every", "1"], "rpm_mappo": ["--rpm-save-every", "1"]}


@dataclass
class Args:
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    scripts: list[str] = field(default_factory=eval_scenarios.algorithm_scripts)
    """the training scripts measured (default: every training script here); mappo is always one, the reference"""
    num_envs: int = 8
    """parallel substrate instances, for every measurement"""
    raw_steps: int = 1000
    """steps of every environment for the raw measurement"""
    train_iterations: int = 30
    """iterations (of num_envs x 128 env steps) of each training measurement"""
    repeats: int = 3
    """runs of each training measurement, taking the scripts in turn"""
    seed: int = 1
    """seed of every measurement"""
    peer: bool = True
    """measure BenchMARL's MAPPO too when it is installed (`make peer`); --no-peer skips it"""
    peer_iterations: int = 6
    """iterations of each peer measurement (the first not timed): the peer runs ~10 times slower"""
    side_by_side: bool = False
    """also run two mappo.py at once, with torch's thread default and with the scripts' (--side-by-side-iterations)"""
    side_by_side_iterations: int = 10
    """iterations of each of the two runs side by side (the contended pair can run at ~40 env steps/s)"""


def process_tree_pss(pid: int) -> int:
    """Proportional set size, in bytes, of `pid` and all its descendants (shared pages split)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


class PeakMemory:
    """Samples the PSS of a process tree every 0.25 s on a thread, keeping the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            self.peak = max(self.peak, process_tree_pss(self.pid))
            time.sleep(0.25)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def raw_throughput(args):
    memory = PeakMemory(os.getpid())
    envs = utils.MeltingPotVecEnv(args.substrate, args.num_envs, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    try:
        envs.reset()
        rows = args.num_envs * envs.num_players
        start = time.time()
        for _ in range(args.raw_steps):
            envs.step(rng.integers(0, envs.num_actions, size=rows))
        seconds = time.time() - start
    finally:
        envs.close()
    return args.raw_steps * args.num_envs / seconds, envs.num_players, memory.stop()


def single_process_throughput(substrate, steps, seed):
    """One environment stepped in this process with uniformly random actions, doing a worker's per-step work
    (numpy observations, downsampling, resets): env steps/s of one core, no pipes."""
    random.seed(seed)
    env = utils._Substrate(substrate, downsample=True, max_episode_steps=None)
    rng = np.random.default_rng(seed)
    try:
        env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            env.step(rng.integers(0, env.num_actions, size=env.num_players))
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def tensor_bytes(value):
    """Bytes of the tensors and arrays in `value`, through dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def time_shares(run_dir):
    """The mean over a run's iterations, the first (start-up) excluded, of its charts/time_* shares."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag.split("time_")[1]: float(np.mean([e.value for e in events.Scalars(tag)][1:]))
        for tag in events.Tags()["scalars"]
        if tag.startswith("charts/time_")
    }


def training_throughput(script, flags, args):
    """One training run of `script` with `flags`: its env steps/s, peak memory, time shares and final
    checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, f"{script}.py"),
                "--substrate",
                args.substrate,
                "--num-envs",
                str(args.num_envs),
                "--seed",
                str(args.seed),
                "--total-timesteps",
                str(args.train_iterations * args.num_envs * 128),
                "--num-steps",
                "128",
                "--checkpoint-every",
                "0",
                "--exp-name",
                "benchmark",
                *flags,
            ],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        memory = PeakMemory(process.pid)
        output, errors = process.communicate()
        peak = memory.stop()
        if process.returncode != 0:
            raise SystemExit(f"error: {script}.py failed (exit {process.returncode}): {errors.strip().splitlines()[-1]}")
        (run,) = os.listdir(f"{tmp}/runs")
        checkpoint = utils.load_checkpoint(f"{tmp}/runs/{run}/checkpoint.pt", "benchmark run")
        shares = time_shares(f"{tmp}/runs/{run}")
    sps = int(re.findall(r"SPS ([\d,]+)", output)[-1].replace(",", ""))
    return sps, peak, shares, checkpoint


def side_by_side_throughput(flags, args):
    """Env steps/s of two mappo.py runs with `flags` started together, each with the same seed and sizes."""
    short = replace(args, train_iterations=args.side_by_side_iterations)
    results = [None, None]

    def run(i):
        try:
            results[i] = training_throughput("mappo", flags, short)[0]
        except SystemExit as failed:  # a thread does not pass it on: keep its one-line message
            results[i] = failed

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, SystemExit):
            raise result
    return results


def peer_throughput(args):
    """One run of benchmarks/peer_benchmarl.py: its env steps/s, peak memory and time split."""
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "peer_benchmarl.py"),
            "--substrate",
            args.substrate,
            "--num-envs",
            str(args.num_envs),
            "--num-steps",
            "128",
            "--iterations",
            str(args.peer_iterations),
            "--seed",
            str(args.seed),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    memory = PeakMemory(process.pid)
    output, errors = process.communicate()
    peak = memory.stop()
    found = re.search(r"peer: ([\d.]+) env steps/s \| collection (\d+)% \| training (\d+)%", output)
    if process.returncode != 0 or not found:
        raise SystemExit(
            f"error: benchmarks/peer_benchmarl.py failed (exit {process.returncode}): "
            f"{(errors.strip().splitlines() or ['no output'])[-1]}"
        )
    sps, collection, training = float(found[1]), int(found[2]) / 100, int(found[3]) / 100
    return sps, peak, {"collection": collection, "training": training}


if __name__ == "__main__":
    args = tyro.cli(Args)
    utils.check_substrate(args.substrate)
    valid = eval_scenarios.algorithm_scripts()
    for script in args.scripts:
        if script not in valid:
            raise SystemExit(f"error: --scripts {script}: no {script}.py; valid: {', '.join(valid)}")
    # (script, flags) of every training row: mappo.py first (the reference), then mappo.py with torch's own
    # thread default (a thread per core) against the scripts' default (the cores the env workers leave)
    measured = [("mappo", []), ("mappo", ["--torch-threads", str(os.cpu_count() or 1)])] + [
        (s, SCRIPT_FLAGS.get(s, [])) for s in dict.fromkeys(args.scripts) if s != "mappo"
    ]
    peer = args.peer and importlib.util.find_spec("benchmarl") is not None
    if peer:  # beside the peer, mappo.py on the full-resolution views and frames the peer's networks read too
        measured.append(("mappo", ["--no-downsample"]))
    raw_sps, players, raw_memory = raw_throughput(args)
    single_sps = single_process_throughput(args.substrate, args.raw_steps, args.seed)
    runs = {i: [] for i in range(len(measured))}
    checkpoints, peer_runs = {}, []
    for _ in range(args.repeats):
        for i, (script, flags) in enumerate(measured):
            sps, peak, shares, checkpoints[i] = training_throughput(script, flags, args)
            runs[i].append((sps, peak, shares))
        if peer:
            peer_runs.append(peer_throughput(args))
    mappo_keys = set(checkpoints[0])  # what MAPPO's checkpoint holds; the rest is the method's own state
    rows = [("raw env, random actions", raw_sps, raw_memory, None, None)]
    for i, r in runs.items():
        script, flags = measured[i]
        name = f"{script}.py training" + (f" ({' '.join(flags)})" if flags else "")
        print(f"{name} runs: {', '.join(f'{sps:,}' for sps, _, _ in r)} env steps/s")
        method_state = {key: tensor_bytes(v) for key, v in checkpoints[i].items() if key not in mappo_keys}
        shares = {part: float(np.mean([s.get(part, 0.0) for _, _, s in r])) for part in TIME_PARTS}
        rows.append((name, float(np.median([sps for sps, _, _ in r])), max(peak for _, peak, _ in r), method_state, shares))
    mappo_sps = rows[1][1]
    print(
        f"\n{args.substrate}, {players} players, {args.num_envs} envs, {os.cpu_count()} cores, "
        f"median of {args.repeats} training runs of {args.train_iterations} iterations each\n"
    )
    workers = utils.num_env_workers(args.num_envs)
    print(
        f"raw env: {raw_sps:,.0f} env steps/s in {workers} worker(s) against {single_sps:,.0f} in one process: "
        f"{raw_sps / (workers * single_sps):.2f} of {workers} x one process\n"
    )
    print(
        "| measurement | env steps/s | agent steps/s | ratio to raw env | ratio to mappo.py | time: "
        f"{' / '.join(TIME_PARTS)} | peak memory | method's own state at the end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, sps, memory, state, shares in rows:
        held = (
            "-"
            if state is None
            else (", ".join(f"{key} {size / 2**20:,.1f} MiB" for key, size in state.items() if size) or "none")
        )
        split = "-" if shares is None else " / ".join(f"{shares[part]:.0%}" for part in TIME_PARTS)
        print(
            f"| {name} | {sps:,.0f} | {sps * players:,.0f} | {sps / raw_sps:.2f} | {sps / mappo_sps:.2f} "
            f"| {split} | {memory / 2**20:,.0f} MiB | {held} |"
        )
    if not peer:
        print("\n(no peer row: " + ("--no-peer)" if not args.peer else "BenchMARL is not installed; `make peer`)"))
    else:
        import benchmarl

        peer_sps = float(np.median([sps for sps, _, _ in peer_runs]))
        peer_memory = max(peak for _, peak, _ in peer_runs)
        split = " / ".join(
            f"{part} {np.mean([shares[part] for _, _, shares in peer_runs]):.0%}" for part in ("collection", "training")
        )
        print(
            f"| BenchMARL {benchmarl.__version__} MAPPO (peer) | {peer_sps:,.0f} | {peer_sps * players:,.0f} | "
            f"{peer_sps / raw_sps:.2f} | {peer_sps / mappo_sps:.2f} | {split} | {peer_memory / 2**20:,.0f} MiB | - |"
        )
        print(f"\npeer runs: {', '.join(f'{sps:,.1f}' for sps, _, _ in peer_runs)} env steps/s")
        print(
            f"mappo.py against BenchMARL's MAPPO: {mappo_sps / peer_sps:.1f} times its env steps/s, "
            f"{rows[1][2] / peer_memory:.2f} of its peak memory"
        )
        _, full_sps, full_memory, _, _ = rows[-1]  # mappo.py --no-downsample
        print(
            f"mappo.py --no-downsample (full-resolution inputs, as the peer's) against it: "
            f"{full_sps / peer_sps:.1f} times its env steps/s, {full_memory / peer_memory:.2f} of its peak memory"
        )
    if args.side_by_side:
        cores = os.cpu_count() or 1
        print(f"\ntwo mappo.py runs side by side ({args.side_by_side_iterations} iterations each, {cores} cores):")
        for name, flags in [
            (f"torch's thread default ({cores} each)", ["--torch-threads", str(cores)]),
            (f"the scripts' default ({utils.default_torch_threads(args.num_envs)} each)", []),
        ]:
            pair = side_by_side_throughput(flags, args)
            print(f"  {name}: {pair[0]:,} + {pair[1]:,} = {sum(pair):,} env steps/s")
