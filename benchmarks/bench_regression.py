"""Speed of slowly-changing regression: 100 batched seeds against one seed of plain autograd.

Run by hand, alone on the machine
(``flock /tmp/cbp_bench.lock python benchmarks/bench_regression.py``).

For each learner (bp, cbp; ``--learners`` for more), seed-steps per second of the engine that
``python -m cbp_rl.train regression`` runs (S seeds, default 100, stacked in one network, the
problem's inputs and targets drawn as the run draws them) against one seed of a plain PyTorch
loop as the reference runs it, one seed per process: ``nn.Sequential`` 20-5-1, ``F.mse_loss``,
``backward``, ``optim.SGD.step`` (for cbp also ``cbp_rl.ContinualBackprop.step``, for snp
``cbp_rl.methods.ShrinkAndPerturb.step``), inputs and targets precomputed. Both are timed in
alternating rounds in one process, so machine noise hits them alike; the ratio printed is the
figure to quote. Goal: 100 runs of 1,000,000 examples (bp) in under one CPU-hour; the
reference took about 15 CPU-minutes per run, 25 CPU-hours for 100.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cbp_rl import ContinualBackprop
from cbp_rl.methods import ShrinkAndPerturb
from cbp_rl.supervised.engine import BatchedLearner
from cbp_rl.supervised.regression_config import RegressionConfig
from cbp_rl.supervised.regression_problem import SlowlyChangingInputs, TargetNetwork
from cbp_rl.supervised.regression_run import CHUNK

Step = Callable[[], int]
"""Does some training steps; returns how many (seed-steps)."""


def engine_steps(learner: str, seeds: int) -> Step:
    """One chunk of the run's loop: draw inputs, compute targets, train all seeds."""
    config = RegressionConfig(learner=learner, seeds=seeds)  # type: ignore[arg-type]
    seed_list = config.seed_list
    problem = config.problem.spec()
    engine = BatchedLearner(
        config.network_spec(), config.learner_spec(), seed_list, loss="squared_error"
    )
    target = TargetNetwork(problem, seed_list)
    stream = SlowlyChangingInputs(problem, seed_list)

    def steps() -> int:
        inputs = stream.next(CHUNK)
        engine.train(inputs, target(inputs))
        return CHUNK * seeds

    return steps


def autograd_steps(learner: str) -> Step:
    """``CHUNK`` steps of one seed in a plain autograd loop, the reference's way."""
    config = RegressionConfig(learner=learner)  # type: ignore[arg-type]
    spec = config.learner_spec()
    problem = config.problem.spec()
    net = BatchedLearner(config.network_spec(), spec, [0]).to_module(0)
    opt = torch.optim.SGD(net.parameters(), lr=spec.step_size, weight_decay=spec.weight_decay)
    methods: list[ShrinkAndPerturb | ContinualBackprop] = []
    if spec.noise_std:
        methods.append(ShrinkAndPerturb(net, noise_std=spec.noise_std, seed=0))
    if spec.cbp is not None:
        methods.append(ContinualBackprop(net, opt, **vars(spec.cbp), seed=0))
    inputs = SlowlyChangingInputs(problem, [0]).next(10 * CHUNK)
    targets = TargetNetwork(problem, [0])(inputs)
    xs, ys = inputs[0].unsqueeze(1), targets[0].view(-1, 1, 1)
    counter = [0]

    def steps() -> int:
        start = counter[0] % 10 * CHUNK
        counter[0] += 1
        for i in range(start, start + CHUNK):
            loss = F.mse_loss(net(xs[i]), ys[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            for method in methods:
                method.step()
        return CHUNK

    return steps


def rate(step: Step, seconds: float) -> float:
    """Seed-steps per second of ``step`` over about ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--learners", nargs="+", default=["bp", "cbp"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for learner in args.learners:
        batched, single = engine_steps(learner, args.seeds), autograd_steps(learner)
        batched(), single()  # warm up
        rates: dict[str, list[float]] = {"batched": [], "autograd": []}
        for _ in range(args.rounds):
            rates["batched"].append(rate(batched, args.seconds))
            rates["autograd"].append(rate(single, args.seconds))
        b, a = (sum(r) / len(r) for r in (rates["batched"], rates["autograd"]))
        hours = 100 * 1_000_000 / b / 3600
        print(
            f"{learner}: {args.seeds} batched seeds {b:,.0f} seed-steps/s, one seed in autograd "
            f"{a:,.0f} steps/s: {b / a:.1f}x; 100 runs of 1e6 examples {hours:.2f} hours of one "
            f"core (autograd: {100 * 1_000_000 / a / 3600:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
