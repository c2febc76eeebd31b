"""The Melting Pot policy adapter (eval_scenarios.CheckpointPolicy) and eval_scenarios.py."""

import glob
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, run_script, spawned_workers
from test_mappo import error_line

import eval_scenarios
import study
import utils
from bidist_mappo import Actor
from eval_scenarios import (
    CheckpointPolicy,
    Target,
    check_bots,
    confidence_interval,
    custom_factory,
    markdown_table,
    read_normalise,
    resolve_scenarios,
    summarise,
)

SUBSTRATE = "pure_coordination_in_the_matrix__repeated"


def real_timesteps(steps=12, seed=0):
    """Player 0's timesteps of a real episode start under random actions."""
    substrate = utils.import_meltingpot().substrate
    rng = np.random.default_rng(seed)
    with substrate.build(SUBSTRATE, roles=substrate.get_config(SUBSTRATE).default_player_roles) as env:
        timestep = env.reset()
        timesteps = [timestep]
        for _ in range(steps - 1):
            timestep = env.step(list(rng.integers(0, 8, size=2)))
            timesteps.append(timestep)
    return [t._replace(observation=t.observation[0], reward=t.reward[0]) for t in timesteps]


def save_fake_checkpoint(path, algorithm="bidist_mappo", hidden=16):
    """A checkpoint as the scripts write it, with theta and a different phi."""
    substrate = utils.import_meltingpot().substrate
    with substrate.build(SUBSTRATE, roles=substrate.get_config(SUBSTRATE).default_player_roles) as env:
        spec = env.observation_spec()[0]
    keys = utils.permitted_keys(spec)
    sizes = SimpleNamespace(rgb_shape=(5, 5, 3), vector_dim=sum(int(np.prod(spec[k].shape)) for k in keys), num_actions=8)
    args = SimpleNamespace(downsample=True, hidden_size=hidden)
    torch.manual_seed(0)
    theta, phi = Actor(sizes, args), Actor(sizes, args)
    with torch.no_grad():  # a policy head far from uniform, so that a wrong network shows
        theta.policy.weight.normal_(0, 1.0)
        phi.policy.weight.normal_(0, 1.0)
    checkpoint = {
        "algorithm": algorithm,
        "substrate": SUBSTRATE,
        "args": {"downsample": True, "hidden_size": hidden},
        "actor": theta.state_dict(),
    }
    if algorithm == "bidist_mappo":
        checkpoint["phi"] = phi.state_dict()
    torch.save(checkpoint, path)
    return theta, phi


def test_adapter_matches_the_training_network_on_a_real_sequence(tmp_path):
    theta, _ = save_fake_checkpoint(tmp_path / "c.pt")
    policy = CheckpointPolicy(str(tmp_path / "c.pt"))
    timesteps = real_timesteps()

    state, adapter_logits = policy.initial_state()[0], []
    for timestep in timesteps:
        logits, state = policy.logits(timestep, state)
        adapter_logits.append(logits)

    # the training path: the vectorised env's preprocessing, the whole sequence in one unroll
    features = [utils.player_features(t.observation, policy.vector_keys, True) for t in timesteps]
    rgb = torch.tensor(np.stack([f[0] for f in features]))
    vector = torch.tensor(np.stack([f[1] for f in features]))
    done = torch.zeros(len(timesteps))
    done[0] = 1
    with torch.no_grad():
        _, _, _, logits, _ = theta.get_action(rgb, vector, theta.initial_state(1, "cpu"), done)
    torch.testing.assert_close(torch.stack(adapter_logits), logits, rtol=1e-5, atol=1e-6)

    state = policy.initial_state()
    action, next_state = policy.step(timesteps[0], state)
    assert 0 <= action < 8 and next_state[0][0].shape == (1, 1, 16) and next_state[2] == 1
    assert policy.step(timesteps[0], state)[0] == action, "a slot's sampling depends only on its state"
    # sampling follows the distribution: a sharp policy picks its mode
    with torch.no_grad():
        policy.actor.policy.bias.copy_(torch.tensor([0, 0, 0, 40.0, 0, 0, 0, 0]))
    assert {policy.step(t, policy.initial_state())[0] for t in timesteps} == {3}


def test_a_bidist_checkpoint_gives_theta_not_phi(tmp_path):
    theta, phi = save_fake_checkpoint(tmp_path / "c.pt")
    policy = CheckpointPolicy(str(tmp_path / "c.pt"))
    for name, value in policy.actor.state_dict().items():
        assert torch.equal(value, theta.state_dict()[name])
    assert not torch.equal(policy.actor.policy.weight, phi.policy.weight)


def test_a_new_script_beside_evaluation_is_evaluated_with_no_edit(tmp_path, monkeypatch):
    # a copy of mappo.py under a new name, its own Actor recognisable by a different hidden size
    (tmp_path / "copy_mappo.py").write_text(open(os.path.join(os.path.dirname(eval_scenarios.__file__), "mappo.py")).read())
    monkeypatch.setattr(eval_scenarios, "HERE", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert eval_scenarios.algorithm_scripts() == ["copy_mappo"]
    theta, _ = save_fake_checkpoint(tmp_path / "c.pt", algorithm="copy_mappo", hidden=8)
    policy = CheckpointPolicy(str(tmp_path / "c.pt"))
    assert type(policy.actor).__module__ == "copy_mappo"
    for name, value in policy.actor.state_dict().items():
        assert torch.equal(value, theta.state_dict()[name])
    state = policy.initial_state()
    assert 0 <= policy.step(real_timesteps(steps=1)[0], state)[0] < 8


def test_a_script_that_breaks_the_contract_is_named_with_what_it_lacks(tmp_path, monkeypatch):
    source = open(os.path.join(os.path.dirname(eval_scenarios.__file__), "mappo.py")).read()
    # a copy whose Args lost a flag the study sets, and whose Actor lost the method evaluation calls
    broken = source.replace("    snapshot_every: int = 50\n", "").replace("def get_states(", "def states(")
    assert broken.count("snapshot_every: int") == 0 and "def get_states(" not in broken
    (tmp_path / "broken_method.py").write_text(broken)
    monkeypatch.setattr(eval_scenarios, "HERE", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    save_fake_checkpoint(tmp_path / "c.pt", algorithm="broken_method", hidden=8)
    with pytest.raises(SystemExit) as error:
        CheckpointPolicy(str(tmp_path / "c.pt"))
    assert str(error.value) == (
        f"error: --checkpoint {tmp_path / 'c.pt'} was written by broken_method.py, which breaks "
        f"the contract of a training script: no Args.snapshot_every, Actor.get_states (see "
        f"docs/add-your-own-method.md)"
    )


def test_adapter_refuses_foreign_files(tmp_path):
    # a script someone trained with elsewhere and did not copy here
    assert "elsewhere_mappo" not in eval_scenarios.algorithm_scripts()
    complete = {"substrate": SUBSTRATE, "args": {"downsample": True, "hidden_size": 16}, "actor": {}}
    torch.save({"algorithm": "elsewhere_mappo", **complete}, tmp_path / "other.pt")
    with pytest.raises(SystemExit) as error:
        CheckpointPolicy(str(tmp_path / "other.pt"), flag="--background")
    scripts = ", ".join(f"{s}.py" for s in eval_scenarios.algorithm_scripts())
    assert str(error.value) == (
        f"error: --background {tmp_path / 'other.pt'} was written by elsewhere_mappo.py, which "
        f"is not a training script here (no such file in the project folder); training scripts: "
        f"{scripts} (the contract: docs/add-your-own-method.md)"
    )
    assert "mappo.py" in scripts and "bidist_mappo.py" in scripts
    torch.save({"algorithm": "utils", **complete}, tmp_path / "utils.pt")  # a file here, but no training script
    with pytest.raises(SystemExit, match=r"was written by utils.py, which is not a training script here \(it defines no"):
        CheckpointPolicy(str(tmp_path / "utils.pt"))
    torch.save({"algorithm": "../utils", **complete}, tmp_path / "path.pt")  # a name is never a path
    with pytest.raises(SystemExit, match=r"was written by ../utils.py, which is not a training script here \(no such"):
        CheckpointPolicy(str(tmp_path / "path.pt"))
    with pytest.raises(SystemExit, match="no such file"):
        CheckpointPolicy(str(tmp_path / "none.pt"))


class RunsCodeOnLoad:
    """What a crafted checkpoint holds: unpickling it calls `open(marker, "w")`, a file appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_crafted_checkpoint_runs_no_code_on_any_load_path(tmp_path, cooking_checkpoint):
    """Evaluation (focal and background), resume and the study read a file that runs code when unpickled:
    each refuses it in one line naming the flag and the foreign object, and nothing ran."""
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save(
        {
            "algorithm": "mappo",
            "substrate": SUBSTRATE,
            "args": {"downsample": True, "hidden_size": 16},
            "actor": RunsCodeOnLoad(str(marker)),
        },
        evil,
    )
    with pytest.raises(SystemExit) as error:
        CheckpointPolicy(str(evil), flag="--background")
    assert str(error.value) == (
        f"error: --background {evil} holds objects other than tensors and plain values "
        f"(io.open); refused, since loading it could run code"
    )
    assert not marker.exists()
    for script, flags in [
        ("eval_scenarios.py", ["--checkpoint", cooking_checkpoint, "--background", "evil.pt"]),
        ("eval_scenarios.py", ["--checkpoint", "evil.pt"]),
        ("mappo.py", [*TINY, "--resume", "evil.pt"]),
    ]:
        result = run_script(script, *flags, cwd=tmp_path, check=False)
        assert "evil.pt holds objects other than tensors and plain values (io.open)" in error_line(result)
        assert not marker.exists(), script
    with pytest.raises(SystemExit, match="--runs .*evil.pt holds objects other than tensors"):
        study.external_population(str(evil), "coins")
    assert not marker.exists()


def test_an_incomplete_or_foreign_checkpoint_gets_one_line(tmp_path):
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"algorithm": "mappo", "substrate": SUBSTRATE, "args": {"seed": 1}, "actor": {}}, incomplete)
    with pytest.raises(SystemExit) as error:
        CheckpointPolicy(str(incomplete), flag="--background")
    assert (
        str(error.value)
        == f"error: --background {incomplete} is not a complete checkpoint: no args.downsample, args.hidden_size"
    )
    torch.save({"algorithm": "mappo", "substrate": SUBSTRATE}, incomplete)
    with pytest.raises(SystemExit, match="is not a complete checkpoint: no args, actor$"):
        CheckpointPolicy(str(incomplete))
    torch.save(
        {"algorithm": "mappo", "substrate": "clean_upp", "args": {"downsample": True, "hidden_size": 16}, "actor": {}},
        incomplete,
    )
    with pytest.raises(SystemExit, match="names 'clean_upp', which is not a Melting Pot substrate"):
        CheckpointPolicy(str(incomplete))
    # the right keys, the wrong weights: mappo.py's network at hidden size 16 does not take these
    save_fake_checkpoint(incomplete, algorithm="mappo", hidden=16)
    checkpoint = torch.load(incomplete, weights_only=True)
    checkpoint["args"]["hidden_size"] = 32
    torch.save(checkpoint, incomplete)
    with pytest.raises(
        SystemExit, match=r"its actor does not fit mappo.py's network on pure_coordination_in_the_matrix__repeated \(Error"
    ):
        CheckpointPolicy(str(incomplete), flag="--background")
    # an exported population evaluates but is not a training state; a truncated checkpoint is unreadable
    save_fake_checkpoint(incomplete, algorithm="mappo", hidden=16)
    line = error_line(run_script("mappo.py", "--resume", str(incomplete), "--hidden-size", "16", cwd=tmp_path, check=False))
    assert line == (
        f"error: --resume {incomplete} holds no training state (run_name, iteration, global_step, critic, "
        f"value_norm, optimizer, rng missing): a population exported by study.py --results evaluates but "
        f"cannot be resumed"
    )
    data = incomplete.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match=r"truncated.pt is not a readable checkpoint \(\w+\)$"):
        CheckpointPolicy(str(tmp_path / "truncated.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match=r"text.pt is not a readable checkpoint \(\w+\)$"):
        CheckpointPolicy(str(tmp_path / "text.pt"))


def test_rng_state_is_plain_data_and_older_checkpoints_still_load(tmp_path):
    """The RNG state a checkpoint holds needs no unpickling allowlist and restores every generator; a
    checkpoint of before (numpy's state as an array) loads through the numpy-only allowlist."""
    np.random.seed(3), random.seed(3), torch.manual_seed(3)
    utils.save_checkpoint(str(tmp_path / "new.pt"), {"rng": utils.rng_state()})
    expected = np.random.random(3), random.random(), torch.rand(2)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "new.pt")) == []
    np.random.seed(4), random.seed(4), torch.manual_seed(4)
    utils.set_rng_state(utils.read_file(str(tmp_path / "new.pt"), "--resume")["rng"])
    np.testing.assert_array_equal(np.random.random(3), expected[0])
    assert random.random() == expected[1] and torch.equal(torch.rand(2), expected[2])

    save_fake_checkpoint(tmp_path / "old.pt", algorithm="mappo")
    old = torch.load(tmp_path / "old.pt", weights_only=True)
    np.random.seed(5)
    old["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "old.pt")
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "old.pt"))
    expected = np.random.random(3)
    utils.set_rng_state(utils.load_checkpoint(str(tmp_path / "old.pt"))["rng"])
    np.testing.assert_array_equal(np.random.random(3), expected)
    CheckpointPolicy(str(tmp_path / "old.pt"))  # and evaluates


def test_confidence_interval_against_a_hand_computation():
    # mean 2.5, sample std sqrt(5/3), t(0.975, df=3) = 3.182446305
    assert confidence_interval([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-8)
    assert math.isnan(confidence_interval([1.0]))


def test_custom_background_samples_checkpoints_and_restricts_focal_observations(tmp_path):
    save_fake_checkpoint(tmp_path / "a.pt")
    save_fake_checkpoint(tmp_path / "b.pt", algorithm="mappo")
    mp = utils.import_meltingpot()
    policies = {str(tmp_path / n): CheckpointPolicy(str(tmp_path / n), flag="--background") for n in ("a.pt", "b.pt")}
    factory = custom_factory(mp, Target("custom", SUBSTRATE, tuple(policies), num_focal=1), policies)
    assert factory.num_focal_players() == 1
    random.seed(3)
    names = []
    with factory.build() as env:
        env.observables().background.names.subscribe(on_next=names.append)
        for _ in range(8):
            timestep = env.reset()
            (observation,) = timestep.observation  # one focal player
            assert set(observation) <= mp.scenario.PERMITTED_OBSERVATIONS and "WORLD.RGB" not in observation
            assert {"RGB", "INVENTORY", "READY_TO_SHOOT"} <= set(observation)
            timestep = env.step([0])
    assert len(names) == 8 and all(len(n) == 1 for n in names), "one background slot, sampled per episode"
    assert {n[0] for n in names} == set(policies), "both background checkpoints are sampled"


def test_missing_bots_give_one_line_errors(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a)
    )
    with pytest.raises(
        SystemExit,
        match="error: scenario clean_up_0 has Melting Pot bots, which need TensorFlow: "
        "run `make bots`.*collaborative_cooking__asymmetric_2",
    ):
        check_bots(["clean_up_0"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    with pytest.raises(SystemExit, match="error: scenario clean_up_0 needs Melting Pot's bot assets, missing at .*clean_up"):
        check_bots(["clean_up_0"])
    assert check_bots(["collaborative_cooking__asymmetric_2", "territory__rooms_14"]) is False


def test_scenario_names_resolve_and_mismatches_are_refused():
    assert resolve_scenarios(["collaborative_cooking__asymmetric"], "collaborative_cooking__asymmetric", "c.pt") == [
        "collaborative_cooking__asymmetric_0",
        "collaborative_cooking__asymmetric_1",
        "collaborative_cooking__asymmetric_2",
    ]
    with pytest.raises(
        SystemExit, match="error: scenario clean_up_0 is on substrate clean_up, but --checkpoint c.pt was trained on coins"
    ):
        resolve_scenarios(["clean_up_0"], "coins", "c.pt")
    with pytest.raises(SystemExit, match="error: --scenarios 'clean_upp_0' is neither .*close matches: clean_up_0"):
        resolve_scenarios(["clean_upp_0"], "clean_up", "c.pt")


@pytest.fixture(scope="module")
def cooking_checkpoints(tmp_path_factory):
    """Checkpoints of tiny bidist_mappo.py and mappo.py runs on the substrate of the no-op scenario."""
    paths = []
    for script in ["bidist_mappo.py", "mappo.py"]:
        cwd = tmp_path_factory.mktemp("train")
        run_script(script, *TINY, "--substrate", "collaborative_cooking__asymmetric", "--total-timesteps", "32", cwd=cwd)
        paths += glob.glob(f"{cwd}/runs/*/checkpoint.pt")
    return paths


@pytest.fixture
def cooking_checkpoint(cooking_checkpoints):
    return cooking_checkpoints[0]


@pytest.mark.slow
def test_no_op_scenario_end_to_end(tmp_path, cooking_checkpoint):
    result = run_script(
        "eval_scenarios.py",
        "--checkpoint",
        cooking_checkpoint,
        "--scenarios",
        "collaborative_cooking__asymmetric_2",
        "--num-episodes",
        "2",
        "--num-workers",
        "2",
        "--output",
        "out/results",
        "--video",
        "videos",
        cwd=tmp_path,
    )
    assert "| collaborative_cooking__asymmetric_2 | 2 |" in result.stdout
    table = pd.read_csv(tmp_path / "out/results.csv")
    assert list(table.columns) == [
        "scenario",
        "substrate",
        "episodes",
        "focal_per_capita_return",
        "ci95",
        "background_per_capita_return",
    ]
    report = json.load(open(tmp_path / "out/results.json"))
    (scenario,) = report["results"]
    episodes = scenario["episode_results"]
    assert len(episodes) == 2 and all(len(e["focal_player_returns"]) == 1 for e in episodes)
    assert scenario["focal_per_capita_return"] == pytest.approx(np.mean([e["focal_per_capita_return"] for e in episodes]))
    assert all(e["background_player_names"] == ["noop_bot"] for e in episodes)
    video = cv2.VideoCapture(str(tmp_path / "videos/collaborative_cooking__asymmetric_2.mp4"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) > 100 and video.get(cv2.CAP_PROP_FRAME_WIDTH) == 72


def test_episodes_step_every_slot_in_the_thread_that_steps_the_substrate(monkeypatch):
    """step_slots_inline: Melting Pot's Population steps its slots one after the other in the calling thread
    (not each in a thread of its own, which costs an evaluation worker a quarter of its CPU time), in slot order,
    with each slot's state its own, and a policy's error reaches the caller; run_episode makes it so first."""
    import dm_env

    utils.import_meltingpot()
    from meltingpot.utils.scenarios.population import Population

    calls = []

    class Recorder:
        def initial_state(self):
            return 0

        def step(self, timestep, prev_state):
            if timestep.observation == "boom":
                raise ValueError("a policy's error")
            calls.append((threading.current_thread(), timestep.observation, prev_state))
            return 10 + prev_state, prev_state + 1

        def close(self):
            pass

    eval_scenarios.step_slots_inline()
    population = Population(policies={"r": Recorder()}, names_by_role={"role": ["r"]}, roles=["role", "role"])
    population.reset()
    for expected in [(10, 10), (11, 11)]:
        population.send_timestep(dm_env.restart(["slot 0", "slot 1"])._replace(reward=[0.0, 0.0]))
        assert population.await_action() == expected
    assert [(thread, slot) for thread, slot, _ in calls] == [(threading.current_thread(), f"slot {i % 2}") for i in range(4)]
    assert [state for _, _, state in calls] == [0, 0, 1, 1], "each slot its own state"
    population.send_timestep(dm_env.restart(["boom", "boom"])._replace(reward=[0.0, 0.0]))
    with pytest.raises(ValueError, match="a policy's error"):
        population.await_action()
    population.close()

    def first(*args):
        raise RuntimeError("inline first")

    monkeypatch.setattr(eval_scenarios, "step_slots_inline", first)
    with pytest.raises(RuntimeError, match="inline first"):
        eval_scenarios.run_episode(Target("x", SUBSTRATE), 1, eval_scenarios.RANDOM_BACKGROUND, "cpu")


def test_episodes_play_with_onednn_off_and_leave_the_flag_as_it_was(monkeypatch):
    """episode_kernels: an episode's policies step with torch's oneDNN kernels off (a one-step LSTM at batch 1
    costs less without them), and the process gets its flag back when the episode ends, even by an error."""
    utils.import_meltingpot()
    from meltingpot.utils.evaluation import evaluation

    seen = []

    def play(population, substrate, num_episodes):
        seen.append(torch.backends.mkldnn.enabled)
        raise RuntimeError("episode over")

    monkeypatch.setattr(evaluation, "run_and_observe_episodes", play)
    target = Target("x", SUBSTRATE, (eval_scenarios.RANDOM_BACKGROUND,), 1)
    for before in [True, False]:
        torch.backends.mkldnn.enabled = before
        try:
            with pytest.raises(RuntimeError, match="episode over"):
                eval_scenarios.run_episode(target, 1, eval_scenarios.RANDOM_BACKGROUND, "cpu")
            assert torch.backends.mkldnn.enabled is before
        finally:
            torch.backends.mkldnn.enabled = True
    assert seen == [False, False]


@pytest.mark.slow
def test_same_seed_gives_the_same_episodes_whatever_the_workers(tmp_path):
    """The same --seed gives every episode the same seed and background draw with 1 or 2 workers.
    The returns themselves do not repeat: Melting Pot's engine assigns spawn points in an order
    that varies between builds (docs/reproducibility.md); measured here on pure_coordination, where
    the networks of save_fake_checkpoint (far from uniform) earn non-zero returns."""
    save_fake_checkpoint(tmp_path / "a.pt")
    save_fake_checkpoint(tmp_path / "b.pt", algorithm="mappo", hidden=8)
    flags = ["--checkpoint", "a.pt", "--background", "a.pt", "b.pt", "--num-episodes", "4"]
    run_script("eval_scenarios.py", *flags, "--output", "a", "--num-workers", "2", cwd=tmp_path)
    run_script("eval_scenarios.py", *flags, "--output", "b", "--num-workers", "1", cwd=tmp_path)
    a, b = (json.load(open(tmp_path / f"{name}.json"))["results"][0]["episode_results"] for name in "ab")
    for key in ["seed", "background_player_names"]:
        assert [e[key] for e in a] == [e[key] for e in b], key
    assert len({e["seed"] for e in a}) == 4
    assert {e["background_player_names"][0] for e in a} == {"a.pt", "b.pt"}, "both background checkpoints are sampled"
    assert sum(e["focal_player_returns"][0] != 0 for e in a + b) >= 2, "returns to compare"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--checkpoint", "none.pt"], "error: --checkpoint none.pt: no such file"),
        (["--num-episodes", "0"], "error: --num-episodes must be at least 1, got 0"),
        (
            ["--num-focal", "2", "--background", "CKPT"],
            "error: --num-focal 2 leaves no background slot; collaborative_cooking__asymmetric has 2 players (valid: 1 to 1)",
        ),
        (["--scenarios", "clean_up_0"], "error: scenario clean_up_0 is on substrate clean_up, but --checkpoint"),
        (["--normalise", "missing.csv"], "error: --normalise missing.csv is not a readable CSV"),
        (["--device", "gpu"], "error: --device 'gpu' is not a torch device; valid: cpu, cuda, cuda:N"),
    ],
)
def test_bad_input_gets_one_line_errors(tmp_path, cooking_checkpoint, flags, expected):
    flags = [cooking_checkpoint if f == "CKPT" else f for f in flags]
    if "--checkpoint" not in flags:
        flags = ["--checkpoint", cooking_checkpoint, *flags]
    line = error_line(run_script("eval_scenarios.py", *flags, cwd=tmp_path, check=False))
    assert expected in line


def test_summary_normalises_and_the_table_shows_it(tmp_path):
    (tmp_path / "ref.csv").write_text("scenario,min,max\nx_0,1.0,5.0\n")
    normalise = read_normalise(str(tmp_path / "ref.csv"))
    episodes = [
        {"focal_per_capita_return": r, "background_per_capita_return": b} for r, b in [(2.0, 1.0), (4.0, float("nan"))]
    ]
    summary = summarise(Target("x_0", "x"), episodes, normalise)
    assert summary["focal_per_capita_return"] == 3.0 and summary["normalised"] == pytest.approx(0.5)
    assert summary["background_per_capita_return"] == 1.0
    assert math.isnan(summarise(Target("y_0", "y"), episodes, normalise)["normalised"]), "no reference: no value"
    table = markdown_table([summary])
    assert table.splitlines()[0].endswith("| normalised |") and "| x_0 | 2 | 3.00 | ± 12.71 | 1.00 | 0.50 |" in table
    (tmp_path / "bad.csv").write_text("name,low,high\n")
    with pytest.raises(SystemExit, match="needs the columns scenario,min,max; it has name,low,high"):
        read_normalise(str(tmp_path / "bad.csv"))


KILLED_PARENT = """
import concurrent.futures, multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import eval_scenarios
if __name__ == "__main__":
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=eval_scenarios._init_worker, initargs=(False,))
    busy = [pool.submit(time.sleep, 120) for _ in range(2)]
    time.sleep(5)  # both workers started and initialised, each asleep in its job
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind
"""


def test_evaluation_workers_die_with_a_killed_parent(tmp_path):
    before = spawned_workers()
    result = subprocess.run(
        [sys.executable, "-c", KILLED_PARENT, ROOT], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL and "ready" in result.stdout, result.stderr
    deadline = time.time() + 15
    while spawned_workers() - before and time.time() < deadline:
        time.sleep(0.2)
    assert spawned_workers() - before == set(), "evaluation workers outlived their killed parent"


def test_an_interrupt_cancels_the_episodes_not_yet_started():
    # 100 episodes of uniformly random play for one worker (minutes); a Ctrl-C in the caller's handling of the
    # first result must leave at most the episode in hand and the one queued behind it, not the other 98
    target = Target(f"{SUBSTRATE}__background_1_focal", SUBSTRATE, (eval_scenarios.RANDOM_BACKGROUND,), 1)
    jobs = [(f"episode {i}", (target, i, eval_scenarios.RANDOM_BACKGROUND, "cpu")) for i in range(100)]
    results = []

    def interrupt(i, result):
        results.append(result)
        raise KeyboardInterrupt

    before = spawned_workers()
    with pytest.raises(KeyboardInterrupt):
        eval_scenarios.run_episodes(jobs, 1, "episodes", interrupt)
    assert len(results) == 1 and math.isfinite(results[0]["focal_per_capita_return"])
    deadline = time.time() + 60
    while spawned_workers() - before and time.time() < deadline:
        time.sleep(0.2)
    assert spawned_workers() - before == set(), "the pool went on playing the episodes after the interrupt"
