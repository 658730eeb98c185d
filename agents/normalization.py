"""Observation and reward normalization for vectorized rollouts, with checkpointable state.

Both work on the whole batch of sub-environments in the agent (not inside each env), in float64,
and keep their statistics in buffers, so ``state_dict()`` holds all of it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ObservationNormalizer", "RewardScaler", "RunningMeanStd"]


class RunningMeanStd(nn.Module):
    """Running mean and variance over batches (Chan et al.'s parallel update), in float64."""

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, shape: tuple[int, ...] = (), *, epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Fold in a batch ``[B, *shape]``."""
        batch = batch.to(torch.float64)
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean.add_(delta * batch_count / total)
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta.square() * self.count * (batch_count / total)
        )
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObservationNormalizer(nn.Module):
    """``clip((obs - mean) / sqrt(var + 1e-8), -clip, clip)`` with running statistics."""

    def __init__(self, shape: tuple[int, ...], *, clip: float = 10.0) -> None:
        super().__init__()
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.clip = float(clip)
        self.rms = RunningMeanStd(shape)

    def update(self, obs: Tensor) -> None:
        """Fold a batch of raw observations ``[B, *shape]`` into the statistics."""
        self.rms.update(obs)

    @torch.no_grad()
    def forward(self, obs: Tensor) -> Tensor:
        """Normalized float32 observations."""
        scaled = (obs.to(torch.float64) - self.rms.mean) / torch.sqrt(self.rms.var + 1e-8)
        return scaled.clamp_(-self.clip, self.clip).to(torch.float32)


class RewardScaler(nn.Module):
    """Rewards divided by the running std of the discounted return, then clipped (as SB3's
    VecNormalize and CleanRL's NormalizeReward): each sub-env keeps its discounted return,
    reset when its episode ends. Works on the numpy rewards of the env; stays on the CPU."""

    returns: Tensor

    def __init__(self, num_envs: int, *, gamma: float, clip: float = 10.0) -> None:
        super().__init__()
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.gamma = float(gamma)
        self.clip = float(clip)
        self.rms = RunningMeanStd(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def scale(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Scaled rewards of one step; ``ended`` marks the sub-envs whose episode ended."""
        returns = self.returns.numpy()  # a view: the buffer is updated in place
        returns *= self.gamma
        returns += rewards
        self.rms.update(torch.from_numpy(returns.copy()))
        scaled = np.clip(rewards / np.sqrt(float(self.rms.var) + 1e-8), -self.clip, self.clip)
        returns[ended] = 0.0
        return scaled

    def reset(self) -> None:
        """Forget the running discounted returns (new episodes in every sub-env)."""
        self.returns.zero_()
