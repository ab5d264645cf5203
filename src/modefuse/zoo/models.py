"""The model zoo of the papers: MLP, VGG11, CIFAR-style ResNet-20/18, RNN and LSTM classifiers, and a small ViT.

Every zoo model records its architecture name and arguments in `.arch`, so a
checkpoint can rebuild it (`modefuse.checkpoint`). All take image batches
`(B, C, H, W)`: MLPs flatten them, sequence models read their rows as steps.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from ..checks import int_at_least, positive_float, positive_int
from ..errors import InvalidArgumentError, ModefuseError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Add a model class to the zoo under `name` (usable by `build` and by checkpoints)."""
    def deco(cls):
        _REGISTRY[name] = cls
        return cls
    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


ALIASES = {"resnet20": ("resnet", {"depth": 20}), "resnet18": ("resnet", {"depth": 18}), "vgg11": ("vgg", {})}


def resolve(name: str, kwargs: dict | None = None) -> tuple[str, dict]:
    """The registered name and full keyword arguments of zoo model `name` (aliases expanded).

    Raises ModefuseError for an unknown model or an argument the model does not take (cheap:
    nothing is built), so callers can check a request before loading data.
    """
    kwargs = dict(kwargs or {})
    if name in ALIASES:
        name, extra = ALIASES[name]
        kwargs = {**extra, **kwargs}
    if name not in _REGISTRY:
        raise ModefuseError(f"unknown model {name!r}; the zoo has: {', '.join(names() + sorted(ALIASES))}")
    params = inspect.signature(_REGISTRY[name].__init__).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        allowed = ", ".join(p for p in params if p != "self")
        raise ModefuseError(f"model {name!r} takes no argument {unknown[0]!r}; it takes: {allowed}")
    return name, kwargs


def build(name: str, *, seed: int | None = None, **kwargs) -> nn.Module:
    """Build zoo model `name` with its keyword arguments; `seed` fixes its initialization."""
    name, kwargs = resolve(name, kwargs)
    cls = _REGISTRY[name]
    if seed is None:
        return cls(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


class ZooModel(nn.Module):
    """Base of the zoo models: keeps the architecture (name + arguments) for checkpoints."""

    arch_name: str = ""

    def _record(self, **kwargs) -> None:
        self.arch = {"name": self.arch_name, "kwargs": kwargs}


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # LayerNorm over (C, H, W) with a per-channel affine
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ModefuseError(f"unknown norm {kind!r}; use 'none', 'batch' or 'layer'")


@register("mlp")
class MLP(ZooModel):
    """Fully connected ReLU network: in_features -> widths... -> num_classes."""

    arch_name = "mlp"

    def __init__(self, widths=(512, 512, 512), in_features: int = 784, num_classes: int = 10,
                 bias: bool = True):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
            raise InvalidArgumentError(f"widths must be a list of positive integers, got {widths!r}")
        widths = [positive_int(w, "each of widths") for w in widths]
        in_features, num_classes = positive_int(in_features, "in_features"), positive_int(num_classes, "num_classes")
        self._record(widths=widths, in_features=in_features, num_classes=num_classes, bias=bias)
        dims = [in_features, *widths, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register("vgg")
class VGG(ZooModel):
    """VGG11 with a width multiplier; a max-pool is skipped once the feature map is 1x1."""

    arch_name = "vgg"

    def __init__(self, width: float = 1.0, in_channels: int = 3, in_size: int = 32, num_classes: int = 10,
                 batch_norm: bool = False, bias: bool = True):
        super().__init__()
        width = positive_float(width, "width")
        in_channels, num_classes = positive_int(in_channels, "in_channels"), positive_int(num_classes, "num_classes")
        in_size = positive_int(in_size, "in_size")
        self._record(width=width, in_channels=in_channels, in_size=in_size, num_classes=num_classes,
                     batch_norm=batch_norm, bias=bias)
        layers: list[nn.Module] = []
        c, size = in_channels, in_size
        for v in VGG11_CFG:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = max(1, int(round(v * width)))
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * size * size, num_classes, bias=bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.norm1 = _norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.norm2 = _norm2d(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), _norm2d(norm, cout))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register("resnet")
class ResNet(ZooModel):
    """CIFAR-style ResNet: depth 20 (3 stages of 16/32/64 x width) or 18 (4 stages of 64..512 x width)."""

    arch_name = "resnet"

    def __init__(self, depth: int = 20, width: float = 1.0, in_channels: int = 3, num_classes: int = 10,
                 norm: str = "batch"):
        super().__init__()
        width = positive_float(width, "width")
        in_channels, num_classes = positive_int(in_channels, "in_channels"), positive_int(num_classes, "num_classes")
        self._record(depth=depth, width=width, in_channels=in_channels, num_classes=num_classes, norm=norm)
        if depth == 20:
            stages, blocks = (16, 32, 64), (3, 3, 3)
        elif depth == 18:
            stages, blocks = (64, 128, 256, 512), (2, 2, 2, 2)
        else:
            raise ModefuseError(f"ResNet depth {depth} is not in the zoo; use 20 or 18")
        stages = tuple(max(1, int(round(s * width))) for s in stages)
        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, 1, 1, bias=norm == "none")
        self.norm1 = _norm2d(norm, stages[0])
        layers, cin = [], stages[0]
        for i, (c, n) in enumerate(zip(stages, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, c, 2 if (i > 0 and j == 0) else 1, norm))
                cin = c
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


class SequenceClassifier(ZooModel):
    """Reads an image (C, H, W) as H steps of C*W features; classifies from the last hidden state."""

    cell: type[nn.Module] = nn.RNN

    def __init__(self, hidden: int = 256, input_size: int = 28, num_classes: int = 10, num_layers: int = 1):
        super().__init__()
        hidden, input_size = positive_int(hidden, "hidden"), positive_int(input_size, "input_size")
        num_classes, num_layers = positive_int(num_classes, "num_classes"), int_at_least(num_layers, 1, "num_layers")
        self._record(hidden=hidden, input_size=input_size, num_classes=num_classes, num_layers=num_layers)
        self.rnn = self.cell(input_size, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        seq = x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W)
        out, _ = self.rnn(seq)
        return self.fc(out[:, -1])


@register("rnn")
class RNNClassifier(SequenceClassifier):
    arch_name = "rnn"
    cell = nn.RNN


@register("lstm")
class LSTMClassifier(SequenceClassifier):
    arch_name = "lstm"
    cell = nn.LSTM


class Attention(nn.Module):
    """Multi-head self-attention with separate Q, K, V and output projections."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (f(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


@register("vit")
class ViT(ZooModel):
    """A small vision transformer: patches -> tokens (+ a class token, learned positions) -> pre-norm
    blocks -> LayerNorm -> linear head on the class token. Patch 7 on 28x28 images: 16 tokens."""

    arch_name = "vit"

    def __init__(self, width: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2, patch: int = 7,
                 in_channels: int = 1, in_size: int = 28, num_classes: int = 10):
        super().__init__()
        width, depth, heads = positive_int(width, "width"), positive_int(depth, "depth"), positive_int(heads, "heads")
        patch, in_size = positive_int(patch, "patch"), positive_int(in_size, "in_size")
        if width % heads:
            raise InvalidArgumentError(f"width ({width}) must be a multiple of heads ({heads})")
        if in_size % patch:
            raise InvalidArgumentError(f"in_size ({in_size}) must be a multiple of patch ({patch})")
        self._record(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio, patch=patch,
                     in_channels=in_channels, in_size=in_size, num_classes=num_classes)
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (in_size // patch) ** 2 + 1, width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio * width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def input_kwargs(name: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """The input-size arguments of zoo model `name` for images of `input_shape` (C, H, W)."""
    c, h, w = input_shape
    name = {"resnet20": "resnet", "resnet18": "resnet", "vgg11": "vgg"}.get(name, name)
    per_model = {"mlp": {"in_features": c * h * w}, "vgg": {"in_channels": c, "in_size": h},
                 "resnet": {"in_channels": c}, "vit": {"in_channels": c, "in_size": h, "patch": 7 if h % 7 == 0 else 4}, "rnn": {"input_size": c * w}, "lstm": {"input_size": c * w}}
    return {**per_model.get(name, {}), "num_classes": num_classes}


def build_for(name: str, dataset, *, seed: int | None = None, **kwargs) -> nn.Module:
    """Build zoo model `name` sized for `dataset`'s images and classes; `kwargs` override."""
    num_classes = getattr(dataset, "num_classes", 10)
    return build(name, seed=seed, **{**input_kwargs(name, dataset.input_shape, num_classes), **kwargs})


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor | None:
    """A random input batch of the right shape for a zoo model (None for other modules)."""
    arch = getattr(model, "arch", None)
    if not arch:
        return None
    kw = arch["kwargs"]
    name = arch["name"]
    if name == "mlp":
        return torch.rand(batch, kw["in_features"])
    if name in ("vgg", "vit"):
        return torch.rand(batch, kw["in_channels"], kw["in_size"], kw["in_size"])
    if name == "resnet":
        return torch.rand(batch, kw["in_channels"], 32, 32)
    if name in ("rnn", "lstm"):
        return torch.rand(batch, 1, 28, kw["input_size"])
    return None


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ModefuseError, naming both shapes, when a batch `x` does not fit zoo model `model`
    (an MLP trained on Fashion-MNIST given CIFAR-10 images, say): one line instead of a matmul error."""
    arch = getattr(model, "arch", None)
    if not arch or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return
    kw, name, shape = arch.get("kwargs", {}), arch.get("name"), tuple(x.shape[1:])
    needed = {"mlp": ("in_features",), "rnn": ("input_size",), "lstm": ("input_size",),
              "vgg": ("in_channels", "in_size"), "vit": ("in_channels", "in_size"),
              "resnet": ("in_channels",)}.get(name)
    if needed is None or any(k not in kw for k in needed):
        return  # a model registered by a user, or an architecture record without the sizes
    if name == "mlp":
        fits, wants = x[0].numel() == kw["in_features"], f"{kw['in_features']} input features"
    elif name in ("rnn", "lstm"):
        fits = len(shape) == 3 and shape[0] * shape[2] == kw["input_size"]
        wants = f"image rows of {kw['input_size']} features (channels x width)"
    elif name in ("vgg", "vit"):
        fits = shape == (kw["in_channels"], kw["in_size"], kw["in_size"])
        wants = f"images of shape {kw['in_channels']}x{kw['in_size']}x{kw['in_size']}"
    else:
        fits, wants = len(shape) == 3 and shape[0] == kw["in_channels"], f"images of {kw['in_channels']} channel(s)"
    if not fits:
        trained_on = getattr(model, "checkpoint_metadata", {}).get("dataset")
        raise ModefuseError(f"the model ({name}) takes {wants}, but the data's inputs have shape "
                            f"{'x'.join(map(str, shape))}" + (f" (the model was trained on {trained_on})"
                                                              if trained_on else "")
                            + "; use data of the kind the model was built for")
