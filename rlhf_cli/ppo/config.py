"""`PPOConfig`: TrainingArguments plus the PPO settings, in TRL's idiom. The one place PPO defaults live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    """PPO with a KL penalty (Ziegler et al. 2019; InstructGPT), on transformers + accelerate.

    Batch sizes, as in TRL: a *mini-batch* is `per_device_train_batch_size * gradient_accumulation_steps` answers per
    process (one optimiser step); one PPO *batch* is `num_mini_batches` mini-batches on every process. Each batch is rolled
    out once and then optimised for `num_ppo_epochs` epochs. `max_steps` counts PPO batches; `total_episodes` (if set)
    counts answers and overrides it.
    """

    # rollout
    response_length: int = field(default=48, metadata={"help": "Most tokens generated per answer."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the rollout."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the rollout."})
    missing_eos_penalty: float | None = field(
        default=1.0,
        metadata={"help": "Subtracted from the score of an answer with no end-of-text (Huang et al. 2024)."},
    )
    total_episodes: int | None = field(default=None, metadata={"help": "Answers to train on; overrides max_steps."})
    # reward and KL
    kl_coef: float = field(
        default=0.05, metadata={"help": "beta: weight of the per-token KL(policy||reference) penalty."}
    )
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1", metadata={"help": "k1: log-ratio; k3: unbiased, non-negative."}
    )
    kl_target: float | None = field(
        default=None, metadata={"help": "Adapt beta toward this KL per answer (None: fixed)."}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Episodes over which the adaptive controller moves beta."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards before GAE."})
    # update
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation epochs over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Mini-batches per PPO epoch."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    ptx_coef: float = field(default=0.0, metadata={"help": "Weight of the pre-training loss mixed in (PPO-ptx)."})
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Batch size of no-grad forward passes."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', not {self.kl_estimator!r}")
        for name in (
            "num_ppo_epochs",
            "num_mini_batches",
            "response_length",
            "kl_horizon",
            "local_rollout_forward_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be above 0 for PPO's sampled rollouts, not {self.temperature}")
