"""Backbone (re-)pretraining on an image-classification set (SP-NAS "reignition").

The backbone is trained with a global-average-pooling + linear head on its last level, on a
torchvision ``ImageFolder`` (``root/train/<class>/*``, ``root/val/<class>/*``); the head is thrown
away afterwards and the backbone keeps its new weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from nasdet.engine.train import make_scheduler
from nasdet.errors import DataError
from nasdet.progress import track

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """``backbone`` (contract: OrderedDict of levels) + global average pool + linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_info[-1].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = next(reversed(self.backbone(x).values()))
        return self.head(last.mean(dim=(2, 3)))


def image_folder(root: Path, split: str, size: int, *, train: bool) -> ImageFolder:
    """``root/split`` as an ImageFolder resized to ``size`` px (DataError when missing)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: classification split not found — expected ImageFolder "
            f"layout {root}/{{train,val}}/<class>/*.png"
        )
    steps = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
    if train:
        steps.append(v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    steps.append(v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    return ImageFolder(str(folder), transform=v2.Compose(steps))


def pretrain_backbone(
    backbone: nn.Module,
    root: Path,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 0.05,
    image_size: int = 32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    before_step: Callable[[int], None] | None = None,
) -> float:
    """Train ``backbone`` in place as a classifier on ``root``; returns val top-1 accuracy
    (fraction). SGD with momentum, cosine schedule per iteration, ``image_size`` px inputs.
    ``before_step(step)`` is called before each training step (0-based, counted over all
    epochs; a supernet samples its path there).

    Seeded: the result depends only on the inputs and ``seed``. Two generators are drawn from
    ``seed``: one orders the data (the DataLoader's, which also seeds any workers), the other
    seeds torch's global RNG for the run, which draws the head's initialisation, the random
    crops and dropout. The run happens inside ``torch.random.fork_rng``, so the caller's global
    RNG state (CPU and CUDA) is as it was afterwards.
    """
    device = torch.device(device)
    train_set = image_folder(root, "train", image_size, train=True)
    val_set = image_folder(root, "val", image_size, train=False)
    order_seed, global_seed = torch.randint(
        2**62, (2,), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(global_seed)
        model = Classifier(backbone, len(train_set.classes)).to(device)
        g = torch.Generator().manual_seed(order_seed)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g)
        _train(model, loader, epochs=epochs, lr=lr, device=device, before_step=before_step)
        return accuracy(model, val_set, device=device)  # its DataLoader draws a seed too


def _train(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    device: torch.device,
    before_step: Callable[[int], None] | None,
) -> None:
    """The classification training loop of :func:`pretrain_backbone`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = make_scheduler(
        opt, "cosine", total_iters=epochs * len(loader), warmup_iters=min(50, len(loader))
    )
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for images, labels in track(loader, f"classification epoch {epoch + 1}/{epochs}"):
            if before_step is not None:
                before_step(step)
            step += 1
            loss = loss_fn(model(images.to(device)), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(labels)
        log.info(
            "classification epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(loader.dataset)
        )


@torch.no_grad()
def accuracy(
    model: nn.Module, dataset: ImageFolder, *, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``dataset``."""
    model.eval()
    correct = 0
    for images, labels in DataLoader(dataset, batch_size=256):
        correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
    return correct / max(len(dataset), 1)
