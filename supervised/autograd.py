"""The per-seed autograd path: the field's plasticity methods on plain PyTorch networks.

The batched engine (:mod:`cbp_rl.supervised.engine`) computes its learners' gradients by hand
on stacked weights. The methods of :mod:`cbp_rl.methods` that change the network (CReLU,
LayerNorm, plasticity injection), add a loss (L2 Init, Parseval) or change the optimizer (UPGD)
run here instead: each seed's network is the engine's own initial network
(:meth:`BatchedLearner.to_module`, so every learner starts from the same weights), trained with
``torch.optim`` and the method's class from the library, seed after seed. It is several times
slower per example than the batched engine (see ``docs/methods.md``), and offers the engine's
interface, so :mod:`cbp_rl.supervised.experiment` runs either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from cbp_rl.discovery import find_hidden_layers
from cbp_rl.methods import (
    L2Init,
    ParsevalRegularizer,
    PlasticityInjection,
    ReGraMa,
    ResetLastLayers,
    add_layer_norm,
    use_crelu,
)
from cbp_rl.optim import UPGD
from cbp_rl.run.conventions import finite_floats
from cbp_rl.supervised.engine import (
    WINDOW_EXAMPLES,
    BatchedLearner,
    LearnerSpec,
    NetworkSpec,
    SeedTotals,
)
from cbp_rl.supervised.stream import stream_seed

AutogradMethodName = Literal[
    "l2init", "crelu", "layernorm", "injection", "reset", "regrama", "parseval", "upgd"
]
AUTOGRAD_METHODS: tuple[str, ...] = get_args(AutogradMethodName)
HIDDEN_LAYER_METHODS = ("crelu", "layernorm", "regrama", "parseval")
"""The methods that work on hidden layers (a network without one has nothing for them)."""


@dataclass(frozen=True)
class MethodSpec:
    """One method of :mod:`cbp_rl.methods` and its hyperparameters (the papers' defaults)."""

    name: str
    l2init_coef: float = 1e-2
    parseval_coef: float = 1e-3
    parseval_scale: float = 1.0
    injection_every: int = 1
    reset_every: int = 200_000
    reset_layers: int = 1
    regrama_threshold: float = 0.1
    regrama_period: int = 1000
    upgd_weight_decay: float = 1e-3
    upgd_beta_utility: float = 0.999
    upgd_sigma: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in AUTOGRAD_METHODS:
            raise ValueError(
                f"unknown method {self.name!r}; valid methods are {', '.join(AUTOGRAD_METHODS)}"
            )
        for flag in ("l2init_coef", "parseval_coef", "regrama_threshold", "upgd_weight_decay"):
            _at_least(flag, getattr(self, flag), 0)
        for flag in ("injection_every", "reset_every", "reset_layers", "regrama_period"):
            _at_least(flag, getattr(self, flag), 1)
        if not self.parseval_scale > 0:
            raise ValueError(f"--parseval-scale must be > 0, got {self.parseval_scale}")
        _at_least("upgd_sigma", self.upgd_sigma, 0)
        if not 0 <= self.upgd_beta_utility < 1:
            raise ValueError(f"--upgd-beta-utility must be in [0, 1), got {self.upgd_beta_utility}")


def _at_least(flag: str, value: float, low: float) -> None:
    if not low <= value < float("inf"):
        raise ValueError(f"--{flag.replace('_', '-')} must be >= {low}, got {value}")


@finite_floats
@dataclass(frozen=True)
class FieldMethodsConfig:
    """The field's methods (learners l2init ... upgd, cbp_rl.methods; the papers' defaults),
    on the per-seed autograd path."""

    l2init_coef: float = 1e-2
    """L2 Init: loss coef * ||theta - theta_0||^2 (Kumar et al. 2023)."""
    parseval_coef: float = 1e-3
    """Parseval: loss coef * sum ||W W^T - s I||_F^2 over the hidden layers (Chung et al. 2024)."""
    parseval_scale: float = 1.0
    """Parseval's s."""
    injection_every: int | None = None
    """Plasticity injection: steps between injections; default once, halfway through the run
    (Nikishin et al. 2023)."""
    reset_every: int = 200_000
    """Reset: steps between resets of the last layers (Nikishin et al. 2022: 2e5 for SAC)."""
    reset_layers: int = 1
    """Reset: how many of the last weight layers."""
    regrama_threshold: float = 0.1
    """ReGraMa: a unit whose mean |incoming gradient| over the layer's mean is at most this is
    reinitialized (Liu et al. 2025; ReDo's tau, our choice, not the paper's)."""
    regrama_period: int = 1000
    """ReGraMa: steps between checks (ReDo's period here; our choice, not the paper's)."""
    upgd_weight_decay: float = 1e-3
    """UPGD's weight decay (Elsayed & Mahmood 2024)."""
    upgd_beta_utility: float = 0.999
    """UPGD's utility trace decay."""
    upgd_sigma: float = 1e-3
    """UPGD's perturbation noise std."""

    def __post_init__(self) -> None:
        self.spec(AUTOGRAD_METHODS[0], total_steps=2)  # validates every value, learner or not

    def spec(self, name: str, *, total_steps: int) -> MethodSpec:
        """The hyperparameters of method ``name`` in a run of ``total_steps`` steps (an unset
        ``injection_every`` injects once, halfway)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.injection_every is None:
            values["injection_every"] = max(1, total_steps // 2)
        return MethodSpec(name=name, **values)


def make_learner(
    network: NetworkSpec,
    learner: LearnerSpec,
    method: MethodSpec | None,
    seeds: Sequence[int],
    *,
    window: int = 32,
    loss: str = "cross_entropy",
    device: torch.device | str = "cpu",
) -> BatchedLearner | PerSeedLearner:
    """The batched engine, or the per-seed autograd path when a field method is given."""
    if method is None:
        return BatchedLearner(network, learner, seeds, window=window, loss=loss, device=device)
    return PerSeedLearner(network, learner, method, seeds, window=window, loss=loss, device=device)


class _Seed:
    """One seed's network, optimizer and method."""

    def __init__(
        self,
        net: nn.Sequential,
        spec: MethodSpec,
        network: NetworkSpec,
        learner: LearnerSpec,
        seed: int,
    ):
        self.net = net
        self.spec = spec
        self.activation_names = _hidden_activation_names(net)
        method_seed = stream_seed(seed, "method")
        if spec.name == "crelu":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(method_seed)  # the widened layers' fresh initialization
                use_crelu(net, init=network.init)
        elif spec.name == "layernorm":
            add_layer_norm(net)
        self.optimizer = _optimizer(net, spec, learner, method_seed)
        self.method: nn.Module | None = None
        if spec.name == "l2init":
            self.method = L2Init(net, coef=spec.l2init_coef)
        elif spec.name == "parseval":
            self.method = ParsevalRegularizer(
                net, coef=spec.parseval_coef, scale=spec.parseval_scale
            )
        elif spec.name == "injection":
            head = str(len(net) - 1)
            self.method = PlasticityInjection(
                net, self.optimizer, head=head, every=spec.injection_every, seed=method_seed
            )
        elif spec.name == "reset":
            self.method = ResetLastLayers(
                net,
                self.optimizer,
                every=spec.reset_every,
                layers=spec.reset_layers,
                seed=method_seed,
            )
        elif spec.name == "regrama":
            self.method = ReGraMa(
                net,
                self.optimizer,
                threshold=spec.regrama_threshold,
                period=spec.regrama_period,
                seed=method_seed,
            )

    def with_penalty(self, loss: Tensor) -> Tensor:
        """``loss`` plus the method's penalty (L2 Init, Parseval)."""
        if isinstance(self.method, L2Init | ParsevalRegularizer):
            loss = loss + self.method.penalty()
        return loss

    def after_step(self) -> None:
        if isinstance(self.method, PlasticityInjection | ResetLastLayers | ReGraMa):
            self.method.step()

    def record_activations(self, inputs: Tensor) -> list[Tensor]:
        """The hidden activation modules' outputs on ``inputs``, in evaluation mode."""
        recorded: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            recorded.append(output.detach())

        modules = [self.net.get_submodule(name) for name in self.activation_names]
        handles = [m.register_forward_hook(keep) for m in modules]
        self.net.eval()
        try:
            self.net(inputs)
        finally:
            for handle in handles:
                handle.remove()
            self.net.train()
        return recorded


def _hidden_activation_names(net: nn.Sequential) -> list[str]:
    names = {id(m): name for name, m in net.named_modules()}
    found = find_hidden_layers(net)
    return [names[id(layer.activation)] for layer in found.hidden]


def _optimizer(
    net: nn.Module, spec: MethodSpec, learner: LearnerSpec, seed: int
) -> torch.optim.Optimizer:
    params = list(net.parameters())
    if spec.name == "upgd":
        return UPGD(
            params,
            lr=learner.step_size,
            weight_decay=spec.upgd_weight_decay,
            beta_utility=spec.upgd_beta_utility,
            sigma=spec.upgd_sigma,
            seed=seed,
        )
    if learner.optimizer == "adam":
        return torch.optim.Adam(
            params,
            lr=learner.step_size,
            betas=learner.betas,
            eps=learner.eps,
            weight_decay=learner.weight_decay,
        )
    return torch.optim.SGD(params, lr=learner.step_size, weight_decay=learner.weight_decay)


class PerSeedLearner(SeedTotals):
    """S seeds of one method of :mod:`cbp_rl.methods`, each an ``nn.Sequential`` trained by
    autograd; the interface of :class:`~cbp_rl.supervised.engine.BatchedLearner`."""

    def __init__(
        self,
        network: NetworkSpec,
        learner: LearnerSpec,
        method: MethodSpec,
        seeds: Sequence[int],
        *,
        window: int = 32,
        loss: str = "cross_entropy",
        device: torch.device | str = "cpu",
    ) -> None:
        if learner.reinitializes or learner.perturbs or learner.dropout or learner.online_norm:
            raise ValueError(
                f"the {method.name} learner runs alone: drop CBP, ReDo, shrink-and-perturb, "
                "dropout and online normalization from it"
            )
        if method.name == "upgd" and learner.optimizer != "sgd":
            raise ValueError("upgd is the optimizer: drop --optimizer adam")
        if method.name == "crelu" and network.activation != "relu":
            raise ValueError(
                f"crelu replaces the relu activation: drop --activation {network.activation}"
            )
        if method.name in HIDDEN_LAYER_METHODS and network.depth == 0:
            raise ValueError(f"the {method.name} learner works on hidden layers; this has none")
        start = BatchedLearner(network, learner, seeds, window=window, loss=loss, device=device)
        self.network, self.learner, self.method = network, learner, method
        self.loss = loss
        self.depth = network.depth
        self.seeds = start.seeds
        self.num_seeds = len(self.seeds)
        self.device = start.device
        self.window = start.window
        self._seeds = [
            _Seed(start.to_module(s), method, network, learner, seed)
            for s, seed in enumerate(self.seeds)
        ]
        self._zero_totals(self.num_seeds, self.device)

    @property
    def reinitializes(self) -> bool:
        """Whether the method reinitializes units (replacements are logged)."""
        return self.method.name == "regrama"

    def window_steps(self, batch_size: int) -> int:
        """Steps per window, as the batched engine counts them."""
        return max(1, min(self.window, WINDOW_EXAMPLES // batch_size))

    def train(self, inputs: Tensor, labels: Tensor, batch_size: int = 1) -> None:
        """Online steps on ``inputs`` ``[S, N, in]`` and ``labels`` ``[S, N]``; each step counts
        correct predictions and the loss before its update."""
        count = inputs.shape[1]
        if count % batch_size or labels.shape != inputs.shape[:2]:
            raise ValueError(
                f"need [S, N, in] inputs and [S, N] labels with N a multiple of the batch size "
                f"{batch_size}; got {tuple(inputs.shape)} and {tuple(labels.shape)}"
            )
        for index, seed in enumerate(self._seeds):
            seed.net.train()
            for start in range(0, count, batch_size):
                rows = slice(start, start + batch_size)
                self._step(index, seed, inputs[index, rows], labels[index, rows])
        self.examples += count

    def _step(self, index: int, seed: _Seed, x: Tensor, y: Tensor) -> None:
        outputs = seed.net(x)
        if self.loss == "squared_error":
            outputs = outputs.squeeze(-1)
            loss = nn.functional.mse_loss(outputs, y)
            with torch.no_grad():
                self.loss_sum[index] += (outputs - y).square().sum()
        else:
            loss = nn.functional.cross_entropy(outputs, y)
            with torch.no_grad():
                self.correct[index] += (outputs.argmax(-1) == y).sum()
                self.loss_sum[index] += nn.functional.cross_entropy(outputs, y, reduction="sum")
        seed.optimizer.zero_grad(set_to_none=False)
        seed.with_penalty(loss).backward()
        seed.optimizer.step()
        seed.after_step()

    def replacements(self) -> Tensor:
        """Units reinitialized so far, ``[S, depth]`` (ReGraMa; zeros otherwise)."""
        out = torch.zeros(self.num_seeds, self.network.depth, dtype=torch.int64)
        for index, seed in enumerate(self._seeds):
            if isinstance(seed.method, ReGraMa):
                out[index] = seed.method.reinitialized.cpu()
        return out

    @property
    def weights(self) -> list[Tensor]:
        """Each weight layer's effective weight, stacked ``[S, in, out]`` (an injected head
        counts as the one linear map it computes)."""
        per_seed = [_effective_weights(seed) for seed in self._seeds]
        return [torch.stack(layer) for layer in zip(*per_seed, strict=True)]

    @torch.no_grad()
    def parameters(self) -> list[Tensor]:
        """Weights and biases of the Linear layers, layer by layer, stacked over the seeds."""
        per_seed = [
            [
                t.detach()
                for m in s.net.children()
                if isinstance(m, nn.Linear)
                for t in (m.weight, m.bias)
            ]
            for s in self._seeds
        ]
        return [torch.stack(tensors) for tensors in zip(*per_seed, strict=True)]

    @torch.no_grad()
    def hidden_activations(self, inputs: Tensor, seeds: slice = slice(None)) -> list[Tensor]:
        """Each hidden layer's activations ``[S, M, units]`` (a CReLU layer's ``2 * width``
        outputs) on ``inputs`` ``[S, M, in]``, in evaluation mode."""
        chosen = self._seeds[seeds]
        per_seed = [seed.record_activations(inputs[i]) for i, seed in enumerate(chosen)]
        return [torch.stack(layer) for layer in zip(*per_seed, strict=True)]

    @torch.no_grad()
    def predict(self, inputs: Tensor, seeds: slice = slice(None)) -> Tensor:
        """Logits ``[S, M, outputs]`` in evaluation mode."""
        return torch.stack([s.net.eval()(inputs[i]) for i, s in enumerate(self._seeds[seeds])])

    def to_module(self, seed_index: int) -> nn.Sequential:
        """One seed's network (the live module)."""
        return self._seeds[seed_index].net

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly."""
        return {
            "seeds": list(self.seeds),
            "method": self.method.name,
            "nets": [s.net.state_dict() for s in self._seeds],
            "optimizers": [s.optimizer.state_dict() for s in self._seeds],
            "methods": [None if s.method is None else s.method.state_dict() for s in self._seeds],
            "totals": self._totals_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an injection regrows its heads first)."""
        if list(state["seeds"]) != self.seeds or state["method"] != self.method.name:
            raise ValueError(
                f"state is for method {state['method']} and seeds {state['seeds']}; this learner "
                f"is {self.method.name} with seeds {self.seeds}"
            )
        for seed, net, opt, method in zip(
            self._seeds, state["nets"], state["optimizers"], state["methods"], strict=True
        ):
            if isinstance(seed.method, PlasticityInjection):  # the injected heads first
                seed.method.restore_structure(int(method["injections"]))
            if seed.method is not None:
                seed.method.load_state_dict(method)
            seed.net.load_state_dict(net)
            seed.optimizer.load_state_dict(opt)
        self._load_totals(state["totals"])


def _effective_weights(seed: _Seed) -> list[Tensor]:
    """``[in, out]`` weights of the network's Linear layers in order (an injected head folded
    into the one map it computes)."""
    linears = [m for m in seed.net.children() if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().t() for m in linears]
    if isinstance(seed.method, PlasticityInjection):
        weights[-1] = seed.method.folded_weight().t()
    return weights


__all__ = [
    "AUTOGRAD_METHODS",
    "HIDDEN_LAYER_METHODS",
    "FieldMethodsConfig",
    "MethodSpec",
    "PerSeedLearner",
    "make_learner",
]
