"""The recipe of docs/add-your-own-method.md, end to end, as a user follows it: copy a training script under
a new name, change its network, and train, resume, evaluate and study the copy with no edit to any other
file. Runs in a copy of the project folder, so the new script sits beside the others as the user's would."""

import glob
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY

# the user's idea: a deeper policy head, which evaluation must notice (bidist_mappo.Actor cannot load it)
HEAD = "        self.policy = layer_init(nn.Linear(args.hidden_size, envs.num_actions), std=0.01)\n"
DEEPER_HEAD = (
    "        self.policy = nn.Sequential(  # my idea: a deeper policy head\n"
    "            layer_init(nn.Linear(args.hidden_size, args.hidden_size)), nn.Tanh(),\n"
    "            layer_init(nn.Linear(args.hidden_size, envs.num_actions), std=0.01))\n"
)


def run(project, script, *flags, cwd=None):
    result = subprocess.run(
        [sys.executable, str(project / script), *flags], cwd=cwd or project, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_a_copied_script_with_its_own_network_trains_resumes_evaluates_and_studies(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, name), project)
    source = (project / "bidist_mappo.py").read_text()
    assert source.count(HEAD) == 1, "the recipe's edit no longer applies to bidist_mappo.py"
    (project / "my_method.py").write_text(source.replace(HEAD, DEEPER_HEAD))

    # train, then resume: the checkpoint names the copy and holds the copy's network
    run(project, "my_method.py", *TINY, "--kd", "1", "--total-timesteps", "64", "--snapshot-every", "1")
    [checkpoint] = glob.glob(f"{project}/runs/*/checkpoint.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["algorithm"] == "my_method" and saved["args"]["exp_name"] == "my_method"
    assert "policy.0.weight" in saved["actor"] and "policy.2.weight" in saved["actor"]
    out = run(project, "my_method.py", "--resume", checkpoint, "--total-timesteps", "96")
    assert "iter 3/3" in out and torch.load(checkpoint, weights_only=True)["iteration"] == 3

    # evaluated beside a mappo.py population: each rebuilt with its own script's network
    os.makedirs(project / "other")
    run(project, "mappo.py", *TINY, "--total-timesteps", "32", cwd=project / "other")
    [background] = glob.glob(f"{project}/other/runs/*/checkpoint.pt")
    out = run(
        project,
        "eval_scenarios.py",
        "--checkpoint",
        checkpoint,
        "--background",
        background,
        "--num-episodes",
        "1",
        "--num-workers",
        "1",
        "--output",
        "beside_mappo",
    )
    rows = pd.read_csv(project / "beside_mappo.csv")
    assert len(rows) == 1 and rows.focal_per_capita_return.notna().all()

    # a study of the copy and mappo.py: trained, cross-played, its own scalars in the training summary
    out = run(
        project,
        "study.py",
        "--out",
        "study",
        "--methods",
        "mappo",
        "my_method --kd 1",
        "--seeds",
        "1",
        "--total-timesteps",
        "32",
        "--train-flags=" + " ".join(TINY),
        "--num-episodes",
        "1",
        "--num-untrained",
        "1",
        "--num-workers",
        "1",
    )
    pairs = pd.read_csv(project / "study/crossplay.csv")
    assert {"mappo__seed1", "my_method_kd_1__seed1"} <= set(pairs.focal) | set(pairs.background)
    training = (project / "study/training.md").read_text()
    assert "| my_method_kd_1 | 1 |" in training and "| my_method_kd_1 | distill/phi_logp_ratio |" in training
    assert "| mappo | distill/" not in training
