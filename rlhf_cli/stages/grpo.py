"""GRPO against the run's reward model, from the SFT model and held near it (TRL's GRPOTrainer); `rlhf rloo` runs the
same set-up with TRL's RLOOTrainer.

    rlhf grpo --recipe tiny                                 # after `rlhf reward --recipe tiny` (or `rlhf pipeline`)
    rlhf grpo --recipe tiny --set grpo.training.beta=0.1 --overwrite

GRPO (Shao et al. 2024) samples `training.num_generations` answers per prompt and pushes each by its reward less the
group's mean (no value model); `training.beta` weighs a KL penalty to the SFT model (`grpo.policy_from`, also the
reference). The reward is PPO's: the reward model (`grpo.reward_from`) normalised by its reward_stats.json, less
`grpo.missing_eos_penalty` for an answer without end-of-text (rlhf_cli.ppo.sources). The prompts are PPO's
(`grpo.data`); the budget is max_steps x per_device_train_batch_size answers, as PPO's. Writes `grpo/final/` (a plain
causal LM), `grpo/metrics.jsonl`, `grpo/checkpoints/` and `grpo/eval.json`: its greedy answers to the held-out prompts
beside the SFT model's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlhf_cli.models.answers import score_answers
from rlhf_cli.models.modeling import count_parameters, end_of_turn_ids, load_causal_lm, load_tokenizer
from rlhf_cli.ppo.sources import reward_model_function
from rlhf_cli.runtime import callbacks, distributed, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.runtime.precision import gpu_available
from rlhf_cli.stages.common import (
    gather_weights,
    method_prompts,
    method_summary,
    model_options,
    policy_vs_sft,
    save_policy,
    stage_precision,
    toy_world,
    trainer_config,
)
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "grpo"


def setup(ctx) -> Job:
    from trl import GRPOTrainer

    return online_setup(ctx, STAGE, GRPOTrainer)


def online_setup(ctx, stage: str, trainer_class) -> Job:
    """The SFT policy, PPO's prompts and reward, and one of TRL's online trainers, every input checked; the driver
    (rlhf_cli.stages.driver) does the rest."""
    from transformers import set_seed

    recipe, run_dir, spec = ctx.recipe, ctx.layout.root, getattr(ctx.recipe, stage)
    trust = recipe.model.trust_remote_code
    if spec.use_vllm:
        check_vllm(stage)
    policy_dir = runs.resolve_model_dir(spec.policy_from, run_dir, "sft", f"{stage}.policy_from", "reward", recipe)
    train, eval_prompts, toy = method_prompts(recipe, ctx.layout, stage)
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    set_seed(recipe.seed)
    policy = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe))  # stops at the end of a turn
    n_params = count_parameters(policy)
    precision = stage_precision(recipe, stage, n_params).name
    reward, reward_dir = reward_model_function(recipe, stage, run_dir, trust, precision, end_of_turn_ids(tokenizer))
    args = trainer_config(recipe, stage, ctx.stage_dir, n_params=n_params)
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward,
        args=args,
        train_dataset=train.select_columns(["prompt"]),
        processing_class=tokenizer,
        callbacks=[callbacks.make_callbacks(ctx.stage_dir, stage)],
    )

    def evaluate(output, _checkpoint) -> dict:
        metrics = {
            "train_loss": output.training_loss,
            "train_steps": output.global_step,
            "beta": args.beta,
            "num_generations": args.num_generations,
            "episodes": output.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            * trainer.accelerator.num_processes,
        }  # fmt: skip
        if eval_prompts:  # every process: generation is collective when the model is sharded
            world = toy_world(recipe, toy)
            reference = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe))
            with distributed.whole_model(trainer.model_wrapped, trainer.accelerator) as model:
                own = score_answers(recipe, model, tokenizer, eval_prompts, world)
            metrics.update(policy_vs_sft(recipe, stage, own, reference, tokenizer, eval_prompts, world))
        return metrics

    weights = {}

    def export(_staging) -> None:
        weights["state"] = gather_weights(trainer)

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        body = (
            f"`{path_in_run(policy_dir, run_dir)}` trained by `rlhf {stage}` (rlhf-cli, TRL's {trainer_class.__name__}) against the reward "
            f"model `{path_in_run(reward_dir, run_dir)}`, KL weight {args.beta} to the same model, {metrics['train_steps']} steps."
        )
        parents = {"policy": policy_dir, "reference": policy_dir, "reward": reward_dir}
        save_policy(
            tmp,
            run_dir,
            trainer.model,
            tokenizer,
            recipe,
            stage,
            parents,
            (spec.data or recipe.ppo.data).model_dump(),
            f"{stage.upper()} policy",
            body,
            policy_dir,
            weights["state"],
        )

    def summary(final: Path, m: dict) -> None:
        method_summary(stage, final, m, f"{m['train_steps']} steps, {m['episodes']} answers")

    return Job(trainer, n_params, evaluate, write_final, summary, export=export)


def check_vllm(stage: str) -> None:
    """vLLM rollouts need a CUDA GPU and the vllm package: refuse before any model loads."""
    if not gpu_available():
        raise UserError(f"{stage}.use_vllm needs a CUDA GPU (vLLM generates there); set {stage}.use_vllm: false here.")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{stage}.use_vllm needs vLLM: `pip install 'rlhf-cli[vllm]'`, or set {stage}.use_vllm: false.")


run = stage_runner(STAGE, setup)
