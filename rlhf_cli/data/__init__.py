"""Data for every stage: readers, format detection and normalisation, train/eval splits (see `formats`)."""

from rlhf_cli.data.formats import (
    FORMATS,
    STAGES,
    BadRow,
    expand_rankings,
    group_id,
    load_stage_data,
    normalise,
    parse_hh,
    read_table,
    train_eval_split,
)

__all__ = [
    "FORMATS",
    "STAGES",
    "BadRow",
    "expand_rankings",
    "group_id",
    "load_stage_data",
    "normalise",
    "parse_hh",
    "read_table",
    "train_eval_split",
]
