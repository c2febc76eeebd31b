# Where a study's jobs run. study.py decides what to run (which runs, which episodes) and what to make of
# the results; this file only runs them, in one of two ways with the same four calls:
#   Local  - this machine: each training run a subprocess, the episodes in a process pool (the default)
#   OnRay  - a Ray cluster (`study.py --ray ADDRESS`): each training run and each episode a Ray task with
#            its resources declared, retried on another node when its node is lost
# A training job is resumed by whoever runs it, from the newest checkpoint in its folder, so a job that
# Ray retries after a lost node continues where its last checkpoint left it. Guide: docs/study.md.
import dataclasses
import glob
import hashlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass

import utils

ROOT = os.path.dirname(os.path.abspath(__file__))
LOG_TAIL = 5  # lines of a failed run's log printed with its failure
INTERRUPT_AGAIN_S = 20  # a run still alive this long after a SIGINT missed it: it was starting its env workers


@dataclass
class TrainJob:
    """One training run: `python <script> <flags>` in `directory` (its runs/ lands there), with `threads`
    torch threads and as many env workers. `flags` never hold --resume: the runner adds it."""

    name: str
    script: str  # a file name in the project folder, e.g. "mappo.py"
    flags: list
    directory: str
    threads: int


@dataclass
class Finished:
    name: str
    returncode: int  # 0: trained to the end
    tail: str  # the last lines of its log, for a failure's report
    where: str  # the node it ran on, for the report ("" on this machine)


def newest_checkpoint(directory):
    found = sorted(glob.glob(f"{directory}/runs/*/checkpoint.pt"))
    return found[-1] if found else None


def command_in(job, code_root, directory):
    """The job's command as run in `directory`, resumed from its newest checkpoint there. A folder with runs/
    but no checkpoint is a run killed before its first one: it starts over."""
    command = [sys.executable, os.path.join(code_root, job.script), *job.flags]
    checkpoint = newest_checkpoint(directory)
    if checkpoint:
        command += ["--resume", os.path.abspath(checkpoint)]
    else:
        shutil.rmtree(f"{directory}/runs", ignore_errors=True)
    return command


def thread_env(threads):
    """The environment of a training subprocess: `threads` torch/BLAS threads, so that parallel runs
    do not fight for the cores (two mappo.py runs side by side on 2 cores, `benchmarks/throughput.py
    --side-by-side`: 82 + 81 env steps/s with torch's default threads, 472 + 490 with one thread each)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def log_tail(path, lines=LOG_TAIL):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""


def _signal_when_parent_dies(signum):
    """preexec_fn of a training subprocess: the kernel sends it `signum` when the process that starts it dies,
    however it died (SIGKILL, the OOM killer, a lost Ray worker), so that no run trains on, orphaned, beside
    the rerun or retry that resumes it (two processes writing one run). A local study's runs get SIGINT, a
    Ctrl-C: they save a checkpoint and end. A Ray task's get SIGTERM: the task's retry owns the run."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: no dlopen between fork and exec
    parent = os.getpid()

    def preexec():
        prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: nothing will signal us
            os._exit(1)

    return preexec


def _quiet_episode_worker():
    """A local evaluation worker whose stderr is closed: some substrates' engines print warnings at every
    episode's build, which would bury the progress bar. Errors still come back as exceptions."""
    import eval_scenarios

    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    eval_scenarios._init_worker(False)


# ---------------------------------------------------------------------------------------------
# This machine


class Local:
    """Training runs as subprocesses of this process, each in its own session (a Ctrl-C reaches the study
    alone, which forwards exactly one SIGINT: the scripts save a checkpoint on it); episodes in a pool."""

    where = "this machine"

    def __init__(self):
        self.running = {}

    def start(self, job):
        os.makedirs(job.directory, exist_ok=True)
        log = open(f"{job.directory}/train.log", "a")
        command = command_in(job, ROOT, job.directory)
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=job.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=thread_env(job.threads),
            start_new_session=True,
            preexec_fn=_signal_when_parent_dies(signal.SIGINT),
        )
        self.running[job.name] = (job, log, process)

    def finished(self):
        done = []
        for name, (job, log, process) in list(self.running.items()):
            if process.poll() is not None:
                log.close()
                del self.running[name]
                done.append(Finished(name, process.returncode, log_tail(f"{job.directory}/train.log"), ""))
        return done

    def interrupt(self):
        for _, _, process in self.running.values():
            process.send_signal(signal.SIGINT)
        for _, log, process in self.running.values():
            while True:  # a run ignores SIGINT while it starts its env workers (utils.sigint_ignored): ask again
                try:
                    process.wait(timeout=INTERRUPT_AGAIN_S)
                    break
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGINT)
            log.close()

    def episodes(self, jobs, num_workers, desc, on_result):
        import eval_scenarios

        eval_scenarios.run_episodes(jobs, num_workers, desc, on_result, initializer=_quiet_episode_worker, initargs=())


# ---------------------------------------------------------------------------------------------
# A Ray cluster


def sees_out(token_path, token):
    """Whether this node sees the study's --out folder: the file the driver wrote there, with its content."""
    try:
        with open(token_path) as f:
            return f.read() == token
    except OSError:
        return False


def probe_out(token_path, token):
    """Run on each node by `OnRay.sharing`: None where the node does not see --out; else the name of a file
    it wrote there, which the driver must find: a node that sees the token but whose writes never reach the
    driver holds a copy of the folder (rsync'd, not shared), and runs written there would be lost."""
    if not sees_out(token_path, token):
        return None
    name = f".probe-{uuid.uuid4().hex}"
    with open(os.path.join(os.path.dirname(token_path), name), "w") as f:
        f.write(token)
    return name


def check_sharing(out, nodes, probes):
    """The nodes that do not see --out (they train in a local folder), or a one-line refusal naming the
    nodes whose --out is a copy: their probe file never reached this machine's --out."""
    copies, blind = [], []
    for node, name in zip(nodes, probes):
        if name is None:
            blind.append(node)
        elif os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
        else:
            copies.append(node)
    if copies:
        raise SystemExit(
            f"error: --out {out} on node(s) {', '.join(copies)} is a copy of this machine's folder, not the same "
            f"folder: runs written there would never come back. Put --out on a filesystem every node shares, or "
            f"on a path the nodes do not have (they then train in a local folder and send their runs back)"
        )
    return blind


def node_description():
    import ray

    return f"node {ray.get_runtime_context().get_node_id()[:8]} ({os.uname().nodename})"


def train_on_node(job, token_path, token):
    """A Ray task: one training run on the node Ray chose. It writes into the study's folder when this node
    sees it (a shared filesystem); otherwise it trains in a node-local folder (where a retry on this node finds
    its checkpoint) and returns the finished run's folder as a .tar.gz for the driver to unpack. A Ctrl-C of
    the driver (ray.cancel) reaches the script as one SIGINT, so it saves a checkpoint before the task ends."""
    shared = sees_out(token_path, token)
    directory = job.directory if shared else os.path.join(tempfile.gettempdir(), "bidist-study", token, job.name)
    os.makedirs(directory, exist_ok=True)
    where = node_description()
    command = command_in(job, os.getcwd(), directory)  # the task's working directory is the project's copy
    with open(f"{directory}/train.log", "a") as log:
        log.write(f"# on {where}{'' if shared else ', in its local folder ' + directory}\n$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=thread_env(job.threads),
            start_new_session=True,
            preexec_fn=_signal_when_parent_dies(signal.SIGTERM),
        )
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    tail = log_tail(f"{directory}/train.log")
    if shared:
        return returncode, tail, where, None
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return returncode, tail, where, packed.getvalue()


_local_files = {}


def episode_on_node(arguments, files):
    """A Ray task: one evaluation episode. The checkpoints come as bytes (`files`: the driver's path -> an
    object reference), written once per node under the temp folder by content, so that no node needs to see
    the driver's files."""
    import ray

    import eval_scenarios

    if not _local_files:
        eval_scenarios._init_worker(False)
    target, seed, checkpoint, device = arguments
    local = {}
    for path, ref in files.items():
        if path not in _local_files:
            data = ray.get(ref)
            digest = hashlib.sha256(data).hexdigest()[:16]
            copy = os.path.join(tempfile.gettempdir(), "bidist-study-files", f"{digest}.pt")
            if not os.path.exists(copy):  # by content: another worker of this node may write it too
                os.makedirs(os.path.dirname(copy), exist_ok=True)
                with open(f"{copy}.{os.getpid()}", "wb") as f:
                    f.write(data)
                os.replace(f"{copy}.{os.getpid()}", copy)
            _local_files[path] = copy
        local[path] = _local_files[path]
    target = dataclasses.replace(target, background=tuple(local.get(p, p) for p in target.background))
    return eval_scenarios.run_episode(target, seed, local.get(checkpoint, checkpoint), device)


class OnRay:
    """Jobs as tasks of a Ray cluster. `address`: a cluster's address, "auto" (the one this machine belongs to,
    or RAY_ADDRESS) or "local" (start one on this machine for this study). The project folder travels to the
    nodes as the job's working directory (Ray's runtime_env); the Python environment must be there already."""

    where = "the Ray cluster"

    def __init__(self, address, out, gpus_per_run=0.0):
        try:
            import ray
        except ImportError:
            raise SystemExit("error: --ray needs Ray, which is not installed: pip install -r requirements-ray.txt") from None
        import logging

        self.ray, self.gpus_per_run = ray, gpus_per_run
        excludes = ["runs", "studies", "results", "site", "wandb", "videos", "*.pt", "__pycache__"]
        relative_out = os.path.relpath(os.path.abspath(out), ROOT)
        if not relative_out.startswith(".."):
            excludes.append(relative_out)
        try:
            ray.init(
                address=None if address == "local" else address,
                runtime_env={"working_dir": ROOT, "excludes": excludes},
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SystemExit(f"error: --ray {address}: cannot connect ({str(e).splitlines()[0]})") from None
        self.token_path = os.path.join(os.path.abspath(out), ".study-token")  # who sees --out: see `sharing`
        if not os.path.exists(self.token_path):
            utils.write_atomically(self.token_path, "w", lambda f: f.write(uuid.uuid4().hex))
        with open(self.token_path) as f:
            self.token = f.read()
        self.train_task = ray.remote(train_on_node)
        self.episode_task = ray.remote(episode_on_node)
        self.running, self.description = {}, self.sharing()

    def sharing(self):
        """One line on the cluster and on where runs write: into --out where every node sees it (the same
        file behind the same path), else on each node that does not and back to this machine when finished."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        nodes = [n for n in ray.nodes() if n["Alive"]]
        probe = ray.remote(probe_out)
        probes = ray.get(
            [
                probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    self.token_path, self.token
                )
                for n in nodes
            ]
        )
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        blind = check_sharing(os.path.dirname(self.token_path), [n["NodeID"][:8] for n in nodes], probes)
        cluster = f"a Ray cluster of {len(nodes)} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s)"
        if not blind:
            return f"{cluster}; --out is shared by every node, runs write there"
        return (
            f"{cluster}; --out is not visible on {len(blind)} node(s) ({', '.join(blind)}): runs there train in a "
            f"node-local folder and come back here when finished (a node lost there loses its runs' progress)"
        )

    def start(self, job):
        os.makedirs(job.directory, exist_ok=True)
        # `threads` CPUs, as the local path counts a run: its env workers step while its torch threads wait, and
        # the other way round (asking for 2 x threads made a study 2.6x slower: docs/study.md#on-a-ray-cluster).
        # A node lost mid-run: Ray runs the task again elsewhere and it resumes from the run's last checkpoint
        task = self.train_task.options(
            num_cpus=job.threads, num_gpus=self.gpus_per_run, max_retries=3, name=f"train {job.name}"
        )
        self.running[job.name] = (job, task.remote(job, self.token_path, self.token))

    def finished(self):
        ray = self.ray
        refs = {ref: name for name, (_, ref) in self.running.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
        done = []
        for ref in ready:
            name = refs[ref]
            job, _ = self.running.pop(name)
            try:
                returncode, tail, where, packed = ray.get(ref)
            except Exception as e:  # the task itself failed, or its retries ran out
                done.append(Finished(name, -1, f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}", "the cluster"))
                continue
            if packed is not None:  # trained where --out is not visible: unpack it here
                with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
                    tar.extractall(job.directory, filter="data")
            done.append(Finished(name, returncode, tail, where))
        return done

    def interrupt(self):
        ray = self.ray
        refs = [ref for _, ref in self.running.values()]
        for ref in refs:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: its script saves a checkpoint and ends
        ray.wait(refs, num_returns=len(refs), timeout=120)

    def episodes(self, jobs, num_workers, desc, on_result):
        """eval_scenarios.run_episodes' contract on the cluster: every episode a task of one CPU (Ray, not
        `num_workers`, decides how many run at once), `on_result` called as they finish, a failed episode
        ending the study in one line naming it."""
        from tqdm import tqdm

        import eval_scenarios

        ray = self.ray
        paths = sorted({p for _, (target, _, checkpoint, _) in jobs for p in (checkpoint, *target.background)})
        files = {}
        for path in paths:
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    files[path] = ray.put(f.read())
        refs = {}
        for i, (_, arguments) in enumerate(jobs):
            target, _, checkpoint, _ = arguments
            needed = {p: files[p] for p in (checkpoint, *target.background) if p in files}
            refs[self.episode_task.options(num_cpus=1, name=jobs[i][0]).remote(arguments, needed)] = i
        try:
            with tqdm(total=len(refs), unit="episode", desc=desc) as progress:
                pending = list(refs)
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for ref in ready:
                        try:
                            result = ray.get(ref)
                        except Exception as e:  # a RayTaskError: the episode's own exception is its cause
                            raise SystemExit(
                                eval_scenarios.failure_line(jobs[refs[ref]][0], getattr(e, "cause", None) or e)
                            ) from None
                        on_result(refs[ref], result)
                        progress.update()
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)  # nothing left of this study's episodes on the cluster


def backend(args):
    """The study's way of running its jobs: `--ray` (a cluster) or this machine."""
    if getattr(args, "ray", None):
        return OnRay(args.ray, args.out, args.ray_gpus)
    return Local()
