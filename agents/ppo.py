"""PPO for continuous actions with optional continual backprop (Dohare et al., Nature 2024).

Separate policy and value MLPs, a Gaussian policy with a state-independent log-std, GAE, the
clipped surrogate and a value loss; optional entropy bonus, value clipping, gradient clipping,
observation and reward normalization and learning-rate annealing (CleanRL-style runs). CBP, ReDo
and shrink-and-perturb act on both networks after every minibatch update, on the activations of
that update's forward pass (:class:`~cbp_rl.agents.methods.PlasticityMethods`).

One iteration (:meth:`PPOAgent.iterate`) is a rollout of ``batch_size`` steps over the
sub-environments followed by ``update_epochs`` passes of ``num_minibatches`` minibatch updates.
:func:`compute_gae` is tested against hand computations. The update takes the losses and their
gradients at the heads in closed form (:func:`policy_head`, :func:`value_head`, tested against
autograd of the same losses) and backpropagates them through the networks with autograd; the
policy and the value network update in parallel threads.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
import tyro
from torch import Tensor, nn

from cbp_rl.agents.config import (
    FieldMethodsConfig,
    MeasureConfig,
    MethodsConfig,
    NetworkConfig,
    OptimizerConfig,
    RunConfig,
)
from cbp_rl.agents.methods import PlasticityMethods
from cbp_rl.agents.networks import (
    build_mlp,
    build_optimizer,
    gaussian_entropy,
    gaussian_log_prob,
    gaussian_log_prob_of_squares,
)
from cbp_rl.agents.normalization import ObservationNormalizer, RewardScaler
from cbp_rl.agents.runner import (
    AgentContext,
    Episode,
    Iteration,
    VectorAgent,
    episodes_from_infos,
)
from cbp_rl.envs.vector import final_observations, info_means
from cbp_rl.methods import ProximalFeatures
from cbp_rl.metrics import action_saturation
from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.run.conventions import finite_floats
from cbp_rl.run.seeding import derive_seed

__all__ = [
    "GaussianPolicy",
    "PPOAgent",
    "PPOAlgorithmConfig",
    "PPOConfig",
    "PolicyBatch",
    "PolicyHead",
    "compute_gae",
    "policy_head",
    "value_head",
]

PresetName = Literal["standard", "ns", "l2", "redo", "cbp", "cleanrl"]
AdvantageNorm = Literal["batch", "minibatch", "off"]


@finite_floats
@dataclass(frozen=True)
class PPOAlgorithmConfig:
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
    """Weight of the value loss mean((V - R)^2); CleanRL's vf_coef 0.5 is 0.25 here."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    clip_value_loss: bool = False
    """Clip the value loss around the rollout's values (CleanRL)."""
    value_clip_coef: float = 0.2
    """Clip range of the value change when --clip-value-loss."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    advantage_norm: AdvantageNorm = "batch"
    """Standardize advantages over the batch (the paper), per minibatch, or off."""
    target_kl: float = 0.0
    """Stop the epochs of an update early when the approximate KL exceeds this (0 = never)."""
    truncation_as_termination: bool = False
    """Treat time-limit truncation as termination (paper); else bootstrap."""
    separate_optimizers: bool = False
    """Give the value network its own learning rate, --value-lr."""
    value_lr: float = 0.0
    """Learning rate of the value network with --separate-optimizers (0 = --lr)."""
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
    parallel_update: bool = True
    """Update policy and value net in two threads (same numbers as one after another)."""
    clip_actions: bool = False
    """Clip actions to the bounds before the env (the paper sends them unclipped)."""

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
        for name in ("value_coef", "entropy_coef", "max_grad_norm", "target_kl", "value_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


Group = tyro.conf.OmitArgPrefixes


@finite_floats
@dataclass(frozen=True)
class PPOConfig:
    """PPO (with --cbp: continual backprop) on a continuous-action Gymnasium env.

    The defaults are the paper's standard PPO on Ant (the ``standard`` preset).
    """

    preset: PresetName = "standard"
    """Start from: standard, ns, l2, redo, cbp (also --cbp), cleanrl; flags override it."""
    run: Annotated[RunConfig, Group] = field(default_factory=RunConfig)
    ppo: Annotated[PPOAlgorithmConfig, Group] = field(
        default_factory=lambda: PPOAlgorithmConfig(truncation_as_termination=True)
    )
    network: Annotated[NetworkConfig, Group] = field(default_factory=NetworkConfig)
    optimizer: Annotated[OptimizerConfig, Group] = field(default_factory=OptimizerConfig)
    methods: Annotated[MethodsConfig, Group] = field(default_factory=MethodsConfig)
    field_methods: Annotated[FieldMethodsConfig, Group] = field(default_factory=FieldMethodsConfig)
    measure: Annotated[MeasureConfig, Group] = field(default_factory=MeasureConfig)

    def __post_init__(self) -> None:
        self.field_methods.check_with(self.methods)
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


class PolicyHead(NamedTuple):
    """The policy loss of a minibatch, its gradients and diagnostics, computed without autograd."""

    loss: Tensor
    grad_mean: Tensor
    """d loss / d mean action, ``[B, A]``: backpropagate it through the mean network."""
    grad_log_std: Tensor
    """d loss / d log_std, ``[A]``."""
    stats: Tensor
    """``[surrogate loss, entropy, approx_kl, clip_fraction]``."""


@torch.no_grad()
def policy_head(
    mean: Tensor,
    log_std: Tensor,
    actions: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    *,
    clip_coef: float,
    entropy_coef: float = 0.0,
) -> PolicyHead:
    """PPO's clipped surrogate ``mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))``,
    ``ratio = exp(lp - lp_old)``, of the Gaussian policy ``N(mean, exp(log_std)^2)``, minus
    ``entropy_coef`` times its entropy, and the gradient with respect to ``mean`` and
    ``log_std``.

    The same derivative autograd takes (ties of the max and the clip bounds included), in a few
    tensor operations: with ``z = (a - mean) / std``, ``d lp / d mean = z / std`` and
    ``d lp / d log_std = z^2 - 1``. Tested against autograd. Diagnostics: ``approx_kl =
    mean((ratio - 1) - log ratio)`` (Schulman's k3 estimator of KL(old || new)) and the fraction
    of ratios outside ``[1 - c, 1 + c]``.
    """
    inverse_std = torch.exp(-log_std)
    z = (actions - mean) * inverse_std
    z_squared = z.square()
    log_prob = gaussian_log_prob_of_squares(z_squared, log_std)
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    negative_advantages = -advantages
    clamped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    unclipped = negative_advantages * ratio
    clipped = negative_advantages * clamped
    loss = torch.max(unclipped, clipped).mean()
    # d max(u, c) / d ratio as a weight on d u / d ratio: 1 inside the clip range (there u == c
    # and the clamp passes the gradient), else 1 where u is the larger, 1/2 on a tie, 0 below
    inside_or_larger = (ratio == clamped) | (unclipped > clipped)
    weight = torch.where(inside_or_larger, 1.0, 0.5 * (unclipped == clipped))
    grad_log_prob = (unclipped * weight / len(ratio)).unsqueeze(-1)
    grad_mean = grad_log_prob * z * inverse_std
    grad_log_std = (grad_log_prob * (z_squared - 1.0)).sum(0)
    entropy = gaussian_entropy(log_std)
    ratio_minus_one = ratio - 1.0
    approx_kl = (ratio_minus_one - log_ratio).mean()
    clip_fraction = (ratio_minus_one.abs() > clip_coef).float().mean()
    stats = torch.stack([loss, entropy, approx_kl, clip_fraction])
    if not entropy_coef:
        return PolicyHead(loss, grad_mean, grad_log_std, stats)
    return PolicyHead(loss - entropy_coef * entropy, grad_mean, grad_log_std - entropy_coef, stats)


@torch.no_grad()
def value_head(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    *,
    value_coef: float = 1.0,
    clip_coef: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The value loss ``mean((V - R)^2)`` (with ``clip_coef``, CleanRL's clipped version
    ``mean(max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2))``) and the gradient of
    ``value_coef`` times it with respect to the values, without autograd (the same derivative,
    ties included)."""
    scale = 2.0 * value_coef / len(values)
    error = values - returns
    if clip_coef is None:
        return error.square().mean(), scale * error
    change = values - old_values
    moved_error = old_values + change.clamp(-clip_coef, clip_coef) - returns
    plain, moved = error.square(), moved_error.square()
    to_plain = (plain > moved).float() + 0.5 * (plain == moved).float()
    inside = ((change >= -clip_coef) & (change <= clip_coef)).float()
    grad = scale * (to_plain * error + (1.0 - to_plain) * inside * moved_error)
    return torch.max(plain, moved).mean(), grad


# --------------------------------------------------------------------------- networks


class GaussianPolicy(nn.Module):
    """``N(mean_net(obs), exp(log_std)^2)`` with a state-independent ``log_std``."""

    def __init__(
        self, obs_dim: int, action_dim: int, network: NetworkConfig, *, init_log_std: float
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
    features: Tensor
    """PFO: the rollout policy's last hidden pre-activations ``[B, units]`` (``[B, 0]`` when
    PFO is off)."""


class RolloutBuffer:
    """``[T, N, ...]`` observations and actions of one rollout (T steps of N sub-envs)."""

    def __init__(
        self, steps: int, num_envs: int, obs_dim: int, action_dim: int, device: torch.device
    ) -> None:
        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.obs = zeros(steps, num_envs, obs_dim)
        self.actions = zeros(steps, num_envs, action_dim)


class _Rollout:
    """What a rollout collected besides the buffer: env outcomes as numpy, episodes."""

    def __init__(self, steps: int, num_envs: int) -> None:
        self.rewards = np.zeros((steps, num_envs), dtype=np.float64)
        self.terminated = np.zeros((steps, num_envs), dtype=bool)
        self.truncated = np.zeros((steps, num_envs), dtype=bool)
        self.finals: list[tuple[int, int, Tensor]] = []
        """(step, env, normalized last observation) of episodes truncated by the time limit."""
        self.episodes: list[Episode] = []
        self.env_info: dict[str, float] = {}
        self.noise = torch.empty(0)
        self.last_obs = torch.empty(0)


# --------------------------------------------------------------------------- the agent


class PPOAgent(VectorAgent):
    """PPO on a vector env; implements :class:`cbp_rl.agents.runner.Agent`."""

    def __init__(self, context: AgentContext) -> None:
        super().__init__(context)
        config: PPOConfig = context.config
        self.config = config
        self.settings = config.ppo
        self.steps_per_env = config.steps_per_env
        self.batch_size = config.ppo.batch_size
        obs_dim, action_dim = self.description.observation_dim, self.description.action_dim
        seed = context.seed
        torch.manual_seed(derive_seed(seed, "networks"))
        self.policy = GaussianPolicy(
            obs_dim, action_dim, config.network, init_log_std=config.ppo.init_log_std
        ).to(self.device)
        self.value = build_mlp(obs_dim, 1, config.network).to(self.device)
        self.optimizers = self._make_optimizers(derive_seed(seed, "optimizer"))
        self.initial_lrs = {
            name: float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()
        }
        self.methods = PlasticityMethods.of_run(
            {"policy": self.policy.mean_net, "value": self.value}, self.optimizers, config, seed
        )
        field_methods = config.field_methods
        self.pfo = (
            ProximalFeatures(self.policy.mean_net, coef=field_methods.pfo_coef)
            if field_methods.pfo_coef
            else None
        )
        self.pfo_total = 0.0
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
        self._pool = ThreadPoolExecutor(1) if config.ppo.parallel_update else None

    def _make_optimizers(self, seed: int) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per network.

        Adam, AdamW, SGD and ResettableAdam update each parameter from its own gradient and
        state, so one optimizer over both networks (the paper) and one per network with the same
        settings compute the same numbers; one per network lets the two update in parallel.
        With --separate-optimizers the value network gets its own learning rate.
        """
        settings = self.config.optimizer
        value_settings = settings
        if self.settings.separate_optimizers and self.settings.value_lr:
            value_settings = dataclasses.replace(settings, lr=self.settings.value_lr)
        return {
            "policy": build_optimizer(
                settings, list(self.policy.parameters()), self.config.field_methods, seed=seed
            ),
            "value": build_optimizer(
                value_settings,
                list(self.value.parameters()),
                self.config.field_methods,
                seed=seed + 1,
            ),
        }

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
        rollout = self._collect()
        update_started = time.perf_counter()
        batch = self._batch(rollout)
        scalars = self._update(batch)
        scalars["charts/learning_rate"] = learning_rate
        update_seconds = time.perf_counter() - update_started
        self.iteration += 1
        return Iteration(
            self.batch_size, scalars, rollout.episodes, rollout.env_info, update_seconds
        )

    def _anneal_learning_rate(self) -> float:
        base = self.config.optimizer.lr
        if not self.config.optimizer.anneal_lr:
            return base
        fraction = max(0.0, 1.0 - self.iteration / self.num_iterations)
        for name, optimizer in self.optimizers.items():
            start = self.initial_lrs[name]
            for group in optimizer.param_groups:
                group["lr"] = fraction * start
        return fraction * base

    @torch.no_grad()
    def _collect(self) -> _Rollout:
        """One rollout of ``steps_per_env`` vector steps.

        Only the policy's mean runs per step; the weights do not change during a rollout, so the
        action noise is drawn for the whole rollout at once, and the log-probabilities and values
        are computed for all steps together afterwards (in :meth:`_batch`).
        """
        settings, buf = self.settings, self.buffer
        steps, num_envs = self.steps_per_env, self.num_envs
        rollout = _Rollout(steps, num_envs)
        noise = torch.randn(buf.actions.shape, generator=self.action_generator, device=self.device)
        rollout.noise = noise
        std = self.policy.log_std.exp()
        mean_net = self.policy.mean_net
        bootstrap = not settings.truncation_as_termination
        infos: dict[str, Any] = {}
        for t in range(steps):
            obs = self._normalized(self.observations)
            buf.obs[t] = obs
            with torch.inference_mode():
                actions = torch.addcmul(mean_net(obs), std, noise[t])
            buf.actions[t] = actions
            if settings.clip_actions:
                actions = torch.max(torch.min(actions, self.action_high), self.action_low)
            next_obs, rewards, terminated, truncated, infos = self.envs.step(actions.cpu().numpy())
            rollout.rewards[t] = rewards
            rollout.terminated[t] = terminated
            rollout.truncated[t] = truncated
            if bootstrap and truncated.any():
                finals = final_observations(infos)
                for i in np.flatnonzero(truncated & ~terminated):
                    rollout.finals.append((t, int(i), self._normalized(finals[int(i)][None])))
            if self.reward_scaler is not None:
                rollout.rewards[t] = self.reward_scaler.scale(rewards, terminated | truncated)
            if self.obs_normalizer is not None:
                self.obs_normalizer.update(self._raw(next_obs))
            self.observations = next_obs
            self.global_step += num_envs
            if "_episode" in infos:
                rollout.episodes.extend(episodes_from_infos(infos, self.global_step))
        rollout.last_obs = self._normalized(self.observations)
        rollout.env_info = info_means(infos, self.description.logged_info_keys)
        return rollout

    def _batch(self, rollout: _Rollout) -> PolicyBatch:
        """Log-probabilities, values and GAE of a rollout, flattened to ``[batch_size, ...]``."""
        buf, settings = self.buffer, self.settings
        steps, num_envs = self.steps_per_env, self.num_envs
        device = self.device
        with torch.inference_mode():
            log_probs = gaussian_log_prob(rollout.noise, self.policy.log_std)
            everything = torch.cat([buf.obs.reshape(self.batch_size, -1), rollout.last_obs])
            values_all = self.value(everything).squeeze(-1)
            values = values_all[: self.batch_size].reshape(steps, num_envs)
            last_value = values_all[self.batch_size :]
            final_values = (
                self.value(torch.cat([obs for _, _, obs in rollout.finals])).squeeze(-1)
                if rollout.finals
                else None
            )
        terminated = torch.from_numpy(rollout.terminated).to(device)
        truncated = torch.from_numpy(rollout.truncated).to(device)
        ended = terminated | truncated
        if settings.truncation_as_termination:
            terminated = ended
        next_values = torch.zeros(steps, num_envs, device=device)
        next_values[:-1] = values[1:]
        next_values[-1] = last_value
        next_values.masked_fill_(ended, 0.0)
        if final_values is not None:
            rows = torch.tensor([t for t, _, _ in rollout.finals], device=device)
            cols = torch.tensor([i for _, i, _ in rollout.finals], device=device)
            next_values[rows, cols] = final_values
        rewards = torch.from_numpy(rollout.rewards).to(device=device, dtype=torch.float32)
        advantages, returns = compute_gae(
            rewards,
            values,
            next_values,
            terminated,
            ended,
            gamma=settings.gamma,
            gae_lambda=settings.gae_lambda,
        )
        advantages = advantages.reshape(-1)
        if settings.advantage_norm == "batch":
            advantages = _standardize(advantages)
        obs = buf.obs.reshape(self.batch_size, -1)
        return PolicyBatch(
            obs,
            buf.actions.reshape(self.batch_size, -1),
            log_probs.reshape(-1).clone(),
            values.reshape(-1).clone(),
            advantages,
            returns.reshape(-1),
            self._old_features(obs),
        )

    @torch.no_grad()
    def _old_features(self, obs: Tensor) -> Tensor:
        """PFO's ``phi_old``: the policy's last hidden pre-activations before the update."""
        if self.pfo is None:
            return obs.new_zeros(len(obs), 0)
        self.policy(obs)
        return self.pfo.features().detach().flatten(1)

    def _update(self, batch: PolicyBatch) -> dict[str, float]:
        """``update_epochs`` passes of minibatch updates; returns the mean diagnostics.

        The policy and the value network are updated by independent parts (each its loss, its
        optimizer, its CBP), in two threads when ``parallel_update``; both orders give the same
        numbers. Gradient clipping by the global norm couples them: then they go in lockstep.
        """
        settings = self.settings
        size, count = settings.minibatch_size, settings.num_minibatches
        policy_part = _PartUpdate(self, "policy", self._policy_backward)
        value_part = _PartUpdate(self, "value", self._value_backward)
        epochs = 0
        for _epoch in range(settings.update_epochs):
            order = torch.randperm(self.batch_size, generator=self.minibatch_generator)
            order = order.to(self.device)
            # one gather per epoch; the minibatches are slices of it (views)
            shuffled = [tensor[order] for tensor in batch]
            minibatches = [
                PolicyBatch(*(tensor[k * size : (k + 1) * size] for tensor in shuffled))
                for k in range(count)
            ]
            if settings.max_grad_norm:
                self._lockstep_epoch(policy_part, value_part, minibatches)
            elif self._pool is not None:
                pending = self._pool.submit(value_part.epoch, minibatches)
                policy_part.epoch(minibatches)
                pending.result()
            else:
                policy_part.epoch(minibatches)
                value_part.epoch(minibatches)
            epochs += 1
            if settings.target_kl and float(policy_part.last[2]) > settings.target_kl:
                break
        updates = epochs * count
        self.updates += updates
        assert policy_part.totals is not None and value_part.totals is not None
        policy_means = (policy_part.totals / updates).tolist()
        value_mean = float(value_part.totals[0]) / updates
        return {
            "train/policy_loss": policy_means[0],
            "train/value_loss": value_mean,
            "train/entropy": policy_means[1],
            "train/approx_kl": policy_means[2],
            "train/clip_fraction": policy_means[3],
            "train/explained_variance": _explained_variance(batch.values, batch.returns),
            "train/log_std": float(self.policy.log_std.detach().mean()),
            "train/epochs": float(epochs),
            "train/replaced_units": float(policy_part.replaced + value_part.replaced),
            **self._penalty_scalars(policy_part, value_part, updates),
        }

    def _penalty_scalars(
        self, policy_part: _PartUpdate, value_part: _PartUpdate, updates: int
    ) -> dict[str, float]:
        """``train/penalty/<network>``: the mean L2 Init + Parseval penalty, and
        ``train/pfo_penalty`` when those methods are on."""
        out = {}
        field = self.config.field_methods
        if field.l2_init or field.parseval:
            out["train/penalty/policy"] = policy_part.penalty / updates
            out["train/penalty/value"] = value_part.penalty / updates
        if self.pfo is not None:
            out["train/pfo_penalty"] = self.pfo_total / updates
            self.pfo_total = 0.0
        return out

    def _lockstep_epoch(
        self, policy_part: _PartUpdate, value_part: _PartUpdate, minibatches: list[PolicyBatch]
    ) -> None:
        params = [
            p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]
        ]
        for minibatch in minibatches:
            policy_part.backward(minibatch)
            value_part.backward(minibatch)
            nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
            policy_part.step()
            value_part.step()

    def _policy_backward(self, minibatch: PolicyBatch) -> Tensor:
        """Gradients of the policy loss on a minibatch into ``.grad``; returns its diagnostics
        ``[surrogate loss, entropy, approx_kl, clip_fraction]``.

        The loss head's gradient is computed in closed form (:func:`policy_head`) and
        backpropagated through the mean network by autograd.
        """
        settings = self.settings
        mean = self.policy(minibatch.obs)
        advantages = minibatch.advantages
        if settings.advantage_norm == "minibatch":
            advantages = _standardize(advantages)
        head = policy_head(
            mean.detach(),
            self.policy.log_std.detach(),
            minibatch.actions,
            minibatch.log_probs,
            advantages,
            clip_coef=settings.clip_coef,
            entropy_coef=settings.entropy_coef,
        )
        if self.pfo is not None:
            penalty = self.pfo.penalty(minibatch.features)
            self.pfo_total += float(penalty.detach())
            # one backward pass: the head's closed-form gradient and PFO's autograd one
            torch.autograd.backward([mean, penalty], [head.grad_mean, torch.ones_like(penalty)])
        else:
            mean.backward(head.grad_mean)
        self.policy.log_std.grad = head.grad_log_std
        return head.stats

    def _value_backward(self, minibatch: PolicyBatch) -> Tensor:
        """Gradients of ``value_coef *`` the value loss into ``.grad``; returns ``[loss]``."""
        settings = self.settings
        values = self.value(minibatch.obs).squeeze(-1)
        loss, grad = value_head(
            values.detach(),
            minibatch.values,
            minibatch.returns,
            value_coef=settings.value_coef,
            clip_coef=settings.value_clip_coef if settings.clip_value_loss else None,
        )
        values.backward(grad)
        return loss.unsqueeze(0)

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

    def close(self) -> None:
        """Stop the update thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
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
        self.methods.restore_structure(state["methods"])  # injected heads first
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self._load_optimizers(self.optimizers, state["optimizers"])
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
        self._restore_observations(state["observations"])
        self.global_step = int(state["global_step"])
        self.iteration = int(state["iteration"])
        self.updates = int(state["updates"])


class _PartUpdate:
    """The updates of one network: its gradients, optimizer step and plasticity methods."""

    def __init__(
        self, agent: PPOAgent, name: str, gradients: Callable[[PolicyBatch], Tensor]
    ) -> None:
        self.name = name
        self.optimizer = agent.optimizers[name]
        self.methods = agent.methods
        self.gradients = gradients
        self.totals: Tensor | None = None
        self.last = torch.zeros(4)
        self.replaced = 0
        self.penalty = 0.0

    def backward(self, minibatch: PolicyBatch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.gradients(minibatch)
        penalty = self.methods.penalty(self.name)
        if penalty is not None:  # L2 Init, Parseval: their gradients join the loss's
            penalty.backward()
            self.penalty += float(penalty.detach())
        self.totals = stats if self.totals is None else self.totals + stats
        self.last = stats

    def step(self) -> None:
        self.optimizer.step()
        self.replaced += self.methods.after_update(self.name)

    def epoch(self, minibatches: list[PolicyBatch]) -> None:
        for minibatch in minibatches:
            self.backward(minibatch)
            self.step()


def _standardize(values: Tensor) -> Tensor:
    return (values - values.mean()) / (values.std() + 1e-8)


def _explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)``; NaN when the target is constant."""
    variance = target.var()
    if float(variance) == 0.0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / variance)
