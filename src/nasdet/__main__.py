"""``python -m nasdet`` (also ``torchrun -m nasdet ...``)."""

from nasdet.cli import main

raise SystemExit(main())
