"""Where the time of mappo.py's two big parts goes: one PPO minibatch update, and one step of the vectorised env.

    .venv/bin/python benchmarks/profile_parts.py

1. update: mappo.py's Actor and Critic at the substrate's real sizes, one minibatch of the default schedule
   (2 environments x all their players x 128 steps, episode starts inside), the forward pass, a PPO-like
   loss, the backward pass and Adam's step, under torch's profiler on one thread: the top operators by
   their own time, and the share of the update they take.
2. env step: MeltingPotVecEnv with random actions, each step split into sending the actions, waiting for
   and receiving the workers' results, and gathering them into arrays, beside one environment stepped in
   this process (a worker's per-step work without pipes): what the lockstep round trip costs.
3. acting: one forward pass of mappo.py's Actor (the per-step acting call) for several numbers of rows, on one
   thread: whether acting costs by the row or by the call, which decides whether splitting the environments
   into groups (to overlap stepping one with acting for another) can pay.
4. overlap: a rollout's per-step loop (mappo.py's Actor acting, the vectorised env stepping), in lockstep as
   the scripts run it, against each worker's environments as a group: the learner acts for one group while
   the other steps (double-buffered sampling, as Sample Factory does; no policy lag). Env steps/s of each,
   alternating runs on the same environments.
5. reset: seconds of an episode's reset in one environment of this process (Melting Pot rebuilds the world), and of
   building a fresh environment and resetting it (what `prepare_resets` does ahead of an episode's end).
6. stride: the update of part 1 again with the 3x3 conv layer of every `conv_torso` at stride 1 instead of the
   scripts' stride 2 (weights unchanged; the linear layer after it sized for the larger map): what stride 2 saves.

Parts are chosen with --parts (default all): `--substrate clean_up --parts reset` for a 7-player substrate's resets.
"""

import os
import random
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import tyro
from torch import nn
from torch.distributions import Categorical
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from throughput import single_process_throughput  # noqa: E402 (benchmarks/, this script's own folder)

import mappo  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args:
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    num_envs: int = 8
    """environments of the env-step measurement, as mappo.py's --num-envs"""
    env_steps: int = 1000
    """steps of the env-step measurement"""
    updates: int = 10
    """minibatch updates profiled (after 3 not profiled)"""
    top: int = 8
    """operators listed"""
    overlap_repeats: int = 5
    """alternating runs of each rollout loop in the overlap measurement (each of --env-steps steps)"""
    resets: int = 5
    """resets (and builds) timed in the reset measurement, after one untimed"""
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    """which measurements to run, of: update env acting overlap reset stride"""


PARTS = ("update", "env", "acting", "overlap", "reset", "stride")


def actor_sizes(substrate):
    """The sizes mappo.py's networks are built with, from one real environment."""
    envs = utils.MeltingPotVecEnv(substrate, 1, seed=1, num_workers=1)
    try:
        envs.reset()
        return SimpleNamespace(
            rgb_shape=envs.rgb_shape,
            world_shape=envs.world_shape,
            vector_dim=envs.vector_dim,
            num_actions=envs.num_actions,
            num_players=envs.num_players,
        )
    finally:
        envs.close()


def profile_acting(sizes, rows_list, calls):
    """ms per acting call (Actor.get_action, no gradients) for each number of rows."""
    torch.manual_seed(1)
    actor = mappo.Actor(sizes, mappo.Args())
    times = {}
    for rows in rows_list:
        rgb = torch.randint(0, 256, (rows, *sizes.rgb_shape), dtype=torch.uint8)
        vector, done, state = torch.randn(rows, sizes.vector_dim), torch.zeros(rows), actor.initial_state(rows, "cpu")
        with torch.no_grad():
            for _ in range(20):
                actor.get_action(rgb, vector, state, done)
            start = time.perf_counter()
            for _ in range(calls):
                actor.get_action(rgb, vector, state, done)
        times[rows] = (time.perf_counter() - start) / calls * 1e3
    return times


def stride_one(net):
    """Sets the 3x3 conv layer of every conv_torso in `net` to stride 1 (the weights do not depend on the stride) and
    replaces the linear layer after it by a lazy one, sized at the first forward pass for the larger map."""
    for torso in net.modules():
        if isinstance(torso, nn.Sequential) and any(isinstance(m, nn.Flatten) for m in torso):
            conv = next(m for m in torso if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
            conv.stride = (1, 1)
            i = next(i for i, m in enumerate(torso) if isinstance(m, nn.Linear))
            torso[i] = nn.LazyLinear(torso[i].out_features)
    return net


def minibatch_update(sizes, stride_one_convs=False):
    """One minibatch update of the default schedule at the substrate's real sizes (2 environments x all their
    players x 128 steps, episode starts inside): the forward pass, a PPO-like loss, backward and Adam's step."""
    torch.manual_seed(1)
    settings = mappo.Args()
    actor, critic = mappo.Actor(sizes, settings), mappo.Critic(sizes, settings)
    if stride_one_convs:
        stride_one(actor)
        stride_one(critic)
    steps, num_envs = settings.num_steps, settings.num_envs // settings.num_minibatches
    rows = num_envs * sizes.num_players
    rgb = torch.randint(0, 256, (steps * rows, *sizes.rgb_shape), dtype=torch.uint8)
    vector = torch.randn(steps * rows, sizes.vector_dim)
    world = torch.randint(0, 256, (steps * num_envs, *sizes.world_shape), dtype=torch.uint8)
    done = torch.zeros(steps * rows)
    done[:: 50 * rows] = 1  # episode starts inside the sequences
    action = torch.randint(0, sizes.num_actions, (steps * rows,))
    state = actor.initial_state(rows, "cpu")
    with torch.no_grad():  # sizes any lazy layer before the optimiser sees the parameters
        actor.get_states(rgb[:rows], vector[:rows], state, done[:rows])
        critic.get_value(world[:num_envs], rgb[:rows], vector[:rows])
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=settings.learning_rate, eps=1e-5)

    def update():
        hidden, _ = actor.get_states(rgb, vector, state, done)
        policy = Categorical(logits=actor.policy(hidden))
        value = critic.get_value(world, rgb, vector)
        loss = -policy.log_prob(action).mean() - 0.01 * policy.entropy().mean() + 0.5 * (value**2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return update


def time_update(update, count, warmup=3):
    """ms per call of `update`, after `warmup` calls not timed."""
    for _ in range(warmup):
        update()
    start = time.perf_counter()
    for _ in range(count):
        update()
    return (time.perf_counter() - start) / count * 1e3


def profile_update(sizes, args):
    """Top operators of a minibatch update by self CPU time: [(name, share of the update, calls)], ms per update."""
    update = minibatch_update(sizes)
    for _ in range(3):
        update()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        ms = time_update(update, args.updates, warmup=0)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    return [(e.key, e.self_cpu_time_total / total, e.count // args.updates) for e in top], ms


def profile_stride(sizes, args):
    """ms per minibatch update with the scripts' stride-2 conv layers and with stride 1, alternating, medians."""
    stride_two, stride_one_ = minibatch_update(sizes), minibatch_update(sizes, stride_one_convs=True)
    runs = [(time_update(stride_two, args.updates), time_update(stride_one_, args.updates)) for _ in range(3)]
    return np.median(runs, axis=0)


def profile_reset(args):
    """Median seconds of a reset of one environment in this process, and of building a new one and resetting it."""
    random.seed(1)
    env = utils._Substrate(args.substrate, downsample=True, max_episode_steps=None)
    resets, builds = [], []
    try:
        for i in range(args.resets + 1):
            start = time.perf_counter()
            env.reset()
            resets.append(time.perf_counter() - start)
            start = time.perf_counter()
            env.prepare()
            builds.append(time.perf_counter() - start)
            env.spare[0].close()
            env.spare = None
    finally:
        env.close()
    return np.median(resets[1:]), np.median(builds[1:])


def profile_env_step(args):
    """ms per step of the vectorised env split into send / wait and receive / gather; env steps/s of the
    vectorised env and of one environment in this process."""
    envs = utils.MeltingPotVecEnv(args.substrate, args.num_envs, seed=1)
    rng = np.random.default_rng(1)
    parts = dict(send=0.0, wait=0.0, gather=0.0)
    try:
        envs.reset()
        bounds = np.cumsum([0, *envs.envs_per_worker])
        start = time.perf_counter()
        for _ in range(args.env_steps):
            actions = rng.integers(0, envs.num_actions, size=(args.num_envs, envs.num_players))
            t0 = time.perf_counter()
            envs._send([("step", actions[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
            t1 = time.perf_counter()
            results = envs._receive()
            t2 = time.perf_counter()
            envs._gather(results)
            parts["send"] += t1 - t0
            parts["wait"] += t2 - t1
            parts["gather"] += time.perf_counter() - t2
        vectorised = args.env_steps * args.num_envs / (time.perf_counter() - start)
        workers = len(envs.envs_per_worker)
    finally:
        envs.close()
    single = single_process_throughput(args.substrate, args.env_steps, seed=1)
    return {k: v / args.env_steps * 1e3 for k, v in parts.items()}, vectorised, single, workers


def as_tensors(obs):
    """The scripts' per-step conversion of the env's observations (the world frames too, as they keep them)."""
    return torch.tensor(obs["rgb"]), torch.tensor(obs["vector"]), torch.tensor(obs["world"])


def lockstep_rollout(actor, envs, steps):
    """Env steps/s of the scripts' rollout loop: act for every row, step every environment, repeat."""
    rgb, vector, _ = as_tensors(envs.reset())
    state, done = actor.initial_state(len(rgb), "cpu"), torch.zeros(len(rgb))
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            action, _, _, _, state = actor.get_action(rgb, vector, state, done)
            obs, _, done, _ = envs.step(action.numpy())
            (rgb, vector, _), done = as_tensors(obs), torch.tensor(done, dtype=torch.float32)
    return steps * envs.num_envs / (time.perf_counter() - start)


def overlapped_rollout(actor, envs, steps):
    """Env steps/s with each worker's environments a group: the learner acts for one group while the others
    step. Each group keeps its own rows and LSTM state; its results arrive from its own worker."""
    obs, players = envs.reset(), envs.num_players
    bounds = np.cumsum([0, *envs.envs_per_worker]) * players
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    states = [actor.initial_state(g.stop - g.start, "cpu") for g in groups]
    inputs = [(torch.tensor(obs["rgb"][g]), torch.tensor(obs["vector"][g]), torch.zeros(g.stop - g.start)) for g in groups]

    def act_and_send(i):
        action, _, _, _, states[i] = actor.get_action(*inputs[i][:2], states[i], inputs[i][2])
        envs.remotes[i].send(("step", action.numpy().reshape(-1, players)))

    def receive(i):
        status, per_env = envs.remotes[i].recv()
        assert status == "ok", per_env
        per_env, obs = envs._gather([per_env])  # the vectorised env's own gathering, for this worker alone
        rgb, vector, _ = as_tensors(obs)
        inputs[i] = (rgb, vector, torch.tensor(np.repeat([r[4] for r in per_env], players), dtype=torch.float32))

    start = time.perf_counter()
    with torch.no_grad():
        for i in range(len(groups)):
            act_and_send(i)
        for _ in range(steps - 1):
            for i in range(len(groups)):  # while group i steps, the learner serves the next group
                receive(i)
                act_and_send(i)
        for i in range(len(groups)):
            receive(i)
    return steps * envs.num_envs / (time.perf_counter() - start)


def profile_overlap(sizes, args):
    """Env steps/s of a rollout loop in lockstep and overlapped, alternating, --overlap-repeats of each on the same
    environments: medians, the number of groups, and every run's pair."""
    torch.manual_seed(1)
    actor = mappo.Actor(sizes, mappo.Args())
    envs = utils.MeltingPotVecEnv(args.substrate, args.num_envs, seed=1)
    try:
        runs = [
            (lockstep_rollout(actor, envs, args.env_steps), overlapped_rollout(actor, envs, args.env_steps))
            for _ in range(args.overlap_repeats)
        ]
        return *np.median(runs, axis=0), len(envs.envs_per_worker), runs
    finally:
        envs.close()


if __name__ == "__main__":
    args = tyro.cli(Args)
    utils.check_substrate(args.substrate)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {' '.join(unknown)}; valid parts: {' '.join(PARTS)}")
    torch.set_num_threads(1)
    sizes = actor_sizes(args.substrate)
    if "update" in args.parts:
        top, ms = profile_update(sizes, args)
        print(f"update: {ms:.1f} ms per minibatch on 1 thread; operators by their own time:")
        for name, share, calls in top:
            print(f"  {share:6.1%}  {name} ({calls} calls)")
        print(f"  {sum(share for _, share, _ in top):6.1%}  these {len(top)} together")
    if "env" in args.parts:
        parts, vectorised, single, workers = profile_env_step(args)
        step = sum(parts.values())
        per_worker = args.num_envs / workers / single * 1e3  # ms a worker needs to step its share, at in-process speed
        print(
            f"\nenv step ({args.num_envs} envs in {workers} workers): {step:.2f} ms = send {parts['send']:.2f} + "
            f"wait and receive {parts['wait']:.2f} + gather {parts['gather']:.2f}; {vectorised:,.0f} env steps/s"
        )
        print(
            f"one environment in this process: {single:,.0f} env steps/s, so a worker's share of a step is "
            f"{per_worker:.2f} ms of work: the other {step - per_worker:.2f} ms are the round trip "
            f"({vectorised / (workers * single):.2f} of {workers} x one process)"
        )
    if "acting" in args.parts:
        rows = args.num_envs * sizes.num_players
        acting = profile_acting(sizes, [rows // 2, rows, 2 * rows], calls=400)
        print(
            "\nacting (one Actor.get_action call, 1 thread): " + ", ".join(f"{n} rows {ms:.2f} ms" for n, ms in acting.items())
        )
    if "overlap" in args.parts:
        lockstep, overlapped, groups, runs = profile_overlap(sizes, args)
        print(
            f"\nrollout loop (Actor acting on 1 thread + env step, {args.num_envs} envs), medians of {len(runs)} "
            f"alternating runs: lockstep {lockstep:,.0f} env steps/s; {groups} groups overlapped (act for one while "
            f"the other steps) {overlapped:,.0f} ({overlapped / lockstep:.2f} x lockstep; runs "
            + ", ".join(f"{a:,.0f} / {b:,.0f}" for a, b in runs)
            + ")"
        )
    if "reset" in args.parts:
        reset, build = profile_reset(args)
        print(
            f"\nreset ({args.substrate}, one environment in this process, medians of {args.resets}): an episode's "
            f"reset {reset:.3f} s; building a new environment and resetting it (prepare_resets) {build:.3f} s"
        )
    if "stride" in args.parts:
        two, one = profile_stride(sizes, args)
        print(
            f"\nconv stride (one minibatch update on 1 thread, medians of 3 alternating runs of {args.updates}): "
            f"3x3 conv at stride 2 (the scripts') {two:.1f} ms, at stride 1 {one:.1f} ms ({one / two:.2f} x)"
        )
