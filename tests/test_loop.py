"""The rollout/update path of every algorithm script, checked inside a real run of its loop."""

import glob
import inspect
import shutil

import numpy as np
import pytest
import torch
from conftest import ALGORITHM_SCRIPTS, TINY, run_main_in_process, run_script
from test_mappo import error_line

import utils

ITERATIONS = 4  # of 2 envs x 16 steps: episodes of 20 steps end inside the 2nd and 3rd rollouts
# flags that make a script's mixed play happen within those 4 iterations (RPM's memory fills once an
# episode has ended, so from the 3rd rollout)
MIXING = {"rpm_mappo": ["--rpm-save-every", "1", "--rpm-sample-prob", "1"]}


@pytest.mark.parametrize("script", ALGORITHM_SCRIPTS)
def test_the_update_recomputes_what_the_rollout_recorded(tmp_path, script):
    """With theta held still (learning rate 0), every minibatch of every epoch must recompute the
    log-probs and values the rollout recorded: PPO's ratio is exactly 1 on every row PPO trains on.
    This one check covers the minibatch row indexing, the alignment of the critic's world frames,
    the slicing of the initial LSTM state, the done masks inside a rollout and, in mixed play,
    slots whose controller changed at the rollout boundary."""
    calls = []

    def observe(namespace):
        loss = namespace["ppo_loss"]
        signature = inspect.signature(loss)

        def recording_loss(*args, **kwargs):
            bound = signature.bind(*args, **kwargs).arguments
            calls.append(
                {
                    name: bound[name].detach().clone()
                    for name in ("newlogprob", "logprob", "newvalue", "value", "trained")
                    if name in bound
                }
            )
            calls[-1]["threads"] = torch.get_num_threads()
            return loss(*args, **kwargs)

        namespace["ppo_loss"] = recording_loss

    flags = (
        TINY
        + MIXING.get(script, [])
        + [
            "--learning-rate",
            "0",
            "--total-timesteps",
            str(2 * 16 * ITERATIONS),
            "--no-save-model",
            "--checkpoint-every",
            "0",
            "--snapshot-every",
            "0",
        ]
    )
    run_main_in_process(script, flags, tmp_path, observe)

    assert len(calls) == ITERATIONS * 2 * 2  # iterations x --update-epochs x --num-minibatches
    # torch's threads: the cores the 2 environment workers leave, at least 1
    assert {call.pop("threads") for call in calls} == {utils.default_torch_threads(2, 2)}
    for call in calls:
        rows = call.get("trained", torch.ones_like(call["logprob"], dtype=torch.bool))
        assert rows.any()
        torch.testing.assert_close(call["newlogprob"][rows], call["logprob"][rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(call["newvalue"][rows], call["value"][rows], atol=1e-5, rtol=0)
    if "trained" in calls[0]:  # mixed play: some slots were phi's, and they changed between rollouts
        masks = torch.stack([c["trained"] for c in calls[::4]])
        assert not masks.all() and (masks != masks[0]).any()


def assert_same(saved, restored, where="checkpoint"):
    """Equal to the bit, through nested dicts, lists and tuples of tensors, arrays and plain values."""
    if isinstance(saved, torch.Tensor):
        assert torch.equal(saved, restored), where
    elif isinstance(saved, np.ndarray):
        np.testing.assert_array_equal(saved, restored, err_msg=where)
    elif isinstance(saved, dict):
        assert saved.keys() == restored.keys(), where
        for key in saved:
            assert_same(saved[key], restored[key], f"{where}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(restored), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert saved == restored, where


@pytest.mark.slow
@pytest.mark.parametrize("script", ALGORITHM_SCRIPTS)
def test_a_resume_restores_everything_the_checkpoint_holds(tmp_path, script):
    """A resume with no iteration left writes back the checkpoint it read: any state the loop does not
    restore (an optimiser, the value normalisation, an RNG, BiDist's phi and its optimiser, the
    distillation window halfway through a kd block) comes back different. A resume that would
    change the iteration's size is refused."""
    extra = {"bidist_mappo": ["--kd", "3"]}.get(script, [])  # the checkpoint falls inside a kd block
    run_script(f"{script}.py", *TINY, *extra, "--total-timesteps", "64", cwd=tmp_path)
    (checkpoint,) = glob.glob(f"{tmp_path}/runs/*/checkpoint.pt")
    shutil.copy(checkpoint, tmp_path / "saved.pt")
    result = run_script(f"{script}.py", "--resume", checkpoint, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    # data only: every object in the checkpoint is one torch's weights-only unpickler builds without an allowlist
    assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    restored = torch.load(checkpoint, weights_only=True)
    assert saved["iteration"] == restored["iteration"] == 2
    if script == "bidist_mappo":
        assert len(saved["window"]) == 2
    for key in saved.keys() - {"args"}:
        assert_same(saved[key], restored[key], key)

    line = error_line(run_script(f"{script}.py", "--resume", "saved.pt", "--num-envs", "4", cwd=tmp_path, check=False))
    assert line == "error: --resume saved.pt was trained with --num-envs 2, not 4"
