"""Loss of plasticity in slowly-changing regression, at the paper's full scale, on a CPU.

    python experiments/regression_evidence.py                  # bp and cbp, 100 seeds each
    python experiments/regression_evidence.py --learners cbp   # one learner (run two at once)

The reference's problem and its ReLU SGD configuration, unscaled: 20 input bits (15 slow ones,
redrawn every 10,000 examples), a target network of 100 LTUs (beta 0.7), a 20-5-1 ReLU learner,
SGD with step size 0.01, one example per step, 1,000,000 examples, the squared error binned
over 20,000 examples; backprop against continual backprop (replacement rate 1e-4, maturity
100, adaptable contribution), every seed of a learner batched in one process. Both learners
see the same targets and inputs (seed s draws them from its own streams).

A learner whose run directory under ``--out`` is complete is not run again; a stopped one
(Ctrl+C, SIGTERM) resumes exactly where it stopped. Prints, per learner,
the binned error (mean over seeds +- standard error) at its best bin and over the last 10% of
the run, the dead units and effective rank of the hidden layer at the first and last bin, and
the CPU time the run took; writes ``evidence.json`` and the figures (``python -m cbp_rl.plot``)
under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.lab.plot import main as plot_main
from cbp_rl.supervised.regression_config import RegressionConfig, RunConfig
from cbp_rl.supervised.regression_run import run
from cbp_rl.supervised.results import load_results

LAST_FRACTION = 0.1


def config(learner: str, args: argparse.Namespace, run_dir: Path) -> RegressionConfig:
    return RegressionConfig(
        learner=learner,  # type: ignore[arg-type]
        seeds=args.seeds,
        seed=args.seed,
        examples=args.examples,
        run=RunConfig(run_dir=run_dir, progress=args.progress),
    )


def complete(run_dir: Path, bins: int) -> bool:
    file = run_dir / "results.npz"
    return file.is_file() and int(load_results(run_dir)["bins_done"]) >= bins


def run_learner(learner: str, args: argparse.Namespace) -> float:
    """Run one learner (unless done; a stopped run resumes); returns the CPU seconds its run
    took in all."""
    run_dir = args.out / learner
    cpu_file = args.out / f"{learner}-cpu.json"
    cfg = config(learner, args, run_dir)
    spent = {"cpu_seconds": 0.0, "wall_seconds": 0.0}
    if cpu_file.is_file() and (run_dir / "checkpoint.pt").is_file():
        spent = json.loads(cpu_file.read_text())
        if complete(run_dir, cfg.bins):
            print(f"{learner}: reusing the finished run in {run_dir}")
            return float(spent["cpu_seconds"])
        print(f"{learner}: resuming the stopped run in {run_dir}")
        cfg = dataclasses.replace(cfg, run=RunConfig(resume=run_dir, progress=args.progress))
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    start, wall = time.process_time(), time.perf_counter()
    try:
        run(cfg, log=lambda _: None)
    finally:
        spent["cpu_seconds"] += time.process_time() - start
        spent["wall_seconds"] += time.perf_counter() - wall
        cpu_file.write_text(json.dumps(spent))
    return float(spent["cpu_seconds"])


def summarize(
    learner: str, run_dir: Path, seconds: float, bins: int | None = None
) -> dict[str, Any]:
    """The binned error of the finished bins (the first ``bins`` of them, if given): at its
    best and over the last 10% of them, mean over seeds +- standard error."""
    results = load_results(run_dir)
    done = int(results["bins_done"]) if bins is None else bins
    errors = results["errors"][:, :done]
    seeds = errors.shape[0]
    mean = errors.mean(0)
    stderr = errors.std(0, ddof=1) / np.sqrt(seeds) if seeds > 1 else 0 * mean
    best = int(np.argmin(mean))
    tail = max(1, round(LAST_FRACTION * done))
    last = errors[:, -tail:].mean(1)
    last_mean, last_err = float(last.mean()), float(last.std(ddof=1) / np.sqrt(seeds))
    dead = 100 * results["dead_units"][:, :done].mean(0)
    rank = results["effective_rank"][:, :done].mean(0)
    size = int(results["bin_size"])
    print(
        f"{learner:>4}: {seeds} seeds, {done * size:,} examples; best bin (examples "
        f"{best * size:,}-{(best + 1) * size:,}) {mean[best]:.3f} +- {stderr[best]:.3f}; last "
        f"{tail} bins {last_mean:.3f} +- {last_err:.3f}; dead units {dead[0]:.1f}% -> "
        f"{dead[-1]:.1f}%, effective rank {rank[0]:.2f} -> {rank[-1]:.2f}"
        + (f"; {seconds / 60:.1f} CPU-minutes" if bins is None else "")
    )
    return {
        "seeds": seeds,
        "examples": done * size,
        "best_bin": best,
        "best_error": float(mean[best]),
        "best_stderr": float(stderr[best]),
        "last_error": last_mean,
        "last_stderr": last_err,
        "first_bin_error": float(mean[0]),
        "dead_units_first": float(dead[0]),
        "dead_units_last": float(dead[-1]),
        "effective_rank_first": float(rank[0]),
        "effective_rank_last": float(rank[-1]),
        "cpu_seconds": seconds,
    }


def verdict(bp: dict[str, Any], cbp: dict[str, Any]) -> dict[str, bool]:
    """Whether bp's error rises again from its best (by more than 3 standard errors of its
    last 10%) while cbp's last 10% stays within 3 standard errors of its best, or below bp's."""
    rises = bp["last_error"] - bp["best_error"] > 3 * bp["last_stderr"]
    stays = cbp["last_error"] <= cbp["best_error"] + 3 * cbp["last_stderr"]
    return {"bp_rises_again": bool(rises), "cbp_stays_low": bool(stays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/regression-evidence"))
    parser.add_argument("--learners", nargs="+", default=["bp", "cbp"], choices=["bp", "cbp"])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--summarize-only", action="store_true", help="run nothing: summarize what is there"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"slowly-changing regression, ReLU 20-5-1, SGD 0.01, {args.examples:,} examples, "
        f"{args.seeds} seeds"
    )
    summary: dict[str, Any] = {}
    for learner in args.learners:
        run_dir = args.out / learner
        if args.summarize_only:
            cpu_file = args.out / f"{learner}-cpu.json"
            spent = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}
            seconds = float(spent.get("cpu_seconds", float("nan")))
        else:
            seconds = run_learner(learner, args)
        summary[learner] = summarize(learner, run_dir, seconds)
    if {"bp", "cbp"} <= summary.keys():
        summary.update(verdict(summary["bp"], summary["cbp"]))
        common = min(summary["bp"]["examples"], summary["cbp"]["examples"])
        if common < max(summary["bp"]["examples"], summary["cbp"]["examples"]):
            print(f"over the first {common:,} examples, which both learners finished:")
            bins = common // int(load_results(args.out / "bp")["bin_size"])
            paired = {n: summarize(n, args.out / n, 0.0, bins) for n in ("bp", "cbp")}
            summary["common"] = {"examples": common, **paired, **verdict(*paired.values())}
        print(
            f"bp's error rises again: {summary['bp_rises_again']}; "
            f"cbp's stays low: {summary['cbp_stays_low']}"
        )
        plot_main([str(args.out / "bp"), str(args.out / "cbp"), "--out", str(args.out / "plots")])
    (args.out / "evidence.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
