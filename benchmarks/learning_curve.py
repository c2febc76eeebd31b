"""Prints a run's learning curve from its TensorBoard logs as a markdown table, binned by env steps.
The return is the trained population's (every slot for mappo.py). For a bidist_mappo.py run it
adds the return over all slots (both populations) and the distillation phases' KL, phi's entropy,
phi_logp_ratio (mean and minimum over the phases in each bin) and the input dependence of phi and
of theta (means over the phases), then run-wide lines over every phase: phi_logp_ratio, phi's input
dependence over theta's and the KL after the phase, per direction, and how far each reverse phase ends
above the forward residual before it.

    python benchmarks/learning_curve.py runs/<run_name> --bin-size 100000
"""

import functools
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


def in_bin_values(x, low, size):
    """The values of a (step, value) series logged in the bin (low, low + size]."""
    return x[(x[:, 0] > low) & (x[:, 0] <= low + size), 1]


def phase_summary(direction, kl_after, ratio, phi_mi, theta_mi):
    """Run-wide lines over the distillation phases, from (step, value) series logged once per phase."""

    def by_step(x):  # a resumed run logs a step twice: the later value wins
        return dict(map(tuple, x))

    direction, kl_after, ratio = by_step(direction), by_step(kl_after), by_step(ratio)
    phi_mi, theta_mi = by_step(phi_mi), by_step(theta_mi)
    steps = sorted(direction)

    def spread(v, d=2):
        return f"{min(v):.{d}f} to {max(v):.{d}f} (mean {np.mean(v):.{d}f})" if v else "-"

    lines = []
    for sign, name in ((-1, "reverse"), (1, "forward")):
        phases = [s for s in steps if direction[s] == sign]
        r = [ratio[s] for s in phases if s in ratio]
        k = [kl_after[s] for s in phases]
        mi = [phi_mi[s] / theta_mi[s] for s in phases if theta_mi.get(s, 0) > 0 and s in phi_mi]
        lines.append(
            f"{name} phases: {len(phases)}; phi_logp_ratio after {spread(r)}, below 0.5 in "
            f"{sum(v < 0.5 for v in r)}; input dependence phi / theta after {spread(mi)}; "
            f"KL after {spread(k, 3)}"
        )
    gaps = [
        kl_after[s] - kl_after[previous]
        for previous, s in zip(steps, steps[1:])
        if direction[s] == -1 and direction[previous] == 1
    ]
    lines.append(f"reverse KL after minus the forward residual before it, over {len(gaps)} reverse phases: {spread(gaps, 3)}")
    return lines


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not os.path.isdir(args.run_dir):
        raise SystemExit(f"error: {args.run_dir}: no such run directory")
    events = EventAccumulator(args.run_dir, size_guidance={"scalars": 0})
    events.Reload()
    if "charts/episodic_return" not in events.Tags()["scalars"]:
        raise SystemExit(f"error: {args.run_dir} holds no finished episode (charts/episodic_return)")
    tags = events.Tags()["scalars"]
    returns, collective = series(events, "charts/episodic_return"), series(events, "charts/collective_return")
    entropy = series(events, "losses/entropy")
    bidist = "distill/kl_after" in tags
    header = "| env steps | episodes | return/player (mean ± s.e.) | collective return | policy entropy |"
    if bidist:
        if "mixed/episodic_return_trained" in tags:  # a run of before the headline became the trained slots'
            returns, all_slots = series(events, "mixed/episodic_return_trained"), returns
        else:
            all_slots = series(events, "mixed/episodic_return_all")
        direction, phi_entropy = series(events, "distill/direction"), series(events, "distill/phi_entropy")
        kl_before, kl_after = series(events, "distill/kl_before"), series(events, "distill/kl_after")
        ratio, phi_mi, theta_mi = (
            series(events, f"distill/{key}") if f"distill/{key}" in tags else np.zeros((0, 2))
            for key in ["phi_logp_ratio", "phi_input_dependence", "theta_input_dependence"]
        )
        header += (
            " all slots' return | forward KL before -> after | reverse KL before -> after | phi entropy "
            "| phi_logp_ratio mean (min) | input dependence phi / theta (nats) |"
        )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for low in range(0, int(returns[:, 0].max()), args.bin_size):
        in_bin = (returns[:, 0] > low) & (returns[:, 0] <= low + args.bin_size)
        if not in_bin.any():
            continue
        r = returns[in_bin, 1]
        se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
        within = functools.partial(in_bin_values, low=low, size=args.bin_size)
        c = within(collective)
        row = (
            f"| {low // 1000}K-{(low + args.bin_size) // 1000}K | {in_bin.sum()} | {r.mean():.2f} ± {se:.2f} "
            f"| {c.mean():.2f} | {within(entropy).mean():.2f} |"
        )
        if bidist:
            phases = (direction[:, 0] > low) & (direction[:, 0] <= low + args.bin_size)
            a = within(all_slots)
            row += f" {a.mean():.2f} |" if len(a) else " - |"
            for sign in (1, -1):
                d = phases & (direction[:, 1] == sign)
                row += f" {kl_before[d, 1].mean():.2f} -> {kl_after[d, 1].mean():.2f} |" if d.any() else " - |"
            row += f" {phi_entropy[phases, 1].mean():.2f} |" if phases.any() else " - |"
            row += f" {within(ratio).mean():.2f} ({within(ratio).min():.2f}) |" if len(within(ratio)) else " - |"
            row += f" {within(phi_mi).mean():.3f} / {within(theta_mi).mean():.3f} |" if len(within(phi_mi)) else " - |"
        print(row)
    if bidist:
        print()
        print("\n".join(phase_summary(direction, kl_after, ratio, phi_mi, theta_mi)))
