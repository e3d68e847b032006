"""Params and FLOPs of any OFA subnet detector without building it: Once-for-All's cost table.

A block's input and output widths do not depend on the genotype (only its middle width and
kernel do), and the neck and head see the same widths for every subnet, so a subnet detector's
cost is ``fixed + sum over its active blocks of cost[block][kernel, expand]``. The table is
measured once, on the static detectors of the uniform genotypes (every kernel/expand pair at full
depth: ``len(ks_list) * len(expand_ratio_list)`` builds), with the same counters as
:func:`nasdet.cost.measure_cost` (``torch.utils.flop_counter``, parameters by ``numel``); a test
holds the table's sums equal to ``measure_cost`` of built subnets.

The search checks thousands of proposals against FLOPs or params limits; building and counting
each took about 0.2 s on 2 cores, which kept the workers waiting for the proposer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nasdet.build import build_detector
from nasdet.cost import count_params
from nasdet.cost.detector import backbone_body, model_input, random_image
from nasdet.cost.flops import count_flops
from nasdet.methods.ofa.config import Model
from nasdet.methods.ofa.space import OFAGenotype
from nasdet.progress import track
from nasdet.search.supernet import supernet_spec

KEYS = ("params", "flops", "backbone_params", "backbone_flops")


@dataclass(frozen=True)
class CostTable:
    """``fixed`` costs plus per-block costs keyed by (block index 0..19, kernel, expand)."""

    fixed: dict[str, int]
    blocks: dict[tuple[int, int, int], dict[str, int]]
    input_size: int

    def __call__(self, genotype: OFAGenotype) -> dict[str, float]:
        """The cost dict of ``genotype``'s standalone detector (``measure_cost``'s params, FLOPs
        and MACs keys, detector and backbone)."""
        total = dict(self.fixed)
        for b in genotype.active_blocks():
            part = self.blocks.get((b, genotype.ks[b], genotype.e[b]))
            if part is None:  # a block the backbone does not build (stages after its last level)
                continue
            for key in KEYS:
                total[key] += part[key]
        out = {key: float(v) for key, v in total.items()}
        out["macs"] = float(total["flops"] // 2)
        out["backbone_macs"] = float(total["backbone_flops"] // 2)
        return out


def measure_table(arch: Model, num_classes: int, input_size: int) -> CostTable:
    """Measure the table of the supernet section ``arch`` (a supernet ``model`` section) for
    ``num_classes`` (background included) at a square ``input_size``."""
    spec = supernet_spec(arch)
    space = spec.space
    n = space.n_stages * space.max_depth
    blocks: dict[tuple[int, int, int], dict[str, int]] = {}
    fixed: dict[str, int] | None = None
    grid = [(k, e) for k in space.ks_choices for e in space.e_choices]
    for k, e in track(grid, f"OFA cost table at {input_size}px"):
        g = OFAGenotype(ks=(k,) * n, e=(e,) * n, d=(space.max_depth,) * space.n_stages)
        sub = arch.model_copy(update={"backbone": spec.subnet(g)})
        torch.manual_seed(0)
        model = build_detector(sub, num_classes, load_weights=False).eval()
        image = random_image((input_size, input_size))
        whole = count_flops(model, [image])
        body = backbone_body(model)
        counted = count_flops(body, model_input(model, image))
        totals = {
            "params": count_params(model),
            "flops": whole.flops,
            "backbone_params": count_params(body),
            "backbone_flops": counted.flops,
        }
        summed = dict.fromkeys(KEYS, 0)
        for b in range(n):
            name = f"blocks.{b + 1}"  # blocks.0 is the fixed first block
            if b + 1 >= len(body.blocks):
                continue
            flops = counted.by_module.get(name, 0)
            params = count_params(body.blocks[b + 1])
            part = {"params": params, "flops": flops,
                    "backbone_params": params, "backbone_flops": flops}  # fmt: skip
            blocks[(b, k, e)] = part
            for key in KEYS:
                summed[key] += part[key]
        if fixed is None:
            fixed = {key: totals[key] - summed[key] for key in KEYS}
    assert fixed is not None
    return CostTable(fixed=fixed, blocks=blocks, input_size=input_size)
