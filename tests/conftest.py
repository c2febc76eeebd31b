import ast
import os
import signal
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import eval_scenarios  # noqa: E402 (needs ROOT on the path)


def run_script(script, *flags, cwd, timeout=300, check=True):
    """Runs `python <script> <flags>` from `cwd` (so runs/ lands there); returns the result."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def spawned_workers():
    """PIDs of live multiprocessing-spawned processes started from this test session (our environment and
    evaluation workers among them): their environment holds pytest's PYTEST_CURRENT_TEST, which workers
    of a training run or a study started outside the suite on the same machine do not."""
    pids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = b"PYTEST_CURRENT_TEST=" in f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and state != "Z" and ours:
            pids.add(int(pid))
    return pids


# Tiny settings shared by the end-to-end tests: 2 envs x 16 steps per iteration.
TINY = [
    "--num-envs",
    "2",
    "--num-steps",
    "16",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "2",
    "--max-episode-steps",
    "20",
    "--hidden-size",
    "32",
    "--num-workers",
    "2",
]


@pytest.fixture
def tiny_flags():
    return list(TINY)


# Every algorithm script: mappo.py and each `<method>_mappo.py` copy of its loop, as evaluation
# finds them. Tests of the per-script copies (GAE, LSTM unroll, PPO loss, the rollout/update path)
# run over all of them.
ALGORITHM_SCRIPTS = eval_scenarios.algorithm_scripts()


def run_main_in_process(script, flags, cwd, observe):
    """Runs the main block of `script` (a name in ALGORITHM_SCRIPTS) in this process, as
    `python script.py flags` from `cwd` would, after `observe(namespace)` has replaced some of the
    script's functions by wrappers that record what the loop passes them. The scripts keep their
    loop inline (CleanRL's style); this is how a test looks inside it."""
    path = os.path.join(ROOT, f"{script}.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    main = tree.body[-1]
    assert isinstance(main, ast.If) and ast.unparse(main.test) == "__name__ == '__main__'", f"{path}: no main block last"
    # The module keeps the script's own name (dataclasses and tyro look it up in sys.modules, and the
    # functions' __module__ is then the script's, as when imported); the imported script is put back after.
    module = types.ModuleType(script)
    module.__file__ = path
    imported = sys.modules.get(script)
    sys.modules[script] = module
    old_argv, old_cwd, old_hook, old_sigint = sys.argv, os.getcwd(), sys.excepthook, signal.getsignal(signal.SIGINT)
    old_threads = torch.get_num_threads()  # the script sets its own
    try:
        exec(compile(ast.Module(tree.body[:-1], type_ignores=[]), path, "exec"), module.__dict__)
        observe(module.__dict__)
        sys.argv = [path, *flags]
        os.chdir(cwd)
        module.__dict__["__name__"] = "__main__"
        exec(compile(ast.Module(main.body, type_ignores=[]), path, "exec"), module.__dict__)
    finally:
        sys.argv, sys.excepthook = old_argv, old_hook
        signal.signal(signal.SIGINT, old_sigint)
        torch.set_num_threads(old_threads)
        os.chdir(old_cwd)
        if imported is None:
            del sys.modules[script]
        else:
            sys.modules[script] = imported
