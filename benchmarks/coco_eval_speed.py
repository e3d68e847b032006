"""Time ``nasdet.engine.coco_eval.evaluate_coco`` with faster-coco-eval and pycocotools.

Generates a synthetic COCO-like ground truth (non-contiguous category ids, crowd boxes, empty
images, objects of every area range) and a noisy detection set (jittered true positives,
duplicates, class confusions, background false positives), evaluates it with both backends on the
same inputs, checks the 12 stats agree and prints a markdown table of median wall-clock seconds.

    python benchmarks/coco_eval_speed.py --out docs/benchmarks/coco_eval.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine_line, write_fragment

from nasdet.engine.coco_eval import STAT_KEYS, evaluate_coco

CAT_IDS = (1, 3, 4, 8, 13, 21, 34, 55, 89, 90)
WIDTH, HEIGHT = 640, 480
TOLERANCE = 1e-9  # the backends sum in different orders: agreement to the last few ulps


def _random_box(rng: np.random.Generator) -> list[float]:
    """A box whose area is log-uniform over 8^2..400^2 pixels^2 (small, medium and large)."""
    side = float(np.exp(rng.uniform(np.log(8), np.log(400))))
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
    w, h = min(side * aspect, WIDTH - 1.0), min(side / aspect, HEIGHT - 1.0)
    return [float(rng.uniform(0, WIDTH - w)), float(rng.uniform(0, HEIGHT - h)), w, h]


def make_ground_truth(rng: np.random.Generator, n_images: int) -> dict:
    """A COCO instances dict: 0-20 boxes per image (10% empty images), 3% crowd boxes."""
    images = [{"id": 1000 + i, "width": WIDTH, "height": HEIGHT} for i in range(n_images)]
    anns = []
    for image in images:
        n = 0 if rng.random() < 0.1 else int(rng.integers(1, 21))
        for _ in range(n):
            box = _random_box(rng)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CAT_IDS)),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(rng.random() < 0.03),
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in CAT_IDS]
    return {"images": images, "annotations": anns, "categories": cats}


def make_detections(rng: np.random.Generator, gt: dict, n_detections: int) -> list[dict]:
    """Exactly ``n_detections`` noisy results; about 60% derive from ground-truth boxes."""
    dets = []
    image_ids = [img["id"] for img in gt["images"]]
    anns = gt["annotations"]
    for index in rng.permutation(len(anns)):  # random images get the true positives
        ann = anns[int(index)]
        if len(dets) >= 0.6 * n_detections:
            break
        for copy in range(int(rng.choice((0, 1, 1, 1, 2)))):  # misses and duplicates
            x, y, w, h = ann["bbox"]
            noise = rng.normal(0, 0.08 + 0.1 * copy, 4) * [w, h, w, h]
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(CAT_IDS))
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": cat,
                    "bbox": [x + noise[0], y + noise[1], abs(w + noise[2]), abs(h + noise[3])],
                    "score": float(rng.beta(5, 2) * 0.9),
                }
            )
    while len(dets) < n_detections:  # background false positives, lower scores
        dets.append(
            {
                "image_id": int(rng.choice(image_ids)),
                "category_id": int(rng.choice(CAT_IDS)),
                "bbox": _random_box(rng),
                "score": float(rng.beta(2, 5)),
            }
        )
    return dets[:n_detections]


def time_backend(backend: str, gt: dict, dets: list[dict], repeat: int) -> tuple[float, dict]:
    """Median wall-clock seconds of ``evaluate_coco`` over ``repeat`` runs, and its stats."""
    times, stats = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        stats = evaluate_coco(gt, dets, backend=backend)
        times.append(time.perf_counter() - start)
    return statistics.median(times), stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=5000, help="number of detections")
    parser.add_argument("--images", type=int, default=500, help="number of images")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    gt = make_ground_truth(rng, args.images)
    dets = make_detections(rng, gt, args.detections)
    n_crowd = sum(a["iscrowd"] for a in gt["annotations"])

    results = {b: time_backend(b, gt, dets, args.repeat) for b in ("pycocotools", "faster")}
    ref_stats = results["pycocotools"][1]
    max_diff = max(abs(results["faster"][1][k] - ref_stats[k]) for k in STAT_KEYS)
    exact = all(results["faster"][1][k] == ref_stats[k] for k in STAT_KEYS)
    agree = "yes (bit-identical)" if exact else f"yes (max diff {max_diff:.1e})"
    if max_diff > TOLERANCE:
        agree = f"NO (max diff {max_diff:.1e})"

    command = shlex.join(["python", "benchmarks/coco_eval_speed.py", *sys.argv[1:]])
    ref_time = results["pycocotools"][0]
    lines = [
        f"COCO bbox evaluation: {args.images} images, {len(gt['annotations'])} ground-truth boxes "
        f"({n_crowd} crowd), {len(dets)} detections, {len(CAT_IDS)} categories "
        f"(non-contiguous ids), median of {args.repeat} runs.",
        "",
        "| backend | seconds | speed-up | 12 stats identical |",
        "|---|---:|---:|---|",
    ]
    for backend, (seconds, _) in results.items():
        same = "reference" if backend == "pycocotools" else agree
        lines.append(f"| {backend} | {seconds:.3f} | {ref_time / seconds:.1f}x | {same} |")
    lines += [
        "",
        ", ".join(f"{k} {ref_stats[k]:.4f}" for k in ("mAP", "AP50", "AR100")) + ".",
        f"Command: `{command}`",
        f"Machine: {machine_line()}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_fragment(args.out, text)
    if max_diff > TOLERANCE:
        print(f"error: backends disagree by {max_diff:.1e} (> {TOLERANCE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
