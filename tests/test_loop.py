"""The rollout/update path of every algorithm script, checked inside a real run of its loop."""
import inspect

import pytest
import torch

from conftest import ALGORITHM_SCRIPTS, TINY, run_main_in_process

ITERATIONS = 4  # of 2 envs x 16 steps: episodes of 20 steps end inside the 2nd and 3rd rollouts


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
            calls.append({name: bound[name].detach().clone()
                          for name in ("newlogprob", "logprob", "newvalue", "value", "trained") if name in bound})
            return loss(*args, **kwargs)

        namespace["ppo_loss"] = recording_loss

    flags = TINY + ["--learning-rate", "0", "--total-timesteps", str(2 * 16 * ITERATIONS), "--no-save-model",
                    "--checkpoint-every", "0", "--snapshot-every", "0"]
    run_main_in_process(script, flags, tmp_path, observe)

    assert len(calls) == ITERATIONS * 2 * 2  # iterations x --update-epochs x --num-minibatches
    for call in calls:
        rows = call.get("trained", torch.ones_like(call["logprob"], dtype=torch.bool))
        assert rows.any()
        torch.testing.assert_close(call["newlogprob"][rows], call["logprob"][rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(call["newvalue"][rows], call["value"][rows], atol=1e-5, rtol=0)
    if "trained" in calls[0]:  # mixed play: some slots were phi's, and they changed between rollouts
        masks = torch.stack([c["trained"] for c in calls[::4]])
        assert not masks.all() and (masks != masks[0]).any()
