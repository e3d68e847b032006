"""Latency-constrained search from a user's baseline detector (ENOT + MMDetection's flow).

The space is made from the baseline: each searchable backbone block becomes a container of
variants (the baseline's block, width-pruned copies, skip). ``baseline`` → ``pretrain`` or
``multiresolution_pretrain`` → ``search`` or ``search_with_resolution`` (architecture logits
under a latency target, from a per-variant latency table) → ``tune``.
"""

from nasdet.method import Method
from nasdet.methods.latency.config import LatencyRunConfig
from nasdet.methods.latency.parts import BACKBONES
from nasdet.methods.latency.steps import run

METHOD = Method(
    name="latency",
    title="Latency-constrained search (ENOT)",
    config=LatencyRunConfig,
    run=run,
    backbones=BACKBONES,
)
