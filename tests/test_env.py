"""MeltingPotVecEnv against real substrates."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, spawned_workers

import utils


@pytest.mark.parametrize(
    "substrate, players, rgb, world",
    [
        ("prisoners_dilemma_in_the_matrix__repeated", 2, (5, 5, 3), (15, 23, 3)),  # 40x40 view
        ("clean_up", 7, (11, 11, 3), (21, 30, 3)),  # 88x88 view
    ],
)
def test_batch_shapes_and_keys(substrate, players, rgb, world):
    envs = utils.MeltingPotVecEnv(substrate, num_envs=2, seed=0, num_workers=2)
    try:
        obs = envs.reset()
        assert envs.num_players == players
        assert set(obs) == {"rgb", "vector", "world"}
        assert obs["rgb"].shape == (2 * players, *rgb) and obs["rgb"].dtype == np.uint8
        assert obs["world"].shape == (2, *world) and obs["world"].dtype == np.uint8
        # the actor's inputs hold only what Melting Pot permits focal players, never the world
        permitted = utils.import_meltingpot().scenario.PERMITTED_OBSERVATIONS
        assert envs.vector_keys and set(envs.vector_keys) <= permitted - {"RGB"}
        assert "WORLD.RGB" not in envs.vector_keys
        assert obs["vector"].shape == (2 * players, envs.vector_dim) and obs["vector"].dtype == np.float32
        obs, rewards, dones, episodes = envs.step(np.zeros(2 * players, dtype=int))
        assert rewards.shape == dones.shape == (2 * players,)
        assert obs["rgb"].shape == (2 * players, *rgb)
    finally:
        envs.close()


def test_each_row_is_its_own_environment_and_slot_across_workers():
    """Row env * num_players + player must carry that player's action in and its observation out,
    across the worker boundary (3 environments on 2 workers: 2 + 1). Firing the interact beam
    (action 7) empties the firing player's READY_TO_SHOOT for a few steps, and nothing else
    changes while everyone else stands still: exactly one vector entry, in exactly that row."""
    envs = utils.MeltingPotVecEnv("pure_coordination_in_the_matrix__repeated", num_envs=3, seed=0, num_workers=2)
    try:
        players = envs.num_players
        vector = envs.reset()["vector"]
        for row in [1, 4, 2, 5, 0, 3]:
            actions = np.zeros(3 * players, dtype=int)
            actions[row] = 7
            fired = envs.step(actions)[0]["vector"]
            changed = np.argwhere(fired != vector)
            assert [r for r, _ in changed] == [row], f"firing in row {row} changed rows {changed[:, 0].tolist()}"
            for _ in range(4):  # stand still until the beam is ready again
                recovered = envs.step(np.zeros(3 * players, dtype=int))[0]["vector"]
            np.testing.assert_array_equal(recovered, vector)
    finally:
        envs.close()


def test_full_resolution_flag():
    envs = utils.MeltingPotVecEnv("prisoners_dilemma_in_the_matrix__repeated", 1, seed=0, downsample=False)
    try:
        obs = envs.reset()
        assert obs["rgb"].shape == (2, 40, 40, 3) and obs["world"].shape == (1, 120, 184, 3)
    finally:
        envs.close()


def test_automatic_reset_and_episode_statistics():
    """Random players eat apples on commons_harvest__open, so rewards occur in both environments (one
    per worker) within an episode or a few (how soon varies: the engine does not replay episodes):
    each episode's per-player returns must be the sums of exactly that environment's and that slot's
    step rewards (row env * 7 + player)."""
    envs = utils.MeltingPotVecEnv("commons_harvest__open", num_envs=2, seed=0, num_workers=2, max_episode_steps=20)
    rng = np.random.default_rng(0)
    try:
        envs.reset()
        players = envs.num_players
        running = np.zeros(2 * players)
        seen, rewarded = [], set()
        for t in range(1, 201):
            obs, rewards, dones, episodes = envs.step(rng.integers(0, envs.num_actions, size=2 * players))
            running += rewards
            assert dones.all() == (t % 20 == 0) and dones.any() == (t % 20 == 0)
            for episode in episodes:
                e = episode["env"]
                assert episode["length"] == 20
                np.testing.assert_allclose(episode["returns"], running[players * e : players * (e + 1)], rtol=1e-6)
                assert episode["collective_return"] == pytest.approx(running[players * e : players * (e + 1)].sum())
                seen.append((t, e))
                if np.any(episode["returns"]):
                    rewarded.add(e)
            running[dones] = 0
            if t % 20 == 0 and rewarded == {0, 1}:
                break
        assert seen == [(20 * k, e) for k in range(1, t // 20 + 1) for e in (0, 1)]
        assert rewarded == {0, 1}, "rewards must occur in both workers' environments for this test to mean anything"
    finally:
        envs.close()


def rollout(seed, steps=40):
    # The same action for every player: Melting Pot may give the players each other's spawn points
    # from one process to the next (docs/reproducibility.md), which WORLD.RGB cannot tell apart.
    envs = utils.MeltingPotVecEnv("prisoners_dilemma_in_the_matrix__repeated", num_envs=2, seed=seed, num_workers=2)
    try:
        frames = [envs.reset()["world"]]
        for t in range(steps):
            frames.append(envs.step(np.full(4, t % envs.num_actions))[0]["world"])
        return np.stack(frames)
    finally:
        envs.close()


def test_same_seed_same_episodes():
    a, b, c = rollout(5), rollout(5), rollout(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_prepared_environment_is_swapped_in_at_the_episode_end():
    env = utils._Substrate("prisoners_dilemma_in_the_matrix__repeated", downsample=True, max_episode_steps=3)
    try:
        env.reset()
        first = env.env
        env.prepare()
        spare, timestep = env.spare
        assert spare is not first
        env.prepare()  # a second call keeps the one already built
        assert env.spare[0] is spare
        for _ in range(2):
            assert env.step([0, 0])[4] is False
        rgb, vector, world, _, done, episode = env.step([0, 0])
        assert done and episode["length"] == 3
        # the episode's end took the prepared environment and its first observation, and built nothing
        assert env.env is spare and env.spare is None
        expected = env._observe(timestep)
        for got, want in zip((rgb, vector, world), expected):
            np.testing.assert_array_equal(got, want)
        # unprepared, an episode's end resets the environment in place, as before
        for _ in range(3):
            done = env.step([0, 0])[4]
        assert done and env.env is spare
    finally:
        env.close()


def test_prepared_resets_keep_episodes_reproducible():
    def run(seed):
        envs = utils.MeltingPotVecEnv(
            "prisoners_dilemma_in_the_matrix__repeated", num_envs=2, seed=seed, num_workers=2, max_episode_steps=10
        )
        try:
            frames, ends = [envs.reset()["world"]], []
            for t in range(30):
                if t % 8 == 0:  # as the scripts do after every rollout
                    envs.prepare_resets()
                obs, _, dones, episodes = envs.step(np.full(4, t % envs.num_actions))
                frames.append(obs["world"])
                ends += [(t, episode["env"], episode["length"]) for episode in episodes]
            return np.stack(frames), ends
        finally:
            envs.close()

    (a, ends), (b, _) = run(5), run(5)
    np.testing.assert_array_equal(a, b)
    assert ends == [(t, e, 10) for t in (9, 19, 29) for e in (0, 1)]


def test_dead_worker_stops_with_one_line_naming_it():
    envs = utils.MeltingPotVecEnv("coins", num_envs=2, seed=0, num_workers=2)
    envs.reset()
    os.kill(envs.processes[1].pid, signal.SIGKILL)
    envs.processes[1].join()
    with pytest.raises(utils.EnvWorkerError) as error:
        envs.step(np.zeros(4, dtype=int))
    message = str(error.value)
    assert "worker 1" in message and "coins" in message and "\n" not in message
    assert not any(p.is_alive() for p in envs.processes)


def test_crashing_worker_reports_its_error():
    envs = utils.MeltingPotVecEnv("coins", num_envs=2, seed=0, num_workers=2)
    envs.reset()
    with pytest.raises(utils.EnvWorkerError) as error:
        envs.step(np.full(4, 99))  # an action outside the action set makes the engine raise
    assert str(error.value) == "error: environment worker 0 (substrate coins) crashed: IndexError: tuple index out of range"
    assert not any(p.is_alive() for p in envs.processes)


def test_no_workers_remain_after_close_or_exception():
    before = spawned_workers()
    code = (
        "import numpy as np, utils\n"
        "if __name__ == '__main__':\n"
        "    envs = utils.MeltingPotVecEnv('coins', num_envs=2, seed=0, num_workers=2)\n"
        "    envs.reset()\n"
        "    raise RuntimeError('boom')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "boom" in result.stderr
    assert spawned_workers() - before == set()


def test_lean_import_skips_tensorflow_and_keeps_torch_importable():
    code = (
        "import sys, utils\n"
        "mp = utils.import_meltingpot()\n"
        "assert 'tensorflow' not in sys.modules, 'stand-in left behind'\n"
        "import torch\n"
        "assert 'coins' in mp.substrate.SUBSTRATES\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
