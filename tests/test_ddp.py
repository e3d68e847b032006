"""Trainer under torchrun: 2 CPU processes on gloo (see tests/ddp_worker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _torchrun import run_torchrun

from nasdet.engine.distributed import DistInfo, barrier, current, init_distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
N = 32  # the worker's dataset size
EPOCHS = 2


def test_single_process_is_not_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert init_distributed() == DistInfo(0, 1, 0)
    assert current() == DistInfo(0, 1, 0) and current().is_main
    assert not dist.is_initialized()
    barrier()  # a no-op


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_two_processes_train_the_same_model(tmp_path: Path) -> None:
    proc = run_torchrun([str(WORKER), str(tmp_path)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.report()  # every rank's own output in full
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    # the path sampled from the step index: the same on both ranks, both branches used
    assert r0["branches"] == r1["branches"]
    assert len(r0["branches"]) == 2 * N // (2 * 4) and set(r0["branches"]) == {0, 1}
    # each rank saw its own half of the data, in a new order each epoch
    for epoch in range(2):
        a, b = r0["seen"][epoch], r1["seen"][epoch]
        assert len(a) == len(b) == N // 2
        assert sorted(a + b) == list(range(N))
    assert r0["seen"][0] != r0["seen"][1]
    # ranks started from different weights; DDP kept one model, which trained
    assert r0["init"] != r1["init"]
    assert r0["final"] == r1["final"]
    assert r0["final"] != r0["init"]
    assert r0["loss"] == r1["loss"]  # the loss is averaged over ranks
    # rank 0 alone wrote the checkpoint, once per epoch, with the plain module's keys
    assert len(r0["writes"]) == 2 and r1["writes"] == []
    ck = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])
    flat = torch.cat([ck["model"][k].flatten() for k in ck["model"]]).tolist()
    assert flat == r0["final"]
    assert len(ck["rng_per_rank"]) == 2
    # stopped after epoch 1 and resumed on both ranks: the same weights as straight through
    assert r0["resumed_final"] == r1["resumed_final"] == r0["final"]

    # a step hook of two forwards (branch 0, then 1): the first under no_sync, the second
    # all-reduces the accumulated gradients of both branches; ranks end with the same weights
    h0, h1 = r0["hooked"], r1["hooked"]
    steps = EPOCHS * N // (2 * 4)
    assert h0["syncs"] == h1["syncs"] == [False, True] * steps
    assert h0["final"] == h1["final"]
    init = r0["init"]  # rank 0's: DDP broadcast it
    branch0, branch1 = slice(40, 49), slice(49, 58)
    assert h0["final"][branch0] != init[branch0] and h0["final"][branch1] != init[branch1]
    assert h0["loss"] == h1["loss"]
    # without forwards_per_step every backward all-reduces: the same training
    e0 = r0["hooked_sync_each"]
    assert e0["syncs"] == [True] * 2 * steps and e0["final"] == r1["hooked_sync_each"]["final"]
    assert e0["final"] == pytest.approx(h0["final"], rel=1e-5, abs=1e-6)
