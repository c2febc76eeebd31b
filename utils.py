"""Environment plumbing shared by the algorithm scripts, and nothing algorithmic.

- `import_meltingpot`: import Melting Pot without paying for TensorFlow.
- `MeltingPotVecEnv`: `num_envs` substrates in worker processes, stepped in lockstep with
  automatic reset; the players of all environments are the rows of one batch.
- checkpoints: atomic save, load with a one-line error for a foreign checkpoint, RNG state;
  the sizes and input features of a substrate's actor.
- `parse_args`: tyro, with a resumed run's saved flags as the defaults.
"""

import contextlib
import difflib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import types
from dataclasses import fields
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn as nn
import tyro

SPRITE_SIZE = 8  # pixels per grid cell in every Melting Pot substrate


# ---------------------------------------------------------------------------------------------
# Melting Pot import


class _TensorFlowStandIn(types.ModuleType):
    """Stands in for `tensorflow` while Melting Pot is imported (only its bots use TensorFlow).

    Melting Pot touches `tf.Tensor` and `tf.executing_eagerly()` at import time; anything else
    raises AttributeError (never ImportError: that would break `import torch` later).
    """

    Tensor = object

    @staticmethod
    def executing_eagerly():
        return True

    def __getattr__(self, name):
        raise AttributeError(
            f"tensorflow.{name}: TensorFlow was not loaded (training does not need it); "
            "Melting Pot's background bots need it: `make bots`, see docs/get-started/installation.md"
        )


def import_meltingpot(with_tensorflow: bool = False):
    """Imports and returns the `meltingpot` package.

    Plain `import meltingpot` imports TensorFlow (4-6 s, ~700 MB per process) for the bots.
    Unless `with_tensorflow`, a stand-in takes TensorFlow's place during the import and is
    removed afterwards, so the import costs ~0.7 s.
    """
    if "meltingpot.substrate" in sys.modules:
        return sys.modules["meltingpot"]
    if with_tensorflow or "tensorflow" in sys.modules:
        import meltingpot

        return meltingpot
    sys.modules["tensorflow"] = _TensorFlowStandIn("tensorflow")
    try:
        import meltingpot
    finally:
        del sys.modules["tensorflow"]
    return meltingpot


def check_substrate(name: str) -> None:
    """Exits with a one-line error unless `name` is a Melting Pot substrate."""
    substrates = sorted(import_meltingpot().substrate.SUBSTRATES)
    if name not in substrates:
        close = difflib.get_close_matches(name, substrates, n=4, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"valid: {', '.join(substrates)}"
        raise SystemExit(f"error: --substrate {name!r} is not a Melting Pot substrate; {hint}")


# ---------------------------------------------------------------------------------------------
# Observations


def downsample(frame: np.ndarray, factor: int = SPRITE_SIZE) -> np.ndarray:
    """Averages each `factor` x `factor` block of an RGB frame (88x88 -> 11x11 for factor 8).

    cv2's INTER_AREA at an integer factor is the exact block mean, rounded: ~16 us per frame
    against ~220 us for the numpy reshape-mean.
    """
    h, w = frame.shape[:2]
    return cv2.resize(frame, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def permitted_keys(observation_spec) -> list[str]:
    """The observation keys Melting Pot lets focal players see in scenarios, sorted, less RGB."""
    permitted = import_meltingpot().scenario.PERMITTED_OBSERVATIONS
    return sorted(k for k in observation_spec if k in permitted and k != "RGB")


def player_features(observation, vector_keys, downsample_rgb: bool):
    """One player's observation dict -> what the actor sees: (RGB uint8 (h, w, 3), the
    `vector_keys` flattened and concatenated, float32 (d,)). Training and evaluation share it."""
    rgb = downsample(observation["RGB"]) if downsample_rgb else observation["RGB"]
    parts = [np.ravel(observation[k]) for k in vector_keys]
    return rgb, (np.concatenate(parts) if parts else np.zeros(0)).astype(np.float32)


class _Substrate:
    """One substrate inside a worker: numpy observations, a step limit and episode statistics."""

    def __init__(self, name: str, downsample: bool, max_episode_steps: Optional[int]):
        self.name = name
        self.env = self._build()
        self.spare = None  # (env, its first timestep): the next episode's environment, built ahead by prepare()
        self.downsample = downsample
        self.max_episode_steps = max_episode_steps
        spec = self.env.observation_spec()[0]
        self.vector_keys = permitted_keys(spec)
        self.num_players = len(self.env.action_spec())
        self.num_actions = self.env.action_spec()[0].num_values

    def _build(self):
        substrate = import_meltingpot().substrate
        return substrate.build(self.name, roles=substrate.get_config(self.name).default_player_roles)

    def _frame(self, frame):
        return downsample(frame) if self.downsample else frame

    def _observe(self, timestep):
        rgb, vector = zip(*(player_features(o, self.vector_keys, self.downsample) for o in timestep.observation))
        world = self._frame(timestep.observation[0]["WORLD.RGB"])
        return np.stack(rgb), np.stack(vector), world

    def reset(self):
        """The first observation of a new episode: the environment prepare() built ahead if there is one,
        else a reset of this one (which rebuilds it: 0.04 s on the matrix substrates, 0.47 s on clean_up,
        `benchmarks/profile_parts.py --parts reset`)."""
        self.returns = np.zeros(self.num_players)
        self.length = 0
        if self.spare is None:
            return self._observe(self.env.reset())
        self.env.close()
        (self.env, timestep), self.spare = self.spare, None
        return self._observe(timestep)

    def prepare(self):
        """Builds and resets the next episode's environment now, while the learner works, so that the
        episode's end swaps it in instead of stalling every environment for a rebuild. Melting Pot's engine
        draws its seed from `random` at the build, in the same order on every run of a seed."""
        if self.spare is None:
            env = self._build()
            self.spare = (env, env.reset())

    def step(self, actions):
        """Returns (rgb, vector, world, rewards, done, episode); on done, rgb/vector/world are the
        first observation of the next episode and `episode` holds the finished one's statistics."""
        timestep = self.env.step([int(a) for a in actions])
        rewards = np.asarray(timestep.reward, dtype=np.float32)
        self.returns += rewards
        self.length += 1
        done = timestep.last() or (self.max_episode_steps is not None and self.length >= self.max_episode_steps)
        if not done:
            return (*self._observe(timestep), rewards, False, None)
        episode = {"returns": self.returns.copy(), "collective_return": float(self.returns.sum()), "length": self.length}
        return (*self.reset(), rewards, True, episode)

    def close(self):
        self.env.close()
        if self.spare is not None:
            self.spare[0].close()


def die_with_parent() -> None:
    """Has the kernel end this process (SIGTERM) when its parent dies, however the parent died: a worker
    must not outlive a killed run (a pool worker of an evaluation survived its study's SIGTERM and kept a
    core busy for 40 minutes). Linux only, like the project; elsewhere it does nothing."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent.pid:  # the parent died before the call: nothing will signal us
        os._exit(1)


@contextlib.contextmanager
def sigint_ignored():
    """Processes spawned inside this block ignore SIGINT from their first instruction (a new interpreter
    keeps an inherited SIG_IGN), so a Ctrl-C while they import torch prints no traceback of theirs;
    the parent, which handles Ctrl-C, ignores it only while they start."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker(remote, parent_remote, substrate_name, num_envs, seed, downsample, max_episode_steps):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    die_with_parent()
    parent_remote.close()
    cv2.setNumThreads(1)
    envs = []
    try:
        # Melting Pot's engine draws its seed from Python's `random` at every (re)build.
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        envs = [_Substrate(substrate_name, downsample, max_episode_steps) for _ in range(num_envs)]
        spec = {
            "num_players": envs[0].num_players,
            "num_actions": envs[0].num_actions,
            "vector_keys": envs[0].vector_keys,
        }
        remote.send(("ok", spec))
        while True:
            command, data = remote.recv()
            if command == "reset":
                remote.send(("ok", [env.reset() for env in envs]))
            elif command == "step":
                remote.send(("ok", [env.step(a) for env, a in zip(envs, data)]))
            elif command == "prepare":  # no reply: the main process does not wait for it
                for env in envs:
                    env.prepare()
            elif command == "close":
                break
    except (EOFError, BrokenPipeError):  # the main process is gone
        pass
    except Exception as e:  # report, in one line, to the main process
        remote.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
    finally:
        for env in envs:
            env.close()
        remote.close()


class EnvWorkerError(SystemExit):
    """An environment worker died. A SystemExit, so an uncaught one ends the run with its
    one-line message and exit status 1 instead of a traceback."""


def num_env_workers(num_envs: int, num_workers: Optional[int] = None) -> int:
    """The worker processes of MeltingPotVecEnv: `num_workers`, by default one per core, at most `num_envs`."""
    return min(num_envs, num_workers or os.cpu_count() or 1)


def default_torch_threads(num_envs: int, num_workers: Optional[int] = None) -> int:
    """torch threads that do not fight the environment workers for the cores: the cores the workers leave,
    at least 1 (two mappo.py runs side by side on 2 cores, `benchmarks/throughput.py --side-by-side`: 82 + 81
    env steps/s with torch's default threads, 472 + 490 with one thread each)."""
    return max(1, (os.cpu_count() or 1) - num_env_workers(num_envs, num_workers))


class MeltingPotVecEnv:
    """`num_envs` copies of a substrate in `num_workers` processes, stepped in lockstep.

    Rows of every per-player array are `env * num_players + player`. Observations:
      rgb    (num_envs * num_players, h, w, 3) uint8    the player's own view
      vector (num_envs * num_players, d) float32        the other permitted keys, flattened
      world  (num_envs, H, W, 3) uint8                  WORLD.RGB, for the centralised critic
    RGB frames are downsampled by the sprite size inside the workers unless `downsample=False`.
    """

    def __init__(
        self,
        substrate: str,
        num_envs: int,
        seed: int,
        num_workers: Optional[int] = None,
        downsample: bool = True,
        max_episode_steps: Optional[int] = None,
    ):
        check_substrate(substrate)
        self.substrate = substrate
        self.num_envs = num_envs
        num_workers = num_env_workers(num_envs, num_workers)
        self.envs_per_worker = [len(s) for s in np.array_split(np.arange(num_envs), num_workers)]
        worker_seeds = np.random.SeedSequence(seed).generate_state(num_workers, dtype=np.uint64)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        self.remotes, self.processes = [], []
        for i, n in enumerate(self.envs_per_worker):
            remote, worker_remote = ctx.Pipe()
            process = ctx.Process(
                target=_worker,
                daemon=True,
                name=f"meltingpot-worker-{i}",
                args=(worker_remote, remote, substrate, n, int(worker_seeds[i]), downsample, max_episode_steps),
            )
            with sigint_ignored():
                process.start()
            worker_remote.close()
            self.remotes.append(remote)
            self.processes.append(process)
        self.closed = False
        spec = self._receive()[0]
        self.num_players = spec["num_players"]
        self.num_actions = spec["num_actions"]
        self.vector_keys = spec["vector_keys"]

    def _failed(self, i, reason=None):
        """Closes every worker and returns the one-line error for worker `i` (default reason: it
        died, with the exit code that only a joined process has)."""
        self.close()
        reason = reason or f"died (exit code {self.processes[i].exitcode})"
        return EnvWorkerError(f"error: environment worker {i} (substrate {self.substrate}) {reason}")

    def _send(self, commands):
        for i, (remote, command) in enumerate(zip(self.remotes, commands)):
            try:
                remote.send(command)
            except (BrokenPipeError, ConnectionResetError):
                raise self._failed(i) from None

    def _receive(self):
        results = []
        for i, remote in enumerate(self.remotes):
            try:
                status, data = remote.recv()
            except (EOFError, ConnectionResetError):
                raise self._failed(i) from None
            if status == "error":
                raise self._failed(i, f"crashed: {data}")
            results.append(data)
        return results

    def _gather(self, per_worker):
        per_env = [result for worker in per_worker for result in worker]
        rgb = np.concatenate([r[0] for r in per_env])
        vector = np.concatenate([r[1] for r in per_env])
        world = np.stack([r[2] for r in per_env])
        return per_env, {"rgb": rgb, "vector": vector, "world": world}

    def reset(self) -> dict:
        self._send([("reset", None)] * len(self.remotes))
        self.obs = self._gather(self._receive())[1]
        return self.obs

    @property
    def rgb_shape(self):
        return self.obs["rgb"].shape[1:]

    @property
    def world_shape(self):
        return self.obs["world"].shape[1:]

    @property
    def vector_dim(self):
        return self.obs["vector"].shape[1]

    def step(self, actions: np.ndarray):
        """actions (num_envs * num_players,) -> obs, rewards (rows,), dones (rows,), episodes.

        `episodes` lists the episodes that ended in this step, each a dict with `env`, `returns`
        (one per player), `collective_return` and `length`; those environments have already
        been reset, and `obs` holds their first observation.
        """
        actions = np.asarray(actions).reshape(self.num_envs, self.num_players)
        bounds = np.cumsum([0, *self.envs_per_worker])
        self._send([("step", actions[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        per_env, self.obs = self._gather(self._receive())
        rewards = np.concatenate([r[3] for r in per_env])
        dones = np.repeat([r[4] for r in per_env], self.num_players)
        episodes = [dict(env=e, **r[5]) for e, r in enumerate(per_env) if r[5] is not None]
        return self.obs, rewards, dones, episodes

    def prepare_resets(self) -> None:
        """Has every worker build, for each of its environments, the next episode's environment now, and
        returns at once. Called when the learner takes over after a rollout, it moves into the learner's time
        the rebuild that an episode's end costs (0.04 s on the matrix substrates, 0.47 s on clean_up, while
        every other environment waits for it). The engine seeds the episodes get repeat for a seed from run
        to run (Melting Pot's spawn order does not: docs/reproducibility.md); a worker that fails while
        building reports it at the next step."""
        self._send([("prepare", None)] * len(self.remotes))

    def close(self):
        if self.closed:
            return
        self.closed = True
        for remote in self.remotes:
            try:
                remote.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join()
        for remote in self.remotes:
            remote.close()

    def __del__(self):
        if hasattr(self, "closed"):
            self.close()


# ---------------------------------------------------------------------------------------------
# Checkpoints and arguments


def write_atomically(path: str, mode: str, write) -> None:
    """Calls `write(file)` on a temporary file beside `path`, then renames it to `path`: a crash
    mid-write leaves the previous file intact (and removes the temporary one)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted write leaves no half-written temporary file either
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path: str, state: dict) -> None:
    """Writes `state` to `path` atomically."""
    write_atomically(path, "wb", lambda f: torch.save(state, f))


def save_snapshot(run_dir: str, population: str, iteration: int, global_step: int, actor: nn.Module, **info) -> None:
    """Saves the weights of one actor alone, `run_dir/snapshots/{population}_{iteration:06d}.pt`
    (about 1 MB), for the study's picture of the policy space visited during training."""
    save_checkpoint(
        f"{run_dir}/snapshots/{population}_{iteration:06d}.pt",
        {"population": population, "iteration": iteration, "global_step": global_step, "actor": actor.state_dict(), **info},
    )


def save_json(path: str, data) -> None:
    """Writes `data` as JSON atomically."""
    write_atomically(path, "w", lambda f: json.dump(data, f, indent=1, default=float))


# Checkpoints are data: every file of ours is read by `read_file`, with torch's weights-only unpickler,
# which builds tensors, dicts, lists, tuples and plain values and refuses anything else, so a crafted file
# cannot run code on load. Files written now hold nothing else. Checkpoints of before this rule hold the
# numpy RNG state as a uint32 array, which needs numpy's array reconstruction and nothing more: that is the
# whole allowlist (an array's contents are still unpickled by the weights-only unpickler).
LEGACY_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
POPULATION_KEYS = {"algorithm": str, "substrate": str, "args": dict, "actor": dict}  # what evaluation reads
POPULATION_ARGS = ("downsample", "hidden_size")
RESUME_KEYS = ("run_name", "iteration", "global_step", "critic", "value_norm", "optimizer", "rng")  # every script's


def read_file(path: str, flag: str):
    """The contents of a checkpoint, snapshot or exported population at `path`, read without running
    code; a one-line error naming `flag` for a missing, unreadable or code-carrying file."""
    import pickle

    if not os.path.isfile(path):
        raise SystemExit(f"error: {flag} {path}: no such file")
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global: GLOBAL " in str(e):  # a global outside the allowlist: refused before anything ran
            found = str(e).split("Unsupported global: GLOBAL ")[1].split(" ")[0]
            raise SystemExit(
                f"error: {flag} {path} holds objects other than tensors and plain values ({found}); "
                f"refused, since loading it could run code"
            ) from None
        raise SystemExit(f"error: {flag} {path} is not a readable checkpoint (UnpicklingError)") from None
    except Exception as e:
        raise SystemExit(f"error: {flag} {path} is not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path: str, flag: str = "--resume") -> dict:
    """Loads a checkpoint of this project (or an exported population) without running code, or exits with
    a one-line error naming `flag`: not a file of ours, or missing what evaluation reads."""
    checkpoint = read_file(path, flag)
    if not isinstance(checkpoint, dict) or "algorithm" not in checkpoint:
        raise SystemExit(f"error: {flag} {path} is not a checkpoint of this project")
    missing = [k for k, kind in POPULATION_KEYS.items() if not isinstance(checkpoint.get(k), kind)]
    missing += [f"args.{k}" for k in POPULATION_ARGS if "args" not in missing and k not in checkpoint.get("args", {})]
    if missing:
        raise SystemExit(f"error: {flag} {path} is not a complete checkpoint: no {', '.join(missing)}")
    if checkpoint["substrate"] not in import_meltingpot().substrate.SUBSTRATES:
        raise SystemExit(f"error: {flag} {path} names {checkpoint['substrate']!r}, which is not a Melting Pot substrate")
    return checkpoint


def check_checkpoint(checkpoint: dict, path: str, algorithm: str, args, must_match=("substrate",)) -> None:
    """Refuses, in one line, a checkpoint of another algorithm, without a training state (an exported
    population, a snapshot) or with other `must_match` flags."""
    if checkpoint["algorithm"] != algorithm:
        raise SystemExit(
            f"error: --resume {path} is a {checkpoint['algorithm']} checkpoint; "
            f"this script resumes only {algorithm} checkpoints"
        )
    defaults = {f.name: f.default for f in fields(args)}
    for name in must_match:
        # a flag newer than the checkpoint: the run had the flag's default behaviour
        saved, given = checkpoint["args"].get(name, defaults.get(name)), getattr(args, name)
        if saved != given:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"error: --resume {path} was trained with {flag} {saved}, not {given}")
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise SystemExit(
            f"error: --resume {path} holds no training state ({', '.join(missing)} missing): a population "
            f"exported by study.py --results evaluates but cannot be resumed"
        )


# ---------------------------------------------------------------------------------------------
# The contract between a training script and evaluation / the study (docs/add-your-own-method.md).
# A training script is any `X.py` beside this file that defines, at module level:
# - `Args`, a dataclass whose fields include STUDY_FLAGS (the study sets them per run) and
#   CHECKPOINT_ARGS (evaluation and the study read them from a checkpoint's `args`);
# - `Actor(sizes, args)`, an nn.Module with ACTOR_METHODS and a `policy` head (logits from a state);
# and whose checkpoints (`runs/{run_name}/checkpoint.pt`) hold `algorithm` (the script's own file name,
# `SCRIPT`), `substrate`, `args` and `actor` (POPULATION_KEYS), plus RESUME_KEYS for resume; snapshots go
# through `save_snapshot`; its returns are logged as `charts/episodic_return`, and any scalars of its own
# under a TensorBoard namespace of its own (`distill/...`), which the study's training summary reports.
ROOT = os.path.dirname(os.path.abspath(__file__))
STUDY_FLAGS = ("seed", "substrate", "total_timesteps", "num_workers", "torch_threads", "snapshot_every", "resume")
CHECKPOINT_ARGS = ("exp_name", "seed", "downsample", "hidden_size", "num_envs", "num_steps")
ACTOR_METHODS = ("initial_state", "get_states")
CONTRACT_DOC = "docs/add-your-own-method.md"


def _module_classes(path: str) -> set:
    """The names of the classes `path` defines at module level, read without running it (ast)."""
    import ast

    try:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def is_training_script(name, root: Optional[str] = None) -> bool:
    """Whether `name` (a module name, never a path) is a file `name.py` in `root` defining `Args` and `Actor`."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and {"Args", "Actor"} <= _module_classes(os.path.join(root or ROOT, f"{name}.py"))
    )


def training_scripts(root: Optional[str] = None) -> list:
    """The training scripts beside this file (or in `root`): every `X.py` defining `Args` and `Actor`."""
    root = root or ROOT
    return sorted(name[: -len(".py")] for name in os.listdir(root) if is_training_script(name[: -len(".py")], root))


def training_script(name: str, what: str, root: Optional[str] = None) -> types.ModuleType:
    """The module of training script `name` after checking the contract, or a one-line error that starts with
    `what` ("--methods 'x' names", "--checkpoint c.pt was written by") and says what is missing. Nothing runs
    before the check but the parse of `name`.py: a checkpoint naming a file that is not a training script here
    imports nothing."""
    import importlib

    root = root or ROOT
    if not is_training_script(name, root):  # only the named file is read; the others only for the message
        exists = isinstance(name, str) and name.isidentifier() and os.path.isfile(os.path.join(root, f"{name}.py"))
        reason = "it defines no Args and Actor classes" if exists else "no such file in the project folder"
        raise SystemExit(
            f"error: {what} {name}.py, which is not a training script here ({reason}); training scripts: "
            f"{', '.join(s + '.py' for s in training_scripts(root))} (the contract: {CONTRACT_DOC})"
        )
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(name)
    names = {f.name for f in fields(module.Args)} if hasattr(module.Args, "__dataclass_fields__") else set()
    missing = [f"Args.{f}" for f in STUDY_FLAGS + CHECKPOINT_ARGS if f not in names]
    missing += [f"Actor.{m}" for m in ACTOR_METHODS if not callable(getattr(module.Actor, m, None))]
    if missing:
        raise SystemExit(
            f"error: {what} {name}.py, which breaks the contract of a training script: no "
            f"{', '.join(missing)} (see {CONTRACT_DOC})"
        )
    return module


def actor_sizes(substrate_name: str, downsample: bool):
    """The permitted vector keys of a substrate and the sizes its actor network is built with
    (rgb_shape, vector_dim, num_actions), read from the built substrate's spec as training saw it
    (the factory's spec omits wrapper keys such as COLLECTIVE_REWARD)."""
    from types import SimpleNamespace

    substrate = import_meltingpot().substrate
    with substrate.build(substrate_name, roles=substrate.get_config(substrate_name).default_player_roles) as env:
        observation, num_actions = env.observation_spec()[0], env.action_spec()[0].num_values
    vector_keys = permitted_keys(observation)
    rgb = observation["RGB"].shape
    return vector_keys, SimpleNamespace(
        rgb_shape=(rgb[0] // SPRITE_SIZE, rgb[1] // SPRITE_SIZE, 3) if downsample else tuple(rgb),
        vector_dim=sum(int(np.prod(observation[k].shape)) for k in vector_keys),
        num_actions=num_actions,
    )


def rng_state() -> dict:
    """Every generator's state, as tensors and plain values (numpy's key as a list), so that the
    checkpoint holding it loads with the weights-only unpickler."""
    name, key, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, key.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, key, position, has_gauss, cached = state["numpy"]  # a list, or an array in older checkpoints
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TimeShares:
    """Where a training iteration's wall time goes. `mark(part)` books the time since the previous mark
    (or period start) to `part`; `shares()` returns each part's share of the period and starts a new one.
    On CUDA a mark first waits for the GPU, so queued work is booked to the part that launched it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict = {}
        self.start = self.last = time.perf_counter()

    def mark(self, part: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self.last
        self.last = now

    def shares(self) -> dict:
        """Each part's share of the time since the previous call (the time since the last mark is booked
        to no part), and a new period."""
        now = time.perf_counter()
        total = max(now - self.start, 1e-9)
        shares = {part: seconds / total for part, seconds in self.seconds.items()}
        self.seconds, self.start, self.last = {}, now, now
        return shares


def quiet_interrupt(message: str = "interrupted before training started: nothing saved") -> None:
    """Makes a Ctrl-C that nothing catches (while the environments start, say; the training loop
    catches its own and saves a checkpoint) end the program with `message` instead of a traceback.
    Also restores Python's SIGINT handler, which a program started in the background by a script
    (`nohup ... &`) inherits as ignored, so that `kill -INT` stops it as a Ctrl-C would."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(message, file=sys.stderr)
        else:
            sys.__excepthook__(kind, value, traceback)

    sys.excepthook = hook


def parse_args(args_class):
    """`tyro.cli(args_class)`; with `--resume PATH`, the flags saved in that checkpoint become
    the defaults, so `--resume` alone continues a run and any flag given overrides its value."""
    argv = sys.argv[1:]
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("--resume=")), None)
    if "--resume" in argv and argv.index("--resume") + 1 < len(argv):
        resume = argv[argv.index("--resume") + 1]
    if resume is None or any(a in ("-h", "--help") for a in argv):
        return cli(args_class)
    saved = load_checkpoint(resume)["args"]
    names = {f.name for f in fields(args_class) if f.init}
    default = args_class(**{k: v for k, v in saved.items() if k in names})
    return cli(args_class, default=default)


def cli(args_class, **kwargs):
    """`tyro.cli`, whose error box (an unknown flag, a value that does not parse) becomes one line:
    `error: Unrecognized options: --num-env, 3; perhaps you meant --num-envs (python mappo.py --help lists the flags)`."""
    import io

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(args_class, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        lines = [line.strip("│╭╮╰╯─ \t") for line in captured.getvalue().splitlines()]
        lines = [line for line in lines if line and not line.startswith("For full helptext")]
        message = lines[1] if len(lines) > 1 else "the flags do not parse"  # lines[0] is the box's title
        if message.startswith("Missing from"):  # required flags, each on a line of its own
            message = "missing " + ", ".join(line.split()[0] for line in lines[2:] if line.startswith("--"))
        if "Perhaps you meant:" in lines:
            suggestions = [line.split()[0] for line in lines[lines.index("Perhaps you meant:") + 1 :] if line.startswith("--")]
            message += f"; perhaps you meant {' or '.join(suggestions[:3])}" if suggestions else ""
        raise SystemExit(f"error: {message} (python {os.path.basename(sys.argv[0])} --help lists the flags)") from None
