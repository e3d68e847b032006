"""Once-for-All (Cai et al., ICLR 2020) + SSD, as aw_nas runs it: an elastic MobileNetV3 /
MobileNetV2 supernet whose subnets differ in kernel size, expand ratio and depth.

``supernet_train`` (progressive shrinking with the sandwich rule and in-place distillation; DDP
under torchrun) → ``search`` (asynchronous steady-state evolution, workers holding one supernet
copy each) → ``final_train`` (the chosen subnet and the hand-designed net, same budget).
"""

from nasdet.method import Converter, Method
from nasdet.methods.ofa.config import BACKBONES, OFARunConfig
from nasdet.methods.ofa.converter import convert_command
from nasdet.methods.ofa.steps import run

METHOD = Method(
    name="ofa",
    title="OFA + SSD",
    config=OFARunConfig,
    run=run,
    backbones=BACKBONES,
    converters={
        "ofa-mbv3": Converter(
            help="a once-for-all MobileNetV3 supernet checkpoint (ofa_mbv3_d234_e346_k357_w1.0) "
            "as an SSDLite supernet model file",
            convert=convert_command,
        )
    },
    torchrun_steps=("supernet_train",),
    volatile_keys=(
        "search.executor",
        "search.address",
        "search.trainer_cfg.parallelism",
        "search.trainer_cfg.dispatcher_cfg",
    ),
)
