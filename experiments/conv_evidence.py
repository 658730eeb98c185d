"""Continual ImageNet's protocol on real digits: does the conv net lose plasticity, does CBP not?

    python experiments/conv_evidence.py --data-dir ../shared/data/mnist --out runs/conv_evidence

A stand-in for the paper's data (no ImageNet here): the 10,000 real MNIST test digits (or
Fashion-MNIST with ``--dataset fashion-mnist``), 700 per class, padded to 32x32 and repeated
over 3 channels, written as the per-class ``<class>.npy`` files the command reads. Then
``continual-imagenet`` runs unchanged except for its scale: binary tasks of digit pairs from
the seeded class order, the reference's conv net, SGD with momentum 0.9, the head zeroed at each
task start, but fewer images and epochs per task and a larger step size (by default 100 training
and 100 test images per class, 5 epochs of minibatches of 20, step size 0.03), so that
the conv path can show loss of plasticity within a CPU budget. Backprop and CBP (the reference's rr
3e-4, mt 100, adaptable contribution) see the same seeds, class orders and minibatch orders.

Prints, per learner, the test accuracy at the end of each task (mean over seeds +- standard
error) of the first and of the last ``--block`` tasks, and the dormant units and effective rank
of the last hidden layer at the first and last task start; writes the run directories and the
figures (``python -m cbp_rl.plot``) under ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from cbp_rl.lab.plot import main as plot_main
from cbp_rl.supervised.conv_run import ConvRunConfig, load_conv_results
from cbp_rl.supervised.data import load_images
from cbp_rl.supervised.imagenet import ContinualImageNetConfig, run


def write_class_files(dataset: str, data_dir: Path | None, out: Path) -> Path:
    """The digits as ``out/<class>.npy``, ``[700, 3, 32, 32]`` float32 in [0, 1]."""
    images = load_images(dataset, data_dir, download=False)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for label in range(10):
        index = np.flatnonzero(images.labels == label)
        chosen = rng.permutation(index)[:700]
        digits = images.images[chosen].reshape(-1, 28, 28)
        padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
        np.save(out / f"{label}.npy", np.repeat(padded[:, None], 3, axis=1).astype(np.float32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/conv_evidence"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=0.03)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    classes = write_class_files(args.dataset, args.data_dir, args.out / "data")
    for learner in ("bp", "cbp"):
        for seed in range(args.seeds):
            start = time.perf_counter()
            config = ContinualImageNetConfig(
                learner=learner,  # type: ignore[arg-type]
                seed=seed,
                tasks=args.tasks,
                epochs=args.epochs,
                batch_size=args.batch_size,
                train_per_class=args.train_per_class,
                test_per_class=args.test_per_class,
                step_size=args.step_size,
                data_dir=classes,
                probe_examples=2 * args.train_per_class,
                run=ConvRunConfig(
                    run_dir=args.out / f"{learner}-s{seed}",
                    checkpoint_every=0,
                    threads=args.threads,
                    progress=False,
                ),
            )
            run(config)
            print(f"{learner} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    report(args)
    plot_main([str(args.out / f"{learner}-s{s}") for learner in ("bp", "cbp")
               for s in range(args.seeds)] + ["--out", str(args.out / "figures")])  # fmt: skip


def report(args: argparse.Namespace) -> None:
    block = args.block
    print(f"\ntest accuracy at the end of each task, mean over {args.seeds} seeds +- s.e.")
    for learner in ("bp", "cbp"):
        results = [load_conv_results(args.out / f"{learner}-s{s}") for s in range(args.seeds)]
        accuracy = np.stack([r["task_test_accuracy"] for r in results])
        first, last = accuracy[:, :block].mean(1), accuracy[:, -block:].mean(1)
        dormant = np.stack([r["dormant_units"][:, -1] for r in results])
        rank = np.stack([r["effective_rank"][:, -1] for r in results])
        se = np.sqrt(args.seeds)
        print(
            f"{learner:>4}: tasks 1-{block} {first.mean():.3f} +- {first.std(ddof=1) / se:.3f}, "
            f"last {block} {last.mean():.3f} +- {last.std(ddof=1) / se:.3f}; last hidden layer "
            f"dormant {dormant[:, 0].mean():.3f} -> {dormant[:, -1].mean():.3f}, effective rank "
            f"{rank[:, 0].mean():.1f} -> {rank[:, -1].mean():.1f}"
        )


if __name__ == "__main__":
    main()
