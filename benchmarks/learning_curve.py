"""Prints a run's learning curve from its TensorBoard logs as a markdown table, binned by env steps.

    python benchmarks/learning_curve.py runs/<run_name> --bin-size 100000
"""

import os
from dataclasses import dataclass

import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@dataclass
class Args:
    run_dir: tyro.conf.Positional[str]
    """the run's directory, runs/<run_name>"""
    bin_size: int = 100_000
    """env steps per row"""


def series(events, tag):
    return np.array([(e.step, e.value) for e in events.Scalars(tag)]).reshape(-1, 2)


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not os.path.isdir(args.run_dir):
        raise SystemExit(f"error: {args.run_dir}: no such run directory")
    events = EventAccumulator(args.run_dir, size_guidance={"scalars": 0})
    events.Reload()
    if "charts/episodic_return" not in events.Tags()["scalars"]:
        raise SystemExit(f"error: {args.run_dir} holds no finished episode (charts/episodic_return)")
    returns, collective = series(events, "charts/episodic_return"), series(events, "charts/collective_return")
    entropy = series(events, "losses/entropy")
    print("| env steps | episodes | return/player (mean ± s.e.) | collective return | policy entropy |")
    print("|---|---|---|---|---|")
    for low in range(0, int(returns[:, 0].max()), args.bin_size):
        in_bin = (returns[:, 0] > low) & (returns[:, 0] <= low + args.bin_size)
        if not in_bin.any():
            continue
        r = returns[in_bin, 1]
        se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
        e = entropy[(entropy[:, 0] > low) & (entropy[:, 0] <= low + args.bin_size), 1]
        print(f"| {low // 1000}K-{(low + args.bin_size) // 1000}K | {in_bin.sum()} | {r.mean():.2f} ± {se:.2f} "
              f"| {collective[in_bin, 1].mean():.2f} | {e.mean():.2f} |")
