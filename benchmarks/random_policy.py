"""Per-player episode return of uniformly random play: the floor a learning curve must clear.

    python benchmarks/random_policy.py --substrate pure_coordination_in_the_matrix__repeated --episodes 64
    python benchmarks/random_policy.py --substrate stag_hunt_in_the_matrix__repeated --output results/uniform_random.csv

`--output` keeps one row per substrate in a CSV (the regime scan's reference: benchmarks/regime_scan.py).
"""

import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


@dataclass
class Args:
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    episodes: int = 64
    """complete episodes to average over"""
    num_envs: int = 8
    """parallel substrate instances"""
    seed: int = 1
    """seed of the environments and of the random actions"""
    output: Optional[str] = None
    """a CSV to write this substrate's row to (other substrates' rows are kept)"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    envs = utils.MeltingPotVecEnv(args.substrate, args.num_envs, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    returns, collective, lengths = [], [], []
    try:
        envs.reset()
        while len(returns) < args.episodes:
            _, _, _, episodes = envs.step(rng.integers(0, envs.num_actions, size=args.num_envs * envs.num_players))
            for episode in episodes:
                returns.append(episode["returns"].mean())
                collective.append(episode["collective_return"])
                lengths.append(episode["length"])
    finally:
        envs.close()
    returns = np.array(returns[: args.episodes])
    print(f"{args.substrate}, uniformly random actions, {len(returns)} episodes (mean length {np.mean(lengths):.0f}):")
    print(
        f"return/player {returns.mean():.2f} ± {returns.std(ddof=1) / np.sqrt(len(returns)):.2f} (s.e.), "
        f"collective return {np.mean(collective[: args.episodes]):.2f}"
    )
    if args.output:
        import pandas as pd

        row = {
            "substrate": args.substrate,
            "episodes": len(returns),
            "return_per_player": returns.mean(),
            "standard_error": returns.std(ddof=1) / np.sqrt(len(returns)),
            "collective_return": np.mean(collective[: args.episodes]),
            "mean_length": np.mean(lengths),
            "seed": args.seed,
        }
        table = pd.read_csv(args.output) if os.path.exists(args.output) else pd.DataFrame(columns=list(row))
        table = pd.concat([table[table.substrate != args.substrate], pd.DataFrame([row])]).sort_values("substrate")
        utils.write_atomically(args.output, "w", lambda f: table.to_csv(f, index=False, float_format="%.4f"))
        print(f"written to {args.output}")
