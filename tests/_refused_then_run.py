"""Two ``nasdet`` commands in one process (one torchrun start for both)::

    python tests/_refused_then_run.py STEPS NASDET_ARGS...

``nasdet NASDET_ARGS`` must fail (exit status 3 if it does not); then
``nasdet NASDET_ARGS --steps STEPS`` runs and its exit status is this process's.
"""

from __future__ import annotations

import sys

from nasdet.cli import main

if __name__ == "__main__":
    steps, args = sys.argv[1], sys.argv[2:]
    refused = main(args)
    print(f"refused: exit status {refused}", file=sys.stderr, flush=True)
    if refused == 0:
        sys.exit(3)
    sys.exit(main([*args, "--steps", steps]))
