"""Cost of a CBP step against a plain backprop step (batch-1 SGD, permuted-MNIST settings).

Run by hand: ``python benchmarks/bench_cbp_step.py [--widths 100 2000] [--seconds 4]
[--threads 1]``.

For each width, nets 784-w-w-w-10 (ReLU, kaiming) are trained with SGD (lr 0.003, batch 1) with
and without :class:`cbp_rl.ContinualBackprop` (rr 1e-4, mt 100, eta 0.99,
adaptable_contribution, accumulate), timed in alternating rounds in one process so that machine
noise hits both alike. Prints steps/s and the ratio of step times for the exact path (goal:
<= 1.3 at w = 100, <= 1.15 at w = 2000) and for ``magnitude_every`` > 1, beside the bound of
one extra read of the weights per step (all the exact utility needs), from one read of the
net's weights timed in the same rounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from baselines import read_pass  # benchmarks/baselines.py

from cbp_rl import ContinualBackprop
from cbp_rl.nets import mlp

GOALS = {100: 1.3, 2000: 1.15}
"""The exact step's goal, as a ratio of step times, by width."""


def make_learner(width: int, cbp_every: int | None, seed: int) -> Callable[[], None]:
    """A closure doing one training step on a fresh random example."""
    torch.manual_seed(seed)
    net = mlp(784, [width] * 3, 10, activation="relu", init="kaiming")
    opt = torch.optim.SGD(net.parameters(), lr=0.003)
    cbp = None
    if cbp_every is not None:
        cbp = ContinualBackprop(
            net,
            opt,
            replacement_rate=1e-4,
            maturity_threshold=100,
            decay_rate=0.99,
            utility="adaptable_contribution",
            init="kaiming",
            accumulate=True,
            magnitude_every=cbp_every,
        )
    inputs = torch.rand(4096, 1, 784)
    labels = torch.randint(0, 10, (4096, 1))
    counter = [0]

    def step() -> None:
        i = counter[0] % len(inputs)
        counter[0] += 1
        loss = F.cross_entropy(net(inputs[i]), labels[i])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        if cbp is not None:
            cbp.step()

    return step


def timed(step: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Steps done in about ``seconds``, and the time they took."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        count += 10
    return count, time.perf_counter() - start


def compare(width: int, variants: dict[str, int | None], seconds: float, rounds: int) -> None:
    """Time each variant in ``rounds`` alternating rounds and print steps/s and ratios."""
    learners: dict[str, Callable[[], object]] = {
        name: make_learner(width, every, seed=0) for name, every in variants.items()
    }
    net = mlp(784, [width] * 3, 10, activation="relu", init="kaiming")
    learners["one read of the weights"] = read_pass([p for p in net.parameters() if p.ndim > 1])
    totals = {name: [0, 0.0] for name in learners}
    for learner in learners.values():
        timed(learner, 0.5)  # warm up (and let CBP units mature past mt = 100)
    for _ in range(rounds):
        for name, learner in learners.items():
            count, took = timed(learner, seconds / rounds)
            totals[name][0] += count
            totals[name][1] += took
    rates = {name: count / took for name, (count, took) in totals.items()}
    read_rate = rates.pop("one read of the weights")
    base = rates["backprop"]
    bound = 1.0 + base / read_rate
    print(
        f"\nwidth {width} (784-{width}-{width}-{width}-10, batch 1, "
        f"{torch.get_num_threads()} threads)"
    )
    for name, rate in rates.items():
        print(f"  {name:<28} {rate:9.1f} steps/s   step time x{base / rate:5.3f} of backprop")
    exact = base / rates["backprop + CBP (exact)"]
    goal = GOALS.get(width)
    print(
        f"  exact / backprop x{exact:.3f}"
        + (f"   goal <= {goal:g}" if goal else "")
        + f"   bound (one extra read of the weights, {1e3 / read_rate:.2f} ms) x{bound:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--seconds", type=float, default=6.0, help="per variant and width")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (2 stall when the other core is busy)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants: dict[str, int | None] = {
        "backprop": None,
        "backprop + CBP (exact)": 1,
        "backprop + CBP (every 10)": 10,
        "backprop + CBP (every 100)": 100,
    }
    for width in args.widths:
        compare(width, variants, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
