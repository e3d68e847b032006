"""DetNAS (MMRazor): one-shot ShuffleNetV2 supernet search for detector backbones.

``supernet_pretrain`` (optional, classification) → ``supernet_train`` (SPOS single-path training
inside the detector; DDP under torchrun) → ``evolution_search`` (constrained evolution, each
candidate scored on the supernet after BN recalibration) → ``subnet_train`` (the best subnet and
the hand-crafted ShuffleNetV2, same budget).
"""

from nasdet.method import Converter, Method
from nasdet.methods.detnas.config import BACKBONES, DetNASRunConfig
from nasdet.methods.detnas.converter import convert_command
from nasdet.methods.detnas.steps import run

METHOD = Method(
    name="detnas",
    title="DetNAS",
    config=DetNASRunConfig,
    run=run,
    backbones=BACKBONES,
    converters={
        "mmrazor-detnas": Converter(
            help="a retrained MMRazor DetNAS ShuffleNetV2 subnet checkpoint (COCO Faster R-CNN "
            "or ImageNet) as a Faster R-CNN model file, backbone weights only",
            convert=convert_command,
        )
    },
    torchrun_steps=("supernet_train",),
    volatile_keys=(
        "evolution_search.executor",
        "evolution_search.address",
        "evolution_search.workers",
        "evolution_search.gpus_per_worker",
    ),
)
