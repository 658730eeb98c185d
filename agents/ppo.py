"""PPO for continuous actions with optional continual backprop (Dohare et al., Nature 2024).

Separate policy and value MLPs, a Gaussian policy with a state-independent log-std, GAE, the
clipped surrogate and a value loss; optional entropy bonus, value clipping, gradient clipping,
observation and reward normalization and learning-rate annealing (CleanRL-style runs). CBP, ReDo
and shrink-and-perturb act on both networks after every minibatch update, on the activations of
that update's forward pass (:class:`~cbp_rl.agents.methods.PlasticityMethods`).

One iteration (:meth:`PPOAgent.iterate`) is a rollout of ``batch_size`` steps over the
sub-environments followed by ``update_epochs`` passes of ``num_minibatches`` minibatch updates.
The pure pieces, :func:`compute_gae`, :func:`gaussian_log_prob` and :func:`ppo_loss`, are tested
against hand computations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
import tyro
from torch import Tensor, nn

from cbp_rl.agents.config import (
    MeasureSettings,
    MethodSettings,
    NetworkSettings,
    OptimizerSettings,
    RunSettings,
)
from cbp_rl.agents.methods import PlasticityMethods
from cbp_rl.agents.networks import build_mlp, build_optimizer, replacement_init
from cbp_rl.agents.normalization import ObservationNormalizer, RewardScaler
from cbp_rl.agents.runner import (
    AgentContext,
    Episode,
    Iteration,
    derive_seed,
    episodes_from_infos,
)
from cbp_rl.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.envs.vector import EnvDescription, final_observations, info_means
from cbp_rl.metrics import action_saturation

__all__ = [
    "GaussianPolicy",
    "PPOAgent",
    "PPOConfig",
    "PPOLoss",
    "PPOSettings",
    "compute_gae",
    "gaussian_entropy",
    "gaussian_log_prob",
    "ppo_loss",
]

PresetName = Literal["standard", "ns", "l2", "redo", "cbp", "cleanrl"]
AdvantageNorm = Literal["batch", "minibatch", "off"]
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PPOSettings:
    """PPO: rollout, losses and update."""

    batch_size: int = 2048
    """Environment steps per rollout, all sub-envs together (num_envs x steps per env)."""
    num_minibatches: int = 16
    """Minibatches per epoch; the minibatch size is batch_size / num_minibatches."""
    update_epochs: int = 10
    """Passes over the rollout per update."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """Clip range of the probability ratio in the surrogate objective."""
    value_coef: float = 1.0
    """Weight of the value loss mean((V - return)^2) in the total loss (CleanRL's 0.5 * 0.5
    equals 0.25 here)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    clip_value_loss: bool = False
    """Clip the value loss around the rollout's values (CleanRL)."""
    value_clip_coef: float = 0.2
    """Clip range of the value change when --clip-value-loss."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    advantage_norm: AdvantageNorm = "batch"
    """Normalize advantages to zero mean, unit std over the whole batch (the paper),
    per minibatch (CleanRL), or not."""
    target_kl: float = 0.0
    """Stop the epochs of an update early when the approximate KL exceeds this (0 = never)."""
    truncation_as_termination: bool = False
    """Treat time-limit truncation as termination (the paper's behaviour); otherwise bootstrap
    from the value of the last observation."""
    separate_optimizers: bool = False
    """One optimizer per network instead of one over both (the paper)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy."""
    normalize_obs: bool = False
    """Normalize observations with running mean and std."""
    obs_clip: float = 10.0
    """Clip normalized observations to +-this."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    reward_clip: float = 10.0
    """Clip scaled rewards to +-this."""
    clip_actions: bool = False
    """Clip actions to the action bounds before the env sees them (the paper sends them
    unclipped; MuJoCo clamps controls itself)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_minibatches", "update_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into {self.num_minibatches} "
                "equal minibatches; choose num_minibatches dividing batch_size"
            )
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError("gamma and gae_lambda must be in [0, 1]")
        for name in ("clip_coef", "value_clip_coef", "obs_clip", "reward_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("value_coef", "entropy_coef", "max_grad_norm", "target_kl"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


Group = tyro.conf.OmitArgPrefixes


@dataclass(frozen=True)
class PPOConfig:
    """PPO (with --cbp: continual backprop) on a continuous-action Gymnasium env."""

    preset: PresetName | None = None
    """Settings to start from (flags given override them): standard (the paper's PPO: Adam
    (0.9, 0.999)), ns (Adam betas 0.99), l2 (betas 0.99, weight decay 1e-3), redo (betas 0.99,
    wd 1e-4, ReDo 0.1 every 100 updates), cbp (betas 0.99, wd 1e-4, CBP rr 1e-4 mt 1e4; also
    chosen by --cbp), cleanrl (CleanRL's ppo_continuous_action defaults)."""
    run: Annotated[RunSettings, Group] = field(default_factory=RunSettings)
    ppo: Annotated[PPOSettings, Group] = field(default_factory=PPOSettings)
    network: Annotated[NetworkSettings, Group] = field(default_factory=NetworkSettings)
    optimizer: Annotated[OptimizerSettings, Group] = field(default_factory=OptimizerSettings)
    methods: Annotated[MethodSettings, Group] = field(default_factory=MethodSettings)
    measure: Annotated[MeasureSettings, Group] = field(default_factory=MeasureSettings)

    def __post_init__(self) -> None:
        if self.ppo.batch_size % self.run.num_envs:
            raise ValueError(
                f"batch_size {self.ppo.batch_size} does not split over {self.run.num_envs} "
                "environments; choose num_envs dividing batch_size"
            )

    @property
    def steps_per_env(self) -> int:
        """Steps of each sub-env per rollout."""
        return self.ppo.batch_size // self.run.num_envs


# --------------------------------------------------------------------------- pure pieces


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """``log N(actions; mean, exp(log_std)^2)`` summed over the action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return -(0.5 * z.square() + log_std + _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian: ``sum(0.5 + log sqrt(2 pi) + log_std)``."""
    return (0.5 + _LOG_SQRT_2PI + log_std).sum()


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    ended: Tensor,
    *,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and returns of a ``[T, N]`` rollout.

    Args:
        rewards: ``r_t``.
        values: ``V(s_t)``.
        next_values: ``V`` of the state each transition led to: ``V(s_{t+1})`` within an
            episode, ``V`` of the last observation where the episode was truncated.
        terminated: transitions after which nothing is bootstrapped (termination, and
            truncation when it is treated as termination).
        ended: transitions that ended their episode (terminated or truncated): the advantage
            does not look past them.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - V(s_t)`` and
    ``A_t = delta_t + gamma * lambda * (1 - ended_t) * A_{t+1}``; returns are ``A + V``.
    """
    deltas = rewards + gamma * next_values * (~terminated) - values
    carry = (gamma * gae_lambda) * (~ended).to(rewards.dtype)
    deltas_np, carry_np = deltas.cpu().numpy(), carry.cpu().numpy()
    advantages = np.empty_like(deltas_np)
    running = np.zeros(deltas_np.shape[1:], dtype=deltas_np.dtype)
    for t in range(len(deltas_np) - 1, -1, -1):
        running = deltas_np[t] + carry_np[t] * running
        advantages[t] = running
    advantages_t = torch.from_numpy(advantages).to(rewards.device)
    return advantages_t, advantages_t + values


class PPOLoss(NamedTuple):
    """The loss of one minibatch and its parts (diagnostics detached)."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    *,
    clip_coef: float,
    value_coef: float = 1.0,
    entropy_coef: float = 0.0,
    value_clip_coef: float | None = None,
) -> PPOLoss:
    """``policy + value_coef * value - entropy_coef * entropy`` for one minibatch.

    ``policy = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))`` with
    ``ratio = exp(log_prob - old_log_prob)``; ``value = mean((V - R)^2)``, or with
    ``value_clip_coef`` ``mean(max((V - R)^2, (V_old + clip(V - V_old, +-vc) - R)^2))``.
    Diagnostics: ``approx_kl = mean((ratio - 1) - log ratio)`` (Schulman's k3 estimator) and
    the fraction of ratios outside ``[1 - c, 1 + c]``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    policy = torch.max(-advantages * ratio, -advantages * clipped).mean()
    squared = (values - returns).square()
    if value_clip_coef is not None:
        moved = old_values + (values - old_values).clamp(-value_clip_coef, value_clip_coef)
        squared = torch.max(squared, (moved - returns).square())
    value = squared.mean()
    total = policy + value_coef * value
    if entropy_coef:
        total = total - entropy_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return PPOLoss(
        total, policy.detach(), value.detach(), entropy.detach(), approx_kl, clip_fraction
    )


# --------------------------------------------------------------------------- networks


class GaussianPolicy(nn.Module):
    """``N(mean_net(obs), exp(log_std)^2)`` with a state-independent ``log_std``."""

    def __init__(
        self, obs_dim: int, action_dim: int, network: NetworkSettings, *, init_log_std: float
    ) -> None:
        super().__init__()
        head_gain = 0.01 if network.init == "orthogonal" else 1.0  # CleanRL's policy head
        self.mean_net = build_mlp(obs_dim, action_dim, network, output_gain=head_gain)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> Tensor:
        """The mean action."""
        mean: Tensor = self.mean_net(obs)
        return mean


class PolicyBatch(NamedTuple):
    """A flattened rollout, ready for minibatches."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor


class RolloutBuffer:
    """``[T, N]`` storage of one rollout (T steps of N sub-envs)."""

    def __init__(
        self, steps: int, num_envs: int, obs_dim: int, action_dim: int, device: torch.device
    ) -> None:
        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.obs = zeros(steps, num_envs, obs_dim)
        self.actions = zeros(steps, num_envs, action_dim)
        self.log_probs = zeros(steps, num_envs)
        self.values = zeros(steps, num_envs)
        self.rewards = zeros(steps, num_envs)
        self.next_values = zeros(steps, num_envs)
        self.terminated = zeros(steps, num_envs, dtype=torch.bool)
        self.ended = zeros(steps, num_envs, dtype=torch.bool)


# --------------------------------------------------------------------------- the agent


class PPOAgent:
    """PPO on a vector env; implements :class:`cbp_rl.agents.runner.Agent`."""

    def __init__(self, context: AgentContext) -> None:
        config: PPOConfig = context.config
        self.config = config
        self.settings = config.ppo
        self.envs = context.envs
        self.description: EnvDescription = context.description
        self.device = context.device
        self.num_envs = config.run.num_envs
        self.steps_per_env = config.steps_per_env
        self.batch_size = config.ppo.batch_size
        obs_dim, action_dim = self.description.observation_dim, self.description.action_dim
        seed = context.seed
        torch.manual_seed(derive_seed(seed, "networks"))
        self.policy = GaussianPolicy(
            obs_dim, action_dim, config.network, init_log_std=config.ppo.init_log_std
        ).to(self.device)
        self.value = build_mlp(obs_dim, 1, config.network).to(self.device)
        self.optimizers = self._make_optimizers()
        self.methods = PlasticityMethods(
            {"policy": self.policy.mean_net, "value": self.value},
            self._optimizer_by_network,
            config.methods,
            init=replacement_init(config.network, config.methods.cbp_init),
            seed=derive_seed(seed, "methods"),
        )
        self.obs_normalizer = (
            ObservationNormalizer((obs_dim,), clip=config.ppo.obs_clip).to(self.device)
            if config.ppo.normalize_obs
            else None
        )
        self.reward_scaler = (
            RewardScaler(self.num_envs, gamma=config.ppo.gamma, clip=config.ppo.reward_clip)
            if config.ppo.normalize_reward
            else None
        )
        self.action_generator = torch.Generator(self.device).manual_seed(
            derive_seed(seed, "actions")
        )
        self.minibatch_generator = torch.Generator().manual_seed(derive_seed(seed, "minibatches"))
        self.buffer = RolloutBuffer(
            self.steps_per_env, self.num_envs, obs_dim, action_dim, self.device
        )
        self.action_low = torch.tensor(self.description.action_low, device=self.device)
        self.action_high = torch.tensor(self.description.action_high, device=self.device)
        self.global_step = 0
        self.iteration = 0
        self.updates = 0
        self.num_iterations = math.ceil(config.run.total_steps / self.batch_size)
        self.observations = np.zeros((self.num_envs, obs_dim))

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        settings = self.config.optimizer
        policy_params = list(self.policy.parameters())
        value_params = list(self.value.parameters())
        if self.settings.separate_optimizers:
            policy_opt = build_optimizer(settings, policy_params)
            value_opt = build_optimizer(settings, value_params)
            self._optimizer_by_network = {"policy": policy_opt, "value": value_opt}
            return [policy_opt, value_opt]
        shared = build_optimizer(settings, policy_params + value_params)
        self._optimizer_by_network = {"policy": shared, "value": shared}
        return [shared]

    # ----------------------------------------------------------------- observations
    def start(self, observations: np.ndarray) -> None:
        self.observations = np.array(observations, dtype=np.float64)
        if self.obs_normalizer is not None:
            self.obs_normalizer.update(self._raw(self.observations))
        if self.reward_scaler is not None:
            self.reward_scaler.reset()

    def _raw(self, observations: np.ndarray) -> Tensor:
        return torch.as_tensor(observations, dtype=torch.float64, device=self.device)

    def _normalized(self, observations: np.ndarray) -> Tensor:
        raw = self._raw(observations)
        if self.obs_normalizer is None:
            return raw.to(torch.float32)
        return self.obs_normalizer(raw)

    # ----------------------------------------------------------------- iteration
    def iterate(self) -> Iteration:
        learning_rate = self._anneal_learning_rate()
        episodes, env_info, last_value = self._collect()
        update_started = time.perf_counter()
        batch = self._batch(last_value)
        scalars = self._update(batch)
        scalars["charts/learning_rate"] = learning_rate
        update_seconds = time.perf_counter() - update_started
        self.iteration += 1
        return Iteration(self.batch_size, scalars, episodes, env_info, update_seconds)

    def _anneal_learning_rate(self) -> float:
        base = self.config.optimizer.lr
        if not self.config.optimizer.anneal_lr:
            return base
        fraction = max(0.0, 1.0 - self.iteration / self.num_iterations)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = fraction * base
        return fraction * base

    @torch.no_grad()
    def _collect(self) -> tuple[list[Episode], dict[str, float], Tensor]:
        """One rollout of ``steps_per_env`` vector steps into the buffer."""
        settings, buf = self.settings, self.buffer
        bootstrap_truncation = not settings.truncation_as_termination
        policy, value_net, log_std = self.policy, self.value, self.policy.log_std
        episodes: list[Episode] = []
        infos: dict[str, Any] = {}
        buf.next_values.zero_()
        for t in range(self.steps_per_env):
            obs = self._normalized(self.observations)
            with torch.inference_mode():
                mean = policy(obs)
                values = value_net(obs).squeeze(-1)
                noise = torch.randn(mean.shape, generator=self.action_generator, device=self.device)
                actions = mean + log_std.exp() * noise
                log_probs = gaussian_log_prob(mean, log_std, actions)
            buf.obs[t] = obs
            buf.actions[t] = actions
            buf.log_probs[t] = log_probs
            buf.values[t] = values
            env_actions = actions
            if settings.clip_actions:
                env_actions = torch.max(torch.min(actions, self.action_high), self.action_low)
            next_obs, rewards, terminated, truncated, infos = self.envs.step(
                env_actions.cpu().numpy()
            )
            ended = terminated | truncated
            ended_t = torch.as_tensor(ended, device=self.device)
            buf.ended[t] = ended_t
            buf.terminated[t] = (
                torch.as_tensor(terminated, device=self.device) if bootstrap_truncation else ended_t
            )
            rewards_t = torch.as_tensor(rewards, device=self.device)
            if self.reward_scaler is not None:
                rewards_t = self.reward_scaler(rewards_t, ended_t)
            buf.rewards[t] = rewards_t
            if bootstrap_truncation and (truncated & ~terminated).any():
                self._bootstrap_truncated(t, infos, np.flatnonzero(truncated & ~terminated))
            if self.obs_normalizer is not None:
                self.obs_normalizer.update(self._raw(next_obs))
            self.observations = next_obs
            self.global_step += self.num_envs
            episodes.extend(episodes_from_infos(infos, self.global_step))
        with torch.inference_mode():
            last_value = value_net(self._normalized(self.observations)).squeeze(-1)
        return episodes, info_means(infos, self.description.logged_info_keys), last_value

    def _bootstrap_truncated(self, t: int, infos: dict[str, Any], indices: np.ndarray) -> None:
        """Store ``V(last observation)`` of the episodes truncated at step ``t``."""
        finals = final_observations(infos)
        last = np.stack([finals[int(i)] for i in indices])
        with torch.inference_mode():
            values = self.value(self._normalized(last)).squeeze(-1)
        self.buffer.next_values[t, torch.as_tensor(indices, device=self.device)] = values

    def _batch(self, last_value: Tensor) -> PolicyBatch:
        """GAE over the rollout, flattened to ``[batch_size, ...]``."""
        buf, settings = self.buffer, self.settings
        next_values = buf.next_values.clone()
        next_values[:-1] = torch.where(buf.ended[:-1], next_values[:-1], buf.values[1:])
        next_values[-1] = torch.where(buf.ended[-1], next_values[-1], last_value)
        advantages, returns = compute_gae(
            buf.rewards,
            buf.values,
            next_values,
            buf.terminated,
            buf.ended,
            gamma=settings.gamma,
            gae_lambda=settings.gae_lambda,
        )
        advantages = advantages.reshape(-1)
        if settings.advantage_norm == "batch":
            advantages = _standardize(advantages)
        return PolicyBatch(
            buf.obs.reshape(self.batch_size, -1),
            buf.actions.reshape(self.batch_size, -1),
            buf.log_probs.reshape(-1),
            buf.values.reshape(-1),
            advantages,
            returns.reshape(-1),
        )

    def _update(self, batch: PolicyBatch) -> dict[str, float]:
        """``update_epochs`` passes of minibatch updates; returns the mean diagnostics."""
        settings = self.settings
        size, count = settings.minibatch_size, settings.num_minibatches
        params = [
            p for optimizer in self.optimizers for g in optimizer.param_groups for p in g["params"]
        ]
        value_clip = settings.value_clip_coef if settings.clip_value_loss else None
        totals = torch.zeros(5, device=self.device)
        updates = replaced = 0
        for _epoch in range(settings.update_epochs):
            order = torch.randperm(self.batch_size, generator=self.minibatch_generator)
            order = order.to(self.device)
            for k in range(count):
                index = order[k * size : (k + 1) * size]
                loss = self._minibatch_loss(batch, index, value_clip)
                for optimizer in self.optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                if settings.max_grad_norm:
                    nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                for optimizer in self.optimizers:
                    optimizer.step()
                replaced += self.methods.after_update()
                totals += torch.stack(
                    [loss.policy, loss.value, loss.entropy, loss.approx_kl, loss.clip_fraction]
                )
                updates += 1
            if settings.target_kl and float(loss.approx_kl) > settings.target_kl:
                break
        self.updates += updates
        means = (totals / updates).tolist()
        return {
            "train/policy_loss": means[0],
            "train/value_loss": means[1],
            "train/entropy": means[2],
            "train/approx_kl": means[3],
            "train/clip_fraction": means[4],
            "train/explained_variance": _explained_variance(batch.values, batch.returns),
            "train/log_std": float(self.policy.log_std.detach().mean()),
            "train/minibatch_updates": float(updates),
            "train/replaced_units": float(replaced),
        }

    def _minibatch_loss(
        self, batch: PolicyBatch, index: Tensor, value_clip: float | None
    ) -> PPOLoss:
        settings = self.settings
        obs = batch.obs[index]
        mean = self.policy(obs)
        values = self.value(obs).squeeze(-1)
        log_std = self.policy.log_std
        log_probs = gaussian_log_prob(mean, log_std, batch.actions[index])
        advantages = batch.advantages[index]
        if settings.advantage_norm == "minibatch":
            advantages = _standardize(advantages)
        return ppo_loss(
            log_probs,
            batch.log_probs[index],
            advantages,
            values,
            batch.values[index],
            batch.returns[index],
            gaussian_entropy(log_std),
            clip_coef=settings.clip_coef,
            value_coef=settings.value_coef,
            entropy_coef=settings.entropy_coef,
            value_clip_coef=value_clip,
        )

    # ----------------------------------------------------------------- measures
    def plasticity_networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy.mean_net, "value": self.value}

    def probe_inputs(self, size: int) -> dict[str, Tensor]:
        obs = self.buffer.obs.reshape(self.batch_size, -1)
        stride = max(1, self.batch_size // size)
        probe = obs[::stride][:size]
        return {"policy": probe, "value": probe}

    def plasticity_extras(self, inputs: Mapping[str, Tensor]) -> dict[str, float]:
        with torch.no_grad():
            mean = self.policy(inputs["policy"])
        return {
            "policy/action_saturation": action_saturation(mean, self.action_low, self.action_high)
        }

    def replacement_counts(self) -> dict[str, list[int]]:
        return self.methods.replacement_counts()

    def act_deterministic(self, observations: np.ndarray) -> np.ndarray:
        """The mean actions for raw observations (evaluation)."""
        with torch.inference_mode():
            mean = self.policy(self._normalized(observations))
        return mean.cpu().numpy()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "methods": self.methods.state_dict(),
            "obs_normalizer": None
            if self.obs_normalizer is None
            else self.obs_normalizer.state_dict(),
            "reward_scaler": None
            if self.reward_scaler is None
            else self.reward_scaler.state_dict(),
            "action_generator": torch_generator_state(self.action_generator),
            "minibatch_generator": torch_generator_state(self.minibatch_generator),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "updates": self.updates,
            "observations": torch.from_numpy(np.array(self.observations, dtype=np.float64)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"the state has {len(state['optimizers'])} optimizer(s), this agent "
                f"{len(self.optimizers)}"
            )
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.methods.load_state_dict(state["methods"])
        for name in ("obs_normalizer", "reward_scaler"):
            module = getattr(self, name)
            if (module is None) != (state[name] is None):
                raise ValueError(
                    f"{name} is {'off' if module is None else 'on'} here but not in the state"
                )
            if module is not None:
                module.load_state_dict(state[name])
        restore_torch_generator(self.action_generator, state["action_generator"])
        restore_torch_generator(self.minibatch_generator, state["minibatch_generator"])
        observations = state["observations"].cpu().numpy()
        if observations.shape != self.observations.shape:
            raise ValueError(
                f"the state holds observations of shape {observations.shape}, this agent "
                f"{self.observations.shape}"
            )
        self.observations = observations
        self.global_step = int(state["global_step"])
        self.iteration = int(state["iteration"])
        self.updates = int(state["updates"])


def _standardize(values: Tensor) -> Tensor:
    return (values - values.mean()) / (values.std() + 1e-8)


def _explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)``; NaN when the target is constant."""
    variance = target.var()
    if float(variance) == 0.0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / variance)
