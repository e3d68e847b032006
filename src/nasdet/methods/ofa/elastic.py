"""Once-for-All's elastic ops: each owns the largest weight and runs a slice of it.

- :class:`DynamicConv2d` (1x1): ``weight[:out, :in]``;
- :class:`DynamicSeparableConv2d` (depthwise): owns the 7x7 kernel; a smaller kernel is the centre
  of the next larger one passed through a learned ``(k*k, k*k)`` matrix (``7to5_matrix``,
  ``5to3_matrix``; identity at init), as OFA's ``DynamicSeparableConv2d`` with
  ``KERNEL_TRANSFORM_MODE = 1``;
- :class:`DynamicBatchNorm2d`: the first ``C`` running statistics and affine parameters;
- :class:`DynamicSE`: squeeze-excitation of the first ``C`` channels, ``make_divisible(C // 4, 8)``
  hidden units, ReLU then hard sigmoid;
- :class:`DynamicMBConv`: the inverted bottleneck (1x1 expand, depthwise kxk, optional SE, 1x1
  project) with an active kernel size and expand ratio.

Module and parameter names are OFA's (``inverted_bottleneck.conv.conv.weight``,
``depth_conv.conv.7to5_matrix``, ``depth_conv.bn.bn.running_mean``, ``depth_conv.se.fc.reduce``...)
so that an OFA checkpoint maps by name. :meth:`DynamicMBConv.get_active_subnet` returns a static
:class:`MBConv` (OFA's ``MBConvLayer`` names) with the sliced, transformed weights copied in.
h-swish and h-sigmoid are ``nn.Hardswish`` / ``nn.Hardsigmoid`` (OFA's ``x * relu6(x + 3) / 6`` and
``relu6(x + 3) / 6``: the same functions).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import _make_divisible

CHANNEL_DIVISIBLE = 8  # OFA's MyNetwork.CHANNEL_DIVISIBLE
SE_REDUCTION = 4  # OFA's SEModule.REDUCTION
_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "h_swish": nn.Hardswish}


def make_divisible(value: float, divisor: int = CHANNEL_DIVISIBLE) -> int:
    """Round ``value`` to a multiple of ``divisor`` (at least ``divisor``, at most 10% down)."""
    return _make_divisible(value, divisor)


def middle_channels(in_channels: int, expand_ratio: int) -> int:
    """Expanded width of an MBConv block: ``make_divisible(round(in * e), 8)``; ``in`` for e=1."""
    return in_channels if expand_ratio == 1 else make_divisible(round(in_channels * expand_ratio))


def se_channels(channels: int) -> int:
    """Hidden units of the SE module on ``channels`` channels."""
    return make_divisible(channels // SE_REDUCTION)


def activation(name: str) -> nn.Module:
    """``relu``, ``relu6`` or ``h_swish`` (OFA's names)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, act: str) -> nn.Sequential:
    """OFA's ``ConvLayer``: conv (no bias, same padding) -> BN -> activation."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            act=activation(act),
        )
    )


def copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d) -> None:
    """Copy the first ``target.num_features`` channels of ``source`` (statistics included)."""
    n = target.num_features
    with torch.no_grad():
        target.weight.copy_(source.weight[:n])
        target.bias.copy_(source.bias[:n])
        target.running_mean.copy_(source.running_mean[:n])
        target.running_var.copy_(source.running_var[:n])
        target.num_batches_tracked.copy_(source.num_batches_tracked)
    target.momentum, target.eps = source.momentum, source.eps


class DynamicConv2d(nn.Module):
    """1x1 conv owning a ``(max_out, max_in)`` weight; runs ``weight[:active_out, :x.size(1)]``."""

    def __init__(self, max_in: int, max_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, stride, bias=False)
        self.stride = stride
        self.active_out_channel = max_out

    def get_active_filter(self, out_channels: int, in_channels: int) -> Tensor:
        return self.conv.weight[:out_channels, :in_channels]

    def forward(self, x: Tensor) -> Tensor:
        weight = self.get_active_filter(self.active_out_channel, x.size(1))
        return F.conv2d(x, weight, None, self.stride)


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv owning the largest kernel; see the module docstring for smaller ones.

    Args:
        max_channels: channels of the largest middle width.
        kernel_sizes: the odd kernel sizes it can run.
        stride: conv stride.
        kernel_transform: learn the ``{k}to{k'}_matrix`` transforms (OFA's default); without,
            a smaller kernel is the plain centre crop.
    """

    def __init__(
        self,
        max_channels: int,
        kernel_sizes: Sequence[int],
        stride: int = 1,
        kernel_transform: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        if any(k % 2 == 0 or k < 1 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd and positive, got {kernel_sizes}")
        self.max_kernel = self.kernel_sizes[-1]
        self.stride = stride
        self.conv = nn.Conv2d(
            max_channels, max_channels, self.max_kernel, stride, groups=max_channels, bias=False
        )
        self.transforms: list[tuple[int, int, str]] = []  # (larger, smaller, parameter name)
        if kernel_transform:
            for small, large in zip(self.kernel_sizes, self.kernel_sizes[1:], strict=False):
                name = f"{large}to{small}_matrix"
                self.register_parameter(name, nn.Parameter(torch.eye(small * small)))
                self.transforms.append((large, small, name))
        self.active_kernel_size = self.max_kernel

    def get_active_filter(self, channels: int, kernel_size: int) -> Tensor:
        """The ``(channels, 1, k, k)`` kernel of the first ``channels`` channels."""
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size} is not one of {self.kernel_sizes}")
        weight = self.conv.weight[:channels]
        if not self.transforms:
            start = (self.max_kernel - kernel_size) // 2
            return weight[:, :, start : start + kernel_size, start : start + kernel_size]
        for large, small, name in reversed(self.transforms):  # 7 -> 5, then 5 -> 3
            if large <= kernel_size:
                break
            start = (large - small) // 2
            centre = weight[:, :, start : start + small, start : start + small]
            flat = F.linear(centre.reshape(-1, small * small), getattr(self, name))
            weight = flat.view(channels, 1, small, small)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        k = self.active_kernel_size
        weight = self.get_active_filter(x.size(1), k)
        return F.conv2d(x, weight, None, self.stride, k // 2, 1, x.size(1))


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over the first ``C = x.size(1)`` channels of a ``max_features`` BN (OFA's
    ``DynamicBatchNorm2d``: running statistics of those channels are updated in place)."""

    def __init__(self, max_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: Tensor) -> Tensor:
        bn, c = self.bn, x.size(1)
        if c == bn.num_features:
            return bn(x)
        momentum = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked += 1
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(
            x,
            bn.running_mean[:c],
            bn.running_var[:c],
            bn.weight[:c],
            bn.bias[:c],
            bn.training or not bn.track_running_stats,
            momentum,
            bn.eps,
        )


def _se_fc(channels: int) -> nn.Sequential:
    mid = se_channels(channels)
    return nn.Sequential(
        OrderedDict(
            reduce=nn.Conv2d(channels, mid, 1),
            relu=nn.ReLU(),
            expand=nn.Conv2d(mid, channels, 1),
            h_sigmoid=nn.Hardsigmoid(),
        )
    )


class SqueezeExcite(nn.Module):
    """OFA's ``SEModule``: ``x * h_sigmoid(expand(relu(reduce(mean_hw(x)))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = _se_fc(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class DynamicSE(nn.Module):
    """SE of a ``max_channels`` layer run on its first ``C`` channels with ``se_channels(C)``
    hidden units (OFA's ``DynamicSE``)."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        self.fc = _se_fc(max_channels)

    def forward(self, x: Tensor) -> Tensor:
        c = x.size(1)
        mid = se_channels(c)
        reduce, expand = self.fc.reduce, self.fc.expand
        y = F.conv2d(x.mean((2, 3), keepdim=True), reduce.weight[:mid, :c], reduce.bias[:mid])
        y = F.conv2d(self.fc.relu(y), expand.weight[:c, :mid], expand.bias[:c])
        return x * self.fc.h_sigmoid(y)


class MBConv(nn.Module):
    """OFA's static ``MBConvLayer``: [1x1 expand, BN, act] -> dw kxk (stride), BN, act, [SE] ->
    1x1 project, BN. No expand conv when ``expand_ratio == 1``.

    Input (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        act: str,
        use_se: bool,
    ) -> None:
        super().__init__()
        mid = middle_channels(in_ch, expand_ratio)
        self.in_channels, self.out_channels, self.mid_channels = in_ch, out_ch, mid
        self.inverted_bottleneck = None if expand_ratio == 1 else conv_bn_act(in_ch, mid, 1, 1, act)
        dw = OrderedDict(
            conv=nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False),
            bn=nn.BatchNorm2d(mid),
            act=activation(act),
        )
        if use_se:
            dw["se"] = SqueezeExcite(mid)
        self.depth_conv = nn.Sequential(dw)
        self.point_linear = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(mid, out_ch, 1, bias=False), bn=nn.BatchNorm2d(out_ch))
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class MBBlock(nn.Module):
    """OFA's ``ResidualBlock``: ``conv(x) + x`` when ``residual`` (stride 1, in == out), else
    ``conv(x)``. ``conv`` is an :class:`MBConv` or a :class:`DynamicMBConv`."""

    def __init__(self, conv: nn.Module, residual: bool) -> None:
        super().__init__()
        self.conv = conv
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y + x if self.residual else y


class DynamicMBConv(nn.Module):
    """OFA's ``DynamicMBConvLayer``: an MBConv block with elastic kernel size and expand ratio.

    Args:
        in_ch, out_ch: block widths (fixed).
        kernel_sizes: depthwise kernel choices (the largest is stored).
        expand_ratios: expand ratio choices; the expand conv has ``middle_channels(in_ch,
            max(expand_ratios))`` outputs. A ratio of 1 (no expand conv) cannot be mixed with
            others.
        stride, act, use_se: as :class:`MBConv`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_sizes: Sequence[int],
        expand_ratios: Sequence[int],
        stride: int,
        act: str,
        use_se: bool,
        kernel_transform: bool = True,
    ) -> None:
        super().__init__()
        self.expand_ratios = tuple(sorted(set(expand_ratios)))
        if 1 in self.expand_ratios and len(self.expand_ratios) > 1:
            raise ValueError(f"expand ratio 1 cannot be mixed with others: {expand_ratios}")
        self.in_channels, self.out_channels = in_ch, out_ch
        self.stride, self.act, self.use_se = stride, act, use_se
        max_mid = middle_channels(in_ch, self.expand_ratios[-1])
        self.inverted_bottleneck: nn.Sequential | None = None
        if self.expand_ratios[-1] != 1:
            self.inverted_bottleneck = nn.Sequential(
                OrderedDict(
                    conv=DynamicConv2d(in_ch, max_mid),
                    bn=DynamicBatchNorm2d(max_mid),
                    act=activation(act),
                )
            )
        dw = OrderedDict(
            conv=DynamicSeparableConv2d(max_mid, kernel_sizes, stride, kernel_transform),
            bn=DynamicBatchNorm2d(max_mid),
            act=activation(act),
        )
        if use_se:
            dw["se"] = DynamicSE(max_mid)
        self.depth_conv = nn.Sequential(dw)
        self.point_linear = nn.Sequential(
            OrderedDict(conv=DynamicConv2d(max_mid, out_ch), bn=DynamicBatchNorm2d(out_ch))
        )
        self.kernel_sizes = self.depth_conv.conv.kernel_sizes
        self.active_kernel_size = self.kernel_sizes[-1]
        self.active_expand_ratio = self.expand_ratios[-1]

    def set_active(self, kernel_size: int, expand_ratio: int) -> None:
        """Run ``kernel_size`` x ``kernel_size`` and ``expand_ratio`` from now on."""
        if kernel_size not in self.kernel_sizes or expand_ratio not in self.expand_ratios:
            raise ValueError(
                f"kernel size {kernel_size} / expand ratio {expand_ratio} not in "
                f"{self.kernel_sizes} / {self.expand_ratios}"
            )
        self.active_kernel_size, self.active_expand_ratio = kernel_size, expand_ratio
        self.depth_conv.conv.active_kernel_size = kernel_size
        if self.inverted_bottleneck is not None:
            self.inverted_bottleneck.conv.active_out_channel = self.active_middle_channels

    @property
    def active_middle_channels(self) -> int:
        """Expanded width of the active subnet."""
        return middle_channels(self.in_channels, self.active_expand_ratio)

    def forward(self, x: Tensor) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))

    def get_active_subnet(self, preserve_weight: bool = True) -> MBConv:
        """A static :class:`MBConv` of the active kernel size / expand ratio; with
        ``preserve_weight`` its weights are copies of the active slices (kernel transform
        applied), its BN statistics and train/eval mode the supernet's."""
        k, mid, dw = self.active_kernel_size, self.active_middle_channels, self.depth_conv
        sub = MBConv(
            self.in_channels,
            self.out_channels,
            k,
            self.stride,
            self.active_expand_ratio,
            self.act,
            self.use_se,
        )
        sub.train(self.training)
        if not preserve_weight:
            return sub
        with torch.no_grad():
            if self.inverted_bottleneck is not None and sub.inverted_bottleneck is not None:
                ib = self.inverted_bottleneck
                sub.inverted_bottleneck.conv.weight.copy_(
                    ib.conv.get_active_filter(mid, self.in_channels)
                )
                copy_bn(sub.inverted_bottleneck.bn, ib.bn.bn)
            sub.depth_conv.conv.weight.copy_(dw.conv.get_active_filter(mid, k))
            copy_bn(sub.depth_conv.bn, dw.bn.bn)
            if self.use_se:
                se_mid, src, dst = se_channels(mid), dw.se.fc, sub.depth_conv.se.fc
                dst.reduce.weight.copy_(src.reduce.weight[:se_mid, :mid])
                dst.reduce.bias.copy_(src.reduce.bias[:se_mid])
                dst.expand.weight.copy_(src.expand.weight[:mid, :se_mid])
                dst.expand.bias.copy_(src.expand.bias[:mid])
            sub.point_linear.conv.weight.copy_(
                self.point_linear.conv.get_active_filter(self.out_channels, mid)
            )
            copy_bn(sub.point_linear.bn, self.point_linear.bn.bn)
        return sub

    @torch.no_grad()
    def re_organize_middle_weights(self) -> None:
        """Sort the expanded channels by importance (L1 norm of the project conv's input
        weights, largest first) and permute expand conv, BN, depthwise conv, SE and project
        conv alike, as OFA does before shrinking the expand ratio. The largest expand ratio
        computes the same function after; a smaller one then keeps the most important channels.
        The SE hidden units are sorted the same way by the L1 norm of the SE expand weights.
        Without an expand conv the middle channels are the block's input: nothing is done."""
        if self.inverted_bottleneck is None:
            return
        project = self.point_linear.conv.conv.weight
        order = project.abs().sum(dim=(0, 2, 3)).argsort(descending=True)

        def permute(t: Tensor, dim: int, idx: Tensor = order) -> None:
            t.copy_(t.index_select(dim, idx))

        permute(project, 1)
        for bn in (self.depth_conv.bn.bn, self.inverted_bottleneck.bn.bn):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                permute(t, 0)
        permute(self.depth_conv.conv.conv.weight, 0)
        permute(self.inverted_bottleneck.conv.conv.weight, 0)
        if self.use_se:
            fc = self.depth_conv.se.fc
            permute(fc.expand.weight, 0)
            permute(fc.expand.bias, 0)
            permute(fc.reduce.weight, 1)
            se_order = fc.expand.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
            permute(fc.expand.weight, 1, se_order)
            permute(fc.reduce.weight, 0, se_order)
            permute(fc.reduce.bias, 0, se_order)
