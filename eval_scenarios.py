# Population-population generalisation, measured the Melting Pot way: a checkpoint's trained
# population as the focal players of Melting Pot scenarios, scored by focal per-capita return.
# Docs and an example table: docs/evaluation.md
import concurrent.futures
import contextlib
import importlib.util
import json
import multiprocessing
import os
import random
import signal
import zlib
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pandas as pd
import scipy.stats
import torch
from tqdm import tqdm

import utils

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Args:
    checkpoint: str
    """the focal population: a checkpoint of any training script here (for BiDist, theta)"""
    scenarios: list[str] = field(default_factory=list)
    """official scenarios by name (clean_up_0) or by substrate (clean_up: all of its scenarios); default:
    every scenario of the checkpoint's substrate, unless --background is given"""
    background: list[str] = field(default_factory=list)
    """checkpoints forming a custom background population: each background slot plays one of them,
    sampled per episode; `uniform_random` stands for players acting uniformly at random"""
    num_focal: int = 1
    """focal slots of the custom background scenario (the first K slots; the others are background)"""
    num_episodes: int = 10
    """episodes per scenario"""
    seed: int = 1
    """seeds `random`, numpy and torch for every episode (derived per scenario and episode)"""
    num_workers: Optional[int] = None
    """worker processes running episodes in parallel (default: one per core)"""
    output: Optional[str] = None
    """write the results to OUTPUT.csv (one row per scenario) and OUTPUT.json (with every episode)"""
    normalise: Optional[str] = None
    """CSV file with columns scenario,min,max: add the min-max normalised focal return (Melting Pot 2.0)"""
    video: Optional[str] = None
    """directory to save one episode per scenario as an MP4 of WORLD.RGB, named by scenario"""
    device: str = "cpu"
    """where the policies act: cpu or cuda"""


@dataclass(frozen=True)
class Target:
    """One row of the results: an official scenario, or a custom background scenario."""

    name: str
    substrate: str
    background: tuple = ()  # checkpoint paths of a custom background population; () for an official scenario
    num_focal: int = 0


def algorithm_scripts():
    """The training scripts beside this file whose checkpoints evaluation reads (`utils.training_scripts`)."""
    return utils.training_scripts(HERE)


class CheckpointPolicy:
    """The trained population `theta` of any training script's checkpoint as a Melting Pot policy
    (`initial_state`, `step`, `close`, as `meltingpot.utils.policies.policy.Policy`).

    The checkpoint names its script (`algorithm`, the script's own file name); evaluation rebuilds that
    script's `Actor(sizes, args)` from the checkpoint's `args` and loads `actor` into it. What a script
    provides for this is the contract of `utils.training_script` (docs/add-your-own-method.md): a new
    script that keeps it is evaluated with no edit here.

    It applies the training preprocessing (`player_features`) to the focal observation, carries
    the LSTM state between steps and samples from the actor's distribution, on `device`. A BiDist
    checkpoint's fictitious population `phi` is not read: focal players are `theta`. The policy
    is stateless apart from the weights, so one instance may play several slots; `close` does
    nothing. Melting Pot steps the slots in threads, in no fixed order (evaluation steps them inline,
    step_slots_inline, but a policy does not rely on it), so each slot samples from
    its own random stream: `initial_state` (called in slot order) draws the stream's seed from
    torch's global generator, and the state is (LSTM state, seed, step).
    """

    def __init__(self, path: str, flag: str = "--checkpoint", device: str = "cpu"):
        checkpoint = utils.load_checkpoint(path, flag)
        script = checkpoint["algorithm"]
        module = utils.training_script(script, f"{flag} {path} was written by", root=HERE)
        self.path, self.substrate, self.device = path, checkpoint["substrate"], torch.device(device)
        saved = checkpoint["args"]
        self.downsample = saved["downsample"]
        self.vector_keys, sizes = utils.actor_sizes(self.substrate, self.downsample)
        try:  # the script's own network; a flag newer than the checkpoint takes its default, the behaviour the run had
            self.actor = module.Actor(sizes, SimpleNamespace(**{**asdict(module.Args()), **saved}))
            self.actor.load_state_dict(checkpoint["actor"])
            if not callable(getattr(self.actor, "policy", None)):
                raise TypeError("its Actor has no policy head (actor.policy)")
        except (RuntimeError, TypeError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:200]
            raise SystemExit(
                f"error: {flag} {path}: its actor does not fit {script}.py's network on {self.substrate} ({reason})"
            ) from None
        self.actor.to(self.device).eval()

    def initial_state(self):
        return self.actor.initial_state(1, self.device), int(torch.randint(2**62, ())), 0

    @torch.no_grad()
    def logits(self, timestep, prev_state):
        """The actor's logits for this timestep, and the next LSTM state, from the LSTM state."""
        rgb, vector = utils.player_features(timestep.observation, self.vector_keys, self.downsample)
        rgb = torch.as_tensor(rgb, device=self.device)[None]
        vector = torch.as_tensor(vector, device=self.device)[None]
        done = torch.full((1,), float(timestep.first()), device=self.device)
        hidden, state = self.actor.get_states(rgb, vector, prev_state, done)
        return self.actor.policy(hidden)[0], state

    def step(self, timestep, prev_state):
        lstm_state, seed, step = prev_state
        logits, lstm_state = self.logits(timestep, lstm_state)
        generator = torch.Generator().manual_seed(seed + step)
        action = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator)
        return int(action), (lstm_state, seed, step + 1)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def confidence_interval(values, level=0.95):
    """Half-width of the Student-t confidence interval of the mean; nan for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return float("nan")
    return float(scipy.stats.t.ppf((1 + level) / 2, n - 1) * np.std(values, ddof=1) / np.sqrt(n))


def episode_seed(seed, names, episode):
    """An episode's seed from the run's --seed, the names of what it plays (the scenario; the study
    adds the populations) and the episode's index, so that adding or reordering scenarios leaves
    every other episode as it was."""
    return int(np.random.SeedSequence([seed, *(zlib.crc32(n.encode()) for n in names), episode]).generate_state(1)[0])


def resolve_scenarios(names, substrate, checkpoint):
    """Scenario names, with a substrate name standing for all of its scenarios; one-line errors
    for an unknown name and for a scenario of another substrate than the checkpoint's."""
    mp = utils.import_meltingpot()
    scenarios, substrates = sorted(mp.scenario.SCENARIOS), sorted(mp.substrate.SUBSTRATES)
    resolved = []
    for name in names:
        if name in substrates:
            resolved += [s for s in scenarios if mp.scenario.get_config(s).substrate == name]
        elif name in scenarios:
            resolved.append(name)
        else:
            import difflib

            close = difflib.get_close_matches(name, scenarios + substrates, n=4, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else "valid: a scenario or substrate name"
            raise SystemExit(f"error: --scenarios {name!r} is neither a Melting Pot scenario nor a substrate; {hint}")
    for name in resolved:
        if mp.scenario.get_config(name).substrate != substrate:
            raise SystemExit(
                f"error: scenario {name} is on substrate {mp.scenario.get_config(name).substrate}, "
                f"but --checkpoint {checkpoint} was trained on {substrate}"
            )
    return list(dict.fromkeys(resolved))


def check_bots(scenarios):
    """True when some scenario needs Melting Pot's bot models (TensorFlow and the assets); exits
    with a one-line error when they are missing."""
    mp = utils.import_meltingpot()

    def bots(scenario):  # the scenario's bots other than the no-op bot
        return set().union(*mp.scenario.get_config(scenario).bots_by_role.values()) - {mp.bot.NOOP_BOT_NAME}

    needs = {name: mp.bot.get_config(min(bots(name))).model_path for name in scenarios if bots(name)}
    if not needs:
        return False
    name, model_path = next(iter(needs.items()))
    noop = [s for s in sorted(mp.scenario.SCENARIOS) if not bots(s)]
    if importlib.util.find_spec("tensorflow") is None:
        raise SystemExit(
            f"error: scenario {name} has Melting Pot bots, which need TensorFlow: run `make bots` "
            f"(scenarios that need none: {', '.join(noop)}; or use --background)"
        )
    if not os.path.exists(model_path):
        raise SystemExit(
            f"error: scenario {name} needs Melting Pot's bot assets, missing at {model_path}: reinstall "
            f"on a machine with internet access (make clean && make install), or use --background"
        )
    return True


def custom_factory(mp, target, policies):
    """A Melting Pot ScenarioFactory for `target`: the first num_focal slots are focal (observations
    restricted to Melting Pot's permitted ones, as in official scenarios), every other slot plays a
    background policy sampled per episode from `policies` (name -> policy)."""
    from meltingpot.utils.policies.policy_factory import PolicyFactory
    from meltingpot.utils.scenarios.scenario_factory import ScenarioFactory

    substrate = mp.substrate.get_factory(target.substrate)
    roles = mp.substrate.get_config(target.substrate).default_player_roles
    bots = {
        name: PolicyFactory(
            timestep_spec=substrate.timestep_spec(), action_spec=substrate.action_spec(), builder=lambda policy=policy: policy
        )
        for name, policy in policies.items()
    }
    return ScenarioFactory(
        substrate=substrate,
        bots=bots,
        bots_by_role={role: tuple(bots) for role in set(roles)},
        roles=roles,
        is_focal=[slot < target.num_focal for slot in range(len(roles))],
        permitted_observations=mp.scenario.PERMITTED_OBSERVATIONS,
    )


RANDOM_BACKGROUND = "uniform_random"  # a --background name for uniformly random players instead of a checkpoint


class UniformRandomPolicy:
    """A Melting Pot policy that picks every action uniformly at random: the reference background
    that no training can have prepared for or against. Seeded per slot like CheckpointPolicy."""

    def __init__(self, num_actions):
        self.num_actions = num_actions

    def initial_state(self):
        return int(torch.randint(2**62, ())), 0

    def step(self, timestep, prev_state):
        seed, step = prev_state
        action = torch.randint(self.num_actions, (), generator=torch.Generator().manual_seed(seed + step))
        return int(action), (seed, step + 1)

    def close(self):
        pass


_policies = {}  # per worker process: checkpoint path (or RANDOM_BACKGROUND) and substrate -> policy


def _policy(path, device, substrate):
    if (path, substrate) not in _policies:
        if path == RANDOM_BACKGROUND:
            num_actions = utils.import_meltingpot().substrate.get_factory(substrate).action_spec().num_values
            _policies[path, substrate] = UniformRandomPolicy(num_actions)
        else:
            _policies[path, substrate] = CheckpointPolicy(path, device=device)
    return _policies[path, substrate]


def _init_worker(with_tensorflow):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    utils.die_with_parent()
    torch.set_num_threads(1)
    utils.import_meltingpot(with_tensorflow=with_tensorflow)


def failure_line(label, error):
    """The one line that ends a study or an evaluation whose episode `label` raised `error`."""
    message = str(error).strip().splitlines()
    return f"error: {label} failed: {type(error).__name__}: {message[0] if message else ''}"


def run_episodes(jobs, num_workers, desc, on_result, initializer=_init_worker, initargs=(False,)):
    """Runs `run_episode(*arguments)` for every (label, arguments) of `jobs` in `num_workers` spawned
    processes, with a progress bar, and calls `on_result(index of the job, result)` as episodes finish. A
    failed episode or a dead worker ends the program with one line naming the job's label. Whatever ends
    it early (a Ctrl-C, an error in `on_result`) cancels the episodes not yet started at once. (Not a
    generator: one left suspended by its caller's exception would keep the pool playing every queued
    episode until the interpreter's exit had waited for them all.)"""
    executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer, initargs=initargs
    )
    futures = {}
    try:
        with utils.sigint_ignored():  # submit spawns the workers
            futures = {executor.submit(run_episode, *arguments): i for i, (_, arguments) in enumerate(jobs)}
        with tqdm(total=len(futures), unit="episode", desc=desc) as progress:
            for future in concurrent.futures.as_completed(futures):
                label = jobs[futures[future]][0]
                try:
                    result = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    raise SystemExit(f"error: an evaluation worker died during {label} (out of memory?)") from None
                except Exception as e:
                    raise SystemExit(failure_line(label, e)) from None
                on_result(futures[future], result)
                progress.update()
    finally:
        for future in futures:  # shutdown(cancel_futures=True) alone left the pool playing them (test_eval)
            future.cancel()
        executor.shutdown(wait=False, cancel_futures=True)


class InlineExecutor(concurrent.futures.Executor):
    """An executor that runs each call at once, in the calling thread, and returns its finished future."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def step_slots_inline():
    """Makes Melting Pot's populations in this process step their slots one after the other in the thread that
    steps the substrate, instead of each in a thread of its own. An evaluation worker plays one episode at a time
    on one core, where the threads only cost CPU: an episode takes about a fifth less CPU without them
    (docs/throughput.md, "Cross-play episodes": benchmarks/crossplay_episode.py). Each slot samples from its own
    random stream (CheckpointPolicy), so the order in which the slots step changes no action."""
    from meltingpot.utils.scenarios import population

    population.concurrent = SimpleNamespace(
        futures=SimpleNamespace(ThreadPoolExecutor=InlineExecutor, Future=concurrent.futures.Future)
    )


@contextlib.contextmanager
def episode_kernels():
    """The torch kernels an episode's policies run with: oneDNN's off. A policy steps its LSTM one step at a time
    for one player, where oneDNN costs more than it computes, and an episode takes about a fifth less CPU without
    it (docs/throughput.md, "Cross-play episodes": benchmarks/lstm_kernels.py, benchmarks/crossplay_episode.py).
    Training keeps oneDNN: its update unrolls long sequences, where oneDNN is the faster one. The flag is restored
    after."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def run_episode(target, seed, checkpoint, device, video_path=None):
    """One episode of `target` with the focal population of `checkpoint`. Seeds `random` (which
    Melting Pot's engine and its background sampling draw from), numpy and torch once the
    policies are loaded (loading one the first time in a worker builds a substrate, which draws
    from `random`), so an episode does not depend on what its worker ran before."""
    focal = _policy(checkpoint, device, target.substrate)
    background = {path: _policy(path, device, target.substrate) for path in target.background}
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    mp = utils.import_meltingpot()
    from meltingpot.utils.evaluation import evaluation
    from meltingpot.utils.evaluation.video_subject import VideoSubject
    from meltingpot.utils.scenarios.population import Population

    step_slots_inline()
    if target.background:
        factory = custom_factory(mp, target, background)
    else:
        factory = mp.scenario.get_factory(target.name)
    roles = factory.focal_player_roles()
    population = Population(policies={"focal": focal}, names_by_role={role: ["focal"] for role in roles}, roles=roles)
    with factory.build() as env, episode_kernels():
        if video_path:
            video = VideoSubject(os.path.dirname(video_path), extension="mp4", codec="mp4v")
            video.subscribe(on_next=lambda path: os.replace(path, video_path))
            env.observables().substrate.timestep.subscribe(video)
        result = evaluation.run_and_observe_episodes(population=population, substrate=env, num_episodes=1)
    population.close()
    row = result.iloc[0]
    return {
        "seed": seed,
        "focal_per_capita_return": float(row["focal_per_capita_return"]),
        "background_per_capita_return": float(row["background_per_capita_return"]),
        "focal_player_returns": [float(r) for r in row["focal_player_returns"]],
        "background_player_returns": [float(r) for r in row["background_player_returns"]],
        "background_player_names": list(row["background_player_names"]),
    }


def summarise(target, episodes, normalise):
    focal = [e["focal_per_capita_return"] for e in episodes]
    background = [e["background_per_capita_return"] for e in episodes]
    summary = {
        "scenario": target.name,
        "substrate": target.substrate,
        "episodes": len(episodes),
        "focal_per_capita_return": float(np.mean(focal)),
        "ci95": confidence_interval(focal),
        "background_per_capita_return": float(np.nanmean(background)) if not np.all(np.isnan(background)) else float("nan"),
    }
    if normalise is not None:
        low, high = normalise.get(target.name, (np.nan, np.nan))
        summary["normalised"] = (summary["focal_per_capita_return"] - low) / (high - low)
    return summary


def read_normalise(path):
    """scenario -> (min, max) from a CSV with columns scenario,min,max."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --normalise {path} is not a readable CSV ({type(e).__name__})") from None
    if not {"scenario", "min", "max"} <= set(table.columns):
        raise SystemExit(f"error: --normalise {path} needs the columns scenario,min,max; it has {','.join(table.columns)}")
    return {row.scenario: (float(row.min), float(row.max)) for row in table.itertuples()}


def markdown_table(summaries):
    normalised = "normalised" in summaries[0]
    header = "| scenario | episodes | focal per-capita return | 95% CI | background per-capita return |"
    lines = [header + (" normalised |" if normalised else ""), "|---|---|---|---|---|" + ("---|" if normalised else "")]
    for s in summaries:
        line = (
            f"| {s['scenario']} | {s['episodes']} | {s['focal_per_capita_return']:.2f} | ± {s['ci95']:.2f} "
            f"| {s['background_per_capita_return']:.2f} |"
        )
        lines.append(line + (f" {s['normalised']:.2f} |" if normalised else ""))
    return "\n".join(lines).replace("nan", "-")


if __name__ == "__main__":
    args = utils.cli(Args)
    for name in ["num_episodes", "num_focal"]:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_workers is not None and args.num_workers < 1:
        raise SystemExit(f"error: --num-workers must be at least 1, got {args.num_workers}")
    normalise = read_normalise(args.normalise) if args.normalise else None
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"error: --device {args.device!r} is not a torch device; valid: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: no CUDA device here; use --device cpu")
    focal = CheckpointPolicy(args.checkpoint, device=args.device)
    substrate = focal.substrate
    mp = utils.import_meltingpot()

    targets = []
    if args.scenarios or not args.background:
        scenarios = resolve_scenarios(args.scenarios or [substrate], substrate, args.checkpoint)
        if not scenarios:
            raise SystemExit(f"error: substrate {substrate} has no Melting Pot scenarios; use --background")
        targets += [Target(name, substrate) for name in scenarios]
    if args.background:
        for path in args.background:
            if path == RANDOM_BACKGROUND:
                continue
            background = CheckpointPolicy(path, flag="--background")
            if background.substrate != substrate:
                raise SystemExit(
                    f"error: --background {path} was trained on {background.substrate}, "
                    f"but --checkpoint {args.checkpoint} on {substrate}"
                )
        num_players = len(mp.substrate.get_config(substrate).default_player_roles)
        if args.num_focal >= num_players:
            raise SystemExit(
                f"error: --num-focal {args.num_focal} leaves no background slot; "
                f"{substrate} has {num_players} players (valid: 1 to {num_players - 1})"
            )
        targets.append(
            Target(f"{substrate}__background_{args.num_focal}_focal", substrate, tuple(args.background), args.num_focal)
        )
    with_tensorflow = check_bots([t.name for t in targets if not t.background])
    if args.video:
        os.makedirs(args.video, exist_ok=True)

    num_workers = min(args.num_workers or os.cpu_count() or 1, len(targets) * args.num_episodes)
    print(
        f"{args.checkpoint} ({substrate}) as focal population: {len(targets)} scenario(s) x "
        f"{args.num_episodes} episodes, {num_workers} worker(s)",
        flush=True,
    )
    results = {target: {} for target in targets}
    jobs = []
    for target in targets:
        for episode in range(args.num_episodes):
            seed = episode_seed(args.seed, [target.name], episode)
            video = os.path.abspath(f"{args.video}/{target.name}.mp4") if args.video and episode == 0 else None
            jobs.append((f"{target.name} episode {episode}", (target, seed, args.checkpoint, args.device, video)))

    def record(i, result):
        results[targets[i // args.num_episodes]][i % args.num_episodes] = result

    try:
        run_episodes(jobs, num_workers, "evaluating", record, initargs=(with_tensorflow,))
    except KeyboardInterrupt:
        raise SystemExit("interrupted: no results written") from None

    summaries = [summarise(t, [results[t][e] for e in range(args.num_episodes)], normalise) for t in targets]
    print("\n" + markdown_table(summaries))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        pd.DataFrame(summaries).to_csv(f"{args.output}.csv", index=False)
        report = {
            "checkpoint": args.checkpoint,
            "substrate": substrate,
            "seed": args.seed,
            "results": [
                dict(s, episode_results=[results[t][e] for e in range(args.num_episodes)]) for s, t in zip(summaries, targets)
            ],
        }
        with open(f"{args.output}.json", "w") as f:
            json.dump(report, f, indent=1, default=float)
        print(f"\nwritten: {args.output}.csv, {args.output}.json")
    if args.video:
        print(f"videos: {', '.join(f'{args.video}/{t.name}.mp4' for t in targets)}")
