# Ranked Policy Memory (RPM, arXiv 2210.09646) on MAPPO, Melting Pot, CleanRL style: mappo.py plus a memory of
# theta's snapshots keyed by their training return, whose snapshots play the co-player slots of a random share of
# the environments. Docs and measured results: docs/algorithms/rpm.md
import copy
import math
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional

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

    # Ranked Policy Memory
    rpm_sample_prob: float = 0.5
    """probability that an environment's co-player slots play snapshots from the memory for one rollout: all its
    slots but one, drawn uniformly, which theta plays"""
    rpm_slice: Optional[float] = None
    """psi, the width of a key's return band: a snapshot's key is floor(its training return / psi); default per
    substrate, RPM's where its paper gives one (RPM_SLICE), else 1.0"""
    rpm_bucket_size: int = 100
    """the most snapshots one key holds; the oldest of that key is dropped"""
    rpm_save_every: int = 10
    """iterations between the snapshots of theta saved to the memory (a snapshot waits for an episode to end,
    as its key is the trained slots' mean episode return since the previous snapshot)"""

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
        "rpm_bucket_size",
        "rpm_save_every",
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
    if not 0.0 <= args.rpm_sample_prob <= 1.0:
        raise SystemExit(f"error: --rpm-sample-prob is a probability and must be in [0, 1], got {args.rpm_sample_prob}")
    if args.rpm_slice is not None and not args.rpm_slice > 0:
        raise SystemExit(f"error: --rpm-slice must be > 0, got {args.rpm_slice}")
    utils.check_substrate(args.substrate)


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
    RPM: only the samples of trained slots (`trained`, a boolean mask) enter any term."""
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


# RPM's return bands where its paper gives them (its code's default elsewhere: 1)
RPM_SLICE = {
    "pure_coordination_in_the_matrix__repeated": 0.01,
    "prisoners_dilemma_in_the_matrix__repeated": 0.02,
    "clean_up": 1.0,
}


def memory_mask(num_envs, num_players, prob):
    """The mixed-play mask of one rollout, (num_envs, num_players): True where a snapshot from the memory plays
    the slot. With probability `prob` an environment plays the memory: every slot but one, drawn uniformly,
    which theta plays; the other environments are all theta's."""
    mask = np.random.random(num_envs)[:, None] < prob
    mask = np.repeat(mask, num_players, axis=1)
    mask[np.arange(num_envs), np.random.randint(num_players, size=num_envs)] = False
    return mask


def rpm_key(episode_return, rpm_slice):
    """A snapshot's key in the memory: its training episode return's band of width rpm_slice, floor(return / psi)
    (rounded to 9 decimals first, so that a return on a band's edge, 0.3 / 0.1, is not put one band lower)."""
    return math.floor(round(episode_return / rpm_slice, 9))


def sample_memory(memory, size):
    """Draws `size` snapshots from the memory ({key: snapshots, oldest first}) as RPM does: a key uniformly over
    the keys, then a snapshot uniformly within that key. Returns their indices in the memory's snapshots listed
    key by key (the order of `memory_snapshots`)."""
    sizes = np.array([len(bucket) for bucket in memory.values()])
    keys = np.random.randint(len(sizes), size=size)
    return np.cumsum(sizes)[keys] - sizes[keys] + (np.random.random(size) * sizes[keys]).astype(int)


def memory_snapshots(memory):
    """The memory's snapshots listed key by key, oldest first within a key."""
    return [entry for bucket in memory.values() for entry in bucket]


def snapshot_of(actor):
    """A frozen copy of theta for the memory: it never trains, and theta's training never moves it."""
    snapshot = copy.deepcopy(actor).requires_grad_(False).eval()
    snapshot.lstm.flatten_parameters()  # on CUDA, cuDNN wants a copied LSTM's weights in one chunk again
    return snapshot


def memory_action(actor, snapshots, owner, rgb, vector, theta_state, memory_state, done):
    """One step of mixed play. theta acts on every row (its log-probs are recorded for PPO); on the
    rows whose `owner` (a numpy array) is a memory index (-1: theta), that snapshot's actions replace theta's. Each
    snapshot in use runs once, on its own rows, with their recurrent states."""
    action, logprob, _, _, theta_state = actor.get_action(rgb, vector, theta_state, done)
    memory_h, memory_c = memory_state[0].clone(), memory_state[1].clone()
    for k in np.unique(owner[owner >= 0]):  # owner is a numpy array: no device-to-host copy per step
        rows = torch.from_numpy(owner == k)
        snapshot_action, _, _, _, (h, c) = snapshots[k].get_action(
            rgb[rows], vector[rows], (memory_h[:, rows], memory_c[:, rows]), done[rows]
        )
        action[rows], memory_h[:, rows], memory_c[:, rows] = snapshot_action, h, c
    return action, logprob, theta_state, (memory_h, memory_c)


def format_eta(seconds):
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


if __name__ == "__main__":
    utils.quiet_interrupt()  # a Ctrl-C before training starts: one line, nothing saved
    args = utils.parse_args(Args)
    check_args(args)
    if args.rpm_slice is None:
        args.rpm_slice = RPM_SLICE.get(args.substrate, 1.0)
    checkpoint = utils.load_checkpoint(args.resume) if args.resume else None
    if checkpoint:
        utils.check_checkpoint(
            checkpoint,
            args.resume,
            SCRIPT,
            args,
            must_match=("substrate", "downsample", "hidden_size", "num_envs", "num_steps"),
        )
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
    # the ranked policy memory: {key: snapshots, oldest first}, each {"iteration" it was taken after, "actor"
    # (frozen)}; returns_since_snapshot: the trained slots' episode returns since the previous snapshot
    memory, returns_since_snapshot, snapshot_due = {}, [], False
    global_step = 0
    if checkpoint:
        actor.load_state_dict(checkpoint["actor"])
        critic.load_state_dict(checkpoint["critic"])
        value_norm.load_state_dict(checkpoint["value_norm"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for entry in checkpoint["memory"]:
            snapshot = snapshot_of(actor)
            snapshot.load_state_dict(entry["actor"])
            bucket = memory.setdefault(entry["key"], deque(maxlen=args.rpm_bucket_size))
            bucket.append({"iteration": entry["iteration"], "actor": snapshot})
        returns_since_snapshot, snapshot_due = checkpoint["returns_since_snapshot"], checkpoint["snapshot_due"]
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
            "memory": [
                {"key": key, "iteration": entry["iteration"], "actor": entry["actor"].state_dict()}
                for key, bucket in memory.items()
                for entry in bucket
            ],
            "returns_since_snapshot": list(returns_since_snapshot),
            "snapshot_due": snapshot_due,
        }

    # ALGO Logic: Storage setup, time-major, one column per player row
    obs_rgb = torch.zeros((args.num_steps, num_rows) + envs.rgb_shape, dtype=torch.uint8).to(device)
    obs_vector = torch.zeros((args.num_steps, num_rows, envs.vector_dim)).to(device)
    obs_world = torch.zeros((args.num_steps, args.num_envs) + envs.world_shape, dtype=torch.uint8).to(device)
    actions = torch.zeros((args.num_steps, num_rows), dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, num_rows)).to(device)
    rewards = torch.zeros((args.num_steps, num_rows)).to(device)
    dones = torch.zeros((args.num_steps, num_rows)).to(device)

    # TRY NOT TO MODIFY: start the game
    start_time, start_step, last_print = time.time(), global_step, 0.0
    recent_returns = deque(maxlen=20)  # per-player returns of the last episodes, for the progress line: trained slots'
    recent_all_returns = deque(maxlen=20)  # and every slot's
    split_reward = np.zeros((args.num_envs, 2))  # reward of the running episodes: trained slots, memory slots
    split_steps = np.zeros((args.num_envs, 2))  # and their slot-steps
    next_rgb = torch.tensor(next_obs["rgb"]).to(device)
    next_vector = torch.tensor(next_obs["vector"]).to(device)
    next_world = torch.tensor(next_obs["world"]).to(device)
    next_done = torch.zeros(num_rows).to(device)
    next_lstm_state = actor.initial_state(num_rows, device)
    memory_lstm_state = actor.initial_state(num_rows, device)
    controller = np.full(num_rows, -1)  # who plays each row: -1 theta, else the iteration of its memory snapshot
    timer = utils.TimeShares(device)  # the shares of wall time in acting, env stepping, the update, ...
    try:
        for iteration in range(start_iteration, args.num_iterations + 1):
            # what a Ctrl-C during this iteration saves: the state before it, never a half-done update
            completed = copy.deepcopy(state(iteration - 1))
            # ALGO LOGIC: every rpm_save_every iterations the memory takes a frozen snapshot of theta, keyed by the
            # trained slots' mean episode return since the previous one (once an episode has ended)
            snapshot_due = snapshot_due or (iteration - 1) % args.rpm_save_every == 0
            if snapshot_due and returns_since_snapshot:
                key = rpm_key(np.mean(returns_since_snapshot), args.rpm_slice)
                bucket = memory.setdefault(key, deque(maxlen=args.rpm_bucket_size))
                bucket.append({"iteration": iteration - 1, "actor": snapshot_of(actor)})
                returns_since_snapshot, snapshot_due = [], False
            # mixed play: draw the environments that play the memory in this rollout and the snapshot of each of
            # their co-player slots; a slot whose controller changed starts from a zero recurrent state (as in
            # bidist_mappo.py). Until the first snapshot, theta plays every slot.
            snapshots = memory_snapshots(memory)
            fictitious_np = memory_mask(args.num_envs, args.num_players, args.rpm_sample_prob if snapshots else 0.0)
            owner_np = np.where(fictitious_np.ravel(), sample_memory(memory, num_rows) if snapshots else -1, -1)
            new_controller = np.array([snapshots[k]["iteration"] if k >= 0 else -1 for k in owner_np])
            keep = torch.tensor(new_controller == controller, dtype=torch.float32).to(device).view(1, -1, 1)
            next_lstm_state = (keep * next_lstm_state[0], keep * next_lstm_state[1])
            memory_lstm_state = (keep * memory_lstm_state[0], keep * memory_lstm_state[1])
            controller, owner = new_controller, torch.tensor(owner_np).to(device)
            trained = owner < 0
            snapshot_actors = [entry["actor"] for entry in snapshots]
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
                    action, logprob, next_lstm_state, memory_lstm_state = memory_action(
                        actor, snapshot_actors, owner_np, next_rgb, next_vector, next_lstm_state, memory_lstm_state, next_done
                    )
                actions[step] = action
                logprobs[step] = logprob
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
                    # the headline is the trained population's return: as in bidist_mappo.py, each population's
                    # reward per slot-step scaled to the episode's length (controllers change between rollouts)
                    env = episode["env"]
                    trained_return, memory_return = split_reward[env] / np.maximum(split_steps[env], 1) * episode["length"]
                    if split_steps[env, 1]:
                        writer.add_scalar("mixed/episodic_return_memory", memory_return, global_step)
                    split_reward[env] = split_steps[env] = 0
                    recent_returns.append(trained_return)
                    returns_since_snapshot.append(float(trained_return))
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
            writer.add_scalar("mixed/memory_fraction", fictitious_np.mean(), global_step)
            writer.add_scalar("rpm/size", len(snapshots), global_step)
            writer.add_scalar("rpm/keys", len(memory), global_step)
            if snapshots:  # the memory's return bands, one value per snapshot: the counts per key
                writer.add_histogram(
                    "rpm/snapshot_returns",
                    np.repeat(np.array(list(memory), dtype=np.float64) * args.rpm_slice, [len(b) for b in memory.values()]),
                    global_step,
                )
            if (owner_np >= 0).any():
                writer.add_scalar("rpm/mean_age", np.mean(iteration - 1 - controller[owner_np >= 0]), global_step)
            if time.time() - last_print > 10 or iteration in (start_iteration, args.num_iterations):
                last_print = time.time()
                eta = (args.num_iterations * args.num_envs * args.num_steps - global_step) / max(sps, 1)
                mean_return = f"{np.mean(recent_returns):.2f}" if recent_returns else "-"
                all_return = f"{np.mean(recent_all_returns):.2f}" if recent_all_returns else "-"
                print(
                    f"iter {iteration}/{args.num_iterations} | step {global_step:,}/{args.total_timesteps:,} | "
                    f"SPS {sps:,} | ETA {format_eta(eta)} | return/player {mean_return} (all slots {all_return}) | "
                    f"memory {len(snapshots)} in {len(memory)} keys | "
                    f"entropy {stats['entropy'].item():.2f} | value_loss {stats['v_loss'].item():.3f}",
                    flush=True,
                )
            if args.snapshot_every and iteration % args.snapshot_every == 0:
                utils.save_snapshot(run_dir, "theta", iteration, global_step, actor)
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
