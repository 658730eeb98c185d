"""Optimizers for continual learning, and optimizer-state surgery for replaced units.

* :class:`ResettableAdam` keeps Adam's step count per element, so a reinitialized weight
  restarts its bias correction (the reference's Adam for CBP does this).
* :func:`reset_unit_state` zeroes the moments (and per-element steps, or SGD momentum) of the
  weights of replaced units.
* :func:`make_optimizer` builds the paper's baselines: SGD, Adam with configurable betas (the
  "non-stationary Adam" uses betas (0.99, 0.99)), coupled L2 weight decay, or AdamW.
* :class:`UPGD` is utility-based perturbed gradient descent (Elsayed & Mahmood 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from cbp_rl.units import units_first

OptimizerName = Literal["sgd", "adam", "adamw", "resettable_adam"]
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)
NONSTATIONARY_ADAM_BETAS = (0.99, 0.99)
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "step")


def _check_hyperparameters(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> None:
    if not lr > 0.0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if eps < 0.0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")


def _evaluate(closure: Callable[[], float] | None) -> float | None:
    """The loss of an optimizer's closure, re-evaluated with gradients on (None without one)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class ResettableAdam(Optimizer):
    """Adam whose step count is a tensor per element.

    After :func:`reset_unit_state` zeroes a weight's moments and step, its next update is that
    of a fresh Adam (full bias correction). ``weight_decay`` is coupled L2 (added to the
    gradient) unless ``decoupled_weight_decay`` (AdamW-style).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros_like(param)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        grad = param.grad
        assert grad is not None
        if decay and group["decoupled_weight_decay"]:
            param.mul_(1.0 - lr * decay)
        elif decay:
            grad = grad.add(param, alpha=decay)
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step.add_(1.0)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        correction1 = torch.pow(beta1, step).neg_().add_(1.0)
        correction2 = torch.pow(beta2, step).neg_().add_(1.0)
        denom = exp_avg_sq.div(correction2).sqrt_().add_(eps)
        param.addcdiv_(exp_avg.div(correction1), denom, value=-lr)


class UPGD(Optimizer):
    """Utility-based perturbed gradient descent (Elsayed & Mahmood 2024, "Addressing loss of
    plasticity and catastrophic forgetting in continual learning"), first-order, global.

    Per weight, the utility ``u = -g * w`` is traced, ``U <- beta U + (1 - beta) u``; with the
    bias-corrected ``U_hat = U / (1 - beta^t)`` and ``m`` the largest ``U`` over all parameters
    (the authors' code takes the maximum before bias correction), the gate is
    ``s = sigmoid(U_hat / m)`` and the update

        w <- (1 - lr * weight_decay) w - lr (g + sigma * xi) (1 - s),   xi ~ N(0, 1),

    the paper's equation (some versions of the authors' code step ``2 * lr``; this follows the
    paper). Defaults are the authors' ``UPGD`` class: ``weight_decay = 1e-3``,
    ``beta_utility = 0.999``, ``sigma = 1e-3`` (their permuted-MNIST step size is 0.01). When
    ``m`` is 0 (no utility yet) the gate is ``sigmoid(0) = 1/2``. The noise comes from the
    optimizer's own generator (``seed``), saved in ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        *,
        weight_decay: float = 1e-3,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        seed: int | None = None,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0.0 or sigma < 0.0:
            raise ValueError(
                f"weight_decay and sigma must be non-negative, got {weight_decay} and {sigma}"
            )
        if not 0.0 <= beta_utility < 1.0:
            raise ValueError(f"beta_utility must be in [0, 1), got {beta_utility}")
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "beta_utility": beta_utility,
            "sigma": sigma,
        }
        super().__init__(params, defaults)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        generator = state.pop("generator", None)
        super().load_state_dict(state)
        if generator is not None:
            self.generator.set_state(generator)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _evaluate(closure)
        stepped = [
            (p, group) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if not stepped:
            return loss
        largest = None
        for param, group in stepped:
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["avg_utility"] = torch.zeros_like(param)
            state["step"] += 1
            beta = group["beta_utility"]
            assert param.grad is not None
            state["avg_utility"].mul_(beta).add_(param.grad * param, alpha=-(1.0 - beta))
            top = state["avg_utility"].max()
            largest = top if largest is None else torch.maximum(largest, top)
        assert largest is not None
        for param, group in stepped:
            self._update(param, group, largest)
        return loss

    def _update(self, param: Tensor, group: dict[str, Any], largest: Tensor) -> None:
        state = self.state[param]
        correction = 1.0 - group["beta_utility"] ** state["step"]
        corrected = state["avg_utility"] / correction
        ratio = corrected / largest if bool(largest != 0) else torch.zeros_like(corrected)
        gate = torch.sigmoid(ratio)
        noise = torch.randn(param.shape, generator=self.generator, dtype=param.dtype)
        assert param.grad is not None
        perturbed = param.grad + noise.to(param.device) * group["sigma"]
        param.mul_(1.0 - group["lr"] * group["weight_decay"])
        param.add_(perturbed * (1.0 - gate), alpha=-group["lr"])


RESETTABLE_OPTIMIZERS: tuple[type[Optimizer], ...] = (SGD, Adam, AdamW, ResettableAdam)


@torch.no_grad()
def reset_unit_state(
    optimizer: Optimizer,
    param: Tensor,
    unit_dim: int,
    units: Tensor,
    *,
    view_shape: torch.Size | tuple[int, ...] | None = None,
) -> None:
    """Zero the optimizer state of ``param`` at ``units`` along ``unit_dim``.

    Resets Adam/AdamW moments (and AMSGrad's maximum), SGD momentum, and per-element step counts
    (:class:`ResettableAdam`); a scalar step count is shared by the whole tensor and stays.
    ``view_shape`` reshapes the state first (a Linear layer read through a Flatten).
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for key in _STATE_KEYS:
        value = state.get(key)
        if not isinstance(value, Tensor) or value.shape != param.shape:
            continue
        view = value.view(view_shape) if view_shape is not None else value
        units_first(view, unit_dim)[units] = 0


def make_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> Optimizer:
    """An optimizer by name: ``sgd``, ``adam``, ``adamw`` or ``resettable_adam``.

    ``weight_decay`` is coupled L2 for sgd, adam and resettable_adam (the paper's L2 baseline)
    and decoupled for adamw.
    """
    _check_hyperparameters(lr, betas, eps, weight_decay)
    if name == "sgd":
        if momentum < 0.0:
            raise ValueError(f"momentum must be non-negative, got {momentum}")
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "resettable_adam":
        return ResettableAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(
        f"unknown optimizer {name!r}; valid optimizers are {', '.join(OPTIMIZER_NAMES)}"
    )
