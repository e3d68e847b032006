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
