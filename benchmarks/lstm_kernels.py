"""What the actor's LSTM costs with torch's oneDNN kernels on and off, in the three shapes the code runs it in:
an evaluation episode (one step, one player), a training rollout (one step, every player of every environment)
and a PPO minibatch (the whole rollout of a quarter of the environments, forward and backward).

    .venv/bin/python benchmarks/lstm_kernels.py

One torch thread; the sizes are mappo.py's defaults on a two-player substrate (hidden 128, 8 environments,
rollouts of 128 steps, 4 minibatches). Each shape alternates the two kernels `--rounds` times and prints the
median CPU milliseconds of a call with each and the ratio off/on: below 1, oneDNN costs more than it computes.
Evaluation turns it off for its episodes (eval_scenarios.episode_kernels); training keeps it.
"""

import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


@dataclass
class Args:
    hidden_size: int = 128
    """width of the LSTM (the scripts' --hidden-size)"""
    players: int = 2
    """players per environment"""
    num_envs: int = 8
    """environments of a training rollout"""
    num_steps: int = 128
    """steps of a rollout, the length of a minibatch's sequences"""
    num_minibatches: int = 4
    """minibatches of a PPO epoch (whole environments each)"""
    rounds: int = 7
    """alternations of the two kernels per shape"""
    seed: int = 1
    """seed of the weights and inputs"""


def cpu_ms(call, repeats):
    start = time.process_time()
    for _ in range(repeats):
        call()
    return 1000 * (time.process_time() - start) / repeats


def main():
    args = utils.parse_args(Args)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    lstm = torch.nn.LSTM(args.hidden_size, args.hidden_size)
    rows = args.num_envs * args.players
    shapes = [  # name, sequence length, batch, with backward, calls per measurement
        ("evaluation step", 1, 1, False, 2000),
        ("rollout step", 1, rows, False, 1000),
        ("PPO minibatch", args.num_steps, rows // args.num_minibatches, True, 10),
    ]
    print(f"nn.LSTM({args.hidden_size}, {args.hidden_size}), 1 torch thread, median of {args.rounds} rounds, CPU ms a call:")
    for name, length, batch, backward, repeats in shapes:
        x = torch.randn(length, batch, args.hidden_size, requires_grad=backward)
        state = tuple(torch.zeros(1, batch, args.hidden_size) for _ in range(2))

        def call():
            if backward:
                out, _ = lstm(x, state)
                out.sum().backward()
            else:
                with torch.no_grad():
                    lstm(x, state)

        times = {True: [], False: []}
        for _ in range(args.rounds):
            for onednn in (True, False):
                torch.backends.mkldnn.enabled = onednn
                call()  # a first call builds oneDNN's primitive for this shape
                times[onednn].append(cpu_ms(call, repeats))
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"  {name:16s} (T={length:3d}, B={batch:2d}): oneDNN on {on:8.3f}  off {off:8.3f}  ratio off/on {off / on:.2f}")


if __name__ == "__main__":
    main()
