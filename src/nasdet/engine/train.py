"""A plain PyTorch training loop for torchvision detectors.

- SGD or AdamW; linear warm-up then cosine / multistep / constant, stepped per iteration;
- gradient clipping, AMP and ``channels_last`` on CUDA;
- deterministic: the shuffle order of epoch ``e`` comes from a generator seeded with
  ``(seed, e)``, and the global RNG state is checkpointed, so ``resume`` continues bit for bit;
- a checkpoint (model, optimizer, scheduler, scaler, RNG, epoch, step, history) written atomically
  after every epoch, and every ``checkpoint_every`` optimizer steps inside an epoch; a resume from
  a checkpoint written mid-epoch skips the batches the epoch had already trained on (see
  :meth:`Trainer.save_checkpoint` for the contract); a NaN/inf loss stops training naming the step
  and the last good checkpoint;
- progress with ETA (:mod:`nasdet.progress`), TensorBoard scalars, ``logging`` per epoch;
- an optional step hook that runs several forwards per optimizer step (the sandwich rule,
  in-place distillation): each forward's loss is backpropagated at once, then one step is taken;
- data-parallel under ``torchrun`` (see :mod:`nasdet.engine.distributed`): when a process group
  of more than one process is initialised, the model trains wrapped in ``DistributedDataParallel``
  on a ``DistributedSampler`` share of the data; rank 0 alone evaluates, logs and writes the
  checkpoint (the same file as a single-process run's).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from nasdet.data import collate
from nasdet.engine.distributed import barrier, current
from nasdet.engine.optim import make_optimizer as make_optimizer  # re-exported
from nasdet.engine.optim import make_scheduler as make_scheduler  # re-exported
from nasdet.engine.optim import resolve_device as resolve_device  # re-exported
from nasdet.errors import CheckpointError, TrainingDiverged
from nasdet.models.io import atomic_save, read_weights
from nasdet.progress import track

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"

#: ``step_hook(model, images, targets, step)``: a generator yielding one loss dict per forward.
StepHook = Callable[
    [nn.Module, list[Tensor], list[dict[str, Any]], int], Iterator[dict[str, Tensor]]
]
_END = object()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` wrapper (``model`` itself when it is
    not wrapped): call ``set_active_subnet`` and the like on it, forwards through the wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class EpochProgress:
    """How far an unfinished epoch got (one process's share): ``steps`` optimizer steps done,
    ``loss_sum`` the logged loss times the images of each step, ``images`` seen, ``seconds``
    spent. What a mid-epoch checkpoint keeps so that the epoch's history entry comes out as an
    uninterrupted epoch's."""

    steps: int = 0
    loss_sum: float = 0.0
    images: int = 0
    seconds: float = 0.0


class _FromPosition(Sampler[int]):
    """``base``'s order from position ``skip`` on: an epoch resumed mid-way leaves out the
    samples its first batches took before the checkpoint. ``base`` draws its order as it would
    uninterrupted (the same generator, seeded per epoch, the same calls), so the rest is the
    same."""

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        assert isinstance(self.base, Sized)
        return len(self.base) - self.skip


@dataclass
class Trainer:
    """Trains ``model`` on ``train_set`` for ``epochs``; see the module docstring.

    ``evaluate`` (optional) is called as ``evaluate(model, epoch)`` after the epochs named by
    ``eval_every`` and after the last one; its metrics go to that epoch's history entry as
    ``entry["val"]``.
    ``fingerprint`` identifies the run's settings: resuming from a checkpoint written with another
    fingerprint is refused (the schedule would not be the same).
    ``before_step`` (optional) is called with the global step index (``epoch * iterations per
    epoch + i``, from 0) before each forward, e.g. for a supernet to sample its path: a choice
    that depends only on the step is the same on every rank and after a resume.

    ``step_hook`` (optional) replaces the single forward of a step with several (the sandwich
    rule, in-place distillation): it is called as ``step_hook(model, images, targets, step)``
    after ``before_step`` and must return an iterator (a generator) yielding one loss dict
    (str -> scalar Tensor) per forward. ``model`` is what forwards must go through: the
    ``DistributedDataParallel`` wrapper when distributed (so that DDP sees them), else the plain
    module; :func:`unwrap` (or ``self.model``) gives the plain module, e.g. to call
    ``set_active_subnet``. The Trainer resumes the generator under autocast (AMP), checks and
    backpropagates each yielded loss (through the AMP scaler) before resuming it again, so only
    one graph is alive at a time and gradients accumulate; after the last forward it clips and
    steps the optimizer once. The logged loss is the sum over the forwards. ``forwards_per_step``
    declares how many forwards the hook yields per step (checked): distributed, all but the last
    then run under ``no_sync()`` and the gradients are all-reduced once, with the last backward
    (DDP decides at forward time, hence a count declared ahead); left ``None``, every backward
    all-reduces (the same gradients, more communication). Every rank must run as many forwards.
    Randomness in the hook should come from the step index or the global RNG (checkpointed), so
    that a resume stays exact. Without a hook a step is one ``model(images, targets)`` forward.

    Distributed (a process group of more than one process initialised before construction):
    ``self.model`` stays the plain module; training runs through a ``DistributedDataParallel``
    wrapper (``find_unused_parameters`` for a supernet whose steps leave parameters unused) over
    a ``DistributedSampler`` seeded with ``seed``, so ``batch_size`` is per process. Rank 0 alone
    calls ``evaluate`` (its history entries alone hold ``val``) and writes the checkpoint; every
    rank reads it on ``resume``. The logged loss is the mean over all processes.

    ``checkpoint_every`` (optimizer steps; 0: off) adds checkpoints inside an epoch, after every
    global step that is a multiple of it, so that a process killed in a long epoch (a rank lost
    under ``torchrun --max-restarts``) loses at most that many steps; see :meth:`save_checkpoint`.
    """

    model: nn.Module
    train_set: Dataset
    optimizer: Optimizer
    scheduler: LRScheduler
    out_dir: Path
    epochs: int
    batch_size: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool = True
    num_workers: int = 0
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None
    eval_every: int = 0
    tensorboard: bool = True
    fingerprint: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    before_step: Callable[[int], None] | None = None
    find_unused_parameters: bool = False
    step_hook: StepHook | None = None
    forwards_per_step: int | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.forwards_per_step is not None and self.forwards_per_step < 1:
            raise ValueError(f"forwards_per_step must be >= 1, got {self.forwards_per_step}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.step_hook is None and self.forwards_per_step not in (None, 1):
            raise ValueError("forwards_per_step > 1 needs a step_hook that runs the forwards")
        self.out_dir = Path(self.out_dir)
        self.cuda = self.device.type == "cuda"
        self.model.to(self.device)
        if self.cuda and self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and self.amp)
        self.generator = torch.Generator()
        self.dist = current()
        self.sampler: DistributedSampler | None = None
        self.net: nn.Module = self.model  # what forward/backward go through
        # what DataLoader(shuffle=True) would build: the same draws from the same generator
        base: Sampler[int] = RandomSampler(self.train_set, generator=self.generator)  # type: ignore[arg-type]
        if self.dist.distributed:
            self.sampler = base = DistributedSampler(
                self.train_set,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=self.seed,
            )
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self._device_index()] if self.cuda else None,
                find_unused_parameters=self.find_unused_parameters,
            )
        self._order = _FromPosition(base)
        self.loader = DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self._order,
            generator=self.generator,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.cuda,
            persistent_workers=False,
        )
        self.iters_per_epoch = len(self.loader)
        self.start_epoch = 0
        self._resume_progress: EpochProgress | None = None  # set by a mid-epoch checkpoint
        self._saved_at = ""  # where the last checkpoint was written, for messages

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _device_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int, progress: EpochProgress | None = None) -> Path:
        """Everything needed to continue after ``epoch`` finished epochs and, with ``progress``,
        after its ``progress.steps`` steps into the next one (a mid-epoch checkpoint).

        The file (``checkpoint.pt``: one ``torch.save`` dict, written to a temporary file that is
        then renamed over the old one, so a kill leaves the old or the new one, never a torn one):
        ``model`` (the plain module's state dict), ``optimizer``, ``scheduler``, ``scaler``;
        ``epoch`` (finished epochs), ``epoch_step`` (steps done in epoch ``epoch + 1``, 0 at an
        epoch's end), ``step`` (optimizer steps in all), ``iters_per_epoch``, ``world_size``;
        ``rng`` (rank 0's torch, Python and CUDA RNG states) and, distributed, ``rng_per_rank``;
        mid-epoch, ``progress_per_rank`` (each rank's :class:`EpochProgress` as a dict);
        ``history`` (the finished epochs' entries), ``epochs`` and ``fingerprint``. The data order
        needs no state of its own: it is a function of (``seed``, epoch, rank), and
        ``epoch_step`` says how much of it was used.

        Distributed: every rank must call it at the same step (the per-rank states are
        gathered); rank 0 writes the file, then all ranks wait for it, so no rank trains past a
        checkpoint that is not on disk yet.
        """
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        mine = {"rng": rng, "progress": asdict(progress) if progress is not None else None}
        per_rank: list[Any] = [mine]
        if self.dist.distributed:
            per_rank = [None] * self.dist.world_size
            dist.all_gather_object(per_rank, mine)
        epoch_step = progress.steps if progress is not None else 0
        state: dict[str, Any] = {
            "epoch": epoch,
            "epoch_step": epoch_step,
            "step": epoch * self.iters_per_epoch + epoch_step,
            "iters_per_epoch": self.iters_per_epoch,
            "world_size": self.dist.world_size,
            "epochs": self.epochs,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": self.history,
        }
        if self.dist.distributed:
            state["rng_per_rank"] = [r["rng"] for r in per_rank]
        if progress is not None:
            state["progress_per_rank"] = [r["progress"] for r in per_rank]
        if self.dist.is_main:
            atomic_save(state, self.checkpoint_path)
        barrier()
        self._saved_at = _position(epoch, epoch_step, self.iters_per_epoch)
        return self.checkpoint_path

    def load_checkpoint(self) -> None:
        """Restore the state saved by :meth:`save_checkpoint`; continue where it was written.
        Refused in one line: another fingerprint or number of epochs, or another number of
        processes (the data split and the per-iteration schedule depend on it)."""
        path = self.checkpoint_path
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint to resume from — run without --resume")
        ck = read_weights(path)
        if ck.get("fingerprint") != self.fingerprint or ck.get("epochs") != self.epochs:
            raise CheckpointError(
                f"{path}: written with different settings than this run — resume with the same "
                "config, or start fresh in another --out directory"
            )
        # checkpoints from before these keys existed: written at an epoch's end, any world size
        epoch_step = int(ck.get("epoch_step", 0))
        ranks = int(ck.get("world_size", self.dist.world_size))
        if ranks != self.dist.world_size:
            raise CheckpointError(
                f"{path}: written by {ranks} process(es), this run has {self.dist.world_size} "
                f"— resume with as many (torchrun --nproc_per_node {ranks}; 1: a plain run): "
                "the data split and the learning-rate schedule depend on it"
            )
        if epoch_step and ck.get("iters_per_epoch") != self.iters_per_epoch:
            raise CheckpointError(
                f"{path}: written after step {epoch_step} of an epoch of "
                f"{ck.get('iters_per_epoch')} steps, this run's have {self.iters_per_epoch} — "
                "resume with the same data and batch size"
            )
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        rng = ck["rng"]
        per_rank = ck.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            rng = per_rank[self.dist.rank]  # same world size: each rank continues its own stream
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_python_state(rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.history = list(ck["history"])
        self.start_epoch = int(ck["epoch"])
        self._resume_progress = None
        if epoch_step:
            self._resume_progress = EpochProgress(**ck["progress_per_rank"][self.dist.rank])
        self._saved_at = _position(self.start_epoch, epoch_step, self.iters_per_epoch)
        log.info("resuming %s: %s, %d epochs in all", path, self._saved_at, self.epochs)

    # ------------------------------------------------------------------ training
    def fit(self, *, resume: bool = False) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the per-epoch history."""
        if resume:
            self.load_checkpoint()
        writer = self._writer() if self.dist.is_main else None
        try:
            for epoch in range(self.start_epoch, self.epochs):
                progress, self._resume_progress = self._resume_progress, None
                entry = self._train_epoch(epoch, writer, progress or EpochProgress())
                last = epoch + 1 == self.epochs
                if (
                    self.evaluate is not None
                    and self.dist.is_main
                    and (last or (self.eval_every and (epoch + 1) % self.eval_every == 0))
                ):
                    self.model.eval()
                    metrics = self.evaluate(self.model, epoch + 1)
                    entry["val"] = metrics
                    if writer is not None:
                        for k, v in metrics.items():
                            writer.add_scalar(f"val/{k}", v, epoch + 1)
                self.history.append(entry)
                self.save_checkpoint(epoch + 1)
                if not self.dist.is_main:
                    continue
                log.info(
                    "epoch %d/%d  loss %.4f  lr %.5f  %.1f img/s%s",
                    epoch + 1,
                    self.epochs,
                    entry["loss"],
                    entry["lr"],
                    entry["images_per_s"],
                    f"  val mAP {entry['val']['mAP']:.4f}" if "val" in entry else "",
                )
        finally:
            if writer is not None:
                writer.close()
        return self.history

    def _train_epoch(
        self, epoch: int, writer: Any, progress: EpochProgress | None = None
    ) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based) from ``progress`` (resumed mid-epoch: its first
        ``progress.steps`` batches are skipped; ``None``: from its start); its history entry."""
        progress = progress if progress is not None else EpochProgress()
        self.model.train()
        # Distributed, the sampler orders the data; the generator then only seeds the workers.
        self.generator.manual_seed(self.seed * 100_003 + epoch + self.dist.rank * 1_000_003)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        iters = self.iters_per_epoch
        self._order.skip = progress.steps * self.batch_size
        start = time.perf_counter() - progress.seconds
        bar = track(self.loader, f"epoch {epoch + 1}/{self.epochs}", enabled=self.dist.is_main)
        for i, (images, targets) in enumerate(bar, start=progress.steps):
            images = [img.to(self.device, non_blocking=True) for img in images]
            targets = [_to_device(t, self.device) for t in targets]
            if self.before_step is not None:
                self.before_step(epoch * iters + i)
            self.optimizer.zero_grad(set_to_none=True)
            reported = self._forward_backward(images, targets, epoch, i)
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            value = float(reported.detach())
            progress.loss_sum += value * len(images)
            progress.images += len(images)
            progress.steps = i + 1
            if writer is not None:
                step = epoch * iters + i
                writer.add_scalar("train/loss", value, step)
                writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
            bar.set_postfix(loss=f"{value:.3f}")
            if self.checkpoint_every and (epoch * iters + i + 1) % self.checkpoint_every == 0:
                if i + 1 < iters:  # the epoch's end writes its own checkpoint
                    progress.seconds = time.perf_counter() - start
                    self.save_checkpoint(epoch, progress)
        self._order.skip = 0
        seconds = time.perf_counter() - start
        total, seen = progress.loss_sum, progress.images
        if self.dist.distributed:  # every rank's images, weighted equally
            sums = torch.tensor([total, float(seen)], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            total, seen = float(sums[0]), int(sums[1])
        return {
            "epoch": epoch + 1,
            "loss": total / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else math.inf,
        }

    def _forward_backward(
        self, images: list[Tensor], targets: list[dict[str, Any]], epoch: int, i: int
    ) -> Tensor:
        """Run the step's forwards, backpropagating each loss as soon as it is yielded; returns
        the sum of the forwards' losses (each the mean over processes when distributed)."""
        step = epoch * self.iters_per_epoch + i
        hook = self.step_hook or _one_forward
        expected = self.forwards_per_step or (None if self.step_hook else 1)
        forwards = iter(hook(self.net, images, targets, step))
        total: Tensor | None = None
        k, too_many = 0, False
        try:
            while True:
                with self._sync(k), torch.autocast(
                    self.device.type, enabled=self.cuda and self.amp
                ):
                    losses = next(forwards, _END)
                    if losses is _END:
                        break
                    if expected is not None and k >= expected:
                        too_many = True
                        break
                    loss = sum(losses.values())
                reported = self._mean_over_ranks(loss) if self.dist.distributed else loss
                if not torch.isfinite(reported):  # distributed: all ranks stop together
                    self._diverged(reported, epoch, i, losses, k if self.step_hook else None)
                self.scaler.scale(loss).backward()
                total = reported.detach() if total is None else total + reported.detach()
                k += 1
        finally:
            getattr(forwards, "close", lambda: None)()
        if total is None or too_many or (expected is not None and k != expected):
            count = f"more than {k}" if too_many else str(k)
            raise ValueError(
                f"step_hook yielded {count} losses at step {step}; expected "
                f"{expected if expected is not None else 'at least 1'} (forwards_per_step)"
            )
        return total

    def _sync(self, k: int) -> AbstractContextManager[Any]:
        """``no_sync()`` for forward ``k`` (0-based) unless it is the step's last (or the count is
        unknown, or the model is not wrapped in DDP)."""
        n = self.forwards_per_step
        if isinstance(self.net, DistributedDataParallel) and n is not None and k < n - 1:
            return self.net.no_sync()
        return nullcontext()

    def _mean_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss averaged over the processes (non-finite when any process's is)."""
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        return mean / self.dist.world_size

    def _diverged(
        self, loss: torch.Tensor, epoch: int, i: int, losses: dict, forward: int | None = None
    ) -> None:
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        if forward is not None:
            parts = f"step_hook forward {forward + 1}: {parts}"
        good = (
            f"{self.checkpoint_path} ({self._saved_at})"
            if self._saved_at
            else "none (diverged before the first checkpoint)"
        )
        step = epoch * self.iters_per_epoch + i + 1
        raise TrainingDiverged(
            f"loss became {float(loss.detach())} at epoch {epoch + 1}, iteration {i + 1} "
            f"(step {step}; {parts}); last good checkpoint: {good} — "
            "lower train.lr, raise train.warmup_iters or set train.grad_clip"
        )

    def _writer(self) -> Any:
        if not self.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tensorboard"))


def _one_forward(
    model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]], step: int
) -> Iterator[dict[str, Tensor]]:
    """The step of a Trainer without ``step_hook``: one forward."""
    yield model(images, targets)


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _as_python_state(state: Any) -> tuple:
    """``random.setstate`` needs tuples; a state may come back from disk with lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _position(epoch: int, epoch_step: int, iters_per_epoch: int) -> str:
    """Where a checkpoint was written, in words: ``after epoch 2``, ``in epoch 3 after step 5
    of 8``."""
    if not epoch_step:
        return f"after epoch {epoch}"
    return f"in epoch {epoch + 1} after step {epoch_step} of {iters_per_epoch}"
