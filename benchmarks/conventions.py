"""Which convention each population formed in an *_in_the_matrix substrate, and how firmly: the share of
each resource in its players' inventories over self-play episodes. Two populations that favour different
resources clash beside each other (the generalisation gap); shares near 1/K are a soft convention that
strangers break only a little.

    python benchmarks/conventions.py results/pure_coordination_2m/runs/*/population.pt
    python benchmarks/conventions.py results/pure_coordination_2m/runs/mappo__seed1/population.pt --episodes 8

Plays the populations' own networks (any training script's checkpoint or exported population), both
players of the substrate from the same population, as in the study's self-play cross-play cell.
"""

import os
import random
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval_scenarios  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args:
    populations: tyro.conf.Positional[tuple[str, ...]]
    """population files (study.py --results exports) or checkpoints of any training script"""
    episodes: int = 4
    """self-play episodes per population"""
    seed: int = 1
    """seeds the substrate and the policies' sampling (episode i of every population has the same seed)"""
    max_steps: Optional[int] = None
    """stop each episode after this many steps (default: the substrate's own ending)"""


def inventory_shares(inventories):
    """Each resource's share of the inventory, summed over steps and players: (steps, players, K) -> (K,)."""
    total = np.asarray(inventories, dtype=np.float64).sum(axis=(0, 1))
    return total / total.sum() if total.sum() > 0 else np.full(len(total), np.nan)


def self_play_episode(policy, substrate, seed, max_steps=None):
    """One episode with every player from `policy`: (every step's inventories (steps, players, K), per-player return)."""
    import dm_env

    mp = utils.import_meltingpot()
    random.seed(seed)  # Melting Pot's engine draws its seed from `random`
    torch.manual_seed(seed)  # each slot's sampling stream (CheckpointPolicy.initial_state)
    env = mp.substrate.build(substrate, roles=mp.substrate.get_config(substrate).default_player_roles)
    try:
        timestep = env.reset()
        players = len(timestep.observation)
        states = [policy.initial_state() for _ in range(players)]
        inventories, returns = [], np.zeros(players)
        while not timestep.last() and (max_steps is None or len(inventories) < max_steps):
            actions = []
            for i in range(players):
                own = dm_env.TimeStep(timestep.step_type, timestep.reward[i], timestep.discount, timestep.observation[i])
                action, states[i] = policy.step(own, states[i])
                actions.append(action)
            timestep = env.step(actions)
            returns += np.asarray(timestep.reward, dtype=np.float64)
            inventories.append([obs["INVENTORY"] for obs in timestep.observation])
    finally:
        env.close()
    return np.asarray(inventories), returns.mean()


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.episodes < 1:
        raise SystemExit(f"error: --episodes must be at least 1, got {args.episodes}")
    torch.set_num_threads(1)
    tables = {}  # substrate -> rows
    for path in args.populations:
        policy = eval_scenarios.CheckpointPolicy(path, flag="population")
        if "_in_the_matrix" not in policy.substrate:
            raise SystemExit(f"error: {path} plays {policy.substrate}; conventions are read from *_in_the_matrix substrates")
        played = [self_play_episode(policy, policy.substrate, args.seed + i, args.max_steps) for i in range(args.episodes)]
        shares = inventory_shares(np.concatenate([inventories for inventories, _ in played]))
        tables.setdefault(policy.substrate, []).append((path, shares, np.mean([r for _, r in played])))
    for substrate, rows in tables.items():
        k = len(rows[0][1])
        print(
            f"\n{substrate}: inventory share of each resource over {args.episodes} self-play episode(s) "
            f"(1/{k} each = no convention)\n"
        )
        print("| population | " + " | ".join(f"resource {i + 1}" for i in range(k)) + " | favourite | self-play return |")
        print("|" + "---|" * (k + 3))
        for path, shares, mean_return in rows:
            name = os.path.basename(os.path.dirname(path)) or path
            cells = " | ".join(f"{s:.2f}" for s in shares)
            print(f"| {name} | {cells} | {int(np.nanargmax(shares)) + 1} ({shares.max():.2f}) | {mean_return:.2f} |")
