"""CachedSubset: items kept in memory within a byte budget, the base dataset still visible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_evaluate import Oracle, _val
from torch.utils.data import DataLoader, Subset

from nasdet.data import CachedSubset, collate
from nasdet.data.cache import item_nbytes
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.engine.evaluate import base_dataset, evaluate, subset_indices


class Counting(torch.utils.data.Dataset):
    """Items of 100 float32 values (400 bytes) plus a 1-value int64 label (8 bytes)."""

    def __init__(self, n: int) -> None:
        self.n, self.loads = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.loads.append(i)
        return torch.full((100,), float(i)), {"labels": torch.tensor([i])}


def test_item_nbytes_counts_nested_tensors() -> None:
    assert item_nbytes(Counting(1)[0]) == 408
    assert item_nbytes((torch.zeros(3, dtype=torch.uint8), [torch.zeros(2)], "x", 3)) == 11


def test_items_are_loaded_once_and_returned_as_kept() -> None:
    base = Counting(5)
    cached = CachedSubset(base, [4, 0, 2], max_bytes=10_000)
    first = [cached[i] for i in range(3)]
    again = [cached[i] for i in range(3)]
    assert base.loads == [4, 0, 2]
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert [int(x[0][0]) for x in again] == [4, 0, 2]
    assert cached[-1] is first[2]
    assert (cached.cached, cached.nbytes) == (3, 3 * 408)


def test_items_beyond_the_budget_are_loaded_every_time() -> None:
    base = Counting(4)
    cached = CachedSubset(base, max_bytes=2 * 408 + 407)  # room for two items, not three
    for _ in range(2):
        assert [int(cached[i][0][0]) for i in range(4)] == [0, 1, 2, 3]
    assert base.loads == [0, 1, 2, 3, 2, 3]
    assert cached.cached == 2
    exact = CachedSubset(Counting(3), max_bytes=2 * 408)  # a budget met exactly still keeps
    [exact[i] for i in range(3)]
    assert exact.cached == 2 and exact.nbytes == 2 * 408
    nothing = CachedSubset(Counting(2), max_bytes=0)
    nothing[0], nothing[0]
    assert nothing.dataset.loads == [0, 0] and nothing.cached == 0


def test_a_dataloader_and_an_outer_subset_go_through_the_cache() -> None:
    base = Counting(6)
    cached = CachedSubset(base, max_bytes=10_000)
    for _ in range(2):
        loader = DataLoader(Subset(cached, [5, 3, 1]), batch_size=2, collate_fn=collate)
        assert [int(x[0]) for xs, _ in loader for x in xs] == [5, 3, 1]
    assert base.loads == [5, 3, 1]


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        CachedSubset(Counting(1), max_bytes=-1)


def test_evaluate_sees_the_base_dataset_through_the_cache(digits_root: Path) -> None:
    val = _val(digits_root)
    indices = [9, 2, 4, 0]
    part = Subset(val, indices)
    cached = CachedSubset(part, max_bytes=1 << 30)
    assert base_dataset(cached) is val and subset_indices(cached) == indices
    plain = evaluate(Oracle(val, indices, shift=0.1), part)
    assert 0.0 < plain["mAP"] < 1.0
    for _ in range(2):  # the second pass is served from memory
        assert evaluate(Oracle(val, indices, shift=0.1), cached) == plain
    assert cached.cached == len(indices)


def test_bn_recalibration_on_the_cache_equals_the_plain_dataset(digits_root: Path) -> None:
    """recalibrate_detector_bn draws its seeded subset by index: the cache serves the same
    images, so the statistics are identical."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    val = _val(digits_root)
    cached = CachedSubset(val, max_bytes=1 << 30)
    stats = []
    for dataset in (val, cached, cached):
        torch.manual_seed(0)
        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11)
        recalibrate_detector_bn(model, dataset, num_samples=6, batch_size=3, seed=1)
        stats.append(torch.cat([b for k, b in model.state_dict().items() if "running_" in k]))
    assert cached.cached == 6
    assert torch.equal(stats[0], stats[1]) and torch.equal(stats[0], stats[2])


def _config(digits_root: Path, **data: object):
    from conftest import tiny_config

    from nasdet.methods import TrainConfig

    raw = tiny_config(digits_root)
    raw["data"].update(search_fraction=0.25, **data)
    return TrainConfig.model_validate(raw)


def test_scoring_keeps_search_val_and_deterministic_calibration_images(digits_root: Path) -> None:
    from nasdet.build import build_datasets, cached_for_scoring

    cfg = _config(digits_root)
    data = build_datasets(cfg.data, seed=cfg.seed)
    kept = cached_for_scoring(data, cfg)
    for name in ("train", "val", "search"):
        split = getattr(kept, name)
        assert isinstance(split, CachedSubset) and split.dataset is getattr(data, name)
        assert split.max_bytes == 512 * 2**20
    assert (kept.categories, kept.cat_ids) == (data.categories, data.cat_ids)
    assert not isinstance(cached_for_scoring(data, cfg, calibration=False).train, CachedSubset)
    flips = _config(digits_root, hflip=0.5)  # a kept image would freeze one random flip
    assert not isinstance(cached_for_scoring(data, flips).train, CachedSubset)
    assert isinstance(cached_for_scoring(data, flips).search, CachedSubset)
    off = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"cache_mib": 0})})
    assert cached_for_scoring(data, off) is data
