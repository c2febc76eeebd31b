"""What randnet_mappo.py adds to MAPPO (the random convolution and feature matching), its functions and a
run end to end."""

import glob

import pytest
import torch
from conftest import run_script, spawned_workers
from test_algorithm import FakeEnvs
from test_mappo import error_line, only_run_dir, scalars

from eval_scenarios import CheckpointPolicy
from randnet_mappo import Actor, Args, feature_matching_loss, random_convolution_weight, randomize


def make_actor(**flags):
    torch.manual_seed(0)
    return Actor(FakeEnvs, Args(hidden_size=16, **flags))


def batch(rows=6):
    return torch.randint(0, 256, (rows, 5, 5, 3), dtype=torch.uint8), torch.randn(rows, 2)


def identity_kernel():
    weight = torch.zeros(3, 3, 3, 3)
    weight[[0, 1, 2], [0, 1, 2], 1, 1] = 1.0
    return weight


def test_the_random_layer_keeps_shapes_and_differs_from_draw_to_draw():
    image = torch.rand(4, 3, 5, 7)
    first, second = random_convolution_weight(torch.zeros(3, 3, 3, 3)), random_convolution_weight(torch.zeros(3, 3, 3, 3))
    assert first.shape == (3, 3, 3, 3) and not torch.equal(first, second)
    assert randomize(image, first).shape == image.shape
    assert not torch.allclose(randomize(image, first), randomize(image, second))
    # the identity kernel leaves the image as it is: the layer is a plain 3x3 'same' convolution
    torch.testing.assert_close(randomize(image, identity_kernel()), image)
    # Xavier normal: std sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (27 + 27))
    draws = torch.stack([random_convolution_weight(first) for _ in range(2000)])
    assert abs(draws.std().item() - (2 / 54) ** 0.5) < 0.005


def test_perturbed_rows_see_the_random_layer_and_the_others_the_clean_input():
    actor = make_actor()
    rgb, vector = batch()
    perturbed = torch.tensor([True, False, True, False, False, True])
    features = actor.features(rgb, vector, perturbed)
    clean = actor.torso(torch.cat([actor.cnn(rgb.permute(0, 3, 1, 2).float() / 255), vector], dim=1))
    noisy = actor.torso(
        torch.cat([actor.cnn(randomize(rgb.permute(0, 3, 1, 2).float() / 255, actor.random_conv)), vector], dim=1)
    )
    torch.testing.assert_close(features[~perturbed], clean[~perturbed])
    torch.testing.assert_close(features[perturbed], noisy[perturbed])
    assert not torch.allclose(noisy[perturbed], clean[perturbed])


def test_evaluation_sees_the_clean_input_or_the_mean_over_random_layers():
    actor = make_actor()
    rgb, vector = batch()
    clean = actor.features(rgb, vector, torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(actor.features(rgb, vector), clean)  # perturbed None: what evaluation calls
    state = actor.initial_state(6, "cpu")
    torch.testing.assert_close(
        actor.get_states(rgb, vector, state, torch.zeros(6))[0],
        actor.get_states(rgb, vector, state, torch.zeros(6), torch.zeros(6, dtype=torch.bool))[0],
    )
    # --randnet-mc 3: the mean of the features through 3 fresh random layers
    averaged = make_actor(randnet_mc=3)
    torch.manual_seed(5)
    result = averaged.features(rgb, vector)
    torch.manual_seed(5)
    image = rgb.permute(0, 3, 1, 2).float() / 255
    expected = torch.stack(
        [
            averaged.torso(
                torch.cat([averaged.cnn(randomize(image, random_convolution_weight(averaged.random_conv))), vector], dim=1)
            )
            for _ in range(3)
        ]
    ).mean(0)
    torch.testing.assert_close(result, expected)
    assert not torch.allclose(result, averaged.features(rgb, vector, torch.zeros(6, dtype=torch.bool)))


def test_feature_matching_loss_against_a_hand_computation():
    actor = make_actor()
    rgb, vector = batch()
    perturbed = torch.tensor([True, False, True, False, False, True])
    loss = feature_matching_loss(actor, rgb, vector, perturbed)
    clean = actor.features(rgb, vector, torch.zeros(6, dtype=torch.bool))
    noisy = actor.features(rgb, vector, torch.ones(6, dtype=torch.bool))
    expected = ((noisy - clean)[perturbed] ** 2).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    assert loss > 0
    # zero for identical features: no perturbed row, or a random layer that changes nothing
    assert feature_matching_loss(actor, rgb, vector, torch.zeros(6, dtype=torch.bool)).item() == 0.0
    actor.random_conv.copy_(identity_kernel())
    assert feature_matching_loss(actor, rgb, vector, perturbed).item() < 1e-10


def test_feature_matching_moves_the_perturbed_features_towards_the_clean_ones():
    actor = make_actor()
    rgb, vector = batch()
    perturbed = torch.ones(6, dtype=torch.bool)
    optimizer = torch.optim.SGD(actor.parameters(), lr=0.05)
    before = feature_matching_loss(actor, rgb, vector, perturbed)
    optimizer.zero_grad()
    before.backward()
    assert actor.cnn[0].weight.grad.abs().sum() > 0 and actor.random_conv.grad is None  # the layer never trains
    optimizer.step()
    assert feature_matching_loss(actor, rgb, vector, perturbed) < before


@pytest.mark.slow
def test_smoke_run_redraws_the_layer_checkpoints_resumes_and_is_evaluated(tmp_path, tiny_flags):
    before = spawned_workers()
    result = run_script(
        "randnet_mappo.py",
        *tiny_flags,
        "--total-timesteps",
        "128",
        "--snapshot-every",
        "1",
        "--randnet-prob",
        "1",
        cwd=tmp_path,
    )
    assert "iter 4/4" in result.stdout and "fm_loss" in result.stdout
    run_dir = only_run_dir(tmp_path)
    logged = scalars(run_dir)
    assert [v for _, v in logged["randnet/perturbed_fraction"]] == [1.0] * 4
    assert all(v > 0 for _, v in logged["randnet/fm_loss"])
    # a new random layer every iteration, saved with each iteration's snapshot of theta
    layers = [
        torch.load(path, weights_only=True)["actor"]["random_conv"]
        for path in sorted(glob.glob(f"{run_dir}/snapshots/theta_*.pt"))
    ]
    assert len(layers) == 4 and all(not torch.equal(a, b) for a, b in zip(layers, layers[1:]))

    result = run_script("randnet_mappo.py", "--resume", f"{run_dir}/checkpoint.pt", "--total-timesteps", "192", cwd=tmp_path)
    assert "iter 6/6" in result.stdout and only_run_dir(tmp_path) == run_dir
    assert spawned_workers() - before == set(), "environment workers outlived the run"

    # evaluation reads theta and sees the clean input
    checkpoint = torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)
    policy = CheckpointPolicy(f"{run_dir}/checkpoint.pt")
    assert torch.equal(policy.actor.cnn[0].weight, checkpoint["actor"]["cnn.0.weight"]) and policy.actor.randnet_mc == 0


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--randnet-prob", "2"], "error: --randnet-prob is a probability and must be in [0, 1], got 2.0"),
        (["--randnet-fm-coef", "-1"], "error: --randnet-fm-coef must be >= 0, got -1.0"),
        (["--randnet-mc", "-1"], "error: --randnet-mc must be >= 0, got -1"),
    ],
)
def test_bad_flags_get_one_line_errors(tmp_path, flags, expected):
    assert error_line(run_script("randnet_mappo.py", *flags, cwd=tmp_path, check=False)) == expected
