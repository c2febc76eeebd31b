"""What running a study on a Ray cluster costs against running it on this machine, in one run.

    python benchmarks/ray_overhead.py                                  # the numbers of docs/study.md
    python benchmarks/ray_overhead.py --total-timesteps 20480 --seeds 1 2 3 4

1. a small study (mappo, --seeds, --total-timesteps, short cross-play) run three ways, each into a fresh --out:
   by study.py on this machine (the reference), on a one-node Ray cluster started on this machine with its CPUs,
   and on a two-node one with half of them each (Ray's own `cluster_utils.Cluster`: a head and a worker node on
   this machine, as the tests use);
   the wall time of each and its ratio to the reference. The cluster is started before the clock starts: its
   start-up is reported on its own line, a real cluster pays it once, not per study;
2. the per-task cost of Ray: N tasks that do nothing (batched, then one after another), and N that each start
   a Python subprocess that does nothing (how a training run starts on a node), one after another, against the
   same subprocesses started here.
The two paths do the same work (the same runs, the same episodes); what differs is Ray's scheduling, the
project folder's upload to the nodes (once per study) and the checkpoints sent to the episodes' nodes.
"""

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--num-envs", "2", "--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "1"]


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2)
    """the study's seeds: its training runs"""
    total_timesteps: int = 4096
    """env steps of each training run"""
    substrate: str = "collaborative_cooking__asymmetric"
    num_episodes: int = 2
    """cross-play episodes per pair"""
    tasks: int = 50
    """tasks (and subprocesses) of the per-task measurement"""


def study(args, out, *extra):
    command = [
        sys.executable,
        os.path.join(ROOT, "study.py"),
        "--out",
        out,
        "--substrate",
        args.substrate,
        "--methods",
        "mappo",
        "--seeds",
        *map(str, args.seeds),
        "--total-timesteps",
        str(args.total_timesteps),
        "--train-flags=" + " ".join(SMALL),
        "--num-episodes",
        str(args.num_episodes),
        "--num-untrained",
        "1",
        "--no-policy-space",
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"error: the study {' '.join(extra) or 'on this machine'} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return time.perf_counter() - start


def nothing():
    return None


def subprocess_nothing():
    return subprocess.run([sys.executable, "-c", "pass"]).returncode


if __name__ == "__main__":
    args = tyro.cli(Args)
    import ray
    from ray.cluster_utils import Cluster

    cores = os.cpu_count() or 1
    print(f"{len(args.seeds)} mappo run(s) x {args.total_timesteps} env steps on {args.substrate}, {cores} core(s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = study(args, f"{tmp}/local")
        rows.append(("this machine (reference)", local))
        for nodes in (1, 2):
            start = time.perf_counter()
            per_node = max(1, cores // nodes)  # the same CPUs in all, split over the nodes
            cluster = Cluster(
                initialize_head=True, connect=False, head_node_args={"num_cpus": per_node, "include_dashboard": False}
            )
            for i in range(nodes - 1):  # each node its own folder for the project's copy, as on separate machines
                cluster.add_node(num_cpus=per_node, runtime_env_dir_name=f"runtime_resources_{i + 1}")
            cluster.wait_for_nodes()
            print(f"a {nodes}-node Ray cluster started in {time.perf_counter() - start:.1f} s (not counted below)")
            try:
                rows.append(
                    (f"Ray, {nodes} node(s) of {per_node} CPU(s)", study(args, f"{tmp}/ray{nodes}", "--ray", cluster.address))
                )
                if nodes == 1:
                    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
                    task, spawn = ray.remote(nothing), ray.remote(subprocess_nothing)
                    ray.get([task.remote() for _ in range(5)])  # workers started
                    start = time.perf_counter()
                    ray.get([task.remote() for _ in range(args.tasks)])
                    per_task = (time.perf_counter() - start) / args.tasks
                    start = time.perf_counter()
                    for _ in range(args.tasks):
                        ray.get(task.remote())
                    round_trip = (time.perf_counter() - start) / args.tasks
                    start = time.perf_counter()
                    for _ in range(args.tasks):
                        ray.get(spawn.remote())
                    per_spawn_task = (time.perf_counter() - start) / args.tasks
                    ray.shutdown()
            finally:
                cluster.shutdown()
        start = time.perf_counter()
        for _ in range(args.tasks):
            subprocess_nothing()
        per_spawn_here = (time.perf_counter() - start) / args.tasks

    print("\n| where | wall time | ratio to this machine |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} s | {seconds / local:.2f} |")
    print(
        f"\nper Ray task, {args.tasks} tasks that do nothing: {1000 * per_task:.1f} ms in a batch, "
        f"{1000 * round_trip:.1f} ms one after another (submit, run, get)\n"
        f"a Python subprocess that does nothing, one after another: {1000 * per_spawn_task:.1f} ms in a Ray task, "
        f"{1000 * per_spawn_here:.1f} ms from here (ratio {per_spawn_task / per_spawn_here:.2f})"
    )
