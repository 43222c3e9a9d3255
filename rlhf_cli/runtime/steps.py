"""Every step of a run, in pipeline order: the one table the CLI, the pipeline, the run layout, the recipe's training
blocks and the trainer configs read.

A new stage is a module `rlhf_cli/stages/<name>.py` (`STAGE`, `setup(ctx) -> Job`, `run = stage_runner(STAGE, setup)`),
one line here, and its recipe section (`recipe.py`). The CLI command, `rlhf pipeline --stages`, `--dry-run`, `rlhf check`,
the finished test and the trainer config all follow from the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Defaults that suit small models on a CPU; the recipe's `training:` block overrides any of them.
# TRL's configs default to bf16=True and gradient checkpointing on: the precision rule sets the one, this the other.
_FINE_TUNING = {  # one epoch, warm-up then cosine, no activation checkpointing
    "warmup_steps": 0.05,
    "lr_scheduler_type": "cosine",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 16,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
    "activation_checkpointing": False,  # transformers 5's name (gradient_checkpointing warns on every config)
}
_PRETRAIN = {
    "learning_rate": 3e-3,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 16,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
}
_PPO = {
    "learning_rate": 3e-5,
    "per_device_train_batch_size": 32,
    "logging_steps": 1,
    "save_steps": 10,
    "save_total_limit": 2,
    "max_steps": 20,
    "lr_scheduler_type": "constant",
}

# TRL's online trainers (RLOO, GRPO) on PPO's budget: 32 answers per step, 20 steps; its rollout length and temperature.
_ONLINE = {
    **_PPO,
    "max_completion_length": 48,
    "temperature": 0.9,
    "beta": 0.05,  # the KL to the SFT model; GRPOConfig's own default (0) would drop it
    "activation_checkpointing": False,
    "shuffle_dataset": True,
}


@dataclass(frozen=True)
class Step:
    """One step of a run.

    name: the stage folder, the recipe section and the `--stages` name (`best_of_n`); the command is `command`.
    summary, example: the stage command's help (a model stage's command is made from them).
    config: `module:Class` its `training:` block builds (imported only when a stage is built); None: no training block.
    defaults: that config's defaults here (below the recipe's `training:`).
    parent: the run stage whose `final/` it starts from; starts_from: the recipe key naming another model instead.
    model: writes `<name>/final/` and `<name>/eval.json` through the driver (rlhf_cli.stages.driver).
    default: in `rlhf pipeline` unless `--stages` or the recipe's `stages:` say otherwise.
    """

    name: str
    summary: str = ""
    example: str = ""
    config: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None
    starts_from: str | None = None
    model: bool = True
    default: bool = True

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


TABLE: tuple[Step, ...] = (
    Step("pretrain", "Stage 1: generative pre-training of a base model (transformers' Trainer).",
         "`rlhf pretrain --recipe text --set pretrain.data.path=novel.txt --set pretrain.training.max_time=60`",
         "rlhf_cli.models.trainer_configs:PretrainArguments", _PRETRAIN, starts_from="pretrain.init_from"),
    Step("sft", "Stage 2: supervised fine-tuning on conversations (TRL's SFTTrainer).",
         "`rlhf sft --recipe tiny --set sft.lora.r=8`",
         "trl:SFTConfig", {**_FINE_TUNING, "learning_rate": 1e-3}, parent="pretrain", starts_from="sft.init_from"),
    Step("sample", model=False),  # sample, label, eval and report: commands of their own shape in cli.py
    Step("label", model=False),
    Step("reward", "Stage 3a: train a reward model on rankings (TRL's RewardTrainer, InstructGPT's K-wise loss).",
         "`rlhf reward --recipe tiny`, then `rlhf reward inspect runs/tiny/reward/final`",
         "trl:RewardConfig", {**_FINE_TUNING, "learning_rate": 5e-4}, parent="sft", starts_from="reward.init_from"),
    Step("ppo", "Stage 3b: PPO against the reward model with a KL penalty (our own trainer).",
         "`rlhf ppo --recipe tiny --set ppo.kl_coef=0.1`",
         "rlhf_cli.ppo.config:PPOConfig", _PPO, parent="sft", starts_from="ppo.policy_from"),
    Step("dpo", "A method beside PPO: DPO on the rankings, from the SFT model, no reward model (TRL's DPOTrainer).",
         "`rlhf dpo --recipe tiny` (after `rlhf label`), or `rlhf pipeline --stages dpo --resume`",
         "trl:DPOConfig", {**_FINE_TUNING, "learning_rate": 5e-5, "per_device_train_batch_size": 8},
         parent="sft", starts_from="dpo.policy_from", default=False),
    Step("best_of_n", "A method beside PPO: best-of-n — the SFT model samples n answers, the reward model keeps its best.",
         "`rlhf best-of-n --recipe tiny --set best_of_n.n=32` (after `rlhf reward`)",
         parent="sft", starts_from="best_of_n.policy_from", default=False),
    Step("expert_iteration", "A method beside PPO: expert iteration — SFT on the reward model's best of n answers.",
         "`rlhf expert-iteration --recipe tiny` (after `rlhf reward`)",
         "trl:SFTConfig", {**_FINE_TUNING, "learning_rate": 3e-4}, parent="sft",
         starts_from="expert_iteration.policy_from", default=False),
    Step("rloo", "A method beside PPO: RLOO against the reward model, KL to the SFT model (TRL's RLOOTrainer).",
         "`rlhf rloo --recipe tiny --set rloo.training.beta=0.1` (after `rlhf reward`)",
         "trl:RLOOConfig", {**_ONLINE, "num_generations": 4}, parent="sft", starts_from="rloo.policy_from",
         default=False),
    Step("grpo", "A method beside PPO: GRPO against the reward model, KL to the SFT model (TRL's GRPOTrainer).",
         "`rlhf grpo --recipe tiny --set grpo.training.num_generations=4` (after `rlhf reward`)",
         "trl:GRPOConfig", {**_ONLINE, "num_generations": 8}, parent="sft", starts_from="grpo.policy_from",
         default=False),
    Step("eval", model=False),
    Step("report", model=False),
)  # fmt: skip
BY_NAME: Mapping[str, Step] = MappingProxyType({s.name: s for s in TABLE})

STEPS = tuple(s.name for s in TABLE)
DEFAULT_STEPS = tuple(s.name for s in TABLE if s.default)  # what `rlhf pipeline` runs unless told: the ChatGPT recipe
MODEL_STAGES = tuple(s.name for s in TABLE if s.model)
TRAINING_STAGES = tuple(s.name for s in TABLE if s.config)  # the recipe sections with a `training:` block
METHODS = tuple(s for s in MODEL_STAGES if s not in ("pretrain", "sft", "reward"))  # policies made from the SFT model


def lineage(stage: str) -> list[str]:
    """The run stages a stage's model descends from, oldest first, itself last: lineage("dpo") == [pretrain, sft, dpo]."""
    chain = [stage]
    while (parent := BY_NAME[chain[0]].parent) is not None:
        chain.insert(0, parent)
    return chain


def step_name(name: str) -> str:
    """A step's table name from a user's spelling (`best-of-n` or `best_of_n`)."""
    return name.strip().replace("-", "_")
