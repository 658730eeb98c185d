"""The reference's PPO + CBP loop on Ant, for timing beside ours in one run.

The reference (shibhansh/loss-of-plasticity, ``lop/rl/run_ppo.py`` with ``cfg/ant/cbp.yml``)
runs one env per process and, per env step: a policy forward on one observation with forward
hooks keeping every module's output, a ``Normal`` sample and log-probability, the env step, a
store into Python deques, and its logging of the hidden activations (a row per step, a summary
every 1,000 steps, a stable rank every 10,000). Every 2,048 steps it learns: the buffers
stacked, GAE in a Python loop over the steps, then 10 epochs of 16 minibatches, each a joint
policy and value loss, ``backward``, ``clip_grad_norm_`` (max norm 1e9), one ``Adam`` over both
networks (betas 0.99, 0.99, weight decay 1e-4, lr 1e-4) and the generate-and-test step
(``contribution`` utility, rr 1e-4, mt 1e4) on each network.

:class:`ReferencePPO` does the same tensor operations in the same order (written here, not
copied) on a Gymnasium env, so its speed stands in for the reference's on any machine: the
reference itself needs gym 0.23 and mujoco-py, which do not install here. What differs: the
simulator bindings (Gymnasium's ``Ant-v4`` on ``mujoco`` instead of gym's ``Ant-v3`` on
mujoco-py: the same model, observation without contact forces as our runs use), and the
per-iteration checkpoint and pickle of the logs, left out (ours writes none in the benchmark
either).
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from baselines import ReferenceGenerateAndTest  # benchmarks/baselines.py
from torch import nn
from torch.distributions import Normal

HIDDEN = (256, 256)
BATCH, EPOCHS, SLICES = 2048, 10, 16
GAMMA, LAMBDA, CLIP = 0.99, 0.95, 0.2


def _body(inputs: int, outputs: int) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear, LeCun-uniform weights and zero biases."""
    sizes = [inputs, *HIDDEN]
    modules: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        modules += [nn.Linear(a, b), nn.ReLU()]
    modules.append(nn.Linear(HIDDEN[-1], outputs))
    net = nn.Sequential(*modules)
    for layer in net:
        if isinstance(layer, nn.Linear):
            bound = math.sqrt(3 / layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound)
            layer.bias.data.fill_(0.0)
    return net


class _Logged(nn.Module):
    """A network whose forward hooks record outputs while ``logging`` is set."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net
        self.logging = False
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        for module in net:
            module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if self.logging:
            self.outputs[module] = output

    def run(self, x: torch.Tensor, log: bool) -> torch.Tensor:
        self.logging = log
        out = self.net(x)
        self.logging = False
        return out

    def hidden(self) -> list[torch.Tensor]:
        return [self.outputs[self.net[2 * i + 1]] for i in range(len(HIDDEN))]


def _generate_and_test(net: nn.Sequential) -> ReferenceGenerateAndTest:
    """The Ant CBP config's generate-and-test: ``contribution`` utility, rr 1e-4, maturity
    10,000, probabilistic replacement, lecun bounds (the reference's default ``init``)."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    return ReferenceGenerateAndTest(
        layers, maturity_threshold=10_000, utility="contribution", accumulate=False, gain=1.0
    )


class _Batch(NamedTuple):
    """A rollout as the update reads it."""

    obs: torch.Tensor
    acts: torch.Tensor
    logps: torch.Tensor
    advs: torch.Tensor
    returns: torch.Tensor


class ReferencePPO:
    """The reference's PPO + CBP on one Gymnasium env, stepped by :meth:`run`."""

    def __init__(self, env_id: str = "Ant-v4", seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.env = gym.make(env_id)
        obs_dim = int(np.prod(self.env.observation_space.shape or (1,)))
        self.act_dim = int(np.prod(self.env.action_space.shape or (1,)))
        self.pol = _Logged(_body(obs_dim, self.act_dim))
        self.log_std = nn.Parameter(torch.zeros(self.act_dim))
        self.vf = _Logged(_body(obs_dim, 1))
        params = [*self.pol.parameters(), self.log_std, *self.vf.parameters()]
        self.params = params
        self.opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4, betas=(0.99, 0.99))
        self.pol_gnt = _generate_and_test(self.pol.net)
        self.val_gnt = _generate_and_test(self.vf.net)
        self.buffers: list[collections.deque[Any]] = [collections.deque() for _ in range(6)]
        self.last_obs = np.zeros((1, obs_dim), np.float32)
        self.activity = torch.zeros(1000, len(HIDDEN), HIDDEN[0])
        self.obs, _ = self.env.reset(seed=seed)
        self.step_count = 0

    def _dist(self, x: torch.Tensor, log: bool) -> Normal:
        return Normal(self.pol.run(x, log), torch.exp(self.log_std))

    def _act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, Normal, list[torch.Tensor]]:
        with torch.no_grad():
            dist = self._dist(torch.tensor(obs, dtype=torch.float32).unsqueeze(0), True)
            action = dist.sample()
            logp = dist.log_prob(action).sum(-1, keepdim=True)
        dist.loc.to("cpu")
        dist.scale.to("cpu")
        return action[0].cpu().numpy(), logp.cpu().numpy(), dist, self.pol.hidden()

    def run(self, steps: int) -> tuple[int, float]:
        """Take ``steps`` env steps, learning every 2,048; returns the steps and seconds."""
        started = time.perf_counter()
        for _ in range(steps):
            action, logp, dist, features = self._act(self.obs)
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            done = terminated or truncated
            for buffer, value in zip(
                self.buffers, (self.obs, action, reward, logp, dist, float(done)), strict=True
            ):
                buffer.append(value)
            self.last_obs[:] = next_obs
            if len(self.buffers[0]) >= BATCH:
                self._learn()
                for buffer in self.buffers:
                    buffer.clear()
            self._log(features)
            self.obs = self.env.reset()[0] if done else next_obs
            self.step_count += 1
        return steps, time.perf_counter() - started

    def _log(self, features: list[torch.Tensor]) -> None:
        """The reference's per-step logging of the Ant CBP config's ``to_log``."""
        step = self.step_count
        with torch.no_grad():
            if step % 1000 == 0:
                if step % 10000 == 0:
                    torch.linalg.svdvals(self.activity[:, -1, :])
                _ = (self.activity > 0).float().mean(dim=0)
                self.activity *= 0
                for layers in (self.pol_gnt.layers, self.val_gnt.layers):
                    for layer in layers:
                        _ = layer.weight.data.abs().mean()
            for i in range(len(HIDDEN)):
                self.activity[step % 1000, i] = features[i]

    def _stacked(self) -> tuple[torch.Tensor, ...]:
        o, a, r, logp, dists, done = self.buffers
        obs = torch.as_tensor(np.array(list(o)), dtype=torch.float32).view(-1, self.obs.shape[0])
        acts = torch.as_tensor(np.array(list(a)), dtype=torch.float32).view(-1, self.act_dim)
        rews = torch.as_tensor(np.array(list(r)), dtype=torch.float32).view(-1, 1)
        last = torch.as_tensor(self.last_obs).view(-1, self.obs.shape[0])
        logps = torch.as_tensor(np.array(list(logp)), dtype=torch.float32).view(-1, 1)
        Normal(torch.cat([d.loc for d in dists]), torch.cat([d.scale for d in dists]))
        dones = torch.as_tensor(np.array(list(done)), dtype=torch.float32).view(-1, 1)
        return obs, acts, rews, last, logps, dones

    def _advantages(
        self, rews: torch.Tensor, dones: torch.Tensor, vals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        advs = torch.as_tensor(np.zeros(len(rews) + 1, dtype=np.float32))
        for t in reversed(range(len(rews))):
            delta = rews[t] + (1 - dones[t]) * GAMMA * vals[t + 1] - vals[t]
            advs[t] = delta + (1 - dones[t]) * GAMMA * LAMBDA * advs[t + 1]
        returns = advs[:-1] + vals[:-1]
        advs = advs[:-1].view(-1, 1)
        advs = advs - advs.mean()
        if advs.std() != 0 and not torch.isnan(advs.std()):
            advs /= advs.std()
        return returns.detach().view(-1, 1), advs.detach()

    def _learn(self) -> None:
        obs, acts, rews, last, logps, dones = self._stacked()
        with torch.no_grad():
            values = self.vf.run(torch.cat((obs, last)), False)
        returns, advs = self._advantages(rews, dones, values.t()[0])
        old = [layer.weight.data.clone() for layer in self.pol_gnt.layers]
        batch = _Batch(obs, acts, logps, advs, returns)
        indices = np.arange(len(obs))
        size = BATCH // SLICES
        for _ in range(EPOCHS):
            np.random.shuffle(indices)
            for start in range(0, len(obs), size):
                self._minibatch(batch, indices[start : start + size])
        layers = self.pol_gnt.layers
        _ = sum((w - layer.weight.data).abs().sum() for w, layer in zip(old, layers, strict=True))

    def _minibatch(self, batch: _Batch, ind: np.ndarray) -> None:
        dist = self._dist(batch.obs[ind], True)
        logp = dist.log_prob(torch.as_tensor(batch.acts[ind])).sum(1, keepdim=True)
        ratio = (logp - batch.logps[ind]).exp()
        advs = batch.advs[ind]
        loss = torch.max(-(ratio * advs), -(torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * advs))
        loss = loss.mean()
        values = self.vf.run(batch.obs[ind], True)
        loss += (batch.returns[ind] - values).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, int(1e9))
        self.opt.step()
        with torch.no_grad():
            self.pol_gnt.step(self.pol.hidden())
            self.val_gnt.step(self.vf.hidden())

    def close(self) -> None:
        self.env.close()
