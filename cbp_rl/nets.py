"""Network builders (MLPs; ResNets in torchvision's layout) and the paper's weight
initializations (kaiming, lecun, xavier, default)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn

InitName = Literal["kaiming", "lecun", "xavier", "default"]
INIT_NAMES: tuple[str, ...] = get_args(InitName)

ActivationName = Literal[
    "relu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "identity"
]
ACTIVATION_NAMES: tuple[str, ...] = get_args(ActivationName)

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "identity": nn.Identity,
}

# Activations without a gain of their own in torch.nn.init.calculate_gain use the ReLU gain,
# as the reference code does for swish and elu.
_RELU_LIKE = (
    nn.ReLU,
    nn.ReLU6,
    nn.ELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.PReLU,
)


class CReLU(nn.Module):
    """Concatenated ReLU (Shang et al. 2016; against loss of plasticity Abbas et al. 2023):
    ``[relu(x), relu(-x)]``, twice the features along ``dim``.

    Along the last dimension (``dim=-1``, after a Linear layer) the two halves are interleaved,
    ``[relu(x_0), relu(-x_0), relu(x_1), relu(-x_1), ...]``: a permutation of the concatenation
    (the layer reading it learns the same function) in which unit ``j`` owns the next layer's
    input columns ``2j, 2j + 1``, so CBP, ReDo and the measures treat the pair as one unit. Along
    ``dim=1`` (channels of a conv) they are concatenated.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim == -1:
            return torch.stack([torch.relu(x), torch.relu(-x)], -1).flatten(-2)
        return torch.cat([torch.relu(x), torch.relu(-x)], self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def validate_init(init: str) -> None:
    """Raise ``ValueError`` naming the valid initializations if ``init`` is not one."""
    if init not in INIT_NAMES:
        raise ValueError(f"unknown init {init!r}; valid inits are {', '.join(INIT_NAMES)}")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name (``relu``, ``tanh``, ...)."""
    try:
        return _ACTIVATION_MODULES[name]()
    except KeyError:
        valid = ", ".join(ACTIVATION_NAMES)
        raise ValueError(f"unknown activation {name!r}; valid activations are {valid}") from None


def activation_gain(activation: nn.Module | str | None) -> float:
    """The gain ``torch.nn.init.calculate_gain`` gives an activation (module or name)."""
    if activation is None:
        return 1.0
    if isinstance(activation, str):
        activation = make_activation(activation)
    if isinstance(activation, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", activation.negative_slope)
    if isinstance(activation, (*_RELU_LIKE, CReLU)):
        return nn.init.calculate_gain("relu")
    if isinstance(activation, nn.Tanh):
        return nn.init.calculate_gain("tanh")
    if isinstance(activation, nn.Sigmoid):
        return nn.init.calculate_gain("sigmoid")
    if isinstance(activation, nn.SELU):
        return nn.init.calculate_gain("selu")
    return 1.0


def init_bound(init: str, fan_in: int, fan_out: int, gain: float) -> float:
    """Half-width of the uniform distribution a weight of this layer is drawn from.

    kaiming ``gain * sqrt(3 / fan_in)``, lecun ``sqrt(3 / fan_in)``, default ``sqrt(1 / fan_in)``,
    xavier ``gain * sqrt(6 / (fan_in + fan_out))``, as in the reference code.
    """
    validate_init(init)
    if init == "kaiming":
        return gain * math.sqrt(3.0 / fan_in)
    if init == "lecun":
        return math.sqrt(3.0 / fan_in)
    if init == "xavier":
        return gain * math.sqrt(6.0 / (fan_in + fan_out))
    return math.sqrt(1.0 / fan_in)


def fan_in_out(layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or conv layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    receptive = int(math.prod(layer.kernel_size))
    return layer.in_channels * receptive // layer.groups, layer.out_channels * receptive


@torch.no_grad()
def init_layer_(
    layer: nn.Linear | nn.Conv2d,
    init: str,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> None:
    """Initialize weights uniformly within :func:`init_bound` and set the bias to zero."""
    fan_in, fan_out = fan_in_out(layer)
    bound = init_bound(init, fan_in, fan_out, gain)
    layer.weight.uniform_(-bound, bound, generator=generator)
    if layer.bias is not None:
        layer.bias.zero_()


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int,
    *,
    activation: str = "relu",
    init: str = "kaiming",
    output_gain: float = 1.0,
    layer_norm: bool = False,
) -> nn.Sequential:
    """An MLP ``Linear -> [LayerNorm] -> activation -> ... -> Linear`` with the paper's inits.

    Hidden layers use the activation's gain, the output layer ``output_gain`` (the linear gain 1 by
    default); biases start at zero. With ``init="lecun"`` every layer, the output layer included,
    is ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`` as in the reference PPO.
    """
    validate_init(init)
    if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden_sizes):
        raise ValueError(
            f"layer sizes must be positive, got in={in_dim}, hidden={list(hidden_sizes)}, "
            f"out={out_dim}"
        )
    layers: list[nn.Module] = []
    previous = in_dim
    for width in hidden_sizes:
        linear = nn.Linear(previous, width)
        act = make_activation(activation)
        init_layer_(linear, init, activation_gain(act))
        layers.append(linear)
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(act)
        previous = width
    head = nn.Linear(previous, out_dim)
    init_layer_(head, init, output_gain)
    layers.append(head)
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ ResNets
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=bias)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=bias)


NormFactory = Callable[[int], nn.Module]


class _ResidualBlock(nn.Module):
    """What torchvision's two blocks share: their arguments, ``downsample``
    (``Sequential(conv1x1, norm)``) mapping the identity when the shape changes, and the end
    ``relu(out + identity)``. Subclasses build their layers in :meth:`_build`, registered before
    ``downsample`` as in torchvision."""

    expansion: int = 1
    relu: nn.ReLU

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: NormFactory = nn.BatchNorm2d,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self._build(inplanes, planes, stride, norm_layer, bias)
        self.downsample = downsample
        self.stride = stride

    def _build(
        self, inplanes: int, planes: int, stride: int, norm_layer: NormFactory, bias: bool
    ) -> None:
        raise NotImplementedError

    def _add_identity(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class BasicBlock(_ResidualBlock):
    """torchvision's ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``.

    ``self.relu`` is used twice, as in torchvision; ``downsample`` (``Sequential(conv1x1, norm)``)
    maps the identity when the shape changes.
    """

    expansion: int = 1

    def _build(
        self, inplanes: int, planes: int, stride: int, norm_layer: NormFactory, bias: bool
    ) -> None:
        self.conv1 = _conv3x3(inplanes, planes, stride, bias)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, bias)
        self.bn2 = norm_layer(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._add_identity(self.bn2(self.conv2(out)), x)


class Bottleneck(_ResidualBlock):
    """torchvision's bottleneck block: 1x1 reduce, 3x3 (strided), 1x1 expand (x4), plus identity."""

    expansion: int = 4

    def _build(
        self, inplanes: int, planes: int, stride: int, norm_layer: NormFactory, bias: bool
    ) -> None:
        self.conv1 = _conv1x1(inplanes, planes, 1, bias)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, bias)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion, 1, bias)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._add_identity(self.bn3(self.conv3(out)), x)


class ResNet(nn.Module):
    """A ResNet with torchvision's module names (``conv1, bn1, relu, maxpool, layer1..layer4,
    avgpool, fc``; blocks with ``downsample = Sequential(conv, norm)``) and initialization
    (kaiming-normal fan-out convs, norms at weight 1 and bias 0).

    ``cifar=True`` is the variant of the paper's class-incremental CIFAR-100 runs: a 3x3 stride-1
    stem and no max pooling (``maxpool`` is an ``nn.Identity``, so the state-dict keys match).
    ``conv_bias`` gives every conv a bias (the reference's CIFAR variant has them; torchvision's
    convs have none); ``None`` follows ``cifar``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        cifar: bool = False,
        conv_bias: bool | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self._bias = cifar if conv_bias is None else conv_bias
        self._norm_layer = norm_layer
        self.inplanes = 64
        if cifar:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=self._bias)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=self._bias)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._initialize(zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        width = planes * block.expansion
        if stride != 1 or self.inplanes != width:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, width, stride, self._bias), self._norm_layer(width)
            )
        norm, bias = self._norm_layer, self._bias
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=norm, bias=bias)]
        self.inplanes = width
        layers += [block(width, planes, norm_layer=norm, bias=bias) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def _initialize(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                last = module.bn3 if isinstance(module, Bottleneck) else None
                last = module.bn2 if isinstance(module, BasicBlock) else last
                if isinstance(last, nn.BatchNorm2d):
                    nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(
    num_classes: int = 1000,
    *,
    cifar: bool = False,
    conv_bias: bool | None = None,
    norm_layer: NormFactory = nn.BatchNorm2d,
    zero_init_residual: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-18 (BasicBlocks ``[2, 2, 2, 2]``) in torchvision's layout; see :class:`ResNet`.

    >>> net = resnet18(num_classes=100, cifar=True)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    """
    return ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes,
        cifar=cifar,
        conv_bias=conv_bias,
        norm_layer=norm_layer,
        zero_init_residual=zero_init_residual,
        in_channels=in_channels,
    )


def resnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50 (Bottlenecks ``[3, 4, 6, 3]``) in torchvision's layout; see :class:`ResNet`."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def conv_net(num_classes: int = 2, in_channels: int = 3) -> nn.Sequential:
    """The continual-ImageNet network of Dohare et al. (2024), for 32x32 images.

    ``conv 5x5 32 -> pool -> conv 3x3 64 -> pool -> conv 3x3 128 -> pool -> fc 128 -> fc 128 ->
    fc num_classes``, ReLU after every hidden layer, 2x2 max pooling after each convolution, and
    PyTorch's default initialization, as in the reference. The modules are registered in the
    order of the forward pass, so :class:`~cbp_rl.ContinualBackprop` finds its five hidden
    layers; the output layer is the last module.
    """
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(128 * 2 * 2, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
