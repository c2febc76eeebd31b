"""mappo.py end to end, in subprocesses with tiny sizes."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ALGORITHM_SCRIPTS, ROOT, run_script, spawned_workers
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir):
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def only_run_dir(cwd):
    (run_dir,) = glob.glob(f"{cwd}/runs/*")
    return run_dir


@pytest.mark.slow
def test_smoke_run_logs_checkpoints_and_resumes(tmp_path, tiny_flags):
    before = spawned_workers()
    result = run_script("mappo.py", *tiny_flags, "--total-timesteps", "96", "--checkpoint-every", "1", cwd=tmp_path)
    assert "iter 3/3" in result.stdout and "SPS" in result.stdout and "ETA" in result.stdout
    run_dir = only_run_dir(tmp_path)
    logged = scalars(run_dir)
    for tag in [
        "charts/episodic_return",
        "charts/collective_return",
        "players/episodic_return_1",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "charts/SPS",
    ]:
        assert tag in logged, tag
    assert logged["losses/value_loss"][-1][0] == 96
    # where each iteration's wall time went: shares of it, summing to 1
    parts = ["act", "env", "update", "other"]
    for step in (32, 64, 96):
        shares = {part: dict(logged[f"charts/time_{part}"])[step] for part in parts}
        assert all(0 < share < 1 for share in shares.values()) and sum(shares.values()) == pytest.approx(1, abs=0.01)
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert checkpoint["algorithm"] == "mappo" and checkpoint["iteration"] == 3 and checkpoint["global_step"] == 96
    assert checkpoint["substrate"] == "pure_coordination_in_the_matrix__repeated"  # the default
    assert set(checkpoint) >= {"actor", "critic", "optimizer", "value_norm", "rng", "args"}
    assert not os.path.exists(f"{run_dir}/checkpoint.pt.tmp")

    # --resume alone continues the same run: same directory, global step and flags
    result = run_script("mappo.py", "--resume", f"{run_dir}/checkpoint.pt", "--total-timesteps", "160", cwd=tmp_path)
    assert "iter 4/5" in result.stdout and only_run_dir(tmp_path) == run_dir
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == 5 and checkpoint["global_step"] == 160
    assert checkpoint["args"]["hidden_size"] == 32, "the resumed run keeps its saved flags"
    steps = [step for step, _ in scalars(run_dir)["losses/value_loss"]]
    assert steps == [32, 64, 96, 128, 160]
    assert spawned_workers() - before == set(), "environment workers outlived the run"


PREPARE_COUNTER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
import utils
calls = []
prepare = utils.MeltingPotVecEnv.prepare_resets
utils.MeltingPotVecEnv.prepare_resets = lambda self: (calls.append(1), prepare(self))[1]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("prepare_resets calls:", len(calls))
"""


@pytest.mark.parametrize("flag, calls", [([], 3), (["--no-prepare-resets"], 0)])
def test_prepared_resets_follow_their_flag(tmp_path, tiny_flags, flag, calls):
    # once per rollout by default (the workers build the next episodes while the learner works); never with
    # --no-prepare-resets, which saves the memory of the spare environments
    command = [
        sys.executable,
        "-c",
        PREPARE_COUNTER,
        ROOT,
        os.path.join(ROOT, "mappo.py"),
        *tiny_flags,
        "--total-timesteps",
        "96",
        *flag,
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "iter 3/3" in result.stdout and f"prepare_resets calls: {calls}" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, heavy",
    [
        ("mappo.py", ["--update-epochs", "20"]),
        ("bidist_mappo.py", ["--update-epochs", "10", "--kd", "1", "--distill-epochs", "20"]),
    ],
)
def test_ctrl_c_saves_the_state_of_a_whole_iteration_and_leaves_no_workers(tmp_path, tiny_flags, script, heavy):
    """Most of an iteration is the PPO update (and distillation) here, so the Ctrl-C most likely lands
    in it; wherever it lands, the checkpoint must equal the state at the end of the iteration it names,
    which the per-iteration snapshots record."""
    before = spawned_workers()
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, script),
            *tiny_flags,
            *heavy,
            "--total-timesteps",
            "100000",
            "--checkpoint-every",
            "0",
            "--snapshot-every",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in process.stdout:  # wait until training is under way
        if line.startswith("iter 1/"):
            break
    time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in stderr and "interrupted: checkpoint of iteration" in stderr
    run_dir = only_run_dir(tmp_path)
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    iteration = checkpoint["iteration"]
    assert iteration >= 1 and checkpoint["global_step"] == iteration * 32
    for population, key in [("theta", "actor")] + ([("phi", "phi")] if script == "bidist_mappo.py" else []):
        snapshot = torch.load(f"{run_dir}/snapshots/{population}_{iteration:06d}.pt", weights_only=True)
        for name, weights in snapshot["actor"].items():
            assert torch.equal(checkpoint[key][name], weights), f"{key} is not that of the end of iteration {iteration}"
    time.sleep(1)
    assert spawned_workers() - before == set()


@pytest.mark.parametrize("script", ALGORITHM_SCRIPTS)
def test_ctrl_c_while_the_environments_start_is_one_line(tmp_path, script):
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, f"{script}.py"),
            "--substrate",
            "territory__rooms",
            "--num-envs",
            "2",
            "--num-minibatches",
            "2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in process.stdout:
        if line.startswith("starting 2 environments"):
            break
    time.sleep(0.2)  # the workers are importing torch now; territory__rooms then takes seconds to build
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and stderr.strip() == "interrupted before training started: nothing saved"
    assert not os.path.exists(tmp_path / "runs")


def error_line(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--substrate", "prisoners_dilema"], "prisoners_dilemma_in_the_matrix__repeated"),
        (["--num-envs", "0"], "--num-envs must be at least 1"),
        (["--num-envs", "6", "--num-minibatches", "4"], "--num-envs 6 must be a multiple of --num-minibatches 4"),
        (["--total-timesteps", "10"], "less than one rollout"),
        (["--resume", "nowhere.pt"], "--resume nowhere.pt: no such file"),
        (
            ["--num-env", "3"],
            "error: Unrecognized options: --num-env, 3; perhaps you meant --num-envs (python mappo.py --help lists the flags)",
        ),
        (["--num-envs", "many"], "error: Error parsing --num-envs: invalid literal for int() with base 10: 'many'"),
    ],
)
def test_bad_flags_get_one_line_errors(tmp_path, flags, expected):
    line = error_line(run_script("mappo.py", *flags, cwd=tmp_path, check=False))
    assert expected in line and line.startswith("error:")


def test_foreign_checkpoints_are_refused(tmp_path):
    saved = {
        "algorithm": "mappo",
        "substrate": "coins",
        "run_name": "x",
        "actor": {},
        "args": {"substrate": "coins", "downsample": True, "hidden_size": 128},
    }
    torch.save(saved, tmp_path / "coins.pt")
    line = error_line(run_script("mappo.py", "--resume", "coins.pt", "--substrate", "clean_up", cwd=tmp_path, check=False))
    assert line == "error: --resume coins.pt was trained with --substrate coins, not clean_up"

    torch.save(dict(saved, algorithm="bidist_mappo"), tmp_path / "bidist.pt")
    line = error_line(run_script("mappo.py", "--resume", "bidist.pt", cwd=tmp_path, check=False))
    assert "is a bidist_mappo checkpoint; this script resumes only mappo checkpoints" in line

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    line = error_line(run_script("mappo.py", "--resume", "junk.pt", cwd=tmp_path, check=False))
    assert "--resume junk.pt is not a readable checkpoint" in line
