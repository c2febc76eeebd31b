"""Which substrates are a regime where the paper's question has an answer: MAPPO populations that learn,
and a generalisation gap to close. Reads exported studies (study.py --results) and the uniform-random
references (random_policy.py --output), plays nothing.

    python benchmarks/regime_scan.py results/scan1m_*

A substrate qualifies (issue 25) when at least 2 of 3 seeds (two thirds of them) reach a self-play
return of at least 2x uniform random play (where random play loses, as in coins, at least 0: as far
above random play as random play is below 0) and the gap (self-play - held-out) is separated from 0, or,
for a competitive substrate, when the held-out returns of two seeds differ by more than their intervals
(populations exploitable by strangers). Common interest (pure_coordination) is judged by the gap alone:
there, unequal held-out returns mean unequal skill, not exploitation. Zero-sum (running_with_scissors),
where every population earns 0 beside itself, by exploitability alone. The mixed-motive games (social
dilemmas: coins, chicken, stag_hunt, prisoners_dilemma; bach_or_stravinsky) by either.
"""

import json
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval_scenarios  # noqa: E402
import study  # noqa: E402

KINDS = {  # how a substrate is judged; any other is mixed-motive, judged by the gap or by exploitability
    "pure_coordination_in_the_matrix__repeated": "common interest",
    "running_with_scissors_in_the_matrix__repeated": "zero-sum",
}


@dataclass
class Args:
    studies: tyro.conf.Positional[tuple[str, ...]]
    """exported study folders (study.py --results), one MAPPO study per substrate"""
    random: str = "results/uniform_random.csv"
    """uniform-random play per substrate (benchmarks/random_policy.py --output)"""
    method: str = "mappo"
    """the method whose populations are judged"""


def learned_above(random_play):
    """The self-play return that counts as learned: 2x random play, or 0 where random play is negative
    (2x a loss would be a bigger loss)."""
    return max(2 * random_play, 0.0)


def judge(folder, random_play, method="mappo"):
    """One substrate's row: its numbers and whether it qualifies."""
    with open(f"{folder}/study.json") as f:
        saved = json.load(f)["args"]
    # the study's --num-episodes of each pair: a top-up in progress may have committed more for some pairs
    pairs = {pair: episodes[: saved["num_episodes"]] for pair, (_, episodes) in study.committed_episodes(folder).items()}
    names = [f"{method}__seed{seed}" for seed in saved["seeds"]]
    missing = [n for n in names if (n, n) not in pairs]
    if missing:
        raise SystemExit(
            f"error: {folder}: no cross-play episodes for {', '.join(missing)} (run its study without --train-only)"
        )
    populations = [study.Population(method, seed, name) for seed, name in zip(saved["seeds"], names)]
    summary = study.statistics(
        populations,
        pairs,
        SimpleNamespace(
            seed=saved["seed"],
            reference=None,
            bootstrap_samples=saved["bootstrap_samples"],
            num_episodes=saved["num_episodes"],
        ),
    )[1][method]
    self_play = [np.mean(pairs[n, n]) for n in names]
    held = [[r for b in names if b != n for r in pairs[n, b]] for n in names]
    held_ci = [(np.mean(h), eval_scenarios.confidence_interval(h)) for h in held]
    exploitable = any(a[0] - a[1] > b[0] + b[1] for a in held_ci for b in held_ci)
    learned = sum(s >= learned_above(random_play) for s in self_play)
    kind = KINDS.get(saved["substrate"], "mixed motive")
    gap_rule = learned >= 2 * len(names) / 3 and summary["gap"][1] > 0
    # zero-sum: every population earns 0 beside itself on average, so "2x random" says nothing there
    qualifies = {"common interest": gap_rule, "zero-sum": exploitable}.get(kind, gap_rule or exploitable)
    return {
        "substrate": saved["substrate"].removesuffix("_in_the_matrix__repeated"),
        "steps": saved["total_timesteps"],
        "random": random_play,
        "self_play_seeds": self_play,
        "learned": learned,
        "seeds": len(names),
        "summary": summary,
        "held_out_seeds": held_ci,
        "exploitable": exploitable,
        "kind": kind,
        "qualifies": qualifies,
    }


def markdown(rows):
    interval = study.interval
    lines = [
        "| substrate | env steps | uniform random play | self-play per seed | seeds learned | self-play | held-out | "
        "gap | held-out per seed | qualifies |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        s = r["summary"]
        yes = {True: "yes", False: "no"}
        rules = {"gap > 0": s["gap"][1] > 0, "exploitable": r["exploitable"]}
        if r["kind"] != "mixed motive":
            rules.pop("exploitable" if r["kind"] == "common interest" else "gap > 0")
        rule = ", ".join(f"{name}: {yes[bool(value)]}" for name, value in rules.items())
        lines.append(
            " | ".join(
                [
                    f"| {r['substrate']}",
                    f"{r['steps'] / 1e6:g}M",
                    f"{r['random']:.2f}",
                    ", ".join(f"{v:.2f}" for v in r["self_play_seeds"]),
                    "n/a (zero-sum)" if r["kind"] == "zero-sum" else f"{r['learned']} of {r['seeds']}",
                    interval(s["self_play"]),
                    interval(s["held_out"]),
                    interval(s["gap"]),
                    ", ".join(f"{m:.2f} ± {h:.2f}" for m, h in r["held_out_seeds"]),
                    f"**{'yes' if r['qualifies'] else 'no'}** ({rule})",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not os.path.exists(args.random):
        raise SystemExit(f"error: --random {args.random}: no such file (benchmarks/random_policy.py --output writes it)")
    random_play = pd.read_csv(args.random).set_index("substrate").return_per_player
    rows = []
    for folder in args.studies:
        if not os.path.exists(f"{folder}/study.json"):
            raise SystemExit(f"error: {folder}: no study.json (a folder written by study.py --results)")
        with open(f"{folder}/study.json") as f:
            substrate = json.load(f)["args"]["substrate"]
        if substrate not in random_play:
            raise SystemExit(
                f"error: --random {args.random} has no row for {substrate}; run benchmarks/random_policy.py "
                f"--substrate {substrate} --output {args.random}"
            )
        rows.append(judge(folder, random_play[substrate], args.method))
    print(markdown(rows))
