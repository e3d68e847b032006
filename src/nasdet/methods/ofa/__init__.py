"""Once-for-All (Cai et al., ICLR 2020): an elastic MobileNetV3 / MobileNetV2 supernet whose
subnets differ in kernel size, expand ratio and depth, searched for detector backbones."""
