"""User-facing errors.

Anything a user can cause (a config typo, a broken dataset, an impossible constraint, a checkpoint
that does not fit) raises a :class:`NasdetError` whose message is one line naming the file, key or
record and what to do. The CLI prints that line and exits with status 2; it never shows a traceback
for these. :class:`WorkFailed` is the exception: work the user started failed at run time, the CLI
exits with status 1, and the tracebacks are in the run log and the record store.
"""

from __future__ import annotations


class NasdetError(Exception):
    """Base class of errors caused by user input; ``str(err)`` is the whole message."""


class ConfigError(NasdetError):
    """A configuration file is missing, malformed, or has an invalid key or value."""


class DataError(NasdetError):
    """A dataset is missing, malformed, or inconsistent."""


class CheckpointError(NasdetError):
    """A weights/checkpoint file is missing, unreadable, or does not fit the model."""


class TrainingDiverged(NasdetError):
    """The loss became NaN or infinite during training."""


class WorkFailed(NasdetError):
    """Work failed at run time (a candidate, a step); the CLI exits 1, not 2.

    Raised once the step has committed everything else it could do; the message names the failed
    records, and their tracebacks are in the run log and in the record store.
    """
