"""The configuration of ``python -m cbp_rl.train pmnist``: one frozen dataclass per flag group.

Flags are unprefixed (``--width``, ``--replacement-rate``); each learner's own hyperparameters
default to the thesis's values (``None`` on the command line means "the learner's default",
see :data:`LEARNER_DEFAULTS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cbp_rl.cbp import CBPConfig
from cbp_rl.nets import validate_init
from cbp_rl.run.cbp_flags import cbp_flags, to_cbp_config
from cbp_rl.run.conventions import check_at_least, check_choice, check_run_flags, finite_floats
from cbp_rl.supervised.activations import get_activation
from cbp_rl.supervised.autograd import (
    AUTOGRAD_METHODS,
    AutogradMethodName,
    FieldMethodsConfig,
    MethodSpec,
)
from cbp_rl.supervised.engine import LearnerSpec, NetworkSpec, ReDoSpec
from cbp_rl.supervised.onlinenorm import OnlineNormConfig

LearnerName = Literal[
    "bp",
    "l2",
    "snp",
    "dropout",
    "onlinenorm",
    "adam",
    "redo",
    "cbp",
    AutogradMethodName,  # the per-seed autograd path (cbp_rl.supervised.autograd)
]
LEARNER_NAMES: tuple[str, ...] = get_args(LearnerName)

LEARNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "bp": {},
    "l2": {"weight_decay": 1e-4},
    "snp": {"weight_decay": 1e-4, "noise_std": 1e-5},
    "dropout": {"dropout": 0.1},
    "onlinenorm": {"online_norm": True},
    "adam": {"optimizer": "adam", "step_size": 1e-4},
    "redo": {},
    "cbp": {},
    **{name: {} for name in AUTOGRAD_METHODS},
}
"""Per learner, the values its ``None`` fields take (thesis chapter 4 and the reference cfgs;
anything not listed is SGD, step size 0.003, no weight decay, no noise, no dropout)."""

_BASE = {
    "optimizer": "sgd",
    "step_size": 0.003,
    "weight_decay": 0.0,
    "noise_std": 0.0,
    "dropout": 0.0,
    "online_norm": False,
}


@finite_floats
@dataclass(frozen=True)
class DataConfig:
    """Where the digits come from."""

    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """mnist, or fashion-mnist (found in /usr/share/datasets/fashion-mnist when installed)."""
    data_dir: Path | None = None
    """Directory with the IDX files (gzip or raw), or its parent; default $CBP_RL_DATA_DIR, else
    ~/.cache/cbp_rl/<dataset> (downloads go there)."""
    download: bool = True
    """Download missing files from the standard mirrors (md5-checked)."""
    verify_data: bool = True
    """Check every file's md5 against the official dataset."""


@finite_floats
@dataclass(frozen=True)
class NetworkConfig:
    """The MLP: inputs -> width x depth -> 10."""

    width: int = 2000
    """Units per hidden layer (the thesis: 2000; also 100, 1000, 10000)."""
    depth: int = 3
    """Number of hidden layers."""
    activation: str = "relu"
    """Hidden activation: relu, leaky_relu, tanh, sigmoid, elu, selu, gelu, silu, identity."""
    init: Literal["kaiming", "lecun", "xavier", "default"] = "kaiming"
    """Initial weights U(-b, b): kaiming b = gain*sqrt(3/fan_in) (gain 1 for the output layer),
    lecun sqrt(3/fan_in), xavier gain*sqrt(6/(fan_in+fan_out)), default sqrt(1/fan_in)."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {self.width} and {self.depth}")
        get_activation(self.activation)
        validate_init(self.init)


@finite_floats
@dataclass(frozen=True)
class OptimConfig:
    """The optimizer (None: the learner's default)."""

    step_size: float | None = None
    """Step size; default 0.003 (SGD learners, the thesis's best for backprop) or 1e-4 (adam)."""
    optimizer: Literal["sgd", "adam"] | None = None
    """sgd (plain, no momentum) or adam; default adam for the adam learner, else sgd."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay."""
    adam_eps: float = 1e-8
    """Adam's epsilon."""
    weight_decay: float | None = None
    """Coupled L2 on every parameter (grad + wd * w); default 1e-4 for l2 and snp, else 0."""
    update_window: int = 32
    """Plain SGD applies the first (and large) layers' updates every this many steps as one
    rank-k update, computing with the updated weights all the same (exact up to float
    rounding; 1: every step)."""

    def __post_init__(self) -> None:
        if self.update_window < 1:
            raise ValueError(f"--update-window must be >= 1, got {self.update_window}")


@finite_floats
@dataclass(frozen=True)
class PerturbConfig:
    """Shrink and perturb (snp), on top of weight decay."""

    noise_std: float | None = None
    """Gaussian noise std added to every weight and bias after each step; default 1e-5 for snp
    (the reference tried 1e-4, 1e-5, 1e-6), else 0."""
    shrink: float = 1.0
    """Multiply every weight by this after each step (1: shrink only through weight decay)."""


@finite_floats
@dataclass(frozen=True)
class DropoutConfig:
    """Dropout on the hidden units."""

    dropout: float | None = None
    """Probability of zeroing a hidden unit in training; default 0.1 for dropout (the thesis's
    figure 4.8), else 0."""


@finite_floats
@dataclass(frozen=True)
class OnlineNormLearnerConfig:
    """Online normalization (Chiley et al. 2019) before each hidden activation."""

    online_norm: bool | None = None
    """Use online normalization; default on for onlinenorm, else off."""
    norm_alpha_fwd: float = 0.999
    """Decay of the streaming mean and variance (forward)."""
    norm_alpha_bkw: float = 0.99
    """Decay of the backward control variables u and v."""
    norm_eps: float = 1e-5
    """Added to the variance under the square root."""
    norm_clamp: float = 5.0
    """Clamp the normalized output to [-c, c] (activation clamping); 0 disables."""


@finite_floats
@dataclass(frozen=True)
class ReDoConfig:
    """ReDo (learner redo): periodic reinitialization of dormant units."""

    redo_threshold: float = 0.1
    """A unit is dormant when its mean |activation| over the examples since the last check,
    divided by the layer's mean, is at most this."""
    redo_period: int = 1000
    """Steps between checks."""
    redo_reset_optimizer: bool = False
    """Zero the Adam moments of reinitialized units (with --optimizer adam)."""


_CBPHyperparameters = cbp_flags(
    "CBPHyperparameters",
    defaults={"utility": "adaptable_contribution", "accumulate": True},
    types={"init": Literal["kaiming", "lecun", "xavier", "default"]},
    notes={
        "replacement_rate": "The thesis: 1e-4; also 1e-5, 1e-6.",
        "magnitude_every": "10 is much faster on wide nets and learns the same.",
    },
)
"""The CBP hyperparameters (:class:`cbp_rl.CBPConfig`'s fields) as pmnist's flags."""


@finite_floats
@dataclass(frozen=True)
class CBPLearnerConfig(_CBPHyperparameters):  # type: ignore[misc, valid-type]
    """Continual backprop (learner cbp), through cbp_rl.GenerateAndTest; its hyperparameters
    are :class:`cbp_rl.CBPConfig`'s."""

    cbp_reset_optimizer: bool = True
    """Zero the Adam state of replaced units (with --optimizer adam; the reference's AdamGnT)."""

    def to_cbp_config(self) -> CBPConfig:
        return to_cbp_config(self)


@finite_floats
@dataclass(frozen=True)
class MeasureConfig:
    """The task-start plasticity measures."""

    measure_every: int = 1
    """Measure at the start of every this-many tasks (0: never)."""
    probe_examples: int = 2000
    """Examples of the new task the measures are taken on."""


@finite_floats
@dataclass(frozen=True)
class RunConfig:
    """Run directory, checkpoints and machine."""

    run_dir: Path | None = None
    """Directory for this run's files; default runs/pmnist/<learner>-w<width>-<time>."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (other flags default to the
    saved ones; --tasks may grow)."""
    resume_fallback: bool = False
    """With --resume: if the latest checkpoint is unreadable, use the one before it."""
    checkpoint_every: int | None = None
    """Examples between checkpoints; default one task; 0: only at the end and on Ctrl+C."""
    threads: int | None = 1
    """torch CPU threads; batch-1 steps are too small to share well, and a second thread on a
    busy core stalls the first; None: torch's choice."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""


@finite_floats
@dataclass(frozen=True)
class PermutedMNISTConfig:
    """Online permuted MNIST (thesis chapter 4): a sequence of tasks, each a fixed random
    permutation of the pixels, its examples shown once, one at a time."""

    learner: LearnerName = "bp"
    """bp (SGD), l2, snp (shrink and perturb), dropout, onlinenorm, adam, redo or cbp (the
    batched engine); l2init, crelu, layernorm, injection, reset, regrama, parseval or upgd (the
    field's methods, per seed through autograd; see docs/methods.md)."""
    seeds: int = 1
    """Seeds of this configuration run together as one batched network."""
    seed: int = 0
    """First seed; the run's seeds are seed, seed+1, ..., seed+seeds-1."""
    tasks: int = 800
    """Number of tasks (permutations)."""
    examples_per_task: int = 60000
    """Examples per task: how often the permutation changes (thesis: 60000; also 10000,
    100000, 1000000). Beyond the data set's size it is shown again in a new order."""
    batch_size: int = 1
    """Examples per update (the thesis: 1)."""
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    norm: OnlineNormLearnerConfig = field(default_factory=OnlineNormLearnerConfig)
    redo: ReDoConfig = field(default_factory=ReDoConfig)
    cbp: CBPLearnerConfig = field(default_factory=CBPLearnerConfig)
    methods: FieldMethodsConfig = field(default_factory=FieldMethodsConfig)
    measures: MeasureConfig = field(default_factory=MeasureConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_choice(self.learner, LEARNER_NAMES, what="learner")
        check_at_least(self, ("seeds", "tasks", "examples_per_task", "batch_size"), 1)
        check_at_least(self, ("seed",), 0)
        if self.examples_per_task % self.batch_size:
            raise ValueError(
                f"--examples-per-task ({self.examples_per_task}) must be a multiple of "
                f"--batch-size ({self.batch_size})"
            )
        if self.measures.measure_every < 0 or self.measures.probe_examples < 1:
            raise ValueError("--measure-every must be >= 0 and --probe-examples >= 1")
        check_run_flags(checkpoint_every=self.run.checkpoint_every, threads=self.run.threads)
        self.learner_spec()  # validates the learner's hyperparameters
        self.method_spec()

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    @property
    def checkpoint_interval(self) -> int:
        """Examples between checkpoints (0: none but the last)."""
        every = self.run.checkpoint_every
        return self.examples_per_task if every is None else every

    def resolved(self, name: str) -> Any:
        """A learner hyperparameter: the flag when given, else the learner's default."""
        given = {
            "optimizer": self.optim.optimizer,
            "step_size": self.optim.step_size,
            "weight_decay": self.optim.weight_decay,
            "noise_std": self.perturb.noise_std,
            "dropout": self.dropout.dropout,
            "online_norm": self.norm.online_norm,
        }[name]
        if given is not None:
            return given
        return LEARNER_DEFAULTS[self.learner].get(name, _BASE[name])

    def network_spec(self) -> NetworkSpec:
        net = self.network
        return NetworkSpec(
            width=net.width, depth=net.depth, activation=net.activation, init=net.init
        )

    def learner_spec(self) -> LearnerSpec:
        norm = None
        if self.resolved("online_norm"):
            flags = self.norm
            norm = OnlineNormConfig(
                alpha_fwd=flags.norm_alpha_fwd,
                alpha_bkw=flags.norm_alpha_bkw,
                eps=flags.norm_eps,
                clamp=flags.norm_clamp,
            )
        redo = None
        if self.learner == "redo":
            redo = ReDoSpec(
                threshold=self.redo.redo_threshold,
                period=self.redo.redo_period,
                reset_optimizer=self.redo.redo_reset_optimizer,
            )
        return LearnerSpec(
            step_size=self.resolved("step_size"),
            optimizer=self.resolved("optimizer"),
            betas=(self.optim.adam_beta1, self.optim.adam_beta2),
            eps=self.optim.adam_eps,
            weight_decay=self.resolved("weight_decay"),
            noise_std=self.resolved("noise_std"),
            shrink=self.perturb.shrink,
            dropout=self.resolved("dropout"),
            online_norm=norm,
            redo=redo,
            cbp=self.cbp.to_cbp_config() if self.learner == "cbp" else None,
            cbp_reset_optimizer=self.cbp.cbp_reset_optimizer,
        )

    def method_spec(self) -> MethodSpec | None:
        """The field method of an autograd-path learner (None for the batched learners)."""
        if self.learner not in AUTOGRAD_METHODS:
            return None
        steps = self.tasks * self.examples_per_task // self.batch_size
        return self.methods.spec(self.learner, total_steps=steps)

    def label(self) -> str:
        """A short name: learner and width."""
        return f"{self.learner}-w{self.network.width}"


RESUMABLE_CHANGES = ("tasks", "run", "data.data_dir", "data.download")
"""Config fields a resumed run may change (dotted names); everything else must match."""


__all__ = [
    "LEARNER_DEFAULTS",
    "LEARNER_NAMES",
    "RESUMABLE_CHANGES",
    "PermutedMNISTConfig",
]
