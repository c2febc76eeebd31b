"""Prints a run's learning curve from its TensorBoard logs as a markdown table, binned by env steps.
For a bidist_mappo.py run it adds the trained slots' return and the distillation phases' KL and
phi entropy (means over the phases in each bin).

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
    bidist = "distill/kl_after" in events.Tags()["scalars"]
    header = "| env steps | episodes | return/player (mean ± s.e.) | collective return | policy entropy |"
    if bidist:
        trained = series(events, "mixed/episodic_return_trained")
        direction, phi_entropy = series(events, "distill/direction"), series(events, "distill/phi_entropy")
        kl_before, kl_after = series(events, "distill/kl_before"), series(events, "distill/kl_after")
        header += " trained slots' return | forward KL before -> after | reverse KL before -> after | phi entropy |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for low in range(0, int(returns[:, 0].max()), args.bin_size):
        in_bin = (returns[:, 0] > low) & (returns[:, 0] <= low + args.bin_size)
        if not in_bin.any():
            continue
        r = returns[in_bin, 1]
        se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
        e = entropy[(entropy[:, 0] > low) & (entropy[:, 0] <= low + args.bin_size), 1]
        row = (f"| {low // 1000}K-{(low + args.bin_size) // 1000}K | {in_bin.sum()} | {r.mean():.2f} ± {se:.2f} "
               f"| {collective[in_bin, 1].mean():.2f} | {e.mean():.2f} |")
        if bidist:
            phases = (direction[:, 0] > low) & (direction[:, 0] <= low + args.bin_size)
            t = trained[(trained[:, 0] > low) & (trained[:, 0] <= low + args.bin_size), 1]
            row += f" {t.mean():.2f} |" if len(t) else " - |"
            for sign in (1, -1):
                d = phases & (direction[:, 1] == sign)
                row += f" {kl_before[d, 1].mean():.2f} -> {kl_after[d, 1].mean():.2f} |" if d.any() else " - |"
            row += f" {phi_entropy[phases, 1].mean():.2f} |" if phases.any() else " - |"
        print(row)
