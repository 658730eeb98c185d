"""EnvPool (C++ vectorized MuJoCo envs) behind the same vector API as the Gymnasium vectorizers.

``--vector-mode envpool`` steps the stationary Gymnasium MuJoCo ids (``Ant-v4``, ``Hopper-v4``,
``Walker2d-v5``, ...) in EnvPool's thread pool instead of Gymnasium's Python envs.
:class:`EnvPoolVectorEnv` gives them the semantics the agents expect from the other vectorizers:

- Gymnasium's spaces (those of ``gymnasium.make(id)``; EnvPool's are checked to have the same
  shapes and bounds), float64 observations and rewards, float actions passed on as float64.
- Gymnasium's ``TimeLimit``: EnvPool's own episode limit is switched off and this class counts
  the steps, so an episode that ends unhealthy on its last allowed step is ``terminated`` *and*
  ``truncated``, as in Gymnasium (EnvPool alone reports it as truncated only).
- Same-step autoreset (``AutoresetMode.SAME_STEP``): a finished sub-env is reset within the step
  that ended its episode; ``info["final_obs"]`` / ``info["_final_obs"]`` hold the last
  observations. EnvPool alone resets on the next step and ignores that step's action.
- Seeds as in Gymnasium's vector envs: ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i``
  (EnvPool takes seeds only when the pool is built, so the pool is rebuilt).

EnvPool has no state snapshot: a checkpoint of an EnvPool run holds the learner exactly but the
episodes in progress are restarted on resume (:func:`capture_pool_state`,
:func:`restore_pool_state`). The project's envs that edit the MuJoCo model while running
(SlipperyAnt, the schedule wrappers of :mod:`cbp_rl.envs`) need Gymnasium's envs and are refused
by :func:`envpool_make_kwargs`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from cbp_rl.envs.vector import _episode_statistics, resolve_vector_mode

__all__ = [
    "ENVPOOL_MODE",
    "EnvPoolVectorEnv",
    "capture_pool_state",
    "envpool_available",
    "envpool_make_kwargs",
    "envpool_task_ids",
    "is_envpool",
    "make_envpool_vector_env",
    "restore_pool_state",
]

ENVPOOL_MODE = "envpool"
INSTALL_HINT = "install it with `pip install 'cbp_rl[envpool]'` (or `pip install envpool`)"
GYMNASIUM_VECTOR_MODES = "--vector-mode auto, sync, async or batched"

_NO_LIMIT = 2**30
"""EnvPool's own episode limit, set out of reach: :class:`EnvPoolVectorEnv` counts the steps."""

_RENAMED = {"use_contact_forces": "use_contact_force"}
"""Gymnasium keyword arguments that EnvPool spells differently (same meaning)."""

_NOT_PASSED = ("xml_file", "render_mode", "width", "height", "camera_id")
"""Gymnasium keyword arguments that cannot mean the same in EnvPool (its own assets, no
rendering here)."""


def envpool_available() -> bool:
    """Whether the ``envpool`` package is installed."""
    return importlib.util.find_spec("envpool") is not None


def _envpool() -> Any:
    if not envpool_available():
        raise ValueError(f"--vector-mode envpool needs the envpool package: {INSTALL_HINT}")
    import envpool

    return envpool


def envpool_task_ids() -> tuple[str, ...]:
    """The Gymnasium MuJoCo ids EnvPool implements (``Ant-v4``, ``Hopper-v5``, ...)."""
    _envpool()
    from envpool.registration import registry

    return tuple(
        sorted(
            task_id
            for task_id, (module, _, _) in registry.specs.items()
            if module == "envpool.mujoco.gym"
        )
    )


def _is_gymnasium_mujoco(env_id: str) -> bool:
    entry_point = gym.spec(env_id).entry_point
    return isinstance(entry_point, str) and entry_point.startswith("gymnasium.envs.mujoco.")


def envpool_make_kwargs(
    env_id: str, env_kwargs: dict[str, Any], *, has_schedule: bool
) -> dict[str, Any]:
    """Check that EnvPool can run ``env_id`` as Gymnasium does; its ``envpool.make`` keywords.

    ``env_id`` must be a registered Gymnasium id (see ``check_env_id``). Raises ``ValueError``
    naming the problem and the fix: an env that edits its MuJoCo model while running (SlipperyAnt,
    a schedule wrapper), an id that is not one of Gymnasium's own MuJoCo envs or that EnvPool does
    not implement, a missing envpool package, or a ``gym.make`` keyword argument with no
    equivalent in EnvPool. ``max_episode_steps`` is not passed on: the time limit is
    :class:`EnvPoolVectorEnv`'s.
    """
    edits_model = has_schedule or env_id.startswith("SlipperyAnt")
    if edits_model or not _is_gymnasium_mujoco(env_id):
        why = (
            f"{env_id} changes its MuJoCo model while it runs (friction or another physics "
            "parameter on a schedule), which only Gymnasium's MuJoCo envs allow"
            if edits_model
            else f"{env_id} is not one of Gymnasium's own MuJoCo environments"
        )
        raise ValueError(
            f"--vector-mode envpool cannot run {env_id}: {why}. EnvPool runs the stationary "
            f"Gymnasium MuJoCo ids (Ant-v4, Hopper-v4, ...); use {GYMNASIUM_VECTOR_MODES}"
        )
    envpool = _envpool()
    supported = envpool_task_ids()
    if env_id not in supported:
        raise ValueError(
            f"EnvPool does not implement {env_id}; it has {', '.join(supported)}. Use "
            f"{GYMNASIUM_VECTOR_MODES} for other envs"
        )
    config = envpool.make_spec(env_id).config
    names = set(config._fields) if hasattr(config, "_fields") else set(dict(config))
    return _translate_kwargs(env_id, env_kwargs, names)


def _translate_kwargs(env_id: str, env_kwargs: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """Gymnasium keywords as EnvPool's: same names, ``use_contact_forces`` renamed, each
    ``X_range=(low, high)`` as ``X_min`` / ``X_max``."""
    accepted = _gymnasium_parameters(env_id)
    result: dict[str, Any] = {}
    refused = []
    for name, value in env_kwargs.items():
        if name == "max_episode_steps":
            continue
        target = _RENAMED.get(name, name)
        if name in _NOT_PASSED or name not in accepted:
            refused.append(name)
        elif target in names:
            result[target] = value
        elif name.endswith("_range") and f"{name[:-6]}_min" in names:
            low, high = value
            result[f"{name[:-6]}_min"] = float(low)
            if f"{name[:-6]}_max" in names:
                result[f"{name[:-6]}_max"] = float(high)
            elif high != float("inf"):
                refused.append(name)
        else:
            refused.append(name)
    if refused:
        raise ValueError(
            f"--env-kwargs {', '.join(sorted(refused))}: no equivalent in EnvPool's {env_id}; "
            f"drop them or use {GYMNASIUM_VECTOR_MODES}"
        )
    return result


def _gymnasium_parameters(env_id: str) -> set[str]:
    entry_point = gym.spec(env_id).entry_point
    assert isinstance(entry_point, str)
    module, _, name = entry_point.partition(":")
    env_class = getattr(importlib.import_module(module), name)
    return set(inspect.signature(env_class.__init__).parameters) - {"self", "kwargs"}


class EnvPoolVectorEnv(VectorEnv):
    """An EnvPool of ``num_envs`` sub-envs with Gymnasium's semantics (see the module docstring).

    The pool runs in sync mode (every step steps all sub-envs) on ``num_threads`` threads; each
    sub-env is stepped by one thread at a time from its own random generator, so results do not
    depend on the number of threads. ``info`` holds EnvPool's per-step numeric entries (reward
    terms, positions, velocities) and, for ended episodes, ``final_obs`` / ``_final_obs``.

    Args:
        env_id: an id of :func:`envpool_task_ids`.
        num_envs: sub-environments.
        num_threads: EnvPool's threads (0: one per CPU core, at most ``num_envs``).
        make_kwargs: ``envpool.make`` keywords (:func:`envpool_make_kwargs`).
        max_episode_steps: Gymnasium's time limit (``None``: none).
        observation_space: one sub-env's observation space, as Gymnasium's env has it.
        action_space: one sub-env's action space, as Gymnasium's env has it.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        num_threads: int,
        make_kwargs: dict[str, Any],
        max_episode_steps: int | None,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env_id = env_id
        self.num_envs = num_envs
        self.num_threads = num_threads
        self.make_kwargs = dict(make_kwargs)
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self._boxes = {"observation": observation_space, "action": action_space}
        self.observation_space = gym.vector.utils.batch_space(observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = None
        self.closed = False
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._pool: Any = None
        self._build(seeds=[i for i in range(num_envs)])
        self._check_spaces()

    def _build(self, seeds: Sequence[int]) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = _envpool().make(
            self.env_id,
            env_type="gymnasium",
            num_envs=self.num_envs,
            batch_size=self.num_envs,
            num_threads=self.num_threads,
            max_episode_steps=_NO_LIMIT,
            env_seed=[int(s) % 2**31 for s in seeds],
            **self.make_kwargs,
        )

    def _check_spaces(self) -> None:
        theirs_by_kind = {
            "observation": self._pool.observation_space,
            "action": self._pool.action_space,
        }
        for what, theirs in theirs_by_kind.items():
            ours = self._boxes[what]
            if not (
                isinstance(theirs, gym.spaces.Box)
                and ours.shape == theirs.shape
                # bounds compared in Gymnasium's dtype (its float32 actions round EnvPool's)
                and np.array_equal(ours.low, theirs.low.astype(ours.dtype))
                and np.array_equal(ours.high, theirs.high.astype(ours.dtype))
            ):
                self.close()
                raise ValueError(
                    f"EnvPool's {self.env_id} has {what} space {theirs}, Gymnasium's has {ours}: "
                    f"they are not the same env here; use {GYMNASIUM_VECTOR_MODES}"
                )

    # ----------------------------------------------------------------- vector API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes in every sub-env; with ``seed``, sub-env ``i`` gets ``seed + i``
        (a list gives each its own); without, the generators continue."""
        self._check_open()
        if options:
            raise NotImplementedError("EnvPoolVectorEnv resets all sub-envs; no reset options")
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
            if len(seeds) != self.num_envs or any(s is None for s in seeds):
                raise ValueError(f"give {self.num_envs} integer seeds, got {seeds}")
            self._build([int(s) for s in seeds if s is not None])
        observations, info = self._pool.reset()
        self._elapsed[:] = 0
        return self._ordered(observations, info), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_open()
        batch = np.asarray(actions, dtype=np.float64).reshape(
            self.num_envs, *self._boxes["action"].shape
        )
        observations, rewards, terminated, _, info = self._pool.step(batch)
        order = np.argsort(info["env_id"])
        observations = np.array(observations[order], dtype=self._boxes["observation"].dtype)
        rewards = np.asarray(rewards[order], dtype=np.float64)
        terminated = np.asarray(terminated[order], dtype=bool)
        self._elapsed += 1
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, dtype=bool)
        else:
            truncated = self._elapsed >= self.max_episode_steps
        infos = _numeric_infos(info, order)
        ended = terminated | truncated
        if ended.any():
            ids = np.flatnonzero(ended)
            final_obs = np.empty(self.num_envs, dtype=object)
            for i in ids:
                final_obs[i] = observations[i].copy()
            infos["final_obs"], infos["_final_obs"] = final_obs, ended.copy()
            first, reset_info = self._pool.reset(ids.astype(np.int32))
            observations[reset_info["env_id"]] = first
            self._elapsed[ids] = 0
        return observations, rewards, terminated, truncated, infos

    def _ordered(self, observations: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        box = self._boxes["observation"]
        result = np.empty((self.num_envs, *box.shape), dtype=box.dtype)
        result[info["env_id"]] = observations
        return result

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this EnvPoolVectorEnv is closed")

    def close_extras(self, **kwargs: Any) -> None:
        if not self.closed and self._pool is not None:
            self._pool.close()
        self.closed = True


def _numeric_infos(info: dict[str, Any], order: np.ndarray) -> dict[str, Any]:
    """EnvPool's per-env numeric ``info`` arrays in sub-env order, each with a ``_key`` mask."""
    infos: dict[str, Any] = {}
    every = np.ones(len(order), dtype=bool)
    for key, value in info.items():
        if key in ("env_id", "players", "elapsed_step") or not isinstance(value, np.ndarray):
            continue
        if value.shape == (len(order),) and value.dtype.kind in "fiub":
            infos[key], infos[f"_{key}"] = value[order], every
    return infos


def make_envpool_vector_env(
    env_id: str,
    num_envs: int,
    *,
    num_threads: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> RecordEpisodeStatistics:
    """``num_envs`` EnvPool sub-envs of the Gymnasium MuJoCo id ``env_id``, with same-step
    autoreset and episode statistics, as ``make_vector_env`` builds for the other modes.

    ``env_kwargs`` are ``gym.make`` keywords (translated by :func:`envpool_make_kwargs`;
    ``max_episode_steps`` sets the time limit). Raises ``ValueError`` for an env EnvPool cannot
    run as Gymnasium does. Seed it with ``reset(seed=s)``.
    """
    kwargs = dict(env_kwargs or {})
    make_kwargs = envpool_make_kwargs(env_id, kwargs, has_schedule=False)
    reference = gym.make(env_id, **kwargs)
    try:
        observation_space, action_space = reference.observation_space, reference.action_space
        limit = reference.spec.max_episode_steps if reference.spec is not None else None
    finally:
        reference.close()
    if not isinstance(observation_space, gym.spaces.Box) or not isinstance(
        action_space, gym.spaces.Box
    ):
        raise ValueError(f"{env_id}: EnvPoolVectorEnv supports Box spaces only")
    _, threads = resolve_vector_mode(ENVPOOL_MODE, num_envs, num_threads)
    envs = EnvPoolVectorEnv(
        env_id,
        num_envs,
        num_threads=threads,
        make_kwargs=make_kwargs,
        max_episode_steps=limit,
        observation_space=observation_space,
        action_space=action_space,
    )
    return RecordEpisodeStatistics(envs)


# --------------------------------------------------------------------------- checkpoints


def is_envpool(envs: Any) -> bool:
    """Whether ``envs`` (possibly wrapped) is an :class:`EnvPoolVectorEnv`."""
    return isinstance(getattr(envs, "unwrapped", envs), EnvPoolVectorEnv)


def capture_pool_state(envs: Any, env_id: str) -> dict[str, Any]:
    """What a checkpoint keeps of an EnvPool vector env: its size, id and finished-episode count.

    EnvPool cannot snapshot its simulations, so the episodes in progress are not kept.
    """
    stats = _episode_statistics(envs)
    return {
        "backend": ENVPOOL_MODE,
        "num_envs": envs.num_envs,
        "env_id": env_id,
        "episode_count": int(stats.episode_count) if stats is not None else 0,
    }


def restore_pool_state(envs: Any, env_id: str, state: dict[str, Any], seed: int) -> np.ndarray:
    """Restart the episodes of ``envs`` after a resume, seeded with ``seed``; their first
    observations. Raises ``ValueError`` for a state of another env, size or backend."""
    if state.get("backend") != ENVPOOL_MODE:
        raise ValueError(
            "the checkpoint's environments did not run on EnvPool; resume it with the vector "
            "mode that wrote it (config.json)"
        )
    if state["num_envs"] != envs.num_envs or state["env_id"] != env_id:
        raise ValueError(
            f"the saved environment state is of {state['num_envs']} x {state['env_id']}, "
            f"these are {envs.num_envs} x {env_id}"
        )
    observations, _ = envs.reset(seed=seed)
    stats = _episode_statistics(envs)
    if stats is not None:
        stats.episode_count = int(state["episode_count"])
    return np.asarray(observations)
