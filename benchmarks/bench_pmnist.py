"""Speed of the permuted-MNIST engine against plain PyTorch autograd, measured in one run.

Run by hand, alone on the machine (``flock /tmp/cbp_bench.lock python benchmarks/bench_pmnist.py``):

* ``--part seeds``: width 100, S seeds (default 30) in one batched engine, backprop and CBP
  (exact utility and ``magnitude_every`` 10), in seed-steps/s, against one seed of a plain
  PyTorch loop (``nn.Sequential``, ``F.cross_entropy``, ``backward``, ``SGD.step``; with CBP
  also ``cbp_rl.ContinualBackprop.step``), the way the reference runs one seed per process.
  Goal: CBP at S = 30 reaches 30x the reference's one-seed CBP rate; the reference did
  869 steps/s with CBP and 1,671 with backprop on this machine, so the autograd backprop
  baseline here stands in for (and is faster than) the reference's CBP.
* ``--part paper``: width 2000, one seed, batch 1: the engine's backprop and CBP against the
  same autograd loops. Goal: CBP at 4x the reference's CBP (37 steps/s here; 73 for backprop).
* ``--part learners``: every learner of ``python -m cbp_rl.train pmnist`` with its defaults
  (CBP with ``magnitude_every`` 10), S seeds at width 100 against one seed of the same learner
  in plain PyTorch (``engine.to_module``, ``torch.optim``, ``cbp_rl.methods``).

All variants are timed in alternating rounds in one process, so machine noise hits them alike;
the ratios printed are the figures to quote.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cbp_rl import CBPConfig, ContinualBackprop
from cbp_rl.methods import ReDo, ShrinkAndPerturb
from cbp_rl.nets import mlp
from cbp_rl.supervised.config import LEARNER_NAMES, CBPFlags, NetworkConfig, PermutedMNISTConfig
from cbp_rl.supervised.engine import BatchedLearner, LearnerSpec, NetworkSpec

Step = Callable[[], int]
"""Does some training steps; returns how many."""
CBP = {
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


def autograd_step(width: int, cbp_every: int | None) -> Step:
    """One batch-1 step of a plain PyTorch autograd loop (optionally with ContinualBackprop)."""
    net = mlp(784, [width] * 3, 10, activation="relu", init="kaiming")
    opt = torch.optim.SGD(net.parameters(), lr=0.003)
    cbp = None
    if cbp_every is not None:
        cbp = ContinualBackprop(net, opt, **CBP, magnitude_every=cbp_every, seed=0)  # type: ignore[arg-type]
    inputs = torch.rand(512, 1, 784)
    labels = torch.randint(0, 10, (512, 1))
    counter = [0]

    def step() -> int:
        i = counter[0] % 512
        counter[0] += 1
        loss = F.cross_entropy(net(inputs[i]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cbp is not None:
            cbp.step()
        return 1

    return step


def learner_steps(name: str, seeds: int, engine: bool) -> Step:
    """A window of engine steps for S seeds, or one autograd step of the same learner."""
    config = PermutedMNISTConfig(
        learner=name,  # type: ignore[arg-type]
        network=NetworkConfig(width=100),
        cbp=CBPFlags(magnitude_every=10),
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


def many_seeds(seeds: int, seconds: float, rounds: int) -> None:
    variants = {
        "autograd backprop, 1 seed": (autograd_step(100, None), 1),
        "autograd backprop + ContinualBackprop": (autograd_step(100, 1), 1),
        f"engine backprop, {seeds} seeds": (engine_steps(100, seeds, None), seeds),
    }
    for every in CBP_EVERY:
        variants[f"engine CBP {_every(every)}, {seeds} seeds"] = (
            engine_steps(100, seeds, every),
            seeds,
        )
    rates = compare(variants, seconds, rounds)
    report(f"width 100, batch 1, {seeds} seeds in one process", rates, "autograd backprop, 1 seed")
    autograd_cbp = rates["autograd backprop + ContinualBackprop"]
    measured = ", ".join(
        f"{rates[f'engine CBP {_every(e)}, {seeds} seeds']:,.0f} ({_every(e)}, "
        f"{rates[f'engine CBP {_every(e)}, {seeds} seeds'] / autograd_cbp:.1f}x the autograd "
        "CBP loop)"
        for e in CBP_EVERY
    )
    print(
        "  goal: CBP >= 30 x the reference's one-seed CBP (869 steps/s -> 26,070 seed-steps/s); "
        f"measured {measured}"
    )


def paper_scale(seconds: float, rounds: int) -> None:
    variants = {
        "autograd backprop": (autograd_step(2000, None), 1),
        "autograd backprop + ContinualBackprop": (autograd_step(2000, 1), 1),
        "engine backprop": (engine_steps(2000, 1, None), 1),
    }
    for every in CBP_EVERY:
        variants[f"engine CBP {_every(every)}"] = (engine_steps(2000, 1, every), 1)
    rates = compare(variants, seconds, rounds)
    report("width 2000 (784-2000-2000-2000-10), batch 1, one seed", rates, "autograd backprop")
    measured = ", ".join(f"{rates[f'engine CBP {_every(e)}']:.0f} ({_every(e)})" for e in CBP_EVERY)
    print(
        f"  goal: CBP >= 4 x the reference's CBP (37 steps/s -> 148); measured {measured} steps/s"
    )


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
