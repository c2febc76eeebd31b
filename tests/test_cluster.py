"""study.py on a real Ray cluster: a head node and a second worker node on this machine (Ray's own
`cluster_utils.Cluster`, the tool Ray tests itself with), CPU only. What the local path writes, the Ray path
writes; a lost node costs only the work since its run's last checkpoint; runs that train where --out is not
visible come back to the driver."""

import glob
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, run_script

import cluster

ray = pytest.importorskip("ray", reason="Ray is installed by `make test` (requirements-ray.txt)")
from ray.cluster_utils import Cluster  # noqa: E402

# a lost node is noticed within ~2 s instead of Ray's default ~30 s
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}


def add_worker(nodes):
    """A worker node of 1 CPU (one training run of --threads 1) with its own folder for Ray's copies of the
    project: nodes on one machine share a session folder, and a node joining later would otherwise unpack the
    project over the folder in which the head's tasks run (on a real cluster each machine has its own)."""
    return nodes.add_node(num_cpus=1, runtime_env_dir_name=f"runtime_resources_{len(nodes.worker_nodes) + 1}")


@pytest.fixture
def two_nodes():
    """A head and a worker node of 1 CPU each: one training run of --threads 1 fits on each."""
    nodes = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    worker = add_worker(nodes)
    nodes.wait_for_nodes()
    yield nodes, worker
    nodes.shutdown()


def study_flags(*extra, seeds=("1", "2"), steps="32", train_flags=TINY):
    return [
        "--out",
        "study",
        "--substrate",
        "collaborative_cooking__asymmetric",
        "--methods",
        "mappo",
        "--seeds",
        *seeds,
        "--total-timesteps",
        steps,
        "--train-flags=" + " ".join(train_flags),
        "--num-episodes",
        "1",
        "--num-untrained",
        "1",
        "--no-policy-space",
        *extra,
    ]


def commands(log_path):
    """The '# on node ...' and '$ command' lines a run's log holds: one pair per start of the run."""
    lines = open(log_path).read().splitlines()
    return [line for line in lines if line.startswith("# on node")], [line for line in lines if line.startswith("$ ")]


@pytest.mark.slow
def test_a_study_on_two_ray_nodes_writes_what_the_local_path_writes(tmp_path, two_nodes):
    """Trained and cross-played on the cluster, then the same command without --ray: nothing is retrained
    or replayed, and the local path writes the same tables byte for byte from the same cache."""
    nodes, _ = two_nodes
    on_ray = run_script("study.py", *study_flags("--ray", nodes.address), cwd=tmp_path, timeout=900)
    assert "a Ray cluster of 2 node(s), 2 CPU(s), 0 GPU(s); --out is shared by every node" in on_ray.stdout
    assert "training 2 run(s) on the Ray cluster" in on_ray.stdout and "(1 a pair), the Ray cluster" in on_ray.stdout
    out = tmp_path / "study"
    for seed in (1, 2):
        where, started = commands(out / f"mappo__seed{seed}/train.log")
        assert len(where) == 1 and len(started) == 1 and "--resume" not in started[0]
        # the script the node ran is Ray's copy of the project (runtime_env working_dir), not this checkout
        assert "mappo.py" in started[0] and os.path.join(ROOT, "mappo.py") not in started[0]
    tables = {name: (out / name).read_bytes() for name in ("results.md", "crossplay.csv", "training.md")}

    local = run_script("study.py", *study_flags(), cwd=tmp_path, timeout=600)
    assert local.stdout.count("finished, not retrained") == 2 and "cross-play:" not in local.stdout
    assert {name: (out / name).read_bytes() for name in tables} == tables


@pytest.mark.slow
def test_a_lost_node_costs_only_its_runs_progress_since_the_last_checkpoint(tmp_path):
    """Three runs on a head of 1 CPU (one at a time); a worker node joins, takes a run, and is killed while
    that run trains. Ray runs the task again on the head, which resumes it from its last checkpoint; the runs
    that had finished are not trained again (each start of a run writes its command into its log)."""
    nodes = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    try:
        flags = study_flags(
            "--ray", nodes.address, "--train-only", seeds=("1", "2", "3"), steps="3200",
            train_flags=TINY + ["--checkpoint-every", "1"],
        )  # fmt: skip
        study = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "study.py"), *flags],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = tmp_path / "study"
        deadline, first_done = time.time() + 600, []
        while not first_done and time.time() < deadline:
            time.sleep(0.5)
            first_done = [seed for seed in (1, 2, 3) if _finished(out, seed)]
        assert first_done, "no run finished on the head node"

        worker = add_worker(nodes)
        worker_id = worker.node_id[:8]
        on_worker = None
        while on_worker is None and time.time() < deadline:
            time.sleep(0.5)
            for seed in (1, 2, 3):
                log = out / f"mappo__seed{seed}/train.log"
                if (
                    log.exists()
                    and f"# on node {worker_id}" in log.read_text()
                    and glob.glob(f"{out}/mappo__seed{seed}/runs/*/checkpoint.pt")
                ):
                    on_worker = seed
        assert on_worker is not None, "no run trained on the worker node"
        nodes.remove_node(worker, allow_graceful=False)

        stdout, stderr = study.communicate(timeout=600)
        assert study.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr
        for seed in (1, 2, 3):
            where, started = commands(out / f"mappo__seed{seed}/train.log")
            if seed == on_worker:  # started on the worker, resumed on the head
                assert len(started) == 2 and "--resume" not in started[0] and "--resume" in started[1]
                assert worker_id in where[0] and worker_id not in where[1]
            else:
                assert len(started) == 1 and "--resume" not in started[0]
            (checkpoint,) = glob.glob(f"{out}/mappo__seed{seed}/runs/*/checkpoint.pt")
            assert torch.load(checkpoint, weights_only=True)["iteration"] == 100
    finally:
        nodes.shutdown()


def _finished(out, seed):
    """A run is finished when its checkpoint holds the last iteration (3200 env steps / 32 per iteration)."""
    found = glob.glob(f"{out}/mappo__seed{seed}/runs/*/checkpoint.pt")
    try:
        return bool(found) and torch.load(found[0], weights_only=True)["iteration"] == 100
    except Exception:  # being written
        return False


@pytest.mark.slow
def test_runs_on_a_node_that_does_not_see_out_come_back_to_the_driver(tmp_path, two_nodes):
    """A node sees --out when it reads the token the driver wrote there. Handed a token no node can read, the
    run trains in the node's local folder and its finished folder comes back as an archive, unpacked here."""
    nodes, _ = two_nodes
    runner = cluster.OnRay(nodes.address, str(tmp_path / "study"))
    try:
        assert "--out is shared by every node" in runner.description
        runner.token = "a token no node holds"
        directory = str(tmp_path / "study/mappo__seed1")
        flags = ["--substrate", "collaborative_cooking__asymmetric", "--seed", "1", "--total-timesteps", "32", *TINY]
        runner.start(cluster.TrainJob("mappo__seed1", "mappo.py", flags, directory, threads=1))
        deadline, done = time.time() + 300, []
        while not done and time.time() < deadline:
            time.sleep(0.5)
            done = runner.finished()
        (finished,) = done
        assert finished.returncode == 0 and re.match(r"node [0-9a-f]{8} ", finished.where)
        log = open(f"{directory}/train.log").read()
        assert ", in its local folder " in log and "a token no node holds" in log
        (checkpoint,) = glob.glob(f"{directory}/runs/*/checkpoint.pt")
        assert torch.load(checkpoint, weights_only=True)["iteration"] == 1
    finally:
        ray.shutdown()


def test_a_folder_copied_to_a_node_is_refused_in_one_line(tmp_path):
    """A node that reads the token but whose probe file never reaches the driver's --out holds a copy."""
    out = tmp_path / "out"
    os.makedirs(out)
    (out / ".probe-a").write_text("t")
    assert cluster.check_sharing(str(out), ["aaaa", "bbbb"], [".probe-a", None]) == ["bbbb"]
    assert not (out / ".probe-a").exists()  # the driver cleans up what it found
    with pytest.raises(SystemExit, match=r"^error: --out .* on node\(s\) cccc is a copy of this machine's folder"):
        cluster.check_sharing(str(out), ["cccc"], [".probe-never-arrived"])


def test_without_ray_the_flag_names_the_install_command(tmp_path):
    """Ray stays optional: where it is missing, --ray ends in one line naming what to install."""
    blocker = tmp_path / "ray.py"
    blocker.write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "study.py"), "--out", "s", "--seeds", "1", "--ray", "auto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --ray needs Ray, which is not installed: pip install -r requirements-ray.txt"
    )
