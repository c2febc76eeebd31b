"""Throughput of the vectorised Melting Pot environment, mappo.py and bidist_mappo.py, in one run.

    python benchmarks/throughput.py                       # the README's table
    python benchmarks/throughput.py --substrate clean_up --num-envs 8

1. raw: MeltingPotVecEnv stepped with uniformly random actions (no learner);
2. mappo.py and 3. bidist_mappo.py (default --p 0.5 --kd 10): short training runs in subprocesses
   with the same sizes (their own SPS, start-up excluded; BiDist's includes its distillation phases),
   run alternately --repeats times; the median of each is reported, because the speed of a shared
   machine drifts between runs by more than the difference being measured.
Prints env steps/s (one step = every player acts once), agent steps/s, the ratio of each row to
the raw environment and to mappo.py (BiDist's overhead), and the peak memory (sum of PSS over the
process and its workers).
"""

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import utils  # noqa: E402


@dataclass
class Args:
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    num_envs: int = 8
    """parallel substrate instances, for both measurements"""
    raw_steps: int = 1000
    """steps of every environment for the raw measurement"""
    train_iterations: int = 30
    """iterations (of num_envs x 128 env steps) of each training measurement"""
    repeats: int = 3
    """runs of each training measurement, alternating between the two scripts"""
    seed: int = 1
    """seed of every measurement"""


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


def training_throughput(script, args):
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, script), "--substrate", args.substrate,
             "--num-envs", str(args.num_envs), "--seed", str(args.seed),
             "--total-timesteps", str(args.train_iterations * args.num_envs * 128), "--num-steps", "128",
             "--no-save-model", "--checkpoint-every", "0", "--exp-name", "benchmark"],
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        memory = PeakMemory(process.pid)
        output, errors = process.communicate()
        peak = memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"error: {script} failed (exit {process.returncode}): {errors.strip().splitlines()[-1]}")
    sps = int(re.findall(r"SPS ([\d,]+)", output)[-1].replace(",", ""))
    return sps, peak


if __name__ == "__main__":
    args = tyro.cli(Args)
    utils.check_substrate(args.substrate)
    raw_sps, players, raw_memory = raw_throughput(args)
    runs = {"mappo.py": [], "bidist_mappo.py": []}
    for _ in range(args.repeats):
        for script in runs:
            runs[script].append(training_throughput(script, args))
    (mappo_sps, mappo_memory), (bidist_sps, bidist_memory) = (
        (float(np.median([sps for sps, _ in r])), max(memory for _, memory in r)) for r in runs.values())
    for script, r in runs.items():
        print(f"{script} runs: {', '.join(f'{sps:,}' for sps, _ in r)} env steps/s")
    print(f"\n{args.substrate}, {players} players, {args.num_envs} envs, {os.cpu_count()} cores, "
          f"median of {args.repeats} training runs each\n")
    print("| measurement | env steps/s | agent steps/s | ratio to raw env | ratio to mappo.py | peak memory |")
    print("|---|---|---|---|---|---|")
    for name, sps, memory in [("raw env, random actions", raw_sps, raw_memory),
                              ("mappo.py training", mappo_sps, mappo_memory),
                              ("bidist_mappo.py training", bidist_sps, bidist_memory)]:
        print(f"| {name} | {sps:,.0f} | {sps * players:,.0f} | {sps / raw_sps:.2f} | {sps / mappo_sps:.2f} "
              f"| {memory / 2**20:,.0f} MiB |")
