"""End-to-end throughput of PPO + CBP on MuJoCo Ant against the raw vectorized env, in one run.

Run by hand (one benchmark at a time on a shared machine)::

    flock /tmp/cbp_bench.lock python benchmarks/bench_ppo.py [--rounds 3] [--iterations 10]
    flock /tmp/cbp_bench.lock python benchmarks/bench_ppo.py --vectorizers   # raw envs only

Measures, in alternating rounds in one process so machine noise hits all alike:

- ``raw``: the same vectorized env (the paper's Ant-v4, 8 sub-envs, the default vectorizer)
  stepped with random actions, no learning;
- ``replay``: the actions PPO + CBP stepped in the round, replayed from the same reset on the
  raw env: the same simulation without the learner (its speed depends on the trajectory:
  contacts, falls and resets);
- ``cbp``: the paper's Ant CBP configuration end to end (rollouts, GAE, 10 epochs x 16
  minibatch updates of both 256-256 networks with CBP after each, plasticity probes every
  20,480 steps as in a default run);
- ``plain``: the same without CBP (for the CBP overhead);
- ``cbp-sequential``: CBP with the policy and value updates one after the other instead of in
  two threads;
- ``reference``: the reference's PPO + CBP loop on one env in this process, rewritten in
  ``benchmarks/reference_ppo.py`` (its per-step loop, its update, its generate-and-test step).

Prints env-steps/s (median over rounds), the ratio to the raw env, the learner's share of the
time (updates and probes), the share spent inside the env's ``step``, and the CBP overhead; and
the goals beside their figures: PPO + CBP at least 0.75x the raw vectorized env of the same
backend (``--vector-mode sync``, ``envpool`` or the default; also printed against the replay),
and at least 3x the reference's env-steps/s on the default backend, both timed in the same
rounds, each beside its bound: PPO without CBP in the same rounds (CBP at no cost; the exact
semantics cannot run faster than no CBP). ``--variants cbp`` times PPO + CBP alone (shorter
runs); ``--reference-sps`` then divides by a figure measured elsewhere instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch
from reference_ppo import ReferencePPO  # benchmarks/reference_ppo.py

from cbp_rl.agents.ppo import PPOAgent, PPOConfig
from cbp_rl.agents.ppo_command import PRESETS
from cbp_rl.agents.runner import AgentContext, PlasticityMonitor
from cbp_rl.envs.vector import describe_env, make_vector_env, resolve_vector_mode

VARIANTS = ("cbp", "plain", "cbp-sequential", "reference")
GOAL_VS_RAW = 0.75
GOAL_VS_REFERENCE = 3.0


class RecordingEnvs:
    """A vectorized env as the agent sees it, keeping the time spent in ``step`` and the actions
    stepped (to replay them on the raw env: the same simulation without the learner)."""

    def __init__(self, envs: Any) -> None:
        self.envs = envs
        self.seconds = 0.0
        self.actions: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.envs, name)

    def step(self, actions: np.ndarray) -> Any:
        self.actions.append(np.array(actions, copy=True))
        started = time.perf_counter()
        try:
            return self.envs.step(actions)
        finally:
            self.seconds += time.perf_counter() - started

    def forget(self) -> None:
        self.seconds, self.actions = 0.0, []


class Learner:
    """An agent, its plasticity probes and its time accounts."""

    def __init__(self, name: str, config: PPOConfig, envs: Any, description: Any) -> None:
        self.name = name
        self.envs = RecordingEnvs(envs)
        context = AgentContext(config, self.envs, description, torch.device("cpu"), 1)
        self.agent = PPOAgent(context)
        self.monitor = PlasticityMonitor(self.agent.plasticity_networks(), dormant_tau=0.1)
        self.every = config.measure.plasticity_every

    def run(self, iterations: int, seed: int) -> tuple[int, float, float]:
        """Steps, seconds and learner seconds of ``iterations`` iterations; the seconds in the
        simulator and the actions stepped stay in ``self.envs``."""
        self.envs.forget()
        self.agent.start(self.envs.reset(seed=seed)[0])  # the env was stepped by others
        steps, learner = 0, 0.0
        started = time.perf_counter()
        for _ in range(iterations):
            before = self.agent.global_step
            result = self.agent.iterate()
            steps += result.steps
            learner += result.update_seconds
            if self.agent.global_step // self.every > before // self.every:
                probe_started = time.perf_counter()
                inputs = self.agent.probe_inputs(2048)
                self.monitor.measure(inputs)
                self.agent.plasticity_extras(inputs)
                learner += time.perf_counter() - probe_started
        return steps, time.perf_counter() - started, learner


def raw_round(envs: Any, steps: int, action_dim: int, seed: int) -> tuple[int, float]:
    """About ``steps`` steps of uniform random actions from ``reset(seed)``."""
    rng = np.random.default_rng(seed)
    batches = rng.uniform(-1, 1, (steps // envs.num_envs, envs.num_envs, action_dim))
    return replay_round(envs, list(batches.astype(np.float32)), seed)


def replay_round(envs: Any, actions: list[np.ndarray], seed: int) -> tuple[int, float]:
    """Step ``actions`` from ``reset(seed)`` (a learner's simulation again, without it); the
    steps taken and the seconds."""
    envs.reset(seed=seed)
    started = time.perf_counter()
    for batch in actions:
        envs.step(batch)
    return len(actions) * envs.num_envs, time.perf_counter() - started


def single_env_rate(env_id: str, steps: int) -> float:
    """Raw steps/s of one env in this process (one core)."""
    envs = make_vector_env(env_id, 1, mode="sync")
    try:
        taken, seconds = raw_round(envs, steps, describe_env(env_id).action_dim, seed=0)
    finally:
        envs.close()
    return taken / seconds


def compare_vectorizers(env_id: str, num_envs: int, rounds: int, steps: int) -> None:
    """Raw steps/s of each vectorizer with random actions, in alternating rounds."""
    setups = [
        ("sync, 1 env", 1, "sync", 0),
        (f"sync, {num_envs} envs", num_envs, "sync", 0),
        (f"async, {num_envs} envs (a process each)", num_envs, "async", 0),
        (f"batched, {num_envs} envs, 2 workers", num_envs, "batched", 2),
    ]
    action_dim = describe_env(env_id).action_dim
    envs = {name: make_vector_env(env_id, n, mode=m, num_workers=w) for name, n, m, w in setups}
    rates: dict[str, list[float]] = {name: [] for name in envs}
    try:
        for round_ in range(rounds):
            for name, vector_env in envs.items():
                taken, seconds = raw_round(vector_env, steps, action_dim, seed=round_)
                rates[name].append(taken / seconds)
    finally:
        for vector_env in envs.values():
            vector_env.close()
    print(f"{env_id}, random actions, median steps/s over {rounds} rounds of {steps} steps:")
    for name, values in rates.items():
        print(f"  {name:<40}: {statistics.median(values):7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Ant-v4")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--vector-mode", default="auto")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="PPO iterations per round")
    parser.add_argument(
        "--vectorizers", action="store_true", help="only compare the raw vectorizers"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="learners to time (cbp always)",
    )
    parser.add_argument(
        "--reference-sps",
        type=float,
        default=None,
        help="the reference's env-steps/s measured elsewhere (used when it is not in --variants)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.torch_threads)
    if args.vectorizers:
        compare_vectorizers(args.env, args.num_envs, args.rounds, 8192)
        return

    base = PRESETS["cbp"]
    run = dataclasses.replace(
        base.run, env=args.env, num_envs=args.num_envs, vector_mode=args.vector_mode
    )
    cbp = dataclasses.replace(base, run=run)
    plain = dataclasses.replace(cbp, methods=dataclasses.replace(cbp.methods, cbp=False))
    sequential = dataclasses.replace(cbp, ppo=dataclasses.replace(cbp.ppo, parallel_update=False))
    description = describe_env(args.env)
    mode, workers = resolve_vector_mode(args.vector_mode, args.num_envs, args.num_workers)
    envs = make_vector_env(args.env, args.num_envs, mode=mode, num_workers=workers)
    reference: ReferencePPO | None = None
    try:
        configs = {"cbp": cbp, "plain": plain, "cbp-sequential": sequential}
        names = ["cbp", *(n for n in args.variants if n not in ("cbp", "reference"))]
        learners = [Learner(name, configs[name], envs, description) for name in names]
        for learner in learners:  # warm up
            learner.run(1, seed=0)
        if "reference" in args.variants:
            reference = ReferencePPO(args.env)
            reference.run(cbp.ppo.batch_size)  # warm up: one rollout and update
        raw_round(envs, 2048, description.action_dim, seed=0)
        rates: dict[str, list[float]] = {"raw": []}
        shares: dict[str, list[float]] = {}
        simulating: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            steps, seconds = raw_round(
                envs, args.iterations * cbp.ppo.batch_size, description.action_dim, round_
            )
            rates["raw"].append(steps / seconds)
            for learner in learners:
                steps, seconds, learning = learner.run(args.iterations, seed=round_)
                rates.setdefault(learner.name, []).append(steps / seconds)
                shares.setdefault(learner.name, []).append(learning / seconds)
                simulating.setdefault(learner.name, []).append(learner.envs.seconds / seconds)
            steps, seconds = replay_round(envs, learners[0].envs.actions, round_)
            rates.setdefault("replay", []).append(steps / seconds)
            if reference is not None:
                steps, seconds = reference.run(args.iterations * cbp.ppo.batch_size)
                rates.setdefault("reference", []).append(steps / seconds)
            print(
                f"round {round_ + 1}: "
                + "  ".join(f"{name} {values[-1]:.0f}" for name, values in rates.items()),
                flush=True,
            )
    finally:
        envs.close()
        if reference is not None:
            reference.close()
    single = single_env_rate(args.env, 4096)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print()
    print(
        f"{args.env}, {args.num_envs} envs, vectorizer {mode}"
        + (f" ({workers} workers)" if mode == "batched" else "")
        + f", torch threads {args.torch_threads}; median env-steps/s over {args.rounds} rounds "
        f"of {args.iterations} PPO iterations (2048 steps each)"
    )
    print(f"  raw vectorized env, random actions : {median['raw']:7.0f}")
    print(
        f"  raw, PPO + CBP's actions replayed  : {median['replay']:7.0f}   = "
        f"{median['replay'] / median['raw']:.2f} x raw (the same simulation, no learner)"
    )
    print(f"  raw single env in this process     : {single:7.0f}")
    for name in names:
        share = statistics.median(shares[name])
        in_simulator = statistics.median(simulating[name])
        print(
            f"  end to end, {name:<22}: {median[name]:7.0f}   = {median[name] / median['raw']:.2f}"
            f" x raw, learner share {share:.0%}, in the simulator {in_simulator:.0%}"
        )
    if "reference" in median:
        print(
            f"  the reference's loop, one env       : {median['reference']:7.0f}   = "
            f"{median['reference'] / median['raw']:.2f} x raw"
        )
    if "plain" in median:
        overhead = median["plain"] / median["cbp"]
        print(f"  CBP overhead (time per step, cbp / plain): {overhead:.3f}")
    if "cbp-sequential" in median:
        print(
            "  two-thread update speedup (time per step, sequential / parallel): "
            f"{median['cbp'] / median['cbp-sequential']:.3f}"
        )
    vs_raw = median["cbp"] / median["raw"]
    print(
        f"  goal: PPO + CBP >= {GOAL_VS_RAW} x raw ({mode}): {vs_raw:.2f} x" + bound(median, "raw")
    )
    print(
        f"        against its own actions replayed raw: {median['cbp'] / median['replay']:.2f} x"
        + bound(median, "replay")
    )
    if "reference" in median:
        source = f"{median['reference']:.0f} env-steps/s, one env, timed in these rounds"
        reference_sps: float | None = median["reference"]
    else:
        source, reference_sps = "measured elsewhere (--reference-sps)", args.reference_sps
    if reference_sps is not None:
        print(
            f"  goal: PPO + CBP >= {GOAL_VS_REFERENCE:.0f} x the reference ({source}; the goal "
            f"is on the default backend): {median['cbp'] / reference_sps:.2f} x"
            + bound(median, "reference")
        )


def bound(median: dict[str, float], against: str) -> str:
    """The bound beside a goal: PPO without CBP in the same rounds, CBP at no cost."""
    if "plain" not in median or against not in median:
        return ""
    return f" (bound, CBP at no cost = PPO without CBP: {median['plain'] / median[against]:.2f} x)"


if __name__ == "__main__":
    main()
