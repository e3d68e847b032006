"""SP-NAS (Vega): serial-to-parallel backbone search for detectors.

``fine_tune`` (the start, optionally from a torchvision Faster R-CNN checkpoint) → ``serial``
(SpNasS: grow the serial backbone by mutation with weight inheritance) → ``reignition``
(re-pretrain the best backbones on classification data) → ``parallel`` (SpNasP: parallel
branches in the neck) → ``fully_train`` (the winner with the full budget).
"""

from nasdet.method import Converter, Method
from nasdet.methods.spnas.config import BACKBONES, NECKS, SpNasRunConfig
from nasdet.methods.spnas.convert import convert_command
from nasdet.methods.spnas.steps import run

METHOD = Method(
    name="spnas",
    title="SP-NAS",
    config=SpNasRunConfig,
    run=run,
    backbones=BACKBONES,
    necks=NECKS,
    converters={
        "torchvision-fasterrcnn": Converter(
            "a torchvision fasterrcnn_resnet50_fpn state dict", convert_command
        )
    },
    volatile_keys=("search.executor", "search.address", "search.workers", "search.gpus_per_worker"),
)
