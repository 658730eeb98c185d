"""Cost of the friction wrapper on Ant-v5, and of a physics change against a rebuild from XML.

Run by hand (under ``flock /tmp/cbp_bench.lock`` on a shared machine)::

    python benchmarks/bench_envs.py [--rounds 40] [--steps 500] [--repeats 200]

1. Steps/s of ``gymnasium.make("Ant-v5")`` against the same env under ``FrictionSchedule``
   holding Ant's own friction (the same simulation, so only the wrapper differs), without changes
   and re-applying it every 1,000 steps (at almost every episode end), and of SlipperyAnt-v5 at its
   first friction, in alternating rounds of random actions in one process so that machine noise
   hits all alike. Prints steps/s and the cost against Ant-v5 (goal for the wrapper: <= 3%) as the
   ratio of total times and as the median of per-round ratios.
2. One change of friction, body-mass scale and actuator-gear scale in place, against what the
   reference does at each change: write the Ant XML with the new friction and build a new env
   from it (``gymnasium.make("Ant-v5", xml_file=...)``), and the bare XML compile inside that.
3. The wrapper's own work per step, timed with the simulation replaced by an instant stand-in.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import gymnasium.envs.mujoco
import mujoco
import numpy as np

from cbp_rl.envs import FrictionSchedule, ModelParameter, model_parameter, mujoco_model

ANT_XML = Path(gymnasium.envs.mujoco.__file__).parent / "assets" / "ant.xml"
WRAPPED = "+ FrictionSchedule (no change)"
CHANGING = "+ FrictionSchedule (change every 1000)"


def stepper(env: gym.Env[Any, Any], seed: int) -> Callable[[int], float]:
    """A function running ``n`` random steps of ``env`` (resetting at episode ends); returns
    the seconds they took. Actions are drawn in advance."""
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (100_000, 8)).astype(np.float32)
    position = 0

    def run(steps: int) -> float:
        nonlocal position
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(actions[position % len(actions)])
            position += 1
            if terminated or truncated:
                env.reset()
        return time.perf_counter() - start

    return run


def bench_throughput(rounds: int, steps: int) -> None:
    # The wrapped envs hold Ant's own friction 1.0, so that they simulate exactly what Ant-v5 does
    # and only the wrapper's cost differs (another friction changes the contacts, the solver's
    # work and the episode lengths); "K = 1000" re-applies it at each change.
    envs = {
        "Ant-v5": gym.make("Ant-v5"),
        WRAPPED: FrictionSchedule(gym.make("Ant-v5"), values=[1.0]),
        CHANGING: FrictionSchedule(gym.make("Ant-v5"), values=[1.0], cycle=True, change_every=1000),
        "SlipperyAnt-v5 (its own physics)": gym.make("SlipperyAnt-v5"),
    }
    runners = {name: stepper(env, seed=0) for name, env in envs.items()}
    for run in runners.values():
        run(steps)  # warm up
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            times[name].append(runners[name](steps))
    base = times["Ant-v5"]
    print(f"1. Ant-v5 steps/s, {rounds} alternating rounds of {steps} random-action steps")
    print(f"   {'env':40s} {'steps/s':>9s} {'cost (total)':>13s} {'cost (median)':>14s}")
    for name, seconds in times.items():
        rate = rounds * steps / sum(seconds)
        total = sum(seconds) / sum(base) - 1
        median = statistics.median(s / b for s, b in zip(seconds, base, strict=True)) - 1
        print(f"   {name:40s} {rate:9.0f} {total:+12.2%} {median:+13.2%}")
    changes = envs[CHANGING].schedule.index  # type: ignore[attr-defined]
    print(
        f"   (friction re-applied {changes} times; SlipperyAnt-v5 runs at friction "
        f"{envs['SlipperyAnt-v5 (its own physics)'].get_wrapper_attr('friction'):.3f}, so its "
        "physics, not the wrapper, makes its figure differ)"
    )


class _InstantEnv:
    """Stands in for the wrapped env: a step that costs (almost) nothing, to time the wrapper."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.observation, _ = env.reset(seed=0)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.observation, 0.0, False, False, {}


def bench_wrapper_work(repeats: int) -> None:
    """The wrapper's own work per step, with the simulation taken out."""
    wrapper = FrictionSchedule(gym.make("Ant-v5"), values=[1.0])
    instant = _InstantEnv(wrapper)
    wrapper.env = instant  # type: ignore[assignment]
    action = np.zeros(8, np.float32)
    steps = 1000 * repeats
    bare = seconds_per_call(lambda: instant.step(action), steps)
    wrapped = seconds_per_call(lambda: wrapper.step(action), steps)
    print(f"\n3. The wrapper's own work: {(wrapped - bare) * 1e6:.2f} us per step")


def seconds_per_call(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call over ``repeats`` calls, in 5 batches."""
    batches = []
    per_batch = max(1, repeats // 5)
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_batch):
            function()
        batches.append((time.perf_counter() - start) / per_batch)
    return statistics.median(batches)


def rebuild_with_friction(directory: Path, friction: float) -> gym.Env[Any, Any]:
    """What the reference does at each change: rewrite the XML's default geom friction, build."""
    tree = ET.parse(ANT_XML)
    default_geom = tree.getroot().find("default/geom")
    assert default_geom is not None
    default_geom.set("friction", f"{friction} 0.5 0.5")
    path = directory / "slippery_ant.xml"
    tree.write(path)
    return gym.make("Ant-v5", xml_file=str(path))


def applying(parameter: ModelParameter, values: Iterator[float]) -> Callable[[], object]:
    """A call applying the next of ``values`` to ``parameter``."""
    return lambda: parameter.apply(next(values))


def bench_change(repeats: int) -> None:
    model = mujoco_model(gym.make("Ant-v5"))
    frictions = iter(np.random.default_rng(0).uniform(0.02, 2.0, 10**7).tolist())
    in_place = {
        name: model_parameter(model, name)
        for name in ("friction", "body_mass_scale", "actuator_gear_scale")
    }
    results = {
        f"in place: {name}": seconds_per_call(applying(parameter, frictions), repeats)
        for name, parameter in in_place.items()
    }
    rebuild_repeats = max(5, repeats // 10)
    with tempfile.TemporaryDirectory() as directory:
        results["rebuild: XML + gymnasium.make (ref.)"] = seconds_per_call(
            lambda: rebuild_with_friction(Path(directory), next(frictions)).close(),
            rebuild_repeats,
        )
    results["  of which compiling the XML"] = seconds_per_call(
        lambda: mujoco.MjModel.from_xml_path(str(ANT_XML)), rebuild_repeats
    )
    friction = results["in place: friction"]
    rebuild = results["rebuild: XML + gymnasium.make (ref.)"]
    print("\n2. One change of the physics")
    for name, seconds in results.items():
        print(f"   {name:38s} {seconds * 1e6:10.1f} us")
    print(f"   a rebuild costs {rebuild / friction:,.0f} in-place friction changes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="alternating rounds per env")
    parser.add_argument("--steps", type=int, default=500, help="env steps per round")
    parser.add_argument("--repeats", type=int, default=200, help="timed in-place changes")
    args = parser.parse_args()
    bench_throughput(args.rounds, args.steps)
    bench_change(args.repeats)
    bench_wrapper_work(args.repeats)


if __name__ == "__main__":
    main()
