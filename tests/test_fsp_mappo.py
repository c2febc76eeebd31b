"""What fsp_mappo.py adds to MAPPO (the pool of past selves), its functions and a run end to end.
The mask and the masked PPO loss are tested for every mixed-play script in tests/test_algorithm.py."""

import numpy as np
import pytest
import torch
from conftest import run_script, spawned_workers
from test_algorithm import FakeEnvs
from test_mappo import error_line, only_run_dir, scalars

from eval_scenarios import CheckpointPolicy
from fsp_mappo import Actor, Args, pool_action, pool_probabilities


def test_pool_probabilities_against_hand_computations():
    np.testing.assert_allclose(pool_probabilities([None, 0.3, 0.1], "uniform"), [1 / 3] * 3)
    np.testing.assert_allclose(pool_probabilities([None, 0.3, 0.1], "latest"), [0, 0, 1])
    # prioritised: x = min-max normalised score, unplayed x = 0; weight (1 - x)^2 + 0.05
    # scores [None, 0, 1, 0.5] -> x [0, 0, 1, 0.5] -> weights [1.05, 1.05, 0.05, 0.3], sum 2.45
    np.testing.assert_allclose(
        pool_probabilities([None, 0.0, 1.0, 0.5], "prioritised"), np.array([1.05, 1.05, 0.05, 0.3]) / 2.45
    )
    # scale-free, and equal scores (or none played yet) give the uniform draw
    np.testing.assert_allclose(
        pool_probabilities([None, 10.0, 30.0, 20.0], "prioritised"), np.array([1.05, 1.05, 0.05, 0.3]) / 2.45
    )
    np.testing.assert_allclose(pool_probabilities([2.0, 2.0], "prioritised"), [0.5, 0.5])
    np.testing.assert_allclose(pool_probabilities([None], "prioritised"), [1.0])


def sharp_actor(seed, action):
    torch.manual_seed(seed)
    actor = Actor(FakeEnvs, Args(hidden_size=16))
    with torch.no_grad():
        actor.policy.weight.zero_()
        actor.policy.bias.copy_(torch.nn.functional.one_hot(torch.tensor(action), 8) * 50.0)
    return actor


def test_each_pool_row_plays_its_own_snapshot_and_theta_keeps_its_log_probs():
    theta, pool = sharp_actor(0, 1), [sharp_actor(1, 3), sharp_actor(2, 5)]
    owner = np.array([-1, 0, 1, 0, -1])
    rows = len(owner)
    rgb, vector, done = torch.randint(0, 256, (rows, 5, 5, 3), dtype=torch.uint8), torch.randn(rows, 2), torch.zeros(rows)
    state = theta.initial_state(rows, "cpu")
    pool_state = (torch.full_like(state[0], 7.0), torch.full_like(state[1], -3.0))
    action, logprob, theta_state, new_pool_state = pool_action(theta, pool, owner, rgb, vector, state, pool_state, done)
    assert action.tolist() == [1, 3, 5, 3, 1]
    # theta's log-probs of the actions taken on its own rows (PPO reads no other row), and theta's
    # recurrent state moves on every row
    _, expected, _, _, expected_state = theta.get_action(rgb, vector, state, done, action)
    torch.testing.assert_close(logprob[owner < 0], expected[owner < 0])
    torch.testing.assert_close(theta_state[0], expected_state[0])
    # each snapshot's recurrent state moves on its own rows; theta's rows keep theirs
    assert (new_pool_state[0][:, [0, 4]] == 7.0).all() and (new_pool_state[0][:, [1, 2, 3]] != 7.0).all()
    assert (new_pool_state[1][:, [0, 4]] == -3.0).all() and (new_pool_state[1][:, [1, 2, 3]] != -3.0).all()
    assert (pool_state[0] == 7.0).all() and (pool_state[1] == -3.0).all(), "the caller's state is not changed in place"
    _, _, _, _, snapshot_state = pool[1].get_action(
        rgb[2:3], vector[2:3], (pool_state[0][:, 2:3], pool_state[1][:, 2:3]), done[2:3]
    )
    torch.testing.assert_close(new_pool_state[1][:, 2:3], snapshot_state[1])


@pytest.mark.slow
def test_smoke_run_fills_the_pool_checkpoints_resumes_and_is_evaluated(tmp_path, tiny_flags):
    before = spawned_workers()
    result = run_script(
        "fsp_mappo.py",
        *tiny_flags,
        "--total-timesteps",
        "128",
        "--pool-every",
        "1",
        "--pool-size",
        "2",
        "--pool-sampling",
        "prioritised",
        "--checkpoint-every",
        "1",
        cwd=tmp_path,
    )
    assert "iter 4/4" in result.stdout and "pool 2" in result.stdout
    run_dir = only_run_dir(tmp_path)
    logged = scalars(run_dir)
    for tag in [
        "charts/episodic_return",
        "mixed/episodic_return_all",
        "mixed/pool_fraction",
        "pool/size",
        "losses/policy_loss",
    ]:
        assert tag in logged, tag
    assert [v for _, v in logged["pool/size"]] == [1, 2, 2, 2]
    assert all(f in (0.0, 0.25, 0.5) for _, f in logged["mixed/pool_fraction"]), "a trained slot in every env"
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert checkpoint["algorithm"] == "fsp_mappo" and checkpoint["iteration"] == 4
    # the pool keeps the newest 2 snapshots, taken at the start of iterations 3 and 4
    assert [entry["iteration"] for entry in checkpoint["pool"]] == [2, 3]
    assert checkpoint["pool"][0]["actor"].keys() == checkpoint["actor"].keys()
    assert not torch.equal(checkpoint["pool"][0]["actor"]["policy.weight"], checkpoint["pool"][1]["actor"]["policy.weight"])

    result = run_script("fsp_mappo.py", "--resume", f"{run_dir}/checkpoint.pt", "--total-timesteps", "192", cwd=tmp_path)
    assert "iter 6/6" in result.stdout and only_run_dir(tmp_path) == run_dir
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert [entry["iteration"] for entry in checkpoint["pool"]] == [4, 5]
    assert spawned_workers() - before == set(), "environment workers outlived the run"

    # evaluation reads it like any script's checkpoint: theta, not a snapshot
    policy = CheckpointPolicy(f"{run_dir}/checkpoint.pt")
    assert torch.equal(policy.actor.policy.weight, checkpoint["actor"]["policy.weight"])


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--p", "1.5"], "error: --p is a probability and must be in [0, 1], got 1.5"),
        (["--pool-size", "0"], "error: --pool-size must be at least 1, got 0"),
        (["--pool-every", "0"], "error: --pool-every must be at least 1, got 0"),
    ],
)
def test_bad_flags_get_one_line_errors(tmp_path, flags, expected):
    assert error_line(run_script("fsp_mappo.py", *flags, cwd=tmp_path, check=False)) == expected
