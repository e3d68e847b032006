"""The ``search`` and ``search_with_resolution`` steps: architecture logits optimised with the
weights frozen (ENOT's search, the seed's optimiser settings).

Each searchable block ``b`` has logits ``alpha_b`` (one per variant, zero at the start: uniform);
``p_b = softmax(alpha_b)``. The loss minimised is

    E_p[task loss] + latency_loss_weight * relu(E_p[latency] - target) / target,
    E_p[latency] = fixed + sum_b sum_v p_b[v] * LUT[b][v],

so the latency term vanishes once the expected latency meets the target. The latency term is
differentiated exactly. The task term is estimated by REINFORCE (as TuNAS does): every training
batch is run, without gradients, by ``samples_per_step`` architectures drawn from ``p``; each
one's gradient is its task loss minus the mean of the others' on the same batch (leave-one-out
baseline) times the gradient of its log-probability. Comparing architectures on the same images
removes the batch's difficulty from the signal, and the weights being frozen, no backward pass
through the detector is needed. The optimiser is Adam or RAdam (the seed's lr 0.01, momentum 0,
weight decay 0). Batch-norm layers run in eval mode (their statistics are frozen with the weights).
The draws come from a generator seeded by (seed, epoch), so a resumed search draws the same.

After each epoch the argmax architecture is logged as a list of ints, evaluated on the search
split (the validation split when there is none) and committed to the record store; the logits
and the optimiser state are checkpointed, so a killed search resumes at the next epoch. The
baseline (variant 0 everywhere) is evaluated first.

The result always meets the target: when the argmax architecture's LUT latency misses it after
``epochs``, the latency weight is doubled and the search continues, one epoch at a time, for at
most ``max_extra_epochs`` epochs; if it still misses, the best feasible architecture evaluated
is returned, else the space's cheapest one. The log says which.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nasdet.atomic import write_json_atomic
from nasdet.build import build_datasets, cached_for_scoring
from nasdet.data import collate
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.methods.latency.common import (
    load_space,
    lut,
    resolutions,
    set_resolution,
    space_model,
)
from nasdet.methods.latency.config import LatencyRunConfig, Search
from nasdet.methods.latency.latency import LatencyTable
from nasdet.methods.latency.nets import LatencySupernet, space_body
from nasdet.methods.latency.space import LatencyArch
from nasdet.models.io import atomic_save, save_model
from nasdet.progress import track
from nasdet.search.records import Record, RecordStore, commit_result, done_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOutcome:
    """The architecture a search returns, at ``resolution``, and how it was chosen."""

    record: Record
    arch: LatencyArch
    resolution: int
    how: str


def genotype_of(arch: LatencyArch, resolution: int) -> str:
    """A record's genotype: the architecture list and the input side (``[0, 3, 6]@128``)."""
    return f"{arch}@{resolution}"


class _Scorer:
    """Evaluates architectures of the space detector at one resolution and commits them."""

    def __init__(self, cfg, store, step, model, data, table, device) -> None:  # noqa: ANN001
        self.cfg, self.store, self.step, self.model = cfg, store, step, model
        self.data, self.table, self.device = data, table, device

    def __call__(self, arch: LatencyArch, role: str) -> Record:
        name = genotype_of(arch, self.table.resolution)
        found = done_record(self.store, self.step, name)
        if found is not None:
            return found
        body: LatencySupernet = space_body(self.model)
        body.set_active_subnet(arch)
        scored_on = self.data.search if self.data.search is not None else self.data.val
        metrics = evaluate(
            self.model.eval(),
            scored_on,
            batch_size=self.cfg.eval.batch_size,
            device=self.device,
            backend=self.cfg.eval.backend,
        )
        latency = self.table.predict(arch)
        key = next(iter(metrics)) if "mAP" not in metrics else "mAP"
        log.info(
            "%s %s: arch %s at %d px, latency %.4f %s, %s %.4f",
            self.step,
            role,
            arch.to_list(),
            self.table.resolution,
            latency,
            self.table.unit,
            key,
            metrics[key],
        )
        return commit_result(
            self.store,
            self.step,
            name,
            metrics,
            cost={"latency_lut": latency},
            extra={
                "role": role,
                "unit": self.table.unit,
                "arch": arch.to_list(),
                "resolution": self.table.resolution,
            },
        )


def _freeze(model: nn.Module) -> None:
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def sample_archs(logits: list[Tensor], n: int, gen: torch.Generator) -> list[LatencyArch]:
    """``n`` architectures drawn from ``softmax(logits[b])`` independently per block."""
    probs = [torch.softmax(a.detach().float().cpu(), dim=0) for a in logits]
    cols = [torch.multinomial(p, n, replacement=True, generator=gen) for p in probs]
    return [LatencyArch(tuple(int(c[i]) for c in cols)) for i in range(n)]


def reinforce_loss(
    logits: list[Tensor],
    task_loss: Callable[[LatencyArch], float],
    n: int,
    gen: torch.Generator,
) -> Tensor:
    """A surrogate whose gradient in ``logits`` estimates that of ``E_p[task_loss]``: ``n``
    architectures drawn from ``p``, each weighted by its loss minus the mean of the others'
    (leave-one-out baseline), times its log-probability; averaged."""
    if n < 2:
        raise ValueError(f"the leave-one-out baseline needs at least 2 draws, got {n}")
    archs = sample_archs(logits, n, gen)
    losses = torch.tensor([float(task_loss(a)) for a in archs])
    advantage = losses - (losses.sum() - losses) / (n - 1)
    logp = torch.stack(
        [
            sum(
                torch.log_softmax(alpha, dim=0)[c]
                for alpha, c in zip(logits, a.choices, strict=True)
            )
            for a in archs
        ]
    )
    return (advantage.to(logp) * logp).mean()


@torch.no_grad()
def _task_loss(
    model: nn.Module, body: LatencySupernet, arch: LatencyArch, images, targets
) -> float:  # noqa: ANN001
    body.set_active_subnet(arch)
    return float(sum(model(images, targets).values()))


def _argmax(logits: list[Tensor]) -> LatencyArch:
    return LatencyArch(tuple(int(a.argmax()) for a in logits))


def search_at(
    cfg: LatencyRunConfig,
    sc: Search,
    store: RecordStore,
    out: Path,
    step: str,
    space_path: Path,
    step_dir: Path,
    resolution: int,
) -> SearchOutcome:
    """One search at ``resolution`` (see the module docstring)."""
    step_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    # the split scored for every architecture stays decoded; training images are not kept
    data = cached_for_scoring(build_datasets(cfg.data, seed=cfg.seed), cfg, calibration=False)
    device = resolve_device(cfg.train.device)
    model = load_space(space_path).to(device)
    set_resolution(model, resolution)
    body: LatencySupernet = space_body(model)
    table: LatencyTable = lut(cfg, out, model.cpu(), resolution)
    model.to(device)
    score = _Scorer(cfg, store, step, model, data, table, device)
    target = sc.target_latency
    score(body.space.baseline, "baseline")
    logits = [torch.zeros(n, requires_grad=True) for n in body.space.num_variants]
    opt_cls = torch.optim.Adam if sc.optimizer == "adam" else torch.optim.RAdam
    opt = opt_cls(logits, lr=sc.lr, betas=sc.betas, weight_decay=sc.weight_decay)
    state_path = step_dir / "search_state.pt"
    epoch, weight = 0, sc.latency_loss_weight
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        with torch.no_grad():
            for a, s in zip(logits, state["logits"], strict=True):
                a.copy_(s)
        opt.load_state_dict(state["optimizer"])
        epoch, weight = int(state["epoch"]), float(state["weight"])
        log.info("%s: resumed at epoch %d (latency weight %g)", step, epoch + 1, weight)
    loader_bs = sc.batch_size or cfg.train.batch_size
    limit = sc.epochs + sc.max_extra_epochs
    arch = _argmax(logits)
    while epoch < limit:
        if epoch >= sc.epochs and table.predict(arch) <= target:
            break
        if epoch >= sc.epochs:
            weight *= 2.0
            log.info(
                "%s: argmax %s misses the target (%.4f > %g %s): latency weight raised to "
                "%g, one more epoch",
                step,
                arch.to_list(),
                table.predict(arch),
                target,
                table.unit,
                weight,
            )
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        draws = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 7919)
        loader = DataLoader(
            data.train,
            batch_size=loader_bs,
            shuffle=True,
            generator=gen,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
        )
        _freeze(model)
        for images, targets in track(loader, f"{step} epoch {epoch + 1}"):
            images = [i.to(device) for i in images]
            targets = [
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                for t in targets
            ]
            expected = table.expected(logits)
            loss = reinforce_loss(
                logits, functools.partial(_task_loss, model, body, images=images, targets=targets),
                sc.samples_per_step, draws,
            ) + weight * F.relu(expected - target) / target  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        arch = _argmax(logits)
        score(arch, f"argmax epoch {epoch}")
        log.info(
            "%s epoch %d: argmax arch %s, latency %.4f %s (expected %.4f %s)",
            step,
            epoch,
            arch.to_list(),
            table.predict(arch),
            table.unit,
            float(expected.detach()),
            table.unit,
        )
        atomic_save(
            {
                "logits": [a.detach() for a in logits],
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "weight": weight,
            },
            state_path,
        )
    return _choose(step, store, score, table, arch, target)


def _choose(
    step: str,
    store: RecordStore,
    score: _Scorer,
    table: LatencyTable,
    arch: LatencyArch,
    target: float,
) -> SearchOutcome:
    """The argmax when it meets the target, else the best feasible evaluated architecture, else
    the space's cheapest (feasible: the target was checked against it before the search)."""
    r = table.resolution
    if table.predict(arch) <= target:
        how = "the argmax architecture meets the target"
        return SearchOutcome(score(arch, "argmax"), arch, r, how)
    key = "mAP"
    feasible = [
        rec
        for rec in store.records(step, status="done")
        if rec.extra.get("resolution") == r and rec.cost.get("latency_lut", math.inf) <= target
    ]
    if feasible:
        best = max(feasible, key=lambda rec: rec.metrics.get(key, -math.inf))
        how = "the argmax misses the target: the best feasible architecture visited"
        log.warning("%s: %s (%s)", step, how, best.extra["arch"])
        return SearchOutcome(best, LatencyArch.parse(best.extra["arch"]), r, how)
    cheapest = table.cheapest()
    how = "the argmax misses the target and no visited one meets it: the space's cheapest"
    log.warning("%s: %s (%s)", step, how, cheapest.to_list())
    return SearchOutcome(score(cheapest, "cheapest"), cheapest, r, how)


def save_search_space(
    space_path: Path, dest: Path, outcome: SearchOutcome, cfg: LatencyRunConfig
) -> Path:
    """The search space checkpoint (``ss_checkpoint``): the space model file with the searched
    architecture and resolution in its ``meta``."""
    model = load_space(space_path)
    data_meta = model.nasdet_meta
    return save_model(
        dest,
        model,
        architecture=space_model(cfg).model_dump(mode="json"),
        categories=model.categories,
        cat_ids=model.cat_ids,
        meta={
            **data_meta,
            "searched_arch": outcome.arch.to_list(),
            "resolution": outcome.resolution,
            "how": outcome.how,
        },
    )


def search(cfg: LatencyRunConfig, store: RecordStore, out: Path, space_path: Path) -> SearchOutcome:
    """The ``search`` step (model.min_size) or ``search_with_resolution`` (every resolution of
    the range whose cheapest architecture meets the target; the best metric wins, metrics within
    ``resolution_tolerance`` of the best count as equal and then the lower latency wins)."""
    step = "search_with_resolution" if "search_with_resolution" in cfg.steps else "search"
    sc = cfg.search_cfg
    assert sc is not None
    step_dir = out / "output" / step
    dest = step_dir / "search_space.pt"
    sizes = resolutions(getattr(sc, "resolution_range", None), cfg.model.min_size)
    outcomes: list[SearchOutcome] = []
    for r in sizes:
        sub = step_dir if len(sizes) == 1 else step_dir / f"r{r}"
        detector = load_space(space_path)
        if lut(cfg, out, detector, r).minimum > sc.target_latency:
            log.info("%s: %d px skipped: its cheapest architecture misses the target", step, r)
            continue
        outcomes.append(search_at(cfg, sc, store, out, step, space_path, sub, r))
    key = "mAP"
    best = max(o.record.metrics.get(key, -math.inf) for o in outcomes)
    tol = getattr(sc, "resolution_tolerance", 0.0)
    close = [o for o in outcomes if o.record.metrics.get(key, -math.inf) >= best - tol]
    chosen = min(close, key=lambda o: o.record.cost.get("latency_lut", math.inf))
    log.info(
        "%s: chose arch %s at %d px (%s)",
        step,
        chosen.arch.to_list(),
        chosen.resolution,
        chosen.how,
    )
    save_search_space(space_path, dest, chosen, cfg)
    space = load_space(space_path)
    rows = log_choices(space, chosen, lut(cfg, out, space, chosen.resolution))
    write_json_atomic(step_dir / "choices.json", rows)
    return chosen


def choices_table(body: LatencySupernet, arch: LatencyArch, table: LatencyTable) -> list[dict]:
    """One row per searchable block: its name, the chosen variant, its width multiplier (0:
    skipped) and its LUT cost against the baseline block's."""
    return [
        {"block": name, "variant": c, "width": block.multipliers[c],
         "cost": table.table[b][c], "baseline_cost": table.table[b][0]}
        for b, (name, block, c) in enumerate(zip(body.block_names, body.blocks(), arch.choices,
                                                 strict=True))
    ]  # fmt: skip


def log_choices(model: nn.Module, outcome: SearchOutcome, table: LatencyTable) -> list[dict]:
    """Log the per-block choices of the searched architecture; returns them."""
    rows = choices_table(space_body(model), outcome.arch, table)
    log.info("per-block choices of %s at %d px (%s):", outcome.arch.to_list(),
             outcome.resolution, table.unit)  # fmt: skip
    for r in rows:
        log.info("  block %-3s variant %d  width %.2f  %.4f (baseline %.4f)", r["block"],
                 r["variant"], r["width"], r["cost"], r["baseline_cost"])  # fmt: skip
    return rows
