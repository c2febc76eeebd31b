"""Does a BiDist checkpoint's fictitious population phi still depend on what it sees?

    python benchmarks/phi_probe.py runs/<run_name>/checkpoint.pt

Runs theta and phi of a bidist_mappo.py checkpoint on the same observations (uniformly random
play in fresh environments of the checkpoint's substrate) and prints, for each: the mean action
probabilities, the entropy, the std of the log-probabilities across observations (about 0: the
policy ignores its input, the degenerate collapse), its ratio to theta's (bidist_mappo.py's
`distill/phi_logp_ratio`, there measured on the distillation window) and the fraction of torso
units that are never active, and the input dependence (the mutual information between observation
and action, mean_o KL(pi(.|o) || mean_o pi), in nats: 0 for a policy that ignores its input).
"""

import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import utils  # noqa: E402
from bidist_mappo import Actor, mutual_information, to_image  # noqa: E402


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """a bidist_mappo.py checkpoint"""
    num_envs: int = 4
    """environments of random play"""
    steps: int = 200
    """steps of every environment; every player's observation at every step is used"""
    seed: int = 1
    """seed of the environments and of the random actions"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    checkpoint = utils.load_checkpoint(args.checkpoint, flag="checkpoint")
    if checkpoint["algorithm"] != "bidist_mappo":
        raise SystemExit(f"error: {args.checkpoint} is a {checkpoint['algorithm']} checkpoint; it has no phi")
    saved = checkpoint["args"]
    envs = utils.MeltingPotVecEnv(checkpoint["substrate"], args.num_envs, seed=args.seed, downsample=saved["downsample"])
    rng = np.random.default_rng(args.seed)
    rgb, vector = [], []
    try:
        envs.reset()
        for _ in range(args.steps):
            obs, *_ = envs.step(rng.integers(0, envs.num_actions, size=args.num_envs * envs.num_players))
            rgb.append(obs["rgb"])
            vector.append(obs["vector"])
    finally:
        envs.close()
    rows = args.num_envs * envs.num_players
    rgb, vector = torch.tensor(np.stack(rgb)).flatten(0, 1), torch.tensor(np.stack(vector)).flatten(0, 1)
    print(f"{args.checkpoint}: {len(rgb):,} observations of {checkpoint['substrate']}\n")
    print(
        "| network | mean action probabilities | entropy | log-prob std across observations | ratio to theta "
        "| input dependence (nats) | dead torso units |"
    )
    print("|---|---|---|---|---|---|---|")
    theta_std = None
    for name, key in [("theta (trained)", "actor"), ("phi (fictitious)", "phi")]:
        net = Actor(envs, SimpleNamespace(downsample=saved["downsample"], hidden_size=saved["hidden_size"]))
        net.load_state_dict(checkpoint[key])
        with torch.no_grad():
            torso = net.torso(torch.cat([net.cnn(to_image(rgb)), vector], dim=1))
            logits = net.get_action(rgb, vector, net.initial_state(rows, "cpu"), torch.zeros(len(rgb)))[3]
        logp = logits.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        probs = " ".join(f"{p:.2f}" for p in logp.exp().mean(0).tolist())
        logp_std = logp.std(0).mean().item()
        theta_std = theta_std or logp_std
        print(
            f"| {name} | {probs} | {entropy:.2f} | {logp_std:.3f} | {logp_std / theta_std:.2f} "
            f"| {mutual_information(logp).item():.3f} | {(torso.max(0).values == 0).float().mean():.0%} |"
        )
