"""Pure-function tests of the algorithm pieces every script copies from mappo.py (run over every
algorithm script, so that no copy drifts untested) and of utils' numerics."""

import importlib
import inspect
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ALGORITHM_SCRIPTS

import utils


@pytest.fixture(params=ALGORITHM_SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


# the mixed-play scripts: a share of the slots is played by another population (phi, past selves, a policy
# memory) and PPO trains on the other slots only (their ppo_loss takes the `trained` mask)
MIXED_PLAY_SCRIPTS = [
    s for s in ALGORITHM_SCRIPTS if "trained" in inspect.signature(importlib.import_module(s).ppo_loss).parameters
]
# of them, those drawing the slots with BiDist's mask (Bernoulli(p) per slot, a trained slot kept per environment)
BERNOULLI_MASK_SCRIPTS = [s for s in MIXED_PLAY_SCRIPTS if hasattr(importlib.import_module(s), "sample_mask")]


@pytest.fixture(params=MIXED_PLAY_SCRIPTS)
def mixed_script(request):
    return importlib.import_module(request.param)


@pytest.fixture(params=BERNOULLI_MASK_SCRIPTS)
def bernoulli_mask_script(request):
    return importlib.import_module(request.param)


def plain_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """GAE for one row, written as the textbook sums over each episode's remaining steps."""
    T = len(rewards)
    values_ext = list(values) + [next_value]
    # episode_start[t]: the observation at t begins a new episode
    starts = list(dones) + [next_done]
    advantages = []
    for t in range(T):
        total, weight = 0.0, 1.0
        for k in range(t, T):
            bootstrap = 0.0 if starts[k + 1] else gamma * values_ext[k + 1]
            total += weight * (rewards[k] + bootstrap - values_ext[k])
            if starts[k + 1]:
                break
            weight *= gamma * lam
        advantages.append(total)
    return np.array(advantages)


def test_gae_matches_plain_sums(script):
    rng = np.random.default_rng(0)
    T, B = 12, 3
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    dones = (rng.random((T, B)) < 0.2).astype(float)
    next_value, next_done = rng.normal(size=B), np.array([0.0, 1.0, 0.0])
    adv, ret = script.compute_gae(*(torch.tensor(x) for x in (rewards, values, dones, next_value, next_done)), 0.9, 0.8)
    for b in range(B):
        expected = plain_gae(rewards[:, b], values[:, b], dones[:, b], next_value[b], next_done[b], 0.9, 0.8)
        np.testing.assert_allclose(adv[:, b].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(ret.numpy(), adv.numpy() + values)


class FakeEnvs:
    rgb_shape, world_shape, vector_dim, num_actions, num_players = (5, 5, 3), (6, 9, 3), 2, 8, 2


def make_nets(script, hidden=16):
    torch.manual_seed(0)
    args = script.Args(hidden_size=hidden)
    return script.Actor(FakeEnvs, args), script.Critic(FakeEnvs, args)


def test_lstm_stretches_equal_step_by_step_loop(script):
    actor, _ = make_nets(script)
    T, B = 10, 4
    rgb = torch.randint(0, 256, (T * B, 5, 5, 3), dtype=torch.uint8)
    vector = torch.randn(T * B, 2)
    done = torch.zeros(T, B)
    done[0, 1] = done[3, 0] = done[3, 2] = done[7, 3] = 1
    state = (torch.randn(1, B, 16), torch.randn(1, B, 16))
    out, (h, c) = actor.get_states(rgb, vector, state, done.flatten())

    # CleanRL's reference: one LSTM step at a time, state zeroed where an episode starts
    hidden = actor.torso(torch.cat([actor.cnn(rgb.permute(0, 3, 1, 2).float() / 255), vector], 1)).reshape(T, B, -1)
    ref_h, ref_c, ref_out = state[0], state[1], []
    for t in range(T):
        keep = (1 - done[t]).view(1, -1, 1)
        o, (ref_h, ref_c) = actor.lstm(hidden[t : t + 1], (keep * ref_h, keep * ref_c))
        ref_out.append(o)
    # the features begin with the LSTM's output (OPRE's go on with the frame's torso features)
    torch.testing.assert_close(out[:, :16], torch.cat(ref_out).flatten(0, 1))
    if out.shape[1] > 16:
        torch.testing.assert_close(out[:, 16:], hidden.flatten(0, 1))
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)


def test_actor_policy_shapes_and_done_resets_memory(script):
    actor, critic = make_nets(script)
    rgb = torch.randint(0, 256, (4, 5, 5, 3), dtype=torch.uint8)
    vector = torch.randn(4, 2)
    state = (torch.randn(1, 4, 16), torch.randn(1, 4, 16))
    action, logprob, entropy, logits, _ = actor.get_action(rgb, vector, state, torch.zeros(4))
    assert action.shape == logprob.shape == entropy.shape == (4,) and logits.shape == (4, 8)
    # with done=1 the carried state is ignored: same output as from a zero state
    _, _, _, logits_done, _ = actor.get_action(rgb, vector, state, torch.ones(4))
    _, _, _, logits_zero, _ = actor.get_action(rgb, vector, actor.initial_state(4, "cpu"), torch.zeros(4))
    torch.testing.assert_close(logits_done, logits_zero)
    assert not torch.allclose(logits, logits_zero)


def test_critic_sees_world_and_player_index(script):
    _, critic = make_nets(script)
    world = torch.randint(0, 256, (1, 6, 9, 3), dtype=torch.uint8)
    rgb = torch.randint(0, 256, (1, 5, 5, 3), dtype=torch.uint8).repeat(2, 1, 1, 1)
    vector = torch.zeros(2, 2)
    values = critic.get_value(world, rgb, vector)
    assert values.shape == (2,)
    assert values[0] != values[1], "same observation in two slots must be told apart by the one-hot index"
    other_world = torch.randint(0, 256, (1, 6, 9, 3), dtype=torch.uint8)
    assert not torch.allclose(values, critic.get_value(other_world, rgb, vector))


@pytest.mark.parametrize("calls", [1, 3, 4])
def test_rollout_values_equal_one_critic_call_per_step(script, calls):
    # the scripts compute a rollout's values after it, in a few batched calls: the same values, at the same
    # (step, row) places, as the call per step while acting that they replace (ragged chunks included)
    _, critic = make_nets(script)
    T, num_envs = 10, 3
    world = torch.randint(0, 256, (T, num_envs, 6, 9, 3), dtype=torch.uint8)
    rgb = torch.randint(0, 256, (T, num_envs * 2, 5, 5, 3), dtype=torch.uint8)
    vector = torch.randn(T, num_envs * 2, 2)
    per_step = torch.stack([critic.get_value(world[t], rgb[t], vector[t]) for t in range(T)]).detach()
    assert per_step.std(dim=0).min() > 0 and per_step.std(dim=1).min() > 0, "values differ across steps and rows"
    torch.testing.assert_close(script.rollout_values(critic, world, rgb, vector, calls), per_step)


def ppo_loss_by_hand(
    newlogprob, entropy, newvalue, logprob, advantages, value, target, clip, ent_coef, vf_coef, norm_adv=True, clip_vloss=True
):
    """The PPO loss of one minibatch written out element by element (advantages normalised by
    their sample standard deviation, as torch's std does), with its parts."""
    adv = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8) if norm_adv else advantages
    pg, v = [], []
    for i in range(len(adv)):
        ratio = float(np.exp(newlogprob[i] - logprob[i]))
        pg.append(max(-adv[i] * ratio, -adv[i] * min(max(ratio, 1 - clip), 1 + clip)))
        clipped = value[i] + min(max(newvalue[i] - value[i], -clip), clip)
        unclipped = (newvalue[i] - target[i]) ** 2
        v.append(max(unclipped, (clipped - target[i]) ** 2) if clip_vloss else unclipped)
    logratio = newlogprob - logprob
    parts = {
        "pg_loss": np.mean(pg),
        "v_loss": 0.5 * np.mean(v),
        "entropy": np.mean(entropy),
        "old_approx_kl": np.mean(-logratio),
        "approx_kl": np.mean(np.exp(logratio) - 1 - logratio),
        "clipfrac": np.mean(np.abs(np.exp(logratio) - 1) > clip),
    }
    return parts["pg_loss"] - ent_coef * parts["entropy"] + vf_coef * parts["v_loss"], parts


@pytest.mark.parametrize("norm_adv, clip_vloss", [(True, True), (False, False)])
def test_ppo_loss_matches_a_hand_computation(script, norm_adv, clip_vloss):
    rng = np.random.default_rng(3)
    n = 6
    logprob = rng.normal(-1.5, 0.3, n)
    newlogprob = logprob + np.array([0.5, -0.5, 0.05, -0.05, 0.3, 0.0])  # ratios inside and outside the clip
    entropy, advantages = rng.random(n), rng.normal(size=n)
    value, target = rng.normal(size=n), rng.normal(size=n)
    newvalue = value + np.array([0.5, -0.05, 0.0, 0.3, -0.4, 0.1])
    target[[0, 4]] = value[[0, 4]] + [1.0, -1.0]  # moved past the clip towards the target: the clipped loss is larger
    args = SimpleNamespace(clip_coef=0.2, norm_adv=norm_adv, clip_vloss=clip_vloss, ent_coef=0.01, vf_coef=0.5)
    inputs = dict(
        zip(
            ["newlogprob", "entropy", "newvalue", "logprob", "advantages", "value", "target"],
            (torch.tensor(x, requires_grad=True) for x in (newlogprob, entropy, newvalue, logprob, advantages, value, target)),
        )
    )
    if "trained" in inspect.signature(script.ppo_loss).parameters:  # mixed play: every row trained here
        inputs["trained"] = torch.ones(n, dtype=torch.bool)
    loss, stats = script.ppo_loss(**inputs, args=args)
    expected, parts = ppo_loss_by_hand(
        newlogprob, entropy, newvalue, logprob, advantages, value, target, 0.2, 0.01, 0.5, norm_adv, clip_vloss
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert parts["clipfrac"] == 3 / 6
    assert stats.keys() == parts.keys()
    for name, value in parts.items():
        assert stats[name].item() == pytest.approx(value, rel=1e-9), name
    loss.backward()
    # raising the log-prob of an action with positive advantage lowers the loss (inside the clip)
    inside = np.abs(np.exp(newlogprob - logprob) - 1) <= 0.2
    signs = np.sign(advantages - advantages.mean() if norm_adv else advantages)
    grads = inputs["newlogprob"].grad.numpy()
    assert (np.sign(grads[inside]) == -signs[inside]).all()
    assert (grads[~inside & (np.sign(newlogprob - logprob) == signs)] == 0).all()


def test_value_norm_matches_numpy_statistics(script):
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (7, 100, 1, 33)]
    norm = script.ValueNorm()
    for batch in batches:
        norm.update(torch.tensor(batch))
    data = np.concatenate(batches)
    assert norm.mean.item() == pytest.approx(data.mean(), rel=1e-12)
    assert norm.var.item() == pytest.approx(data.var(), rel=1e-12)
    x = torch.tensor([0.5, 4.0])  # float32, as the critic's values: the statistics are float64
    expected = (x.numpy() - data.mean()) / np.sqrt(data.var() + norm.epsilon)
    np.testing.assert_allclose(norm.normalize(x).numpy(), expected, rtol=1e-6)
    y = torch.tensor([-1.0, 2.0])
    np.testing.assert_allclose(
        norm.denormalize(y).numpy(), y.numpy() * np.sqrt(data.var() + norm.epsilon) + data.mean(), rtol=1e-6
    )
    assert norm.normalize(x).dtype == norm.denormalize(x).dtype == torch.float32
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)
    # constant targets (variance 0): epsilon keeps both directions finite and inverse to each other
    constant = script.ValueNorm()
    constant.update(torch.full((5,), 2.0))
    assert constant.var.item() == 0.0
    np.testing.assert_allclose(constant.normalize(x).numpy(), (x.numpy() - 2.0) / np.sqrt(1e-5), rtol=1e-6)
    torch.testing.assert_close(constant.denormalize(constant.normalize(x)), x)


def test_downsample_is_the_8x8_mean_within_rounding():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(88, 40, 3), dtype=np.uint8)
    small = utils.downsample(frame)
    exact = frame.reshape(11, 8, 5, 8, 3).mean(axis=(1, 3))
    assert small.shape == (11, 5, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(float) - exact).max() <= 0.5 + 1e-9


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    utils.save_checkpoint(str(path), {"algorithm": "mappo", "x": 1})

    def crash(state, f, *args, **kwargs):  # a write that fails halfway, leaving a truncated file
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        utils.save_checkpoint(str(path), {"algorithm": "mappo", "x": 2})
    assert utils.read_file(str(path), "--resume")["x"] == 1, "a failed write must leave the previous checkpoint"
    assert os.listdir(tmp_path) == ["ck.pt"], "and no temporary file"


def test_mask_keeps_a_trained_slot_in_every_environment(bernoulli_mask_script):
    np.random.seed(0)
    for players in (1, 2, 7):
        mask = bernoulli_mask_script.sample_mask(5000, players, p=0.9)
        assert mask.shape == (5000, players) and mask.dtype == bool
        assert not mask.all(axis=1).any()
    assert not bernoulli_mask_script.sample_mask(1000, 4, p=0.0).any()
    full = bernoulli_mask_script.sample_mask(40_000, 4, p=1.0)
    assert (full.sum(axis=1) == 3).all()
    # the slot given back to theta is drawn uniformly: each of the 4 positions 1/4 of the time
    # (binomial std 0.0022; 0.015 is 7 of them)
    np.testing.assert_allclose((~full).mean(axis=0), 0.25, atol=0.015)


@pytest.mark.parametrize("players, p", [(2, 0.5), (7, 0.5), (3, 0.9)])
def test_mask_fraction_matches_p_after_the_correction(bernoulli_mask_script, players, p):
    # Exact law of one environment's fictitious count: Binomial(players, p), with `players` mapped
    # to players - 1 by the correction. Expectation and variance by enumeration.
    law = {}
    for k in range(players + 1):
        probability = math.comb(players, k) * p**k * (1 - p) ** (players - k)
        count = min(k, players - 1)
        law[count] = law.get(count, 0.0) + probability
    mean = sum(c * q for c, q in law.items()) / players
    std = math.sqrt(sum((c / players - mean) ** 2 * q for c, q in law.items()))
    num_envs = 200_000
    np.random.seed(1)
    fraction = bernoulli_mask_script.sample_mask(num_envs, players, p).mean()
    # |Z| > 5 has probability 5.7e-7: this cannot fail by chance more than once in a million runs
    assert abs(fraction - mean) < 5 * std / math.sqrt(num_envs)
    assert mean < p  # the correction makes the realised fraction a little less than p


@pytest.mark.parametrize("name", [s for s in MIXED_PLAY_SCRIPTS if hasattr(importlib.import_module(s), "snapshot_of")])
def test_snapshots_are_frozen_copies(name):
    """A pool's or memory's snapshot of theta never trains, and theta's training never moves it."""
    script = importlib.import_module(name)
    theta, _ = make_nets(script)
    snapshot = script.snapshot_of(theta)
    before = {k: v.clone() for k, v in snapshot.state_dict().items()}
    assert not any(p.requires_grad for p in snapshot.parameters())
    optimizer = torch.optim.SGD(theta.parameters(), lr=1.0)
    rgb, vector = torch.randint(0, 256, (4, 5, 5, 3), dtype=torch.uint8), torch.randn(4, 2)
    theta.get_action(rgb, vector, theta.initial_state(4, "cpu"), torch.zeros(4))[1].sum().backward()
    optimizer.step()
    assert not torch.equal(theta.policy.weight, snapshot.policy.weight), "theta moved"
    for key, value in snapshot.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_ppo_ignores_the_slots_theta_does_not_play(mixed_script):
    """Rewards and actions recorded for slots phi or a past self played do not change theta's loss or gradient."""
    T, E, P = 8, 2, 3
    rows = E * P
    torch.manual_seed(0)
    actor = mixed_script.Actor(FakeEnvs, mixed_script.Args(hidden_size=16))
    args = SimpleNamespace(clip_coef=0.2, norm_adv=True, clip_vloss=True, ent_coef=0.01, vf_coef=0.5)
    trained = torch.tensor([True, False, True, False, True, True])
    rgb, vector = torch.randint(0, 256, (T * rows, 5, 5, 3), dtype=torch.uint8), torch.randn(T * rows, 2)
    dones = torch.zeros(T, rows)
    dones[4, 1] = dones[5, 2] = 1
    values, logprobs = torch.randn(T, rows), torch.randn(T, rows) - 2.0
    rewards, actions = torch.randn(T, rows), torch.randint(0, 8, (T, rows))

    def loss_and_grad(rewards, actions):
        advantages, returns = mixed_script.compute_gae(
            rewards, values, dones, torch.zeros(rows), torch.zeros(rows), 0.99, 0.95
        )
        _, newlogprob, entropy, _, _ = actor.get_action(
            rgb, vector, actor.initial_state(rows, "cpu"), dones.flatten(), actions.flatten()
        )
        newvalue = values.flatten() + 0.3  # stands in for the critic's output
        actor.zero_grad()
        loss, _ = mixed_script.ppo_loss(
            newlogprob,
            entropy,
            newvalue,
            logprobs.flatten(),
            advantages.flatten(),
            values.flatten(),
            returns.flatten(),
            trained.repeat(T),
            args,
        )
        loss.backward()
        return loss.item(), actor.policy.weight.grad.clone()

    loss, grad = loss_and_grad(rewards, actions)
    changed_rewards, changed_actions = rewards.clone(), actions.clone()
    changed_rewards[:, ~trained] += 10.0
    changed_actions[:, ~trained] = (changed_actions[:, ~trained] + 3) % 8
    loss2, grad2 = loss_and_grad(changed_rewards, changed_actions)
    assert loss2 == pytest.approx(loss, abs=1e-6)
    torch.testing.assert_close(grad2, grad)

    # ...while the same change on a trained slot does change it (the test can fail)
    changed_rewards[:, 0] += 10.0
    assert loss_and_grad(changed_rewards, actions)[0] != pytest.approx(loss, abs=1e-6)


def test_default_torch_threads_leave_the_environment_workers_their_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert utils.num_env_workers(16) == 8 and utils.num_env_workers(4) == 4 and utils.num_env_workers(16, 3) == 3
    assert utils.default_torch_threads(16) == 1  # every core runs a worker: torch still gets one thread
    assert utils.default_torch_threads(4) == 4 and utils.default_torch_threads(16, 3) == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert utils.default_torch_threads(8) == 1


def test_time_shares_book_the_time_since_the_previous_mark(monkeypatch):
    clock = iter([10.0, 11.0, 14.0, 15.0, 20.0, 26.0, 27.0])
    monkeypatch.setattr(utils.time, "perf_counter", lambda: next(clock))
    timer = utils.TimeShares(torch.device("cpu"))  # the period starts at 10
    timer.mark("act")  # 11: 1 s of act
    timer.mark("env")  # 14: 3 s of env
    timer.mark("act")  # 15: 1 more s of act
    assert timer.shares() == {"act": 2 / 10, "env": 3 / 10}  # at 20: a period of 10 s, the last 5 booked to none
    timer.mark("update")  # 26: the 6 s since the new period started
    assert timer.shares() == {"update": 6 / 7}  # at 27
