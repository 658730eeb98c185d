"""EnvPool against the project's Gymnasium vectorizers on Ant-v4: raw env steps, and PPO + CBP.

Run by hand (under ``flock /tmp/cbp_bench.lock`` on a shared machine; needs
``pip install 'cbp_rl[envpool]'``)::

    python benchmarks/bench_envpool.py [--num-envs 8] [--rounds 10] [--steps 200]
                                       [--ppo-steps 8192]

1. Env steps/s (all sub-envs together) of ``--num-envs`` Ant-v4 envs under random actions, in
   alternating rounds in one process so that machine noise hits all alike: Gymnasium's ``sync``
   and ``batched`` vectorizers (one worker per core) against ``envpool`` (one thread per core),
   and per core: ``sync`` against ``envpool`` on one thread. Prints each rate and EnvPool's ratio
   to the fastest Gymnasium vectorizer of the run.
2. PPO + CBP end to end (the paper's ``--preset cbp`` on Ant-v4, ``--num-envs`` envs) with the
   fastest Gymnasium vectorizer of part 1 and with envpool, one after the other: the mean of the
   logged ``charts/sps`` (acting, env stepping and learning) over all iterations but the first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.envs.vector import make_vector_env, resolve_vector_mode
from cbp_rl.run.logging import read_scalars

ENV = "Ant-v4"


def bench_env_steps(num_envs: int, rounds: int, steps: int) -> str:
    """Part 1; returns the fastest Gymnasium vectorizer's name."""
    _, cores = resolve_vector_mode("batched", num_envs)
    setups = {
        "sync": ("sync", 0),
        f"batched ({cores} workers)": ("batched", cores),
        f"envpool ({cores} threads)": ("envpool", cores),
        "envpool (1 thread)": ("envpool", 1),
    }
    envs = {
        name: make_vector_env(ENV, num_envs, mode=mode, num_workers=workers)
        for name, (mode, workers) in setups.items()
    }
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, num_envs, 8)).astype(np.float32)
    seconds: dict[str, float] = dict.fromkeys(envs, 0.0)
    try:
        for env in envs.values():
            env.reset(seed=0)
            _run(env, actions[:20])  # warm up
        names = list(envs)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                seconds[name] += _run(envs[name], actions)
    finally:
        for env in envs.values():
            env.close()
    rates = {name: rounds * steps * num_envs / total for name, total in seconds.items()}
    gymnasium = {name: rate for name, rate in rates.items() if not name.startswith("envpool")}
    fastest = max(gymnasium, key=lambda name: gymnasium[name])
    print(f"1. {ENV} env steps/s, {num_envs} envs, {rounds} alternating rounds of {steps} steps")
    for name, rate in rates.items():
        print(f"   {name:26s} {rate:9.0f}")
    pooled, single = rates[f"envpool ({cores} threads)"], rates["envpool (1 thread)"]
    print(f"   envpool / fastest Gymnasium vectorizer ({fastest}): {pooled / rates[fastest]:.2f}x")
    print(f"   per core, envpool (1 thread) / sync: {single / rates['sync']:.2f}x")
    return setups[fastest][0]


def _run(envs: Any, actions: np.ndarray) -> float:
    start = time.perf_counter()
    for batch in actions:
        envs.step(batch)
    return time.perf_counter() - start


def bench_ppo(num_envs: int, total_steps: int, gymnasium_mode: str) -> None:
    """Part 2: PPO + CBP with each backend, env steps/s from the runs' own logs."""
    print(f"\n2. PPO + CBP (paper config) on {ENV}, {num_envs} envs, {total_steps} steps per run")
    rates = {}
    with tempfile.TemporaryDirectory() as directory:
        for mode in (gymnasium_mode, "envpool"):
            run_dir = Path(directory) / mode
            command = [
                sys.executable, "-m", "cbp_rl.train", "ppo", "--preset", "cbp",
                "--env", ENV, "--num-envs", str(num_envs), "--vector-mode", mode,
                "--total-steps", str(total_steps), "--plasticity-every", "0",
                "--checkpoint-every", "0", "--run-dir", str(run_dir), "--no-progress",
            ]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True)
            sps = [value for _, value in read_scalars(run_dir)["charts/sps"]][1:]
            rates[mode] = float(np.mean(sps))
            print(f"   {mode:10s} {rates[mode]:9.0f} env steps/s (mean of {len(sps)} iterations)")
    print(f"   envpool / {gymnasium_mode}: {rates['envpool'] / rates[gymnasium_mode]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, default=8, help="sub-environments")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per setup")
    parser.add_argument("--steps", type=int, default=200, help="vector steps per round")
    parser.add_argument("--ppo-steps", type=int, default=8192, help="env steps of each PPO run")
    args = parser.parse_args()
    fastest = bench_env_steps(args.num_envs, args.rounds, args.steps)
    bench_ppo(args.num_envs, args.ppo_steps, fastest)


if __name__ == "__main__":
    main()
