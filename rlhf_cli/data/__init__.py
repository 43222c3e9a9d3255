"""Data for every stage: reading tables (`read`), format detection and normalisation (`formats`), the stages' data and
their train/eval splits (`stage_data`)."""

from rlhf_cli.data.formats import FORMATS, STAGES, BadRow, expand_rankings, group_id, normalise, parse_hh
from rlhf_cli.data.read import read_table
from rlhf_cli.data.stage_data import load_stage_data, train_eval_split

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
