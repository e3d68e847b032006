"""Training throughput: nasdet's Trainer vs a bare torchvision training loop.

Both train the same detector (same initial weights) on the same batches of the bundled digits
(same DataLoader settings), alternating rounds so machine noise hits both alike. nasdet's loop
runs with everything it normally does on (gradient clipping, LR schedule, finite-loss check,
TensorBoard scalars, the progress bar). Target: ratio nasdet / bare >= 0.97.

    python benchmarks/train_throughput.py --out docs/benchmarks/train_throughput.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_line, write_fragment
from torch.utils.data import DataLoader, Subset

from nasdet.build import build_datasets, build_detector
from nasdet.config import load_config
from nasdet.data import collate
from nasdet.engine.train import Trainer, make_optimizer, make_scheduler
from nasdet.methods import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "baseline_digits.yaml"


def bare_loop(model: torch.nn.Module, dataset: Subset, batch_size: int, lr: float) -> float:
    """Images per second of the plainest torchvision training loop (SGD, no extras)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate
    )
    model.train()
    start, seen = time.perf_counter(), 0
    for images, targets in loader:
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(images)
    return seen / (time.perf_counter() - start)


def nasdet_loop(model: torch.nn.Module, dataset: Subset, batch_size: int, lr: float) -> float:
    """Images per second of one epoch of nasdet's Trainer (as `nasdet train` runs it)."""
    opt = make_optimizer(model, "sgd", lr=lr, momentum=0.9, weight_decay=1e-4)
    iters = -(-len(dataset) // batch_size)
    sched = make_scheduler(opt, "cosine", total_iters=iters, warmup_iters=iters // 4)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            train_set=dataset,
            optimizer=opt,
            scheduler=sched,
            out_dir=Path(out),
            epochs=1,
            batch_size=batch_size,
            grad_clip=10.0,
            tensorboard=True,
        )
        writer = trainer._writer()
        try:
            entry = trainer._train_epoch(0, writer)
        finally:
            writer.close()
    return entry["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=480, help="images per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args()

    cfg = load_config(CONFIG, TrainConfig)
    torch.manual_seed(0)
    data = build_datasets(cfg.data, seed=0)
    subset = Subset(data.train, range(args.images))
    initial = build_detector(cfg.model, len(data.categories) + 1)
    bs, lr = cfg.train.batch_size, 0.01
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(copy.deepcopy(initial), subset, bs, lr))
        ours.append(nasdet_loop(copy.deepcopy(initial), subset, bs, lr))
    b, o = statistics.median(bare), statistics.median(ours)
    rows = [
        "| loop | images/s (median of rounds) | all rounds |",
        "|---|---:|---|",
        f"| bare torchvision loop | {b:.1f} | {', '.join(f'{x:.1f}' for x in bare)} |",
        f"| nasdet Trainer | {o:.1f} | {', '.join(f'{x:.1f}' for x in ours)} |",
        f"| **ratio nasdet / bare** | **{o / b:.3f}** (target >= 0.97) | |",
    ]
    text = "\n".join(
        [
            f"Model: {cfg.model.detector} on {cfg.model.backbone.name} "
            f"x{cfg.model.backbone.width_mult}, batch {bs}, {args.images} digits images "
            f"({cfg.model.min_size} px) per round, "
            f"{args.rounds} rounds alternating.",
            "",
            *rows,
            "",
            f"Command: `python benchmarks/train_throughput.py --images {args.images} "
            f"--rounds {args.rounds}`  ",
            f"Machine: {machine_line()}",
        ]
    )
    print(text)
    if args.out:
        write_fragment(args.out, text)


if __name__ == "__main__":
    main()
