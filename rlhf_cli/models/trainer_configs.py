"""The config class each stage's `training:` block is handed to: transformers' TrainingArguments (plus `max_time`) for
pretrain, TRL's SFTConfig and RewardConfig, rlhf's PPOConfig. Imports transformers: import it where a stage is built,
not at the top of a module `rlhf --help` loads."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf_cli.runtime.steps import BY_NAME


@dataclass
class PretrainArguments(TrainingArguments):
    """TrainingArguments plus `max_time`: stop cleanly after this many seconds of training, then evaluate and save."""

    max_time: float | None = field(default=None, metadata={"help": "Training wall-clock budget in seconds."})


def config_class(stage: str):
    """The config class a stage's `training:` block is handed to (its `config` in rlhf_cli.runtime.steps)."""
    module, name = BY_NAME[stage].config.split(":")
    return getattr(importlib.import_module(module), name)
