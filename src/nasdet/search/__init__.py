"""Search infrastructure shared by every algorithm: the record store and Pareto tools."""

from __future__ import annotations

from nasdet.search.pareto import (
    Objective,
    hypervolume,
    pareto_front,
    pareto_records,
    parse_objectives,
    write_pareto_csv,
)
from nasdet.search.records import (
    RECORDS_FILENAME,
    STATUSES,
    Record,
    RecordStore,
    RecordStoreError,
    default_worker,
)

__all__ = [
    "RECORDS_FILENAME",
    "STATUSES",
    "Objective",
    "Record",
    "RecordStore",
    "RecordStoreError",
    "default_worker",
    "hypervolume",
    "pareto_front",
    "pareto_records",
    "parse_objectives",
    "write_pareto_csv",
]
