"""The ``nasdet`` command line.

Exit status: 0 done; 2 a usage or config mistake (one line ``nasdet: error: ...`` naming the file,
key or record and what to do); 1 a failure at run time (work that failed, or an unexpected error:
one line, the full traceback in the run's log file ``<out>/nasdet.log``, and on the terminal
with ``-v``); 130 interrupted. Only this module prints; the library logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasdet import __version__
from nasdet.errors import NasdetError, TrainingDiverged, WorkFailed
from nasdet.logfile import LOG_FORMAT, file_formatter
from nasdet.progress import MODE_ENV as PROGRESS_ENV

log = logging.getLogger("nasdet")
LOG_FILENAME = "nasdet.log"
QUIET_LIBRARIES = ("PIL", "matplotlib", "urllib3", "filelock", "fsspec")
SEARCHED_ARCH = "--searched-arch"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # a usage mistake exits 2 here
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    root_level = logging.getLogger().level
    handler = _log_to_file(args)
    progress_env = os.environ.get(PROGRESS_ENV)
    if args.progress:  # in the environment, so that worker processes (Ray) see it too
        os.environ[PROGRESS_ENV] = args.progress
    try:
        return _run_command(args, handler.baseFilename if handler else None)
    finally:
        if progress_env is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = progress_env
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(root_level)
            handler.close()


def _run_command(args: argparse.Namespace, log_file: str | None) -> int:
    """Run the command; turn what it raises into one line and an exit status."""
    where = f" (traceback in {log_file})" if log_file else ""
    try:
        return int(args.func(args) or 0)
    except (WorkFailed, TrainingDiverged) as e:
        print(f"nasdet: error: {e}", file=sys.stderr)
        return 1
    except NasdetError as e:
        print(f"nasdet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = {
            "run": "rerun the same command to resume",
            "train": "rerun the same command with --resume to continue",
        }.get(args.command, "rerun the command")
        print(f"nasdet: interrupted — {again}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: one line, traceback logged
        log.debug("unexpected error", exc_info=True)
        hint = "" if args.verbose else f" — rerun with -v to see the traceback{where}"
        print(f"nasdet: error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1


def _out_dir(args: argparse.Namespace) -> Path | None:
    """The output directory of ``train`` and ``run`` (``--out``, default ``runs/<config
    name>``) and of ``compare`` (its ``--out``)."""
    if args.command == "compare":
        return args.out
    if args.command not in ("train", "run"):
        return None
    return args.out or Path("runs") / args.config.stem


class _LazyFileHandler(logging.FileHandler):
    """A file handler that makes its folder when the first line comes: a command refused before
    it logs anything (a wrong flag) leaves no output directory behind."""

    def _open(self):  # noqa: ANN202 - logging's signature
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _log_to_file(args: argparse.Namespace) -> logging.FileHandler | None:
    """Log everything (DEBUG, tracebacks included) to ``<out>/nasdet.log`` (per rank under
    torchrun: ``nasdet.rank<N>.log`` for ranks other than 0), from its first line on."""
    out = _out_dir(args)
    if out is None:
        return None
    args.out = out
    rank = int(os.environ.get("RANK", "0"))
    path = out / (LOG_FILENAME if rank == 0 else f"nasdet.rank{rank}.log")
    handler = _LazyFileHandler(path, delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(file_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for chatty in QUIET_LIBRARIES:  # their DEBUG lines (one per PNG chunk read...) drown ours
        logging.getLogger(chatty).setLevel(logging.INFO)
    for h in root.handlers:  # the terminal keeps the level -v / -q asked for
        if h is not handler and isinstance(h, logging.StreamHandler):
            h.setLevel(
                logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
            )
    return handler


def _parser() -> argparse.ArgumentParser:
    from nasdet.methods import METHODS

    p = argparse.ArgumentParser(prog="nasdet", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"nasdet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument(
        "--progress",
        choices=["rich", "plain", "off"],
        help="progress display: a live view, sparse log lines, or none (default: the live view "
        "on a terminal, lines elsewhere; sets NASDET_PROGRESS)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train and evaluate the detector a config describes")
    t.add_argument("config", type=Path)
    t.add_argument("--out", type=Path, help="output directory (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.set_defaults(func=cmd_train)

    names = ", ".join(METHODS)
    r = sub.add_parser("run", help=f"run a search from a config (method: {names})")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    r.add_argument(
        "--steps",
        help="comma-separated steps to run (default: the config's pipeline), e.g. supernet_train",
    )
    r.add_argument(
        "--restart-from",
        metavar="STEP",
        help="the config changed: redo STEP and the steps after it with the new config",
    )
    r.add_argument(
        SEARCHED_ARCH,
        metavar="ARCH",
        help="method: latency: the architecture tune trains, as search logs it, e.g. "
        '"[0, 3, 6, ...]" (sets tune.searched_arch; part of the run\'s config)',
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
    c.add_argument(
        "--model",
        help="torchvision:NAME, nasdet:NAME (a reference detector: yolov3_darknet53, "
        "yolov3_mobilenetv2, ssd_mobilenetv2, retinanet_resnet50_fpn) or a nasdet model file",
    )
    c.add_argument(
        "--num-classes",
        type=int,
        help="classes of a torchvision:/nasdet: model, background included for detectors "
        "(default: the builder's; COCO's 80 classes: 81 for nasdet:, torchvision's 91)",
    )
    c.add_argument("--input", help="input size CxHxW (default: 3x224x224, or the config's size)")
    c.add_argument("--latency", action="store_true", help="measure CPU latency (torch.benchmark)")
    c.add_argument("--onnx", action="store_true", help="also time backbone+neck in onnxruntime")
    c.add_argument("--threads", type=int, help="threads for latency (default: torch's)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_cost)

    v = sub.add_parser("convert", help="convert a checkpoint into a nasdet model file")
    converters = {k: c for m in METHODS.values() for k, c in m.converters.items()}
    v.add_argument(
        "kind",
        choices=sorted(converters),
        help="; ".join(f"{k}: {c.help}" for k, c in sorted(converters.items())),
    )
    v.add_argument("checkpoint", type=Path)
    v.add_argument("--out", type=Path, required=True, help="nasdet model file to write")
    v.add_argument("--min-size", type=int, help="input size (default: the converter's)")
    v.add_argument("--max-size", type=int)
    v.add_argument("--num-classes", type=int, help="classes with background (ofa-mbv3: 21)")
    v.set_defaults(func=cmd_convert)

    x = sub.add_parser("export", help="a standalone subnet of a supernet model file")
    x.add_argument("supernet", type=Path, help="supernet model file (output/supernet_train/)")
    x.add_argument(
        "--genotype",
        required=True,
        help="the subnet, as the supernet's method writes it (DetNAS: a code such as "
        "3573-5x77-33x3x357-7x33, or a subnet YAML file the search wrote)",
    )
    x.add_argument("--out", type=Path, required=True, help="nasdet model file to write")
    x.set_defaults(func=cmd_export)

    st = sub.add_parser(
        "status", help="where a run stands (safe while it runs: reads its records read-only)"
    )
    st.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out of `nasdet run`")
    st.add_argument("--json", action="store_true", help="print one JSON object (docs/usage.md)")
    st.set_defaults(func=cmd_status)

    rp = sub.add_parser("report", help="write RUN_DIR/report.html again (mid-run too)")
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out of `nasdet run`")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser(
        "compare",
        help="train architectures with one budget and K seeds; mean ± std, cost, paired t-tests",
    )
    cp.add_argument(
        "archs",
        nargs="+",
        metavar="[LABEL=]PATH",
        help="a train config (YAML) or a model file (model.pt: its architecture, trained from "
        "scratch); LABEL names it (default: the config's name, the model file's folder)",
    )
    cp.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    cp.add_argument(
        "--budget",
        type=Path,
        metavar="CONFIG",
        help="train every architecture with this config's data/train/eval and input size, "
        "replacing what the configs give (listed); default: the first config's, and a config "
        "that differs is refused",
    )
    seeds = cp.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: 0,1,2)")
    seeds.add_argument("--num-seeds", type=int, metavar="K", help="seeds 0..K-1")
    cp.add_argument("--latency", action="store_true", help="also measure CPU latency (ms)")
    cp.add_argument("--threads", type=int, help="threads for --latency (default: torch's)")
    cp.add_argument(
        "--executor",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="inprocess: one training after another here (default); ray: on Ray workers",
    )
    cp.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="trainings at once with --executor ray (default: Ray's CPUs, or GPUs with "
        "--gpus-per-worker)",
    )
    cp.add_argument("--address", help="Ray cluster address (default: a local instance)")
    cp.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker reserves"
    )
    cp.set_defaults(func=cmd_compare)

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
    from nasdet.methods import TrainConfig
    from nasdet.training import train_step

    cfg = load_config(args.config, TrainConfig)
    out = args.out
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
    from nasdet.engine.distributed import current, init_distributed
    from nasdet.methods import load_run_config
    from nasdet.pipeline import run_pipeline

    steps = args.steps.split(",") if args.steps else None
    overrides = {}
    if args.searched_arch is not None:
        overrides["tune.searched_arch"] = _searched_arch(args.config, args.searched_arch)
    cfg = load_run_config(args.config, pipeline=steps, overrides=overrides, option=SEARCHED_ARCH)
    if args.searched_arch is not None:
        _check_searched_arch(cfg)
    out = args.out
    init_distributed()  # under torchrun: the steps that allow it run with DDP
    result = run_pipeline(cfg, out, restart_from=args.restart_from)
    rec = result.final
    if not current().is_main:
        return 0
    if rec is None:  # a step that produces no model (e.g. supernet_train alone)
        print(f"steps done: {', '.join(cfg.steps)}   (records: {out / 'records.sqlite'})")
        return 0
    shown = ("mAP", "AP50", "AP75", "AR100", *rec.metrics)
    _print_metrics(
        f"winner {rec.genotype} ({rec.cost.get('params', 0):,.0f} parameters)",
        {k: rec.metrics[k] for k in dict.fromkeys(shown) if k in rec.metrics},
    )
    base = result.baseline
    if base is not None and base.id != rec.id:
        from nasdet.report.verdict import verdict

        _print_metrics(
            f"baseline {base.genotype} ({base.cost.get('params', 0):,.0f} parameters)",
            {k: base.metrics[k] for k in dict.fromkeys(shown) if k in base.metrics},
        )
        if result.baseline_note:
            print(f"baseline: {result.baseline_note}")
        key = result.primary_metric
        print("verdict: " + verdict(rec.metrics, rec.cost, base.metrics, base.cost, key))
    print(f"model:   {result.model}")
    print(f"report:  {result.report}")
    print(f"records: {out / 'records.sqlite'}   (rerun the same command to resume)")
    return 0


def _searched_arch(config: Path, text: str) -> list[int]:
    """``--searched-arch``'s list of ints, for a ``method: latency`` config only."""
    from nasdet.config import read_yaml
    from nasdet.errors import ConfigError
    from nasdet.methods import DEFAULT_METHOD
    from nasdet.methods.latency.space import LatencyArch

    method = read_yaml(config).get("method", DEFAULT_METHOD)
    if method != "latency":
        raise ConfigError(
            f"{SEARCHED_ARCH} is for method: latency runs; {config} is method: {method}"
        )
    try:
        return LatencyArch.parse(text).to_list()
    except ValueError as e:
        raise ConfigError(f"{SEARCHED_ARCH}: {e}") from None


def _check_searched_arch(cfg: Any) -> None:
    """``--searched-arch`` fits the space and the steps run include tune."""
    from nasdet.errors import ConfigError
    from nasdet.methods.latency.steps import fit_arch

    if "tune" not in cfg.steps:
        raise ConfigError(
            f"{SEARCHED_ARCH}: it sets tune.searched_arch but the steps run "
            f"({', '.join(cfg.steps)}) have no tune — add tune to --steps"
        )
    fit_arch(cfg, cfg.tune.searched_arch, SEARCHED_ARCH)


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
        raise ConfigError(
            "nasdet cost takes either a CONFIG or --model torchvision:NAME/nasdet:NAME/FILE"
        )
    if args.num_classes is not None and not (args.model or "").startswith(
        ("torchvision:", "nasdet:")
    ):
        raise ConfigError(
            "--num-classes is for --model torchvision:NAME or nasdet:NAME "
            "(a config's or model file's classes are its own)"
        )
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be positive, got {args.num_classes}")
    if args.config is not None:
        from nasdet.build import build_detector, num_classes
        from nasdet.config import read_yaml
        from nasdet.methods import TrainConfig, load_run_config

        raw = read_yaml(args.config)
        if "method" in raw or any(k not in TrainConfig.model_fields for k in raw):
            cfg = load_run_config(args.config)  # a run config: the model its method starts from
            arch = cfg.cost_model()
        else:
            from nasdet.config import load_config

            cfg = load_config(args.config, TrainConfig)
            arch = cfg.model
        model = build_detector(arch, num_classes(cfg.data), load_weights=False)
        default = f"3x{arch.min_size}x{arch.min_size}"
    elif args.model.startswith("torchvision:"):
        name = args.model.split(":", 1)[1]
        model, default = torchvision_model(name, num_classes=args.num_classes), "3x224x224"
    elif args.model.startswith("nasdet:"):
        model, default = _named_model(args)
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


def _named_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The ``nasdet:NAME`` model of ``nasdet cost``, built for the square ``--input`` size."""
    from nasdet.cost import parse_input_size
    from nasdet.errors import ConfigError
    from nasdet.models.named import build_named, default_input_size

    name = args.model.split(":", 1)[1]
    size = default_input_size(name)  # also rejects an unknown name, listing the known ones
    if args.input is not None:
        _, height, width = parse_input_size(args.input)
        if height != width:
            raise ConfigError(
                f"--input {args.input}: nasdet:{name} is built for a square input, give CxSxS"
            )
        size = height
    model = build_named(name, num_classes=args.num_classes, input_size=size)
    return model, f"3x{size}x{size}"


def cmd_convert(args: argparse.Namespace) -> int:
    from nasdet.methods import METHODS

    converter = next(m.converters[args.kind] for m in METHODS.values() if args.kind in m.converters)
    given = {"min_size": args.min_size, "max_size": args.max_size, "num_classes": args.num_classes}
    print(converter.convert(args.checkpoint, args.out, **{k: v for k, v in given.items() if v}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import nasdet
    from nasdet.cost import count_params
    from nasdet.errors import ConfigError
    from nasdet.methods import Model
    from nasdet.models.io import read_model_file, save_model
    from nasdet.search.supernet import export_subnet, supernet_spec

    arch = Model.model_validate(read_model_file(args.supernet)["architecture"])
    try:
        spec = supernet_spec(arch)
    except ValueError as e:
        raise ConfigError(f"{args.supernet}: not a supernet model file ({e})") from None
    try:
        path = Path(args.genotype)
        is_file = path.suffix in (".yaml", ".yml", ".json") and path.is_file()
        genotype = spec.parse_genotype(path.read_text() if is_file else args.genotype)
    except ValueError as e:
        raise ConfigError(f"--genotype: {e}") from None
    supernet = nasdet.load_model(args.supernet)
    model, sub = export_subnet(supernet, arch, genotype, len(supernet.categories) + 1)
    out = save_model(
        args.out,
        model,
        architecture=sub.model_dump(mode="json"),
        categories=supernet.categories,
        cat_ids=supernet.cat_ids,
        meta={"from_supernet": str(args.supernet), "genotype": str(genotype)},
    )
    print(f"wrote {out}: subnet {genotype}, {count_params(model):,} parameters")
    print("(BN statistics are the supernet's; the search's own exports are recalibrated)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from nasdet.run_dir import open_run_dir, status_lines, status_of, status_table

    status = status_of(open_run_dir(args.run_dir))
    if args.json:
        print(json.dumps(status))
        return 0
    title, running = status_lines(status)
    tty = sys.stdout.isatty()
    header, rows = status_table(status, sep="\n" if tty else ", ")
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, box=None, pad_edge=False, header_style="bold")
        for i, name in enumerate(header):
            counts = 0 < i < len(header) - 2
            table.add_column(  # one objective a line in "best so far", the only column to wrap
                name,
                justify="right" if counts else "left",
                no_wrap=name != "best so far",
                overflow="fold",
            )
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        print(title)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for line in running:
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nasdet.methods import DEFAULT_METHOD, METHODS
    from nasdet.report.run import regenerate_report
    from nasdet.run_dir import CONFIG_FILENAME

    title = "nasdet search"
    config = args.run_dir / CONFIG_FILENAME
    if config.is_file():
        import yaml

        method = METHODS.get(
            str((yaml.safe_load(config.read_text()) or {}).get("method", DEFAULT_METHOD))
        )
        title = f"nasdet {method.title}" if method else title
    print(f"report: {regenerate_report(args.run_dir, title=title)}")
    return 0


def _say(line: str) -> None:
    """A progress line: on stderr whatever -q says, and in the log file."""
    print(line, file=sys.stderr)
    log.debug("%s", line)


def cmd_compare(args: argparse.Namespace) -> int:
    from nasdet.compare.inputs import make_plan, parse_seeds
    from nasdet.compare.report import architecture_table, cell_text, pairs_table
    from nasdet.compare.run import RESULT_FILENAME, run_compare
    from nasdet.errors import ConfigError
    from nasdet.search.executors import ExecutorSettings

    if args.executor == "inprocess" and (
        args.workers is not None or args.address is not None or args.gpus_per_worker
    ):
        raise ConfigError("--workers, --address and --gpus-per-worker need --executor ray")
    if (args.workers is not None and args.workers < 1) or args.gpus_per_worker < 0:
        raise ConfigError("--workers must be >= 1 and --gpus-per-worker >= 0")
    plan = make_plan(args.archs, parse_seeds(args.seeds, args.num_seeds), args.budget)
    for arch in plan.architectures:
        if arch.overridden:
            print(f"{arch.label}: the budget ({plan.budget_source}) replaced "
                  f"{', '.join(arch.overridden)}")  # fmt: skip
    settings = ExecutorSettings(
        executor=args.executor,
        address=args.address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    with settings.make_executor() as executor:
        result = run_compare(
            plan,
            args.out,
            executor=executor,
            latency=args.latency,
            threads=args.threads,
            progress=_say,
        )
    tty = sys.stdout.isatty()
    for table in (architecture_table(result.summary), pairs_table(result.summary)):
        rows = [[cell_text(v) for v in row] for row in table.rows]
        if tty:
            from rich.console import Console
            from rich.table import Table

            shown = Table(caption=table.caption, header_style="bold")
            for name in table.headers:
                shown.add_column(name)
            for i, row in enumerate(rows):
                shown.add_row(*row, style="bold green" if i in table.marked else None)
            Console().print(shown)
        else:
            widths = [max(len(r[i]) for r in [list(table.headers), *rows]) for i in
                      range(len(table.headers))]  # fmt: skip
            for row in [list(table.headers), *rows]:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            print(f"({table.caption})\n")
    print(f"trained now: {result.trained}; results: {args.out / RESULT_FILENAME}")
    print(f"report:  {result.report}")
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
