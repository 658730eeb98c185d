"""Every plasticity method against backprop and CBP on the real digits, on one page.

    python experiments/pmnist_methods_evidence.py --data-dir ../shared/data/mnist --jobs 8

The setting of ``pmnist_evidence.py`` (784-100-100-100-10 ReLU, SGD step size 0.03, a new
permutation every 2,000 examples, 100 tasks, the 10,000 real test digits), for bp, cbp, l2,
snp, dropout, onlinenorm, redo (the batched engine) and l2init, crelu, layernorm, injection,
reset, regrama, parseval, upgd (the per-seed autograd path), each learner in its own process.
Writes under ``--out`` one run directory per learner, ``table.md`` (best 10-task block and last
10 tasks, online accuracy, mean +- standard error over seeds; dead units, effective rank and
weight magnitude at the last task-start measurement) and the figures of ``python -m
cbp_rl.plot`` over all runs (online accuracy per task among them). Stopped (Ctrl+C, SIGTERM)
and run again with the same flags, it continues each learner from its checkpoint (``--fresh``
starts over); the CPU seconds of the table add up every call's.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from pmnist_evidence import BLOCK, add_setting_flags, block_means, config

from cbp_rl.lab.plot import main as plot_main
from cbp_rl.run.conventions import NonFiniteError
from cbp_rl.run.logging import read_run_status
from cbp_rl.supervised.config import LEARNER_NAMES, MeasureConfig
from cbp_rl.supervised.experiment import run
from cbp_rl.supervised.results import load_results

DIVERGED = "diverged.txt"
"""Written in a learner's run directory when its training diverged (non-finite loss): the
step and what was not finite, shown in the table in place of its accuracies."""

LEARNERS = ("bp", "cbp", *(name for name in LEARNER_NAMES if name not in ("bp", "cbp", "adam")))
"""The learners of ``train pmnist`` but adam, backprop and CBP first."""


def run_learner(learner: str, args: argparse.Namespace) -> float:
    """Run one learner, or continue it from its checkpoint (a stopped earlier call); returns
    its CPU seconds, over every call."""
    torch.set_num_threads(1)
    run_dir = args.out / learner
    spent = run_dir / "cpu_seconds.txt"
    before = float(spent.read_text()) if spent.exists() else 0.0
    status = read_run_status(run_dir)
    if (status is not None and status.finished) or (run_dir / DIVERGED).exists():
        return before
    measures = MeasureConfig(measure_every=args.measure_every, probe_examples=2000)
    settings = dataclasses.replace(config(learner, args, run_dir), measures=measures)
    if (run_dir / "checkpoint.pt").exists():
        resume = dataclasses.replace(settings.run, run_dir=None, resume=run_dir)
        settings = dataclasses.replace(settings, run=resume)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # started, stopped before its first checkpoint
    start = time.process_time()
    try:
        run(settings, log=lambda _: None)
    except NonFiniteError as error:  # a result of the comparison, not a failure of the script
        (run_dir / DIVERGED).write_text(f"{error.step} {error.what}\n")
    finally:
        spent.write_text(str(before + time.process_time() - start))
    return before + time.process_time() - start


def row(learner: str, run_dir: Path, seconds: float, block: int) -> str:
    """One line of the table."""
    if (run_dir / DIVERGED).exists():
        step = int((run_dir / DIVERGED).read_text().split(" ", 1)[0])
        cell = f"diverged at example {step:,} (not finite: see {DIVERGED})"
        return f"| {learner} | {cell} | | | | | {seconds:.0f} |"
    results = load_results(run_dir)
    blocks = 100 * block_means(results["accuracy"], block)
    mean = blocks.mean(0)
    stderr = blocks.std(0, ddof=1) / np.sqrt(len(blocks)) if len(blocks) > 1 else 0 * mean
    best = int(np.argmax(mean))
    measured = np.flatnonzero(np.isfinite(results["effective_rank"][0, :, -1]))
    last = measured[-1]
    dead = 100 * results["dead_units"][:, last].mean()
    rank = results["effective_rank"][:, last, -1].mean()
    magnitude = results["weight_magnitude_all"][:, last].mean()
    return (
        f"| {learner} | {mean[best]:.1f} ± {stderr[best]:.1f} | {mean[-1]:.1f} ± {stderr[-1]:.1f} "
        f"| {dead:.1f} | {rank:.1f} | {magnitude:.4f} | {seconds:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the IDX files")
    parser.add_argument("--out", type=Path, default=Path("runs/pmnist-methods"))
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    parser.add_argument("--jobs", type=int, default=4, help="learners running at once")
    add_setting_flags(parser, seeds=3)
    parser.add_argument(
        "--measure-every", type=int, default=BLOCK, help="tasks between task-start measures"
    )
    parser.add_argument("--block", type=int, default=BLOCK, help="tasks per block of the table")
    parser.add_argument(
        "--fresh", action="store_true", help="start over (default: continue stopped runs)"
    )
    args = parser.parse_args()
    args.progress = False
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(run_learner, name, args) for name in args.learners}
        seconds = {name: future.result() for name, future in futures.items()}
    lines = [
        f"online permuted MNIST, real digits: width {args.width}, step size {args.step_size}, "
        f"{args.examples_per_task} examples per task, {args.tasks} tasks, {args.seeds} seeds",
        "",
        f"| learner | best {args.block}-task block (%) | last {args.block} tasks (%) "
        "| dead units (%) "
        "| effective rank (last layer) | weight magnitude | CPU seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, args.out / name, seconds[name], args.block) for name in args.learners]
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    finished = [name for name in args.learners if not (args.out / name / DIVERGED).exists()]
    plot_main([*(str(args.out / name) for name in finished), "--out", str(args.out / "plots")])


if __name__ == "__main__":
    main()
