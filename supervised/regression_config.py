"""The configuration of ``python -m cbp_rl.train regression``: one frozen dataclass per flag group.

Flags are unprefixed (``--step-size``, ``--replacement-rate``). Defaults are the reference's
ReLU SGD configuration (``cfg/sgd/bp/relu.json``) at step size 0.01; each learner's own
hyperparameters default to :data:`LEARNER_DEFAULTS` (``None`` on the command line means "the
learner's default").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cbp_rl.cbp import CBPConfig, UtilityName
from cbp_rl.run.cbp_flags import to_cbp_config
from cbp_rl.run.conventions import check_at_least, check_choice, check_run_flags, finite_floats
from cbp_rl.supervised.autograd import (
    AUTOGRAD_METHODS,
    HIDDEN_LAYER_METHODS,
    AutogradMethodName,
    FieldMethodsConfig,
    MethodSpec,
)
from cbp_rl.supervised.engine import LearnerSpec, NetworkSpec
from cbp_rl.supervised.regression_problem import ProblemSpec

LearnerName = Literal[
    "bp",
    "l2",
    "snp",
    "cbp",
    AutogradMethodName,  # the per-seed autograd path (cbp_rl.supervised.autograd), as in pmnist
]
LEARNER_NAMES: tuple[str, ...] = get_args(LearnerName)
ActivationName = Literal["linear", "relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish"]
ACTIVATION_NAMES: tuple[str, ...] = get_args(ActivationName)

LEARNER_DEFAULTS: dict[str, dict[str, float]] = {
    "bp": {},
    "l2": {"weight_decay": 1e-3},
    "snp": {"weight_decay": 1e-2, "noise_std": 1e-2},
    "cbp": {},
    **{name: {} for name in AUTOGRAD_METHODS},
}
"""Per learner, the values its ``None`` fields take (anything not listed: no weight decay, no
noise). The reference's cfg files sweep weight decay (1e-6 .. 1) for l2 and the noise (1e-6 ..
0.1) for snp at weight decay 1e-2; these defaults are picks from those ranges."""


@finite_floats
@dataclass(frozen=True)
class ProblemConfig:
    """The problem (reference: cfg/sgd/bp/relu.json)."""

    num_inputs: int = 20
    """Input bits (m)."""
    num_flipping_bits: int = 15
    """The first this-many input bits are the slow ones (f); the rest are random per example."""
    flip_after: int = 10_000
    """Examples between changes of the slow bits (T)."""
    flip_one: bool = False
    """Flip one slow bit at a time (the reference's cfg/flip_one) instead of redrawing all."""
    target_features: int = 100
    """LTU units of the target network."""
    beta: float = field(default=0.7, metadata={"range": (0.0, 1.0)})
    """The LTUs' threshold parameter."""

    def spec(self) -> ProblemSpec:
        return ProblemSpec(
            num_inputs=self.num_inputs,
            num_flipping_bits=self.num_flipping_bits,
            flip_after=self.flip_after,
            flip_one=self.flip_one,
            num_features=self.target_features,
            beta=self.beta,
        )


@finite_floats
@dataclass(frozen=True)
class LearnerNetworkConfig:
    """The learning network: inputs -> hidden units -> 1."""

    hidden_units: int = 5
    """Units of the one hidden layer."""
    activation: ActivationName = "relu"
    """linear (the reference's linear learner: no hidden layer), relu, tanh, sigmoid, elu,
    leaky_relu or swish."""

    def __post_init__(self) -> None:
        if self.hidden_units < 1:
            raise ValueError(f"--hidden-units must be >= 1, got {self.hidden_units}")
        check_choice(self.activation, ACTIVATION_NAMES, what="activation")


@finite_floats
@dataclass(frozen=True)
class OptimConfig:
    """The optimizer."""

    step_size: float = field(default=0.01, metadata={"range": (0.0, None)})
    """Step size (the reference's figure: 0.01, 0.003, 0.001)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """sgd (plain) or adam (the reference's cfg/adam)."""
    adam_beta1: float = field(default=0.9, metadata={"range": (0.0, 1.0)})
    """Adam's first-moment decay."""
    adam_beta2: float = field(default=0.999, metadata={"range": (0.0, 1.0)})
    """Adam's second-moment decay."""
    adam_eps: float = field(default=1e-8, metadata={"range": (0.0, None)})
    """Adam's epsilon."""
    weight_decay: float | None = field(default=None, metadata={"range": (0.0, None)})
    """Coupled L2 on every parameter (grad + wd * w); default 1e-3 for l2, 1e-2 for snp, else 0."""


@finite_floats
@dataclass(frozen=True)
class PerturbConfig:
    """Shrink and perturb (snp), on top of weight decay."""

    noise_std: float | None = field(default=None, metadata={"range": (0.0, None)})
    """Gaussian noise std added to every weight and bias after each step; default 1e-2 for
    snp, else 0."""


@finite_floats
@dataclass(frozen=True)
class CBPLearnerConfig:
    """Continual backprop (learner cbp), through cbp_rl.GenerateAndTest (cfg/sgd/cbp/relu.json)."""

    replacement_rate: float = field(default=1e-4, metadata={"range": (0.0, 1.0)})
    """Fraction of eligible units replaced per step (the reference sweeps 1e-6 .. 1e-2)."""
    maturity_threshold: int = 100
    """Units older than this many steps are eligible (the cfg's 100; the reference script
    reads another key and so ran with 10)."""
    decay_rate: float = field(default=0.99, metadata={"range": (0.0, 1.0)})
    """Decay of the running utility and mean activation."""
    utility: UtilityName = "adaptable_contribution"
    """Utility measure."""
    accumulate: bool = False
    """Accumulate fractional replacements over steps instead of replacing one unit with
    probability rr * eligible (the reference here: probability)."""
    cbp_init: Literal["kaiming", "lecun", "xavier", "default"] = "kaiming"
    """Distribution of replaced units' new incoming weights."""

    def to_cbp_config(self) -> CBPConfig:
        return to_cbp_config(self)


@finite_floats
@dataclass(frozen=True)
class MeasureConfig:
    """The per-bin plasticity measures of the hidden layer."""

    probe_examples: int = 2000
    """Inputs drawn from the current input distribution at each bin's end to measure on."""


@finite_floats
@dataclass(frozen=True)
class RunConfig:
    """Run directory, checkpoints and machine."""

    run_dir: Path | None = None
    """Directory for this run's files; default runs/regression/<learner>-<activation>-<time>."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (other flags default to the
    saved ones; --examples may grow)."""
    resume_fallback: bool = False
    """With --resume: if the latest checkpoint is unreadable, use the one before it."""
    checkpoint_every: int = 100_000
    """Examples between checkpoints; 0: only at the end and on Ctrl+C."""
    threads: int | None = 1
    """torch CPU threads (batch-1 steps are too small to share); None: torch's choice."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""


@finite_floats
@dataclass(frozen=True)
class RegressionConfig:
    """Slowly-changing regression (the reference's lop/slowly_changing_regression): a small
    network tracks a fixed LTU target network whose inputs change slowly, one example a step."""

    learner: LearnerName = "bp"
    """bp (SGD), l2 (weight decay), snp (shrink and perturb) or cbp (continual backprop), on
    the batched engine; l2init, crelu, layernorm, injection, reset, regrama, parseval or upgd
    (the field's methods, per seed through autograd; see docs/methods.md)."""
    seeds: int = 1
    """Seeds of this configuration run together as one batched network."""
    seed: int = 0
    """First seed; the run's seeds are seed, seed+1, ..., seed+seeds-1."""
    examples: int = 1_000_000
    """Examples (steps) per run; a multiple of --bin-size."""
    bin_size: int = 20_000
    """Examples per bin of the recorded error (the reference's figure: 20000)."""
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    network: LearnerNetworkConfig = field(default_factory=LearnerNetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    cbp: CBPLearnerConfig = field(default_factory=CBPLearnerConfig)
    methods: FieldMethodsConfig = field(default_factory=FieldMethodsConfig)
    measures: MeasureConfig = field(default_factory=MeasureConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_choice(self.learner, LEARNER_NAMES, what="learner")
        check_at_least(self, ("seeds", "examples", "bin_size"), 1)
        check_at_least(self, ("seed",), 0)
        if self.examples % self.bin_size:
            raise ValueError(
                f"--examples ({self.examples}) must be a multiple of --bin-size ({self.bin_size})"
            )
        if self.measures.probe_examples < 1:
            raise ValueError(f"--probe-examples must be >= 1, got {self.measures.probe_examples}")
        check_run_flags(checkpoint_every=self.run.checkpoint_every, threads=self.run.threads)
        if self.learner in ("cbp", *HIDDEN_LAYER_METHODS) and self.linear:
            raise ValueError(
                f"--learner {self.learner} works on hidden units: --activation linear has none; "
                "pick another --activation"
            )
        self.problem.spec()  # validates the problem's sizes
        self.learner_spec()  # validates the learner's hyperparameters

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    @property
    def bins(self) -> int:
        return self.examples // self.bin_size

    @property
    def linear(self) -> bool:
        """The reference's linear learner: inputs -> output, no hidden layer."""
        return self.network.activation == "linear"

    def resolved(self, name: str) -> Any:
        """A learner hyperparameter: the flag when given, else the learner's default."""
        given = {"weight_decay": self.optim.weight_decay, "noise_std": self.perturb.noise_std}[name]
        if given is not None:
            return given
        return LEARNER_DEFAULTS[self.learner].get(name, 0.0)

    def network_spec(self) -> NetworkSpec:
        """The learner's network; the reference's kaiming-uniform init (the activation's gain,
        the ReLU gain for elu and swish, gain 1 for the output layer), zero biases."""
        linear = self.linear
        return NetworkSpec(
            inputs=self.problem.num_inputs,
            width=self.network.hidden_units,
            depth=0 if linear else 1,
            outputs=1,
            activation="identity" if linear else self.network.activation,
            init="kaiming",
        )

    def learner_spec(self) -> LearnerSpec:
        return LearnerSpec(
            step_size=self.optim.step_size,
            optimizer=self.optim.optimizer,
            betas=(self.optim.adam_beta1, self.optim.adam_beta2),
            eps=self.optim.adam_eps,
            weight_decay=self.resolved("weight_decay"),
            noise_std=self.resolved("noise_std"),
            cbp=self.cbp.to_cbp_config() if self.learner == "cbp" else None,
        )

    def method_spec(self) -> MethodSpec | None:
        """The field method of an autograd-path learner (None for the batched learners); one
        step per example."""
        if self.learner not in AUTOGRAD_METHODS:
            return None
        return self.methods.spec(self.learner, total_steps=self.examples)

    def label(self) -> str:
        """A short name: learner and activation."""
        return f"{self.learner}-{self.network.activation}"


RESUMABLE_CHANGES = ("examples", "run")
"""Config fields a resumed run may change (dotted names); everything else must match."""


__all__ = [
    "ACTIVATION_NAMES",
    "LEARNER_DEFAULTS",
    "LEARNER_NAMES",
    "RESUMABLE_CHANGES",
    "RegressionConfig",
]
