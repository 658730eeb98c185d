"""Soft Actor-Critic for continuous actions with optional continual backprop on every network.

A tanh-squashed Gaussian actor (state-dependent mean and log-std), twin Q critics with
Polyak-averaged target critics, automatic entropy tuning on ``log alpha`` towards a target
entropy of ``-action_dim``, a replay buffer (:class:`~cbp_rl.agents.replay.ReplayBuffer`), a
configurable replay ratio (gradient updates per environment step, fractional too) and a warm-up
of uniformly random actions (Haarnoja et al. 2018; defaults as CleanRL's and Stable-Baselines3's).

CBP, ReDo and shrink-and-perturb act on the actor and on each critic through the shared
:class:`~cbp_rl.agents.methods.PlasticityMethods`, each network with its own
:class:`~cbp_rl.ContinualBackprop`, right after that network's optimizer step, so each sees the
activations of the forward pass of its own update:

- a critic's CBP sees the critic on the sampled batch ``Q(s, a)``: its step comes right after
  the critic update, before the actor update runs the critics on ``(s, pi(s))``;
- the actor's CBP sees the actor on ``s`` of the actor update (the update's first forward pass,
  the target computation's ``pi(s')`` came before and is overwritten);
- the target critics are separate modules without hooks: CBP never reads or writes them, they
  follow the online critics by Polyak averaging (a replaced unit reaches them at rate tau).

One gradient step (:meth:`SACAgent.gradient_step`): sample a batch; critics towards
``r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha log pi(a'|s'))``, ``a' ~ pi(s')``;
their optimizer steps and methods; the actor on ``alpha log pi(a|s) - min_i Q_i(s, a)``,
``a ~ pi(s)`` (every ``policy_frequency`` steps), its optimizer step and methods; ``log alpha``
on ``-log alpha (log pi + target_entropy)``; the targets ``<- (1 - tau) target + tau online``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
import tyro
from torch import Tensor, nn
from torch.nn import functional as F

from cbp_rl.agents.config import (
    FieldMethodsConfig,
    MeasureConfig,
    MethodsConfig,
    NetworkConfig,
    OptimizerConfig,
    RunConfig,
    Steps,
)
from cbp_rl.agents.methods import PlasticityMethods
from cbp_rl.agents.networks import build_mlp, build_optimizer, gaussian_log_prob
from cbp_rl.agents.replay import ReplayBatch, ReplayBuffer
from cbp_rl.agents.runner import AgentContext, Episode, Iteration, VectorAgent, episodes_from_infos
from cbp_rl.envs.vector import final_observations, info_means
from cbp_rl.metrics import action_saturation
from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.run.conventions import finite_floats
from cbp_rl.run.seeding import derive_seed

__all__ = [
    "CRITICS",
    "NETWORKS",
    "ActorOutput",
    "SACAgent",
    "SACAlgorithmConfig",
    "SACConfig",
    "SquashedGaussianActor",
    "build_critic",
    "squashed_gaussian_log_prob",
]

PresetName = Literal["standard", "cbp"]
MethodsOn = Literal["all", "critics", "actor"]
NETWORKS = ("actor", "q1", "q2")
CRITICS = ("q1", "q2")
_LOG_2 = math.log(2.0)
_SATURATION_TOLERANCE = 0.01
"""A squashed action component within this of +-1 counts as saturated (|pre-tanh| > 2.65)."""


@finite_floats
@dataclass(frozen=True)
class SACAlgorithmConfig:
    """SAC: replay, updates, entropy, actor."""

    buffer_size: Steps = 1_000_000
    """Replay buffer capacity in transitions (all sub-envs together); the oldest are dropped."""
    batch_size: int = 256
    """Transitions per gradient update, drawn uniformly with replacement."""
    replay_ratio: float = 1.0
    """Gradient updates per environment step (0.25: one update every 4 steps; 8: eight per step)."""
    warmup_steps: Steps = 5000
    """Steps of uniformly random actions before learning starts (CleanRL's learning_starts)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics: target <- (1 - tau) target + tau online."""
    policy_frequency: int = 1
    """Update the actor and alpha every this many critic updates (1 = every update)."""
    target_update_every: int = 1
    """Polyak-update the target critics every this many critic updates."""
    critic_lr: float = 0.0
    """Learning rate of the critics (0 = --lr)."""
    alpha_lr: float = 0.0
    """Learning rate of log alpha (0 = --lr); its Adam has no weight decay."""
    autotune: bool = True
    """Tune the entropy coefficient alpha automatically towards --target-entropy."""
    init_alpha: float = 1.0
    """Initial alpha (with --autotune) or its fixed value (--no-autotune; CleanRL uses 0.2)."""
    target_entropy: float | None = None
    """Target entropy of the policy for --autotune (None = -action_dim)."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log-std (tanh-rescaled into [min, max], as CleanRL)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std."""
    methods_on: MethodsOn = "all"
    """Networks CBP, ReDo and shrink-and-perturb act on: all (actor, q1, q2), critics, actor."""
    save_replay: bool = True
    """Checkpoints hold the replay buffer (about 4 x (2 + obs + action dims) bytes per
    transition). Resume is exact only with it; without it a resumed run starts from an empty
    buffer, collects --warmup-steps steps with its current policy, then learns on."""
    log_every: Steps = 1000
    """Environment steps per iteration: losses (averaged over its updates) are logged, and
    checkpoints and probes fall due, at this granularity."""

    def __post_init__(self) -> None:
        for name in ("buffer_size", "batch_size", "policy_frequency", "target_update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.replay_ratio) and self.replay_ratio > 0):
            raise ValueError(
                f"replay_ratio must be a positive number of updates per step, got "
                f"{self.replay_ratio}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("critic_lr", "alpha_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 = --lr), got {getattr(self, name)}")
        if not self.init_alpha > 0:
            raise ValueError(f"init_alpha must be positive, got {self.init_alpha}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(
                f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})"
            )
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")

    @property
    def ratio(self) -> Fraction:
        """The replay ratio as an exact fraction (as written: 0.1 is 1/10)."""
        return Fraction(repr(self.replay_ratio)).limit_denominator(1_000_000)


Group = tyro.conf.OmitArgPrefixes


@finite_floats
@dataclass(frozen=True)
class SACConfig:
    """SAC (with --cbp: continual backprop on the actor and both critics) on a continuous-action
    Gymnasium env. The defaults are the ``standard`` preset: CleanRL's and Stable-Baselines3's
    SAC (256-256 ReLU, Adam lr 3e-4, batch 256, tau 0.005, gamma 0.99, auto alpha)."""

    preset: PresetName = "standard"
    """Start from: standard, cbp (also --cbp); flags override it."""
    run: Annotated[RunConfig, Group] = field(
        default_factory=lambda: RunConfig(
            env="Hopper-v4", num_envs=1, total_steps=1_000_000, checkpoint_every=100_000
        )
    )
    sac: Annotated[SACAlgorithmConfig, Group] = field(default_factory=SACAlgorithmConfig)
    network: Annotated[NetworkConfig, Group] = field(
        default_factory=lambda: NetworkConfig(init="default")
    )
    optimizer: Annotated[OptimizerConfig, Group] = field(
        default_factory=lambda: OptimizerConfig(lr=3e-4)
    )
    methods: Annotated[MethodsConfig, Group] = field(default_factory=MethodsConfig)
    field_methods: Annotated[FieldMethodsConfig, Group] = field(default_factory=FieldMethodsConfig)
    measure: Annotated[MeasureConfig, Group] = field(
        default_factory=lambda: MeasureConfig(plasticity_every=10_000)
    )

    def __post_init__(self) -> None:
        self.field_methods.check_with(self.methods)
        if self.sac.log_every % self.run.num_envs:
            raise ValueError(
                f"log_every {self.sac.log_every} is not a whole number of vector steps of "
                f"{self.run.num_envs} environments; choose num_envs dividing log_every"
            )
        if self.field_methods.pfo_coef:
            raise ValueError("--pfo-coef is PPO's (a penalty against the rollout policy)")
        if self.field_methods.injection_every and self.sac.methods_on != "actor":
            raise ValueError(
                "--injection-every on SAC's critics would break their target copies: add "
                "--methods-on actor"
            )

    @property
    def networks_with_methods(self) -> tuple[str, ...]:
        """The networks CBP, ReDo and shrink-and-perturb act on."""
        return {"all": NETWORKS, "critics": CRITICS, "actor": ("actor",)}[self.sac.methods_on]


# --------------------------------------------------------------------------- networks


def squashed_gaussian_log_prob(noise: Tensor, log_std: Tensor, pre_tanh: Tensor) -> Tensor:
    """``log pi(tanh(u))`` for ``u = mean + exp(log_std) * noise``, summed over dimensions.

    ``log N(u; mean, std^2) - sum log(1 - tanh(u)^2)``, with the Gaussian term from the noise
    (``(u - mean) / std = noise``) and the Jacobian term in the overflow-free form
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``.
    """
    gaussian = gaussian_log_prob(noise, log_std)
    jacobian = 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh)).sum(-1)
    return gaussian - jacobian


class ActorOutput(NamedTuple):
    """A sampled action and what the losses need of it."""

    actions: Tensor
    """``tanh(u)`` in ``[-1, 1]``: the agent's action space (scaled to the env's bounds)."""
    log_prob: Tensor
    """``log pi(actions | obs)`` in the ``[-1, 1]`` space, ``[B]``."""
    log_std: Tensor
    """The Gaussian's log-std, ``[B, A]``."""


class SquashedGaussianActor(nn.Module):
    """``tanh(N(mean(s), std(s)^2))``: one MLP ``obs -> [mean, raw log-std]``.

    One MLP whose output layer holds both heads (the same as two heads on a shared trunk), so
    CBP finds its hidden layers. ``log_std = min + (max - min) (tanh(raw) + 1) / 2``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        network: NetworkConfig,
        *,
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min = log_std_min
        self.log_std_half_range = 0.5 * (log_std_max - log_std_min)
        self.net = build_mlp(obs_dim, 2 * action_dim, network)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian's mean and log-std, each ``[B, A]``."""
        mean, raw = self.net(obs).split(self.action_dim, dim=-1)
        log_std = self.log_std_min + self.log_std_half_range * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, obs: Tensor, noise: Tensor) -> ActorOutput:
        """Reparameterized sample with standard normal ``noise`` ``[B, A]``."""
        mean, log_std = self(obs)
        pre_tanh = mean + log_std.exp() * noise
        log_prob = squashed_gaussian_log_prob(noise, log_std, pre_tanh)
        return ActorOutput(torch.tanh(pre_tanh), log_prob, log_std)

    def mode(self, obs: Tensor) -> Tensor:
        """The deterministic action ``tanh(mean)``."""
        mean, _ = self(obs)
        return torch.tanh(mean)


def build_critic(obs_dim: int, action_dim: int, network: NetworkConfig) -> nn.Sequential:
    """``Q(s, a)``: an MLP on the concatenation ``[s, a]`` with one output."""
    return build_mlp(obs_dim + action_dim, 1, network)


def _q_values(critic: nn.Module, obs: Tensor, actions: Tensor) -> Tensor:
    values: Tensor = critic(torch.cat([obs, actions], dim=-1))
    return values.squeeze(-1)


def _target_copy(online: nn.Module, network: NetworkConfig, in_dim: int) -> nn.Sequential:
    """A fresh MLP with ``online``'s weights: no hooks of ``online`` come along (a deepcopy would
    copy CBP's recording hooks), no gradients."""
    target = build_mlp(in_dim, 1, network)
    target.load_state_dict(online.state_dict())
    target.requires_grad_(False)
    return target


# --------------------------------------------------------------------------- the agent


class _Totals:
    """Sums of per-update diagnostics over an iteration (tensors: no sync per update)."""

    def __init__(self) -> None:
        self.critic: Tensor | None = None
        self.actor: Tensor | None = None
        self.critic_updates = 0
        self.actor_updates = 0
        self.replaced = 0

    def add_critic(self, stats: Tensor) -> None:
        self.critic = stats if self.critic is None else self.critic + stats
        self.critic_updates += 1

    def add_actor(self, stats: Tensor) -> None:
        self.actor = stats if self.actor is None else self.actor + stats
        self.actor_updates += 1

    def scalars(self) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.critic is not None:
            means = (self.critic / self.critic_updates).tolist()
            keys = ("q1_loss", "q2_loss", "q1_values", "q2_values", "target_q")
            result.update({f"train/{key}": value for key, value in zip(keys, means, strict=True)})
            result["train/critic_loss"] = 0.5 * (means[0] + means[1])
        if self.actor is not None:
            means = (self.actor / self.actor_updates).tolist()
            keys = ("actor_loss", "entropy", "log_std", "alpha_loss", "alpha")
            result.update({f"train/{key}": value for key, value in zip(keys, means, strict=True)})
        if self.critic_updates:
            result["train/updates"] = float(self.critic_updates)
            result["train/actor_updates"] = float(self.actor_updates)
            result["train/replaced_units"] = float(self.replaced)
        return result


class SACAgent(VectorAgent):
    """SAC on a vector env; implements :class:`cbp_rl.agents.runner.Agent`."""

    def __init__(self, context: AgentContext) -> None:
        super().__init__(context)
        config: SACConfig = context.config
        self.config = config
        self.settings = config.sac
        self.total_steps = config.run.total_steps
        obs_dim, action_dim = self.description.observation_dim, self.description.action_dim
        self.obs_dim, self.action_dim = obs_dim, action_dim
        seed = context.seed
        settings, network = config.sac, config.network
        torch.manual_seed(derive_seed(seed, "networks"))
        self.actor = SquashedGaussianActor(
            obs_dim,
            action_dim,
            network,
            log_std_min=settings.log_std_min,
            log_std_max=settings.log_std_max,
        ).to(self.device)
        self.q1 = build_critic(obs_dim, action_dim, network).to(self.device)
        self.q2 = build_critic(obs_dim, action_dim, network).to(self.device)
        self.q1_target = _target_copy(self.q1, network, obs_dim + action_dim).to(self.device)
        self.q2_target = _target_copy(self.q2, network, obs_dim + action_dim).to(self.device)
        self.log_alpha = torch.tensor(
            math.log(settings.init_alpha), device=self.device, requires_grad=settings.autotune
        )
        self.target_entropy = (
            -float(action_dim) if settings.target_entropy is None else settings.target_entropy
        )
        self.optimizers = self._make_optimizers(derive_seed(seed, "optimizer"))
        self.alpha_optimizer = (
            torch.optim.Adam(
                [self.log_alpha],
                lr=settings.alpha_lr or config.optimizer.lr,
                betas=config.optimizer.betas,
                eps=config.optimizer.eps,
            )
            if settings.autotune
            else None
        )
        self.initial_lrs = {name: _lr(opt) for name, opt in self._all_optimizers().items()}
        networks = self.networks()
        self.methods = PlasticityMethods.of_run(
            {name: networks[name] for name in config.networks_with_methods},
            self.optimizers,
            config,
            seed,
        )
        self.action_generator = torch.Generator(self.device).manual_seed(
            derive_seed(seed, "actions")
        )
        self.update_generator = torch.Generator(self.device).manual_seed(
            derive_seed(seed, "updates")
        )
        self.buffer = ReplayBuffer(
            settings.buffer_size,
            num_envs=self.num_envs,
            obs_dim=obs_dim,
            action_dim=action_dim,
            device=self.device,
        )
        low = np.asarray(self.description.action_low, dtype=np.float32)
        high = np.asarray(self.description.action_high, dtype=np.float32)
        self.action_scale, self.action_center = (high - low) / 2.0, (high + low) / 2.0
        self.ratio = settings.ratio
        self.global_step = 0
        self.updates = 0
        """Gradient updates of the critics so far."""
        self.learning_steps = 0
        """Environment steps taken since learning started: ``updates = floor(ratio * this)``."""
        self.learn_from = settings.warmup_steps
        """The step from which the agent learns (warm-up end, or a refill's end after resume)."""
        self._critic_params: list[Tensor] = [p for q in (self.q1, self.q2) for p in q.parameters()]
        self._target_params: list[Tensor] = [
            p for q in (self.q1_target, self.q2_target) for p in q.parameters()
        ]

    def _make_optimizers(self, seed: int) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per network (the same numbers as one over both critics)."""
        settings = self.config.optimizer
        critic_settings = settings
        if self.settings.critic_lr:
            critic_settings = dataclasses.replace(settings, lr=self.settings.critic_lr)
        return {
            name: build_optimizer(
                critic_settings if name in CRITICS else settings,
                list(getattr(self, name).parameters()),
                self.config.field_methods,
                seed=seed + index,
            )
            for index, name in enumerate(("actor", "q1", "q2"))
        }

    def _all_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = dict(self.optimizers)
        if self.alpha_optimizer is not None:
            optimizers["alpha"] = self.alpha_optimizer
        return optimizers

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name: ``actor`` (its MLP), ``q1``, ``q2``."""
        return {"actor": self.actor.net, "q1": self.q1, "q2": self.q2}

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    # ----------------------------------------------------------------- acting
    def start(self, observations: np.ndarray) -> None:
        self.observations = np.array(observations, dtype=np.float64)
        self.buffer.start(self.observations)

    def _actions(self) -> Tensor:
        """Actions in ``[-1, 1]`` for the current observations: uniform during warm-up, else
        sampled from the policy."""
        shape = (self.num_envs, self.action_dim)
        if self.global_step < self.settings.warmup_steps:
            uniform = torch.rand(shape, generator=self.action_generator, device=self.device)
            return uniform * 2.0 - 1.0
        noise = torch.randn(shape, generator=self.action_generator, device=self.device)
        obs = torch.as_tensor(self.observations, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            return self.actor.sample(obs, noise).actions

    def to_env_actions(self, actions: np.ndarray) -> np.ndarray:
        """``[-1, 1]`` actions scaled to the env's bounds."""
        result: np.ndarray = self.action_center + self.action_scale * actions
        return result

    # ----------------------------------------------------------------- iteration
    def iterate(self) -> Iteration:
        """Steps until the next multiple of ``log_every`` (or the budget), each followed by its
        share of gradient updates."""
        every = self.settings.log_every
        stop = min((self.global_step // every + 1) * every, self.total_steps)
        start_step = self.global_step
        totals = _Totals()
        episodes: list[Episode] = []
        infos: dict[str, Any] = {}
        update_seconds = 0.0
        while self.global_step < stop:
            infos = self._env_step(episodes)
            due = self._updates_due()
            if due:
                started = time.perf_counter()
                self._anneal_learning_rate()
                for _ in range(due):
                    self.gradient_step(totals)
                update_seconds += time.perf_counter() - started
        scalars = totals.scalars()
        scalars["charts/replay_size"] = float(len(self.buffer))
        scalars["charts/updates"] = float(self.updates)
        scalars["charts/learning_rate"] = _lr(self.optimizers["actor"])
        if totals.actor is None:  # no actor update this iteration: the current alpha
            scalars["train/alpha"] = self.alpha
        return Iteration(
            self.global_step - start_step,
            scalars,
            episodes,
            info_means(infos, self.description.logged_info_keys),
            update_seconds,
        )

    def _env_step(self, episodes: list[Episode]) -> dict[str, Any]:
        actions = self._actions().cpu().numpy()
        next_obs, rewards, terminated, truncated, infos = self.envs.step(
            self.to_env_actions(actions)
        )
        finals = final_observations(infos) if (terminated | truncated).any() else {}
        self.buffer.add(actions, rewards, terminated, truncated, next_obs, finals)
        self.observations = next_obs
        before = self.global_step
        self.global_step += self.num_envs
        self.learning_steps += max(0, self.global_step - max(before, self.learn_from))
        if "_episode" in infos:
            episodes.extend(episodes_from_infos(infos, self.global_step))
        return infos

    def _updates_due(self) -> int:
        ratio = self.ratio
        return (ratio.numerator * self.learning_steps) // ratio.denominator - self.updates

    def _anneal_learning_rate(self) -> None:
        if not self.config.optimizer.anneal_lr:
            return
        fraction = max(0.0, 1.0 - self.global_step / self.total_steps)
        for name, optimizer in self._all_optimizers().items():
            for group in optimizer.param_groups:
                group["lr"] = fraction * self.initial_lrs[name]

    # ----------------------------------------------------------------- updates
    def gradient_step(self, totals: _Totals | None = None) -> None:
        """One update: critics (and their methods), actor and alpha every ``policy_frequency``
        updates (and the actor's methods), target critics every ``target_update_every``."""
        settings = self.settings
        batch = self.buffer.sample(settings.batch_size, self.update_generator)
        alpha = self.log_alpha.detach().exp()
        critic_stats, replaced = self.update_critics(batch, alpha)
        self.updates += 1
        if totals is not None:
            totals.add_critic(critic_stats)
            totals.replaced += replaced
        if self.updates % settings.policy_frequency == 0:
            actor_stats, replaced = self.update_actor(batch.obs, alpha)
            if totals is not None:
                totals.add_actor(actor_stats)
                totals.replaced += replaced
        if self.updates % settings.target_update_every == 0:
            self.update_targets()

    def update_critics(self, batch: ReplayBatch, alpha: Tensor) -> tuple[Tensor, int]:
        """One step of both critics towards the soft TD target, then their methods (on this
        forward pass ``Q(s, a)``). Returns ``[q1 loss, q2 loss, mean q1, mean q2, mean target]``
        and the units replaced."""
        settings = self.settings
        with torch.no_grad():
            noise = self._noise(len(batch.obs))
            following = self.actor.sample(batch.next_obs, noise)
            next_q = torch.min(
                _q_values(self.q1_target, batch.next_obs, following.actions),
                _q_values(self.q2_target, batch.next_obs, following.actions),
            )
            soft_value = next_q - alpha * following.log_prob
            target = batch.rewards + settings.gamma * (1.0 - batch.terminated) * soft_value
        q1 = _q_values(self.q1, batch.obs, batch.actions)
        q2 = _q_values(self.q2, batch.obs, batch.actions)
        q1_loss = (q1 - target).square().mean()
        q2_loss = (q2 - target).square().mean()
        for name in CRITICS:
            self.optimizers[name].zero_grad(set_to_none=True)
        (q1_loss + q2_loss + self._penalty(CRITICS)).backward()
        replaced = 0
        for name in CRITICS:
            self.optimizers[name].step()
            replaced += self.methods.after_update(name)
        with torch.no_grad():
            stats = torch.stack([q1_loss, q2_loss, q1.mean(), q2.mean(), target.mean()])
        return stats.detach(), replaced

    def update_actor(self, obs: Tensor, alpha: Tensor) -> tuple[Tensor, int]:
        """One step of the actor on ``alpha log pi - min Q``, then its methods (on this forward
        pass ``pi(s)``), then alpha. Returns ``[actor loss, entropy, mean log-std, alpha loss,
        alpha]`` and the units replaced."""
        sampled = self.actor.sample(obs, self._noise(len(obs)))
        q = torch.min(
            _q_values(self.q1, obs, sampled.actions), _q_values(self.q2, obs, sampled.actions)
        )
        loss = (alpha * sampled.log_prob - q).mean()
        optimizer = self.optimizers["actor"]
        optimizer.zero_grad(set_to_none=True)
        # no gradient into the critics; the actor's trainable parameters now (an injection
        # freezes some and adds others)
        trainable: list[Tensor] = [p for p in self.actor.parameters() if p.requires_grad]
        trainable += self.methods.trainable("actor")
        (loss + self._penalty(("actor",))).backward(inputs=trainable)
        optimizer.step()
        replaced = self.methods.after_update("actor")
        log_prob = sampled.log_prob.detach()
        alpha_loss = self.update_alpha(log_prob)
        with torch.no_grad():
            stats = torch.stack(
                [
                    loss.detach(),
                    -log_prob.mean(),
                    sampled.log_std.detach().mean(),
                    alpha_loss,
                    alpha,
                ]
            )
        return stats, replaced

    def _penalty(self, names: tuple[str, ...]) -> Tensor | float:
        """The L2 Init and Parseval penalties of these networks (0.0 when off)."""
        terms = [p for name in names if (p := self.methods.penalty(name)) is not None]
        return sum(terms[1:], terms[0]) if terms else 0.0

    def update_alpha(self, log_prob: Tensor) -> Tensor:
        """One step of ``log alpha`` on ``-mean(log alpha (log pi + target_entropy))``; returns
        the loss (0 without --autotune). Its gradient is ``-(mean(log pi) + target_entropy)``."""
        if self.alpha_optimizer is None:
            return torch.zeros((), device=self.device)
        gap = log_prob.mean() + self.target_entropy
        loss = -self.log_alpha.detach() * gap
        self.log_alpha.grad = -gap.reshape(self.log_alpha.shape)
        self.alpha_optimizer.step()
        return loss

    @torch.no_grad()
    def update_targets(self) -> None:
        """``target <- target + tau (online - target)`` for every critic parameter."""
        torch._foreach_lerp_(self._target_params, self._critic_params, self.settings.tau)

    def _noise(self, rows: int) -> Tensor:
        return torch.randn(
            (rows, self.action_dim), generator=self.update_generator, device=self.device
        )

    # ----------------------------------------------------------------- measures
    def plasticity_networks(self) -> dict[str, nn.Module]:
        return self.networks()

    def probe_inputs(self, size: int) -> dict[str, Tensor]:
        """The latest ``size`` transitions: observations for the actor, ``[s, a]`` for the
        critics."""
        if len(self.buffer):
            batch = self.buffer.latest(size)
            obs, actions = batch.obs, batch.actions
        else:
            obs = torch.as_tensor(self.observations, dtype=torch.float32)
            actions = torch.zeros(len(obs), self.action_dim)
        obs, actions = obs.to(self.device), actions.to(self.device)
        pairs = torch.cat([obs, actions], dim=-1)
        return {"actor": obs, "q1": pairs, "q2": pairs}

    def plasticity_extras(self, inputs: Mapping[str, Tensor]) -> dict[str, float]:
        with torch.no_grad():
            mean, log_std = self.actor(inputs["actor"])
        squashed = torch.tanh(mean)
        return {
            "actor/action_saturation": action_saturation(
                squashed, -1.0, 1.0, tol=_SATURATION_TOLERANCE
            ),
            "actor/log_std": float(log_std.mean()),
        }

    def replacement_counts(self) -> dict[str, list[int]]:
        return self.methods.replacement_counts()

    def close(self) -> None:
        """Nothing to release (no threads)."""

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "q1": self.q1.state_dict(),
            "q2": self.q2.state_dict(),
            "q1_target": self.q1_target.state_dict(),
            "q2_target": self.q2_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizers": {name: opt.state_dict() for name, opt in self._all_optimizers().items()},
            "methods": self.methods.state_dict(),
            "action_generator": torch_generator_state(self.action_generator),
            "update_generator": torch_generator_state(self.update_generator),
            "global_step": self.global_step,
            "updates": self.updates,
            "learning_steps": self.learning_steps,
            "learn_from": self.learn_from,
            "observations": torch.from_numpy(np.array(self.observations, dtype=np.float64)),
            "replay": self.buffer.state_dict() if self.settings.save_replay else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.methods.restore_structure(state["methods"])  # injected heads first
        for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self._load_optimizers(self._all_optimizers(), state["optimizers"])
        self.methods.load_state_dict(state["methods"])
        restore_torch_generator(self.action_generator, state["action_generator"])
        restore_torch_generator(self.update_generator, state["update_generator"])
        self._restore_observations(state["observations"])
        self.global_step = int(state["global_step"])
        self.updates = int(state["updates"])
        self.learning_steps = int(state["learning_steps"])
        self.learn_from = int(state["learn_from"])
        if state["replay"] is not None:
            self.buffer.load_state_dict(state["replay"])
        else:
            self._refill_after_resume()

    def _refill_after_resume(self) -> None:
        """No saved buffer: start an empty one and collect ``warmup_steps`` steps with the
        current policy before learning on."""
        self.buffer = ReplayBuffer(
            self.settings.buffer_size,
            num_envs=self.num_envs,
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            device=self.device,
        )
        self.buffer.start(self.observations)
        self.learn_from = max(self.learn_from, self.global_step + self.settings.warmup_steps)
        warnings.warn(
            f"the checkpoint holds no replay buffer (--no-save-replay): resuming at step "
            f"{self.global_step} with an empty one, refilled by {self.settings.warmup_steps} "
            "steps of the current policy before updates go on; this run is not identical to an "
            "uninterrupted one",
            UserWarning,
            stacklevel=2,
        )


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
