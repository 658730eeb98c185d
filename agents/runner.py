"""The training machinery every RL command shares: a run from start (or resume) to exit.

A command (PPO, SAC) supplies its config and an :class:`Agent`; :func:`prepare_run` validates
everything before anything runs (device, environment id, run directory, checkpoint and config on
resume) and :meth:`PreparedRun.execute` runs it::

    run = prepare_run("ppo", config, build_agent, resume_ignore=RESUME_IGNORE)
    exit_code = run.execute()

``execute`` builds the vectorized envs (:func:`cbp_rl.envs.vector.make_vector_env`) and the agent,
restores the checkpoint when resuming, then calls ``agent.iterate()`` until ``total_steps``,
logging after each iteration: the agent's scalars, finished episodes (TensorBoard and
``episodes.csv``), the env protocol's ``env/<key>`` values, steps per second, and after the
first iteration (the baseline) and then every ``plasticity_every`` steps the plasticity measures
of each named network on a probe batch. A non-finite loss or weight stops the run at once
(:class:`~cbp_rl.run.conventions.NonFiniteError`, exit 3) without writing a checkpoint, so the last
good one is kept. The run directory is locked for the whole run (:mod:`cbp_rl.run.rundir`).
It writes a checkpoint every ``checkpoint_every`` steps and on exit, including after SIGINT or
SIGTERM (:class:`~cbp_rl.run.runtime.GracefulStop`), holding the agent, the environments (exact
MuJoCo snapshots, schedules, episode statistics), every RNG and the logging position, so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from cbp_rl.envs.envpool_backend import (
    ENVPOOL_MODE,
    capture_pool_state,
    envpool_make_kwargs,
    is_envpool,
    restore_pool_state,
)
from cbp_rl.envs.vector import (
    EnvDescription,
    capture_vector_state,
    check_env_id,
    describe_env,
    make_vector_env,
    restore_vector_state,
    seeded_env_kwargs,
    sub_env_kwargs,
)
from cbp_rl.metrics import PlasticityProbe
from cbp_rl.run.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    check_compatible,
    restore_rng_state,
    to_jsonable,
)
from cbp_rl.run.conventions import (
    COMMAND_KEY,
    UsageError,
    check_finite_losses,
    check_finite_weights,
    check_memory,
    refuse_finished,
    stop_exit_code,
)
from cbp_rl.run.lifecycle import refuse_held_run_dir
from cbp_rl.run.logging import CONFIG_FILE, EPISODES_FILE, RunLogger, RunStatusWriter
from cbp_rl.run.rundir import check_run_dir_path, claim_run_dir, unresumable_message
from cbp_rl.run.runtime import (
    GracefulStop,
    Progress,
    cpu_count,
    new_run_dir,
    resolve_device,
    seed_everything,
)
from cbp_rl.run.seeding import derive_seed

if TYPE_CHECKING:
    from cbp_rl.agents.config import RunConfig

__all__ = [
    "METRIC",
    "UNIT",
    "Agent",
    "AgentContext",
    "Episode",
    "Iteration",
    "PlasticityMonitor",
    "PreparedRun",
    "VectorAgent",
    "budget",
    "episodes_from_infos",
    "prepare_run",
]

METRIC = "return"
"""The performance measure of an RL run: its episodes' returns."""
UNIT = "steps"
"""What an RL run's budget counts: environment steps, all sub-envs together."""


def budget(config: Any) -> int:
    """An RL run's budget in :data:`UNIT` (``--total-steps``)."""
    return int(config.run.total_steps)


RESUME_IGNORE_RUN = (
    "run.total_steps",
    "run.checkpoint_every",
    "run.progress",
    "run.run_dir",
    "run.runs_root",
    "run.resume",
    "run.resume_fallback",
    "run.vector_mode",
    "run.num_workers",
    "run.device",
    "measure",
)
"""Config fields that may change on resume: budget, output and how envs run, not what is learned
(the vectorizers give identical results)."""


class Episode(NamedTuple):
    """One finished episode."""

    step: int
    """Global environment step at which it ended."""
    return_: float
    length: int
    env_index: int


@dataclass
class Iteration:
    """What one ``agent.iterate()`` did."""

    steps: int
    """Environment steps taken (all sub-envs together)."""
    scalars: dict[str, float] = field(default_factory=dict)
    """Full TensorBoard tags (``train/...``, ``charts/...``) to values."""
    episodes: list[Episode] = field(default_factory=list)
    env_info: dict[str, float] = field(default_factory=dict)
    """Means over sub-envs of the env's ``logged_info_keys`` (logged as ``env/<key>``)."""
    update_seconds: float = 0.0
    """Time spent learning (the rest of the iteration is acting and env stepping)."""


@dataclass(frozen=True)
class AgentContext:
    """What an agent is built from."""

    config: Any
    envs: Any
    """The vector env (``RecordEpisodeStatistics`` over a Gymnasium vector env)."""
    description: EnvDescription
    device: torch.device
    seed: int


class Agent(Protocol):
    """The interface between the shared run loop and an algorithm."""

    global_step: int

    def start(self, observations: np.ndarray) -> None:
        """Begin new episodes in every sub-env from these first observations."""

    def iterate(self) -> Iteration:
        """Act and learn for one iteration (PPO: one rollout and its update)."""
        ...

    def plasticity_networks(self) -> dict[str, nn.Module]:
        """The networks whose plasticity is measured, by name (``policy``, ``value``, ...)."""
        ...

    def probe_inputs(self, size: int) -> dict[str, Tensor]:
        """A probe batch of at most ``size`` examples from the latest experience, per network."""
        ...

    def plasticity_extras(self, inputs: Mapping[str, Tensor]) -> dict[str, float]:
        """More measures on the probe batch, keyed ``<network>/<measure>``."""
        ...

    def replacement_counts(self) -> dict[str, list[int]]:
        """Units replaced so far (CBP, ReDo) per hidden layer of each network."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release threads or other resources (the run calls it at the end)."""


def episodes_from_infos(infos: Mapping[str, Any], step: int) -> list[Episode]:
    """The episodes ``RecordEpisodeStatistics`` reports as finished in one vector step."""
    mask = infos.get("_episode")
    if mask is None or not np.any(mask):
        return []
    stats = infos["episode"]
    return [
        Episode(step, float(stats["r"][i]), int(stats["l"][i]), int(i))
        for i in np.flatnonzero(mask)
    ]


class VectorAgent:
    """What the RL agents share: the run's context, the latest observations of every sub-env,
    and restoring those and the optimizers from a checkpoint."""

    def __init__(self, context: AgentContext) -> None:
        self.envs = context.envs
        self.description: EnvDescription = context.description
        self.device = context.device
        self.num_envs: int = context.config.run.num_envs
        self.observations = np.zeros((self.num_envs, self.description.observation_dim))

    def _load_optimizers(
        self, optimizers: Mapping[str, torch.optim.Optimizer], saved: Mapping[str, Any]
    ) -> None:
        """Load each optimizer's saved state; refused unless the saved names are these."""
        if set(saved) != set(optimizers):
            raise ValueError(
                f"the state has optimizers {sorted(saved)}, this agent {sorted(optimizers)}"
            )
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(saved[name])

    def _restore_observations(self, saved: Tensor) -> None:
        """Continue from the saved observations; refused unless shaped as this agent's."""
        observations = saved.cpu().numpy()
        if observations.shape != self.observations.shape:
            raise ValueError(
                f"the state holds observations of shape {observations.shape}, this agent "
                f"{self.observations.shape}"
            )
        self.observations = observations


class PlasticityMonitor:
    """:class:`~cbp_rl.metrics.PlasticityProbe` on each named network, as ``plasticity/`` tags.

    Every measure of every hidden layer (dead units, dormant ratio, effective rank, approximate
    rank, stable rank, weight magnitude, weight change since the previous measurement, gradient
    norm) becomes ``plasticity/<network>/<measure>/<layer>``.
    """

    def __init__(self, networks: Mapping[str, nn.Module], *, dormant_tau: float) -> None:
        self.probes = {
            name: PlasticityProbe(net, dormant_tau=dormant_tau) for name, net in networks.items()
        }

    def measure(self, inputs: Mapping[str, Tensor]) -> dict[str, float]:
        """The measures of every network on its probe batch."""
        result = {}
        for name, probe in self.probes.items():
            for key, value in probe.measure(inputs[name]).items():
                result[f"plasticity/{name}/{key}"] = value
        return result

    def state_dict(self) -> dict[str, Any]:
        return {name: probe.state_dict() for name, probe in self.probes.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, probe in self.probes.items():
            probe.load_state_dict(state.get(name, {}))


# --------------------------------------------------------------------------- preparation


@dataclass
class PreparedRun:
    """A validated run, ready to :meth:`execute`."""

    algorithm: str
    config: Any
    build_agent: Callable[[AgentContext], Agent]
    description: EnvDescription
    device: torch.device
    run_dir: Path
    checkpoint: dict[str, Any] | None
    """The state to resume from, ``None`` for a fresh run."""
    manager: CheckpointManager
    """The run directory's checkpoints (it remembers a latest checkpoint found unreadable)."""

    def execute(self) -> int:
        """Run to ``total_steps`` or a stop signal; returns 0, or 128 + the signal number."""
        return _Execution(self).run()


def prepare_run(
    algorithm: str,
    config: Any,
    build_agent: Callable[[AgentContext], Agent],
    *,
    resume_ignore: Sequence[str] = RESUME_IGNORE_RUN,
    network_count: int = 2,
) -> PreparedRun:
    """Validate a run before anything runs; raises ``ValueError`` or ``CheckpointError``.

    ``config`` is a frozen dataclass with ``run`` (:class:`~cbp_rl.agents.config.RunConfig`)
    and ``measure`` (:class:`~cbp_rl.agents.config.MeasureConfig`). Checks the device, the
    environment (a continuous-action Gymnasium id, built once), the run directory (a fresh run
    never reuses one that holds a run) and, on resume, the checkpoint (readable, of this
    algorithm, with a compatible config, not finished). The run directory's lock
    (:func:`~cbp_rl.run.rundir.claim_run_dir`) is taken here and held until the command returns.
    ``network_count`` networks of ``config.network`` must fit in memory.
    """
    run = config.run
    try:
        device = resolve_device(run.device)
    except RuntimeError as err:
        raise ValueError(str(err)) from err
    check_env_id(run.env)
    kwargs = {**env_kwargs(run), **sub_env_kwargs(run.env, run.num_envs)}
    description = describe_env(run.env, kwargs)
    check_network_memory(config, description, networks=network_count)
    if run.vector_mode == ENVPOOL_MODE:
        schedule = description.has_schedule or bool(description.logged_info_keys)
        envpool_make_kwargs(run.env, kwargs, has_schedule=schedule)
    checkpoint = None
    if run.resume is not None:
        run_dir = Path(run.resume)
        if not run_dir.is_dir():
            raise ValueError(f"--resume {run_dir}: no such run directory")
        claim_run_dir(run_dir, command=algorithm, flag="--resume")
        manager = CheckpointManager(run_dir, every=run.checkpoint_every)
        if not manager.exists() and (run_dir / CONFIG_FILE).exists():
            raise UsageError(unresumable_message(run_dir, command=algorithm))
        checkpoint = manager.load_latest(required=True, fallback=run.resume_fallback)
        assert checkpoint is not None
        saved_algorithm = checkpoint.get("algorithm")
        if saved_algorithm != algorithm:
            raise CheckpointError(
                f"was written by {saved_algorithm!r}, not {algorithm!r}",
                run_dir / CheckpointManager.FILENAME,
                f"resume it with `python -m cbp_rl.train {saved_algorithm} --resume {run_dir}`",
            )
        check_compatible(
            checkpoint["config"],
            _config_json(config),
            ignore=tuple(resume_ignore),
            path=run_dir / CheckpointManager.FILENAME,
        )
        _check_same_simulator(checkpoint, run.vector_mode, run_dir / CheckpointManager.FILENAME)
        refuse_finished(
            run_dir,
            done=checkpoint["step"],
            total=run.total_steps,
            command=algorithm,
            flag="--total-steps",
        )
    else:
        run_dir = _fresh_run_dir(algorithm, run)
        manager = CheckpointManager(run_dir, every=run.checkpoint_every)
    return PreparedRun(
        algorithm, config, build_agent, description, device, run_dir, checkpoint, manager
    )


def check_network_memory(config: Any, description: EnvDescription, *, networks: int) -> None:
    """Refuse networks too large for this machine's memory (``--hidden-sizes``), up front.

    Counts each network's weights four times (values, gradients, two Adam moments) and the
    activations of one minibatch-sized batch through every layer; PPO has 2 such networks, SAC 5
    (actor, two critics and their targets).
    """
    sizes = [description.observation_dim, *config.network.hidden_sizes, description.action_dim]
    weights = sum((a + 1) * b for a, b in itertools.pairwise(sizes))
    batch = max(config.measure.probe_size, 256)
    activations = batch * sum(sizes)
    estimate = networks * 4 * (4 * weights + 4 * activations)
    check_memory(
        estimate,
        what=f"{networks} networks of widths {list(config.network.hidden_sizes)}",
        fix="choose smaller --hidden-sizes",
    )


def _check_same_simulator(checkpoint: dict[str, Any], vector_mode: str, path: Path) -> None:
    """Refuse to resume a run on the other simulator: EnvPool's MuJoCo envs and Gymnasium's
    are the same tasks but not the same numbers (the vector mode may change otherwise)."""
    saved = checkpoint["config"]["run"]["vector_mode"]
    if (saved == ENVPOOL_MODE) != (vector_mode == ENVPOOL_MODE):
        raise CheckpointError(
            f"was written with --vector-mode {saved}, which runs "
            f"{'EnvPool' if saved == ENVPOOL_MODE else 'Gymnasium'}'s simulation, not "
            f"--vector-mode {vector_mode}'s",
            path,
            f"resume it with --vector-mode {saved}"
            + ("" if saved == ENVPOOL_MODE else " (or auto, sync, async, batched)"),
        )


def env_kwargs(run: RunConfig) -> dict[str, Any]:
    """``gym.make`` keywords of each sub-env: defaults from the run's seed (the schedule seed of
    non-stationary envs), then the user's ``--env-kwargs``."""
    return {**seeded_env_kwargs(run.env, run.seed), **run.gym_kwargs()}


def _fresh_run_dir(algorithm: str, run: Any) -> Path:
    if run.run_dir is None:
        check_run_dir_path(run.runs_root, flag="--runs-root")
        run_dir = new_run_dir(run.runs_root, f"{algorithm}-{run.env}-s{run.seed}")
        return claim_run_dir(run_dir, command=algorithm).run_dir
    run_dir = claim_run_dir(run.run_dir, command=algorithm).run_dir
    taken = [
        name
        for name in (CONFIG_FILE, EPISODES_FILE, CheckpointManager.FILENAME)
        if (run_dir / name).exists()
    ]
    if taken or any(run_dir.glob("events.out.tfevents.*")):
        refuse_held_run_dir(run_dir, command=algorithm)
    return run_dir


def _config_json(config: Any) -> dict[str, Any]:
    result: dict[str, Any] = to_jsonable(config)
    return result


# --------------------------------------------------------------------------- execution


class _Execution:
    """One process's part of a run: set up, loop, checkpoint, close."""

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.run_settings = prepared.config.run
        self.measure = prepared.config.measure
        self.run_dir = prepared.run_dir
        self.recent_returns: deque[float] = deque(maxlen=10)
        self.last_probe_step: int | None = None
        """The step of the last plasticity measurement (``None``: none yet)."""
        self.last_status = time.monotonic()

    def run(self) -> int:
        run = self.run_settings
        torch.set_num_threads(run.torch_threads or cpu_count())
        seed_everything(run.seed)
        description = self.prepared.description
        envs = make_vector_env(
            run.env,
            run.num_envs,
            mode=run.vector_mode,
            num_workers=run.num_workers,
            env_kwargs=env_kwargs(run),
            info_keys=description.logged_info_keys,
        )
        try:
            return self._run_with(envs)
        finally:
            envs.close()

    def _run_with(self, envs: Any) -> int:
        prepared, run = self.prepared, self.run_settings
        context = AgentContext(self.config, envs, prepared.description, prepared.device, run.seed)
        agent = prepared.build_agent(context)
        try:
            return self._run_agent(agent, envs)
        finally:
            agent.close()

    def _run_agent(self, agent: Agent, envs: Any) -> int:
        prepared, run = self.prepared, self.run_settings
        self.monitor = PlasticityMonitor(
            agent.plasticity_networks(), dormant_tau=self.measure.dormant_tau
        )
        manager = prepared.manager
        state = prepared.checkpoint
        if state is None:
            observations, _ = envs.reset(seed=derive_seed(run.seed, "env"))
            agent.start(observations)
            logger = RunLogger(self.run_dir, self._config_record())
        else:
            self._restore(agent, envs, state)
            manager.last_step = state["step"]
            # Everything logged at the checkpoint's step came before it: drop only later events.
            logger = RunLogger(
                self.run_dir,
                self._config_record(),
                resume_step=state["step"] + 1,
                resume_position=state["log_position"],
            )
        self.status = RunStatusWriter(
            self.run_dir,
            command=prepared.algorithm,
            total=budget(self.config),
            unit=UNIT,
            metric=METRIC,
        )
        print(
            f"{prepared.algorithm} on {run.env}: run directory {self.run_dir}"
            + (f" (resumed at step {agent.global_step})" if state is not None else ""),
            flush=True,
        )
        with logger, GracefulStop() as stop:
            self._loop(agent, envs, logger, manager, stop)
            if manager.last_step != agent.global_step or not manager.path.exists():
                manager.save(agent.global_step, self._state(agent, envs, logger))
            self.status.update(
                agent.global_step,
                self._recent_return(),
                finished=agent.global_step >= run.total_steps,
                stopped_by=None if stop.signal is None else stop.signal.name,
                force=True,
            )
        if stop.signal is not None:
            print(
                f"stopped by {stop.signal.name} at step {agent.global_step}; continue with "
                f"--resume {self.run_dir}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"finished at step {agent.global_step}: {self.run_dir}", flush=True)
        return stop_exit_code(stop.signal)

    def _loop(
        self,
        agent: Agent,
        envs: Any,
        logger: RunLogger,
        manager: CheckpointManager,
        stop: GracefulStop,
    ) -> None:
        total = self.run_settings.total_steps
        show = self.run_settings.progress
        with Progress(total, initial=agent.global_step, enabled=show, desc="steps") as bar:
            while agent.global_step < total and not stop.requested:
                started = time.perf_counter()
                iteration = agent.iterate()
                elapsed = time.perf_counter() - started
                step = agent.global_step
                self._check_finite(agent, iteration, step)
                self._log_iteration(logger, iteration, step, elapsed)
                self._maybe_probe(agent, logger, step)
                saved = manager.due(step)
                if saved:
                    manager.save(step, self._state(agent, envs, logger))
                self.status.update(step, self._recent_return(), force=saved)
                postfix = {"sps": f"{iteration.steps / max(elapsed, 1e-9):.0f}"}
                if self.recent_returns:
                    postfix["return"] = f"{np.mean(self.recent_returns):.1f}"
                bar.update(iteration.steps, **postfix)
                if show and not bar.enabled:
                    self._status_line(step, total, postfix)

    def _check_finite(self, agent: Agent, iteration: Iteration, step: int) -> None:
        """Stop (``NonFiniteError``, nothing saved) on a non-finite loss or weight."""
        last, where = self.prepared.manager.last_step, str(self.run_dir)
        losses = {key: v for key, v in iteration.scalars.items() if key.endswith("_loss")}
        check_finite_losses(losses, step=step, last_checkpoint=last, where=where)
        check_finite_weights(
            agent.plasticity_networks(), step=step, last_checkpoint=last, where=where
        )

    def _log_iteration(
        self, logger: RunLogger, iteration: Iteration, step: int, elapsed: float
    ) -> None:
        for episode in iteration.episodes:
            logger.episode(
                episode.step,
                return_=episode.return_,
                length=episode.length,
                env=episode.env_index,
            )
            logger.scalar("charts/episodic_return", episode.return_, episode.step)
            logger.scalar("charts/episodic_length", episode.length, episode.step)
            self.recent_returns.append(episode.return_)
        logger.scalars(iteration.scalars, step)
        logger.scalars(iteration.env_info, step, prefix="env")
        logger.scalar("charts/sps", iteration.steps / max(elapsed, 1e-9), step)
        logger.scalar("charts/update_time_fraction", iteration.update_seconds / elapsed, step)

    def _maybe_probe(self, agent: Agent, logger: RunLogger, step: int) -> None:
        every = self.measure.plasticity_every
        first = self.last_probe_step is None  # the baseline every curve starts from
        if not every or not (first or step // every > (self.last_probe_step or 0) // every):
            return
        self.last_probe_step = step
        inputs = agent.probe_inputs(self.measure.probe_size)
        values = self.monitor.measure(inputs)
        values.update(
            {f"plasticity/{key}": v for key, v in agent.plasticity_extras(inputs).items()}
        )
        for name, counts in agent.replacement_counts().items():
            for layer, count in enumerate(counts):
                values[f"plasticity/{name}/replacements/{layer}"] = count
            values[f"plasticity/{name}/replacements/all"] = sum(counts)
        logger.scalars(values, step)

    def _recent_return(self) -> float | None:
        return float(np.mean(self.recent_returns)) if self.recent_returns else None

    def _status_line(self, step: int, total: int, postfix: Mapping[str, str]) -> None:
        now = time.monotonic()
        if now - self.last_status < 60.0 and step < total:
            return
        self.last_status = now
        details = "  ".join(f"{key} {value}" for key, value in postfix.items())
        print(f"step {step}/{total} ({100 * step / total:.1f}%)  {details}", flush=True)

    # ----------------------------------------------------------------- state
    def _config_record(self) -> dict[str, Any]:
        run = dataclasses.replace(self.run_settings, run_dir=self.run_dir, resume=None)
        config = dataclasses.replace(self.config, run=run)
        return {COMMAND_KEY: self.prepared.algorithm, **_config_json(config)}

    def _state(self, agent: Agent, envs: Any, logger: RunLogger) -> dict[str, Any]:
        return {
            "algorithm": self.prepared.algorithm,
            "config": _config_json(self.config),
            "agent": agent.state_dict(),
            "env": (
                capture_pool_state(envs, self.prepared.description.env_id)
                if is_envpool(envs)
                else capture_vector_state(envs, self.prepared.description)
            ),
            "rng": capture_rng_state(),
            "monitor": self.monitor.state_dict(),
            "runner": {"last_probe_step": self.last_probe_step},
            "log_position": logger.position(),
        }

    def _restart_envpool_episodes(self, agent: Agent, envs: Any, state: dict[str, Any]) -> None:
        """EnvPool has no state snapshot: the learner resumes exactly, the episodes restart."""
        run, step = self.run_settings, state["step"]
        observations = restore_pool_state(
            envs, run.env, state["env"], derive_seed(run.seed, f"env@{step}")
        )
        agent.start(observations)
        print(
            f"note: resuming an EnvPool run at step {step}: the learner continues exactly, but "
            f"EnvPool cannot save its simulations, so the {envs.num_envs} episodes in progress "
            "were dropped and new ones start now (from seeded resets)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self, agent: Agent, envs: Any, state: dict[str, Any]) -> None:
        run = self.run_settings
        try:
            agent.load_state_dict(state["agent"])
            if is_envpool(envs):
                self._restart_envpool_episodes(agent, envs, state)
                exact = True  # restarted on purpose, said by its own note
            else:
                exact = restore_vector_state(envs, self.prepared.description, state["env"])
            self.monitor.load_state_dict(state["monitor"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"does not fit this {self.prepared.algorithm} run: {type(err).__name__}: {err}",
                self.run_dir / CheckpointManager.FILENAME,
                "resume with the configuration that wrote it (config.json), or start a new run",
            ) from err
        if not exact:
            print(
                f"note: {run.env} has no exact snapshot support (not a MuJoCo env); its episodes "
                "restart on resume",
                file=sys.stderr,
            )
            observations, _ = envs.reset(seed=derive_seed(run.seed, f"env@{state['step']}"))
            agent.start(observations)
        last_probe = state["runner"]["last_probe_step"]
        self.last_probe_step = None if last_probe is None else int(last_probe)
        restore_rng_state(state["rng"])
