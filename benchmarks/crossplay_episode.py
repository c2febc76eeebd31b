"""What one cross-play episode costs, with Melting Pot's populations stepping each slot in a thread of its own
(Melting Pot's default) and stepped inline (`eval_scenarios.step_slots_inline`), each with torch's oneDNN kernels
on (torch's default) and off (`eval_scenarios.episode_kernels`). Evaluation plays inline with oneDNN off.

    .venv/bin/python benchmarks/crossplay_episode.py

Plays `--episodes` episodes of one (focal, background) pair of a committed study in this process, on one torch
thread, each episode once in each way, alternating (the same seeds both ways), and prints each way's wall and
CPU milliseconds (this process's user and system time, its threads included) per env step over all its
episodes (episodes end at random, so their lengths differ), and the ratio of each way's CPU time to threaded.
An evaluation worker shares the machine with as many others as it has cores, so CPU time is what sets
cross-play's throughput; wall time is what one episode alone takes. `--no-onednn` leaves out the two ways
with oneDNN off. Episodes are not replayed bit for bit (Reproducibility), so the returns
are printed to show that every way plays the same game, not compared.
"""

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval_scenarios  # noqa: E402
import utils  # noqa: E402

RUNS = "results/pure_coordination_2m_main/runs"


@dataclass
class Args:
    focal: str = f"{RUNS}/rpm_mappo__seed1/population.pt"
    """the focal population's checkpoint"""
    background: str = f"{RUNS}/fsp_mappo__seed1/population.pt"
    """the background population's checkpoint"""
    episodes: int = 4
    """episodes played each way"""
    onednn: bool = True
    """also measure both ways with torch's oneDNN kernels off (--no-onednn: only with them on)"""


def main():
    args = utils.parse_args(Args)
    torch.set_num_threads(1)
    utils.import_meltingpot()
    from meltingpot.utils.scenarios import population

    threaded = population.concurrent  # Melting Pot's own, and evaluation's two changes, before they are swapped out
    inline_slots, onednn_off = eval_scenarios.step_slots_inline, eval_scenarios.episode_kernels
    substrate = utils.load_checkpoint(args.focal, "--focal")["substrate"]
    target = eval_scenarios.Target("benchmark", substrate, (args.background,), 1)
    ways = [("threads", False, True), ("inline", True, True)]
    if args.onednn:
        ways += [("threads, no oneDNN", False, False), ("inline, no oneDNN", True, False)]
    eval_scenarios.run_episode(target, 0, args.focal, "cpu")  # loads both policies and warms up
    steps = []  # one entry per policy step: the episodes' lengths, counted where they are played
    step = eval_scenarios.CheckpointPolicy.step

    def counted(self, timestep, prev_state):
        steps.append(1)
        return step(self, timestep, prev_state)

    eval_scenarios.CheckpointPolicy.step = counted
    totals = {name: [0.0, 0.0, 0] for name, _, _ in ways}  # wall, CPU, env steps
    for episode in range(1, args.episodes + 1):
        for name, inline, onednn in ways:
            population.concurrent = threaded  # Melting Pot's own, unless run_episode's step_slots_inline replaces it
            eval_scenarios.step_slots_inline = inline_slots if inline else (lambda: None)
            eval_scenarios.episode_kernels = contextlib.nullcontext if onednn else onednn_off
            steps.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            result = eval_scenarios.run_episode(target, episode, args.focal, "cpu")
            wall, cpu, env_steps = time.perf_counter() - wall, time.process_time() - cpu, len(steps) // 2
            totals[name] = [a + b for a, b in zip(totals[name], (wall, cpu, env_steps))]
            print(
                f"episode {episode}, {name}: {env_steps} steps, {wall:.2f} s wall, {cpu:.2f} s CPU, "
                f"focal return {result['focal_per_capita_return']:.2f}",
                flush=True,
            )
    print(
        f"\n{substrate}, {os.path.basename(os.path.dirname(args.focal))} beside "
        f"{os.path.basename(os.path.dirname(args.background))}, {args.episodes} episode(s) each way, per env step:"
    )
    reference = totals["threads"][1] / totals["threads"][2]
    for name, (wall, cpu, env_steps) in totals.items():
        print(
            f"  {name:20s} {1000 * wall / env_steps:6.2f} ms wall  {1000 * cpu / env_steps:6.2f} ms CPU  "
            f"CPU ratio to threads {cpu / env_steps / reference:.2f}"
        )


if __name__ == "__main__":
    main()
