"""Classifier architectures. Every built-in classifier takes [0, 1] images, normalizes inside,
and exposes ``features(x)`` (penultimate features, flat) and ``head`` (the last linear layer), so
methods that work on latents (rvs, atld) use any of them. A ``module:function`` arch is a user's
own factory, built by ``trainables.user_arch``."""
from __future__ import annotations

import torch
from torch.nn import functional
from torch import nn

from trainables import user_arch
from trainables.spec import DataSpec


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> body -> flatten -> head; subclasses define ``body`` and ``head``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(self.norm(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(Classifier):
    """Two conv blocks and a hidden layer, sized to the input (8x8 digits up to 32x32)."""

    def __init__(self, spec: DataSpec, width: int = 32):
        super().__init__()
        self.norm = Normalize(spec.mean, spec.std)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(spec.channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * (spec.size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, spec.classes)


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1, drop=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = functional.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = functional.relu(self.bn2(out))
        if self.drop:
            out = functional.dropout(out, self.drop, self.training)
        return self.conv2(out) + sc


class PreActResNet18(Classifier):
    def __init__(self, spec: DataSpec):
        super().__init__()
        self.norm = Normalize(spec.mean, spec.std)
        layers, cin = [nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False)], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        layers += [nn.BatchNorm2d(512), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(512, spec.classes)


class WideResNet(Classifier):
    """WRN-depth-widen (Zagoruyko & Komodakis), pre-activation blocks as in Madry/TRADES."""

    def __init__(self, spec: DataSpec, depth: int, widen: int, drop: float = 0.0):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.norm = Normalize(spec.mean, spec.std)
        layers, cin = [nn.Conv2d(spec.channels, widths[0], 3, 1, 1, bias=False)], widths[0]
        for cout, stride in zip(widths[1:], [1, 2, 2]):
            for i in range(n):
                layers.append(PreActBlock(cin, cout, stride if i == 0 else 1, drop))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, spec.classes)


ARCHS = {
    "small_cnn": SmallCNN,
    "preact18": PreActResNet18,
    "wrn28_10": lambda spec: WideResNet(spec, 28, 10),
    "wrn34_10": lambda spec: WideResNet(spec, 34, 10),
}


def resolve_arch(arch: str, spec: DataSpec) -> str:
    """``auto``: the small CNN for small or single-channel images (digits, MNIST), PreAct
    ResNet-18 otherwise (CIFAR, SVHN)."""
    if arch == "auto":
        return "small_cnn" if spec.size <= 28 or spec.channels == 1 else "preact18"
    return arch


def make_classifier(arch: str, spec: DataSpec) -> nn.Module:
    if user_arch.is_user_arch(arch):
        return user_arch.make_user_classifier(arch, spec)
    return ARCHS[resolve_arch(arch, spec)](spec)
