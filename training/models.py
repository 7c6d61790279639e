"""Classifiers for square images: the 28x28 grey digits and clothes, and pictures of any size with 1 or 3
channels. Each takes [N, C, S, S] and returns logits; `WithSoftmax` turns logits into the probabilities
the exported model answers. At 28x28 every architecture is exactly the one the shipped models were
trained with; at other sizes the convnets end in a global average pool instead of a fixed-size flatten
(and the batch-norm convnet gains stages, so that its features still see most of the picture).

The digit models normalise their [0, 1] pixels themselves (`Normalize`, the training set's statistics
stored in the graph); models trained on folders of pictures leave it at the identity and declare the
mean / std in their card instead, as photo classifiers usually do."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "hardtanh": nn.Hardtanh}
DIGIT_SIZE = 28


class Normalize(nn.Module):
    """(x - mean) / std with the training set's statistics, stored in the model."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SoftmaxRegression(nn.Module):
    """Multiclass logistic regression: one linear layer on the raw pixels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = DIGIT_SIZE):
        super().__init__()
        inputs = in_channels * image_size * image_size
        self.normalize = Normalize()
        self.linear = nn.Linear(inputs, num_classes)
        self.description = f"multiclass logistic (softmax) regression on the {inputs} pixels"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalize(x).flatten(1))


class MLP(nn.Module):
    """Fully connected layers with a chosen activation and dropout between them."""

    def __init__(
        self,
        num_classes: int = 10,
        hidden: tuple[int, ...] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.2,
        in_channels: int = 1,
        image_size: int = DIGIT_SIZE,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.normalize = Normalize()
        layers: list[nn.Module] = []
        width = in_channels * image_size * image_size
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        sizes = "-".join(str(size) for size in hidden) or "none"
        self.description = f"MLP, hidden layers {sizes}, {activation} activation, dropout {dropout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(x).flatten(1))


class LeCun1989(nn.Module):
    """The shape of LeCun et al. (1989): two layers of shared-weight 5x5 feature maps with stride 2,
    the second reading only 8 of the 12 first-layer maps, then 30 hidden units; tanh throughout.
    (The 1989 net read 16x16 images; here the same layers read 28x28, or any size, with padding.)"""

    description = "LeCun 1989 convnet: 12 5x5/2 maps, 12 5x5/2 maps on 8-of-12 inputs, 30 hidden, tanh"
    # Which 8 of the 12 H1 maps feed each group of 4 H2 maps (as in the paper's partial connectivity).
    H2_INPUTS = ((0, 1, 2, 3, 4, 5, 6, 7), (4, 5, 6, 7, 8, 9, 10, 11), (0, 1, 2, 3, 8, 9, 10, 11))

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = DIGIT_SIZE):
        super().__init__()
        self.normalize = Normalize()
        self.h1 = nn.Conv2d(in_channels, 12, 5, stride=2, padding=2)  # 28x28 -> 12 x 14x14
        self.h2 = nn.ModuleList(nn.Conv2d(8, 4, 5, stride=2, padding=2) for _ in self.H2_INPUTS)  # -> 12 x 7x7
        for index, inputs in enumerate(self.H2_INPUTS):
            self.register_buffer(f"h2_inputs_{index}", torch.tensor(inputs), persistent=False)
        side = _halved(_halved(image_size))  # two stride-2 convolutions with padding 2
        self.h3 = nn.Linear(12 * side * side, 30)
        self.out = nn.Linear(30, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.tanh(self.h1(self.normalize(x)))
        groups = [conv(h1.index_select(1, getattr(self, f"h2_inputs_{i}"))) for i, conv in enumerate(self.h2)]
        h2 = torch.tanh(torch.cat(groups, dim=1))
        return self.out(torch.tanh(self.h3(h2.flatten(1))))


class LeNet5(nn.Module):
    """The shape of LeNet-5 (LeCun et al. 1998): 5x5 feature maps and 2x2 pooling twice, then dense
    layers of 120 and 84 units; with batch norm, ReLU and max pooling, as it is built today.
    About a tenth of the batch-norm convnet's arithmetic, for a model that answers in microseconds."""

    def __init__(
        self, num_classes: int, channels: tuple[int, int], hidden: tuple[int, ...], dropout: float,
        in_channels: int = 1, image_size: int = DIGIT_SIZE,
    ):
        super().__init__()
        c1, c2 = channels
        self.normalize = Normalize()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(c1, c2, 5, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 5x5
        )
        # 28x28 keeps LeNet-5's 5x5 feature maps flattened; other sizes pool them globally.
        pooled = image_size != DIGIT_SIZE
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if pooled else []
        layers.append(nn.Flatten())
        width = c2 if pooled else c2 * 5 * 5
        for size in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)
        sizes = "-".join(str(size) for size in hidden) or "none"
        self.description = (
            f"LeNet-5: 5x5 conv {c1} + pool, 5x5 conv {c2} + pool, batch norm, "
            f"{'global average pool, ' if pooled else ''}dense {sizes}, dropout {dropout}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def _halved(size: int) -> int:
    return (size + 1) // 2


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


# Larger pictures get more stages of the batch-norm convnet until the feature maps are this small.
POOLED_FEATURE_SIZE = 8


class ConvNet(nn.Module):
    """A small VGG-style net: two stages of two 3x3 conv + batch norm + ReLU, each ending in 2x2
    max pooling, then a dropout-regularised hidden layer. Pictures larger than 28x28 get further
    stages (each doubling the channels) until the maps are at most 8x8, then a global average pool."""

    def __init__(
        self, num_classes: int = 10, channels: tuple[int, int] = (16, 32), hidden: int = 128, dropout: float = 0.3,
        in_channels: int = 1, image_size: int = DIGIT_SIZE,
    ):
        super().__init__()
        c1, c2 = channels
        self.normalize = Normalize()
        layers = [
            *_conv_block(in_channels, c1), *_conv_block(c1, c1), nn.MaxPool2d(2),  # 14x14
            *_conv_block(c1, c2), *_conv_block(c2, c2), nn.MaxPool2d(2),  # 7x7
        ]
        pooled = image_size != DIGIT_SIZE
        widths = [c1, c2]
        side = image_size // 4
        while pooled and side > POOLED_FEATURE_SIZE:
            widths.append(widths[-1] * 2)
            layers += [*_conv_block(widths[-2], widths[-1]), *_conv_block(widths[-1], widths[-1]), nn.MaxPool2d(2)]
            side //= 2
        if pooled:
            layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        width = widths[-1] if pooled else c2 * 7 * 7
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        stages = ", ".join(f"2x(3x3 conv {w}) + pool" for w in widths)
        self.description = (
            f"convnet: {stages}, batch norm, {'global average pool, ' if pooled else ''}"
            f"dense {hidden}, dropout {dropout}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


class WithSoftmax(nn.Module):
    """The exported form: the classifier's logits turned into probabilities."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the ONNX input's name
        return torch.softmax(self.classifier(input), dim=1)


ARCHITECTURES = ("softmax", "mlp", "lecun1989", "lenet5", "convnet")
MIN_IMAGE_SIZE = 16  # LeNet-5's unpadded 5x5 convolution and two poolings need this much


# What an architecture is built with when an option is not given (the CLI records them in the model card).
DEFAULT_OPTIONS: dict[str, dict] = {
    "mlp": {"hidden": (256, 128), "activation": "relu", "dropout": 0.2},
    "lenet5": {"channels": (6, 16), "hidden": (120, 84), "dropout": 0.1},
    "convnet": {"channels": (16, 32), "hidden": (128,), "dropout": 0.3},
}


def build_model(
    arch: str,
    num_classes: int = 10,
    *,
    hidden: tuple[int, ...] | None = None,
    activation: str | None = None,
    channels: tuple[int, int] | None = None,
    dropout: float | None = None,
    in_channels: int = 1,
    image_size: int = DIGIT_SIZE,
) -> nn.Module:
    """Make an untrained classifier for [N, in_channels, image_size, image_size] inputs; options not given
    take DEFAULT_OPTIONS, those an architecture has no use for are ignored."""
    if in_channels not in (1, 3):
        raise ValueError(f"pictures have 1 (grey) or 3 (RGB) channels, got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too small; at least {MIN_IMAGE_SIZE} pixels")
    given = {"hidden": hidden, "activation": activation, "channels": channels, "dropout": dropout}
    options = DEFAULT_OPTIONS.get(arch, {}) | {k: v for k, v in given.items() if v is not None}
    shape = {"in_channels": in_channels, "image_size": image_size}
    if arch == "softmax":
        return SoftmaxRegression(num_classes, **shape)
    if arch == "mlp":
        return MLP(num_classes, options["hidden"], options["activation"], options["dropout"], **shape)
    if arch == "lecun1989":
        return LeCun1989(num_classes, **shape)
    if arch == "lenet5":
        return LeNet5(num_classes, options["channels"], options["hidden"], options["dropout"], **shape)
    if arch == "convnet":
        return ConvNet(num_classes, options["channels"], options["hidden"][0], options["dropout"], **shape)
    raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
