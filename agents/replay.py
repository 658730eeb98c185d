"""A replay buffer for off-policy agents: a ring of transitions with observations stored once.

Transitions of ``num_envs`` sub-environments stepping in lockstep are stored in rows (one row per
vector step). Each observation is stored once: the next observation of a transition is the
observation of the row after it, except where the episode ended (terminated or truncated); the
vector envs then return the next episode's first observation, and the ended episode's true last
observation is kept in a side ring of final observations. So a buffer of a million Hopper
transitions takes about ``1e6 x (11 + 3 + 2)`` numbers (~64 MB), not twice the observations.

``terminated`` is kept apart from ``ended``: a transition cut by the time limit (truncated) is
bootstrapped from its final observation; only a terminated one is not.

Storage is numpy (``np.zeros``: pages are committed only when written, so a large capacity costs
nothing until it fills); batches are gathered as torch tensors with a seeded ``torch.Generator``.
``state_dict()`` holds the filled part only, as compact tensors, so checkpoints grow with the
buffer and a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ReplayBatch", "ReplayBuffer"]

_ARRAYS = ("obs", "actions", "rewards", "terminated", "ended", "final_index", "finals")


class ReplayBatch(NamedTuple):
    """A batch of transitions ``(s, a, r, s', terminated)``."""

    obs: Tensor
    """``[B, obs_dim]`` float32."""
    actions: Tensor
    """``[B, action_dim]`` float32, as stored (the agent's action space)."""
    rewards: Tensor
    """``[B]`` float32."""
    next_obs: Tensor
    """``[B, obs_dim]``: the observation the transition led to (the final one at an episode end)."""
    terminated: Tensor
    """``[B]`` float32, 1 where the episode terminated (no bootstrap), 0 otherwise."""


class ReplayBuffer:
    """A ring of ``capacity`` transitions from ``num_envs`` lockstep sub-environments.

    Use: :meth:`start` with the first observations, then :meth:`add` after every vector step,
    :meth:`sample` for batches. The oldest transitions are overwritten once ``capacity`` (rounded
    up to whole rows of ``num_envs``) are stored.

    Examples:
        >>> buffer = ReplayBuffer(100, num_envs=1, obs_dim=2, action_dim=1)
        >>> buffer.start(np.zeros((1, 2)))
        >>> buffer.add(np.ones((1, 1)), np.array([0.5]), np.array([False]), np.array([False]),
        ...            np.full((1, 2), 7.0), {})
        >>> batch = buffer.sample(1, torch.Generator().manual_seed(0))
        >>> batch.next_obs.tolist(), batch.rewards.tolist()
        ([[7.0, 7.0]], [0.5])
    """

    def __init__(
        self,
        capacity: int,
        *,
        num_envs: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1 or num_envs < 1 or obs_dim < 1 or action_dim < 1:
            raise ValueError(
                "capacity, num_envs, obs_dim and action_dim must be positive, got "
                f"{capacity}, {num_envs}, {obs_dim}, {action_dim}"
            )
        self.capacity = int(capacity)
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        # one row more than the transitions need: the last row holds the pending observations
        self.rows = math.ceil(self.capacity / self.num_envs) + 1
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self._allocate()

    def _allocate(self) -> None:
        """Empty storage (``np.zeros``: memory is committed only as rows are written)."""
        shape = (self.rows, self.num_envs)
        self.obs = np.zeros((*shape, self.obs_dim), dtype=np.float32)
        self.actions = np.zeros((*shape, self.action_dim), dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.ended = np.zeros(shape, dtype=bool)
        self.final_index = np.zeros(shape, dtype=np.int64)
        """Where the final observation of an ended transition is, in ``finals``."""
        self.finals = np.zeros(((self.rows - 1) * self.num_envs, self.obs_dim), dtype=np.float32)
        self.cursor = 0
        """The row of the pending observations (whose actions are not taken yet)."""
        self.rows_added = 0
        """Rows of transitions added in all (grows past ``rows``)."""
        self.finals_added = 0
        self.started = False
        self._views = {name: torch.from_numpy(getattr(self, name)) for name in _ARRAYS}

    # ----------------------------------------------------------------- size
    @property
    def filled_rows(self) -> int:
        """Rows of complete transitions (at most ``rows - 1``)."""
        return min(self.rows_added, self.rows - 1)

    def __len__(self) -> int:
        """Transitions that can be sampled."""
        return self.filled_rows * self.num_envs

    # ----------------------------------------------------------------- writing
    def start(self, observations: np.ndarray) -> None:
        """Begin new episodes in every sub-env from ``observations`` ``[num_envs, obs_dim]``.

        If transitions are stored whose next observation was pending (a restart in the middle of
        episodes, e.g. an env that cannot be snapshotted on resume), they are marked as
        truncated, with the pending observation as their final one.
        """
        observations = self._check_rows(observations, "observations")
        if self.rows_added:
            last = (self.cursor - 1) % self.rows
            open_envs = np.flatnonzero(~self.ended[last])
            if len(open_envs):
                self._store_finals(last, open_envs, self.obs[self.cursor, open_envs])
        self.obs[self.cursor] = observations
        self.started = True

    def add(
        self,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_observations: np.ndarray,
        final_observations: dict[int, np.ndarray],
    ) -> None:
        """Store one vector step taken from the pending observations.

        Args:
            actions: ``[num_envs, action_dim]`` as the agent wants them back.
            rewards: ``[num_envs]`` from ``envs.step``.
            terminated: ``[num_envs]`` from ``envs.step``.
            truncated: ``[num_envs]`` from ``envs.step``.
            next_observations: ``[num_envs, obs_dim]`` from ``envs.step`` (the next episode's
                first observation where one ended: same-step autoreset).
            final_observations: the true last observation of each ended episode, by sub-env
                (:func:`cbp_rl.envs.vector.final_observations`).
        """
        if not self.started:
            raise RuntimeError("call start(observations) before add()")
        actions = self._check_rows(actions, "actions")
        next_observations = self._check_rows(next_observations, "next_observations")
        ended = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        ended_envs = np.flatnonzero(ended)
        missing = [int(i) for i in ended_envs if int(i) not in final_observations]
        if missing:
            raise ValueError(f"sub-envs {missing} ended without a final observation")
        row = self.cursor
        self.actions[row] = actions
        self.rewards[row] = rewards
        self.terminated[row] = terminated
        self.ended[row] = ended
        if len(ended_envs):
            finals = np.stack([final_observations[int(i)] for i in ended_envs])
            self._store_finals(row, ended_envs, finals)
        self.cursor = (row + 1) % self.rows
        self.obs[self.cursor] = next_observations
        self.rows_added += 1

    def _store_finals(self, row: int, envs: np.ndarray, observations: np.ndarray) -> None:
        # A ring as long as the transitions: a final is overwritten only after its transition.
        size = len(self.finals)
        slots = (self.finals_added + np.arange(len(envs))) % size
        self.finals[slots] = observations
        self.final_index[row, envs] = slots
        self.ended[row, envs] = True
        self.finals_added += len(envs)

    def _check_rows(self, values: np.ndarray, name: str) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[0] != self.num_envs:
            raise ValueError(
                f"{name} must be [num_envs={self.num_envs}, ...], got shape {values.shape}"
            )
        return values

    # ----------------------------------------------------------------- reading
    def sample(self, batch_size: int, generator: torch.Generator) -> ReplayBatch:
        """``batch_size`` transitions drawn uniformly with replacement with ``generator`` (on
        any device; the storage stays on the CPU, batches move to the buffer's ``device``)."""
        count = len(self)
        if count == 0:
            raise RuntimeError("the replay buffer is empty: add transitions before sampling")
        # drawn on the generator's device (an agent on CUDA keeps its generators there)
        picks = torch.randint(count, (batch_size,), generator=generator, device=generator.device)
        return self._gather(picks.cpu())

    def latest(self, size: int) -> ReplayBatch:
        """The most recent ``size`` transitions (at most all), oldest first."""
        count = len(self)
        if count == 0:
            raise RuntimeError("the replay buffer is empty")
        size = min(size, count)
        return self._gather(torch.arange(count - size, count))

    def _gather(self, picks: Tensor) -> ReplayBatch:
        """Transitions by position, 0 = the oldest stored."""
        views = self._views
        oldest = (self.cursor - self.filled_rows) % self.rows
        rows = (picks // self.num_envs + oldest) % self.rows
        envs = picks % self.num_envs
        next_obs = views["obs"][(rows + 1) % self.rows, envs]
        ended = views["ended"][rows, envs]
        if bool(ended.any()):
            where = torch.nonzero(ended).squeeze(1)
            finals = views["final_index"][rows[where], envs[where]]
            next_obs[where] = views["finals"][finals]
        batch = ReplayBatch(
            views["obs"][rows, envs],
            views["actions"][rows, envs],
            views["rewards"][rows, envs],
            next_obs,
            views["terminated"][rows, envs].float(),
        )
        if self.device.type == "cpu":
            return batch
        return ReplayBatch(*(t.to(self.device, non_blocking=True) for t in batch))

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer as compact tensors, and its positions."""
        used = min(self.rows_added + 1, self.rows) if self.started else 0
        finals = min(self.finals_added, len(self.finals))
        views = self._views
        state: dict[str, Any] = {
            name: views[name][:used].clone()
            for name in ("obs", "actions", "rewards", "terminated", "ended", "final_index")
        }
        state["finals"] = views["finals"][:finals].clone()
        state.update(
            capacity=self.capacity,
            num_envs=self.num_envs,
            cursor=self.cursor,
            rows_added=self.rows_added,
            finals_added=self.finals_added,
            started=self.started,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` for a buffer of another shape."""
        if (state["capacity"], state["num_envs"]) != (self.capacity, self.num_envs):
            raise ValueError(
                f"the saved replay buffer holds {state['capacity']} transitions of "
                f"{state['num_envs']} envs, this one {self.capacity} of {self.num_envs}"
            )
        for name, target in self._views.items():
            saved = state[name]
            if saved.shape[1:] != target.shape[1:] or len(saved) > len(target):
                raise ValueError(
                    f"the saved replay buffer's {name} has shape {tuple(saved.shape)}, which "
                    f"does not fit {tuple(target.shape)}"
                )
        self._allocate()
        for name, target in self._views.items():
            saved = state[name]
            target[: len(saved)] = saved
        self.cursor = int(state["cursor"])
        self.rows_added = int(state["rows_added"])
        self.finals_added = int(state["finals_added"])
        self.started = bool(state["started"])
