# Bidirectional Distillation (BiDist) on MAPPO, Melting Pot, CleanRL style. Docs and results: docs/algorithms/bidist.md
import copy
import math
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

import utils

# this file's name: checkpoints name the script that wrote them, so a copy under a new name names the copy
SCRIPT = os.path.basename(__file__)[: -len(".py")]


@dataclass
class Args:
    exp_name: str = SCRIPT
    """the name of this experiment"""
    seed: int = 1
    """seed of Python's `random` (Melting Pot's engine draws from it), numpy and torch, here and in every env worker"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, train on CUDA when it is available"""
    torch_threads: Optional[int] = None
    """torch's CPU threads in this process (default: the cores the environment workers leave, at least 1)"""
    track: bool = False
    """if toggled, sync the TensorBoard logs to Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "bidist-meltingpot"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    save_model: bool = True
    """if toggled, write a checkpoint when training ends (runs/{run_name}/checkpoint.pt)"""
    checkpoint_every: int = 20
    """write the checkpoint every N iterations as well (0: only at the end)"""
    resume: Optional[str] = None
    """path of a checkpoint to continue from; its run's flags become the defaults"""
    snapshot_every: int = 50
    """save the actor's weights alone every N iterations to runs/{run_name}/snapshots/ (0: never), for the
    study's policy-space picture"""

    # Environment settings
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    num_envs: int = 8
    """the number of parallel substrate instances"""
    num_workers: Optional[int] = None
    """the number of environment worker processes (default: one per core, at most num_envs)"""
    downsample: bool = True
    """average RGB over 8x8 sprites in the workers (88x88 -> 11x11); --no-downsample keeps full resolution"""
    max_episode_steps: Optional[int] = None
    """end episodes after this many steps (default: the substrate's own episode length)"""
    prepare_resets: bool = True
    """workers build the next episode's environment while the learner works (--no-prepare-resets saves the
    memory of one more environment per slot: docs/throughput.md)"""

    # Algorithm specific arguments
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment (each step is one action for every player)"""
    learning_rate: float = 5e-4
    """the learning rate of the optimizer"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches (split over environments, so that sequences stay whole)"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""
    hidden_size: int = 128
    """width of the torso, the LSTM and the critic"""

    # BiDist arguments
    p: float = 0.5
    """probability that a player slot is played by the fictitious population phi for one rollout"""
    kd: int = 10
    """iterations between distillation phases; the distillation window holds the last kd rollouts"""
    eta_f: float = 1.0
    """forward distillation coefficient: minimise eta_f * KL(pi_hist || pi_phi)"""
    eta_r: float = 1.0
    """reverse distillation coefficient: maximise eta_r * min(KL(pi_hist || pi_phi), kl_cap)"""
    kl_cap: float = 1.0
    """per-sample cap (nats) on the reverse phase's KL; a sample past it gives no gradient"""
    reverse_trust: float = 1.0
    """beta: the reverse phase also minimises beta * KL(pi_phi_start || pi_phi), a trust region around phi as it
    was at the phase start (0 with --reverse-floor 0: the literal capped KL alone)"""
    reverse_floor: float = 2.0
    """lambda: the reverse phase also maximises lambda * min(I_phi / I_hist, 1), phi's input dependence as a share
    of the window's (0 with --reverse-trust 0: the literal capped KL alone)"""
    distill_epochs: int = 4
    """passes over the window in each distillation phase"""
    distill_lr: float = 1e-3
    """learning rate of phi's Adam optimizer (constant)"""
    phi_init: Literal["theta", "random"] = "theta"
    """phi's initial weights: a copy of theta's, or a random initialisation of its own"""
    reset_phi: bool = True
    """copy theta into phi (and restart phi's optimizer) before each forward phase, so that a reverse phase
    cannot leave phi dead for good; --no-reset-phi keeps phi's own weights from phase to phase"""
    no_forward: bool = False
    """ablation: skip the forward phases (phi only moves away from the historical policies)"""
    no_reverse: bool = False
    """ablation: skip the reverse phases (phi only imitates the historical policies)"""

    # to be filled in runtime
    num_players: int = 0
    """the number of players of the substrate (computed in runtime)"""
    batch_size: int = 0
    """the batch size: player transitions per iteration (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def check_args(args):
    """One-line errors for impossible settings, before any process starts."""
    positive = [
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "total_timesteps",
        "hidden_size",
        "kd",
        "distill_epochs",
    ]
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_envs % args.num_minibatches:
        raise SystemExit(f"error: --num-envs {args.num_envs} must be a multiple of --num-minibatches {args.num_minibatches}")
    if args.total_timesteps < args.num_envs * args.num_steps:
        raise SystemExit(
            f"error: --total-timesteps {args.total_timesteps} is less than one rollout "
            f"(--num-envs x --num-steps = {args.num_envs * args.num_steps})"
        )
    for name in ["num_workers", "max_episode_steps", "torch_threads"]:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ["checkpoint_every", "snapshot_every"]:
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.p <= 1.0:
        raise SystemExit(f"error: --p is a probability and must be in [0, 1], got {args.p}")
    for name in ["eta_f", "eta_r", "reverse_trust", "reverse_floor"]:
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ["kl_cap", "distill_lr"]:
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    utils.check_substrate(args.substrate)


def check_removed_flags(saved, path, args):
    """Checkpoints keep the flags they were trained with (`saved`), some of which this script no longer has.
    A run trained with an adaptive --p-schedule (up to commit bdc1fb0) does not resume: a one-line error.
    Up to commit ebf3ba5, the reverse loss was named by --reverse-objective: the four objectives that are
    today's loss with some coefficients at 0 resume with those at 0; the four others, a one-line error."""
    schedule = saved.get("p_schedule", "fixed")
    if schedule != "fixed":
        raise SystemExit(
            f"error: --resume {path} was trained with --p-schedule {schedule}, which this script no longer has "
            f"(commit bdc1fb0 does; docs/algorithms/bidist.md#an-adaptive-p says why); only a fixed --p resumes"
        )
    objective = saved.get("reverse_objective", "trust-floor")
    zero = {
        "trust-floor": [],
        "trust-region": ["reverse_floor"],
        "mi-floor": ["reverse_trust"],
        "capped-kl": ["reverse_trust", "reverse_floor"],
    }
    if objective not in zero:
        raise SystemExit(
            f"error: --resume {path} was trained with --reverse-objective {objective}, which this script no "
            f"longer has (commit ebf3ba5 does); it resumes capped-kl, trust-region, mi-floor and trust-floor"
        )
    if any(getattr(args, name) for name in zero[objective]):
        flags = " ".join(f"--{name.replace('_', '-')} 0" for name in zero[objective])
        raise SystemExit(
            f"error: --resume {path} was trained with --reverse-objective {objective}; resume it with {flags}, "
            f"today's form of that loss"
        )


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def conv_torso(frame_shape, sprite, out_size):
    """Conv net over an RGB frame. On downsampled frames (sprite=1) the first layer embeds each
    cell; on full-resolution frames (sprite=8) it is the 8x8/stride-8 layer of Melting Pot's
    reference agents, so both see one feature vector per grid cell. The 3x3 layer has stride
    2: it still covers every cell and makes the PPO update cheaper than stride 1 (docs/throughput.md,
    `benchmarks/profile_parts.py --parts stride`)."""
    h, w = (frame_shape[0] // sprite + 1) // 2, (frame_shape[1] // sprite + 1) // 2
    return nn.Sequential(
        layer_init(nn.Conv2d(3, 16, kernel_size=sprite, stride=sprite)),
        nn.ReLU(),
        layer_init(nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        layer_init(nn.Linear(32 * h * w, out_size)),
        nn.ReLU(),
    )


def to_image(frames):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 255.0


class Actor(nn.Module):
    """theta: one recurrent policy shared by every player. It sees only what Melting Pot permits
    focal players (own RGB and the permitted vector keys), never WORLD.RGB nor its slot index,
    because at evaluation a focal player can sit in any slot."""

    def __init__(self, envs, args):
        super().__init__()
        sprite = 1 if args.downsample else utils.SPRITE_SIZE
        self.cnn = conv_torso(envs.rgb_shape, sprite, args.hidden_size)
        self.torso = nn.Sequential(layer_init(nn.Linear(args.hidden_size + envs.vector_dim, args.hidden_size)), nn.ReLU())
        self.lstm = nn.LSTM(args.hidden_size, args.hidden_size)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.policy = layer_init(nn.Linear(args.hidden_size, envs.num_actions), std=0.01)

    def initial_state(self, batch, device):
        return tuple(torch.zeros(1, batch, self.lstm.hidden_size, device=device) for _ in range(2))

    def get_states(self, rgb, vector, lstm_state, done):
        """Unrolls the LSTM over time-major rows (T * B), zeroing the state of a row where its
        episode starts (done=1). nn.LSTM runs once per stretch of steps without any episode
        start, which is the same computation as CleanRL's step-by-step loop, only faster."""
        hidden = self.torso(torch.cat([self.cnn(to_image(rgb)), vector], dim=1))
        batch = lstm_state[0].shape[1]
        hidden = hidden.reshape(-1, batch, self.lstm.input_size)
        done = done.reshape(-1, batch)
        starts = torch.nonzero(done.any(dim=1)).flatten().tolist()
        bounds = sorted({0, *starts, len(done)})
        h, c = lstm_state
        outputs = []
        for begin, end in zip(bounds[:-1], bounds[1:]):
            keep = (1.0 - done[begin]).view(1, -1, 1)
            out, (h, c) = self.lstm(hidden[begin:end], (keep * h, keep * c))
            outputs.append(out)
        return torch.cat(outputs).flatten(0, 1), (h, c)

    def get_action(self, rgb, vector, lstm_state, done, action=None):
        hidden, lstm_state = self.get_states(rgb, vector, lstm_state, done)
        logits = self.policy(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), logits, lstm_state


class Critic(nn.Module):
    """psi: the centralised critic, for training only. It sees the global view WORLD.RGB, the
    player's own observation and a one-hot player index."""

    def __init__(self, envs, args):
        super().__init__()
        sprite = 1 if args.downsample else utils.SPRITE_SIZE
        self.num_players = envs.num_players
        self.world_cnn = conv_torso(envs.world_shape, sprite, args.hidden_size)
        self.obs_cnn = conv_torso(envs.rgb_shape, sprite, args.hidden_size)
        self.head = nn.Sequential(
            layer_init(nn.Linear(2 * args.hidden_size + envs.vector_dim + envs.num_players, args.hidden_size)),
            nn.ReLU(),
            layer_init(nn.Linear(args.hidden_size, 1), std=1.0),
        )

    def get_value(self, world, rgb, vector):
        """world: (B, H, W, 3), one per environment; rgb, vector: (B * num_players, ...), rows
        ordered env-major as the environment returns them. Returns normalised values."""
        world_features = self.world_cnn(to_image(world)).repeat_interleave(self.num_players, dim=0)
        player = torch.arange(len(rgb), device=rgb.device) % self.num_players
        one_hot = nn.functional.one_hot(player, self.num_players).float()
        x = torch.cat([world_features, self.obs_cnn(to_image(rgb)), vector, one_hot], dim=1)
        return self.head(x).flatten()


class ValueNorm(nn.Module):
    """Running mean and variance of the value targets; the critic predicts normalised values.

    MAPPO's value normalisation (Yu et al., 2022), with the exact running moments of every
    target seen so far (Chan et al.'s parallel update) in place of MAPPO's debiased EMA
    (beta 0.99999, which is nearly the same thing).
    """

    def __init__(self, epsilon: float = 1e-5):
        super().__init__()
        self.epsilon = epsilon
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()  # detached: the moments carry no gradient
        batch_mean, batch_var, batch_count = x.mean(), x.var(unbiased=False), x.numel()
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean.copy_(self.mean + delta * batch_count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / torch.sqrt(self.var + self.epsilon)  # float64 0-dim statistics keep x's dtype

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sqrt(self.var + self.epsilon) + self.mean


@torch.no_grad()
def rollout_values(critic, world, rgb, vector, calls):
    """The critic's normalised values of a whole rollout, (num_steps, rows), in `calls` batched calls over
    its steps. The critic is feed-forward and does not change during the rollout, so this is what one call
    per step while acting gives (to float rounding), at a fraction of the cost."""
    return torch.cat(
        [
            critic.get_value(w.flatten(0, 1), r.flatten(0, 1), v.flatten(0, 1)).view(len(w), -1)
            for w, r, v in zip(world.chunk(calls), rgb.chunk(calls), vector.chunk(calls))
        ]
    )


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """Generalised advantage estimation over time-major (T, B) tensors. dones[t] = 1 when the
    observation at step t starts a new episode (CleanRL's convention)."""
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    num_steps = len(rewards)
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def ppo_loss(newlogprob, entropy, newvalue, logprob, advantages, value, target, trained, args):
    """CleanRL's PPO loss for one minibatch: clipped surrogate, clipped value loss (values and
    targets in ValueNorm's normalised units) and entropy bonus. Returns the loss and its parts.
    BiDist: only the samples of trained slots (`trained`, a boolean mask) enter any term."""
    newlogprob, entropy, newvalue, logprob, advantages, value, target = (
        x[trained] for x in (newlogprob, entropy, newvalue, logprob, advantages, value, target)
    )
    logratio = newlogprob - logprob
    ratio = logratio.exp()
    with torch.no_grad():
        # calculate approx_kl http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

    if args.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    if args.clip_vloss:
        v_loss_unclipped = (newvalue - target) ** 2
        v_clipped = value + torch.clamp(newvalue - value, -args.clip_coef, args.clip_coef)
        v_loss_clipped = (v_clipped - target) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = 0.5 * ((newvalue - target) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    return loss, {
        "pg_loss": pg_loss,
        "v_loss": v_loss,
        "entropy": entropy_loss,
        "old_approx_kl": old_approx_kl,
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }


# ALGO LOGIC: BiDist, in the order of the method: mixed play, the distillation window, forward distillation,
# reverse distillation, diagnostics.
def sample_mask(num_envs, num_players, p):
    """The mixed-play mask of one rollout, (num_envs, num_players): True where the fictitious
    population phi plays the slot, drawn Bernoulli(p) per slot; where every slot of an environment
    drew phi, one slot chosen uniformly goes back to theta, so each environment keeps a trained slot."""
    fictitious = np.random.random((num_envs, num_players)) < p
    full = np.flatnonzero(fictitious.all(axis=1))
    fictitious[full, np.random.randint(num_players, size=len(full))] = False
    return fictitious


def rollout_signal(rewards, fictitious):
    """The trained slots' mean reward per step in one rollout (`rewards`: (num_steps, num_envs, num_players), a
    numpy array; `fictitious`: the mask), in the environments where phi plays a slot and in those where it does
    not: (beside_phi, beside_theta), nan where the rollout had no such environment. Logged as
    mixed/reward_beside_phi and mixed/reward_beside_theta: how hard a partner phi is, next to theta itself."""
    with_phi = fictitious.any(axis=1, keepdims=True)  # (num_envs, 1)
    trained = ~fictitious
    beside_phi, beside_theta = trained & with_phi, trained & ~with_phi
    return tuple(float(rewards[:, mask].mean()) if mask.any() else math.nan for mask in (beside_phi, beside_theta))


def mixed_action(actor, phi, fictitious, rgb, vector, theta_state, phi_state, done):
    """One step of mixed play. theta acts on every row (its log-probs and logits are recorded for
    PPO and for the distillation window); phi's actions replace theta's on the fictitious rows.
    phi is not run at all when no row is fictitious."""
    action, logprob, _, logits, theta_state = actor.get_action(rgb, vector, theta_state, done)
    if fictitious.any():
        phi_action, _, _, _, phi_state = phi.get_action(rgb, vector, phi_state, done)
        action = torch.where(fictitious, phi_action, action)
    return action, logprob, logits, theta_state, phi_state


def scheduled_phase(iteration, args):
    """The distillation phase that ends this iteration: "forward", "reverse" or None. Phases come
    every kd iterations, when the window holds kd new rollouts, and alternate, forward first (kd: forward,
    2kd: reverse, 3kd: forward, ...); --no-forward / --no-reverse skip the phases of that direction, and phi
    stays as it is then."""
    if iteration % args.kd:
        return None
    direction = "forward" if (iteration // args.kd) % 2 == 1 else "reverse"
    skipped = args.no_forward if direction == "forward" else args.no_reverse
    return None if skipped else direction


def unroll_phi(phi, rgb, vector, done, seqs):
    """phi's logits over the stored sequences `seqs` of the window, unrolled from a zero state with the
    stored done flags resetting it."""
    state = phi.initial_state(len(seqs), rgb.device)
    return phi.get_action(rgb[:, seqs].flatten(0, 1), vector[:, seqs].flatten(0, 1), state, done[:, seqs].flatten())[3]


def kl_divergence(hist_logits, logits):
    """KL(pi_hist || pi) of each row of two (..., num_actions) logit tensors."""
    hist_logp, logp = hist_logits.log_softmax(-1), logits.log_softmax(-1)
    return (hist_logp.exp() * (hist_logp - logp)).sum(-1)


def forward_distillation_loss(hist_logits, phi_logits, eta_f):
    """Forward distillation ("implicit self-play"): phi imitates the historical policies of theta
    recorded in the window, minimising eta_f * mean KL(pi_hist || pi_phi)."""
    return eta_f * kl_divergence(hist_logits, phi_logits).mean()


def restart_from(phi, phi_optimizer, actor):
    """--reset-phi (our choice): before each forward phase phi takes theta's weights and its optimizer
    forgets its moments, so the forward phase imitates the window from features that work, whatever the
    reverse phase before it did to phi."""
    phi.load_state_dict(actor.state_dict())
    phi_optimizer.state.clear()


def mutual_information(logits):
    """How much a policy's action depends on its observation, in nats, over the rows of `logits` (one row per
    observation): I(O; A) = mean_o KL(pi(.|o) || mean_o pi(.|o)). 0 for an input-independent policy; unlike
    the spread of log-probabilities, probable actions weigh more than improbable ones."""
    logp = logits.log_softmax(-1)
    marginal = torch.logsumexp(logp, dim=0, keepdim=True) - math.log(len(logp))
    return (logp.exp() * (logp - marginal)).sum(-1).mean()


def input_dependence_share(hist_logits, phi_logits):
    """phi's input dependence as a share of the historical policies', up to all of it: min(I_phi / I_hist, 1),
    I the mutual information between observation and action over all rows of the minibatch. A window depending
    on its input by less than 0.01 nats counts as 0.01. Differentiable in phi; the window's I is a constant."""
    share = mutual_information(phi_logits.flatten(0, -2)) / mutual_information(hist_logits.flatten(0, -2)).detach().clamp(
        min=0.01
    )
    return torch.clamp(share, max=1.0)


def reverse_distillation_loss(hist_logits, phi_logits, start_logits, eta_r, kl_cap, beta, floor):
    """Reverse distillation ("non-self-play"): phi leaves the historical policy space and stays a policy.

        - eta_r * mean min(KL(pi_hist || pi_phi), kl_cap)   the capped push away from the window
        + beta  * mean KL(pi_phi_start || pi_phi)            a trust region around phi at the phase start
        - floor * min(I_phi / I_hist, 1)                     phi paid to depend on its input as the window does

    beta = floor = 0 is the literal reading of the method (--reverse-trust 0 --reverse-floor 0): the capped push
    alone, whose optimum ignores the observation. The trust region bounds the push around the forward-distilled,
    input-dependent phi the phase starts from (phi_start, whose logits are `start_logits`; unused at beta = 0),
    and the floor pays phi for keeping the window's input dependence where the trust region alone lets it go.
    A sample whose KL is past the cap gives no gradient."""
    loss = -eta_r * torch.clamp(kl_divergence(hist_logits, phi_logits), max=kl_cap).mean()
    if beta:
        loss = loss + beta * kl_divergence(start_logits, phi_logits).mean()
    if floor:
        loss = loss - floor * input_dependence_share(hist_logits, phi_logits)
    return loss


def distill(phi, phi_optimizer, window, direction, sequences_per_minibatch, args):
    """One distillation phase of phi over the window, forward or reverse: distill_epochs passes over shuffled
    minibatches of whole stored sequences (one trained slot's rollout each)."""
    rgb, vector, done, hist_logits = (torch.cat(x, dim=1) for x in zip(*window))  # (num_steps, sequences, ...)
    phi_start = None
    if direction == "reverse" and args.reverse_trust:  # the trust region's anchor: phi frozen at the phase start
        phi_start = copy.deepcopy(phi)
        phi_start.lstm.flatten_parameters()  # on CUDA, cuDNN wants a copied LSTM's weights in one chunk again
    for epoch in range(args.distill_epochs):
        for seqs in torch.randperm(rgb.shape[1], device=rgb.device).split(sequences_per_minibatch):
            hist, logits = hist_logits[:, seqs].flatten(0, 1), unroll_phi(phi, rgb, vector, done, seqs)
            if direction == "forward":
                loss = forward_distillation_loss(hist, logits, args.eta_f)
            else:
                with torch.no_grad():
                    start_logits = unroll_phi(phi_start, rgb, vector, done, seqs) if phi_start else None
                loss = reverse_distillation_loss(
                    hist, logits, start_logits, args.eta_r, args.kl_cap, args.reverse_trust, args.reverse_floor
                )
            phi_optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(phi.parameters(), args.max_grad_norm)
            phi_optimizer.step()


@torch.no_grad()
def distill_diagnostics(phi, window, sequences_per_minibatch):
    """How phi stands against the window: mean KL(pi_hist || pi_phi), the entropies of phi and of the
    recorded theta policies, how much each one's log-probabilities vary across observations (std over
    observations, mean over actions) and each one's input dependence (mutual_information). phi_logp_ratio
    near 0 means phi ignores its input: the degenerate collapse that its entropy alone does not show.

    Spreads and input dependences are a policy's: each rollout of the window was acted by one theta, so
    they are taken over one rollout's observations and averaged over the rollouts (phi's over the same
    rows). Pooled over the whole window, theta's would also count its change from one iteration to the
    next, which no function of the observation reproduces; phi_logp_ratio_pooled is that reading."""
    rgb, vector, done, hist_logits = (torch.cat(x, dim=1) for x in zip(*window))
    seqs = torch.arange(rgb.shape[1], device=rgb.device).split(sequences_per_minibatch)
    phi_logits = torch.cat([unroll_phi(phi, rgb, vector, done, s).view(len(rgb), len(s), -1) for s in seqs], dim=1)
    phi_logp = phi_logits.log_softmax(-1)
    theta_logp = hist_logits.log_softmax(-1)  # (num_steps, sequences, num_actions), phi_logp's rows
    rollouts = torch.arange(rgb.shape[1], device=rgb.device).split([rollout[0].shape[1] for rollout in window])

    def per_policy(stat, logp):
        return sum(stat(logp[:, r].flatten(0, 1)).item() for r in rollouts) / len(rollouts)

    def logp_std(logp):
        return logp.std(dim=0).mean()

    phi_std, theta_std = per_policy(logp_std, phi_logp), per_policy(logp_std, theta_logp)
    pooled = logp_std(phi_logp.flatten(0, 1)).item() / max(logp_std(theta_logp.flatten(0, 1)).item(), 1e-8)
    return {
        "kl": kl_divergence(theta_logp, phi_logp).mean().item(),
        "phi_input_dependence": per_policy(mutual_information, phi_logp),
        "theta_input_dependence": per_policy(mutual_information, theta_logp),
        "phi_entropy": Categorical(logits=phi_logp).entropy().mean().item(),
        "theta_entropy": Categorical(logits=theta_logp).entropy().mean().item(),
        "phi_logp_std": phi_std,
        "theta_logp_std": theta_std,
        "phi_logp_ratio": phi_std / max(theta_std, 1e-8),
        "phi_logp_ratio_pooled": pooled,
    }


def describe_phase(phase):
    """The diagnostics of distill_diagnostics for a progress line (everything but the KL)."""
    return (
        f"entropy phi {phase['phi_entropy']:.2f} theta {phase['theta_entropy']:.2f} | logp std phi "
        f"{phase['phi_logp_std']:.2f} theta {phase['theta_logp_std']:.2f} (ratio {phase['phi_logp_ratio']:.2f}) | "
        f"input dependence phi {phase['phi_input_dependence']:.3f} theta {phase['theta_input_dependence']:.3f}"
    )


def format_eta(seconds):
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


if __name__ == "__main__":
    utils.quiet_interrupt()  # a Ctrl-C before training starts: one line, nothing saved
    args = utils.parse_args(Args)
    check_args(args)
    checkpoint = utils.load_checkpoint(args.resume) if args.resume else None
    if checkpoint:
        utils.check_checkpoint(
            checkpoint,
            args.resume,
            SCRIPT,
            args,
            must_match=("substrate", "downsample", "hidden_size", "num_envs", "num_steps", "kd"),
        )
        check_removed_flags(checkpoint["args"], args.resume, args)
        run_name = checkpoint["run_name"]
    else:
        run_name = f"{args.substrate}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = f"runs/{run_name}"
    checkpoint_path = f"{run_dir}/checkpoint.pt"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads or utils.default_torch_threads(args.num_envs, args.num_workers))
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup: a resumed run reseeds its workers, so it does not replay the episodes it saw
    start_iteration = checkpoint["iteration"] + 1 if checkpoint else 1
    print(f"starting {args.num_envs} environments of {args.substrate}", flush=True)
    envs = utils.MeltingPotVecEnv(
        args.substrate,
        args.num_envs,
        seed=args.seed + start_iteration - 1,
        num_workers=args.num_workers,
        downsample=args.downsample,
        max_episode_steps=args.max_episode_steps,
    )
    next_obs = envs.reset()
    args.num_players = envs.num_players
    num_rows = args.num_envs * args.num_players  # one row per player of every environment
    args.batch_size = num_rows * args.num_steps
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // (args.num_envs * args.num_steps)

    actor = Actor(envs, args).to(device)
    critic = Critic(envs, args).to(device)
    value_norm = ValueNorm().to(device)
    optimizer = optim.Adam([*actor.parameters(), *critic.parameters()], lr=args.learning_rate, eps=1e-5)
    phi = Actor(envs, args).to(device)  # the fictitious population: learns only by distillation
    if args.phi_init == "theta":
        phi.load_state_dict(actor.state_dict())
    phi_optimizer = optim.Adam(phi.parameters(), lr=args.distill_lr, eps=1e-5)
    global_step, phases_run, last_phase = 0, 0, None  # last_phase: direction of phi's latest phase
    if checkpoint:
        actor.load_state_dict(checkpoint["actor"])
        critic.load_state_dict(checkpoint["critic"])
        value_norm.load_state_dict(checkpoint["value_norm"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        phi.load_state_dict(checkpoint["phi"])
        phi_optimizer.load_state_dict(checkpoint["phi_optimizer"])
        phases_run, last_phase = checkpoint["phases_run"], checkpoint.get("last_phase")
        utils.set_rng_state(checkpoint["rng"])
        global_step = checkpoint["global_step"]

    if args.track:
        try:
            import wandb
        except ImportError:
            raise SystemExit("error: --track needs wandb: .venv/bin/pip install wandb") from None
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
            resume="allow",
            id=run_name,
        )
    writer = SummaryWriter(run_dir, purge_step=global_step + 1 if checkpoint else None)  # drop logs past the checkpoint
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )
    print(
        f"{run_name}: {args.substrate}, {args.num_players} players x {args.num_envs} envs, "
        f"{args.num_iterations} iterations of {args.num_envs * args.num_steps} env steps, on {device}"
    )

    def state(iteration):
        """What a checkpoint holds, as of the end of `iteration`."""
        return {
            "algorithm": SCRIPT,
            "substrate": args.substrate,
            "args": asdict(args),
            "run_name": run_name,
            "iteration": iteration,
            "global_step": global_step,
            "actor": actor.state_dict(),
            "critic": critic.state_dict(),
            "value_norm": value_norm.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": utils.rng_state(),
            "phi": phi.state_dict(),
            "phi_optimizer": phi_optimizer.state_dict(),
            "phases_run": phases_run,
            "last_phase": last_phase,
            "window": list(window),
        }

    # ALGO Logic: Storage setup, time-major, one column per player row
    obs_rgb = torch.zeros((args.num_steps, num_rows) + envs.rgb_shape, dtype=torch.uint8).to(device)
    obs_vector = torch.zeros((args.num_steps, num_rows, envs.vector_dim)).to(device)
    obs_world = torch.zeros((args.num_steps, args.num_envs) + envs.world_shape, dtype=torch.uint8).to(device)
    actions = torch.zeros((args.num_steps, num_rows), dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, num_rows)).to(device)
    rewards = torch.zeros((args.num_steps, num_rows)).to(device)
    dones = torch.zeros((args.num_steps, num_rows)).to(device)
    theta_logits = torch.zeros((args.num_steps, num_rows, envs.num_actions)).to(device)
    # the distillation window: (rgb, vector, dones, theta logits) of the trained slots of the last kd
    # rollouts, saved in checkpoints so that a resume loses nothing
    window = deque(
        [tuple(x.to(device) for x in rollout) for rollout in checkpoint["window"]] if checkpoint else [], maxlen=args.kd
    )
    sequences_per_minibatch = args.num_envs // args.num_minibatches * args.num_players

    # TRY NOT TO MODIFY: start the game
    start_time, start_step, last_print = time.time(), global_step, 0.0
    recent_returns = deque(maxlen=20)  # per-player returns of the last episodes, for the progress line: trained slots'
    recent_all_returns = deque(maxlen=20)  # and every slot's
    split_reward = np.zeros((args.num_envs, 2))  # reward of the running episodes: trained slots, fictitious slots
    split_steps = np.zeros((args.num_envs, 2))  # and their slot-steps
    next_rgb = torch.tensor(next_obs["rgb"]).to(device)
    next_vector = torch.tensor(next_obs["vector"]).to(device)
    next_world = torch.tensor(next_obs["world"]).to(device)
    next_done = torch.zeros(num_rows).to(device)
    next_lstm_state = actor.initial_state(num_rows, device)
    phi_lstm_state = phi.initial_state(num_rows, device)
    fictitious = torch.zeros(num_rows, dtype=torch.bool).to(device)
    timer = utils.TimeShares(device)  # the shares of wall time in acting, env stepping, the update, ...
    try:
        for iteration in range(start_iteration, args.num_iterations + 1):
            # what a Ctrl-C during this iteration saves: the state before it, never a half-done update
            # (the window's rollouts are never changed in place, so the copy shares them)
            completed = copy.deepcopy(state(iteration - 1), memo={id(x): x for rollout in window for x in rollout})
            # ALGO LOGIC: mixed play. Draw the slots phi plays in this rollout; a slot whose
            # controller changed starts from a zero recurrent state (our choice)
            new_fictitious = torch.tensor(sample_mask(args.num_envs, args.num_players, args.p).ravel()).to(device)
            keep = (new_fictitious == fictitious).float().view(1, -1, 1)
            next_lstm_state = (keep * next_lstm_state[0], keep * next_lstm_state[1])
            phi_lstm_state = (keep * phi_lstm_state[0], keep * phi_lstm_state[1])
            fictitious, trained = new_fictitious, ~new_fictitious
            fictitious_np = fictitious.cpu().numpy().reshape(args.num_envs, args.num_players)
            initial_lstm_state = (next_lstm_state[0].clone(), next_lstm_state[1].clone())
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate

            for step in range(0, args.num_steps):
                timer.mark("other")
                global_step += args.num_envs
                obs_rgb[step], obs_vector[step], obs_world[step] = next_rgb, next_vector, next_world
                dones[step] = next_done

                # ALGO LOGIC: action logic
                with torch.no_grad():
                    action, logprob, logits, next_lstm_state, phi_lstm_state = mixed_action(
                        actor, phi, fictitious, next_rgb, next_vector, next_lstm_state, phi_lstm_state, next_done
                    )
                actions[step] = action
                logprobs[step] = logprob
                theta_logits[step] = logits
                timer.mark("act")

                # TRY NOT TO MODIFY: execute the game and log data.
                next_obs, reward, next_done_np, episodes = envs.step(action.cpu().numpy())
                timer.mark("env")
                rewards[step] = torch.tensor(reward).to(device)
                next_rgb = torch.tensor(next_obs["rgb"]).to(device)
                next_vector = torch.tensor(next_obs["vector"]).to(device)
                next_world = torch.tensor(next_obs["world"]).to(device)
                next_done = torch.tensor(next_done_np, dtype=torch.float32).to(device)
                reward = reward.reshape(args.num_envs, args.num_players)
                split_reward += np.stack([(reward * ~fictitious_np).sum(1), (reward * fictitious_np).sum(1)], axis=1)
                split_steps += np.stack([(~fictitious_np).sum(1), fictitious_np.sum(1)], axis=1)
                for episode in episodes:
                    # the headline is the trained population's return. A slot's controller can change
                    # between rollouts within one episode: each population's reward per slot-step, scaled
                    # to the episode's length (every environment always has a trained slot)
                    env = episode["env"]
                    trained_return, fictitious_return = split_reward[env] / np.maximum(split_steps[env], 1) * episode["length"]
                    if split_steps[env, 1]:
                        writer.add_scalar("mixed/episodic_return_fictitious", fictitious_return, global_step)
                    split_reward[env] = split_steps[env] = 0
                    recent_returns.append(trained_return)
                    recent_all_returns.append(episode["returns"].mean())
                    writer.add_scalar("charts/episodic_return", trained_return, global_step)
                    writer.add_scalar("mixed/episodic_return_all", episode["returns"].mean(), global_step)
                    writer.add_scalar("charts/collective_return", episode["collective_return"], global_step)
                    writer.add_scalar("charts/episodic_length", episode["length"], global_step)
                    for player, player_return in enumerate(episode["returns"]):
                        writer.add_scalar(f"players/episodic_return_{player}", player_return, global_step)

            if args.prepare_resets:  # the workers build the next episodes' environments while the learner works
                envs.prepare_resets()
            timer.mark("other")
            values = rollout_values(critic, obs_world, obs_rgb, obs_vector, args.num_minibatches)  # (num_steps, rows)
            timer.mark("act")
            # bootstrap value if not done; the critic learns normalised values (ValueNorm)
            with torch.no_grad():
                next_value = value_norm.denormalize(critic.get_value(next_world, next_rgb, next_vector))
                advantages, returns = compute_gae(
                    rewards, value_norm.denormalize(values), dones, next_value, next_done, args.gamma, args.gae_lambda
                )
                value_norm.update(returns[:, trained])

            timer.mark("other")
            # Optimizing the policy and value network, minibatches of whole environments
            # (all their players, all their steps), so the LSTM sees whole sequences
            envs_per_minibatch = args.num_envs // args.num_minibatches
            env_inds = np.arange(args.num_envs)
            clipfracs = []
            for epoch in range(args.update_epochs):
                np.random.shuffle(env_inds)
                for start in range(0, args.num_envs, envs_per_minibatch):
                    mb_envs = env_inds[start : start + envs_per_minibatch]
                    mb_rows = torch.tensor((mb_envs[:, None] * args.num_players + np.arange(args.num_players)).ravel()).to(
                        device
                    )
                    mb_rgb, mb_vector = obs_rgb[:, mb_rows].flatten(0, 1), obs_vector[:, mb_rows].flatten(0, 1)

                    _, newlogprob, entropy, _, _ = actor.get_action(
                        mb_rgb,
                        mb_vector,
                        (initial_lstm_state[0][:, mb_rows], initial_lstm_state[1][:, mb_rows]),
                        dones[:, mb_rows].flatten(),
                        actions[:, mb_rows].flatten(),
                    )
                    newvalue = critic.get_value(obs_world[:, mb_envs].flatten(0, 1), mb_rgb, mb_vector)
                    loss, stats = ppo_loss(
                        newlogprob,
                        entropy,
                        newvalue,
                        logprobs[:, mb_rows].flatten(),
                        advantages[:, mb_rows].flatten(),
                        values[:, mb_rows].flatten(),
                        value_norm.normalize(returns[:, mb_rows].flatten()),
                        trained[mb_rows].repeat(args.num_steps),
                        args,
                    )
                    clipfracs.append(stats["clipfrac"].item())

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_([*actor.parameters(), *critic.parameters()], args.max_grad_norm)
                    optimizer.step()

                if args.target_kl is not None and stats["approx_kl"] > args.target_kl:
                    break
            timer.mark("update")

            # ALGO LOGIC: the window keeps the trained slots' sequences of the last kd rollouts with the
            # action distributions theta had when it acted; every kd iterations phi distils over it
            window.append((obs_rgb[:, trained], obs_vector[:, trained], dones[:, trained], theta_logits[:, trained]))
            direction = scheduled_phase(iteration, args)
            if direction:
                if direction == "forward" and args.reset_phi:  # our choice: imitate from theta's features
                    restart_from(phi, phi_optimizer, actor)
                kl_before = distill_diagnostics(phi, window, sequences_per_minibatch)["kl"]
                distill(phi, phi_optimizer, window, direction, sequences_per_minibatch, args)
                phase = distill_diagnostics(phi, window, sequences_per_minibatch)
                phases_run, last_phase = phases_run + 1, direction
                writer.add_scalar("distill/direction", 1 if direction == "forward" else -1, global_step)
                writer.add_scalar("distill/kl_before", kl_before, global_step)
                writer.add_scalar("distill/kl_after", phase["kl"], global_step)
                writer.add_scalar(f"distill/kl_after_{direction}", phase["kl"], global_step)
                for key in [
                    "phi_entropy",
                    "theta_entropy",
                    "phi_logp_std",
                    "theta_logp_std",
                    "phi_logp_ratio",
                    "phi_logp_ratio_pooled",
                    "phi_input_dependence",
                    "theta_input_dependence",
                ]:
                    writer.add_scalar(f"distill/{key}", phase[key], global_step)
                print(
                    f"distill {direction} at iter {iteration}: KL(hist || phi) {kl_before:.3f} -> {phase['kl']:.3f} | "
                    f"{describe_phase(phase)}",
                    flush=True,
                )

            timer.mark("distill")
            y_pred = values[:, trained].flatten().cpu().numpy()
            y_true = value_norm.normalize(returns[:, trained]).flatten().cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", stats["v_loss"].item(), global_step)
            writer.add_scalar("losses/policy_loss", stats["pg_loss"].item(), global_step)
            writer.add_scalar("losses/entropy", stats["entropy"].item(), global_step)
            writer.add_scalar("losses/old_approx_kl", stats["old_approx_kl"].item(), global_step)
            writer.add_scalar("losses/approx_kl", stats["approx_kl"].item(), global_step)
            writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            timer.mark("other")
            for part, share in timer.shares().items():  # where the iteration's wall time went
                writer.add_scalar(f"charts/time_{part}", share, global_step)
            writer.add_scalar("mixed/fictitious_fraction", fictitious.float().mean().item(), global_step)
            # how hard a partner phi was this rollout, next to theta itself
            beside_phi, beside_theta = rollout_signal(
                rewards.cpu().numpy().reshape(args.num_steps, args.num_envs, args.num_players), fictitious_np
            )
            for name, value in [("reward_beside_phi", beside_phi), ("reward_beside_theta", beside_theta)]:
                if not math.isnan(value):
                    writer.add_scalar(f"mixed/{name}", value, global_step)
            if time.time() - last_print > 10 or iteration in (start_iteration, args.num_iterations):
                last_print = time.time()
                eta = (args.num_iterations * args.num_envs * args.num_steps - global_step) / max(sps, 1)
                mean_return = f"{np.mean(recent_returns):.2f}" if recent_returns else "-"
                all_return = f"{np.mean(recent_all_returns):.2f}" if recent_all_returns else "-"
                print(
                    f"iter {iteration}/{args.num_iterations} | step {global_step:,}/{args.total_timesteps:,} | "
                    f"SPS {sps:,} | ETA {format_eta(eta)} | return/player {mean_return} (all slots {all_return}) | "
                    f"entropy {stats['entropy'].item():.2f} | value_loss {stats['v_loss'].item():.3f}",
                    flush=True,
                )
            if args.snapshot_every and iteration % args.snapshot_every == 0:
                utils.save_snapshot(run_dir, "theta", iteration, global_step, actor)
                utils.save_snapshot(run_dir, "phi", iteration, global_step, phi, last_phase=last_phase)
            if args.checkpoint_every and iteration % args.checkpoint_every == 0:
                utils.save_checkpoint(checkpoint_path, state(iteration))
    except KeyboardInterrupt:
        utils.save_checkpoint(checkpoint_path, completed)
        raise SystemExit(
            f"interrupted: checkpoint of iteration {completed['iteration']} saved (the iteration in "
            f"progress is redone); continue with --resume {checkpoint_path}"
        )
    finally:
        envs.close()
        writer.close()

    if args.save_model:
        utils.save_checkpoint(checkpoint_path, state(args.num_iterations))
        print(f"checkpoint saved to {checkpoint_path}")
