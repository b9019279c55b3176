"""The networks that fine-tuning trains: the encoder (EfficientNet-Lite up to its last conv map +
global pooling: the vector `efficientnet-lite*` indexes with) and one objective per method.

- `Autoencoder`: a small decoder rebuilds the normalised input from the pooled vector (MSE).
- `Contrastive`: SimCLR / NT-Xent over two augmented views per image; its projection head is
  trained with it and dropped afterwards (retrieval uses the pooled vector).

The EfficientNet object comes from `efficientnet-lite-pytorch`, which has no type information:
it is `Any` here, and its private layers (`_blocks`, `_conv_stem`, ...) are what the encoder runs.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ingest.decode import Preprocess
from ..models import export, registry
from .augment import PLAIN, Augment, views
from .config import Resolved


def trained_pooling(base: str) -> dict[str, Any]:
    """The pooling the encoder trains with: the base backbone's default (efficientnet-lite0: GeM p=2),
    so the tuned model is pooled at search time exactly as it was during training."""
    default = registry.get_backbone(base).default_pooling
    if default.method not in ("avg", "max", "gem"):
        return {"method": "avg", "p": None, "scales": [1.0], "power": None}
    return {**default.to_dict(), "scales": [1.0]}  # one scale: training sees one input size


def pool_torch(fmap: torch.Tensor, pooling: dict[str, Any]) -> torch.Tensor:
    """(N,C,h,w) -> (N,C): avg / max / GeM as `pooling.pool_map` computes them in numpy."""
    if pooling["method"] == "max":
        return fmap.amax(dim=(2, 3))
    if pooling["method"] == "gem":
        p = float(pooling["p"])
        return fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return fmap.mean(dim=(2, 3))


def stage_starts(net: Any) -> list[int]:
    """Index of the first block of each EfficientNet stage (where the channel count changes)."""
    return [i for i, b in enumerate(net._blocks) if b._block_args.input_filters != b._block_args.output_filters]


def default_freeze_until(net: Any) -> int:
    """Train the last two stages + head conv (lite0: blocks 11-15): ~5x cheaper than the whole net."""
    return stage_starts(net)[-2]


@cache
def block_layout(base: str) -> tuple[int, int]:
    """(blocks, default freeze_until) of a base model, from its architecture alone (no weights)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(base)
    return len(net._blocks), default_freeze_until(net)


class Encoder(nn.Module):
    """Image -> pooled feature vector. The frozen prefix runs without autograd, in eval mode."""

    def __init__(self, net: Any, freeze_until: int, pooling: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.freeze_until = freeze_until
        self.pooling = pooling
        # A plain list, not a ModuleList: the state dict stays the EfficientNet's own (`net.*`).
        self.frozen: list[nn.Module] = (
            [net._conv_stem, net._bn0, *net._blocks[:freeze_until]] if freeze_until > 0 else [])
        for module in self.frozen:
            module.requires_grad_(False)
        net._fc.requires_grad_(False)  # the classifier is not part of the encoder

    def train(self, mode: bool = True) -> Encoder:
        # BatchNorm keeps its pretrained running statistics throughout (its scale and shift
        # still learn where unfrozen): with batches of 32 on a few hundred images, batch
        # statistics would differ from what the exported model computes at inference, and
        # the EfficientNet BN momentum of 0.01 would leave the running ones stale anyway.
        super().train(mode)
        for module in self.frozen:
            module.eval()
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        grad = torch.is_grad_enabled()
        blocks = net._blocks
        rate = net._global_params.drop_connect_rate
        with torch.set_grad_enabled(grad and self.freeze_until == 0):
            x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(blocks):
            with torch.set_grad_enabled(grad and idx >= self.freeze_until):
                x = block(x, drop_connect_rate=rate * idx / len(blocks) if rate else None)
        out: torch.Tensor = net._swish(net._bn1(net._conv_head(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_torch(self.feature_map(x), self.pooling)


class Decoder(nn.Module):
    """Pooled vector -> image: linear to 128x7x7, five x2 transposed-conv stages to 224."""

    def __init__(self, dim: int, channels: tuple[int, ...] = (128, 128, 64, 32, 16, 16)) -> None:
        super().__init__()
        self.c0 = channels[0]
        self.fc = nn.Linear(dim, self.c0 * 7 * 7)
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(channels):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels[-1], 3, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(F.relu(self.fc(z)).view(len(z), self.c0, 7, 7))
        return out


class Autoencoder(nn.Module):
    """MSE between the normalised (augmented) input and its reconstruction."""

    def __init__(self, dim: int, image_size: int, spec: Preprocess) -> None:
        super().__init__()
        self.decoder = Decoder(dim)
        self.augment = Augment(size=image_size, crop=False)
        self.plain = replace(PLAIN, size=image_size)
        self.spec = spec

    def loss(self, encoder: Encoder, images: torch.Tensor, gen: torch.Generator, device: str,
             augment: bool = True) -> torch.Tensor:
        x = views(images, self.augment if augment else self.plain, self.spec, gen).to(device)
        recon = self.decoder(encoder(x))
        if recon.shape[-2:] != x.shape[-2:]:
            recon = F.interpolate(recon, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return F.mse_loss(recon, x)


class Contrastive(nn.Module):
    """NT-Xent over two cropped + jittered views per image; the projection head is dropped later."""

    def __init__(self, dim: int, image_size: int, spec: Preprocess, temperature: float) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, 512), nn.ReLU(inplace=True), nn.Linear(512, 128))
        self.augment = Augment(size=image_size, crop=True)
        self.spec = spec
        self.temperature = temperature

    def loss(self, encoder: Encoder, images: torch.Tensor, gen: torch.Generator, device: str,
             augment: bool = True) -> torch.Tensor:
        del augment  # both views are always augmented: the loss is defined by them
        n = len(images)
        x = torch.cat([views(images, self.augment, self.spec, gen), views(images, self.augment, self.spec, gen)])
        z = self.head(encoder(x.to(device)))
        return nt_xent(z[:n], z[n:], self.temperature)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy: view i's positive is view i of the other set."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def build_modules(config: Resolved) -> tuple[Encoder, Autoencoder | Contrastive]:
    """(encoder, objective) for a resolved config, with the base model's pretrained weights."""
    backbone = registry.get_backbone(config.base)
    net = export.efficientnet_lite(config.base, backbone.locate_weights()).net
    encoder = Encoder(net, config.freeze_until, trained_pooling(config.base))
    objective: Autoencoder | Contrastive
    if config.method == "autoencoder":
        objective = Autoencoder(backbone.dim, config.image_size, backbone.preprocess)
    else:
        objective = Contrastive(backbone.dim, config.image_size, backbone.preprocess, config.temperature)
    return encoder, objective
