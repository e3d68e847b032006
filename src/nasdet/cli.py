"""The ``nasdet`` command line.

A user's mistake ends with one line ``nasdet: error: ...`` naming the file / key / record and what
to do (exit status 2), never a traceback. Only this module prints; the library logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasdet.errors import NasdetError

log = logging.getLogger("nasdet")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except NasdetError as e:
        print(f"nasdet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "nasdet: interrupted — rerun the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasdet", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train and evaluate the detector a config describes")
    t.add_argument("config", type=Path)
    t.add_argument("--out", type=Path, help="output directory (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run a search pipeline (SP-NAS or DetNAS) from a config")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    r.add_argument(
        "--steps",
        help="comma-separated steps to run (default: the config's pipeline), e.g. supernet_train",
    )
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="COCO metrics of a results file, or of a model file")
    e.add_argument("--gt", type=Path, required=True, help="COCO instances JSON (ground truth)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--dt", type=Path, help="COCO results JSON (detections)")
    src.add_argument("--model", type=Path, help="a nasdet model file to run on --images")
    e.add_argument("--images", type=Path, help="image folder (with --model)")
    e.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("cost", help="parameters, FLOPs/MACs and latency of a model")
    c.add_argument("config", nargs="?", type=Path, help="a nasdet config (its detector)")
    c.add_argument("--model", help="torchvision:NAME or a nasdet model file")
    c.add_argument("--input", help="input size CxHxW (default: 3x224x224, or the config's size)")
    c.add_argument("--latency", action="store_true", help="measure CPU latency (torch.benchmark)")
    c.add_argument("--onnx", action="store_true", help="also time backbone+neck in onnxruntime")
    c.add_argument("--threads", type=int, help="threads for latency (default: torch's)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_cost)

    v = sub.add_parser("convert", help="convert a checkpoint into a nasdet model file")
    v.add_argument(
        "kind",
        choices=["torchvision-fasterrcnn"],
        help="torchvision-fasterrcnn: a fasterrcnn_resnet50_fpn state dict",
    )
    v.add_argument("checkpoint", type=Path)
    v.add_argument("--out", type=Path, required=True, help="nasdet model file to write")
    v.add_argument("--min-size", type=int, default=800)
    v.add_argument("--max-size", type=int, default=1333)
    v.set_defaults(func=cmd_convert)

    x = sub.add_parser("export", help="a standalone subnet of a DetNAS supernet model file")
    x.add_argument("supernet", type=Path, help="supernet model file (output/supernet_train/)")
    x.add_argument(
        "--genotype",
        required=True,
        help="a code (e.g. 3573-5x77-33x3x357-7x33) or a subnet YAML file the search wrote",
    )
    x.add_argument("--out", type=Path, required=True, help="nasdet model file to write")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="make or check datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    g = dsub.add_parser("digits", help="write the bundled digits detection set (COCO format)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--train", type=int, default=3000)
    g.add_argument("--val", type=int, default=500)
    g.add_argument("--size", type=int, default=128)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_data_digits)
    gc = dsub.add_parser("digits-cls", help="write the digits classification set (ImageFolder)")
    gc.add_argument("--out", type=Path, required=True)
    gc.add_argument("--per-class-train", type=int, default=200)
    gc.add_argument("--per-class-val", type=int, default=50)
    gc.add_argument("--size", type=int, default=32)
    gc.add_argument("--seed", type=int, default=0)
    gc.set_defaults(func=cmd_data_digits_cls)
    k = dsub.add_parser("check", help="validate a dataset; one line per problem")
    kk = k.add_mutually_exclusive_group(required=True)
    kk.add_argument("--coco", type=Path, metavar="ANN.json")
    kk.add_argument("--voc", type=Path, metavar="ROOT")
    k.add_argument("--images", type=Path, help="image folder (with --coco)")
    k.add_argument(
        "--image-set",
        nargs="+",
        dest="image_sets",
        metavar="SET",
        help="VOC ImageSets/Main names (default: all)",
    )
    k.set_defaults(func=cmd_data_check)
    return p


# ----------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from nasdet.config import load_config
    from nasdet.engine.distributed import init_distributed
    from nasdet.pipeline import train_step

    cfg = load_config(args.config)
    out = args.out or Path("runs") / args.config.stem
    dist = init_distributed()  # under torchrun: DDP, one process per device
    result = train_step(cfg, out, resume=args.resume)
    if not dist.is_main:
        return 0
    _print_metrics(f"validation metrics ({result.params:,} parameters)", result.metrics)
    print(f"model:   {result.model_path}")
    print(f"metrics: {out / 'metrics.json'}")
    print(f"logs:    {out / 'tensorboard'}  (tensorboard --logdir {out / 'tensorboard'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nasdet.pipeline import run_pipeline
    from nasdet.runconfig import load_run_config

    cfg = load_run_config(args.config)
    if args.steps:
        from nasdet.config import parse_config

        raw = {**cfg.model_dump(mode="json"), "pipeline": args.steps.split(",")}
        cfg = parse_config(raw, source=f"{args.config} (--steps)", schema=type(cfg))
    out = args.out or Path("runs") / args.config.stem
    result = run_pipeline(cfg, out)
    rec = result.final
    if rec is None:  # a step that produces no model (e.g. supernet_train alone)
        print(f"steps done: {', '.join(cfg.steps)}   (records: {out / 'records.sqlite'})")
        return 0
    _print_metrics(
        f"winner {rec.genotype} ({rec.cost.get('params', 0):,.0f} parameters)",
        {k: v for k, v in rec.metrics.items() if k in ("mAP", "AP50", "AP75", "AR100")},
    )
    print(f"model:   {rec.weights_path}")
    print(f"report:  {result.report}")
    print(f"records: {out / 'records.sqlite'}   (rerun the same command to resume)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nasdet.engine.coco_eval import evaluate_coco

    if args.model is not None:
        stats = _evaluate_model_file(args)
    else:
        stats = evaluate_coco(args.gt, args.dt, backend=args.backend)
    if args.json:
        print(json.dumps(stats))
    else:
        _print_metrics(f"COCO bbox ({args.backend})", stats)
    return 0


def _evaluate_model_file(args: argparse.Namespace) -> dict[str, float]:
    import nasdet
    from nasdet.data import CocoDetectionDataset, eval_transforms
    from nasdet.engine.evaluate import evaluate
    from nasdet.errors import ConfigError

    if args.images is None:
        raise ConfigError("--model needs --images (the folder the --gt images are in)")
    model = nasdet.load_model(args.model)
    data = CocoDetectionDataset(args.images, args.gt, train=False, transforms=eval_transforms())
    if list(data.cat_ids) != list(model.cat_ids):
        raise ConfigError(f"{args.gt}: its categories are not the ones {args.model} was trained on")
    return evaluate(model, data, backend=args.backend)


def cmd_cost(args: argparse.Namespace) -> int:
    from nasdet.cost import cost_report, parse_input_size, torchvision_model
    from nasdet.errors import ConfigError

    if (args.config is None) == (args.model is None):
        raise ConfigError("nasdet cost takes either a CONFIG or --model torchvision:NAME/FILE")
    if args.config is not None:
        from nasdet.build import build_detector, num_classes
        from nasdet.config import load_config

        cfg = load_config(args.config)
        model = build_detector(cfg.model, num_classes(cfg.data), load_weights=False)
        default = f"3x{cfg.model.min_size}x{cfg.model.min_size}"
    elif args.model.startswith("torchvision:"):
        model, default = torchvision_model(args.model.split(":", 1)[1]), "3x224x224"
    else:
        import nasdet

        model = nasdet.load_model(args.model)
        default = "3x{0}x{0}".format(model.transform.min_size[0])
    chw = parse_input_size(args.input or default)
    report = cost_report(model, chw, latency=args.latency, onnx=args.onnx, threads=args.threads)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table("cost", report)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from nasdet.cost import count_params
    from nasdet.models.convert import coco_categories, convert_torchvision_fasterrcnn
    from nasdet.models.io import save_model

    model, arch = convert_torchvision_fasterrcnn(
        args.checkpoint, min_size=args.min_size, max_size=args.max_size
    )
    categories, cat_ids = coco_categories(model.roi_heads.box_predictor.cls_score.out_features)
    path = save_model(
        args.out,
        model,
        architecture=arch,
        categories=categories,
        cat_ids=cat_ids,
        meta={"converted_from": str(args.checkpoint)},
    )
    print(
        f"wrote {path}: Faster R-CNN on SerialBackbone('{arch['backbone']['code']}'), "
        f"{count_params(model):,} parameters, {len(categories)} classes"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import nasdet
    from nasdet.config import ModelConfig
    from nasdet.cost import count_params
    from nasdet.errors import ConfigError
    from nasdet.models.export import export_subnet
    from nasdet.models.io import read_model_file, save_model
    from nasdet.spaces.shufflenet import ShuffleNetCode

    arch = ModelConfig.model_validate(read_model_file(args.supernet)["architecture"])
    if arch.backbone.name != "shufflenet_supernet":
        raise ConfigError(f"{args.supernet}: not a supernet model file ({arch.backbone.name})")
    try:
        text = Path(args.genotype)
        if text.suffix in (".yaml", ".yml") and text.is_file():
            code = ShuffleNetCode.from_yaml(text.read_text())
        else:
            code = ShuffleNetCode.parse(args.genotype)
    except ValueError as e:
        raise ConfigError(f"--genotype: {e}") from None
    supernet = nasdet.load_model(args.supernet)
    model, sub = export_subnet(supernet, arch, code, len(supernet.categories) + 1)
    path = save_model(
        args.out,
        model,
        architecture=sub.model_dump(mode="json"),
        categories=supernet.categories,
        cat_ids=supernet.cat_ids,
        meta={"from_supernet": str(args.supernet), "genotype": str(code)},
    )
    print(f"wrote {path}: subnet {code}, {count_params(model):,} parameters")
    print("(BN statistics are the supernet's; the search's own exports are recalibrated)")
    return 0


def cmd_data_digits(args: argparse.Namespace) -> int:
    from nasdet.data import make_digits

    out = make_digits(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(f"wrote {args.train} train and {args.val} val images to {out}")
    print(f"  {out / 'annotations' / 'instances_train.json'}")
    print(f"  {out / 'annotations' / 'instances_val.json'}")
    return 0


def cmd_data_digits_cls(args: argparse.Namespace) -> int:
    from nasdet.data import make_digits_classification

    out = make_digits_classification(
        args.out,
        per_class_train=args.per_class_train,
        per_class_val=args.per_class_val,
        size=args.size,
        seed=args.seed,
    )
    print(f"wrote the digits classification set to {out} (ImageFolder: train/, val/)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from nasdet.data import check_coco, check_voc
    from nasdet.errors import ConfigError

    if args.coco is not None:
        if args.images is None:
            raise ConfigError("data check --coco needs --images DIR (the image folder)")
        problems = check_coco(args.coco, args.images)
    else:
        problems = check_voc(args.voc, args.image_sets)
    for problem in problems:
        print(problem)
    fatal = sum(p.fatal for p in problems)
    print(
        f"{len(problems)} problem(s), {fatal} fatal" if problems else "no problems found",
        file=sys.stderr,
    )
    return 1 if problems else 0


# ----------------------------------------------------------------------------- output
def _print_metrics(title: str, stats: dict[str, float]) -> None:
    _print_table(title, {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in stats.items()})


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(str(k), f"{v:,}" if isinstance(v, int) else str(v))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
