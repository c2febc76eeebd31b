"""The peer: BenchMARL's MAPPO on a Melting Pot substrate, at this project's batch and PPO schedule.

    make peer                                              # installs requirements-peer.txt (optional)
    .venv/bin/python benchmarks/peer_benchmarl.py          # one measurement
    .venv/bin/python benchmarks/throughput.py              # runs it as the table's last row when installed

BenchMARL 1.5.2 on TorchRL 0.11.1 is the MARL library a Melting Pot user would otherwise install. This runs
its MAPPO with the library's own defaults (its Melting Pot task, its CNN model for actor and critic with the
Melting Pot paper's layer sizes, serial collection in one process, CPU) except where they set what is being
compared, which follow mappo.py's defaults: `--num-envs` environments of `--num-steps` steps a batch
(8 x 128 = 1,024 env steps), 4 epochs of 4 minibatches, no evaluation, rendering, logging or checkpoints.
Prints the env steps/s over the iterations after the
first (start-up excluded) and the shares of collection and training in them, as one line that
benchmarks/throughput.py reads. Nothing of the project is used except utils.import_meltingpot: the
project's venv has no TensorFlow (only Melting Pot's bots need it), and TorchRL's wrapper imports
meltingpot whole, so the stand-in import is done first.
"""

import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import utils  # noqa: E402

try:
    import benchmarl
    from benchmarl.experiment.callback import Callback
except ImportError:  # the script then stops with a one-line error
    benchmarl, Callback = None, object


@dataclass
class Args:
    substrate: str = "pure_coordination_in_the_matrix__repeated"
    """the Melting Pot substrate"""
    num_envs: int = 8
    """environments collected from, as mappo.py's --num-envs"""
    num_steps: int = 128
    """steps of every environment per batch, as mappo.py's --num-steps"""
    update_epochs: int = 4
    """passes over a batch, as mappo.py's --update-epochs"""
    num_minibatches: int = 4
    """minibatches a pass, as mappo.py's --num-minibatches"""
    iterations: int = 6
    """collection + training iterations; the first (start-up) is not timed"""
    seed: int = 1
    """BenchMARL's experiment seed"""


def benchmarl_experiment(args, callbacks, folder):
    """BenchMARL's MAPPO experiment on args.substrate, its defaults but for the batch and the schedule."""
    from benchmarl.algorithms import MappoConfig
    from benchmarl.environments import MeltingPotTask
    from benchmarl.experiment import Experiment, ExperimentConfig

    config = ExperimentConfig.get_from_yaml()
    frames = args.num_envs * args.num_steps
    config.on_policy_n_envs_per_worker = args.num_envs
    config.on_policy_collected_frames_per_batch = frames
    config.on_policy_n_minibatch_iters = args.update_epochs  # BenchMARL's name for passes over the batch
    config.on_policy_minibatch_size = frames // args.num_minibatches
    config.max_n_frames, config.max_n_iters = None, args.iterations
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.evaluation, config.render, config.loggers, config.create_json = False, False, [], False
    config.checkpoint_interval, config.checkpoint_at_end, config.save_folder = 0, False, folder
    task = MeltingPotTask[args.substrate.upper()].get_from_yaml()
    return Experiment(
        task=task,
        algorithm_config=MappoConfig.get_from_yaml(),
        model_config=meltingpot_cnn(),
        critic_model_config=meltingpot_cnn(),
        seed=args.seed,
        config=config,
        callbacks=callbacks,
    )


def meltingpot_cnn():
    """The Melting Pot paper's agent torso in BenchMARL's CNN model: conv 16 channels 8x8 stride 8 (a sprite
    to a pixel), conv 32 channels 4x4 stride 1, ReLU, then an MLP of 64, 64 (no LSTM: BenchMARL's CNN model is
    feed-forward, where ours has one of 128). BenchMARL's own default CNN
    (3 x 32 channels, 3x3 stride 1 over every pixel, tanh) costs ~50 times more here: 1 env step/s."""
    from benchmarl.models import CnnConfig

    config = CnnConfig.get_from_yaml()
    config.cnn_num_cells, config.cnn_kernel_sizes, config.cnn_strides, config.cnn_paddings = [16, 32], [8, 4], [8, 1], 0
    config.cnn_activation_class = config.mlp_activation_class = torch.nn.ReLU
    config.mlp_num_cells = [64, 64]
    return config


class Clock(Callback):
    """The time of every batch's arrival and of the end of its training (BenchMARL pickles its callbacks, so
    this lives at module level)."""

    def __init__(self):
        super().__init__()
        self.collected, self.trained = [], []

    def on_batch_collected(self, batch):
        self.collected.append(time.perf_counter())

    def on_train_end(self, training_td, group):
        self.trained.append(time.perf_counter())


def measure(args):
    """(env steps/s, collection share, training share) over the iterations after the first."""
    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        experiment = benchmarl_experiment(args, [clock], folder)
        experiment.run()
    # iteration k runs from batch k's arrival to batch k+1's: training k, then collecting k+1
    timed = len(clock.collected) - 1
    seconds = clock.collected[-1] - clock.collected[0]
    training = sum(clock.trained[k] - clock.collected[k] for k in range(timed))
    return timed * args.num_envs * args.num_steps / seconds, 1 - training / seconds, training / seconds


if __name__ == "__main__":
    args = tyro.cli(Args)
    utils.check_substrate(args.substrate)
    if args.num_envs * args.num_steps % args.num_minibatches:
        raise SystemExit(
            f"error: --num-minibatches {args.num_minibatches} must divide --num-envs x --num-steps "
            f"({args.num_envs * args.num_steps})"
        )
    if args.iterations < 2:
        raise SystemExit(f"error: --iterations must be at least 2 (the first is not timed), got {args.iterations}")
    if benchmarl is None:
        raise SystemExit("error: BenchMARL is not installed; `make peer` installs requirements-peer.txt")
    from benchmarl.environments import MeltingPotTask

    if args.substrate.upper() not in MeltingPotTask.__members__:
        raise SystemExit(
            f"error: --substrate {args.substrate} is not one of BenchMARL {benchmarl.__version__}'s Melting Pot tasks"
        )
    utils.import_meltingpot()  # before TorchRL's wrapper imports it: the stand-in for TensorFlow
    sps, collection, training = measure(args)
    print(
        f"BenchMARL {benchmarl.__version__} MAPPO on {args.substrate}: {args.num_envs} envs x {args.num_steps} "
        f"steps, {args.update_epochs} epochs x {args.num_minibatches} minibatches, {args.iterations - 1} timed iterations"
    )
    print(f"peer: {sps:.1f} env steps/s | collection {collection:.0%} | training {training:.0%}")
