"""Small instances of every zoo model, for both input kinds (28x28 gray, 32x32 color)."""
import torch
from torch import nn

import modefuse as mf

INPUTS = {"gray28": (1, 28, 28), "color32": (3, 32, 32)}

ZOO = {
    "mlp": dict(widths=[32, 16, 8]),
    "mlp_nobias": dict(widths=[16, 16], bias=False),
    "vgg": dict(width=0.125),
    "vgg_bn": dict(width=0.125, batch_norm=True),
    "resnet20": dict(width=1.0),
    "resnet20_layer": dict(width=1.0, norm="layer"),
    "resnet20_none": dict(width=1.0, norm="none"),
    "resnet18": dict(width=0.125),
    "rnn": dict(hidden=16),
    "lstm": dict(hidden=16),
    "vit": dict(width=16, depth=2, heads=2),
}


def build(key, input_kind="gray28", seed=0, num_classes=10):
    name = key.split("_")[0]
    shape = INPUTS[input_kind]
    kwargs = {**mf.models.input_kwargs(name, shape, num_classes), **ZOO[key]}
    return mf.models.build(name, seed=seed, **kwargs)

def randomize_norm_stats(model):
    """Give BatchNorm/affine parameters non-trivial values so that permuting them is really tested."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.normal_(1, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
    return model
