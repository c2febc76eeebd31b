"""The generalisation study runner: method parsing, resume decisions, held-out sets, the bootstrap
against an exhaustive enumeration, the writers, and a tiny study end to end."""

import glob
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ALGORITHM_SCRIPTS, ROOT, TINY, run_script
from test_mappo import error_line

import cluster
from study import (
    RANDOM,
    RETURN_COLUMN,
    UNTRAINED,
    WALL_COLUMN,
    ExternalRun,
    Method,
    Population,
    Run,
    crossplay,
    export_external,
    export_population,
    external_population,
    held_out_mask,
    interval,
    markdown_by_population,
    parse_method,
    run_status,
    seeds_by_method,
    statistics,
    summarise_method,
    summarise_reference,
    train_job,
    training_summary,
    write_outputs,
)


def test_methods_parse_with_labels_flags_and_one_line_errors():
    assert parse_method("mappo") == Method("mappo", "mappo", ())
    assert parse_method("bidist_mappo --p 0.3") == Method("bidist_mappo_p_0.3", "bidist_mappo", ("--p", "0.3"))
    assert parse_method("low_p=bidist_mappo.py --p 0.1") == Method("low_p", "bidist_mappo", ("--p", "0.1"))
    with pytest.raises(SystemExit) as error:
        parse_method("ppo")
    valid = ", ".join(f"{s}.py" for s in ALGORITHM_SCRIPTS)  # every training script beside study.py
    assert str(error.value) == (
        f"error: --methods 'ppo' names ppo.py, which is not a training script here (no such "
        f"file in the project folder); training scripts: {valid} (the contract: "
        f"docs/add-your-own-method.md)"
    )
    assert {"mappo", "bidist_mappo", "fsp_mappo"} <= set(ALGORITHM_SCRIPTS) and "study" not in ALGORITHM_SCRIPTS
    with pytest.raises(SystemExit, match=r"names utils.py, which is not a training script here \(it defines no Args"):
        parse_method("utils")
    with pytest.raises(SystemExit, match="sets --seed, which the study sets per run"):
        parse_method("mappo --seed 3")
    # a flag the script does not take is named before any training starts; --no-X of a boolean X is a flag
    assert parse_method("bidist_mappo --no-reverse").flags == ("--no-reverse",)
    with pytest.raises(SystemExit) as error:
        parse_method("mappo --p 0.3")
    assert (
        str(error.value)
        == "error: --methods 'mappo --p 0.3' passes --p, which mappo.py does not take (python mappo.py --help)"
    )


def test_seeds_of_gives_one_method_its_own_seeds_and_bad_entries_one_line_errors():
    methods = [Method("mappo", "mappo", ()), Method("bidist_mappo", "bidist_mappo", ())]
    assert seeds_by_method([1, 2, 3], [], methods) == {"mappo": [1, 2, 3], "bidist_mappo": [1, 2, 3]}
    assert seeds_by_method([1, 2, 3], ["bidist_mappo=1,2,3,4,5"], methods) == {
        "mappo": [1, 2, 3],
        "bidist_mappo": [1, 2, 3, 4, 5],
    }
    for seeds_of, expected in [
        (["bidist_mappo"], "error: --seeds-of 'bidist_mappo': write LABEL=SEED,SEED,... (e.g. bidist_mappo=1,2,3,4,5)"),
        (["bidist_mappo=4 5"], "error: --seeds-of 'bidist_mappo=4 5': write LABEL=SEED,SEED,..."),
        (["fsp=4"], "error: --seeds-of 'fsp=4': no method labelled 'fsp' (--methods: mappo, bidist_mappo)"),
        (["mappo=4", "mappo=5"], "error: --seeds-of names mappo twice; give all its seeds in one mappo=SEED,SEED,..."),
        (["mappo=4,5,4"], "error: --seeds-of mappo=... lists seed 4 twice"),
    ]:
        with pytest.raises(SystemExit) as error:
            seeds_by_method([1, 2, 3], seeds_of, methods)
        assert str(error.value).startswith(expected), seeds_of
    with pytest.raises(SystemExit, match="^error: --seeds lists seed 2 twice$"):
        seeds_by_method([1, 2, 2], [], methods)


def fake_checkpoint(path, iteration, num_envs=8, num_steps=128, **extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(
        {
            "algorithm": "mappo",
            "iteration": iteration,
            "global_step": iteration * num_envs * num_steps,
            "args": {"num_envs": num_envs, "num_steps": num_steps},
            **extra,
        },
        path,
    )


def test_finished_runs_are_not_retrained_and_killed_runs_resume(tmp_path):
    run = Run(Method("mappo", "mappo", ("--num-envs", "4")), 2, str(tmp_path / "mappo__seed2"))
    args = SimpleNamespace(substrate="coins", total_timesteps=10 * 4 * 128, snapshot_every=5, train_flags="--num-steps 128")
    assert run_status(run, args.total_timesteps) == "new"
    os.makedirs(f"{run.directory}/runs/killed_before_its_first_checkpoint")
    command = cluster.command_in(train_job(run, args, 1), cluster.ROOT, run.directory)
    assert command[1].endswith("mappo.py") and "--resume" not in command
    assert not os.path.exists(f"{run.directory}/runs"), "a run killed before its first checkpoint starts over"
    assert command[command.index("--seed") + 1] == "2" and command[command.index("--num-workers") + 1] == "1"
    assert command[command.index("--torch-threads") + 1] == "1"
    assert command.index("--num-steps") < command.index("--num-envs"), "the method's flags come last"

    fake_checkpoint(f"{run.directory}/runs/coins__mappo__2__1/checkpoint.pt", iteration=7, num_envs=4)
    assert run_status(run, args.total_timesteps) == "resume", "7 of 10 iterations: resume"
    command = cluster.command_in(train_job(run, args, 1), cluster.ROOT, run.directory)
    assert command[-2:] == ["--resume", f"{run.directory}/runs/coins__mappo__2__1/checkpoint.pt"]  # absolute (tmp_path)

    fake_checkpoint(f"{run.directory}/runs/coins__mappo__2__1/checkpoint.pt", iteration=10, num_envs=4)
    assert run_status(run, args.total_timesteps) == "done"
    assert run_status(run, 2 * args.total_timesteps) == "resume", "a longer study continues a finished run"


def test_runs_trained_elsewhere_join_by_checkpoint_or_directory(tmp_path):
    fake_checkpoint(f"{tmp_path}/a/checkpoint.pt", iteration=1, substrate="coins")
    torch.save(
        dict(
            torch.load(f"{tmp_path}/a/checkpoint.pt", weights_only=True),
            actor={},
            args={"exp_name": "bidist_mappo", "seed": 4, "downsample": True, "hidden_size": 8},
        ),
        f"{tmp_path}/a/checkpoint.pt",
    )
    path = f"{tmp_path}/a/checkpoint.pt"
    assert external_population(f"{tmp_path}/a", "coins") == ExternalRun(Method("bidist_mappo", "mappo", ()), 4, path)
    labelled = external_population(f"mine={path}", "coins")
    assert labelled.method.label == "mine" and labelled.seed == 4 and labelled.path == path
    with pytest.raises(SystemExit, match=r"error: --runs .*/b: no such file"):
        external_population(f"{tmp_path}/b", "coins")
    with pytest.raises(SystemExit, match=r"error: --runs .*/a/checkpoint.pt was trained on coins, not --substrate clean_up$"):
        external_population(f"{tmp_path}/a", "clean_up")


def test_the_held_out_set_never_holds_the_focal_run():
    mask = held_out_mask(np.arange(3), np.arange(3))  # three populations, each its own column
    assert not mask.diagonal().any() and mask.sum() == 6
    draws = held_out_mask(np.array([[2, 2]]), np.array([[2, 0, 2]]))  # a bootstrap draw: focal 2 twice
    assert draws.tolist() == [[[False, True, False], [False, True, False]]]
    # own run worth 100, every never-met population 1: the held-out estimate and every bootstrap
    # draw see only the 1s, self-play only the 100s
    matrix = np.where(mask, 1.0, 100.0)
    summary = summarise_method(matrix[..., None], [0, 1], np.arange(3), 2000, np.random.default_rng(0))
    assert summary["held_out"] == (1.0, 1.0, 1.0)
    assert summary["self_play"] == (100.0, 100.0, 100.0) and summary["gap"] == (99.0, 99.0, 99.0)


def test_bootstrap_interval_matches_an_exhaustive_enumeration():
    matrix = np.array([[5.0, 1.0, 2.0], [3.0, 6.0, 0.0], [4.0, 8.0, 7.0]])
    rows, own = [0, 1], np.arange(3)
    # point estimates by hand: held-out pairs (0,1) (0,2) (1,0) (1,2) -> (1 + 2 + 3 + 0) / 4; self-play (5 + 6) / 2
    summary = summarise_method(matrix[..., None], rows, own, 200_000, np.random.default_rng(1))  # one episode a pair
    assert summary["held_out"][0] == 1.5 and summary["self_play"][0] == 5.5 and summary["gap"][0] == 4.0
    # every equally likely draw: 2 focal seeds from {0, 1} and 3 backgrounds from {0, 1, 2}
    held_out, gap = [], []
    for focal in itertools.product(rows, repeat=2):
        for background in itertools.product(range(3), repeat=3):
            pairs = [matrix[f, b] for f in focal for b in background if b != f]
            if pairs:
                held_out.append(np.mean(pairs))
                gap.append(np.mean([matrix[f, f] for f in focal]) - np.mean(pairs))
            else:
                gap.append(np.nan)
    exact = np.percentile(held_out, [2.5, 97.5])
    assert summary["held_out"][1:] == pytest.approx(exact, abs=0.05)
    assert summary["gap"][1:] == pytest.approx(np.nanpercentile(gap, [2.5, 97.5]), abs=0.05)


def test_the_intervals_hold_the_episodes_uncertainty():
    # every pair's two episodes return 0 and 2: pair means are all 1, so seeds and backgrounds alone would give
    # [1, 1]; a draw's self-play over 2 seeds is the mean of 4 episodes drawn from {0, 2}: 0 with probability
    # 1/16, 2 with 1/16, so the 2.5% and 97.5% points are 0 and 2
    episodes = np.tile([0.0, 2.0], (3, 3, 1))
    summary = summarise_method(episodes, [0, 1], np.arange(3), 100_000, np.random.default_rng(0))
    assert summary["self_play"] == (1.0, 0.0, 2.0)
    low, high = summary["held_out"][1:]  # the mean of 2 x 2 pairs x 2 episodes = 8 draws from {0, 2}: narrower
    assert 0.0 < low < 1.0 < high < 2.0 and low == pytest.approx(2 - high)
    # beside a reference: the same resampling, seed then episodes
    assert summarise_reference([[0.0, 2.0], [0.0, 2.0]], 100_000, np.random.default_rng(0)) == (1.0, 0.0, 2.0)
    assert summarise_reference([[1.0, 1.0], [3.0, 3.0]], 1000, np.random.default_rng(0)) == (2.0, 1.0, 3.0)


def synthetic_study(tmp_path):
    populations = [Population("mappo", s, f"m{s}.pt") for s in (1, 2)] + [Population("bidist", s, f"b{s}.pt") for s in (1, 2)]
    names = [p.name for p in populations]
    backgrounds = {**{n: (n,) for n in names}, RANDOM: (RANDOM,), UNTRAINED: ("u.pt",)}
    rng = np.random.default_rng(0)
    results = {(f, b): list(rng.normal(2.0 if f == b else 1.0, 0.1, size=3)) for f in names for b in backgrounds}
    args = SimpleNamespace(
        out=str(tmp_path), substrate="coins", num_episodes=3, num_focal=1, seed=1, bootstrap_samples=1000, reference=(0.0, 4.0)
    )
    return populations, backgrounds, results, args


def test_held_out_differences_pair_the_backgrounds_of_both_methods():
    """Method a earns 3 more than b beside every stranger: the difference is 3 in every draw. When the
    strangers differ a lot (sd 10) and the methods not at all, each method's own held-out interval is wide,
    but the paired difference, where both meet the same draw of strangers, is narrower than either alone
    (an unpaired one would be wider than either)."""
    from study import held_out_differences

    rows = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}
    episodes = np.zeros((8, 8, 2))
    episodes[:4] = 5.0
    episodes[4:] = 2.0
    differences = held_out_differences(episodes, rows, 500, np.random.default_rng(0))
    assert differences["a", "b"] == pytest.approx((3.0, 3.0, 3.0)) and differences["b", "a"] == pytest.approx(
        (-3.0, -3.0, -3.0)
    )

    rng = np.random.default_rng(1)
    strangers = rng.normal(0.0, 10.0, size=8)
    episodes = strangers[None, :, None] + rng.normal(0.0, 0.1, size=(8, 8, 2))
    difference, low, high = held_out_differences(episodes, rows, 4000, np.random.default_rng(2))["a", "b"]
    _, a_low, a_high = summarise_method(episodes, rows["a"], np.arange(8), 4000, np.random.default_rng(2))["held_out"]
    assert low <= difference <= high and high - low < 0.6 * (a_high - a_low)  # 0.48 here


def test_against_a_yardstick_held_out_is_beside_its_populations_alone(tmp_path):
    """--against: the new method's held-out return is its mean beside the yardstick's populations (never beside
    its own other seeds, whose pairs are not played), the yardstick method's own numbers are its study's, and the
    paired difference is the difference of the two point estimates."""
    populations = [Population("new", s, f"n{s}.pt") for s in (1, 2)] + [Population("y", s, f"y{s}.pt") for s in (1, 2, 3)]
    pool = ["y__seed1", "y__seed2", "y__seed3"]
    rng = np.random.default_rng(0)
    results = {(f, b): list(rng.normal(size=4)) for f in pool for b in pool}
    results |= {(f, b): list(rng.normal(size=4) + 5) for f in ("new__seed1", "new__seed2") for b in pool + [f]}
    args = SimpleNamespace(num_episodes=4, seed=1, bootstrap_samples=500, reference=None)
    matrix, summary = statistics(populations, results, args, pool)
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[2, 0]), "pairs not played"
    beside_pool = np.mean([np.mean(results[f, b]) for f in ("new__seed1", "new__seed2") for b in pool])
    assert summary["new"]["held_out"][0] == pytest.approx(beside_pool)
    assert summary["new"]["held_out"][1] < beside_pool < summary["new"]["held_out"][2]
    alone = statistics(populations[2:], {k: v for k, v in results.items() if k[0] in pool}, args)[1]["y"]
    for key in ("self_play", "held_out", "gap"):
        assert summary["y"][key][0] == pytest.approx(alone[key][0])
    assert set(summary["new"]["held_out_by_method"]) == {"y"}
    difference = summary["new"]["held_out_minus"]["y"]
    assert difference[0] == pytest.approx(beside_pool - summary["y"]["held_out"][0]) and difference[1] > 0


def test_against_with_all_pairs_fills_held_out_by_method_and_leaves_held_out_beside_the_yardstick():
    """--against --all-pairs: every pair is played, so each method gets a held-out return beside every
    method's runs (beside the new method's: computed by hand here), while held-out itself, the paired
    difference and the per-population held-out column stay the return beside the yardstick alone."""
    populations = [Population("new", s, f"n{s}.pt") for s in (1, 2)] + [Population("y", s, f"y{s}.pt") for s in (1, 2, 3)]
    names = [p.name for p in populations]
    pool = names[2:]
    results = {(f, b): [1.0, 3.0] for f in pool for b in pool}  # beside the yardstick: 2
    results |= {(f, b): [5.0, 7.0] for f in names[:2] for b in pool + [f]}  # the new method beside it: 6
    results |= {("new__seed1", "new__seed2"): [20.0, 20.0], ("new__seed2", "new__seed1"): [30.0, 30.0]}
    results |= {(f, b): [-4.0, -4.0] for f in pool for b in names[:2]}  # the yardstick beside the new method
    args = SimpleNamespace(num_episodes=2, seed=1, bootstrap_samples=200, reference=None)
    _, summary = statistics(populations, results, args, pool)
    assert summary["new"]["held_out"][0] == pytest.approx(6.0) and summary["y"]["held_out"][0] == pytest.approx(2.0)
    assert summary["new"]["held_out_minus"]["y"][0] == pytest.approx(4.0)
    by_method = {m: {b: v[0] for b, v in summary[m]["held_out_by_method"].items()} for m in summary}
    assert by_method == {"new": {"new": pytest.approx(25.0), "y": pytest.approx(6.0)}, "y": {"new": -4.0, "y": 2.0}}
    _, partial = statistics(
        populations, {k: v for k, v in results.items() if not (k[0] in pool and k[1] in names[:2])}, args, pool
    )
    assert set(partial["y"]["held_out_by_method"]) == {"y"}, "a background method not played beside every row"
    rows = {line.split(" | ")[0]: line for line in markdown_by_population(populations, results, pool).splitlines()}
    assert "| 6.00 ± " in rows["| new__seed1"] and "| -4.00 ± " not in rows["| y__seed1"]


def test_against_refuses_a_yardstick_it_cannot_be_measured_beside_in_one_line(tmp_path):
    """A yardstick must share the settings that key its pairs and the budget, hold every population its
    study.json names, and have cross-played them all; a study regenerated --from-results keeps the yardstick's
    populations it was measured against (pinned)."""
    from study import EPISODE_COLUMNS, yardstick

    y = str(tmp_path / "y")
    os.makedirs(f"{y}/runs/mappo__seed1")
    torch.save({}, f"{y}/runs/mappo__seed1/population.pt")
    record = {"args": {"substrate": "coins", "methods": ["mappo"], "seeds": [1, 2], "total_timesteps": 1000}}
    (tmp_path / "y" / "study.json").write_text(json.dumps(record))
    args = lambda **changed: SimpleNamespace(  # noqa: E731
        **{"against": y, "substrate": "coins", "total_timesteps": 1000, "seed": 1, "num_focal": 1, "num_episodes": 10}
        | {"num_untrained": 3, **changed}
    )
    study = f"{y}/study.json"
    for call, expected in [
        (
            args(substrate="clean_up"),
            f"error: --substrate clean_up differs from the --against study's (coins, in {study}): pass --substrate coins",
        ),
        (
            args(total_timesteps=2000),
            f"error: --total-timesteps 2000 differs from the --against study's (1000, in {study}): methods are "
            "compared at equal budgets",
        ),
        (
            args(num_episodes=40),
            f"error: --num-episodes 40 differs from the --against study's (10, in {study}): pass --num-episodes 10",
        ),
        (
            args(),
            f"error: --against {y}: 1 population(s) of its study.json not exported there (mappo__seed2); run that "
            f"study's command to train them",
        ),
    ]:
        with pytest.raises(SystemExit) as error:
            yardstick(call)
        assert str(error.value) == expected
    os.makedirs(f"{y}/runs/mappo__seed2")
    torch.save({}, f"{y}/runs/mappo__seed2/population.pt")
    names = ["mappo__seed1", "mappo__seed2"]
    pairs = [(f, b) for f in names for b in names + [RANDOM, UNTRAINED]]
    rows = [(f, b, e, 1.0, "id", "id", 1, 1) for f, b in pairs[:-1] for e in range(10)]  # the last pair missing
    pd.DataFrame(rows, columns=EPISODE_COLUMNS).to_csv(f"{y}/crossplay_episodes.csv", index=False)
    with pytest.raises(SystemExit) as error:
        yardstick(args())
    assert str(error.value) == (
        f"error: --against {y}: its cross-play lacks 1 pair(s) (first: mappo__seed2 vs untrained); finish that "
        f"study with its own command first"
    )
    rows += [(*pairs[-1], e, 1.0, "id", "id", 1, 1) for e in range(10)]
    pd.DataFrame(rows, columns=EPISODE_COLUMNS).to_csv(f"{y}/crossplay_episodes.csv", index=False)
    populations, runs = yardstick(args())
    assert [p.name for p in populations] == names and runs[1].results == y
    assert [p.name for p in yardstick(args(), pinned=["mappo__seed2"])[0]] == ["mappo__seed2"]
    with pytest.raises(SystemExit, match="no longer holds mappo__seed3, which this study was measured against"):
        yardstick(args(), pinned=["mappo__seed3"])
    (tmp_path / "y" / "study.json").write_text(json.dumps({"args": {**record["args"], "against": "results/x"}}))
    with pytest.raises(SystemExit, match="was itself measured --against results/x; measure against that study"):
        yardstick(args())


def test_table_matrix_and_plots_are_written(tmp_path):
    populations, backgrounds, results, args = synthetic_study(tmp_path)
    matrix, summary = statistics(populations, results, args)
    assert matrix.shape == (4, 4) and matrix[1, 2] == pytest.approx(np.mean(results["mappo__seed2", "bidist__seed1"]))
    table = write_outputs(populations, backgrounds, results, matrix, summary, args)
    lines = table.splitlines()
    assert lines[0].startswith("| method | focal seeds | self-play | held-out (never met) |") and len(lines) == 4
    mappo = summary["mappo"]
    held = np.mean(
        [
            np.mean(results[f, b])
            for f in ("mappo__seed1", "mappo__seed2")
            for b in ("mappo__seed1", "mappo__seed2", "bidist__seed1", "bidist__seed2")
            if b != f
        ]
    )
    assert mappo["held_out"][0] == pytest.approx(held) and mappo["held_out"][1] <= held <= mappo["held_out"][2]
    assert mappo["held_out_normalised"][0] == pytest.approx(held / 4)
    assert f"| mappo | 2 | {mappo['self_play'][0]:.2f} [" in table and table in open(tmp_path / "results.md").read()
    # held-out beside one method's runs alone: mappo beside bidist's two runs, and beside mappo's other seed
    beside = {
        "bidist": [(f, b) for f in ("mappo__seed1", "mappo__seed2") for b in ("bidist__seed1", "bidist__seed2")],
        "mappo": [("mappo__seed1", "mappo__seed2"), ("mappo__seed2", "mappo__seed1")],
    }
    for other, pairs in beside.items():
        estimate, low, high = mappo["held_out_by_method"][other]
        assert estimate == pytest.approx(np.mean([np.mean(results[pair]) for pair in pairs])) and low <= estimate <= high
    by_method = open(tmp_path / "results.md").read().split("## Held-out by background method")[1]
    assert "| focal / background | mappo | bidist |" in by_method
    assert f"| mappo | {mappo['held_out_by_method']['mappo'][0]:.2f} [" in by_method
    # the paired differences: row minus column, the pair's two entries opposite
    difference = summary["bidist"]["held_out_minus"]["mappo"]
    assert difference[0] == pytest.approx(summary["bidist"]["held_out"][0] - mappo["held_out"][0])
    assert mappo["held_out_minus"]["bidist"] == pytest.approx((-difference[0], -difference[2], -difference[1]))
    differences = open(tmp_path / "results.md").read().split("## Held-out differences between methods")[1]
    assert (
        "| method / minus | mappo | bidist |" in differences
        and f"| bidist | {interval(difference)}" in differences.replace("**", "")
    )

    csv = pd.read_csv(tmp_path / "crossplay.csv")
    assert len(csv) == 4 * 6
    assert set(csv[csv.focal == csv.background].relation) == {"self-play"}
    assert (csv.relation == "held-out").sum() == 12 and (csv.relation == "reference").sum() == 8
    report = json.load(open(tmp_path / "crossplay.json"))
    assert np.allclose(report["matrix"]["mean_focal_return"], matrix)
    for name in ("crossplay_heatmap.png", "methods.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / name) > 10_000


def test_training_table_reads_each_runs_log_and_every_own_namespace(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    runs = []
    for seed, ratios in [(1, [0.9, 0.2, 0.6]), (2, [0.8, 0.7, 0.4])]:
        run = Run(Method("mine", "bidist_mappo", ()), seed, str(tmp_path / f"mine__seed{seed}"))
        fake_checkpoint(f"{run.directory}/runs/x/checkpoint.pt", iteration=3)
        writer = SummaryWriter(f"{run.directory}/runs/x")
        clock = lambda step: 4.5 * seed * step  # noqa: E731  (a log from 100 to 300 steps: 0.25 h or 0.5 h)
        for step, ratio in zip([100, 200, 300], ratios):
            writer.add_scalar("anything/ratio", ratio, step, walltime=clock(step))  # a namespace no code here knows
            writer.add_scalar("charts/episodic_return", seed * step / 100, step, walltime=clock(step))  # 1, 2, 3; 2, 4, 6
            writer.add_scalar("losses/entropy", 1.0, step, walltime=clock(step))  # shared: not a method's own
        writer.add_scalar("anything/late", 5.0, 100, walltime=clock(100))  # only before the last 10% of the steps
        writer.add_scalar("anything/late", 1.0 * seed, 250, walltime=clock(250))
        writer.close()
        runs.append(run)
    lines = training_summary(runs).splitlines()
    assert lines[:3] == [
        "| method | seeds | return (trained slots), last 10% | wall time per run, hours |",
        "|---|---|---|---|",
        "| mine | 2 | 4.50 [-14.56, 23.56] (3.00 to 6.00) | 0.38 (0.25 to 0.50) |",
    ]  # the last 10% of steps (> 270): 3 and 6; 4.5 +- t(0.975, 1 dof) 12.706 x sd 2.121 / sqrt(2)
    assert lines[6:] == [
        "| method | scalar | last 10% | minimum | final |",
        "|---|---|---|---|---|",
        "| mine | anything/late | - | 1.50 (1.00 to 2.00) | 1.50 (1.00 to 2.00) |",  # minima and final values 1 and 2
        "| mine | anything/ratio | 0.50 (0.40 to 0.60) | 0.30 (0.20 to 0.40) | 0.50 (0.40 to 0.60) |",
    ]


def test_runs_added_with_runs_bring_their_training_to_training_md_and_to_the_export(tmp_path):
    """--runs: the summary.json and training.csv another study exported beside a population, or the log beside a
    training checkpoint, give the population's method its row in training.md; exporting it to this study's
    --results carries them along, relabelled, so that --from-results keeps the row. A population with neither
    has no row."""
    from torch.utils.tensorboard import SummaryWriter

    weights = {"actor": {"w": torch.ones(2)}, "substrate": "coins"}
    fake_checkpoint(
        f"{tmp_path}/d/runs/x/checkpoint.pt", iteration=3, args={"seed": 2, "downsample": True, "hidden_size": 8}, **weights
    )
    writer = SummaryWriter(f"{tmp_path}/d/runs/x")
    for step in [100, 200, 300]:  # 36 minutes from the first value to the last: 0.6 h
        writer.add_scalar("charts/episodic_return", step / 100, step, walltime=1000 + 10.8 * (step - 100))
    writer.close()
    exported = f"{tmp_path}/a/runs/bidist_mappo__seed1"
    export_population(f"{tmp_path}/d/runs/x/checkpoint.pt", f"{exported}/population.pt")
    with open(f"{exported}/summary.json", "w") as f:
        json.dump({"name": "bidist_mappo__seed1", "method": "bidist_mappo", "seed": 1, "training": {RETURN_COLUMN: 7.0}}, f)
    with open(f"{exported}/training.csv", "w") as f:
        f.write("step_start,step_end,charts/episodic_return\n0,300,7.0\n")
    from_export = ExternalRun(Method("default", "bidist_mappo", ()), 1, f"{exported}/population.pt")
    from_log = ExternalRun(Method("mine", "mappo", ()), 2, f"{tmp_path}/d/runs/x/checkpoint.pt")
    rows = training_summary([from_export, from_log]).splitlines()[2:4]
    assert rows == ["| default | 1 | 7.00 | - |", "| mine | 1 | 3.00 | 0.60 |"]

    moved = [export_external(run, f"{tmp_path}/b/runs/{run.method.label}__seed{run.seed}") for run in (from_export, from_log)]
    with open(f"{tmp_path}/b/runs/default__seed1/summary.json") as f:
        assert json.load(f) == {"name": "default__seed1", "method": "default", "seed": 1, "training": {RETURN_COLUMN: 7.0}}
    with open(f"{tmp_path}/b/runs/mine__seed2/summary.json") as f:
        summary = json.load(f)
    assert summary["training"][RETURN_COLUMN] == 3.0 and summary["training"][WALL_COLUMN] == pytest.approx(0.6)
    assert pd.read_csv(f"{tmp_path}/b/runs/default__seed1/training.csv")["charts/episodic_return"].tolist() == [7.0]
    again = [ExternalRun(run.method, run.seed, path) for run, path in zip((from_export, from_log), moved)]
    assert training_summary(again).splitlines()[2:4] == rows, "the export keeps the rows (--from-results)"
    os.remove(f"{tmp_path}/b/runs/mine__seed2/summary.json")
    assert training_summary(again[1:]) == "", "no log and no export: no row"


def test_wall_time_of_a_resumed_run_leaves_out_the_pause(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from study import run_wall_time

    assert np.isnan(run_wall_time(tmp_path))  # no log
    for start, end in [(100.0, 400.0), (10_000.0, 10_600.0)]:  # trained 300 s, stopped, resumed for 600 s
        writer = SummaryWriter(tmp_path)
        writer.add_scalar("charts/SPS", 1.0, 1, walltime=start)
        writer.add_scalar("charts/SPS", 1.0, 2, walltime=end)
        writer.close()
    assert len(glob.glob(f"{tmp_path}/events.out.tfevents.*")) == 2
    assert run_wall_time(tmp_path) == pytest.approx(900 / 3600)


def test_trained_return_interval_is_a_t_interval_over_the_seeds_that_have_one():
    from study import mean_interval_and_range

    # 1, 2, 3: mean 2, sd 1, t(0.975, 2 dof) 4.303 / sqrt(3) = 2.48; a run with no return (nan) is left out
    assert mean_interval_and_range([1.0, np.nan, 3.0, 2.0]) == "2.00 [-0.48, 4.48] (1.00 to 3.00)"
    assert mean_interval_and_range([5.0, np.nan]) == "5.00"  # one seed: no interval, no range
    assert mean_interval_and_range([np.nan]) == "-"


def test_progress_of_a_running_run_comes_from_its_own_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from study import Progress

    run = Run(Method("mine", "mappo", ()), 1, str(tmp_path / "mine__seed1"))
    progress = Progress(run, total_timesteps=1000)
    assert progress.line() == ""  # no log yet
    writer = SummaryWriter(f"{run.directory}/runs/x")
    for step in range(1, 31):
        writer.add_scalar("charts/episodic_return", step, step * 10)
    writer.add_scalar("charts/SPS", 123.4, 250)
    writer.flush()
    assert progress.line() == "step 250/1,000 (25%) | SPS 123 | return/player 20.50"  # mean of returns 11 to 30
    writer.add_scalar("charts/SPS", 99, 500)
    writer.close()
    assert progress.line().startswith("step 500/1,000 (50%) | SPS 99 |")  # read on from where it stopped


@pytest.mark.slow
def test_tiny_study_end_to_end_then_resumed(tmp_path):
    train_flags = "--train-flags=" + " ".join(TINY)
    flags = [
        "--out",
        "study",
        "--substrate",
        "collaborative_cooking__asymmetric",
        "--seeds",
        "1",
        "2",
        "--total-timesteps",
        "32",
        train_flags,
        "--num-episodes",
        "1",
        "--num-untrained",
        "1",
    ]
    first = run_script("study.py", *flags, cwd=tmp_path, timeout=600)
    out = tmp_path / "study"
    for name in (
        "results.md",
        "training.md",
        "crossplay.csv",
        "crossplay.json",
        "crossplay_heatmap.png",
        "methods.png",
        "policy_space.png",
    ):
        assert (out / name).exists(), name
    assert "| mappo | 2 |" in first.stdout and "| bidist_mappo | 2 |" in first.stdout
    assert re.search(r"^mappo__seed1: finished \(0\.\d\d h of training\)$", first.stdout, re.M)  # the time it took
    assert re.search(r"^cross-play: \d+ episode\(s\) played in \d+\.\d minutes$", first.stdout, re.M)
    pairs = pd.read_csv(out / "crossplay.csv")
    assert len(pairs) == 4 * (4 + 2) and set(pairs.background) >= {RANDOM, UNTRAINED}
    space = pd.read_csv(out / "policy_space.csv")
    assert set(zip(space.method, space.population)) == {("mappo", "theta"), ("bidist_mappo", "theta"), ("bidist_mappo", "phi")}

    checkpoints = sorted(glob.glob(f"{out}/*/runs/*/checkpoint.pt"))
    assert len(checkpoints) == 4
    mtimes = [os.path.getmtime(c) for c in checkpoints]
    again = run_script("study.py", *flags, "--no-policy-space", cwd=tmp_path)
    assert again.stdout.count("finished, not retrained") == 4 and "cross-play:" not in again.stdout
    assert [os.path.getmtime(c) for c in checkpoints] == mtimes

    # a longer study continues each run from its checkpoint (as after a kill), in the same run directory
    longer = [f if f != "32" else "64" for f in flags]
    run_script("study.py", *longer, "--methods", "mappo", "--seeds", "1", "--train-only", cwd=tmp_path)
    log = open(out / "mappo__seed1/train.log").read()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]
    (checkpoint,) = glob.glob(f"{out}/mappo__seed1/runs/*/checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 2


def processes_in(directory):
    """PIDs of live processes whose working directory lies under `directory` (a study's training runs)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(directory)):
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "kill", "kill-9"])
def test_a_stopped_study_keeps_checkpoints_and_the_same_command_resumes(tmp_path, stop):
    """A Ctrl-C or a `kill` stops the study in order (its runs save a checkpoint, one line says so); a
    study killed outright leaves no run training on, orphaned, beside the rerun: the kernel interrupts
    each run, which saves its checkpoint. The same command resumes from it (shown after the Ctrl-C)."""
    flags = [
        "--out",
        "study",
        "--substrate",
        "collaborative_cooking__asymmetric",
        "--methods",
        "mappo",
        "--seeds",
        "1",
        "--total-timesteps",
        "1600",
        "--train-flags=" + " ".join(TINY + ["--checkpoint-every", "1"]),
        "--train-only",
    ]
    study = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "study.py"), *flags],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not glob.glob(f"{tmp_path}/study/mappo__seed1/runs/*/checkpoint.pt") and time.time() < deadline:
        time.sleep(0.5)
    assert processes_in(tmp_path / "study"), "the run trains in its own directory under the study's"
    study.send_signal(stop)
    out, err = study.communicate(timeout=60)
    if stop == signal.SIGKILL:
        deadline = time.time() + 60
        while processes_in(tmp_path / "study") and time.time() < deadline:
            time.sleep(0.5)
        assert not processes_in(tmp_path / "study"), "a run outlived its killed study"
    else:
        assert study.returncode == 1 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == "interrupted: checkpoints saved; the same command continues the study"
    (checkpoint,) = glob.glob(f"{tmp_path}/study/mappo__seed1/runs/*/checkpoint.pt")
    stopped_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 1 <= stopped_at < 50
    if stop != signal.SIGINT:
        return  # a checkpoint short of the end: resumed as below, whatever stopped it
    result = run_script("study.py", *flags, cwd=tmp_path, timeout=300)
    assert "mappo__seed1: resumed from" in result.stdout
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 50


def test_a_run_that_missed_the_interrupt_while_starting_is_interrupted_again(tmp_path, monkeypatch):
    """A run ignores SIGINT while it starts its env workers; a study's Ctrl-C that lands then must not leave
    the study waiting for the whole run (found: a study stopped as its next run started waited on it)."""
    monkeypatch.setattr(cluster, "INTERRUPT_AGAIN_S", 0.5)
    starting = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ignoring', flush=True); "
        "time.sleep(1); signal.signal(signal.SIGINT, signal.default_int_handler); time.sleep(600)"
    )
    process = subprocess.Popen([sys.executable, "-c", starting], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    local = cluster.Local()
    local.running["mappo__seed2"] = (None, open(tmp_path / "train.log", "w"), process)
    assert process.stdout.readline() == b"ignoring\n"  # the child ignores SIGINT now (on a busy machine, not 0.2 s after)
    stopper = threading.Thread(target=local.interrupt, daemon=True)
    stopper.start()
    stopper.join(timeout=60)
    alive = process.poll() is None
    process.kill()
    assert not alive and process.returncode == -signal.SIGINT, "the run ended on a second SIGINT"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--methods", "ppo"], "error: --methods 'ppo' names ppo.py, which is not a training script here"),
        (["--train-flags=--p 0.3"], "error: --train-flags passes --p, which mappo.py does not take"),
        (["--methods", "mappo", "mappo"], "error: --methods: two methods have the label 'mappo'"),
        (["--seeds", "1", "--num-episodes", "0"], "error: --num-episodes must be at least 1, got 0"),
        (["--threads", "0"], "error: --threads must be at least 1, got 0"),
        (["--seeds-of", "fsp=4"], "error: --seeds-of 'fsp=4': no method labelled 'fsp' (--methods: mappo, bidist_mappo)"),
        (
            ["--substrate", "clean_upp"],
            "error: --substrate 'clean_upp' is not a Melting Pot substrate; close matches: clean_up",
        ),
        (["--reference", "2", "1"], "error: --reference MIN MAX needs MIN < MAX, got 2.0 1.0"),
        (["--runs", "nowhere.pt"], "error: --runs nowhere.pt: no such file"),  # before any training
        (["--against", "nowhere"], "error: --against nowhere: no study.json there (a folder written by study.py --results)"),
        (["--ray-gpus", "0.5"], "error: --ray-gpus asks a Ray cluster for GPUs: it needs --ray"),
        (
            ["--all-pairs"],
            "error: --all-pairs plays every pair of a study measured --against another; without --against every "
            "pair is played",
        ),
        (
            ["--ray", "auto", "--ray-gpus", "-1"],
            "error: --ray-gpus must be at least 0 (a share of a GPU per training run), got -1",
        ),
    ],
)
def test_bad_input_gets_one_line_errors(tmp_path, flags, expected):
    result = run_script("study.py", "--out", "s", *flags, cwd=tmp_path, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


def play_counting(monkeypatch):
    """Replaces the episodes with a counter: the list it returns names the pair of every episode played, and
    episode k (counting from 1 over every call) returns k."""
    played = []

    def play(jobs, num_workers, desc, record, **kwargs):
        for i, (description, _) in enumerate(jobs):
            played.append(description.split(" episode")[0])
            record(i, {"focal_per_capita_return": float(len(played))})

    monkeypatch.setattr("eval_scenarios.run_episodes", play)
    return played


def test_cached_pairs_are_known_by_content_and_outlive_out(tmp_path, monkeypatch):
    """A pair is played once: found again with --out relative or absolute, and from --results alone once
    OUT's cache is gone; a checkpoint that changed makes exactly its pairs play again."""
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        os.makedirs(f"out/{run}")
        torch.save({"global_step": 7, "run": run}, f"out/{run}/checkpoint.pt")

    def study(out, results=None):  # the two populations, each the other's background, as a call with this --out sees them
        populations = [Population("m", seed, f"{out}/{run}/checkpoint.pt") for seed, run in ((1, "a"), (2, "b"))]
        args = SimpleNamespace(out=out, substrate="coins", num_focal=1, seed=1, num_episodes=2, num_workers=1, results=results)
        return populations, {p.name: (p.checkpoint,) for p in populations}, args

    played = play_counting(monkeypatch)
    first = crossplay(*study("out", results="res"))
    assert len(first) == 4 and len(played) == 8
    played.clear()
    assert crossplay(*study(str(tmp_path / "out"))) == first and played == []
    shutil.rmtree("out/crossplay")
    assert crossplay(*study("out", results="res")) == first and played == []
    committed = pd.read_csv("res/crossplay_episodes.csv")
    assert len(committed) == 8 and committed.focal_per_capita_return.tolist() == list(map(float, range(1, 9)))
    torch.save({"global_step": 8, "run": "a"}, "out/a/checkpoint.pt")  # trained further
    again = crossplay(*study("out", results="res"))
    assert sorted(set(played)) == ["m__seed1 vs m__seed1", "m__seed1 vs m__seed2", "m__seed2 vs m__seed1"]
    assert again["m__seed2", "m__seed2"] == first["m__seed2", "m__seed2"]
    replayed = pd.read_csv("res/crossplay_episodes.csv")
    assert len(replayed) == 8, "the replayed pairs replace their rows"
    pairs = [tuple(pair) for pair in replayed[["focal", "background"]].drop_duplicates().values]
    assert pairs == [(a, b) for a in ("m__seed1", "m__seed2") for b in ("m__seed1", "m__seed2")], "in their places"


def test_a_finished_pair_is_in_crossplay_episodes_csv_before_the_study_ends(tmp_path, monkeypatch):
    """A long cross-play can be committed while it plays, and a study killed outright (SIGKILL, a lost machine)
    keeps its finished pairs in --results: each pair is written there when its last episode is in."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("out/a")
    torch.save({"global_step": 7}, "out/a/checkpoint.pt")
    populations = [Population("m", 1, "out/a/checkpoint.pt")]
    backgrounds = {"m__seed1": ("out/a/checkpoint.pt",), "other": ("out/a/checkpoint.pt",)}
    args = SimpleNamespace(out="out", substrate="coins", num_focal=1, seed=1, num_episodes=2, num_workers=1, results="res")
    seen = []

    def play(jobs, num_workers, desc, record, **kwargs):
        for i in range(len(jobs)):
            record(i, {"focal_per_capita_return": float(i)})
            seen.append(len(pd.read_csv("res/crossplay_episodes.csv")) if os.path.exists("res/crossplay_episodes.csv") else 0)
        raise SystemExit("error: an evaluation worker died")  # as a dead worker ends the study

    monkeypatch.setattr("eval_scenarios.run_episodes", play)
    with pytest.raises(SystemExit, match="worker died"):
        crossplay(populations, backgrounds, args)
    assert seen == [0, 2, 2, 4], "after each pair's last episode, not before, and not only at the end"
    committed = pd.read_csv("res/crossplay_episodes.csv")
    assert committed.focal_per_capita_return.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_runs_exported_by_another_study_bring_the_pairs_it_played_of_them(tmp_path, monkeypatch):
    """A population exported by study A and added to study B with --runs plays none of the pairs A played of
    it (same bytes, same backgrounds): B finds them in A's crossplay_episodes.csv and writes them to its own;
    a pair whose background changed since is played again."""
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        os.makedirs(f"out/{run}")
        torch.save({"global_step": 7, "run": run}, f"out/{run}/checkpoint.pt")
    populations = [Population("m", seed, f"out/{run}/checkpoint.pt") for seed, run in ((1, "a"), (2, "b"))]
    backgrounds = {p.name: (p.checkpoint,) for p in populations}

    def args(results):
        return SimpleNamespace(
            out="out", substrate="coins", num_focal=1, seed=1, num_episodes=2, num_workers=1, results=results
        )

    played = play_counting(monkeypatch)
    first = crossplay(populations, backgrounds, args("study_a"))
    shutil.rmtree("out/crossplay")
    played.clear()
    assert crossplay(populations, backgrounds, args("study_b"), elsewhere=["study_a"]) == first and played == []
    assert len(pd.read_csv("study_b/crossplay_episodes.csv")) == 8, "B's own file holds them: B regenerates alone"
    torch.save({"global_step": 8, "run": "b"}, "out/b/checkpoint.pt")  # trained further
    os.remove("study_b/crossplay_episodes.csv")
    again = crossplay(populations, backgrounds, args("study_b"), elsewhere=["study_a"])
    assert sorted(set(played)) == ["m__seed1 vs m__seed2", "m__seed2 vs m__seed1", "m__seed2 vs m__seed2"]
    assert again["m__seed1", "m__seed1"] == first["m__seed1", "m__seed1"]


def test_more_episodes_a_pair_play_only_the_missing_ones_and_fewer_lose_none(tmp_path, monkeypatch):
    """--num-episodes 3 after 2 plays episode 2 of each pair, with the seed a fresh 3-episode call gives it;
    a later call with 2 uses the first two and keeps the third in crossplay_episodes.csv."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("out/a")
    torch.save({"global_step": 7}, "out/a/checkpoint.pt")
    populations = [Population("m", 1, "out/a/checkpoint.pt")]
    backgrounds = {"m__seed1": ("out/a/checkpoint.pt",), "other": ("out/a/checkpoint.pt",)}

    def args(episodes, out="out"):
        return SimpleNamespace(
            out=out, substrate="coins", num_focal=1, seed=1, num_episodes=episodes, num_workers=1, results="res"
        )

    played = []

    def play(jobs, num_workers, desc, record, **kwargs):
        for i, (description, (_, seed, _, _)) in enumerate(jobs):
            played.append((description, seed))
            record(i, {"focal_per_capita_return": float(seed % 1000)})

    monkeypatch.setattr("eval_scenarios.run_episodes", play)
    two = crossplay(populations, backgrounds, args(2))
    played.clear()
    three = crossplay(populations, backgrounds, args(3))
    assert [d for d, _ in played] == ["m__seed1 vs m__seed1 episode 2", "m__seed1 vs other episode 2"]
    for pair in two:
        assert three[pair][:2] == two[pair] and len(three[pair]) == 3
    shutil.rmtree("out/crossplay")
    played.clear()
    assert crossplay(populations, backgrounds, args(3)) == three and played == [], "from crossplay_episodes.csv"
    os.remove("res/crossplay_episodes.csv")
    crossplay(populations, backgrounds, args(3, out="fresh"))
    assert [float(seed % 1000) for _, seed in played] == [v for pair in three.values() for v in pair], "same seeds"
    again = crossplay(populations, backgrounds, args(2))
    assert again == two and len(pd.read_csv("res/crossplay_episodes.csv")) == 6


def test_committed_returns_read_back_exactly_on_a_pandas_whose_float_parser_is_not(tmp_path, monkeypatch):
    """crossplay_episodes.csv's returns are parsed by Python, not by pandas: an older pandas (a lent machine's)
    parses some decimals an ulp off, and a study continued there rewrote every committed episode's last digits
    (892 rows of results/pure_coordination_2m_main). Here pandas' float parsing is made an ulp off on purpose."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("out/a")
    torch.save({"global_step": 7}, "out/a/checkpoint.pt")
    populations = [Population("m", 1, "out/a/checkpoint.pt")]
    backgrounds = {"m__seed1": ("out/a/checkpoint.pt",)}
    args = SimpleNamespace(out="out", substrate="coins", num_focal=1, seed=1, num_episodes=2, num_workers=1, results="res")
    returns = [14.239683094683095, 11.391523754023753]  # what such a parser read as ...096 and ...751

    def play(jobs, num_workers, desc, record, **kwargs):
        for i in range(len(jobs)):
            record(i, {"focal_per_capita_return": returns[i]})

    monkeypatch.setattr("eval_scenarios.run_episodes", play)
    crossplay(populations, backgrounds, args)
    read_csv = pd.read_csv

    def ulp_off(*a, **k):
        table = read_csv(*a, **k)
        for column in table.select_dtypes("float").columns:
            table[column] = np.nextafter(table[column].to_numpy(), np.inf)
        return table

    monkeypatch.setattr(pd, "read_csv", ulp_off)
    shutil.rmtree("out/crossplay")
    assert crossplay(populations, backgrounds, args) == {("m__seed1", "m__seed1"): returns}
    monkeypatch.setattr(pd, "read_csv", read_csv)
    assert read_csv("res/crossplay_episodes.csv").focal_per_capita_return.tolist() == returns, "rewritten as they were"


@pytest.mark.slow
def test_a_study_exported_to_results_regenerates_from_it_alone_and_extends(tmp_path):
    """--results holds every finished run's population (data only, float16, under 1 MB), its binned log and
    statistics, every episode: with the study's folder gone, --from-results writes the same tables without
    training or playing, and a later call with one more seed trains that seed and plays only its pairs. A new
    method measured --against it plays only beside its populations and leaves its files as they were."""
    flags = [
        "--out",
        "study",
        "--results",
        "res",
        "--substrate",
        "collaborative_cooking__asymmetric",
        "--seeds",
        "1",
        "2",
        "--total-timesteps",
        "64",
        "--train-flags=" + " ".join(TINY),
        "--num-episodes",
        "1",
        "--num-untrained",
        "1",
    ]
    run_script("study.py", *flags, cwd=tmp_path, timeout=600)
    res = tmp_path / "res"
    for name in ("mappo__seed1", "mappo__seed2", "bidist_mappo__seed1", "bidist_mappo__seed2"):
        population = res / "runs" / name / "population.pt"
        assert os.path.getsize(population) < 1_000_000
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(population)) == []
        saved = torch.load(population, weights_only=True)
        assert set(saved) >= {"algorithm", "substrate", "args", "actor", "global_step"} and "critic" not in saved
        assert {v.dtype for v in saved["actor"].values()} == {torch.float16}
        assert ("phi" in saved) == name.startswith("bidist")
        curve = pd.read_csv(res / "runs" / name / "training.csv")
        assert curve.step_end.iloc[-1] == 64 and "losses/value_loss" in curve.columns
        assert np.load(res / "runs" / name / "policy_features.npz")["features"].dtype == np.uint8
        summary = json.load(open(res / "runs" / name / "summary.json"))
        assert summary["global_step"] == 64 and "--seed" in summary["commands"][0]
    assert len(pd.read_csv(res / "crossplay_episodes.csv")) == 4 * (4 + 2)
    record = json.load(open(res / "study.json"))
    assert record["command"].startswith("python study.py --out study --results res") and record["args"]["seeds"] == [1, 2]
    committed = {name: (res / name).read_text() for name in ("results.md", "training.md")}
    assert "| mappo | 2 |" in committed["results.md"] and "| bidist_mappo | 2 |" in committed["training.md"]

    shutil.rmtree(tmp_path / "study")
    for name in committed:
        os.remove(res / name)
    result = run_script("study.py", "--from-results", "res", cwd=tmp_path)
    assert "cross-play:" not in result.stdout and "training" not in result.stdout.split("\n")[0].lower()
    assert {name: (res / name).read_text() for name in committed} == committed

    flags += ["--seeds-of", "mappo=1,2,3"]  # a third seed for one method (--seeds-of), recorded in study.json
    more = run_script("study.py", *flags, cwd=tmp_path, timeout=600)
    assert "training 1 run(s)" in more.stdout and more.stdout.count("in res, not retrained") == 4
    # 5 populations beside 5 + 2 backgrounds, less the 4 x 6 pairs committed before
    assert "cross-play: 11 (focal, background) pair(s)" in more.stdout
    assert len(pd.read_csv(res / "crossplay_episodes.csv")) == 5 * 7
    assert "| mappo | 3 |" in (res / "results.md").read_text() and "| bidist_mappo | 2 |" in (res / "results.md").read_text()
    # the policy space holds the exported runs' snapshots (their features) beside the new seed's
    space = pd.read_csv(res / "policy_space.csv")
    assert set(space.seed) == {1, 2, 3} and (~space[(space.seed == 1) & (space.method == "mappo")].final).any()
    assert set(space.population) == {"theta", "phi"}
    line = error_line(run_script("study.py", "--from-results", "nowhere", cwd=tmp_path, check=False))
    assert line == "error: --from-results nowhere: no study.json there (a folder written by study.py --results)"

    # a new method measured against this study (--against): its seed trains and plays beside the study's 5
    # populations (mappo's third seed among them), itself and the 2 references; the study's files and its
    # methods' numbers stay as they were
    before = {name: (res / name).read_bytes() for name in ("crossplay_episodes.csv", "results.md", "study.json")}
    against = ["--out", "mine", "--results", "mine_res", "--against", "res", *flags[4:-2], "--methods", "new=mappo"]
    against[against.index("--seeds") + 1 : against.index("--seeds") + 3] = ["1"]
    mine = run_script("study.py", *against, cwd=tmp_path, timeout=600)
    assert "training 1 run(s)" in mine.stdout and "cross-play: 8 (focal, background) pair(s)" in mine.stdout
    assert {name: (res / name).read_bytes() for name in before} == before
    assert set(pd.read_csv(tmp_path / "mine_res" / "crossplay_episodes.csv").focal) == {"new__seed1"}
    table = (tmp_path / "mine_res" / "results.md").read_text()
    assert "Measured against the study in `res` (--against)" in table and "| new | 1 |" in table

    def estimates(text, method):  # the point estimates of a method's row of the main table
        row = next(line for line in text.splitlines() if re.match(rf"\| {method} \| \d \|", line))
        return re.findall(r"(-?\d+\.\d+) \[", row)

    for method in ("mappo", "bidist_mappo"):
        assert estimates(table, method) == estimates(before["results.md"].decode(), method)
    os.remove(tmp_path / "mine_res" / "results.md")
    shutil.rmtree(tmp_path / "mine")
    regenerated = run_script("study.py", "--from-results", "mine_res", cwd=tmp_path)
    assert "cross-play:" not in regenerated.stdout and (tmp_path / "mine_res" / "results.md").read_text() == table
    # --all-pairs: the study's 5 populations play beside the new one too (its other pairs are all played)
    every = run_script("study.py", *against, "--all-pairs", cwd=tmp_path, timeout=600)
    assert "cross-play: 5 (focal, background) pair(s)" in every.stdout
    table = (tmp_path / "mine_res" / "results.md").read_text()
    assert "Every other pair was played too (--all-pairs)" in table
    assert {name: (res / name).read_bytes() for name in before} == before
    section = table.split("## Held-out by background method")[1].split("\n## ")[0]
    by_method = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    header = next(cells for cells in by_method if cells[0] == "focal / background")
    mappo = next(cells for cells in by_method if cells[0] == "mappo")
    assert re.match(r"-?\d+\.\d+ \[", mappo[header.index("new")]), "mappo's row has a value beside new"
    clash = run_script("study.py", *against[:-1], "mappo", cwd=tmp_path, check=False)
    assert error_line(clash) == (
        "error: --methods mappo: the --against study res has a method of that label; label yours apart "
        "(label=script ...), or add seeds to it with that study's own command"
    )


# studies under results/ with their tables (a study still training has exported runs and no results.md yet)
COMMITTED_STUDIES = sorted(
    p for p in glob.glob(f"{ROOT}/results/*/study.json") if os.path.exists(os.path.join(os.path.dirname(p), "results.md"))
)


@pytest.mark.parametrize("record", COMMITTED_STUDIES, ids=[p.split("/")[-2] for p in COMMITTED_STUDIES])
def test_every_committed_study_regenerates_from_results_alone(tmp_path, record):
    """The docs' tables come from results/: each committed study's results.md and training.md are what
    --from-results computes from its committed populations, logs and episodes, with no training and no
    episode played (it refuses to do either)."""
    study = os.path.dirname(record)
    copy = tmp_path / os.path.basename(study)
    shutil.copytree(study, copy)
    against = json.load(open(record))["args"].get("against")
    if against:  # measured against a yardstick: its committed folder, where the study's command names it
        shutil.copytree(os.path.join(ROOT, against), tmp_path / against)
    for name in ("results.md", "training.md"):
        os.remove(copy / name)
    run_script("study.py", "--from-results", str(copy), cwd=tmp_path, timeout=300)
    for name in ("results.md", "training.md"):
        assert (copy / name).read_text() == open(f"{study}/{name}").read(), name


def test_from_results_reads_a_study_whose_method_flag_the_script_has_dropped(tmp_path):
    """A scheme that lost leaves its script (issue 30): a committed study trained with its flag still
    regenerates, since --from-results trains nothing; a study that would train with it is refused in one line."""
    copy = tmp_path / "study"
    shutil.copytree(f"{ROOT}/results/stag_hunt_1m", copy)
    record = json.load(open(copy / "study.json"))
    record["args"]["methods"] = ["mappo=mappo --retired-flag 1"]
    json.dump(record, open(copy / "study.json", "w"))
    for name in ("results.md", "training.md"):
        os.remove(copy / name)
    run_script("study.py", "--from-results", str(copy), cwd=tmp_path, timeout=300)
    for name in ("results.md", "training.md"):
        assert (copy / name).read_text() == open(f"{ROOT}/results/stag_hunt_1m/{name}").read(), name
    flags = ["--out", "o", "--methods", "mappo=mappo --retired-flag 1", "--substrate", "coins"]
    line = error_line(run_script("study.py", *flags, cwd=tmp_path, check=False))
    dropped = "error: --methods 'mappo=mappo --retired-flag 1' passes --retired-flag, which mappo.py does not take"
    assert line == dropped + " (python mappo.py --help)"


def test_learning_curves_bin_the_returns_by_env_steps(tmp_path):
    """Binned means by hand: returns 1 and 3 in the first half of 100 steps, 5 and 7 (9 and 11 for the second
    seed) in the second; the table averages each seed's bins weighted by how many returns they hold."""
    from study import binned_curves, learning_curves, method_curves

    runs = []
    for seed, values in [(1, [1.0, 3.0, 5.0, 7.0]), (2, [1.0, 3.0, 9.0, 11.0])]:
        scalars = {
            "charts/episodic_return": (np.array([10, 20, 60, 62]), np.array(values)),
            "losses/value_loss": (np.array([100]), np.array([0.5])),
        }
        curve = binned_curves(scalars, last=100, bins=10)
        assert curve.step_end.tolist() == list(range(10, 101, 10))
        # bins are (start, end]: step 60 is the last of (50, 60], 62 in (60, 70]
        assert curve["charts/episodic_return (count)"].tolist() == [1, 1, 0, 0, 0, 1, 1, 0, 0, 0]
        assert curve["charts/episodic_return"].iloc[6] == values[3] and np.isnan(curve["losses/value_loss"].iloc[0])
        os.makedirs(tmp_path / f"res/runs/m__seed{seed}")
        curve.to_csv(tmp_path / f"res/runs/m__seed{seed}/training.csv", index=False)
        runs.append(Run(Method("m", "mappo", ()), seed, str(tmp_path / f"nowhere{seed}")))
    table = learning_curves(method_curves(runs, str(tmp_path / "res")), 100, str(tmp_path / "curves.png"), "t", points=2)
    assert table.splitlines()[0] == "| method | seeds | 0K-0.05K | 0.05K-0.1K |"
    assert table.splitlines()[2] == "| m | 2 | 2.00 (2.00 to 2.00) | 8.00 (6.00 to 10.00) |"
    assert os.path.getsize(tmp_path / "curves.png") > 10_000


def test_own_scalars_through_training_average_each_tenth_per_method(tmp_path):
    """A method's own scalars by hand: bins without a value do not count (KL 2 and 4 in the first half of seed
    1's 100 steps, 6 in the second; seed 2 logs 8 and 10); the shared namespaces and a method with no scalar
    of its own add no row, and a study where no method has one gets no table and no picture."""
    from study import binned_curves, method_curves, own_scalars_through_training

    runs = []
    for name, seed, kl in [("b", 1, ([10, 30, 70], [2.0, 4.0, 6.0])), ("b", 2, ([20, 80], [8.0, 10.0])), ("m", 1, None)]:
        scalars = {
            "charts/episodic_return": (np.array([50]), np.array([1.0])),
            "losses/entropy": (np.array([50]), np.array([1.5])),
        }
        if kl:
            scalars["distill/kl_after"] = tuple(np.array(v, dtype=float) for v in kl)
        os.makedirs(tmp_path / f"res/runs/{name}__seed{seed}")
        binned_curves(scalars, last=100, bins=10).to_csv(tmp_path / f"res/runs/{name}__seed{seed}/training.csv", index=False)
        runs.append(Run(Method(name, "mappo", ()), seed, str(tmp_path / f"nowhere{name}{seed}")))
    path = tmp_path / "diagnostics.png"
    curves = method_curves(runs, str(tmp_path / "res"))
    table = own_scalars_through_training(curves, 100, str(path), "t", points=2).splitlines()
    assert table[0] == "| method | scalar | seeds | 0K-0.05K | 0.05K-0.1K |"
    assert table[2:] == ["| b | distill/kl_after | 2 | 5.5 (3 to 8) | 8 (6 to 10) |"]
    assert os.path.getsize(path) > 5_000  # a panel with its lines, not an empty figure
    assert (
        own_scalars_through_training(method_curves(runs[2:], str(tmp_path / "res")), 100, str(tmp_path / "none.png"), "t")
        == ""
    )
    assert not os.path.exists(tmp_path / "none.png")


def test_per_population_rows_pool_each_populations_episodes(tmp_path):
    populations, backgrounds, results, args = synthetic_study(tmp_path)
    table = markdown_by_population(populations, results).splitlines()
    assert table[0] == "| population | self-play | held-out (never met) | vs uniform random | vs untrained |"
    held = [r for b in ("mappo__seed1", "bidist__seed1", "bidist__seed2") for r in results["mappo__seed2", b]]
    expected = f"{np.mean(held):.2f} ± {2.306 * np.std(held, ddof=1) / 3:.2f} (9)"  # t(0.975, 8 dof) = 2.306
    assert table[3].split(" | ")[2] == expected
    assert table[3].startswith(f"| mappo__seed2 | {np.mean(results['mappo__seed2', 'mappo__seed2']):.2f} ± ")
