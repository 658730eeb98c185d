"""The plasticity methods of a run, on each of its named networks, through the shared code.

:class:`PlasticityMethods` puts :class:`cbp_rl.ContinualBackprop`, :class:`cbp_rl.methods.ReDo`
and :class:`cbp_rl.methods.ShrinkAndPerturb` on networks such as ``{"policy": ..., "value":
...}`` as :class:`~cbp_rl.agents.config.MethodsConfig` ask, and steps them after every optimizer
step (shrink and perturb first, then CBP and ReDo, as the reference PPO). CBP and ReDo read the
activations of the latest forward pass through each network, so call :meth:`after_update` right
after the update whose forward pass should count. All their state (utilities, ages, counters,
random generators) is in ``state_dict()``.

The methods of :class:`~cbp_rl.agents.config.FieldMethodsConfig` join them: L2 Init and
Parseval as :meth:`PlasticityMethods.penalty` (added to each network's loss), ReGraMa, resets
and plasticity injection stepped in :meth:`PlasticityMethods.after_update` after CBP and ReDo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from cbp_rl.agents.config import FieldMethodsConfig, MethodsConfig, NetworkConfig
from cbp_rl.agents.networks import replacement_init
from cbp_rl.cbp import ContinualBackprop
from cbp_rl.methods import (
    L2Init,
    ParsevalRegularizer,
    PlasticityInjection,
    ReDo,
    ReGraMa,
    ResetLastLayers,
    ShrinkAndPerturb,
    weight_layers,
)
from cbp_rl.run.seeding import derive_seed

__all__ = ["PAPER_CBP", "MethodsOfRun", "PlasticityMethods"]


class MethodsOfRun(Protocol):
    """What :meth:`PlasticityMethods.of_run` reads of a run's config (PPO's and SAC's have it)."""

    @property
    def methods(self) -> MethodsConfig: ...

    @property
    def field_methods(self) -> FieldMethodsConfig: ...

    @property
    def network(self) -> NetworkConfig: ...


PAPER_CBP = MethodsConfig(
    cbp=True,
    replacement_rate=1e-4,
    maturity_threshold=10_000,
    decay_rate=0.99,
    utility="contribution",
    accumulate=False,
)
"""The paper's CBP for PPO and SAC (their ``cbp`` presets): replacement rate 1e-4, maturity 1e4
updates, contribution utility, decay 0.99, probabilistic replacement."""


class PlasticityMethods(nn.Module):
    """CBP, ReDo and shrink-and-perturb on named networks.

    Args:
        networks: the networks by name (each an MLP whose hidden layers can be discovered).
        optimizers: the optimizer stepping each network, by the same names (for optimizer-state
            resets of replaced units).
        settings: which methods, with which hyperparameters.
        init: distribution of new incoming weights (see
            :func:`cbp_rl.agents.networks.replacement_init`).
        seed: base seed of the methods' own random generators.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        settings: MethodsConfig,
        *,
        init: str,
        seed: int,
        field: FieldMethodsConfig | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.field = field or FieldMethodsConfig()
        reset = {"auto": None, "always": True, "never": False}[settings.reset_optimizer_state]
        self.cbp: dict[str, ContinualBackprop] = {}
        self.redo: dict[str, ReDo] = {}
        self.perturb: dict[str, ShrinkAndPerturb] = {}
        for index, (name, net) in enumerate(networks.items()):
            opt = optimizers[name]
            if settings.cbp:
                self.cbp[name] = ContinualBackprop(
                    net,
                    opt,
                    replacement_rate=settings.replacement_rate,
                    maturity_threshold=settings.maturity_threshold,
                    decay_rate=settings.decay_rate,
                    utility=settings.utility,
                    init=init,
                    accumulate=settings.accumulate,
                    magnitude_every=settings.magnitude_every,
                    reset_optimizer_state=reset,
                    seed=seed + 3 * index,
                )
            if settings.redo:
                self.redo[name] = ReDo(
                    net,
                    opt,
                    threshold=settings.redo_threshold,
                    period=settings.redo_period,
                    init=init,
                    reset_optimizer_state=bool(reset),
                    seed=seed + 3 * index + 1,
                )
            if settings.perturb_std > 0 or settings.shrink < 1:
                self.perturb[name] = ShrinkAndPerturb(
                    net,
                    noise_std=settings.perturb_std,
                    shrink=settings.shrink,
                    seed=seed + 3 * index + 2,
                )
        self.names = tuple(networks)
        # registered as children, so state_dict() holds their state
        self.cbp_modules = nn.ModuleDict(self.cbp)
        self.redo_modules = nn.ModuleDict(self.redo)
        self.perturb_modules = nn.ModuleDict(self.perturb)
        self._add_field_methods(networks, optimizers, init, seed + 3 * len(networks), reset)

    @classmethod
    def of_run(
        cls,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        config: MethodsOfRun,
        seed: int,
    ) -> PlasticityMethods:
        """The methods a run's ``config`` asks for (its ``methods``, ``field_methods`` and
        ``network`` groups), seeded from the run's ``seed``."""
        return cls(
            networks,
            optimizers,
            config.methods,
            init=replacement_init(config.network, config.methods.cbp_init),
            seed=derive_seed(seed, "methods"),
            field=config.field_methods,
        )

    def _add_field_methods(
        self,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        init: str,
        seed: int,
        reset: bool | None,
    ) -> None:
        field = self.field
        self.penalties: dict[str, list[L2Init | ParsevalRegularizer]] = {}
        self.stepped: dict[str, list[ReGraMa | ResetLastLayers | PlasticityInjection]] = {}
        self.regrama: dict[str, ReGraMa] = {}
        self.injection: dict[str, PlasticityInjection] = {}
        modules: dict[str, nn.Module] = {}
        for index, (name, net) in enumerate(networks.items()):
            opt, base = optimizers[name], seed + 3 * index
            penalties: list[L2Init | ParsevalRegularizer] = []
            if field.l2_init:
                penalties.append(L2Init(net, coef=field.l2_init))
            if field.parseval:
                penalties.append(
                    ParsevalRegularizer(net, coef=field.parseval, scale=field.parseval_scale)
                )
            stepped: list[ReGraMa | ResetLastLayers | PlasticityInjection] = []
            if field.regrama:
                self.regrama[name] = ReGraMa(
                    net,
                    opt,
                    threshold=field.regrama_threshold,
                    period=field.regrama_period,
                    init=init,
                    reset_optimizer_state=bool(reset),
                    seed=base,
                )
                stepped.append(self.regrama[name])
            if field.reset_every:
                stepped.append(
                    ResetLastLayers(
                        net, opt, every=field.reset_every, layers=field.reset_layers, seed=base + 1
                    )
                )
            if field.injection_every:
                head = weight_layers(net)[-1][0]
                self.injection[name] = PlasticityInjection(
                    net, opt, head=head, every=field.injection_every, seed=base + 2
                )
                stepped.append(self.injection[name])
            self.penalties[name], self.stepped[name] = penalties, stepped
            for k, module in enumerate([*penalties, *stepped]):
                modules[f"{name}_{k}"] = module
        self.field_modules = nn.ModuleDict(modules)

    def penalty(self, name: str) -> Tensor | None:
        """The L2 Init and Parseval penalties of network ``name`` (None when off)."""
        terms = [term.penalty() for term in self.penalties.get(name, ())]
        return sum(terms[1:], terms[0]) if terms else None

    def trainable(self, name: str) -> list[Tensor]:
        """Parameters of network ``name`` that live in the methods (injected heads)."""
        injection = self.injection.get(name)
        return [] if injection is None else injection.trainable()

    def restore_structure(self, state: Mapping[str, Any]) -> None:
        """Before loading a saved state: regrow the injected heads it holds."""
        for key, module in self.field_modules.items():
            saved = state.get(f"field_modules.{key}.injections")
            if isinstance(module, PlasticityInjection) and saved is not None:
                module.restore_structure(int(saved))

    @property
    def active(self) -> bool:
        """Whether any method is on."""
        return bool(len(self.cbp) or len(self.redo) or len(self.perturb) or self.field.active)

    def after_update(self, name: str | None = None) -> int:
        """Step the methods of network ``name`` (of every network if ``None``) once, after its
        ``optimizer.step()``; returns the units replaced."""
        replaced = 0
        for net in self.names if name is None else (name,):
            if net in self.perturb:
                self.perturb[net].step()
            if net in self.cbp:
                replaced += self.cbp[net].step()
            if net in self.redo:
                replaced += self.redo[net].step()
            for method in self.stepped.get(net, ()):
                stepped = method.step()
                replaced += stepped if isinstance(method, ReGraMa) else 0
        return replaced

    def replacement_counts(self) -> dict[str, list[int]]:
        """Units replaced so far by CBP and ReDo in each hidden layer of each network."""
        counts: dict[str, list[int]] = {}
        for name in self.names:
            per_layer: list[int] | None = None
            if name in self.cbp:
                per_layer = list(self.cbp[name].replacement_counts())
            for resetter in (self.redo.get(name), self.regrama.get(name)):
                if resetter is None:
                    continue
                extra = [int(c) for c in resetter.reinitialized.tolist()]
                per_layer = (
                    extra
                    if per_layer is None
                    else [a + b for a, b in zip(per_layer, extra, strict=True)]
                )
            if per_layer is not None:
                counts[name] = per_layer
        return counts

    def remove(self) -> None:
        """Detach the CBP and ReDo hooks from the networks."""
        hooked: list[ContinualBackprop | ReDo | PlasticityInjection] = [
            *self.cbp.values(),
            *self.redo.values(),
            *self.regrama.values(),
            *self.injection.values(),
        ]
        for method in hooked:
            method.remove()
