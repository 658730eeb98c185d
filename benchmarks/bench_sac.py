"""Throughput of SAC with and without CBP on MuJoCo Hopper at replay ratio 1, in one run.

Run by hand (one benchmark at a time on a shared machine)::

    flock /tmp/cbp_bench.lock python benchmarks/bench_sac.py [--rounds 10] [--steps 200]
    flock /tmp/cbp_bench.lock python benchmarks/bench_sac.py --magnitude-every 10

Two agents, each on its own Hopper-v4 env (one env, in process), measured in alternating rounds
in one process so machine noise hits both alike:

- ``plain``: the ``standard`` preset (256-256 ReLU actor and twin critics, batch 256, one
  gradient update per environment step);
- ``cbp``: the ``cbp`` preset (the same with ``ContinualBackprop`` on the actor and both critics
  after each of their optimizer steps; the paper's rr 1e-4, mt 1e4, contribution utility).

Both fill their replay buffers past the warm-up before the timed rounds, so every timed step is
followed by one update. Plasticity probes are left out (they run every 10,000 steps in a default
run and cost the same with and without CBP). Prints env-steps/s (median over rounds), the time
per update (median) with the share of it spent in the three ``ContinualBackprop.step()`` calls
(timed directly, the least noisy measure of the CBP cost), and the CBP cost as ratios of the two
agents measured in the same rounds: the extra time per step and per update.
``--magnitude-every K`` also measures CBP with the weight magnitudes of the utility recomputed
every K updates (the ``--magnitude-every`` option; the default, 1, is exact).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from typing import Any

import torch

from cbp_rl.agents.runner import AgentContext
from cbp_rl.agents.sac import SACAgent, SACConfig
from cbp_rl.agents.sac_command import PRESETS
from cbp_rl.envs.vector import describe_env, make_vector_env


class Contestant:
    """A SAC agent on its own env, and its time accounts."""

    def __init__(self, name: str, config: SACConfig, env_id: str, seed: int) -> None:
        self.name = name
        self.envs = make_vector_env(env_id, 1, mode="sync")
        context = AgentContext(config, self.envs, describe_env(env_id), torch.device("cpu"), seed)
        self.agent = SACAgent(context)
        self.agent.start(self.envs.reset(seed=seed)[0])
        self.method_seconds = 0.0
        methods = self.agent.methods
        step_methods = methods.after_update

        def timed_after_update(name: str | None = None) -> int:
            started = time.perf_counter()
            replaced = step_methods(name)
            self.method_seconds += time.perf_counter() - started
            return replaced

        methods.after_update = timed_after_update  # type: ignore[method-assign]

    def run(self, steps: int) -> tuple[int, float, float, int]:
        """Env steps, seconds, update seconds and updates of ``steps`` more steps."""
        stop = self.agent.global_step + steps
        updates_before = self.agent.updates
        self.method_seconds = 0.0
        taken, updating = 0, 0.0
        started = time.perf_counter()
        while self.agent.global_step < stop:
            iteration = self.agent.iterate()
            taken += iteration.steps
            updating += iteration.update_seconds
        seconds = time.perf_counter() - started
        return taken, seconds, updating, self.agent.updates - updates_before

    def close(self) -> None:
        self.envs.close()


def configure(preset: str, env_id: str, steps: int, warmup: int, **methods: Any) -> SACConfig:
    base = PRESETS[preset]
    run = dataclasses.replace(base.run, env=env_id, num_envs=1, total_steps=10**9)
    sac = dataclasses.replace(base.sac, replay_ratio=1.0, warmup_steps=warmup, log_every=steps)
    return dataclasses.replace(
        base, run=run, sac=sac, methods=dataclasses.replace(base.methods, **methods)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="env steps per agent and round")
    parser.add_argument("--warmup", type=int, default=1000, help="random steps before learning")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--magnitude-every",
        type=int,
        default=0,
        help="also measure CBP with --magnitude-every K (0 = not)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.torch_threads)
    setups = [
        ("plain", configure("standard", args.env, args.steps, args.warmup)),
        ("cbp", configure("cbp", args.env, args.steps, args.warmup)),
    ]
    if args.magnitude_every:
        name = f"cbp, magnitude-every {args.magnitude_every}"
        cbp_k = configure(
            "cbp", args.env, args.steps, args.warmup, magnitude_every=args.magnitude_every
        )
        setups.append((name, cbp_k))
    contestants = [Contestant(name, config, args.env, seed=1) for name, config in setups]
    rates: dict[str, list[float]] = {c.name: [] for c in contestants}
    per_update: dict[str, list[float]] = {c.name: [] for c in contestants}
    cbp_share: dict[str, list[float]] = {c.name: [] for c in contestants}
    try:
        for contestant in contestants:  # fill past the warm-up, then a few updates
            contestant.run(args.warmup + args.steps)
        for round_ in range(args.rounds):
            for contestant in contestants:
                steps, seconds, updating, updates = contestant.run(args.steps)
                assert updates == steps, "replay ratio 1: one update per step"
                rates[contestant.name].append(steps / seconds)
                per_update[contestant.name].append(updating / updates)
                cbp_share[contestant.name].append(contestant.method_seconds / updating)
            print(
                f"round {round_ + 1}: "
                + "  ".join(f"{name} {values[-1]:.1f} steps/s" for name, values in rates.items()),
                flush=True,
            )
    finally:
        for contestant in contestants:
            contestant.close()
    rate = {name: statistics.median(values) for name, values in rates.items()}
    update = {name: statistics.median(values) for name, values in per_update.items()}
    print()
    print(
        f"{args.env}, 1 env, replay ratio 1, batch 256, 256-256 ReLU, torch threads "
        f"{args.torch_threads}; medians over {args.rounds} alternating rounds of {args.steps} "
        "steps"
    )
    for name in rates:
        share = statistics.median(cbp_share[name])
        print(
            f"  {name:<28}: {rate[name]:7.1f} env-steps/s, {1000 * update[name]:6.2f} ms per "
            f"update, of which CBP steps {share:.1%}"
        )
    for name in list(rates)[1:]:
        step_cost = rate["plain"] / rate[name] - 1
        update_cost = update[name] / update["plain"] - 1
        print(
            f"  {name} / plain: steps/s ratio {rate[name] / rate['plain']:.3f}; CBP cost "
            f"{step_cost:+.1%} per step, {update_cost:+.1%} per update"
        )


if __name__ == "__main__":
    main()
