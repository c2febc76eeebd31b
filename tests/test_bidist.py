"""Pure-function tests of what bidist_mappo.py adds to MAPPO: distillation losses, mixed action
selection and the phase schedule (the mask and the masked PPO loss: tests/test_algorithm.py, for
every mixed-play script)."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_algorithm import FakeEnvs

from bidist_mappo import (
    Actor,
    Args,
    distill,
    distill_diagnostics,
    forward_distillation_loss,
    kl_divergence,
    mixed_action,
    mutual_information,
    restart_from,
    reverse_distillation_loss,
    rollout_signal,
    sample_mask,
    scheduled_phase,
    unroll_phi,
)


def hand_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_matches_a_hand_computation():
    hist = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])
    phi = torch.tensor([[0.25, 0.25, 0.5], [0.3, 0.3, 0.4]])
    kl = kl_divergence(hist.log(), phi.log() + 7.0)  # logits are defined up to a constant
    expected = [hand_kl(hist[i].tolist(), phi[i].tolist()) for i in range(2)]
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-6)
    # 0.5 ln 2 + 0.25 ln 1 + 0.25 ln 0.5 = 0.25 ln 2
    assert kl[0].item() == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_forward_loss_is_zero_at_the_target_and_a_step_lowers_the_kl():
    hist = torch.randn(6, 5)
    assert forward_distillation_loss(hist, hist.clone(), eta_f=2.0).item() == pytest.approx(0.0, abs=1e-6)

    phi = torch.randn(6, 5, requires_grad=True)
    loss = forward_distillation_loss(hist, phi, eta_f=2.0)
    assert loss.item() == pytest.approx(2.0 * kl_divergence(hist, phi).mean().item(), rel=1e-6)
    loss.backward()
    with torch.no_grad():
        stepped = phi - 0.1 * phi.grad
    assert kl_divergence(hist, stepped).mean() < kl_divergence(hist, phi).mean()


def literal(hist_logits, phi_logits, eta_r, kl_cap):
    """The literal reading of the reverse phase: the one reverse loss with --reverse-trust 0 --reverse-floor 0."""
    return reverse_distillation_loss(hist_logits, phi_logits, None, eta_r, kl_cap, beta=0.0, floor=0.0)


def test_the_literal_reverse_loss_raises_the_kl_below_the_cap_and_ignores_samples_above():
    hist = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.98, 0.01, 0.01]]))
    phi = torch.log(torch.tensor([[0.4, 0.3, 0.3], [0.01, 0.01, 0.98]])).requires_grad_()
    kl = [hand_kl([0.5, 0.25, 0.25], [0.4, 0.3, 0.3]), hand_kl([0.98, 0.01, 0.01], [0.01, 0.01, 0.98])]
    assert kl[0] < 1.0 < kl[1]
    loss = literal(hist, phi, eta_r=3.0, kl_cap=1.0)  # no phi_start is needed
    assert loss.item() == pytest.approx(-3.0 * (kl[0] + 1.0) / 2, rel=1e-6)
    loss.backward()
    assert torch.all(phi.grad[1] == 0), "a sample past the cap must give no gradient"
    assert phi.grad[0].abs().sum() > 0
    with torch.no_grad():
        stepped = phi - 0.1 * phi.grad
    assert kl_divergence(hist[:1], stepped[:1]).item() > kl[0], "a gradient step must raise the KL"


def test_the_trust_term_adds_the_kl_to_phi_at_the_phase_start():
    hist = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.98, 0.01, 0.01]]))
    start = torch.log(torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.3, 0.5]]))
    phi = torch.log(torch.tensor([[0.4, 0.3, 0.3], [0.01, 0.01, 0.98]])).requires_grad_()
    push = -2.0 * (hand_kl([0.5, 0.25, 0.25], [0.4, 0.3, 0.3]) + 1.0) / 2  # second sample capped at 1
    anchor = (hand_kl([0.4, 0.4, 0.2], [0.4, 0.3, 0.3]) + hand_kl([0.2, 0.3, 0.5], [0.01, 0.01, 0.98])) / 2
    loss = reverse_distillation_loss(hist, phi, start, eta_r=2.0, kl_cap=1.0, beta=0.5, floor=0.0)
    assert loss.item() == pytest.approx(push + 0.5 * anchor, rel=1e-6)
    # at the phase start (phi = phi_start) the anchor is zero and has no gradient: the capped push alone
    at_start = phi.detach().clone().requires_grad_()
    capped = phi.detach().clone().requires_grad_()
    reverse_distillation_loss(hist, at_start, at_start.detach(), 2.0, 1.0, beta=0.5, floor=0.0).backward()
    literal(hist, capped, 2.0, 1.0).backward()
    torch.testing.assert_close(at_start.grad, capped.grad)
    assert at_start.grad.abs().sum() > 0


def test_input_dependence_is_the_mutual_information_between_observation_and_action():
    # two equally likely observations with opposite deterministic choices: I(o; a) = ln 2
    assert mutual_information(torch.log(torch.tensor([[1.0, 1e-12], [1e-12, 1.0]]))).item() == pytest.approx(
        math.log(2), rel=1e-6
    )
    # the same distribution everywhere: 0, however peaked
    assert mutual_information(torch.log(torch.tensor([[0.9, 0.1]] * 4))).item() == pytest.approx(0.0, abs=1e-7)
    # [0.5, 0.5] and [0.9, 0.1]: marginal [0.7, 0.3], mean of the two KLs to it
    expected = (hand_kl([0.5, 0.5], [0.7, 0.3]) + hand_kl([0.9, 0.1], [0.7, 0.3])) / 2
    assert mutual_information(torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [None, 0.0, 0.3])
def test_each_per_sample_term_is_the_mean_over_observations_of_its_value_on_each_alone(beta):
    # (T, B, A) logits: every reduction must run over the action axis only, and the batch is a plain mean
    # (forward: beta None; the reverse push, and with the trust term; the floor is over all rows at once, below)
    torch.manual_seed(0)
    hist, phi, start = (2 * torch.randn(3, 4, 5) for _ in range(3))

    def loss(h, p, s):
        return (
            forward_distillation_loss(h, p, 1.5) if beta is None else reverse_distillation_loss(h, p, s, 1.5, 0.7, beta, 0.0)
        )

    alone = [loss(h[None], p[None], s[None]).item() for h, p, s in zip(*(x.reshape(-1, 5) for x in (hist, phi, start)))]
    assert len(set(np.round(alone, 6))) > 1
    assert loss(hist, phi, start).item() == pytest.approx(np.mean(alone), rel=1e-5)
    per_row = [kl_divergence(h[None], p[None]).item() for h, p in zip(hist.reshape(-1, 5), phi.reshape(-1, 5))]
    np.testing.assert_allclose(kl_divergence(hist, phi).flatten().numpy(), per_row, rtol=1e-5)


def make_actor(seed, hidden=16):
    torch.manual_seed(seed)
    return Actor(FakeEnvs, Args(hidden_size=hidden))


def rollout_inputs(rows):
    rgb = torch.randint(0, 256, (rows, 5, 5, 3), dtype=torch.uint8)
    return rgb, torch.randn(rows, 2), torch.zeros(rows)


class Untouchable(torch.nn.Module):
    def get_action(self, *args, **kwargs):
        raise AssertionError("phi must not be run when no slot is fictitious")


def test_p_zero_never_uses_phi():
    np.random.seed(2)
    actor, rows = make_actor(0), 6
    fictitious = torch.tensor(sample_mask(3, 2, p=0.0).ravel())
    rgb, vector, done = rollout_inputs(rows)
    state = actor.initial_state(rows, "cpu")
    torch.manual_seed(5)
    action, logprob, logits, _, phi_state = mixed_action(actor, Untouchable(), fictitious, rgb, vector, state, state, done)
    torch.manual_seed(5)
    expected, expected_logprob, _, expected_logits, _ = actor.get_action(rgb, vector, state, done)
    assert torch.equal(action, expected) and torch.equal(logits, expected_logits)
    assert phi_state is state


def test_fictitious_rows_act_with_phi_and_keep_theta_logits():
    theta, phi, rows = make_actor(0), make_actor(1), 4
    with torch.no_grad():  # make both policies deterministic and different: theta always 1, phi always 6
        theta.policy.bias.copy_(torch.tensor([0, 50.0, 0, 0, 0, 0, 0, 0]))
        phi.policy.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 50.0, 0]))
    fictitious = torch.tensor([False, True, True, False])
    rgb, vector, done = rollout_inputs(rows)
    state = theta.initial_state(rows, "cpu")
    action, _, logits, _, _ = mixed_action(theta, phi, fictitious, rgb, vector, state, state, done)
    assert action.tolist() == [1, 6, 6, 1]
    assert (logits.argmax(dim=1) == 1).all(), "recorded logits are theta's on every row"


def test_the_rollout_signal_splits_the_trained_slots_by_whether_phi_plays_beside_them():
    rewards = np.arange(12, dtype=float).reshape(2, 3, 2)  # (steps, envs, players)
    fictitious = np.array([[True, False], [False, False], [False, False]])
    beside_phi, beside_theta = rollout_signal(rewards, fictitious)
    assert beside_phi == (1 + 7) / 2  # env 0's player 1, both steps; phi's own reward (player 0) is not counted
    assert beside_theta == np.mean([2, 3, 4, 5, 8, 9, 10, 11])
    assert math.isnan(rollout_signal(rewards, np.zeros((3, 2), dtype=bool))[0])


def phases(iterations, **flags):
    args = SimpleNamespace(**{"kd": 3, "no_forward": False, "no_reverse": False, **flags})
    return {i: scheduled_phase(i, args) for i in range(1, iterations + 1) if scheduled_phase(i, args)}


def test_schedule_alternates_forward_first_at_multiples_of_kd():
    assert phases(13) == {3: "forward", 6: "reverse", 9: "forward", 12: "reverse"}
    assert phases(13, no_forward=True) == {6: "reverse", 12: "reverse"}
    assert phases(13, no_reverse=True) == {3: "forward", 9: "forward"}
    assert phases(13, no_forward=True, no_reverse=True) == {}


def make_window(actor, rollouts=3, T=6, sequences=4):
    window = []
    for _ in range(rollouts):
        rgb = torch.randint(0, 256, (T, sequences, 5, 5, 3), dtype=torch.uint8)
        vector, done = torch.randn(T, sequences, 2), torch.zeros(T, sequences)
        done[2, 1] = 1
        with torch.no_grad():
            logits = actor.get_action(
                rgb.flatten(0, 1), vector.flatten(0, 1), actor.initial_state(sequences, "cpu"), done.flatten()
            )[3].reshape(T, sequences, -1)
        window.append((rgb, vector, done, logits * 20))  # sharpen theta so the KL is not tiny
    return window


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_a_distillation_phase_moves_phi_the_right_way(direction):
    theta, phi = make_actor(0), make_actor(1)
    window = make_window(theta)
    args = SimpleNamespace(
        distill_epochs=3, eta_f=1.0, eta_r=1.0, kl_cap=50.0, max_grad_norm=0.5, reverse_trust=0.0, reverse_floor=0.0
    )
    optimizer = torch.optim.Adam(phi.parameters(), lr=1e-2)
    before = distill_diagnostics(phi, window, sequences_per_minibatch=3)
    distill(phi, optimizer, window, direction, sequences_per_minibatch=3, args=args)
    after = distill_diagnostics(phi, window, sequences_per_minibatch=3)
    assert set(after) == {
        "kl",
        "phi_entropy",
        "theta_entropy",
        "phi_logp_std",
        "theta_logp_std",
        "phi_logp_ratio",
        "phi_logp_ratio_pooled",
        "phi_input_dependence",
        "theta_input_dependence",
    }
    assert after["phi_logp_ratio"] == pytest.approx(after["phi_logp_std"] / after["theta_logp_std"])
    if direction == "forward":
        assert after["kl"] < before["kl"]
    else:
        assert after["kl"] > before["kl"]


def test_the_trust_region_keeps_phi_near_where_the_reverse_phase_started():
    theta = make_actor(0)
    window = make_window(theta)
    rgb, vector, done, _ = (torch.cat(x, dim=1) for x in zip(*window))
    everything = torch.arange(rgb.shape[1])
    moved = {}
    for beta in [0.0, 10.0]:
        phi = make_actor(1)
        with torch.no_grad():
            start = unroll_phi(phi, rgb, vector, done, everything)
        args = SimpleNamespace(
            distill_epochs=4, eta_r=1.0, kl_cap=50.0, max_grad_norm=0.5, reverse_trust=beta, reverse_floor=0.0
        )
        distill(phi, torch.optim.Adam(phi.parameters(), lr=1e-2), window, "reverse", rgb.shape[1], args)
        with torch.no_grad():
            moved[beta] = kl_divergence(start, unroll_phi(phi, rgb, vector, done, everything)).mean().item()
    assert moved[10.0] < 0.5 * moved[0.0]


def test_restart_from_copies_theta_into_phi_and_forgets_the_optimizer_moments():
    theta, phi = make_actor(0), make_actor(1)
    optimizer = torch.optim.Adam(phi.parameters(), lr=1e-2)
    distill(phi, optimizer, make_window(theta), "forward", 4, SimpleNamespace(distill_epochs=1, eta_f=1.0, max_grad_norm=0.5))
    assert len(optimizer.state) > 0
    restart_from(phi, optimizer, theta)
    for a, b in zip(phi.state_dict().values(), theta.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert len(optimizer.state) == 0
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(phi.parameters(), theta.parameters())), "a copy, not shared"


def test_phi_logp_ratio_compares_phi_with_each_recorded_policy_not_with_the_windows_drift():
    phi = make_actor(1)
    # theta changed between two iterations but never depended on its observation: a constant distribution in
    # each rollout. Per policy it has no spread and no input dependence; pooled, the change looks like both.
    window = make_window(make_actor(0), rollouts=2)
    for i, constant in enumerate([torch.arange(8.0), -torch.arange(8.0)]):
        rgb, vector, done, logits = window[i]
        window[i] = (rgb, vector, done, constant.expand_as(logits))
    phase = distill_diagnostics(phi, window, sequences_per_minibatch=3)
    assert phase["theta_logp_std"] == pytest.approx(0.0, abs=1e-6)
    assert phase["theta_input_dependence"] == pytest.approx(0.0, abs=1e-6)
    pooled = torch.cat([logits for *_, logits in window], dim=1).log_softmax(-1).flatten(0, 1).std(0).mean()
    assert pooled > 1.0
    # two input-dependent policies: the ratio of the mean per-rollout spreads, by hand
    with torch.no_grad():
        phi.policy.weight.mul_(20.0)  # as spread as make_window's sharpened theta
    window = make_window(make_actor(0), rollouts=1) + make_window(make_actor(2), rollouts=1)
    spreads = {"phi": [], "theta": []}
    for rgb, vector, done, logits in window:
        with torch.no_grad():
            phi_logits = phi.get_action(rgb.flatten(0, 1), vector.flatten(0, 1), phi.initial_state(4, "cpu"), done.flatten())[
                3
            ]
        spreads["phi"].append(phi_logits.log_softmax(-1).std(0).mean().item())
        spreads["theta"].append(logits.flatten(0, 1).log_softmax(-1).std(0).mean().item())
    phase = distill_diagnostics(phi, window, sequences_per_minibatch=3)
    assert phase["phi_logp_std"] == pytest.approx(np.mean(spreads["phi"]), rel=1e-3)
    assert phase["phi_logp_ratio"] == pytest.approx(np.mean(spreads["phi"]) / np.mean(spreads["theta"]), rel=1e-3)


def test_distillation_resets_phi_at_the_stored_done_flags():
    theta, window = collapse_window()
    phi = copy.deepcopy(theta)  # exact at the stored dones: any unroll that ignores them differs
    assert distill_diagnostics(phi, window, 8)["kl"] == pytest.approx(0.0, abs=1e-5)
    without = [(rgb, vector, torch.zeros_like(done), logits) for rgb, vector, done, logits in window]
    assert distill_diagnostics(phi, without, 8)["kl"] > 1e-3


def collapse_window():
    """theta's action distribution depends strongly on the observation: an actor of phi's own
    architecture with a sharpened policy head (so phi can represent it exactly)."""
    theta = make_actor(0, hidden=32)
    with torch.no_grad():
        theta.policy.weight.mul_(3000.0)
        theta.policy.bias.zero_()
    generator = torch.Generator().manual_seed(0)
    window = []
    for _ in range(4):
        rgb = torch.randint(0, 256, (16, 8, 5, 5, 3), dtype=torch.uint8, generator=generator)
        vector, done = torch.randn(16, 8, 2, generator=generator), torch.zeros(16, 8)
        done[8, 1] = 1
        with torch.no_grad():
            logits = theta.get_action(rgb.flatten(0, 1), vector.flatten(0, 1), theta.initial_state(8, "cpu"), done.flatten())[
                3
            ]
        window.append((rgb, vector, done, logits.reshape(16, 8, -1)))
    return theta, window


def alternate_phases(**flags):
    """forward, reverse, forward, reverse on the collapse window from a perturbed copy of theta with
    bidist_mappo.py's default distillation settings but `flags`; diagnostics after each phase."""
    theta, window = collapse_window()
    phi = copy.deepcopy(theta)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in phi.parameters():
            param.add_(0.05 * param.std() * torch.randn_like(param))
    args = Args(**flags)
    optimizer = torch.optim.Adam(phi.parameters(), lr=args.distill_lr, eps=1e-5)
    stats = []
    for direction in ["forward", "reverse", "forward", "reverse"]:
        distill(phi, optimizer, window, direction, 8, args)
        stats.append(distill_diagnostics(phi, window, 8))
    return stats


def floor_only(hist_logits, phi_logits, eta_r, kl_cap, floor):
    return reverse_distillation_loss(hist_logits, phi_logits, None, eta_r, kl_cap, beta=0.0, floor=floor)


def test_the_floor_pays_phi_for_its_input_dependence_up_to_the_windows():
    hist = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))  # I(o; a) = KL([0.9, 0.1] || [0.5, 0.5]) = 0.3681
    mi_hist = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert mutual_information(hist).item() == pytest.approx(mi_hist, rel=1e-6)
    uniform = torch.zeros(2, 2)  # input-independent: I = 0, KL(hist || uniform) = 0.3681 per row
    assert floor_only(hist, uniform, 1.0, 1.0, 2.0).item() == pytest.approx(-mi_hist, rel=1e-5)
    assert floor_only(hist, hist, 1.0, 1.0, 2.0).item() == pytest.approx(-2.0, rel=1e-5)  # all of it
    # half of the window's dependence: [0.7, 0.3] / [0.3, 0.7] has I = KL([0.7, 0.3] || [0.5, 0.5])
    half = torch.log(torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    share = hand_kl([0.7, 0.3], [0.5, 0.5]) / mi_hist
    assert floor_only(hist, half, 1.0, 1.0, 2.0).item() == pytest.approx(
        -hand_kl([0.9, 0.1], [0.7, 0.3]) - 2.0 * share, rel=1e-5
    )
    # past the window's dependence nothing more is paid
    sharp = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]]))
    kl = hand_kl([0.9, 0.1], [0.99, 0.01])
    assert floor_only(hist, sharp, 1.0, 1.0, 2.0).item() == pytest.approx(-kl - 2.0, rel=1e-5)
    # a window that hardly depends on its input counts as 0.01 nats
    flat = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert floor_only(flat, half, 0.0, 1.0, 2.0).item() == pytest.approx(-2.0, rel=1e-5)
    # (T, B, A) logits: the dependence is over all T * B observations at once
    torch.manual_seed(0)
    h, p = torch.randn(3, 4, 5) * 2, torch.randn(3, 4, 5)
    assert floor_only(h, p, 1.0, 1.0, 0.5).item() == pytest.approx(
        floor_only(h.reshape(12, 5), p.reshape(12, 5), 1.0, 1.0, 0.5).item(), rel=1e-6
    )
    # below the window's dependence, a gradient step on the floor raises phi's
    phi = (0.1 * torch.randn(64, 5)).requires_grad_()
    h = torch.randn(64, 5) * 3
    before = mutual_information(phi).item()
    floor_only(h, phi, 0.0, 1.0, 1.0).backward()  # eta_r 0: the floor alone
    assert mutual_information(phi - 1.0 * phi.grad).item() > before


def test_the_default_loss_is_the_push_plus_the_trust_term_minus_the_floor():
    hist = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    mi_hist = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    half = torch.log(torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    share = hand_kl([0.7, 0.3], [0.5, 0.5]) / mi_hist
    # at the phase start (phi = phi_start) the trust term is zero: the capped push and the floor remain
    assert reverse_distillation_loss(hist, half, half, 1.0, 1.0, 0.5, 2.0).item() == pytest.approx(
        -hand_kl([0.9, 0.1], [0.7, 0.3]) - 2.0 * share, rel=1e-5
    )
    # away from the start, beta * KL(start || phi) is added; a phi as input-dependent as the window is paid all
    sharp = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]]))
    assert reverse_distillation_loss(hist, sharp, half, 1.0, 1.0, 0.5, 2.0).item() == pytest.approx(
        -hand_kl([0.9, 0.1], [0.99, 0.01]) + 0.5 * hand_kl([0.7, 0.3], [0.99, 0.01]) - 2.0, rel=1e-5
    )
    # an input-independent phi is paid nothing: the loss is then the push and the trust term alone
    uniform = torch.zeros(2, 2)
    assert reverse_distillation_loss(hist, uniform, half, 1.0, 1.0, 0.5, 2.0).item() == pytest.approx(
        -hand_kl([0.9, 0.1], [0.5, 0.5]) + 0.5 * hand_kl([0.7, 0.3], [0.5, 0.5]), rel=1e-5
    )


def test_the_default_reverse_loss_keeps_phi_alive_where_the_literal_one_collapses():
    phases = alternate_phases()
    for phase in phases:
        assert phase["phi_logp_ratio"] > 0.5 and phase["phi_input_dependence"] > 0.4 * phase["theta_input_dependence"]
    forward, reverse, forward2, reverse2 = phases
    assert reverse["kl"] > forward["kl"] + 0.3 and reverse2["kl"] > forward2["kl"] + 0.3, "phi leaves the window"
    # the literal capped KL at the same settings: phi stops depending on its input
    capped = alternate_phases(reverse_trust=0.0, reverse_floor=0.0)
    assert capped[1]["phi_input_dependence"] < 0.1 * capped[1]["theta_input_dependence"]


# The reverse losses' values and gradients on fixed tensors, recorded at commit c08ee97 from bidist_mappo.py's
# trust_floor_reverse_loss and reverse_distillation_loss (capped-kl) before the reverse objectives became one loss:
# the one loss gives the same numbers at the same flags (the defaults; --reverse-trust 0 --reverse-floor 0).
RECORDED_INPUTS = torch.arange(60, dtype=torch.float32)
RECORDED_HIST = (3 * torch.sin(0.7 * RECORDED_INPUTS)).reshape(3, 4, 5)  # (T, B, A): 4 of 12 rows past a cap of 1
RECORDED_START = torch.sin(0.37 * RECORDED_INPUTS + 1.0).reshape(3, 4, 5)
RECORDED_LOSS = {
    "trust-floor": -0.836236298,
    "capped-kl": -0.781032145,
    "trust-floor eta_r 1.5, kl_cap 0.7, beta 0.3, lambda 0.8": -1.000129223,
    "capped-kl eta_r 1.5, kl_cap 0.7": -0.892877936,
}
RECORDED_GRAD = {
    "trust-floor": [
        -0.028484102,
        -0.03788954,
        -0.011135606,
        0.002275012,
        0.075234234,
        -0.084030114,
        -0.028893549,
        -0.006216546,
        0.016963309,
        0.10217689,
        -0.028424058,
        -0.009518011,
        -0.008469777,
        0.007989796,
        0.038422056,
        -0.041120999,
        -0.011641487,
        -0.011914909,
        0.017726604,
        0.046950795,
        -0.006908042,
        -0.015773039,
        -0.010018235,
        0.027526934,
        0.00517239,
        -0.003124006,
        -0.010868164,
        -0.006545575,
        0.036037624,
        -0.015499882,
        0.03003281,
        -0.00521045,
        -0.009447852,
        0.01408829,
        -0.029462796,
        0.008170446,
        -0.013790656,
        0.001802518,
        0.017864013,
        -0.014046324,
        0.005539028,
        -0.013637911,
        -0.009461131,
        -0.017864734,
        0.03542475,
        0.019283436,
        -0.004746964,
        -0.012553689,
        -0.045044743,
        0.04306196,
        0.020046715,
        -0.008124664,
        -0.029844277,
        -0.088218644,
        0.106140874,
        -0.00977945,
        -0.013288826,
        -0.033912029,
        -0.014906425,
        0.071886726,
    ],
    "capped-kl": [
        0,
        0,
        0,
        0,
        0,
        -0.030452017,
        -0.00391483,
        0.001589136,
        0.00527095,
        0.027506772,
        0,
        0,
        0,
        0,
        0,
        -0.03235019,
        -0.002704466,
        0.000554851,
        0.005556302,
        0.028943514,
        0,
        0,
        0,
        0,
        0,
        -0.017451068,
        -0.001143698,
        0.002123553,
        0.010591151,
        0.005880058,
        0,
        0,
        0,
        0,
        0,
        -0.007798662,
        0.001378048,
        0.01386331,
        0.013254251,
        -0.020696947,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0.009505037,
        0.00169231,
        -0.00592829,
        -0.044597492,
        0.039328434,
        0,
        0,
        0,
        0,
        0,
    ],
    "trust-floor eta_r 1.5, kl_cap 0.7, beta 0.3, lambda 0.8": [
        -0.014869571,
        -0.014465068,
        -0.002697553,
        0.00240407,
        0.029628126,
        -0.068952963,
        -0.01458215,
        0.000587393,
        0.013424049,
        0.069523677,
        -0.014391096,
        -0.003114262,
        -0.002054193,
        0.004782424,
        0.014777127,
        -0.054330342,
        -0.00655175,
        -0.002448972,
        0.014776568,
        0.048554502,
        -0.002467477,
        -0.004364413,
        -0.002549514,
        0.011335819,
        -0.001954413,
        -0.020312835,
        -0.004209734,
        0.001045418,
        0.026434567,
        -0.002957408,
        0.011559207,
        -0.001133251,
        -0.002389361,
        0.005982846,
        -0.014019445,
        -0.004069347,
        -0.002053502,
        0.017533841,
        0.02045472,
        -0.031865712,
        0.004400198,
        -0.003645656,
        -0.002715899,
        -0.009644934,
        0.011606289,
        0.008232955,
        -0.000937765,
        -0.004137573,
        -0.020588681,
        0.017431064,
        0.005262849,
        -0.00239037,
        -0.008518675,
        -0.020824917,
        0.026471114,
        -0.001138733,
        -0.003331871,
        -0.013369647,
        -0.010420403,
        0.028260645,
    ],
}


@pytest.mark.parametrize(
    "case, flags",
    [
        ("trust-floor", {}),  # the defaults
        ("capped-kl", {"reverse_trust": 0.0, "reverse_floor": 0.0}),
        (
            "trust-floor eta_r 1.5, kl_cap 0.7, beta 0.3, lambda 0.8",
            {"eta_r": 1.5, "kl_cap": 0.7, "reverse_trust": 0.3, "reverse_floor": 0.8},
        ),
        ("capped-kl eta_r 1.5, kl_cap 0.7", {"eta_r": 1.5, "kl_cap": 0.7, "reverse_trust": 0.0, "reverse_floor": 0.0}),
    ],
)
def test_the_reverse_loss_gives_the_recorded_values_and_gradients(case, flags):
    defaults = Args()
    assert (defaults.eta_r, defaults.kl_cap, defaults.reverse_trust, defaults.reverse_floor) == (1.0, 1.0, 1.0, 2.0)
    args = Args(**flags)
    phi = (2 * torch.cos(1.3 * RECORDED_INPUTS)).reshape(3, 4, 5).requires_grad_()
    start = RECORDED_START if args.reverse_trust else None  # as distill: no phi_start without the trust term
    value = reverse_distillation_loss(
        RECORDED_HIST, phi, start, args.eta_r, args.kl_cap, args.reverse_trust, args.reverse_floor
    )
    value.backward()
    assert value.item() == pytest.approx(RECORDED_LOSS[case], rel=1e-6)
    if case in RECORDED_GRAD:
        np.testing.assert_allclose(phi.grad.flatten().numpy(), RECORDED_GRAD[case], rtol=1e-5, atol=1e-8)
