"""Settings shared by the RL commands (PPO, SAC): run, network, optimizer, methods, measures.

Each group is a frozen dataclass with a docstring per field, parsed by tyro into flat flags
(``--env``, ``--lr``, ``--cbp``, ...; see :mod:`cbp_rl.agents.cli`). Values are validated on
construction, so a bad value raises ``ValueError`` before anything runs. Step counts accept
scientific notation on the command line (``--total-steps 1e8``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tyro

from cbp_rl.envs.vector import VECTOR_MODES, VectorMode
from cbp_rl.nets import ACTIVATION_NAMES, ActivationName
from cbp_rl.run.cbp_flags import cbp_flags
from cbp_rl.run.conventions import finite_floats, flag_name

__all__ = [
    "FieldMethodsConfig",
    "MeasureConfig",
    "MethodsConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "RunConfig",
    "Steps",
    "parse_steps",
]


def parse_steps(text: str) -> int:
    """An integer step count from ``"2048"``, ``"1_000_000"`` or ``"1e8"``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"expected a step count such as 2048 or 1e8, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"a step count must be a whole number, got {text!r}")
    return int(value)


Steps = Annotated[
    int,
    tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="INT",
        instance_from_str=lambda args: parse_steps(args[0]),
        is_instance=lambda value: isinstance(value, int) and not isinstance(value, bool),
        str_from_instance=lambda value: [str(value)],
    ),
]
"""An int flag that also accepts ``1e8`` and ``1_000_000``."""

InitName = Literal["lecun", "kaiming", "xavier", "default", "orthogonal"]
OptimizerName = Literal["adam", "adamw", "sgd", "resettable_adam", "upgd"]
CBPInit = Literal["auto", "lecun", "kaiming", "xavier", "default"]
OptimizerReset = Literal["auto", "always", "never"]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{flag_name(name)} must be positive, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{flag_name(name)} must be >= 0, got {value}")


@finite_floats
@dataclass(frozen=True)
class RunConfig:
    """Environment, budget, seed, devices and output of a run."""

    env: str = "Ant-v4"
    """Gymnasium id of a continuous-action env, e.g. Ant-v4, Hopper-v5, SlipperyAnt-v4."""
    env_kwargs: str = "{}"
    """Extra gym.make keyword arguments as a JSON object, e.g. '{"use_contact_forces": true}'."""
    total_steps: Steps = 100_000_000
    """Environment steps of the whole run (all sub-envs together). May be raised on resume."""
    seed: int = 1
    """Seed of the run: network init, env resets, action noise, minibatch order, CBP draws."""
    num_envs: int = 8
    """Sub-environments stepping in lockstep (the paper used 1; the batch size is what matters)."""
    vector_mode: VectorMode = "auto"
    """sync (in process), async (a process per env), batched (envs per worker), auto; envpool:
    EnvPool's C++ MuJoCo envs (pip install 'cbp_rl[envpool]'; no snapshots, see docs/envpool.md)."""
    num_workers: int = 0
    """Worker processes of batched (threads of envpool); 0 = one per CPU core (at most num_envs)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N or auto. These small MLPs are fastest on the CPU."""
    torch_threads: int = 1
    """Torch intra-op threads (0 = one per core); 1 is fastest with the two update threads."""
    run_dir: Path | None = None
    """Directory of this run; default: RUNS_ROOT/<algorithm>-<env>-s<seed>-<date>-<time>."""
    runs_root: Path = Path("runs")
    """Where new run directories are made when --run-dir is not given."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint, exactly."""
    resume_fallback: bool = False
    """With --resume: if the latest checkpoint is unreadable, use the one before it."""
    checkpoint_every: Steps = 1_000_000
    """Write a checkpoint each time this many more steps are done (0: only on exit)."""
    progress: bool = True
    """Show a progress bar (on a terminal) or print a status line every minute (otherwise)."""

    def __post_init__(self) -> None:
        if not self.env:
            raise ValueError("env must name a Gymnasium environment id, e.g. Ant-v4")
        self.gym_kwargs()  # validates the JSON
        _positive("total_steps", self.total_steps)
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        _positive("num_envs", self.num_envs)
        if self.vector_mode not in VECTOR_MODES:
            raise ValueError(f"vector_mode must be one of {', '.join(VECTOR_MODES)}")
        _non_negative("num_workers", self.num_workers)
        _non_negative("torch_threads", self.torch_threads)
        _non_negative("checkpoint_every", self.checkpoint_every)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"unknown device {self.device!r}; use cpu, cuda, cuda:N or auto")

    def gym_kwargs(self) -> dict[str, Any]:
        """``env_kwargs`` parsed: the extra keyword arguments of ``gym.make``."""
        try:
            kwargs = json.loads(self.env_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"env_kwargs is not valid JSON ({err}): {self.env_kwargs!r}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"env_kwargs must be a JSON object, got {self.env_kwargs!r}")
        return kwargs


@finite_floats
@dataclass(frozen=True)
class NetworkConfig:
    """Policy and value (or actor and critic) MLPs."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each MLP."""
    activation: ActivationName | Literal["crelu"] = "relu"
    """Hidden activation; crelu is [relu(x), relu(-x)], the next layer reading twice the width
    (Abbas et al. 2023)."""
    layer_norm: bool = False
    """A LayerNorm before each hidden activation (Lyle et al. 2024)."""
    init: InitName = "lecun"
    """Weight init: lecun (the paper's), kaiming, xavier, default, orthogonal (CleanRL)."""

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(width <= 0 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.activation not in (*ACTIVATION_NAMES, "crelu"):
            raise ValueError(f"activation must be one of {', '.join(ACTIVATION_NAMES)}, crelu")
        if self.init not in get_args(InitName):
            raise ValueError(f"init must be one of {', '.join(get_args(InitName))}")


@finite_floats
@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer."""

    optimizer: OptimizerName = "adam"
    """adam and sgd (coupled L2), adamw (decoupled), resettable_adam (per-weight steps), upgd
    (utility-gated perturbed SGD, Elsayed & Mahmood 2024; --upgd-* flags)."""
    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas; (0.99, 0.99) is the paper's non-stationary Adam."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Weight decay: coupled L2 for adam, sgd and resettable_adam; decoupled for adamw."""
    momentum: float = 0.0
    """SGD momentum."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0 over --total-steps (CleanRL)."""
    fused: bool = True
    """Use torch's fused Adam/AdamW kernel (same algorithm, fewer kernel launches)."""

    def __post_init__(self) -> None:
        _positive("lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        _non_negative("eps", self.eps)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("momentum", self.momentum)


_CBPHyperparameters = cbp_flags(
    "CBPSettings",
    defaults={"maturity_threshold": 10_000, "init": "auto"},
    types={"init": CBPInit},
    notes={
        "maturity_threshold": "RL: steps are updates.",
        "init": "Also ReDo's. auto: the network's (kaiming for orthogonal).",
    },
    omit=("bias_compensation",),
)
"""The CBP hyperparameters (:class:`cbp_rl.CBPConfig`'s fields) as the RL commands' flags."""


@finite_floats
@dataclass(frozen=True)
class MethodsConfig(_CBPHyperparameters):  # type: ignore[misc, valid-type]
    """Methods against loss of plasticity: continual backprop (its hyperparameters are
    :class:`cbp_rl.CBPConfig`'s), ReDo, shrink and perturb (L2 is --weight-decay)."""

    cbp: bool = False
    """Continual backprop on both networks after every update, on its forward pass."""
    reset_optimizer_state: OptimizerReset = "auto"
    """Zero the optimizer state of replaced units: auto (resettable_adam only)."""
    redo: bool = False
    """ReDo: reinitialize dormant units every --redo-period updates."""
    redo_threshold: float = 0.1
    """ReDo: dormancy threshold tau."""
    redo_period: int = 100
    """ReDo: updates between reinitializations."""
    perturb_std: float = 0.0
    """Shrink and perturb: noise std added to every weight after each update (0 = off)."""
    shrink: float = 1.0
    """Shrink and perturb: factor applied to the weights after each update (1 = none)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.replacement_rate <= 1.0:
            raise ValueError(f"replacement_rate must be in [0, 1], got {self.replacement_rate}")
        _non_negative("maturity_threshold", self.maturity_threshold)
        if not 0.0 <= self.decay_rate < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {self.decay_rate}")
        if self.magnitude_every < 1:
            raise ValueError(f"magnitude_every must be >= 1, got {self.magnitude_every}")
        _non_negative("redo_threshold", self.redo_threshold)
        _positive("redo_period", self.redo_period)
        _non_negative("perturb_std", self.perturb_std)
        if not 0.0 < self.shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {self.shrink}")


@finite_floats
@dataclass(frozen=True)
class FieldMethodsConfig:
    """More methods against loss of plasticity (cbp_rl.methods; each off by default, the
    papers' values in the help). Steps count each network's updates (optimizer steps)."""

    l2_init: float = 0.0
    """L2 Init: add coef * ||theta - theta_0||^2 to each network's loss (Kumar et al. 2023:
    1e-2); 0 = off."""
    parseval: float = 0.0
    """Parseval regularization: add coef * sum ||W W^T - s I||_F^2 over the hidden layers
    (Chung et al. 2024: 1e-3); 0 = off."""
    parseval_scale: float = 1.0
    """Parseval's s."""
    injection_every: Steps = 0
    """Plasticity injection into each network's output layer every this many updates
    (Nikishin et al. 2023: once, halfway); 0 = off."""
    reset_every: Steps = 0
    """Reset the last --reset-layers weight layers every this many updates (Nikishin et al.
    2022: 2e5); 0 = off."""
    reset_layers: int = 1
    """How many of the last weight layers --reset-every reinitializes."""
    regrama: bool = False
    """ReGraMa: ReDo on normalized gradient magnitudes (Liu et al. 2025)."""
    regrama_threshold: float = 0.1
    """ReGraMa: reinitialize units whose normalized gradient magnitude is at most this
    (ReDo's tau; our choice, not the paper's)."""
    regrama_period: int = 100
    """ReGraMa: updates between checks (as --redo-period; our choice, not the paper's)."""
    pfo_coef: float = 0.0
    """PFO (PPO only): add coef * mean (phi - phi_old)^2 on the policy's last hidden
    pre-activations (Moalla et al. 2024; their MuJoCo runs: 10); 0 = off."""
    upgd_weight_decay: float = 1e-3
    """With --optimizer upgd: its weight decay (Elsayed & Mahmood 2024)."""
    upgd_beta_utility: float = 0.999
    """With --optimizer upgd: decay of the utility trace."""
    upgd_sigma: float = 1e-3
    """With --optimizer upgd: std of the perturbation noise."""

    def __post_init__(self) -> None:
        for name in ("l2_init", "parseval", "regrama_threshold", "pfo_coef", "upgd_weight_decay"):
            _non_negative(name, getattr(self, name))
        _positive("parseval_scale", self.parseval_scale)
        _non_negative("injection_every", self.injection_every)
        _non_negative("reset_every", self.reset_every)
        _positive("reset_layers", self.reset_layers)
        _positive("regrama_period", self.regrama_period)
        _non_negative("upgd_sigma", self.upgd_sigma)
        if not 0.0 <= self.upgd_beta_utility < 1.0:
            raise ValueError(f"--upgd-beta-utility must be in [0, 1), got {self.upgd_beta_utility}")

    def check_with(self, methods: MethodsConfig) -> None:
        """Refuse combinations that cannot work, saying why."""
        if self.injection_every and (methods.cbp or methods.redo or self.regrama):
            raise ValueError(
                "--injection-every with --cbp, --redo or --regrama: after an injection the "
                "output layer is three layers, so a replaced unit's outgoing weights are no "
                "longer one layer to zero; use one or the other"
            )

    @property
    def active(self) -> bool:
        """Whether any of these methods is on (UPGD is the optimizer's business)."""
        return bool(
            self.l2_init
            or self.parseval
            or self.injection_every
            or self.reset_every
            or self.regrama
            or self.pfo_coef
        )


@dataclass(frozen=True)
class MeasureConfig:
    """Plasticity measurements, on a probe batch of the latest experience."""

    plasticity_every: Steps = 20_480
    """Measure every this many environment steps (0 = never)."""
    probe_size: int = 2048
    """Examples in the probe batch (at most the experience available)."""
    dormant_tau: float = 0.1
    """Threshold of the dormant-unit ratio: mean|h_j| / mean_k mean|h_k| <= tau."""

    def __post_init__(self) -> None:
        _non_negative("plasticity_every", self.plasticity_every)
        _positive("probe_size", self.probe_size)
        _non_negative("dormant_tau", self.dormant_tau)
