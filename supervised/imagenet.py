"""Continual ImageNet (Dohare et al. 2024): thousands of binary tasks for one conv net.

``python -m cbp_rl.train continual-imagenet --data-dir DIR --learner cbp``

Each task takes the next ``--classes-per-task`` (2) classes of a seeded class order, trains
the network on their 600 training images each for ``--epochs`` (250) epochs in minibatches of
100 (a new random order every epoch), and tests it on their 100 test images each after every
epoch. At each task's start the output layer's weights and bias are set to zero (the reference's
"new heads"). A run directory holds::

    config.json              the configuration, with "algorithm": "continual-imagenet"
    events.out.tfevents.*    TensorBoard, step = task number (1 = the first task)
    results.npz              per task (and per epoch) arrays, see below
    status.json              progress; checkpoint.pt (and checkpoint.prev.pt)

``results.npz``: ``train_accuracy``, ``test_accuracy``, ``train_loss``, ``test_loss``
``[tasks, epochs]``; ``task_train_accuracy``, ``task_test_accuracy`` ``[tasks]`` (the last
epoch's); ``classes`` ``[tasks, classes_per_task]`` (indices into ``class_names``); at each
task's start, on its training images: ``dead_units``, ``dormant_units``, ``effective_rank``,
``rank99``, ``stable_rank`` ``[tasks, 5]`` (per hidden layer), ``weight_magnitude``
``[tasks, 6]`` (5 hidden layers, then the output layer), ``weight_magnitude_all`` ``[tasks]``;
``replacements`` ``[tasks, 5]`` (CBP's units replaced during each task). TensorBoard tags:
``task/train_accuracy``, ``task/test_accuracy``, ``task/train_loss``, ``task/test_loss``,
``task/replacements/{i}``, ``plasticity/{measure}/{i}``, ``plasticity/weight_magnitude/out``
and ``/all``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from cbp_rl.cbp import CBPConfig
from cbp_rl.discovery import find_hidden_layers
from cbp_rl.nets import conv_net
from cbp_rl.run.cbp_flags import cbp_flags, to_cbp_config
from cbp_rl.run.command import Command, Cost, Measure
from cbp_rl.run.conventions import finite_floats
from cbp_rl.run.runtime import resolve_device
from cbp_rl.run.seeding import derive_seed
from cbp_rl.supervised.command import command_main, parse_config, seed_fields
from cbp_rl.supervised.conv_learner import (
    LAYER_MEASURES,
    SGDConfig,
    StepResult,
    hidden_layer_activations,
    plasticity_measures,
)
from cbp_rl.supervised.conv_run import (
    ConvResults,
    ConvRunConfig,
    RunSummary,
    TaskEpochRun,
    check_conv_flags,
    make_learner,
    prepare,
    run_loop,
    run_prepared,
)
from cbp_rl.supervised.images import (
    IMAGES_PER_CLASS,
    TRAIN_IMAGES_PER_CLASS,
    ClassFile,
    find_class_files,
    identify_files,
    load_class_images,
)

NAME = "continual-imagenet"
ImageNetLearner = Literal["bp", "l2", "snp", "cbp"]
IMAGENET_LEARNERS: tuple[str, ...] = get_args(ImageNetLearner)
LEARNER_DEFAULTS: dict[str, dict[str, float]] = {
    "bp": {"step_size": 0.01, "weight_decay": 0.0, "noise_std": 0.0},
    "l2": {"step_size": 0.03, "weight_decay": 3e-6, "noise_std": 0.0},
    "snp": {"step_size": 0.01, "weight_decay": 1e-5, "noise_std": 1e-5},
    "cbp": {"step_size": 0.01, "weight_decay": 0.0, "noise_std": 0.0},
}
"""The reference's cfg files lop/imagenet/cfg/{bp,l2,snp,cbp}.json (SGD, momentum 0.9)."""
HIDDEN_LAYERS = 5


_ImageNetCBPHyperparameters = cbp_flags(
    "ImageNetCBPHyperparameters",
    defaults={
        "replacement_rate": 3e-4,
        "maturity_threshold": 100,
        "decay_rate": 0.99,
        "utility": "adaptable_contribution",
        "init": "default",
        "accumulate": True,
    },
    types={"init": Literal["kaiming", "lecun", "xavier", "default"]},
    notes={"init": "default: sqrt(1/fan_in), as the reference's ConvCBP."},
)


@finite_floats
@dataclass(frozen=True)
class ImageNetCBPConfig(_ImageNetCBPHyperparameters):  # type: ignore[misc, valid-type]
    """Continual backprop (learner cbp): the reference's lop/imagenet/cfg/cbp.json; its
    hyperparameters are :class:`cbp_rl.CBPConfig`'s."""

    def to_cbp_config(self) -> CBPConfig:
        return to_cbp_config(self)


@finite_floats
@dataclass(frozen=True)
class ContinualImageNetConfig:
    """Continual ImageNet: binary classification tasks from downsampled ImageNet classes."""

    learner: ImageNetLearner = "bp"
    """bp (SGD with momentum), l2, snp (shrink and perturb) or cbp."""
    seed: int = 0
    """Seed of the class order, the initial weights, the minibatch orders and CBP."""
    tasks: int = 5000
    """Number of tasks (the paper: 5,000; its cfg files: 2,000 for bp)."""
    classes_per_task: int = 2
    """Classes of each task."""
    epochs: int = 250
    """Epochs per task."""
    batch_size: int = 100
    """Minibatch size."""
    data_dir: Path | None = None
    """Directory of <class>.npy files (700 32x32 RGB images each); default
    $CBP_RL_DATA_DIR/imagenet32, else ~/.cache/cbp_rl/imagenet32."""
    train_per_class: int = TRAIN_IMAGES_PER_CLASS
    """Training images used per class: the first this-many of the file's 600 (the reference:
    all 600; fewer for quick looks)."""
    test_per_class: int = IMAGES_PER_CLASS - TRAIN_IMAGES_PER_CLASS
    """Test images used per class: the first this-many of the file's last 100."""
    pixel_scale: float = field(default=1.0, metadata={"range": (0.0, None)})
    """Multiply the stored pixel values by this (the reference feeds them unscaled: 1)."""
    step_size: float | None = field(default=None, metadata={"range": (0.0, None)})
    """SGD step size; default the learner's (bp, snp, cbp 0.01; l2 0.03)."""
    momentum: float = field(default=0.9, metadata={"range": (0.0, 1.0)})
    """SGD momentum."""
    weight_decay: float | None = field(default=None, metadata={"range": (0.0, None)})
    """Coupled L2; default the learner's (l2 3e-6, snp 1e-5, else 0)."""
    noise_std: float | None = field(default=None, metadata={"range": (0.0, None)})
    """Shrink-and-perturb noise std after each step; default the learner's (snp 1e-5)."""
    cbp: ImageNetCBPConfig = field(default_factory=ImageNetCBPConfig)
    measure_every: int = 1
    """Take the plasticity measures at the start of every this-many tasks (0: never)."""
    probe_examples: int = 1200
    """Training images of the new task the measures are taken on."""
    dormant_threshold: float = field(default=0.01, metadata={"range": (0.0, 1.0)})
    """A unit is dormant when non-zero on less than this fraction of probe inputs."""
    run: ConvRunConfig = field(default_factory=ConvRunConfig)

    def __post_init__(self) -> None:
        positive = ("tasks", "classes_per_task", "epochs", "batch_size", "probe_examples")
        check_conv_flags(self, IMAGENET_LEARNERS, positive)
        if self.classes_per_task < 2:
            raise ValueError("--classes-per-task must be >= 2 (a task is a classification)")
        if not 1 <= self.train_per_class <= TRAIN_IMAGES_PER_CLASS:
            raise ValueError(f"--train-per-class must be in 1..{TRAIN_IMAGES_PER_CLASS}")
        if not 1 <= self.test_per_class <= IMAGES_PER_CLASS - TRAIN_IMAGES_PER_CLASS:
            raise ValueError(
                f"--test-per-class must be in 1..{IMAGES_PER_CLASS - TRAIN_IMAGES_PER_CLASS}"
            )
        if not self.pixel_scale > 0:
            raise ValueError(f"--pixel-scale must be > 0, got {self.pixel_scale}")
        self.sgd()
        if self.learner == "cbp":
            self.cbp.to_cbp_config()

    def resolved(self, name: str) -> float:
        given = getattr(self, name)
        return float(LEARNER_DEFAULTS[self.learner][name] if given is None else given)

    def sgd(self) -> SGDConfig:
        return SGDConfig(
            step_size=self.resolved("step_size"),
            momentum=self.momentum,
            weight_decay=self.resolved("weight_decay"),
            noise_std=self.resolved("noise_std"),
        )

    @property
    def checkpoint_epochs(self) -> int:
        every = self.run.checkpoint_every
        return self.epochs if every is None else every

    def label(self) -> str:
        return f"{self.learner}-s{self.seed}"


RESUMABLE = ("tasks", "run", "data_dir")
"""Fields a resumed run may change."""


def class_order(seed: int, num_classes: int, tasks: int, per_task: int) -> np.ndarray:
    """The classes of every task, ``[tasks, per_task]``: one seeded permutation of all classes,
    repeated as often as the tasks need (as the reference repeats its per-run order)."""
    if per_task > num_classes:
        raise ValueError(
            f"--classes-per-task {per_task} is more than the {num_classes} classes in the data"
        )
    rng = np.random.default_rng(derive_seed(seed, "class_order"))
    permutation = rng.permutation(num_classes)
    repeats = -(-tasks * per_task // num_classes)
    return np.tile(permutation, repeats)[: tasks * per_task].reshape(tasks, per_task)


def build_network(seed: int, classes: int) -> nn.Sequential:
    """The reference's conv net, initialized from the run's own seed (same on every device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return conv_net(classes)


class ContinualImageNetRun(TaskEpochRun):
    command = NAME

    def __init__(self, config: ContinualImageNetConfig, files: list[ClassFile], run_dir: Path):
        self.files = files
        self.classes = class_order(config.seed, len(files), config.tasks, config.classes_per_task)
        net = build_network(config.seed, config.classes_per_task)
        self.net = net.to(resolve_device(config.run.device))
        self.layers = list(find_hidden_layers(self.net).hidden)
        if len(self.layers) != HIDDEN_LAYERS:
            raise RuntimeError(f"expected {HIDDEN_LAYERS} hidden layers, found {len(self.layers)}")
        self.learner = make_learner(self.net, config)
        self.results = ConvResults.empty(
            NAME, self._shapes(config), class_names=[f.name for f in files]
        )
        self.data: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self.replaced_before = [0] * HIDDEN_LAYERS
        super().__init__(
            config,
            run_dir,
            every=config.checkpoint_epochs,
            seed=derive_seed(config.seed, "data"),
        )

    @staticmethod
    def _shapes(config: ContinualImageNetConfig) -> dict[str, tuple[int, ...]]:
        tasks, epochs, layers = config.tasks, config.epochs, HIDDEN_LAYERS
        shapes: dict[str, tuple[int, ...]] = {
            name: (tasks, epochs)
            for name in ("train_accuracy", "test_accuracy", "train_loss", "test_loss")
        }
        shapes.update({"task_train_accuracy": (tasks,), "task_test_accuracy": (tasks,)})
        shapes.update({name: (tasks, layers) for name in LAYER_MEASURES})
        shapes.update(
            {
                "weight_magnitude": (tasks, layers + 1),
                "weight_magnitude_all": (tasks,),
                "replacements": (tasks, layers),
                "classes": (tasks, config.classes_per_task),
            }
        )
        return shapes

    # ------------------------------------------------------------- sizes
    def epochs_per_task(self) -> int:
        return int(self.config.epochs)

    def train_size(self, task: int) -> int:
        return int(self.config.train_per_class * self.config.classes_per_task)

    # ------------------------------------------------------------- tasks
    def load_task(self) -> None:
        """The task's images as in the reference: labels 0..k-1 in the task's class order."""
        xs_train, xs_test, ys_train, ys_test = [], [], [], []
        train, test = self.config.train_per_class, self.config.test_per_class
        for label, index in enumerate(self.classes[self.task]):
            images = load_class_images(self.files[int(index)])
            xs_train.append(images[:train])
            xs_test.append(images[TRAIN_IMAGES_PER_CLASS : TRAIN_IMAGES_PER_CLASS + test])
            ys_train.append(np.full(train, label))
            ys_test.append(np.full(test, label))
        scale = self.config.pixel_scale

        def tensor(parts: list[np.ndarray], dtype: torch.dtype) -> Tensor:
            return torch.from_numpy(np.concatenate(parts)).to(self.device, dtype)

        self.data = (
            tensor(xs_train, torch.float32) * scale,
            tensor(ys_train, torch.int64),
            tensor(xs_test, torch.float32) * scale,
            tensor(ys_test, torch.int64),
        )

    def start_task(self) -> None:
        self.results.set("classes", self.task, self.classes[self.task])
        every = self.config.measure_every
        if every and self.task % every == 0:
            self._measure()
        head = self.layers[-1].outgoing
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
        self.replaced_before = self.learner.replacements() or [0] * HIDDEN_LAYERS

    def _measure(self) -> None:
        assert self.data is not None
        probe = self.data[0][: self.config.probe_examples]
        weights = [layer.incoming.weight for layer in self.layers]
        weights.append(self.layers[-1].outgoing.weight)
        measures = plasticity_measures(
            self.net,
            hidden_layer_activations(self.net, self.layers),
            probe,
            weights,
            dormant_threshold=self.config.dormant_threshold,
        )
        self.record_measures(measures)
        self._log_measures(self.task)

    def _log_measures(self, task: int) -> None:
        values: dict[str, float] = {}
        for name in LAYER_MEASURES:
            for layer in range(HIDDEN_LAYERS):
                values[f"plasticity/{name}/{layer}"] = float(self.results.arrays[name][task, layer])
        magnitudes = self.results.arrays["weight_magnitude"][task]
        for layer in range(HIDDEN_LAYERS):
            values[f"plasticity/weight_magnitude/{layer}"] = float(magnitudes[layer])
        values["plasticity/weight_magnitude/out"] = float(magnitudes[-1])
        values["plasticity/weight_magnitude/all"] = float(
            self.results.arrays["weight_magnitude_all"][task]
        )
        self.log(values, task + 1)

    def begin_epoch(self) -> None:
        pass

    def train_batch(self, indices: Tensor) -> StepResult:
        assert self.data is not None
        index = indices.to(self.device)
        return self.learner.train_step(self.data[0][index], self.data[1][index], _identity)

    def end_epoch(self, train: StepResult) -> None:
        assert self.data is not None
        test = self.learner.evaluate(self.data[2], self.data[3], _identity, self.batch_size())
        at = (self.task, self.epoch)
        self.results.set("train_accuracy", at, train.correct / train.examples)
        self.results.set("train_loss", at, train.loss_sum / train.examples)
        self.results.set("test_accuracy", at, test.correct / test.examples)
        self.results.set("test_loss", at, test.loss_sum / test.examples)

    def end_task(self) -> None:
        arrays, task = self.results.arrays, self.task
        train_acc, test_acc = arrays["train_accuracy"][task, -1], arrays["test_accuracy"][task, -1]
        arrays["task_train_accuracy"][task] = train_acc
        arrays["task_test_accuracy"][task] = test_acc
        values = {
            "task/train_accuracy": float(train_acc),
            "task/test_accuracy": float(test_acc),
            "task/train_loss": float(arrays["train_loss"][task, -1]),
            "task/test_loss": float(arrays["test_loss"][task, -1]),
        }
        per_task = self.record_replacements(self.replaced_before)
        values.update({f"task/replacements/{i}": float(n) for i, n in enumerate(per_task)})
        self.log(values, task + 1)

    # ------------------------------------------------------------- checkpoints and logs
    def extra_state(self) -> dict[str, Any]:
        return {"replaced_before": list(self.replaced_before)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.replaced_before = [int(n) for n in state["replaced_before"]]
        done, tasks = self.results.tasks_done, self.num_tasks()
        if tasks < done or (tasks == done and self.task_started):
            raise ValueError(
                f"--tasks {tasks} is fewer than the run has already done or begun "
                f"({done if tasks < done else done + 1}); give at least as many"
            )
        for name, array in self.results.arrays.items():  # --tasks may have grown
            if array.shape[0] < tasks:
                grown = np.full((tasks, *array.shape[1:]), np.nan)
                grown[: array.shape[0]] = array
                self.results.arrays[name] = grown

    def log_step(self) -> int:
        return self.task + 1

    def relog_after_resume(self) -> None:
        if self.task_started and np.isfinite(
            self.results.arrays["weight_magnitude_all"][self.task]
        ):
            self._log_measures(self.task)

    def data_identity(self) -> dict[str, Any]:
        return identify_files(self.files)


def _identity(logits: Tensor) -> Tensor:
    return logits


def prepare_run(config: ContinualImageNetConfig) -> ContinualImageNetRun:
    """Claim the run directory, find the class files and build (or restore) the run."""
    files = find_class_files(config.data_dir)

    def make(run_dir: Path) -> ContinualImageNetRun:
        return ContinualImageNetRun(config, files, run_dir)

    return prepare(config, make, command=NAME, label=config.label(), resumable=RESUMABLE)


def run(config: ContinualImageNetConfig, *, stop_at_steps: int | None = None) -> RunSummary:
    """Train (or resume) a continual-ImageNet run; the run directory is locked until it returns."""
    return run_prepared(prepare_run, config, stop_at_steps)


def parse(argv: Sequence[str]) -> ContinualImageNetConfig:
    return parse_config(ContinualImageNetConfig, argv, NAME)


def main(argv: list[str] | None = None) -> int:
    """``python -m cbp_rl.train continual-imagenet``; returns the exit code."""
    return command_main(NAME, parse, prepare_run, run_loop, argv)


def cost(config: ContinualImageNetConfig, total: int, units: int | None, measure: Measure) -> Cost:
    """A run's cost from two short runs of 1 and 2 tasks (``units``: epochs per task; default
    the config's): the slope is the cost of one task, the rest is fixed."""
    epochs = ["--epochs", str(units or config.epochs)]
    c1, _ = measure(["--tasks", "1", *epochs])
    c2, _ = measure(["--tasks", "2", *epochs])
    per_task = max(0.0, c2 - c1)
    per_epoch = per_task / int(units or config.epochs)
    fixed = max(0.0, c1 - per_task)
    return Cost(per_epoch, 0.0, fixed, fixed + per_epoch * total)


COMMAND = Command(
    name=NAME,
    summary="continual ImageNet: binary tasks for the reference's conv net (bp, l2, snp, cbp)",
    main=main,
    parse=parse,
    config=ContinualImageNetConfig,
    metric="accuracy",
    unit="epochs",
    budget=lambda config: int(config.tasks * config.epochs),
    budget_flags=("--tasks",),
    resume_flags=lambda config: ["--tasks", str(config.tasks), "--resume-fallback"],
    cost=cost,
    **seed_fields(many_seeds=False),
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``plot`` see it."""

__all__ = [
    "COMMAND",
    "IMAGENET_LEARNERS",
    "LEARNER_DEFAULTS",
    "ContinualImageNetConfig",
    "ContinualImageNetRun",
    "class_order",
    "main",
    "parse",
    "run",
]
