"""What rpm_mappo.py adds to MAPPO (the ranked policy memory), its functions and a run end to end.
The masked PPO loss is tested for every mixed-play script in tests/test_algorithm.py."""

import math
from collections import deque

import numpy as np
import pytest
import torch
from conftest import run_script, spawned_workers
from test_fsp_mappo import sharp_actor
from test_mappo import error_line, only_run_dir, scalars

from eval_scenarios import CheckpointPolicy
from rpm_mappo import memory_action, memory_mask, memory_snapshots, rpm_key, sample_memory


def test_memory_mask_plays_all_co_player_slots_of_a_share_of_the_environments():
    np.random.seed(0)
    num_envs = 40_000
    for players in (1, 2, 7):
        mask = memory_mask(num_envs, players, prob=0.3)
        assert mask.shape == (num_envs, players) and mask.dtype == bool
        # an environment plays the memory on all its slots but one, or not at all
        assert set(mask.sum(axis=1)) <= {0, players - 1}
    assert not memory_mask(1000, 4, prob=0.0).any()
    full = memory_mask(num_envs, 4, prob=1.0)
    assert (full.sum(axis=1) == 3).all()
    # theta's slot is drawn uniformly: each of the 4 positions 1/4 of the time (binomial std 0.0022)
    np.testing.assert_allclose((~full).mean(axis=0), 0.25, atol=0.015)
    # the share of memory environments is prob: binomial std sqrt(0.3 * 0.7 / 40000) = 0.0023, 5 std
    share = memory_mask(num_envs, 3, prob=0.3).any(axis=1).mean()
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / num_envs)


def test_keys_bucket_returns_by_the_slice():
    assert rpm_key(0.0, 0.01) == 0
    assert rpm_key(1.234, 0.01) == 123
    assert rpm_key(1.239, 0.01) == 123  # floor, not round
    assert rpm_key(0.3, 0.1) == 3  # 0.3 / 0.1 = 2.9999999999999996 in floats: on the edge, the upper band
    assert rpm_key(-0.05, 0.1) == -1  # negative returns band downwards
    assert rpm_key(17.9, 1.0) == 17
    assert rpm_key(0.019, 0.02) == 0 and rpm_key(0.021, 0.02) == 1


def test_sampling_is_uniform_over_keys_then_within_the_key():
    # key 0 holds 1 snapshot, key 5 holds 9: a key first, so the lone snapshot is drawn half of the time
    # (a uniform draw over snapshots would give 1/10), and each of key 5's 1/18
    memory = {0: deque(["a"]), 5: deque(list("bcdefghij"))}
    assert memory_snapshots(memory) == list("abcdefghij")
    np.random.seed(0)
    draws = sample_memory(memory, 90_000)
    assert draws.min() >= 0 and draws.max() < 10
    frequency = np.bincount(draws, minlength=10) / len(draws)
    # binomial std at p = 1/2: 0.0017; at p = 1/18: 0.00076
    assert abs(frequency[0] - 0.5) < 0.01
    np.testing.assert_allclose(frequency[1:], 1 / 18, atol=0.004)
    # one key: uniform within it
    np.testing.assert_allclose(np.bincount(sample_memory({3: deque("xyz")}, 30_000)) / 30_000, 1 / 3, atol=0.015)


def test_each_memory_row_plays_its_own_snapshot():
    theta, snapshots = sharp_actor(0, 1), [sharp_actor(1, 3), sharp_actor(2, 5)]
    owner = np.array([-1, 1, 0, -1])
    rows = len(owner)
    rgb, vector, done = torch.randint(0, 256, (rows, 5, 5, 3), dtype=torch.uint8), torch.randn(rows, 2), torch.zeros(rows)
    state = theta.initial_state(rows, "cpu")
    action, logprob, _, memory_state = memory_action(theta, snapshots, owner, rgb, vector, state, state, done)
    assert action.tolist() == [1, 5, 3, 1]
    _, expected, _, _, _ = theta.get_action(rgb, vector, state, done, action)
    torch.testing.assert_close(logprob[owner < 0], expected[owner < 0])
    assert (memory_state[0][:, [0, 3]] == 0).all() and (memory_state[0][:, [1, 2]] != 0).all()


@pytest.mark.slow
def test_smoke_run_fills_the_memory_checkpoints_resumes_and_is_evaluated(tmp_path, tiny_flags):
    before = spawned_workers()
    # episodes of 20 steps in rollouts of 16: the first ends in iteration 2, so the first snapshot (due from
    # iteration 1) waits for the start of iteration 3, keyed by that episode's return
    result = run_script(
        "rpm_mappo.py",
        *tiny_flags,
        "--total-timesteps",
        "128",
        "--rpm-save-every",
        "1",
        "--rpm-sample-prob",
        "1",
        "--rpm-bucket-size",
        "3",
        "--checkpoint-every",
        "1",
        cwd=tmp_path,
    )
    assert "iter 4/4" in result.stdout and "memory 2 in 1 keys" in result.stdout
    run_dir = only_run_dir(tmp_path)
    logged = scalars(run_dir)
    for tag in [
        "charts/episodic_return",
        "mixed/episodic_return_all",
        "mixed/memory_fraction",
        "rpm/size",
        "rpm/keys",
        "rpm/mean_age",
        "losses/policy_loss",
    ]:
        assert tag in logged, tag
    assert [v for _, v in logged["rpm/size"]] == [0, 0, 1, 2]
    # no snapshot yet: theta plays every slot; then every environment plays the memory on one of its 2 slots
    assert [v for _, v in logged["mixed/memory_fraction"]] == [0.0, 0.0, 0.5, 0.5]
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert checkpoint["algorithm"] == "rpm_mappo" and checkpoint["iteration"] == 4
    assert checkpoint["args"]["rpm_slice"] == 0.01, "the substrate's slice from RPM's paper"
    assert [(entry["key"], entry["iteration"]) for entry in checkpoint["memory"]] == [(0, 2), (0, 3)]
    assert checkpoint["memory"][0]["actor"].keys() == checkpoint["actor"].keys()

    # resume: the memory comes back, and its key's FIFO keeps the newest 3
    result = run_script("rpm_mappo.py", "--resume", f"{run_dir}/checkpoint.pt", "--total-timesteps", "256", cwd=tmp_path)
    assert "iter 8/8" in result.stdout and only_run_dir(tmp_path) == run_dir
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert [entry["iteration"] for entry in checkpoint["memory"]] == [4, 6, 7]
    assert spawned_workers() - before == set(), "environment workers outlived the run"

    policy = CheckpointPolicy(f"{run_dir}/checkpoint.pt")
    assert torch.equal(policy.actor.policy.weight, checkpoint["actor"]["policy.weight"])


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--rpm-sample-prob", "-0.1"], "error: --rpm-sample-prob is a probability and must be in [0, 1], got -0.1"),
        (["--rpm-slice", "0"], "error: --rpm-slice must be > 0, got 0.0"),
        (["--rpm-bucket-size", "0"], "error: --rpm-bucket-size must be at least 1, got 0"),
        (["--rpm-save-every", "0"], "error: --rpm-save-every must be at least 1, got 0"),
    ],
)
def test_bad_flags_get_one_line_errors(tmp_path, flags, expected):
    assert error_line(run_script("rpm_mappo.py", *flags, cwd=tmp_path, check=False)) == expected
