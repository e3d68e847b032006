"""DetNAS supernet sampling (``supernet_train.sampling``): strict-fair (FairNAS) and the sandwich
rule with in-place distillation, on the tiny supernet detector; config errors; a tiny
``nasdet run`` of supernet_train with strict-fair sampling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from test_detnas_pipeline import _write, detnas_config

from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.cli import main
from nasdet.cost import count_flops
from nasdet.data import collate
from nasdet.errors import ConfigError
from nasdet.methods import load_run_config
from nasdet.methods.detnas.sampling import block_flops, flops_extremes, sampling_hook
from nasdet.methods.detnas.space import ShuffleNetCode
from nasdet.search.records import RecordStore
from nasdet.search.step_hooks import fair_permutations
from nasdet.training import config_fingerprint


def sampling_config(digits_root: Path, **supernet_train: object) -> dict:
    """The pipeline tests' tiny DetNAS run (RetinaNet, ShuffleNetV2 1-2-2-1, 96 px), its
    supernet_train step only."""
    cfg = detnas_config(digits_root, Path("unused"))
    del cfg["supernet_pretrain"]
    cfg["supernet_train"] = {"epochs": 1, **supernet_train}
    cfg["pipeline"] = ["supernet_train"]
    return cfg


@pytest.fixture(scope="module")
def setting(digits_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny config, its datasets and one training batch of 4 images."""
    cfg = load_run_config(_write(tmp_path_factory.mktemp("cfg"), sampling_config(digits_root)))
    data = build_datasets(cfg.data, seed=0)
    images, targets = collate([data.train[i] for i in range(4)])
    return cfg, data, list(images), list(targets)


def _detector(cfg, data):
    torch.manual_seed(0)
    model = build_detector(cfg.model, len(data.categories) + 1)
    return model.train()


def _record_paths(body) -> list[ShuffleNetCode]:
    seen: list[ShuffleNetCode] = []
    body.register_forward_pre_hook(lambda module, args: seen.append(module.active_subnet))
    return seen


def test_strict_fair_activates_every_choice_of_every_block_once(setting) -> None:
    cfg, data, images, targets = setting
    model = _detector(cfg, data)
    body = model.backbone.body
    hook = sampling_hook(body, "strict_fair", image_size=96, seed=3)
    seen = _record_paths(body)  # after the hook's FLOPs measurement
    assert hook.forwards_per_step == 4
    losses = list(hook(model, images, targets, 7))
    assert len(losses) == 4 and all(torch.isfinite(sum(x.values())) for x in losses)
    assert len(seen) == 4
    for b in range(body.space.num_blocks):
        assert sorted(code.choices[b] for code in seen) == [0, 1, 2, 3]
    perms = fair_permutations(3, 7, body.space.num_blocks, 4)
    assert [code.choices for code in seen] == [tuple(p[i] for p in perms) for i in range(4)]


def test_fair_permutations_depend_on_seed_and_step_only() -> None:
    random.seed(1)
    a = fair_permutations(0, 5, 10, 4)
    random.seed(2)  # the global RNG plays no part
    assert fair_permutations(0, 5, 10, 4) == a
    assert fair_permutations(0, 6, 10, 4) != a and fair_permutations(1, 5, 10, 4) != a
    assert all(sorted(p) == [0, 1, 2, 3] for p in a)
    assert len({tuple(p) for p in a}) > 1  # the blocks' permutations are drawn apart


def test_one_strict_fair_step_reaches_every_choice(setting, tmp_path: Path) -> None:
    """One optimizer step (4 images, batch 4) of 4 forwards accumulates gradients into the
    weights of every choice of every block before the one update."""
    cfg, data, *_ = setting
    model = _detector(cfg, data)
    body = model.backbone.body
    hook = sampling_hook(body, "strict_fair", image_size=96, seed=0)
    one_batch = torch.utils.data.Subset(data.train, range(4))
    trainer = make_trainer(
        model,
        one_batch,
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 4})}),
        tmp_path,
        epochs=1,
        step_hook=hook,
        forwards_per_step=hook.forwards_per_step,
        tensorboard=False,
    )
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    trainer.fit()
    assert trainer.iters_per_epoch == 1
    missing = [n for n, p in body.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    unchanged = [n for n, p in body.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_sandwich_trains_the_flops_extremes_first_and_distills(setting) -> None:
    cfg, data, images, targets = setting
    model = _detector(cfg, data)
    body = model.backbone.body
    largest, smallest = flops_extremes(body, 96)
    table = block_flops(body, 96)
    assert largest.choices == tuple(row.index(max(row)) for row in table)
    x = torch.zeros(1, 3, 96, 96)
    flops = {}
    for code in (largest, smallest, *(ShuffleNetCode((c,) * 6, (1, 2, 2, 1)) for c in range(4))):
        body.set_active_subnet(code)
        flops[code] = count_flops(body, x).flops
    assert flops[largest] == max(flops.values()) and flops[smallest] == min(flops.values())
    assert flops[largest] > flops[smallest]

    hook = sampling_hook(
        body, "sandwich", image_size=96, seed=0, num_random=1, distill=True, kd_ratio=0.5
    )
    seen = _record_paths(body)
    assert hook.forwards_per_step == 3
    losses = list(hook(model, images, targets, 0))
    assert seen[:2] == [largest, smallest] and len(seen) == 3
    assert "loss_kd" not in losses[0]
    # RetinaNet's head starts almost constant (std 0.01): its KD is ~1e-8 here, not below 0
    assert all("loss_kd" in x and x["loss_kd"].requires_grad for x in losses[1:])
    assert all(float(x["loss_kd"].detach()) > -1e-6 for x in losses[1:])
    assert set(losses[1]) == set(losses[0]) | {"loss_kd"}
    plain = sampling_hook(body, "sandwich", image_size=96, seed=0, num_random=0)
    assert all("loss_kd" not in x for x in plain(model, images, targets, 0))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sampling": "uniform", "num_random": 3}, "num_random applies to sampling: sandwich"),
        ({"sampling": "strict_fair", "distill": True}, "distill applies to sampling: sandwich"),
        ({"sampling": "sandwich", "kd_ratio": 2.0}, "kd_ratio applies with distill: true"),
        ({"sampling": "fair"}, "supernet_train.sampling: Input should be 'uniform'"),
        ({"sampling": "sandwich", "num_random": -1}, "supernet_train.num_random"),
    ],
)
def test_sampling_config_errors(
    digits_root: Path, tmp_path: Path, section: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(_write(tmp_path, sampling_config(digits_root, **section)))


def test_distill_refused_for_fasterrcnn(digits_root: Path, tmp_path: Path) -> None:
    cfg = sampling_config(digits_root, sampling="sandwich", distill=True)
    cfg["model"].update(detector="fasterrcnn")
    cfg["model"].pop("anchor_base")
    with pytest.raises(ConfigError, match="supernet_train.distill: .* set distill: false"):
        load_run_config(_write(tmp_path, cfg))


def test_strict_fair_supernet_train_runs_and_refuses_another_sampling(
    digits_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = sampling_config(digits_root, sampling="strict_fair")
    path, out = _write(tmp_path, cfg), tmp_path / "run"
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    (rec,) = store.records("supernet_train")
    assert rec.status == "done" and rec.metrics["train_loss"] > 0
    checkpoint = torch.load(out / "output" / "supernet_train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3  # 24 training images, batches of 8: 3 steps of 4 forwards
    fair = load_run_config(path)
    uniform = load_run_config(_write(tmp_path, sampling_config(digits_root)))
    assert config_fingerprint(fair) != config_fingerprint(uniform)
    capsys.readouterr()
    assert main(["-q", "run", str(tmp_path / "detnas.yaml"), "--out", str(out)]) == 2
    assert "supernet_train.sampling changed" in capsys.readouterr().err


def test_a_dumped_sampling_config_reads_back(digits_root: Path, tmp_path: Path) -> None:
    for section in ({}, {"sampling": "strict_fair"}, {"sampling": "sandwich", "distill": True}):
        cfg = load_run_config(_write(tmp_path, sampling_config(digits_root, **section)))
        again = load_run_config(_write(tmp_path, cfg.model_dump(mode="json")))
        assert again == cfg
