"""Vectorized environments for the agents: validation, three vectorizers, exact snapshots.

:func:`make_vector_env` builds ``num_envs`` copies of a Gymnasium environment behind Gymnasium's
vector API, with same-step autoreset (``AutoresetMode.SAME_STEP``: the step that ends an episode
returns the next episode's first observation, and the true last observation of the ended one in
``info["final_obs"]``, masked by ``info["_final_obs"]``) and episode statistics
(``RecordEpisodeStatistics``: ``info["episode"]`` / ``info["_episode"]``). Three vectorizers give
identical results for the same seeds:

- ``sync``: Gymnasium's ``SyncVectorEnv``, every env in this process.
- ``async``: Gymnasium's ``AsyncVectorEnv``, one env per worker process, a pipe round trip per
  env and step.
- ``batched``: :class:`BatchedVectorEnv`, several envs per worker process; a whole batch of
  actions and results goes through shared memory with one short pipe message per worker and step.
  A MuJoCo step (~0.25-0.4 ms) is too short to pay a round trip each; with a few envs per worker
  the round trip is paid once per batch.

A fourth mode, ``envpool`` (:mod:`cbp_rl.envs.envpool_backend`), runs EnvPool's C++ envs for the
stationary Gymnasium MuJoCo ids with these semantics, but its own numbers and no snapshots.

Every sub-environment is wrapped in :class:`ExactSnapshot`, whose ``snapshot`` property holds what
continues it exactly: the MuJoCo ``MjData`` (all of it: state, warm start and the derived
quantities the env reads, such as body positions), the env's random generator and the time-limit
counter. :func:`capture_vector_state` / :func:`restore_vector_state` add the episode statistics
and, per the environment protocol (ENV_PROTOCOL), the ``schedule_state`` of schedule-carrying
wrappers. Snapshots hold only plain Python values and bytes, so worker processes never need torch
and checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import itertools
import multiprocessing as mp
import os
import pickle
import traceback
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal, cast, get_args

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from cbp_rl.run.runtime import parent_is_gone, signals_blocked, worker_process_setup

VectorMode = Literal["auto", "sync", "async", "batched", "envpool"]
VECTOR_MODES: tuple[str, ...] = get_args(VectorMode)

__all__ = [
    "VECTOR_MODES",
    "BatchedVectorEnv",
    "EnvDescription",
    "ExactSnapshot",
    "VectorMode",
    "capture_vector_state",
    "check_env_id",
    "describe_env",
    "final_observations",
    "info_means",
    "make_vector_env",
    "resolve_vector_mode",
    "restore_vector_state",
    "seeded_env_kwargs",
    "sub_env_kwargs",
]


# --------------------------------------------------------------------------- validation


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` unless ``env_id`` is a registered Gymnasium id (close matches named).

    Imports ``cbp_rl.envs`` first, which registers the project's environments (SlipperyAnt).
    """
    import cbp_rl.envs  # noqa: F401  (registers the project's environments)

    if env_id in gym.registry:
        return
    ids = sorted(gym.registry.keys())
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.pprint_registry()"
    raise ValueError(f"unknown environment id {env_id!r}: {hint}")


def sub_env_kwargs(env_id: str, num_envs: int) -> dict[str, Any]:
    """Keyword arguments for each sub-environment (ENV_PROTOCOL point 2).

    An env whose schedule counts agent steps declares ``num_envs`` in its registered kwargs; it
    is told how many sub-environments step in lockstep. One that also declares
    ``reset_counts_as_step`` is told that a reset is no step of its own: these vectorizers reset
    a finished sub-environment within the step that ended its episode.
    """
    registered = gym.spec(env_id).kwargs
    kwargs: dict[str, Any] = {}
    if "num_envs" in registered:
        kwargs["num_envs"] = num_envs
    if "reset_counts_as_step" in registered:
        kwargs["reset_counts_as_step"] = False
    return kwargs


def seeded_env_kwargs(env_id: str, seed: int) -> dict[str, Any]:
    """Defaults derived from the run's seed: ``schedule_seed`` where the env registers one, so
    each run seed sees its own sequence of world changes, as in the reference."""
    return {"schedule_seed": seed} if "schedule_seed" in gym.spec(env_id).kwargs else {}


@dataclass(frozen=True)
class EnvDescription:
    """What the agents need to know about an environment, read from one instance of it."""

    env_id: str
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_episode_steps: int | None
    has_schedule: bool
    """Whether a wrapper exposes ``schedule_state`` (checkpointed and restored)."""
    logged_info_keys: tuple[str, ...]
    """Numeric ``info`` entries to log as ``env/<key>`` (ENV_PROTOCOL point 1)."""
    exact_snapshots: bool
    """Whether :class:`ExactSnapshot` can capture the env exactly (MuJoCo envs)."""

    @property
    def observation_dim(self) -> int:
        return int(np.prod(self.observation_shape))

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.action_shape))


def describe_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvDescription:
    """Validate ``env_id`` for continuous control and describe it (makes one env and closes it).

    Raises ``ValueError`` naming the problem and the fix: an unknown id, an env that cannot be
    built (a missing dependency such as mujoco-py for ``-v2``/``-v3``), a non-Box action space or
    a Box with infinite bounds, or an observation space that is not a flat Box.
    """
    check_env_id(env_id)
    try:
        env = gym.make(env_id, **(env_kwargs or {}))
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        raise ValueError(
            f"cannot build {env_id!r}: {err}. Use the -v4 or -v5 MuJoCo envs (the -v2/-v3 "
            "versions need mujoco-py)"
        ) from err
    except Exception as err:
        raise ValueError(f"cannot build {env_id!r}: {type(err).__name__}: {err}") from err
    try:
        return _describe(env_id, env)
    finally:
        env.close()


def _describe(env_id: str, env: gym.Env) -> EnvDescription:
    action_space, observation_space = env.action_space, env.observation_space
    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(
            f"{env_id} has a {type(action_space).__name__} action space; these agents need "
            "continuous (Box) actions, e.g. the MuJoCo envs Ant, Hopper, Walker2d, HalfCheetah"
        )
    if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise ValueError(f"{env_id} has unbounded actions; the agents need finite action bounds")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"{env_id} has observation space {observation_space}; the agents need a flat Box "
            "(wrap it with gymnasium.wrappers.FlattenObservation in a registered env)"
        )
    keys = _wrapper_attr(env, "logged_info_keys")
    return EnvDescription(
        env_id=env_id,
        observation_shape=tuple(observation_space.shape),
        action_shape=tuple(action_space.shape),
        action_low=tuple(float(x) for x in action_space.low.ravel()),
        action_high=tuple(float(x) for x in action_space.high.ravel()),
        max_episode_steps=env.spec.max_episode_steps if env.spec is not None else None,
        has_schedule=_wrapper_attr(env, "schedule_state") is not None,
        logged_info_keys=tuple(keys) if keys is not None else (),
        exact_snapshots=_mujoco_base(env) is not None,
    )


def _wrapper_attr(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


# --------------------------------------------------------------------------- snapshots


def _mujoco_base(env: gym.Env) -> Any:
    """The unwrapped ``MujocoEnv``, or ``None`` for other envs."""
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # pragma: no cover - mujoco is a dependency
        return None
    base = env.unwrapped
    return base if isinstance(base, MujocoEnv) else None


def _model_sizes(model: Any) -> list[int]:
    return [int(model.nq), int(model.nv), int(model.na), int(model.nu), int(model.nbody)]


class ExactSnapshot(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Adds a read/write ``snapshot`` property: what continues this environment exactly.

    For a MuJoCo env the snapshot holds the whole ``MjData`` (serialized by MuJoCo, zlib
    compressed), so the simulation, its solver warm start and the derived quantities the env reads
    between steps (body positions for the forward reward, contact forces) continue bit for bit;
    plus the env's random generator (used by resets) and the ``TimeLimit`` counter. For other envs
    only the generator and counter are kept (``snapshot["exact"]`` is False): the agents reset
    such envs on resume. Values are plain Python (bytes, ints, strings, lists, dicts).

    Examples:
        >>> env = ExactSnapshot(gym.make("InvertedPendulum-v4"))
        >>> _ = env.reset(seed=0)
        >>> saved = env.snapshot
        >>> first = env.step(np.zeros(1, dtype=np.float32))[0]
        >>> env.snapshot = saved
        >>> bool((env.step(np.zeros(1, dtype=np.float32))[0] == first).all())
        True
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    @property
    def snapshot(self) -> dict[str, Any]:
        base = self.env.unwrapped
        generator = base._np_random
        state: dict[str, Any] = {
            "exact": False,
            "np_random": None if generator is None else _plain(generator.bit_generator.state),
            "np_random_seed": base._np_random_seed,
            "elapsed_steps": None,
        }
        limit = self._time_limit()
        if limit is not None:
            state["elapsed_steps"] = int(limit._elapsed_steps or 0)
        mujoco_env = _mujoco_base(self.env)
        if mujoco_env is not None:
            state["exact"] = True
            state["model_sizes"] = _model_sizes(mujoco_env.model)
            state["mujoco_data"] = zlib.compress(mujoco_env.data.__getstate__(), 1)
        return state

    @snapshot.setter
    def snapshot(self, state: dict[str, Any]) -> None:
        base = self.env.unwrapped
        if state.get("np_random") is not None:
            saved = state["np_random"]
            bit_generator = getattr(np.random, saved["bit_generator"])()
            bit_generator.state = saved
            base._np_random = np.random.Generator(bit_generator)
            base._np_random_seed = state.get("np_random_seed")
        limit = self._time_limit()
        if limit is not None and state.get("elapsed_steps") is not None:
            limit._elapsed_steps = int(state["elapsed_steps"])  # type: ignore[assignment]
        if state.get("exact"):
            self._restore_mujoco(state)
        self._mark_reset()

    def _restore_mujoco(self, state: dict[str, Any]) -> None:
        import mujoco

        mujoco_env = _mujoco_base(self.env)
        if mujoco_env is None:
            raise ValueError("the snapshot holds MuJoCo data but this env is not a MuJoCo env")
        sizes = _model_sizes(mujoco_env.model)
        if list(state["model_sizes"]) != sizes:
            raise ValueError(
                f"the snapshot is of a MuJoCo model of sizes (nq, nv, na, nu, nbody) "
                f"{list(state['model_sizes'])}, this env's model has {sizes}: it belongs to "
                "another environment"
            )
        saved = mujoco.MjData.__new__(mujoco.MjData)
        saved.__setstate__(zlib.decompress(state["mujoco_data"]))
        mujoco.mj_copyData(mujoco_env.data, mujoco_env.model, saved)

    def _time_limit(self) -> gym.wrappers.TimeLimit | None:
        env: gym.Env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.TimeLimit):
                return env
            env = env.env
        return None

    def _mark_reset(self) -> None:
        """Tell ``OrderEnforcing`` the env may step (it was reset before the snapshot)."""
        env: gym.Env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.OrderEnforcing):
                env._has_reset = True
            env = env.env


def _plain(value: Any) -> Any:
    """numpy values inside a bit generator state as plain Python values."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "data": value.tolist()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["data"], dtype=np.dtype(value["__ndarray__"]))
        return {key: _unplain(item) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------- the factory


def make_sub_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    """One sub-environment: ``gym.make(env_id, **env_kwargs)`` inside :class:`ExactSnapshot`."""
    import cbp_rl.envs  # noqa: F401  (registers the project's environments in worker processes)

    with warnings.catch_warnings():  # describe_env already showed gym's notes about the id
        warnings.simplefilter("ignore", DeprecationWarning)
        return ExactSnapshot(gym.make(env_id, **env_kwargs))


def resolve_vector_mode(mode: str, num_envs: int, num_workers: int = 0) -> tuple[str, int]:
    """The vectorizer and worker count that ``mode="auto"`` / ``num_workers=0`` stand for.

    ``auto`` is ``batched`` when there are several envs and several CPU cores, else ``sync``.
    ``num_workers=0`` means one worker per CPU core, at most one per env.
    """
    if mode not in VECTOR_MODES:
        raise ValueError(f"unknown vector mode {mode!r}; valid modes are {', '.join(VECTOR_MODES)}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 = one per CPU core), got {num_workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    if mode == "auto":
        mode = "batched" if num_envs > 1 and cores > 1 else "sync"
    if mode == "async":
        return mode, num_envs
    if mode == "envpool":  # threads, not processes: cbp_rl.envs.envpool_backend
        return mode, min(num_envs, num_workers or cores)
    if mode == "batched":
        return mode, min(num_envs, num_workers or cores)
    return mode, 0


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    mode: str = "auto",
    num_workers: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    info_keys: Sequence[str] = (),
    context: str | None = None,
) -> RecordEpisodeStatistics:
    """``num_envs`` copies of ``env_id`` behind the vector API, with same-step autoreset.

    Args:
        env_id: a registered Gymnasium id (see :func:`describe_env` to validate it first).
        num_envs: sub-environments stepping in lockstep.
        mode: ``sync``, ``async``, ``batched`` or ``auto`` (see :func:`resolve_vector_mode`), or
            ``envpool`` (:mod:`cbp_rl.envs.envpool_backend`; ``num_workers`` are its threads).
        num_workers: worker processes of the batched vectorizer (0 = one per CPU core).
        env_kwargs: extra keyword arguments for ``gym.make``; ``num_envs`` is added when the
            env declares it (ENV_PROTOCOL point 2).
        info_keys: numeric ``info`` entries the batched vectorizer passes back (the others pass
            every entry).
        context: multiprocessing start method for worker processes (None: the platform default).

    Returns:
        The vector env wrapped in ``RecordEpisodeStatistics``. Seed it with ``reset(seed=s)``
        (sub-env ``i`` gets ``s + i``).
    """
    mode, workers = resolve_vector_mode(mode, num_envs, num_workers)
    if mode == "envpool":
        from cbp_rl.envs.envpool_backend import make_envpool_vector_env

        return make_envpool_vector_env(env_id, num_envs, num_threads=workers, env_kwargs=env_kwargs)
    kwargs = {**(env_kwargs or {}), **sub_env_kwargs(env_id, num_envs)}
    fns = [functools.partial(make_sub_env, env_id, kwargs) for _ in range(num_envs)]
    envs: VectorEnv
    if mode == "sync":
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    elif mode == "async":
        worker = functools.partial(_quiet_async_worker, parent_pid=_parent_pid(context))
        with signals_blocked():
            envs = gym.vector.AsyncVectorEnv(
                fns,
                context=context,
                autoreset_mode=AutoresetMode.SAME_STEP,
                worker=cast(Any, worker),
            )
    else:
        envs = BatchedVectorEnv(fns, num_workers=workers, info_keys=info_keys, context=context)
    return RecordEpisodeStatistics(envs)


def _parent_pid(context: str | None) -> int | None:
    """This process's pid, for workers to check their parent against; ``None`` under the
    forkserver start method (a worker's parent is then the server)."""
    method = context or mp.get_start_method()
    return None if method == "forkserver" else os.getpid()


def _quiet_async_worker(
    index: int,
    env_fn: Callable[[], gym.Env],
    pipe: Connection,
    parent_pipe: Connection,
    shared_memory: Any,
    error_queue: Any,
    autoreset_mode: AutoresetMode,
    semaphore: Any = None,
    *,
    parent_pid: int | None = None,
) -> None:
    """Gymnasium's async worker, deaf to SIGINT and SIGTERM (the main process stops the run
    gracefully) and gone with its parent (:func:`~cbp_rl.run.runtime.worker_process_setup`)."""
    from gymnasium.vector.async_vector_env import _async_worker

    worker_process_setup(parent_pid)
    _async_worker(
        index, env_fn, pipe, parent_pipe, shared_memory, error_queue, autoreset_mode, semaphore
    )


# --------------------------------------------------------------------------- infos


def final_observations(infos: dict[str, Any]) -> dict[int, np.ndarray]:
    """The last observation of each episode that ended in this step, by sub-env index."""
    mask = infos.get("_final_obs")
    if mask is None:
        return {}
    final = infos["final_obs"]
    return {int(i): np.asarray(final[i]) for i in np.flatnonzero(mask)}


def info_means(infos: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The mean over sub-envs of each numeric ``info`` entry in ``keys`` that is present."""
    means = {}
    for key in keys:
        if key not in infos:
            continue
        values = np.asarray(infos[key], dtype=np.float64)
        present = np.asarray(infos.get(f"_{key}", np.ones(len(values), dtype=bool)))
        if present.any():
            means[key] = float(values[present].mean())
    return means


# --------------------------------------------------------------------------- state


def _episode_statistics(envs: VectorEnv) -> RecordEpisodeStatistics | None:
    env: Any = envs
    while env is not None:
        if isinstance(env, RecordEpisodeStatistics):
            return env
        env = getattr(env, "env", None)
    return None


def capture_vector_state(envs: VectorEnv, description: EnvDescription) -> dict[str, Any]:
    """Everything needed to continue ``envs`` exactly, as weights_only-safe plain values.

    Holds each sub-env's :class:`ExactSnapshot`, the ``schedule_state`` of each sub-env when the
    env has a schedule (ENV_PROTOCOL point 3) and the running episode statistics.
    """
    base: Any = envs.unwrapped  # vector wrappers do not forward get_attr
    state: dict[str, Any] = {
        "num_envs": envs.num_envs,
        "env_id": description.env_id,
        "snapshots": list(base.get_attr("snapshot")),
        "schedule_states": (
            list(base.get_attr("schedule_state")) if description.has_schedule else None
        ),
    }
    stats = _episode_statistics(envs)
    if stats is not None:
        state["episode_statistics"] = {
            "returns": [float(x) for x in stats.episode_returns],
            "lengths": [int(x) for x in stats.episode_lengths],
            "count": int(stats.episode_count),
        }
    return state


def restore_vector_state(
    envs: VectorEnv, description: EnvDescription, state: dict[str, Any]
) -> bool:
    """Put ``envs`` back into a :func:`capture_vector_state` state; returns whether it is exact.

    The envs are reset first (so every wrapper is in its after-reset state), then the schedule
    states go in (they edit the MuJoCo model), then the snapshots (the data).
    Raises ``ValueError`` if the state is of another env id or number of sub-envs.
    """
    if state["num_envs"] != envs.num_envs or state["env_id"] != description.env_id:
        raise ValueError(
            f"the saved environment state is of {state['num_envs']} x {state['env_id']}, "
            f"these are {envs.num_envs} x {description.env_id}"
        )
    envs.reset(seed=0)  # puts every wrapper in its after-reset state; the snapshot then rules
    base: Any = envs.unwrapped  # vector wrappers do not forward set_attr
    schedules = state.get("schedule_states")
    if description.has_schedule:
        if schedules is None:
            raise ValueError("the saved state has no schedule_state, but the env has a schedule")
        base.set_attr("schedule_state", list(schedules))
    snapshots = [dict(s, np_random=_unplain(s["np_random"])) for s in state["snapshots"]]
    base.set_attr("snapshot", snapshots)
    stats = _episode_statistics(envs)
    saved_stats = state.get("episode_statistics")
    if stats is not None and saved_stats is not None:
        stats.episode_returns = np.asarray(saved_stats["returns"], dtype=np.float64)
        stats.episode_lengths = np.asarray(saved_stats["lengths"], dtype=int)
        stats.episode_count = int(saved_stats["count"])
        stats.prev_dones = np.zeros(envs.num_envs, dtype=bool)
    return all(s["exact"] for s in snapshots)


# --------------------------------------------------------------------------- batched


_STEP = b"s"
_OK = b""


@dataclass(frozen=True)
class _Layout:
    """Shapes and dtypes of the shared arrays."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: str
    action_shape: tuple[int, ...]
    action_dtype: str
    num_keys: int

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        n = self.num_envs
        return {
            "actions": ((n, *self.action_shape), self.action_dtype),
            "obs": ((n, *self.obs_shape), self.obs_dtype),
            "final_obs": ((n, *self.obs_shape), self.obs_dtype),
            "has_final": ((n,), "|b1"),
            "rewards": ((n,), "<f8"),
            "terminated": ((n,), "|b1"),
            "truncated": ((n,), "|b1"),
            "info_values": ((n, self.num_keys), "<f8"),
            "info_present": ((n, self.num_keys), "|b1"),
        }


def _views(layout: _Layout, buffers: dict[str, Any]) -> dict[str, np.ndarray]:
    views = {}
    for name, (shape, dtype) in layout.arrays().items():
        count = int(np.prod(shape))
        views[name] = np.frombuffer(buffers[name], dtype=np.dtype(dtype), count=count).reshape(
            shape
        )
    return views


class BatchedVectorEnv(VectorEnv):
    """Sub-environments split over a few worker processes, batches exchanged in shared memory.

    Each worker steps its contiguous group of envs one after another; actions, observations,
    rewards, flags, final observations and the numeric ``info_keys`` go through shared arrays, and
    each step costs one one-byte message to and from each worker. Autoreset is same-step (as
    ``AutoresetMode.SAME_STEP``): ``info["final_obs"]`` / ``info["_final_obs"]`` hold the last
    observations of ended episodes. Only ``info_keys`` (numeric scalars, with ``_key`` masks) and
    the final observations are passed back in ``info``. ``call``, ``get_attr`` and ``set_attr``
    work as in Gymnasium's vector envs. Workers ignore SIGINT and SIGTERM (a stop sent to the
    process group is for the main process, which stops gracefully, then closes them) and exit
    when the main process dies, even by SIGKILL (``cbp_rl.run.runtime.worker_process_setup``).

    Args:
        env_fns: functions that build the sub-environments (run in the workers).
        num_workers: worker processes (at most ``len(env_fns)``).
        info_keys: numeric info entries to pass back.
        context: multiprocessing start method (None: the platform default).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        num_workers: int = 2,
        info_keys: Sequence[str] = (),
        context: str | None = None,
    ) -> None:
        import cloudpickle

        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        self.closed = False
        if not env_fns:
            raise ValueError("BatchedVectorEnv needs at least one env function")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_envs = len(env_fns)
        self.info_keys = tuple(info_keys)
        probe = env_fns[0]()
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.metadata = {**probe.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = probe.render_mode
        probe.close()
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        obs_space, act_space = self.single_observation_space, self.single_action_space
        if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
            raise ValueError("BatchedVectorEnv supports Box observation and action spaces only")
        self._layout = _Layout(
            self.num_envs,
            tuple(obs_space.shape),
            np.dtype(obs_space.dtype).str,
            tuple(act_space.shape),
            np.dtype(act_space.dtype).str,
            len(self.info_keys),
        )
        ctx: Any = mp.get_context(context)
        self._buffers = {
            name: ctx.RawArray("b", max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
            for name, (shape, dtype) in self._layout.arrays().items()
        }
        self._arrays = _views(self._layout, self._buffers)
        bounds = np.linspace(0, self.num_envs, min(num_workers, self.num_envs) + 1).astype(int)
        self._groups = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        payload = cloudpickle.dumps(list(env_fns))
        parent_pid = _parent_pid(ctx.get_start_method())
        for worker, (start, stop) in enumerate(self._groups):
            parent, child = ctx.Pipe()
            args = (payload, start, stop, self._layout, self._buffers, child, self.info_keys)
            process = ctx.Process(
                target=_batched_worker,
                name=f"BatchedVectorEnv-{worker}",
                args=args,
                kwargs={"parent_pid": parent_pid},
                daemon=True,
            )
            with signals_blocked():
                process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
        self._gather("start")

    # ----------------------------------------------------------------- protocol
    def _gather(self, what: str) -> list[Any]:
        """Wait for every worker's reply; raise if one failed."""
        replies: list[Any] = []
        failure: RuntimeError | None = None
        for worker, pipe in enumerate(self._pipes):
            try:
                message = pipe.recv_bytes()
            except (EOFError, OSError) as err:
                code = self._processes[worker].exitcode
                failure = failure or RuntimeError(
                    f"BatchedVectorEnv worker {worker} died during {what} (exit code {code}); "
                    "rerun with --vector-mode sync to see the env's error"
                )
                del err
                continue
            if message == _OK:
                replies.append(None)
                continue
            status, value = pickle.loads(message)
            if status == "error":
                start, stop = self._groups[worker]
                failure = failure or RuntimeError(
                    f"BatchedVectorEnv worker {worker} (envs {start}..{stop - 1}) failed during "
                    f"{what}:\n{value}"
                )
                continue
            replies.append(value)
        if failure is not None:
            self.close()
            raise failure
        return replies

    def _send_all(self, command: str, payloads: Sequence[Any]) -> None:
        self._check_open()
        for pipe, payload in zip(self._pipes, payloads, strict=True):
            pipe.send_bytes(pickle.dumps((command, payload)))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this BatchedVectorEnv is closed")

    # ----------------------------------------------------------------- vector API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options and "reset_mask" in options:
            raise NotImplementedError("BatchedVectorEnv resets all sub-envs; no reset_mask")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} environments")
        self._send_all("reset", [(seeds[a:b], options) for a, b in self._groups])
        self._gather("reset")
        arrays = self._arrays
        return arrays["obs"].copy(), self._infos(final=False)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_open()
        arrays = self._arrays
        np.copyto(arrays["actions"], np.asarray(actions).reshape(arrays["actions"].shape))
        for pipe in self._pipes:
            pipe.send_bytes(_STEP)
        self._gather("step")
        return (
            arrays["obs"].copy(),
            arrays["rewards"].copy(),
            arrays["terminated"].copy(),
            arrays["truncated"].copy(),
            self._infos(final=True),
        )

    def _infos(self, *, final: bool) -> dict[str, Any]:
        arrays = self._arrays
        infos: dict[str, Any] = {}
        if final and arrays["has_final"].any():
            mask = arrays["has_final"].copy()
            final_obs = np.empty(self.num_envs, dtype=object)
            for i in np.flatnonzero(mask):
                final_obs[i] = arrays["final_obs"][i].copy()
            infos["final_obs"] = final_obs
            infos["_final_obs"] = mask
        for k, key in enumerate(self.info_keys):
            present = arrays["info_present"][:, k]
            if present.any():
                infos[key] = arrays["info_values"][:, k].copy()
                infos[f"_{key}"] = present.copy()
        return infos

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._send_all("call", [(name, args, kwargs)] * len(self._pipes))
        return tuple(item for reply in self._gather(f"call({name!r})") for item in reply)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, list | tuple):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"got {len(values)} values for {self.num_envs} environments")
        self._send_all("set_attr", [(name, list(values[a:b])) for a, b in self._groups])
        self._gather(f"set_attr({name!r})")

    def close_extras(self, **kwargs: Any) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send_bytes(pickle.dumps(("close", None)))
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():  # workers ignore SIGTERM: a stuck one is killed
                process.kill()
                process.join(timeout=1)
        for pipe in self._pipes:
            pipe.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()


_PARENT_CHECK_SECONDS = 2.0
"""How long an idle worker waits on its pipe before checking that its parent lives (the
fallback where the parent-death signal is unavailable)."""


def _batched_worker(
    payload: bytes,
    start: int,
    stop: int,
    layout: _Layout,
    buffers: dict[str, Any],
    pipe: Connection,
    info_keys: tuple[str, ...],
    *,
    parent_pid: int | None = None,
) -> None:
    """The loop of one worker: steps envs ``start..stop-1`` on command; it ends when told, when
    its pipe closes or when its parent is gone."""
    worker_process_setup(parent_pid)
    arrays = _views(layout, buffers)
    envs: list[gym.Env] = []
    try:
        envs = [fn() for fn in pickle.loads(payload)[start:stop]]
        pipe.send_bytes(_OK)
    except Exception:
        pipe.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        return
    actions, obs, final_obs = arrays["actions"], arrays["obs"], arrays["final_obs"]
    has_final, rewards = arrays["has_final"], arrays["rewards"]
    terminated, truncated = arrays["terminated"], arrays["truncated"]

    def write_info(i: int, info: dict[str, Any]) -> None:
        for k, key in enumerate(info_keys):
            present = key in info
            arrays["info_present"][i, k] = present
            if present:
                arrays["info_values"][i, k] = float(info[key])

    while True:
        try:
            while not pipe.poll(_PARENT_CHECK_SECONDS):
                if parent_is_gone(parent_pid):
                    raise EOFError
            message = pipe.recv_bytes()
        except (EOFError, OSError):
            break
        try:
            if message == _STEP:
                for i, env in zip(range(start, stop), envs, strict=True):
                    observation, reward, term, trunc, info = env.step(actions[i])
                    rewards[i], terminated[i], truncated[i] = reward, term, trunc
                    has_final[i] = term or trunc
                    if term or trunc:
                        final_obs[i] = observation
                        observation, info = env.reset()
                    obs[i] = observation
                    write_info(i, info)
                pipe.send_bytes(_OK)
                continue
            command, data = pickle.loads(message)
            if command == "close":
                break
            if command == "reset":
                seeds, options = data
                for i, env, seed in zip(range(start, stop), envs, seeds, strict=True):
                    obs[i], info = env.reset(seed=seed, options=options)
                    has_final[i] = False
                    terminated[i] = truncated[i] = False
                    write_info(i, info)
                pipe.send_bytes(_OK)
            elif command == "call":
                name, args, kwargs = data
                results = []
                for env in envs:
                    value = env.get_wrapper_attr(name)
                    results.append(value(*args, **kwargs) if callable(value) else value)
                pipe.send_bytes(pickle.dumps(("ok", results)))
            elif command == "set_attr":
                name, values = data
                for env, value in zip(envs, values, strict=True):
                    env.set_wrapper_attr(name, value)
                pipe.send_bytes(_OK)
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception:
            pipe.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    for env in envs:
        env.close()
