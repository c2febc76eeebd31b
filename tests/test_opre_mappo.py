"""What opre_mappo.py adds to MAPPO (options, their prior and posterior), its functions and a run end to end."""

import math

import pytest
import torch
from conftest import run_script, spawned_workers
from test_algorithm import FakeEnvs
from test_mappo import error_line, only_run_dir, scalars
from torch import nn
from torch.distributions import Categorical

import utils
from eval_scenarios import CheckpointPolicy
from opre_mappo import (
    Actor,
    Args,
    OptionsPolicy,
    Posterior,
    layer_init,
    mixture_logp,
    options_kl,
    options_losses,
    ppo_loss,
    usage_entropy,
)


def test_the_mixture_is_a_distribution_and_matches_a_hand_computation():
    # w = softmax([0, ln 3]) = [0.25, 0.75]; pi_1 = [0.5, 0.3, 0.2], pi_2 = [0.2, 0.2, 0.6]
    # mixture = 0.25 pi_1 + 0.75 pi_2 = [0.275, 0.225, 0.5]
    weights = torch.tensor([0.0, math.log(3.0)])
    options = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]).log()
    torch.testing.assert_close(mixture_logp(weights, options).exp(), torch.tensor([0.275, 0.225, 0.5]))
    # batched, any logits: each row sums to 1
    torch.manual_seed(0)
    mixture = mixture_logp(torch.randn(5, 4, 3), (torch.randn(5, 4, 3, 8) * 3).log_softmax(-1)).exp()
    assert mixture.shape == (5, 4, 8)
    torch.testing.assert_close(mixture.sum(-1), torch.ones(5, 4))


def test_options_kl_and_usage_entropy_against_hand_computations():
    q, p = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert options_kl(q.log(), p.log()).item() == pytest.approx(expected, abs=1e-6)
    assert options_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)
    # the mean over rows
    assert options_kl(torch.cat([q, p]).log(), torch.cat([p, p]).log()).item() == pytest.approx(expected / 2, abs=1e-6)
    # two rows each sure of a different option: both options in use, ln 2; the same sure row twice: one, 0
    apart = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
    assert usage_entropy(apart).item() == pytest.approx(math.log(2), abs=1e-6)
    assert usage_entropy(apart[[0, 0]]).item() == pytest.approx(0.0, abs=1e-6)


def test_options_losses_weigh_the_kl_and_the_posterior_entropy_by_their_flags():
    q, p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log(), torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()
    args = Args(options_kl_coef=0.3, options_entropy_coef=0.2)
    term, kl, entropy = options_losses(q, p, args)
    expected_entropy = (math.log(2) - (0.9 * math.log(0.9) + 0.1 * math.log(0.1))) / 2
    assert kl.item() == pytest.approx(options_kl(q, p).item(), rel=1e-6)
    assert entropy.item() == pytest.approx(expected_entropy, rel=1e-6)
    assert term.item() == pytest.approx(0.3 * kl.item() - 0.2 * expected_entropy, rel=1e-6)


def make_actor():
    torch.manual_seed(0)
    return Actor(FakeEnvs, Args(hidden_size=16, num_options=4))


def test_acting_uses_the_prior_from_the_players_own_input_only():
    actor = make_actor()
    # the acting network has no path from the world or from another row: it takes no world frame, and a
    # change of one player's observation leaves the other player's policy as it was
    assert not any("world" in name for name in actor.state_dict())
    torch.manual_seed(1)
    rgb, vector = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8), torch.randn(2, 2)
    state, done = actor.initial_state(2, "cpu"), torch.zeros(2)
    logits = actor.get_action(rgb, vector, state, done)[3]
    changed_rgb, changed_vector = rgb.clone(), vector.clone()
    changed_rgb[1], changed_vector[1] = 255 - changed_rgb[1], changed_vector[1] + 5.0
    changed = actor.get_action(changed_rgb, changed_vector, state, done)[3]
    torch.testing.assert_close(changed[0], logits[0])
    assert not torch.allclose(changed[1], logits[1])
    # the acting policy is the prior's mixture of the options
    features, _ = actor.get_states(rgb, vector, state, done)
    prior_logits = actor.policy.prior_logits(features)
    torch.testing.assert_close(logits, mixture_logp(prior_logits, actor.policy.option_logp(features)))
    # prior and posterior start uniform, so at the start PPO trains the very policy that acted
    posterior = Posterior(FakeEnvs, Args(hidden_size=16, num_options=4))
    world = torch.randint(0, 256, (1, 6, 9, 3), dtype=torch.uint8)
    torch.testing.assert_close(prior_logits, torch.zeros(2, 4))
    torch.testing.assert_close(posterior.get_logits(world, actor.policy.recurrent(features)), torch.zeros(2, 4))


@pytest.mark.parametrize("options_input", ["recurrent", "frame"])
def test_options_read_the_recurrent_state_or_the_frame_alone_and_the_prior_reads_the_history(options_input):
    torch.manual_seed(0)
    actor = Actor(FakeEnvs, Args(hidden_size=16, num_options=4, options_input=options_input))
    with torch.no_grad():  # a prior that is not uniform, so that it can show a dependence
        nn.init.normal_(actor.policy.prior.weight)
    rgb, vector, done = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8), torch.randn(2, 2), torch.zeros(2)
    features, _ = actor.get_states(rgb, vector, actor.initial_state(2, "cpu"), done)
    history = (torch.randn(1, 2, 16), torch.randn(1, 2, 16))  # the same frame after another history
    other, _ = actor.get_states(rgb, vector, history, done)
    assert features.shape == (2, 32)
    assert not torch.allclose(actor.policy.prior_logits(other), actor.policy.prior_logits(features))
    same_options = torch.allclose(actor.policy.option_logp(other), actor.policy.option_logp(features))
    assert same_options == (options_input == "frame")
    # either way the acting policy depends on the history (through the prior, at least)
    assert not torch.allclose(actor.policy(other), actor.policy(features))


def test_the_posterior_sees_the_world_and_learns_which_option_explains_an_advantaged_action():
    actor = make_actor()
    posterior = Posterior(FakeEnvs, Args(hidden_size=16, num_options=4))
    with torch.no_grad():  # option z prefers action 2z: the options differ
        actor.policy.options.bias.copy_((torch.eye(8)[[0, 2, 4, 6]] * 4.0).flatten())
    torch.manual_seed(1)
    rgb, vector = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8), torch.randn(2, 2)
    world = torch.randint(0, 256, (1, 6, 9, 3), dtype=torch.uint8)
    features, _ = actor.get_states(rgb, vector, actor.initial_state(2, "cpu"), torch.zeros(2))
    features = features.detach()
    hidden = actor.policy.recurrent(features)
    optimizer = torch.optim.SGD(posterior.parameters(), lr=1.0)
    for _ in range(3):  # PPO's gradient with a positive advantage on action 4 (option 2's)
        q = posterior.get_logits(world, hidden)
        loss = -mixture_logp(q, actor.policy.option_logp(features))[:, 4].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q = posterior.get_logits(world, hidden).softmax(-1)
    assert (q.argmax(-1) == 2).all() and (q[:, 2] > 0.3).all()
    # the posterior depends on the world frame
    assert not torch.allclose(posterior.get_logits(255 - world, hidden), posterior.get_logits(world, hidden))
    # and a step on KL(q || p) moves the prior towards it
    prior_optimizer = torch.optim.SGD(actor.policy.prior.parameters(), lr=1.0)
    before = options_kl(q.log().detach(), actor.policy.prior_logits(features))
    prior_optimizer.zero_grad()
    before.backward()
    prior_optimizer.step()
    assert options_kl(q.log().detach(), actor.policy.prior_logits(features)) < before


def contextual_bandit_options(seed, iterations=150, contexts=4, batch=512):
    """OPRE's update on a contextual bandit: the rewarded action is the context, which only the posterior sees
    (the players' own features are noise). Prior and posterior start uniform, the options near-identical, as
    in opre_mappo.py. Returns the posterior's mean option distribution per context and the probability of
    the rewarded action under the posterior's mixture."""
    torch.manual_seed(seed)
    args, hidden_size = Args(), 32
    policy = OptionsPolicy(hidden_size, 8, args.num_options, args.options_input)
    posterior = nn.Sequential(
        layer_init(nn.Linear(contexts + hidden_size, hidden_size)),
        nn.ReLU(),
        layer_init(nn.Linear(hidden_size, args.num_options), std=0.0),
    )
    own = nn.Linear(8, hidden_size)
    optimizer = torch.optim.Adam(
        [*policy.parameters(), *posterior.parameters(), *own.parameters()], lr=args.learning_rate, eps=1e-5
    )

    def features(context):
        hidden = torch.relu(own(torch.randn(len(context), 8)))  # both the recurrent and the frame features
        seen = torch.cat([nn.functional.one_hot(context, contexts).float(), hidden], 1)
        return torch.cat([hidden, hidden], 1), posterior(seen)

    for _ in range(iterations):
        context = torch.randint(0, contexts, (batch,))
        with torch.no_grad():  # the players act with the prior's mixture
            acting = Categorical(logits=policy(features(context)[0]))
            action = acting.sample()
            logprob, reward = acting.log_prob(action), (action == context).float()
        for _ in range(args.update_epochs):
            hidden, posterior_logits = features(context)
            learner = Categorical(logits=mixture_logp(posterior_logits, policy.option_logp(hidden)))
            zeros = torch.zeros(batch)
            loss, _ = ppo_loss(
                learner.log_prob(action), learner.entropy(), zeros, logprob, reward - reward.mean(), zeros, zeros, args
            )
            loss = loss + options_losses(posterior_logits, policy.prior_logits(hidden), args)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        context = torch.arange(contexts).repeat(256)
        hidden, posterior_logits = features(context)
        q = posterior_logits.softmax(-1)
        rewarded = mixture_logp(posterior_logits, policy.option_logp(hidden)).exp()[torch.arange(len(context)), context]
        return torch.stack([q[context == k].mean(0) for k in range(contexts)]), rewarded.mean().item()


def test_options_differentiate_from_the_uniform_start_where_the_posterior_sees_what_pays():
    # symmetric options and uniform gates could stay a fixed point; OPRE's update breaks the symmetry when
    # the posterior's information pays (about 60 updates of nothing, then it takes off: docs/algorithms/opre.md)
    per_context, rewarded = contextual_bandit_options(seed=0)
    assert len(set(per_context.argmax(1).tolist())) == 4, "each context its own option"
    assert (per_context.max(1).values > 0.25).all()  # 8 options: uniform is 0.125
    assert rewarded > 0.3  # the posterior's mixture plays the rewarded action (1/8 at the start)


@pytest.mark.slow
def test_smoke_run_logs_checkpoints_resumes_and_is_evaluated(tmp_path, tiny_flags):
    before = spawned_workers()
    result = run_script(
        "opre_mappo.py",
        *tiny_flags,
        "--total-timesteps",
        "128",
        "--num-options",
        "3",
        "--options-input",
        "frame",
        cwd=tmp_path,
    )
    assert "iter 4/4" in result.stdout and "options in use" in result.stdout
    run_dir = only_run_dir(tmp_path)
    logged = scalars(run_dir)
    for tag in [
        "opre/kl_posterior_prior",
        "opre/posterior_entropy",
        "opre/prior_usage_entropy",
        "opre/posterior_usage_entropy",
        "losses/policy_loss",
    ]:
        assert len(logged[tag]) == 4, tag
    # 3 options, nearly uniform at the start: usage entropy close to ln 3
    assert all(abs(v - math.log(3)) < 0.05 for _, v in logged["opre/prior_usage_entropy"])
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    assert checkpoint["algorithm"] == "opre_mappo" and "posterior" in checkpoint
    assert checkpoint["actor"]["policy.options.weight"].shape[0] == 3 * 8

    other = run_script(
        "opre_mappo.py", "--resume", f"{run_dir}/checkpoint.pt", "--options-input", "recurrent", cwd=tmp_path, check=False
    )
    assert (
        error_line(other) == f"error: --resume {run_dir}/checkpoint.pt was trained with --options-input frame, not recurrent"
    )
    result = run_script(
        "opre_mappo.py",
        "--resume",
        f"{run_dir}/checkpoint.pt",
        "--options-input",
        "frame",
        "--total-timesteps",
        "192",
        cwd=tmp_path,
    )
    assert "iter 6/6" in result.stdout and only_run_dir(tmp_path) == run_dir
    assert spawned_workers() - before == set(), "environment workers outlived the run"

    # evaluation plays the prior's mixture with the actor alone: the posterior is not read
    policy = CheckpointPolicy(f"{run_dir}/checkpoint.pt")
    assert isinstance(policy.actor, Actor) and not hasattr(policy, "posterior")
    assert policy.actor.policy.options_input == "frame"
    # a checkpoint saved before --options-input existed is evaluated as the recurrent heads it had
    older = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    del older["args"]["options_input"]
    torch.save(older, tmp_path / "older.pt")
    assert CheckpointPolicy(str(tmp_path / "older.pt")).actor.policy.options_input == "recurrent"
    assert torch.equal(
        policy.actor.policy.prior.weight,
        torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)["actor"]["policy.prior.weight"],
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--num-options", "0"], "error: --num-options must be at least 1, got 0"),
        (["--options-kl-coef", "-0.1"], "error: --options-kl-coef must be >= 0, got -0.1"),
        (["--options-entropy-coef", "-1"], "error: --options-entropy-coef must be >= 0, got -1.0"),
    ],
)
def test_bad_flags_get_one_line_errors(tmp_path, flags, expected):
    assert error_line(run_script("opre_mappo.py", *flags, cwd=tmp_path, check=False)) == expected


def test_a_checkpoint_from_before_options_input_resumes_as_recurrent():
    older = {
        "algorithm": "opre_mappo",
        "args": {"substrate": "coins", "num_options": 8},  # no options_input saved
        **{key: None for key in utils.RESUME_KEYS},
    }
    must_match = ("substrate", "num_options", "options_input")
    utils.check_checkpoint(older, "old.pt", "opre_mappo", Args(substrate="coins"), must_match=must_match)
    with pytest.raises(SystemExit, match=r"^error: --resume old.pt was trained with --options-input recurrent, not frame$"):
        utils.check_checkpoint(
            older, "old.pt", "opre_mappo", Args(substrate="coins", options_input="frame"), must_match=must_match
        )
