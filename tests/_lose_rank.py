"""``nasdet`` under torchrun, losing a rank: run as
``torchrun ... tests/_lose_rank.py RANK STEP MARK NASDET_ARGS...``.

In torchrun's first attempt (``TORCHELASTIC_RESTART_COUNT`` 0) the process of global rank
``RANK`` writes ``MARK`` and SIGKILLs itself just before training step ``STEP`` (global, from 0)
of the first :class:`~nasdet.engine.train.Trainer` it builds: a rank lost mid-epoch, without a
chance to clean up. Every other process, and every process of a later attempt, runs
``nasdet NASDET_ARGS`` unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from nasdet.cli import main
from nasdet.engine.train import Trainer


def lose_rank_at(step: int, mark: Path) -> None:
    """Make this process die at ``step``: wraps each new Trainer's ``before_step``."""
    post_init = Trainer.__post_init__

    def wrapped(self: Trainer) -> None:
        post_init(self)
        before: Callable[[int], None] | None = self.before_step

        def before_step(i: int) -> None:
            if i == step:
                mark.write_text(f"rank {os.environ['RANK']} killed itself at step {i}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            if before is not None:
                before(i)

        self.before_step = before_step

    Trainer.__post_init__ = wrapped  # type: ignore[method-assign]


if __name__ == "__main__":
    rank, step, mark, *args = sys.argv[1:]
    if os.environ.get("RANK") == rank and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        lose_rank_at(int(step), Path(mark))
    sys.exit(main(args))
