"""One process of the DDP test (tests/test_ddp.py); run as
``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUTDIR``.

A two-branch model (one branch used per step, chosen by ``before_step`` from the step index, so
the other branch's parameters are unused) trains 2 epochs with the Trainer on gloo, straight in
``OUTDIR/straight``; then again in ``OUTDIR/killed``, stopped at the start of epoch 2 and resumed
from the checkpoint. Then twice more with a ``step_hook`` of two forwards per step (branch 0, then
branch 1): with ``forwards_per_step=2`` (the first forward under ``no_sync``) and without (every
backward all-reduces). Each rank writes ``OUTDIR/rank<r>.json``: chosen branches, the sample
indices seen per epoch, initial and final parameters (flattened), checkpoint writes, history, and
for the hooked runs the final parameters and, per forward, whether DDP was to synchronise.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from nasdet.engine import train as train_mod
from nasdet.engine.distributed import cleanup, init_distributed
from nasdet.engine.train import Trainer, make_scheduler, unwrap

N, BATCH, EPOCHS = 32, 4, 2


class Points(Dataset):
    """``N`` items ``(x, {"y": sum(x), "index": i})`` with ``x`` of 4 features."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x = torch.randn(4, generator=torch.Generator().manual_seed(i))
        return x, {"y": x.sum(), "index": i}


class TwoBranch(nn.Module):
    """A stem then one of two heads (``active``); returns a loss dict like a detector."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.branches = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
        self.active = 0
        self.seen: list[int] = []
        self.init: list[float] = []

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.seen += [int(t["index"]) for t in targets]
        x = torch.relu(self.stem(torch.stack(images)))
        out = self.branches[self.active](x).squeeze(1)
        return {"loss_mse": F.mse_loss(out, torch.stack([t["y"] for t in targets]))}


class Stop(Exception):
    """Raised by ``before_step`` to stop a run, as a kill would."""


def flat(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def make(
    out: Path, seed: int, stop_at: int | None = None, **kw: Any
) -> tuple[Trainer, TwoBranch, list]:
    """A fresh model (initialised with ``seed``) and its Trainer, and the list the branches
    chosen will be appended to; ``stop_at``: step to stop at; ``kw``: more Trainer arguments.
    The model's initial parameters are kept as ``model.init`` (the Trainer's DDP wrapper
    replaces them with rank 0's)."""
    torch.manual_seed(seed)
    model = TwoBranch()
    model.init = flat(model)
    branches: list[int] = []

    def before_step(step: int) -> None:
        if step == stop_at:
            raise Stop
        model.active = random.Random(step).randrange(2)
        branches.append(model.active)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    iters = N // (2 * BATCH)
    trainer = Trainer(
        model=model,
        train_set=Points(),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, "cosine", total_iters=EPOCHS * iters, warmup_iters=2),
        out_dir=out,
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=3,
        amp=False,
        channels_last=False,
        tensorboard=False,
        before_step=before_step,
        find_unused_parameters=True,
        **kw,
    )
    return trainer, model, branches


def both_branches(syncs: list[bool]) -> Any:
    """A step hook: branch 0, then branch 1 (each leaves the other's parameters unused); appends
    to ``syncs`` whether DDP will all-reduce after each forward."""

    def hook(net: nn.Module, images: list, targets: list, step: int) -> Any:
        assert isinstance(net, DistributedDataParallel)
        for branch in (0, 1):
            unwrap(net).active = branch
            syncs.append(bool(net.require_backward_grad_sync))
            yield net(images, targets)

    return hook


def hooked(out: Path, rank: int, forwards: int | None) -> dict[str, Any]:
    """Train with :func:`both_branches`; the final parameters and the sync flags."""
    syncs: list[bool] = []
    trainer, model, _ = make(
        out, seed=100 + rank, step_hook=both_branches(syncs), forwards_per_step=forwards
    )
    trainer.fit()
    return {"final": flat(model), "syncs": syncs, "loss": [e["loss"] for e in trainer.history]}


def main(out: Path) -> None:
    info = init_distributed()
    writes: list[str] = []
    original_save = train_mod.atomic_save

    def counting_save(obj: Any, path: Path) -> Path:
        writes.append(str(path))
        return original_save(obj, path)

    train_mod.atomic_save = counting_save

    # different initial weights per rank: DDP must broadcast rank 0's
    trainer, model, branches = make(out / "straight", seed=100 + info.rank)
    history = trainer.fit()
    per_epoch = len(model.seen) // EPOCHS
    seen = [model.seen[:per_epoch], model.seen[per_epoch:]]
    final = flat(model)
    straight_writes = list(writes)

    killed, _, _ = make(out / "killed", seed=100 + info.rank, stop_at=N // (2 * BATCH))
    try:
        killed.fit()
    except Stop:
        pass
    resumed, resumed_model, _ = make(out / "killed", seed=300 + info.rank)
    resumed.fit(resume=True)

    result = {
        "rank": info.rank,
        "world_size": info.world_size,
        "branches": branches,
        "seen": seen,
        "init": model.init,
        "final": final,
        "resumed_final": flat(resumed_model),
        "writes": straight_writes,
        "loss": [e["loss"] for e in history],
        "hooked": hooked(out / "hooked", info.rank, 2),
        "hooked_sync_each": hooked(out / "hooked_sync_each", info.rank, None),
    }
    (out / f"rank{info.rank}.json").write_text(json.dumps(result))
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
