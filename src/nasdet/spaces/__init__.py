"""Search spaces: genotypes (parse / encode / validate), sampling and mutations."""

from nasdet.spaces.serial import (
    DEFAULT_SPACE,
    SerialCode,
    SerialSpace,
    mutate,
    mutate_add_stage,
    mutate_expand,
    mutate_swap,
    sample_code,
)

__all__ = [
    "DEFAULT_SPACE",
    "SerialCode",
    "SerialSpace",
    "mutate",
    "mutate_add_stage",
    "mutate_expand",
    "mutate_swap",
    "sample_code",
]
