"""MMRazor DetNAS checkpoints into nasdet (``nasdet convert mmrazor-detnas``) and the
``stride2_split: mmrazor`` block option.

The state dicts here are built from facts of MMRazor's public source (open-mmlab/mmrazor, tag
v0.1.0, the release of the DetNAS checkpoints), written down below, not from nasdet's modules:

- ``mmrazor/models/architectures/components/backbones/searchable_shufflenet_v2.py``: stem
  ``conv1`` (ConvModule 3 -> 16, 3x3 stride 2), ``layers.<stage>.<block>`` with 4, 4, 8, 4 blocks
  at widths 64, 160, 320, 640, the first block of a stage stride 2; a classifier also has
  ``layers.4`` (1x1 conv 640 -> 1024).
- ``mmrazor/models/mutables/mutable_module.py``: a searchable block is a ``OneShotOP`` whose
  ``choices`` ModuleDict keeps only the chosen op after retraining (``export``).
- ``mmrazor/models/ops/shufflenet_series.py``: ``ShuffleBlock(kernel_size)``: ``branch1`` (stride
  2 only) = dw kxk in -> in (BN, no act), 1x1 in -> out // 2 (BN, ReLU); ``branch2`` = 1x1
  (in or out // 2) -> out // 2, dw kxk (stride), 1x1 out // 2 -> out // 2. ``ShuffleXception``:
  ``branch1`` as ShuffleBlock with k = 3; ``branch2`` = three DepthwiseSeparableConvModules
  (``depthwise_conv`` 3x3 BN no act, ``pointwise_conv`` 1x1 BN ReLU): (in or out // 2) -> out // 2
  (stride), out // 2 -> out // 2, out // 2 -> out // 2. Forward: cat(branch1(x), branch2(x)), or
  cat(x1, branch2(x2)) after chunking in two at stride 1, then mmcls ``channel_shuffle(out, 2)``
  (view (B, 2, C / 2, H, W), transpose 1 and 2, flatten).
- mmcv ``ConvModule``: ``conv`` (no bias when a norm follows) and ``bn``.
- ``configs/nas/detnas/DETNAS_FRCNN_SHUFFLENETV2_340M_COCO_MMRAZOR.yaml``: the released 37.5-mAP
  COCO subnet, stage 0: 7x7 5x5 7x7 3x3; stage 1: 7x7 5x5 5x5 7x7; stage 2: xception xception 5x5
  xception 3x3 3x3 xception 5x5; stage 3: xception 5x5 xception 7x7.
- The algorithm's state dict prefixes everything with ``architecture.model.``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import nasdet.cli
from nasdet.build import build_backbone, load_model
from nasdet.errors import CheckpointError
from nasdet.methods.detnas.config import Model
from nasdet.methods.detnas.convert import mmrazor_state_dict_to_nasdet
from nasdet.methods.detnas.converter import convert_command
from nasdet.methods.detnas.nets import ShuffleNetV2Backbone
from nasdet.methods.detnas.parts import ShuffleNetNASSpec
from nasdet.methods.detnas.space import ShuffleNetCode
from nasdet.models.io import load_state_dict_checked

RELEASED = "7573-7557-xx5x33x5-x5x7"
PREFIX = "architecture.model.backbone."
WIDTHS, STEM = (64, 160, 320, 640), 16


def _conv_module(sd: dict, name: str, out_ch: int, in_per_group: int, k: int, g) -> None:
    sd[f"{name}.conv.weight"] = torch.randn(out_ch, in_per_group, k, k, generator=g) * 0.3
    sd[f"{name}.bn.weight"] = torch.rand(out_ch, generator=g) + 0.5
    sd[f"{name}.bn.bias"] = torch.randn(out_ch, generator=g) * 0.1
    sd[f"{name}.bn.running_mean"] = torch.randn(out_ch, generator=g) * 0.1
    sd[f"{name}.bn.running_var"] = torch.rand(out_ch, generator=g) + 0.5
    sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(1000)


def _blocks(code: str):
    """(stage, block, choice name, in_ch, out_ch, stride) of every block of ``code``."""
    names = {"3": "shuffle_3x3", "5": "shuffle_5x5", "7": "shuffle_7x7", "x": "shuffle_xception"}
    in_ch = STEM
    for i, group in enumerate(code.split("-")):
        for j, sym in enumerate(group):
            yield i, j, names[sym], in_ch if j == 0 else WIDTHS[i], WIDTHS[i], 2 if j == 0 else 1
        in_ch = WIDTHS[i]


def mmrazor_state(code: str = RELEASED, seed: int = 0) -> dict[str, Tensor]:
    """A retrained MMRazor DetNAS Faster R-CNN state dict (backbone exact, a few neck and head
    keys), random values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    _conv_module(sd, PREFIX + "conv1", STEM, 3, 3, g)
    for i, j, name, cin, cout, stride in _blocks(code):
        p, half = f"{PREFIX}layers.{i}.{j}.choices.{name}.", cout // 2
        k = 3 if name == "shuffle_xception" else int(name[-1])
        if stride == 2:
            _conv_module(sd, p + "branch1.0", cin, 1, k, g)
            _conv_module(sd, p + "branch1.1", half, cin, 1, g)
        main_in = cin if stride == 2 else half
        if name == "shuffle_xception":
            for n, (a, b) in enumerate(((main_in, half), (half, half), (half, half))):
                _conv_module(sd, p + f"branch2.{n}.depthwise_conv", a, 1, 3, g)
                _conv_module(sd, p + f"branch2.{n}.pointwise_conv", b, a, 1, g)
        else:
            _conv_module(sd, p + "branch2.0", half, main_in, 1, g)
            _conv_module(sd, p + "branch2.1", half, 1, k, g)
            _conv_module(sd, p + "branch2.2", half, half, 1, g)
    sd["architecture.model.neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    sd["architecture.model.rpn_head.rpn_cls.weight"] = torch.zeros(3, 256, 1, 1)
    sd["architecture.model.roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    return sd


def _conv_bn(x: Tensor, sd: dict, name: str, stride: int, groups: int, relu: bool) -> Tensor:
    w = sd[f"{name}.conv.weight"]
    x = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    x = F.batch_norm(
        x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
        sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], False, 0.0, 1e-5,
    )  # fmt: skip
    return F.relu(x) if relu else x


def _shuffle(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def mmrazor_forward(sd: dict, x: Tensor, code: str = RELEASED) -> list[Tensor]:
    """MMRazor's backbone semantics (eval mode), written from the facts above: stage outputs."""
    x = _conv_bn(x, sd, PREFIX + "conv1", 2, 1, True)
    outs = []
    for i, j, name, cin, _, stride in _blocks(code):
        p = f"{PREFIX}layers.{i}.{j}.choices.{name}."
        inp = x if stride == 2 else x.chunk(2, dim=1)[1]
        if name == "shuffle_xception":
            y = inp
            for n in range(3):
                dw = p + f"branch2.{n}.depthwise_conv"
                y = _conv_bn(y, sd, dw, stride if n == 0 else 1, y.shape[1], False)
                y = _conv_bn(y, sd, p + f"branch2.{n}.pointwise_conv", 1, 1, True)
        else:
            y = _conv_bn(inp, sd, p + "branch2.0", 1, 1, True)
            y = _conv_bn(y, sd, p + "branch2.1", stride, y.shape[1], False)
            y = _conv_bn(y, sd, p + "branch2.2", 1, 1, True)
        if stride == 2:
            left = _conv_bn(x, sd, p + "branch1.0", 2, cin, False)
            left = _conv_bn(left, sd, p + "branch1.1", 1, 1, True)
        else:
            left = x.chunk(2, dim=1)[0]
        x = _shuffle(torch.cat([left, y], dim=1))
        if j == len(code.split("-")[i]) - 1:
            outs.append(x)
    return outs


@pytest.fixture(scope="module")
def state() -> dict[str, Tensor]:
    return mmrazor_state()


def test_split_changes_only_the_first_block_of_stages_0_and_1() -> None:
    code = ShuffleNetCode.parse(RELEASED)
    megvii = ShuffleNetV2Backbone(code).state_dict()
    mmrazor = ShuffleNetV2Backbone(code, stride2_split="mmrazor").state_dict()
    assert list(megvii) == list(mmrazor)
    differ = {k.split(".")[1] + "." + k.split(".")[2] for k in megvii if
              megvii[k].shape != mmrazor[k].shape}  # fmt: skip
    assert differ == {"0.0", "1.0"}
    assert megvii["stages.0.0.proj.2.weight"].shape == (16, 16, 1, 1)
    assert mmrazor["stages.0.0.proj.2.weight"].shape == (32, 16, 1, 1)
    assert ShuffleNetNASSpec(code=RELEASED).stride2_split == "megvii"  # the default is unchanged


def test_converted_backbone_loads_and_computes_as_mmrazor(state: dict) -> None:
    renamed, code, dropped = mmrazor_state_dict_to_nasdet(state)
    assert str(code) == RELEASED
    assert sorted(k.split(".")[2] for k in dropped) == ["neck", "roi_head", "rpn_head"]
    body = ShuffleNetV2Backbone(code, stride2_split="mmrazor").eval()
    result = body.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = list(body(x).values())
        want = mmrazor_forward(state, x)
    assert [t.shape[1] for t in got] == list(WIDTHS)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_convert_command_writes_a_trainable_start(state: dict, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "detnas_coco.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, ckpt)
    out = tmp_path / "detnas_coco.pt"
    argv = ["convert", "mmrazor-detnas", str(ckpt), "--out", str(out), "--min-size", "64"]
    assert nasdet.cli.main([*argv, "--max-size", "64"]) == 0
    assert RELEASED in capsys.readouterr().out
    model = load_model(out, Model)
    assert model.backbone.body.stride2_split == "mmrazor"
    body_key = "stages.2.0.main.12.weight"  # third pointwise conv of an xception block
    assert torch.equal(
        model.backbone.body.state_dict()[body_key],
        state[PREFIX + "layers.2.0.choices.shuffle_xception.branch2.2.pointwise_conv.conv.weight"],
    )
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 80)])
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    # docs/usage.md: model.backbone.weights names the converted file in a nasdet train config
    spec = ShuffleNetNASSpec(
        code=RELEASED, stride2_split="mmrazor", levels=[2, 3, 4, 5], weights=out
    )
    body = build_backbone(spec)
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(body.state_dict()[key], value), key


def test_bare_dict_and_bad_checkpoints(state: dict, tmp_path: Path) -> None:
    bare = {k.removeprefix("architecture.model."): v for k, v in state.items()}
    renamed, code, _ = mmrazor_state_dict_to_nasdet(bare)
    assert str(code) == RELEASED and "stem.0.weight" in renamed
    supernet = dict(state)
    supernet[PREFIX + "layers.1.2.choices.shuffle_3x3.branch2.0.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"layers\.1\.2 holds .* supernet checkpoint"):
        mmrazor_state_dict_to_nasdet(supernet)
    odd = dict(state)
    odd[PREFIX + "layers.0.0.choices.shuffle_7x7.branch3.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected key '.*branch3\.weight'"):
        mmrazor_state_dict_to_nasdet(odd)
    short = {k: v for k, v in state.items() if ".layers.3.3." not in k}
    with pytest.raises(ValueError, match=r"no weights for block layers\.3\.3"):
        mmrazor_state_dict_to_nasdet(short)
    megvii = ShuffleNetV2Backbone(ShuffleNetCode.parse(RELEASED))  # the other split does not fit
    with pytest.raises(CheckpointError, match=r"'stages\.0\.0\.\w+\.\d\.weight' has shape"):
        load_state_dict_checked(megvii, mmrazor_state_dict_to_nasdet(state)[0], "ckpt")
    path = tmp_path / "supernet.pth"
    torch.save(supernet, path)  # a bare dict
    with pytest.raises(CheckpointError, match=r"supernet\.pth: block layers\.1\.2 holds"):
        convert_command(path, tmp_path / "x.pt")
