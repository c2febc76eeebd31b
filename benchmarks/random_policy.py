"""Per-player episode return of uniformly random play: the floor a learning curve must clear.

    python benchmarks/random_policy.py --substrate pure_coordination_in_the_matrix__repeated --episodes 64
"""

import os
import sys
from dataclasses import dataclass

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
    print(f"return/player {returns.mean():.2f} ± {returns.std(ddof=1) / np.sqrt(len(returns)):.2f} (s.e.), "
          f"collective return {np.mean(collective[: args.episodes]):.2f}")
