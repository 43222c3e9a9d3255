"""RLOO against the run's reward model, from the SFT model and held near it (TRL's RLOOTrainer).

    rlhf rloo --recipe tiny                                 # after `rlhf reward --recipe tiny` (or `rlhf pipeline`)

REINFORCE Leave-One-Out (Ahmadian et al. 2024): `training.num_generations` answers per prompt, each answer's baseline
the mean reward of the others. The set-up is GRPO's (rlhf_cli.stages.grpo: PPO's prompts and reward, the SFT model as
start and KL reference, `training.beta`); writes `rloo/final/`, `rloo/metrics.jsonl` and `rloo/eval.json`.
"""

from __future__ import annotations

from rlhf_cli.stages.driver import Job, stage_runner
from rlhf_cli.stages.grpo import online_setup

STAGE = "rloo"


def setup(ctx) -> Job:
    from trl import RLOOTrainer

    return online_setup(ctx, STAGE, RLOOTrainer)


run = stage_runner(STAGE, setup)
