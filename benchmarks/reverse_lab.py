"""Reverse-phase settings side by side on one recorded distillation window, in seconds instead of runs.

    python benchmarks/reverse_lab.py runs/<run_name>/checkpoint.pt \
        --objectives default= "literal=--reverse-trust 0 --reverse-floor 0" "beta3=--reverse-trust 3 --reverse-floor 0"

The checkpoint's theta (any bidist_mappo.py or mappo.py checkpoint) plays every slot of
`--num-envs` environments for `--kd` rollouts of `--num-steps` steps, recorded as bidist_mappo.py
records its distillation window (observations, done flags and theta's logits). Then, for every
entry of `--objectives` (`label=flags`: a name for the table, then bidist_mappo.py flags as one string:
--reverse-trust, --reverse-floor, --eta-r, --kl-cap, --distill-lr, --distill-epochs, ...), a fresh phi, a copy of theta as in
training, goes through `--cycles` forward + reverse phases over that one window with bidist_mappo.py's own
`distill`, and every phase prints bidist_mappo.py's phase diagnostics. The table at the end has, per
entry, what the method asks of a live phi: the log-prob ratio and the input dependence (mutual
information between observation and action) at their minimum over the phases, and the mean KL after
reverse phases against the mean residual after forward phases.

theta does not learn here, so the window stands still: the lab isolates what the distillation
objectives do to phi. Whether a result carries over to training is for bidist_mappo.py runs to show.

The reverse objectives that bidist_mappo.py no longer has (anti-target, mirror, shift, jsd, chosen by
--reverse-objective with --reverse-temperature) run in this lab at commit ebf3ba5, whose bidist_mappo.py
still has all eight (there, an entry is the objective's name followed by flags).
"""

import copy
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import List

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bidist_mappo  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """a bidist_mappo.py or mappo.py checkpoint: its theta records the window"""
    objectives: List[str] = field(default_factory=lambda: ["default=", "literal=--reverse-trust 0 --reverse-floor 0"])
    """one entry per setting, `label=flags`: a name for the table, then bidist_mappo.py flags as one string"""
    kd: int = 10
    """rollouts in the window"""
    num_envs: int = 4
    """environments; every slot of every one is recorded (4 of 2 players: as many sequences as the
    trained slots of bidist_mappo.py's 8 environments at p = 0.5)"""
    num_steps: int = 128
    """steps per rollout"""
    cycles: int = 4
    """forward + reverse phase pairs per objective"""
    seed: int = 1
    """seed of the environments, theta's actions and phi's minibatches"""


@torch.no_grad()
def record_window(actor, envs, args):
    """kd rollouts of theta in every slot, as bidist_mappo.py's window: (rgb, vector, done, logits)."""
    rows = envs.num_envs * envs.num_players
    obs, done, state, window = envs.reset(), torch.zeros(rows), actor.initial_state(rows, "cpu"), []
    for _ in range(args.kd):
        rollout = []
        for _ in range(args.num_steps):
            rgb, vector = torch.tensor(obs["rgb"]), torch.tensor(obs["vector"])
            action, _, _, logits, state = actor.get_action(rgb, vector, state, done)
            rollout.append((rgb, vector, done, logits))
            obs, _, done_np, _ = envs.step(action.numpy())
            done = torch.tensor(done_np, dtype=torch.float32)
        window.append(tuple(torch.stack(x) for x in zip(*rollout)))
    return window


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not all("=" in spec for spec in args.objectives):
        raise SystemExit(
            'error: each --objectives entry is label=flags, e.g. "literal=--reverse-trust 0 --reverse-floor 0" '
            "(objectives chosen by name run in this lab at commit ebf3ba5)"
        )
    labels = [spec.partition("=")[0] for spec in args.objectives]
    settings = [tyro.cli(bidist_mappo.Args, args=shlex.split(spec.partition("=")[2])) for spec in args.objectives]
    torch.set_num_threads(1)
    checkpoint = utils.load_checkpoint(args.checkpoint, flag="checkpoint")
    saved = checkpoint["args"]
    torch.manual_seed(args.seed)
    envs = utils.MeltingPotVecEnv(
        checkpoint["substrate"], args.num_envs, seed=args.seed, num_workers=1, downsample=saved["downsample"]
    )
    shape = SimpleNamespace(downsample=saved["downsample"], hidden_size=saved["hidden_size"])
    try:
        envs.reset()
        theta = bidist_mappo.Actor(envs, shape)
        theta.load_state_dict(checkpoint["actor"])
        start = time.time()
        window = record_window(theta, envs, args)
    finally:
        envs.close()
    sequences = args.num_envs * envs.num_players
    print(
        f"{args.checkpoint}: window of {args.kd} x {args.num_steps} steps x {sequences} slots of "
        f"{checkpoint['substrate']} recorded in {time.time() - start:.0f} s\n"
    )

    rows = []
    for spec, setting in zip(labels, settings):
        torch.manual_seed(args.seed)
        phi = copy.deepcopy(theta)
        phi_optimizer = torch.optim.Adam(phi.parameters(), lr=setting.distill_lr, eps=1e-5)
        per_minibatch = setting.num_envs // setting.num_minibatches * envs.num_players  # as in training
        print(spec)
        phases = []
        for cycle in range(args.cycles):
            for direction in ["forward", "reverse"]:
                start = time.time()
                if direction == "forward" and setting.reset_phi:  # as bidist_mappo.py does
                    bidist_mappo.restart_from(phi, phi_optimizer, theta)
                bidist_mappo.distill(phi, phi_optimizer, window, direction, per_minibatch, setting)
                phase = bidist_mappo.distill_diagnostics(phi, window, per_minibatch)
                phases.append((direction, phase))
                print(
                    f"  {direction:7s} {cycle + 1}: KL(hist || phi) {phase['kl']:.3f} | "
                    f"{bidist_mappo.describe_phase(phase)} | {time.time() - start:.1f} s",
                    flush=True,
                )
        kl = {d: np.mean([p["kl"] for direction, p in phases if direction == d]) for d in ["forward", "reverse"]}
        rows.append(
            (
                spec,
                min(p["phi_logp_ratio"] for _, p in phases),
                min(p["phi_input_dependence"] / p["theta_input_dependence"] for _, p in phases),
                kl["reverse"],
                kl["forward"],
            )
        )
    print(
        "\n| setting | logp ratio, minimum | input dependence / theta's, minimum | KL after reverse "
        "| KL after forward | reverse - forward |"
    )
    print("|---|---|---|---|---|---|")
    for spec, ratio, dependence, kl_reverse, kl_forward in rows:
        print(
            f"| `{spec}` | {ratio:.2f} | {dependence:.2f} | {kl_reverse:.3f} | {kl_forward:.3f} "
            f"| {kl_reverse - kl_forward:.3f} |"
        )
