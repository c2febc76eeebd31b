"""Benchmark scripts: the optional peer benchmark's one-line errors, with or without BenchMARL installed,
learning_curve.py's run-wide phase summary against a hand computation, and profile_parts.py's stride-1 networks."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

PEER = os.path.join(ROOT, "benchmarks", "peer_benchmarl.py")
# runs the peer script as if BenchMARL were not installed (a None entry makes its import fail)
WITHOUT_BENCHMARL = (
    "import runpy, sys; sys.modules['benchmarl'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], "error: BenchMARL is not installed; `make peer` installs requirements-peer.txt"),
        (["--num-minibatches", "3"], "error: --num-minibatches 3 must divide --num-envs x --num-steps (1024)"),
        (["--iterations", "1"], "error: --iterations must be at least 2 (the first is not timed), got 1"),
        (
            ["--substrate", "clean_upp"],
            "error: --substrate 'clean_upp' is not a Melting Pot substrate; close matches: clean_up",
        ),
    ],
)
def test_peer_benchmark_bad_input_gets_one_line(tmp_path, flags, expected):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_BENCHMARL, PEER, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and result.stderr.strip() == expected


LEARNING_CURVE = os.path.join(ROOT, "benchmarks", "learning_curve.py")


def test_learning_curve_summarises_every_phase_by_direction(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in (10, 20, 30, 40):
        for tag in ("charts/episodic_return", "charts/collective_return", "losses/entropy", "mixed/episodic_return_all"):
            writer.add_scalar(tag, 1.0, step)
    # (step, direction, KL after, ratio, input dependence of phi, of theta): a reverse phase first (no forward
    # residual before it), then alternating; theta independent of its input at step 30 (no ratio to take)
    for step, direction, kl, ratio, phi_mi, theta_mi in [
        (5, -1, 0.7, 1.0, 0.2, 0.1),
        (10, 1, 0.02, 0.9, 0.05, 0.1),
        (20, -1, 0.8, 1.5, 0.3, 0.1),
        (30, 1, 0.01, 0.4, 0.05, 0.0),
        (40, -1, 0.5, 2.0, 0.1, 0.1),
    ]:
        writer.add_scalar("distill/direction", direction, step)
        writer.add_scalar("distill/kl_after", kl, step)
        for tag, value in (
            ("kl_before", 0.1),
            ("phi_entropy", 1.0),
            ("phi_logp_ratio", ratio),
            ("phi_input_dependence", phi_mi),
            ("theta_input_dependence", theta_mi),
        ):
            writer.add_scalar(f"distill/{tag}", value, step)
    writer.close()
    result = subprocess.run([sys.executable, LEARNING_CURVE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-3:] == [
        "reverse phases: 3; phi_logp_ratio after 1.00 to 2.00 (mean 1.50), below 0.5 in 0; "
        "input dependence phi / theta after 1.00 to 3.00 (mean 2.00); KL after 0.500 to 0.800 (mean 0.667)",
        "forward phases: 2; phi_logp_ratio after 0.40 to 0.90 (mean 0.65), below 0.5 in 1; "
        "input dependence phi / theta after 0.50 to 0.50 (mean 0.50); KL after 0.010 to 0.020 (mean 0.015)",
        # 0.8 - 0.02 and 0.5 - 0.01: the first reverse phase has no forward phase before it
        "reverse KL after minus the forward residual before it, over 2 reverse phases: 0.490 to 0.780 (mean 0.635)",
    ]


def test_stride_one_keeps_weights_and_reads_the_full_map(monkeypatch):
    """profile_parts.py's stride measurement: the 3x3 conv of every torso goes to stride 1 with the same weights, and
    the linear layer after it grows to the full map (11x11 cells: 32 x 11 x 11 inputs instead of 32 x 6 x 6)."""
    from types import SimpleNamespace

    import torch

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))  # profile_parts imports its neighbour
    from profile_parts import stride_one

    import mappo

    sizes = SimpleNamespace(rgb_shape=(11, 11, 3), world_shape=(16, 24, 3), vector_dim=2, num_actions=8, num_players=2)
    critic = mappo.Critic(sizes, mappo.Args())
    conv = critic.obs_cnn[2]
    weight = conv.weight.detach().clone()
    assert conv.stride == (2, 2) and critic.obs_cnn[5].in_features == 32 * 6 * 6
    stride_one(critic)
    value = critic.get_value(
        torch.zeros(3, 16, 24, 3, dtype=torch.uint8), torch.zeros(6, 11, 11, 3, dtype=torch.uint8), torch.zeros(6, 2)
    )
    assert value.shape == (6,)
    assert critic.obs_cnn[2] is conv and conv.stride == (1, 1) and torch.equal(conv.weight, weight)
    assert critic.obs_cnn[5].in_features == 32 * 11 * 11 and critic.world_cnn[5].in_features == 32 * 16 * 24


def test_regime_scan_judges_a_substrate_by_the_issues_rule(tmp_path, monkeypatch):
    """Three seeds: two earn 4 beside themselves, one 1.5; every held-out pair earns 1. Against uniform
    random play of 1, two of three seeds reach 2x and the gap (self-play - held-out) is above 0 in
    every bootstrap draw: it qualifies. Against random play of 2.5, no seed reaches 2x: it does not."""
    import json

    import numpy as np

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import regime_scan

    import study

    names = [f"mappo__seed{s}" for s in (1, 2, 3)]
    episodes = {(f, b): [4.0 if f != names[2] else 1.5] * 3 if f == b else [1.0, 0.9, 1.1] for f in names for b in names}
    episodes.update({(f, r): [0.5] * 3 for f in names for r in (study.RANDOM, study.UNTRAINED)})
    episodes[names[0], names[0]] = [4.0] * 3 + [100.0]  # a top-up to more episodes in progress: not the study's 3
    keys = {pair: {"focal": [pair[0], "x"], "background": [pair[1], ["y"]], "seed": 1, "num_focal": 1} for pair in episodes}
    folder = tmp_path / "scan"
    os.makedirs(folder)
    study.write_committed_episodes(str(folder), keys, episodes)
    json.dump(
        {
            "command": "",
            "args": {
                "substrate": "stag_hunt_in_the_matrix__repeated",
                "seeds": [1, 2, 3],
                "seed": 1,
                "bootstrap_samples": 2000,
                "num_episodes": 3,
                "total_timesteps": 2_000_000,
            },
        },
        open(folder / "study.json", "w"),
    )
    row = regime_scan.judge(str(folder), 1.0)
    assert row["learned"] == 2 and row["qualifies"] and row["kind"] == "mixed motive"
    assert row["summary"]["self_play"][0] == np.mean([4.0, 4.0, 1.5]) and row["summary"]["held_out"][0] == 1.0
    assert row["summary"]["gap"][1] > 0
    assert "| stag_hunt | 2M | 1.00 | 4.00, 4.00, 1.50 | 2 of 3 |" in regime_scan.markdown([row])
    assert "**yes** (gap > 0: yes, exploitable: no)" in regime_scan.markdown([row])  # mixed motive: both rules
    row = regime_scan.judge(str(folder), 2.5)
    assert row["learned"] == 0 and not row["qualifies"]
    saved = json.load(open(folder / "study.json"))
    saved["args"]["substrate"] = "running_with_scissors_in_the_matrix__repeated"
    json.dump(saved, open(folder / "study.json", "w"))
    row = regime_scan.judge(str(folder), 0.0)  # zero-sum: judged by exploitability alone
    assert row["kind"] == "zero-sum" and not row["exploitable"] and not row["qualifies"]
    assert "| 2M | 0.00 | 4.00, 4.00, 1.50 | n/a (zero-sum) |" in regime_scan.markdown([row])
    assert "**no** (exploitable: no)" in regime_scan.markdown([row])
    # random play that loses (coins): learned means at least 0, not 2x the loss
    saved["args"]["substrate"] = "coins"
    json.dump(saved, open(folder / "study.json", "w"))
    episodes[names[2], names[2]] = [-0.5] * 3
    study.write_committed_episodes(str(folder), keys, episodes)
    assert regime_scan.judge(str(folder), -1.0)["learned"] == 2
    # seed 1 loses beside strangers (-5) while the others earn 1: exploitable, which qualifies a mixed-motive
    # substrate (coins) without a gap, but not a common-interest one, where it would be unequal skill
    for b in names[1:]:
        episodes[names[0], b] = [-5.0, -5.1, -4.9]
    study.write_committed_episodes(str(folder), keys, episodes)
    row = regime_scan.judge(str(folder), -1.0)
    assert row["exploitable"] and row["qualifies"] and row["kind"] == "mixed motive"
    assert "(gap > 0: " in regime_scan.markdown([row]) and ", exploitable: yes)" in regime_scan.markdown([row])
    saved["args"]["substrate"] = "pure_coordination_in_the_matrix__repeated"
    json.dump(saved, open(folder / "study.json", "w"))
    row = regime_scan.judge(str(folder), -1.0)
    assert row["exploitable"] and row["qualifies"] == (row["summary"]["gap"][1] > 0)
    assert "exploitable" not in regime_scan.markdown([row])


def test_conventions_shares_a_populations_inventories_over_steps_and_players(monkeypatch):
    """Two steps of two players holding 1+0, 0+2 and 1+0, 0+1 of three resources: shares 2/5, 2/5, 1/5;
    an empty inventory throughout has no share (nan), not a division by zero."""
    import numpy as np

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import conventions

    steps = [[[1, 0, 0], [0, 2, 0]], [[1, 0, 0], [0, 0, 1]]]
    assert conventions.inventory_shares(steps).tolist() == [0.4, 0.4, 0.2]
    assert np.isnan(conventions.inventory_shares(np.zeros((3, 2, 2)))).all()


def test_conventions_reads_a_committed_population_beside_itself():
    """A committed pure_coordination population, 40 steps of one self-play episode: one table row whose
    three resource shares sum to 1, and a one-line error for a file that is not there."""
    population = os.path.join(ROOT, "results", "pure_coordination_2m", "runs", "mappo__seed1", "population.pt")
    script = os.path.join(ROOT, "benchmarks", "conventions.py")
    result = subprocess.run(
        [sys.executable, script, population, "--episodes", "1", "--max-steps", "40"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| mappo__seed1 |"))
    shares = [float(cell) for cell in row.split("|")[2:5]]
    assert abs(sum(shares) - 1) < 0.02 and "resource 3" in result.stdout
    missing = subprocess.run([sys.executable, script, "nowhere.pt"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == ["error: population nowhere.pt: no such file"]
