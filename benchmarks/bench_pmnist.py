"""Speed of the permuted-MNIST engine against the reference's loop and plain autograd, in one run.

Run by hand, alone on the machine (``flock /tmp/cbp_bench.lock python benchmarks/bench_pmnist.py``):

* ``--part seeds``: width 100, S seeds (default 30) in one batched engine, backprop and CBP
  (exact, and ``magnitude_every`` 10 and 32), in seed-steps/s, against one seed of the
  reference's own per-step loop (``baselines.ReferenceLearner``: its network, its
  generate-and-test step, one seed per process as the reference runs). Goal: exact CBP at
  S = 30 at least 20x the reference's one process.
* ``--part paper``: width 2000, one seed, batch 1: the engine's backprop and CBP against the
  reference's loop. Goals: exact CBP at least 0.8x the engine's backprop and 3x the reference.
* ``--part learners``: every learner of ``python -m cbp_rl.train pmnist`` with its defaults
  (CBP with ``magnitude_every`` 10), S seeds at width 100 against one seed of the same learner
  in plain PyTorch (``engine.to_module``, ``torch.optim``, ``cbp_rl.methods``).

Beside each exact figure, two memory-traffic bounds from one read of the weights timed in the
same run: one extra read per step (all the exact utility needs), and that plus applying the
SGD update every step, a read and a write (what the exact floats need: the engine's backprop
defers its updates to once per window, see ``PendingUpdates``).

All variants are timed in alternating rounds in one process, so machine noise hits them alike;
the ratios printed are the figures to quote.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from baselines import ReferenceLearner, read_pass  # benchmarks/baselines.py

from cbp_rl import CBPConfig, ContinualBackprop
from cbp_rl.methods import ReDo, ShrinkAndPerturb
from cbp_rl.supervised.config import (
    LEARNER_NAMES,
    CBPLearnerConfig,
    NetworkConfig,
    PermutedMNISTConfig,
)
from cbp_rl.supervised.engine import BatchedLearner, LearnerSpec, NetworkSpec

Step = Callable[[], int]
"""Does some training steps; returns how many."""
CBP: dict[str, Any] = {
    "replacement_rate": 1e-4,
    "maturity_threshold": 100,
    "decay_rate": 0.99,
    "utility": "adaptable_contribution",
    "accumulate": True,
}


def engine_steps(width: int, seeds: int, cbp_every: int | None, window: int = 32) -> Step:
    """One window of batch-1 steps of the batched engine (random examples), as a run does."""
    cbp = None if cbp_every is None else CBPConfig(**CBP, magnitude_every=cbp_every)
    engine = BatchedLearner(
        NetworkSpec(width=width),
        LearnerSpec(step_size=0.003, cbp=cbp),
        list(range(seeds)),
        window=window,
    )
    inputs = torch.rand(seeds, 512, 784)
    labels = torch.randint(0, 10, (seeds, 512))
    counter = [0]

    def steps() -> int:
        i = counter[0] % (512 // window) * window
        counter[0] += 1
        engine.train(inputs[:, i : i + window], labels[:, i : i + window])
        return window

    return steps


def learner_steps(name: str, seeds: int, engine: bool) -> Step:
    """A window of engine steps for S seeds, or one autograd step of the same learner."""
    config = PermutedMNISTConfig(
        learner=name,  # type: ignore[arg-type]
        network=NetworkConfig(width=100),
        cbp=CBPLearnerConfig(magnitude_every=10),
    )
    spec = config.learner_spec()
    learner = BatchedLearner(config.network_spec(), spec, list(range(seeds if engine else 1)))
    inputs = torch.rand(seeds, 512, 784)
    labels = torch.randint(0, 10, (seeds, 512))
    counter = [0]
    if engine:

        def steps() -> int:
            i = counter[0] % 16 * 32
            counter[0] += 1
            learner.train(inputs[:, i : i + 32], labels[:, i : i + 32])
            return 32

        return steps
    net = learner.to_module(0)
    net.train()
    if spec.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            net.parameters(), lr=spec.step_size, weight_decay=spec.weight_decay
        )
    else:
        opt = torch.optim.SGD(net.parameters(), lr=spec.step_size, weight_decay=spec.weight_decay)
    methods: list = []
    if spec.noise_std:
        methods.append(ShrinkAndPerturb(net, noise_std=spec.noise_std, seed=0))
    if spec.redo is not None:
        methods.append(ReDo(net, opt, threshold=spec.redo.threshold, period=spec.redo.period))
    if spec.cbp is not None:
        methods.append(ContinualBackprop(net, opt, **vars(spec.cbp), seed=0))

    def step() -> int:
        i = counter[0] % 512
        counter[0] += 1
        loss = F.cross_entropy(net(inputs[0, i : i + 1]), labels[0, i : i + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for method in methods:
            method.step()
        return 1

    return step


def every_learner(seeds: int, seconds: float, rounds: int) -> None:
    print(f"\nevery learner, width 100, batch 1 ({torch.get_num_threads()} threads)")
    print(f"  {'learner':<12}{'autograd, 1 seed':>18}{f'engine, {seeds} seeds':>22}{'ratio':>8}")
    for name in LEARNER_NAMES:
        variants = {
            "autograd": (learner_steps(name, 1, engine=False), 1),
            "engine": (learner_steps(name, seeds, engine=True), seeds),
        }
        rates = compare(variants, seconds / 2, rounds)
        print(
            f"  {name:<12}{rates['autograd']:>18,.0f}{rates['engine']:>22,.0f}"
            f"{rates['engine'] / rates['autograd']:>8.1f}"
        )


def timed(step: Step, seconds: float) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += step()
    return count, time.perf_counter() - start


def compare(variants: dict[str, tuple[Step, int]], seconds: float, rounds: int) -> dict[str, float]:
    """Seed-steps/s of each variant (its steps times its seeds), alternating ``rounds`` times."""
    totals = {name: [0, 0.0] for name in variants}
    for step, _ in variants.values():
        timed(step, 0.3)  # warm up; lets CBP units mature past mt = 100
    for _ in range(rounds):
        for name, (step, _) in variants.items():
            count, took = timed(step, seconds / rounds)
            totals[name][0] += count
            totals[name][1] += took
    return {name: variants[name][1] * c / t for name, (c, t) in totals.items()}


def report(title: str, rates: dict[str, float], baseline: str) -> None:
    print(f"\n{title} ({torch.get_num_threads()} threads)")
    base = rates[baseline]
    for name, rate in rates.items():
        print(f"  {name:<44} {rate:10.1f} seed-steps/s   x{rate / base:6.2f} of {baseline}")


def reference_step(width: int, cbp: bool) -> Step:
    """One batch-1 step of the reference's loop (:mod:`baselines`), one seed."""
    learner = ReferenceLearner(width, cbp)
    inputs = torch.rand(512, 1, 784)
    labels = torch.randint(0, 10, (512, 1))
    counter = [0]

    def step() -> int:
        i = counter[0] % 512
        counter[0] += 1
        learner.learn(inputs[i], labels[i])
        return 1

    return step


def engine_with_read(width: int, seeds: int) -> tuple[Step, Step]:
    """Engine backprop steps, and one read of weights of the engine's stacked shapes."""
    sizes = NetworkSpec(width=width).sizes
    weights = [torch.randn(seeds, a, b) for a, b in itertools.pairwise(sizes)]
    return engine_steps(width, seeds, None), read_pass(weights)


def exact_goals(rates: dict[str, float], seeds: int, reference: str, goal: float) -> None:
    """Print exact CBP against the engine's backprop and the reference, with the bounds: one
    extra read of the weights a step (what the exact utility needs), and that plus applying
    the SGD update at every step (a read and a write: what bit-identical exact floats need,
    where backprop applies its updates once per window)."""
    bp, exact, ref = rates["engine backprop"], rates["engine CBP exact"], rates[reference]
    read_time = 1.0 / rates["one read of the weights"]  # seconds per pass
    step_time = seeds / bp  # seconds per engine step
    one_read = step_time / (step_time + read_time)
    with_updates = step_time / (step_time + 3 * read_time)
    print(
        f"  exact CBP / {'engine backprop':<24} x{exact / bp:5.2f}   (bounds: one extra read "
        f"x{one_read:.2f}, with per-step updates x{with_updates:.2f})"
    )
    print(
        f"  exact CBP / {reference:<24} x{exact / ref:5.1f}   goal >= {goal:g}x   (bounds "
        f"x{bp * one_read / ref:.1f}, x{bp * with_updates / ref:.1f})"
    )


def many_seeds(seeds: int, seconds: float, rounds: int) -> None:
    engine_bp, weights_read = engine_with_read(100, seeds)
    variants = {
        "reference CBP, 1 seed": (reference_step(100, True), 1),
        "reference backprop, 1 seed": (reference_step(100, False), 1),
        "engine backprop": (engine_bp, seeds),
        "one read of the weights": (weights_read, 1),
    }
    for every in CBP_EVERY:
        variants[f"engine CBP {_every(every)}"] = (engine_steps(100, seeds, every), seeds)
    rates = compare(variants, seconds, rounds)
    rates_shown = {k: v for k, v in rates.items() if k != "one read of the weights"}
    title = f"width 100, batch 1, {seeds} seeds in one process"
    report(title, rates_shown, "reference CBP, 1 seed")
    exact_goals(rates, seeds, "reference CBP, 1 seed", 20)


def paper_scale(seconds: float, rounds: int) -> None:
    engine_bp, weights_read = engine_with_read(2000, 1)
    variants = {
        "reference CBP": (reference_step(2000, True), 1),
        "reference backprop": (reference_step(2000, False), 1),
        "engine backprop": (engine_bp, 1),
        "one read of the weights": (weights_read, 1),
    }
    for every in CBP_EVERY:
        variants[f"engine CBP {_every(every)}"] = (engine_steps(2000, 1, every), 1)
    rates = compare(variants, seconds, rounds)
    rates_shown = {k: v for k, v in rates.items() if k != "one read of the weights"}
    report("width 2000 (784-2000-2000-2000-10), batch 1, one seed", rates_shown, "reference CBP")
    print("  goal: exact CBP >= 0.8 x the engine's backprop")
    exact_goals(rates, 1, "reference CBP", 3)


CBP_EVERY = (1, 10, 32)
"""``magnitude_every`` values measured: exact, and refreshed every 10 or 32 steps (32 = the
engine's update window, so each refresh reuses the window's own flush of deferred updates)."""


def _every(every: int) -> str:
    return "exact" if every == 1 else f"magnitude_every={every}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["seeds", "paper", "learners", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0, help="per variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (2 stalls when the other core is busy)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("seeds", "all"):
        many_seeds(args.seeds, args.seconds, args.rounds)
    if args.part in ("paper", "all"):
        paper_scale(args.seconds, args.rounds)
    if args.part in ("learners", "all"):
        every_learner(args.seeds, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
