"""Class-incremental CIFAR-100 with ResNet-18 (Dohare et al. 2024).

``python -m cbp_rl.train incremental-cifar --data-dir DIR --learner cbp``

The network (the reference's CIFAR ResNet-18: 3x3 stride-1 stem, no max pooling, conv biases,
100 outputs) starts on the first 5 classes of a seeded class order; every 200 epochs 5 more
are added, until 100 (20 tasks). Each class gives 450 training and 50 validation images (the
first 50 of the class in the train file), and its 100 test images. Each epoch: minibatches of
90 augmented images (random horizontal flip, random 32x32 crop of the image padded by 4 with
reflection, random rotation of 0-15 degrees), then validation and test accuracy; the logits are
the outputs of the classes seen so far. SGD step size 0.1 (0.02, 0.004, 0.0008 from the 60th,
120th, 160th epoch of each task), momentum 0.9, weight decay 5e-4. Early stopping: at the end
of a task the network takes the weights of its epoch with the best validation accuracy.

Learners (the reference's cfg files): ``base``; ``head_reset`` (the output layer reinitialized
at each new task); ``snp`` (Gaussian noise of std 1e-5 on every parameter after each step);
``retrain`` (the whole network reinitialized at each new task); ``cbp`` (replacement rate 1e-5,
maturity 1000, contribution utility).

A run directory holds ``config.json`` (with ``"algorithm": "incremental-cifar"``), TensorBoard
events (step = epoch), ``results.npz``, ``status.json`` and the checkpoints. ``results.npz``:
per epoch ``epoch_train_accuracy``, ``epoch_train_loss``, ``epoch_validation_accuracy``,
``epoch_test_accuracy``, ``epoch_test_loss``, ``epoch_step_size`` ``[epochs]``; per task
``task_test_accuracy`` (of the early-stopped network), ``task_validation_accuracy`` (its best),
``task_train_accuracy`` (last epoch), ``best_epoch``; at each task start (the network the
previous task ended with, before any reset), on up to 1000 training images of the task's new
classes: ``dead_units``, ``dormant_units`` (non-zero on less than 1% of inputs and positions),
``effective_rank``, ``rank99``, ``stable_rank`` ``[tasks, layers]`` (ranks only for the last
hidden layer, the 512 pooled features; NaN elsewhere), ``weight_magnitude`` ``[tasks,
layers + 1]``, ``weight_magnitude_all``, ``replacements``; ``class_order`` ``[100]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbp_rl.cbp import CBPConfig
from cbp_rl.nets import ResNet, resnet18
from cbp_rl.run.cbp_flags import cbp_flags, to_cbp_config
from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.run.command import Command, Cost, Measure
from cbp_rl.run.conventions import finite_floats
from cbp_rl.run.runtime import resolve_device
from cbp_rl.run.seeding import derive_seed
from cbp_rl.supervised.command import command_main, parse_config, seed_fields
from cbp_rl.supervised.conv_learner import (
    LAYER_MEASURES,
    SGDConfig,
    StepResult,
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
from cbp_rl.supervised.images import CIFAR_CLASSES, CifarData, load_cifar100

NAME = "incremental-cifar"
CifarLearner = Literal["base", "head_reset", "snp", "retrain", "cbp"]
CIFAR_LEARNERS: tuple[str, ...] = get_args(CifarLearner)
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
SCHEDULE = ((0.0, 1.0), (0.3, 0.2), (0.6, 0.2**2), (0.8, 0.2**3))
"""(fraction of the task's epochs, step-size factor): the reference's epochs 0, 60, 120, 160
of 200."""
ResidualStream = Literal["leave_out", "reference_chain"]


_CifarCBPHyperparameters = cbp_flags(
    "CifarCBPHyperparameters",
    defaults={
        "replacement_rate": 1e-5,
        "maturity_threshold": 1000,
        "decay_rate": 0.99,
        "utility": "contribution",
        "accumulate": True,
    },
    types={
        "utility": Literal["contribution", "weight"],
        "init": Literal["kaiming", "lecun", "xavier", "default"],
    },
    notes={"utility": "The reference accepts contribution or weight."},
)


@finite_floats
@dataclass(frozen=True)
class CifarCBPConfig(_CifarCBPHyperparameters):  # type: ignore[misc, valid-type]
    """Continual backprop (learner cbp): the reference's cfg continual_backpropagation.json; its
    hyperparameters are :class:`cbp_rl.CBPConfig`'s."""

    residual_stream: ResidualStream = "leave_out"
    """Units on the residual stream: leave_out (found from the data flow; units the identity
    paths also carry are left out, so a replacement leaves the output unchanged), or
    reference_chain (the reference's res_gnt.py: every conv and the next one in registration
    order, downsample paths skipped, block outputs included)."""

    def to_cbp_config(self) -> CBPConfig:
        return to_cbp_config(self)


@finite_floats
@dataclass(frozen=True)
class IncrementalCifarConfig:
    """Class-incremental CIFAR-100: ResNet-18 learns 5 more classes every 200 epochs."""

    learner: CifarLearner = "base"
    """base, head_reset, snp (shrink and perturb), retrain (new network each task) or cbp."""
    seed: int = 0
    """Seed of the class order, the initial weights, minibatch orders, augmentation and CBP."""
    data_dir: Path | None = None
    """Directory holding cifar-100-python/ (or that folder itself); default $CBP_RL_DATA_DIR,
    else ~/.cache/cbp_rl/cifar-100 (downloads go there)."""
    download: bool = True
    """Download the archive when missing (md5-checked)."""
    verify_data: bool = True
    """Check every file's md5 against the official archive's."""
    first_classes: int = 5
    """Classes of the first task."""
    classes_per_task: int = 5
    """Classes added at each new task."""
    total_classes: int = 100
    """Classes at the end (tasks = 1 + (total - first) / per task)."""
    epochs_per_task: int = 200
    """Epochs of each task."""
    train_per_class: int = 450
    """Training images per class (from the train file, after the validation ones)."""
    validation_per_class: int = 50
    """Validation images per class: the first of each class in the train file."""
    batch_size: int = 90
    """Minibatch size."""
    eval_batch_size: int = 500
    """Batch size of evaluation and measures (no effect on results)."""
    step_size: float = field(default=0.1, metadata={"range": (0.0, None)})
    """Initial SGD step size of each task (then x0.2 at 30%, 60% and 80% of its epochs)."""
    momentum: float = field(default=0.9, metadata={"range": (0.0, 1.0)})
    """SGD momentum."""
    weight_decay: float = field(default=5e-4, metadata={"range": (0.0, None)})
    """Coupled L2."""
    noise_std: float | None = field(default=None, metadata={"range": (0.0, None)})
    """Noise std after each step; default 1e-5 for snp, else 0."""
    early_stopping: bool = True
    """End each task with the weights of its best-validation epoch."""
    augment: bool = True
    """Augment training images (flip, padded crop, rotation)."""
    augment_test: bool = False
    """Augment test images too, as the reference's data loader does (its validation images are
    not augmented)."""
    cbp: CifarCBPConfig = field(default_factory=CifarCBPConfig)
    measure_every: int = 1
    """Take the plasticity measures at the start of every this-many tasks (0: never)."""
    probe_examples: int = 1000
    """Training images of the task's new classes the measures are taken on."""
    dormant_threshold: float = field(default=0.01, metadata={"range": (0.0, 1.0)})
    """A unit is dormant when non-zero on less than this fraction of inputs and positions."""
    run: ConvRunConfig = field(default_factory=ConvRunConfig)

    def __post_init__(self) -> None:
        positive = (
            "first_classes", "classes_per_task", "total_classes", "epochs_per_task",
            "train_per_class", "validation_per_class", "batch_size", "eval_batch_size",
            "probe_examples",
        )  # fmt: skip
        check_conv_flags(self, CIFAR_LEARNERS, positive)
        if self.total_classes > CIFAR_CLASSES or self.first_classes > self.total_classes:
            raise ValueError(
                f"need --first-classes <= --total-classes <= {CIFAR_CLASSES}, got "
                f"{self.first_classes} and {self.total_classes}"
            )
        if (self.total_classes - self.first_classes) % self.classes_per_task:
            raise ValueError(
                "--total-classes minus --first-classes must be a multiple of --classes-per-task"
            )
        self.sgd()
        self.cbp.to_cbp_config()

    @property
    def tasks(self) -> int:
        return 1 + (self.total_classes - self.first_classes) // self.classes_per_task

    def classes_at(self, task: int) -> int:
        """Classes seen in ``task`` (0-based)."""
        return self.first_classes + task * self.classes_per_task

    def step_size_at(self, epoch: int) -> float:
        """The step size in epoch ``epoch`` of a task (the reference rounds to 5 decimals)."""
        size = self.step_size
        for fraction, factor in SCHEDULE:
            if epoch >= round(fraction * self.epochs_per_task):
                size = round(self.step_size * factor, 5) if factor != 1.0 else self.step_size
        return size

    def sgd(self) -> SGDConfig:
        noise = self.noise_std
        if noise is None:
            noise = 1e-5 if self.learner == "snp" else 0.0
        return SGDConfig(
            step_size=self.step_size,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            noise_std=noise,
        )

    @property
    def checkpoint_epochs(self) -> int:
        every = self.run.checkpoint_every
        return 10 if every is None else every

    def label(self) -> str:
        return f"{self.learner}-s{self.seed}"


RESUMABLE = ("run", "data_dir", "download")


# --------------------------------------------------------------------------- pixels


def normalize(images: Tensor) -> Tensor:
    """uint8 ``[N, 3, 32, 32]`` -> float32 divided by 255, then per-channel mean and std."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean) / std


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """The reference's training augmentation of normalized float images, in its order:
    horizontal flip (p 0.5), a random 32x32 crop of the image reflection-padded by 4, a rotation
    by U(0, 15) degrees (nearest-neighbour, zero fill). Draws come from the CPU ``generator``,
    so a run augments alike on every device."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    offsets = torch.randint(0, 9, (n, 2), generator=generator)
    angles = torch.rand(n, generator=generator) * 15.0
    device = images.device
    out = torch.where(flip.to(device).view(n, 1, 1, 1), images.flip(3), images)
    padded = F.pad(out, (4, 4, 4, 4), mode="reflect")
    rows = (offsets[:, 0].to(device).view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
    cols = (offsets[:, 1].to(device).view(n, 1) + torch.arange(w, device=device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    cropped = padded[batch, channel, rows, cols]
    theta = angles.to(device) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    matrix = torch.stack([cos, -sin, zeros, sin, cos, zeros], 1).view(n, 2, 3)
    grid = F.affine_grid(matrix, list(cropped.shape), align_corners=False)
    return F.grid_sample(cropped, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------- network


@torch.no_grad()
def reference_init_(module: nn.Module) -> None:
    """The reference's ``kaiming_init_resnet_module``: kaiming-normal (fan-in) weights with the
    ReLU gain for convs and the linear gain for the output layer, zero biases, norms at 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            m.bias.zero_()
        if isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()


def build_resnet(seed: int) -> ResNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        net = resnet18(CIFAR_CLASSES, cifar=True)
        reference_init_(net)
    return net


def cbp_options(stream: ResidualStream, device: torch.device) -> dict[str, Any]:
    """How :class:`~cbp_rl.ContinualBackprop` finds the units of the ResNet: from the data flow
    of an example batch, or by the reference's chain."""
    if stream == "reference_chain":
        return {"residual_stream": "reference_chain"}
    return {
        "residual_stream": "leave_out",
        "example_inputs": torch.zeros(2, 3, 32, 32, device=device),
    }


@torch.no_grad()
def resnet_features(net: nn.Module, inputs: Tensor) -> list[Tensor]:
    """The reference's feature list of its CIFAR ResNet, as ``[M, units, P]``: the stem's ReLU
    output, each block's two ReLU outputs (after the first conv, and after the residual sum),
    with the last block's output replaced by the pooled features that the output layer reads
    (17 for ResNet-18)."""
    recorded: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        recorded.append(output.detach().clone())

    def keep_input(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        recorded.append(args[0].detach().clone())

    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    fc = next(m for m in reversed(list(net.modules())) if isinstance(m, nn.Linear))
    handles = [m.register_forward_hook(keep) for m in relus]
    handles.append(fc.register_forward_pre_hook(keep_input))
    try:
        net(inputs)
    finally:
        for handle in handles:
            handle.remove()
    features = recorded[:-2] + recorded[-1:]
    return [f.reshape(f.shape[0], f.shape[1], -1) for f in features]


# --------------------------------------------------------------------------- the run


class IncrementalCifarRun(TaskEpochRun):
    command = NAME

    def __init__(self, config: IncrementalCifarConfig, data: CifarData, run_dir: Path):
        self.data = data
        device = resolve_device(config.run.device)
        rng = np.random.default_rng(derive_seed(config.seed, "class_order"))
        self.class_order = rng.permutation(CIFAR_CLASSES)[: config.total_classes]
        self._split(config, device)
        self.net = build_resnet(config.seed).to(device)
        self.learner = make_learner(
            self.net,
            config,
            cbp_options(config.cbp.residual_stream, device) if config.learner == "cbp" else None,
        )
        self.num_features = len(resnet_features(self.net, torch.zeros(1, 3, 32, 32, device=device)))
        self.augmenter = torch.Generator().manual_seed(derive_seed(config.seed, "augment"))
        epochs = config.tasks * config.epochs_per_task
        layers = self.num_features
        shapes: dict[str, tuple[int, ...]] = {
            f"epoch_{name}": (epochs,)
            for name in (
                "train_accuracy", "train_loss", "validation_accuracy", "test_accuracy",
                "test_loss", "step_size",
            )
        }  # fmt: skip
        shapes.update(
            {
                name: (config.tasks,)
                for name in (
                    "task_test_accuracy",
                    "task_validation_accuracy",
                    "task_train_accuracy",
                    "best_epoch",
                    "weight_magnitude_all",
                )
            }
        )
        shapes.update({name: (config.tasks, layers) for name in LAYER_MEASURES})
        shapes["weight_magnitude"] = (config.tasks, len(self._weights()))
        shapes["replacements"] = (config.tasks, max(1, len(self.learner.replacements())))
        shapes["class_order"] = (config.total_classes,)
        self.results = ConvResults.empty(NAME, shapes, class_names=data.class_names)
        self.results.arrays["class_order"][:] = self.class_order
        self.best: dict[str, Any] | None = None
        """State dict of the task's best-validation epoch so far, and its accuracy and epoch."""
        self.replaced_before = self.learner.replacements()
        self.classes_now = config.first_classes
        self.select = torch.as_tensor(self.class_order, device=device)
        super().__init__(
            config, run_dir, every=config.checkpoint_epochs, seed=derive_seed(config.seed, "data")
        )

    def _split(self, config: IncrementalCifarConfig, device: torch.device) -> None:
        """Per class (in class order): validation, training and test images, on the device."""
        val, train = config.validation_per_class, config.train_per_class
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        labels: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for position, cls in enumerate(self.class_order):
            mine = np.flatnonzero(self.data.train.labels == cls)
            if len(mine) < val + train:
                raise ValueError(
                    f"class {cls} has {len(mine)} training images, fewer than "
                    f"--validation-per-class {val} + --train-per-class {train}"
                )
            tests = np.flatnonzero(self.data.test.labels == cls)
            for name, index in (
                ("val", mine[:val]), ("train", mine[val : val + train]), ("test", tests)
            ):  # fmt: skip
                images = self.data.train.images if name != "test" else self.data.test.images
                parts[name].append(images[index])
                labels[name].append(np.full(len(index), position))
        self.images = {k: torch.from_numpy(np.concatenate(v)).to(device) for k, v in parts.items()}
        self.labels = {k: torch.from_numpy(np.concatenate(v)).to(device) for k, v in labels.items()}
        self.per_class = {k: len(v[0]) for k, v in parts.items()}

    def _weights(self) -> list[Tensor]:
        return [m.weight for m in self.net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    # ------------------------------------------------------------- sizes
    def epochs_per_task(self) -> int:
        return int(self.config.epochs_per_task)

    def train_size(self, task: int) -> int:
        return int(self.config.classes_at(task) * self.per_class["train"])

    def _subset(self, name: str, classes: int, start: int = 0) -> tuple[Tensor, Tensor]:
        per = self.per_class[name]
        rows = slice(start * per, classes * per)
        return self.images[name][rows], self.labels[name][rows]

    def _head(self, logits: Tensor) -> Tensor:
        return logits[:, self.select[: self.classes_now]]

    # ------------------------------------------------------------- tasks
    def load_task(self) -> None:
        self.classes_now = self.config.classes_at(self.task)

    def start_task(self) -> None:
        config = self.config
        every = config.measure_every
        if every and self.task % every == 0:
            self._measure()
        if self.task > 0 and config.learner in ("head_reset", "retrain"):
            self._reinitialize(self.net.fc if config.learner == "head_reset" else self.net)
        self.best = None
        self.replaced_before = self.learner.replacements()

    def _reinitialize(self, module: nn.Module) -> None:
        """The reference's init of ``module``, drawn from the run's seed and the task alone, so
        that a run (and a resumed one) redraws the same weights whatever ran before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.config.seed, f"reset-{self.task}"))
            reference_init_(module)

    def _measure(self) -> None:
        new = self.config.first_classes if self.task == 0 else self.config.classes_per_task
        images, _ = self._subset("train", self.classes_now, self.classes_now - new)
        probe = normalize(images[: self.config.probe_examples])
        measures = plasticity_measures(
            self.net,
            lambda inputs: resnet_features(self.net, inputs),
            probe,
            self._weights(),
            dormant_threshold=self.config.dormant_threshold,
            rank_layers=[self.num_features - 1],
            batch_size=self.config.eval_batch_size,
        )
        self.record_measures(measures)
        self._log_measures(self.task)

    def _log_measures(self, task: int) -> None:
        arrays, last = self.results.arrays, self.num_features - 1
        values = {
            "plasticity/dead_units/all": float(np.mean(arrays["dead_units"][task])),
            "plasticity/dormant_units/all": float(np.mean(arrays["dormant_units"][task])),
            "plasticity/effective_rank/last": float(arrays["effective_rank"][task, last]),
            "plasticity/rank99/last": float(arrays["rank99"][task, last]),
            "plasticity/stable_rank/last": float(arrays["stable_rank"][task, last]),
            "plasticity/weight_magnitude/all": float(arrays["weight_magnitude_all"][task]),
        }
        for layer in range(self.num_features):
            values[f"plasticity/dormant_units/{layer}"] = float(
                arrays["dormant_units"][task, layer]
            )
        self.log(values, self.epochs_done())

    def begin_epoch(self) -> None:
        size = self.config.step_size_at(self.epoch)
        self.learner.set_step_size(size)
        self.results.set("epoch_step_size", self.epochs_done(), size)

    def train_batch(self, indices: Tensor) -> StepResult:
        index = indices.to(self.images["train"].device)
        images = normalize(self.images["train"][index])
        if self.config.augment:
            images = augment(images, self.augmenter)
        return self.learner.train_step(images, self.labels["train"][index], self._head)

    def _evaluate(self, name: str) -> StepResult:
        images, labels = self._subset(name, self.classes_now)
        inputs = normalize(images)
        if name == "test" and self.config.augment_test:
            inputs = augment(inputs, self.augmenter)
        return self.learner.evaluate(inputs, labels, self._head, self.config.eval_batch_size)

    def end_epoch(self, train: StepResult) -> None:
        val, test = self._evaluate("val"), self._evaluate("test")
        epoch = self.epochs_done()
        values = {
            "train_accuracy": train.correct / train.examples,
            "train_loss": train.loss_sum / train.examples,
            "validation_accuracy": val.correct / val.examples,
            "test_accuracy": test.correct / test.examples,
            "test_loss": test.loss_sum / test.examples,
        }
        for name, value in values.items():
            self.results.set(f"epoch_{name}", epoch, value)
        self.log({f"epoch/{k}": v for k, v in values.items()}, epoch + 1)
        if self.best is None or values["validation_accuracy"] > self.best["accuracy"]:
            self.best = {
                "accuracy": values["validation_accuracy"],
                "test_accuracy": values["test_accuracy"],
                "epoch": epoch,
                "net": copy.deepcopy(self.net.state_dict()),
            }

    def end_task(self) -> None:
        assert self.best is not None
        arrays, task = self.results.arrays, self.task
        last_epoch = self.epochs_done() - 1  # the task's last epoch (already counted)
        if self.config.early_stopping:
            self.net.load_state_dict(self.best["net"])
            test_accuracy = self.best["test_accuracy"]
        else:
            test_accuracy = arrays["epoch_test_accuracy"][last_epoch]
        arrays["task_test_accuracy"][task] = test_accuracy
        arrays["task_validation_accuracy"][task] = self.best["accuracy"]
        arrays["task_train_accuracy"][task] = arrays["epoch_train_accuracy"][last_epoch]
        arrays["best_epoch"][task] = self.best["epoch"]
        values = {
            "task/test_accuracy": float(test_accuracy),
            "task/validation_accuracy": float(self.best["accuracy"]),
        }
        per_task = self.record_replacements(self.replaced_before)
        if per_task:
            values["task/replacements"] = float(sum(per_task))
        self.log(values, last_epoch + 1)
        self.best = None

    # ------------------------------------------------------------- checkpoints and logs
    def extra_state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "augmenter": torch_generator_state(self.augmenter),
            "replaced_before": list(self.replaced_before),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        restore_torch_generator(self.augmenter, state["augmenter"])
        self.replaced_before = [int(n) for n in state["replaced_before"]]

    def log_step(self) -> int:
        return self.epochs_done() + 1

    def relog_after_resume(self) -> None:
        pass  # task-start measures are logged at the task's first epoch, before the purge step

    def data_identity(self) -> dict[str, Any]:
        return {"md5": dict(self.data.md5), "train": len(self.data.train.labels)}


def prepare_run(config: IncrementalCifarConfig) -> IncrementalCifarRun:
    """Claim the run directory, load CIFAR-100 and build (or restore) the run."""
    data = load_cifar100(config.data_dir, download=config.download, verify=config.verify_data)

    def make(run_dir: Path) -> IncrementalCifarRun:
        return IncrementalCifarRun(config, data, run_dir)

    return prepare(
        config,
        make,
        command=NAME,
        label=config.label(),
        resumable=RESUMABLE,
        budget_flag="--total-classes",
    )


def run(config: IncrementalCifarConfig, *, stop_at_steps: int | None = None) -> RunSummary:
    """Train (or resume) a class-incremental CIFAR-100 run; the run directory is locked until it
    returns."""
    return run_prepared(prepare_run, config, stop_at_steps)


def parse(argv: Sequence[str]) -> IncrementalCifarConfig:
    return parse_config(IncrementalCifarConfig, argv, NAME)


def main(argv: list[str] | None = None) -> int:
    """``python -m cbp_rl.train incremental-cifar``; returns the exit code."""
    return command_main(NAME, parse, prepare_run, run_loop, argv)


def cost(config: IncrementalCifarConfig, total: int, units: int | None, measure: Measure) -> Cost:
    """A run's cost from two short runs on the first task's classes (1 and 2 epochs): one epoch
    costs in proportion to the classes seen, so the run costs the first epoch's cost times the
    summed class counts of all epochs (``units`` is not used)."""
    first = ["--total-classes", str(config.first_classes)]
    c1, _ = measure([*first, "--epochs-per-task", "1"])
    c2, _ = measure([*first, "--epochs-per-task", "2"])
    first_epoch = max(0.0, c2 - c1)
    fixed = max(0.0, c1 - first_epoch)
    scaled = sum(config.classes_at(t) for t in range(config.tasks)) / config.first_classes
    per_run = fixed + first_epoch * scaled * config.epochs_per_task
    return Cost((per_run - fixed) / total, 0.0, fixed, per_run)


COMMAND = Command(
    name=NAME,
    summary="class-incremental CIFAR-100 with ResNet-18 (base, head reset, snp, retrain, cbp)",
    main=main,
    parse=parse,
    config=IncrementalCifarConfig,
    metric="accuracy",
    unit="epochs",
    budget=lambda config: int(config.tasks * config.epochs_per_task),
    budget_flags=(),
    resume_flags=lambda config: ["--resume-fallback"],
    cost=cost,
    **seed_fields(many_seeds=False),
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``plot`` see it."""

__all__ = [
    "CIFAR_LEARNERS",
    "COMMAND",
    "IncrementalCifarConfig",
    "IncrementalCifarRun",
    "augment",
    "main",
    "normalize",
    "parse",
    "reference_init_",
    "resnet_features",
    "run",
]
