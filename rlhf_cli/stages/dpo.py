"""Direct Preference Optimization — the SFT model learns the rankings directly, without a reward model (TRL's DPOTrainer).

    rlhf dpo --recipe tiny                                  # after `rlhf label --recipe tiny` (or `rlhf pipeline`)
    rlhf dpo --recipe tiny --set dpo.beta=0.3 --overwrite

DPO (Rafailov et al. 2023) maximises log σ(β·[log π/π_ref (chosen) − log π/π_ref (rejected)]) over the preference
pairs: the policy starts from and is held near the reference (the SFT model, `dpo.policy_from`) by β. Data: the run's
rankings expanded to pairs (`dpo.data`, as `reward.data`), split by prompt. Writes `dpo/final/` (a plain causal LM),
`dpo/metrics.jsonl`, `dpo/checkpoints/` and `dpo/eval.json`: the DPO policy next to the SFT model on held-out prompts
(greedy; on the toy world its gold reward and right-fact rate, and the gain with a paired 95 % bootstrap interval).
"""

from __future__ import annotations

from pathlib import Path

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.data.toy import held_out_prompts as toy_held_out_prompts
from rlhf_cli.models.answers import score_answers
from rlhf_cli.models.modeling import count_parameters, frozen_dtype, load_causal_lm, load_tokenizer
from rlhf_cli.people.feedback import with_people_rankings
from rlhf_cli.runtime import callbacks, distributed, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.stages.common import (
    gather_weights,
    method_summary,
    model_options,
    policy_vs_sft,
    save_policy,
    toy_world,
    trainer_config,
)
from rlhf_cli.stages.driver import Job, stage_runner
from rlhf_cli.stages.reward import data_spec

STAGE = "dpo"


def setup(ctx) -> Job:
    """Preference pairs, policy and reference (the SFT model), and TRL's DPOTrainer, every input checked; the driver
    (rlhf_cli.stages.driver) does the rest: `dpo/final`, `dpo/eval.json`."""
    import json

    import datasets
    from transformers import set_seed
    from trl import DPOTrainer

    recipe, spec, run_dir, stage_dir = ctx.recipe, ctx.recipe.dpo, ctx.layout.root, ctx.stage_dir
    data = data_spec(recipe, run_dir, STAGE)
    policy_dir = runs.resolve_model_dir(spec.policy_from, run_dir, "sft", "dpo.policy_from", "label", recipe)
    pairs = load_stage_data("reward", data, toy_dir=ctx.layout.toy, seed=recipe.seed)
    pairs, _ = with_people_rankings(pairs, data, ctx.layout, STAGE)  # a people's round's too, when the run has one
    train, held = train_eval_split(pairs, data, "reward", seed=recipe.seed, toy_dir=ctx.layout.toy)

    def conversational(rows):  # DPOTrainer's conversational preference format; a pair of equal answers teaches nothing
        return datasets.Dataset.from_list(
            [
                {
                    "prompt": r["prompt"],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in rows
                if r["chosen"] != r["rejected"]
            ]
        )

    train_pairs, held_pairs = conversational(train), conversational(held)
    if len(train_pairs) == 0:
        raise UserError(
            f"dpo: {data.path or data.hub} holds no training pair of two different answers; rank more prompts."
        )

    tokenizer = load_tokenizer(policy_dir, trust_remote_code=recipe.model.trust_remote_code)
    set_seed(recipe.seed)
    policy = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe))
    n_params = count_parameters(policy)
    args = trainer_config(recipe, STAGE, stage_dir, n_params=n_params)
    reference = load_causal_lm(
        policy_dir, tokenizer=tokenizer, dtype=frozen_dtype(args.bf16), **model_options(recipe)
    )  # frozen: in the compute dtype
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=held_pairs if len(held_pairs) else None,
        processing_class=tokenizer,
        callbacks=[callbacks.make_callbacks(stage_dir, STAGE)],
    )
    # The toy world judges only its own prompts: its rankings (dpo.data unset or toy, feedback from the toy world).
    toy = (spec.data is None or spec.data.toy) and recipe.feedback.data.toy
    if toy:  # the toy world's held-out prompts, as every stage evaluates
        prompts = toy_held_out_prompts(ctx.layout.toy, recipe.seed, spec.eval_prompts)
    else:  # one per held-out prompt (a ranking of K answers gives K(K-1)/2 pairs of the same prompt)
        unique = {json.dumps(r["prompt"]): r["prompt"] for r in held}
        prompts = list(unique.values())[: spec.eval_prompts]

    def evaluate(output, _checkpoint) -> dict:
        metrics = {
            "train_loss": output.training_loss,
            "train_steps": output.global_step,
            "beta": args.beta,
            "train_pairs": len(trainer.train_dataset),
        }
        if prompts:  # every process: generation is collective when the model is sharded
            world = toy_world(recipe, toy)
            with distributed.whole_model(trainer.model_wrapped, trainer.accelerator) as model:
                own = score_answers(recipe, model, tokenizer, prompts, world)
            metrics.update(policy_vs_sft(recipe, STAGE, own, reference, tokenizer, prompts, world))
        return metrics

    weights = {}

    def export(_staging) -> None:
        weights["state"] = gather_weights(trainer)

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        body = (
            f"Direct Preference Optimization (beta {args.beta}) of `{path_in_run(policy_dir, run_dir)}` on `{path_in_run(data.path, run_dir) or data.hub}` by "
            f"`rlhf dpo` (rlhf-cli), {metrics['train_steps']} steps, the SFT model as the reference."
        )
        parents = {"policy": policy_dir, "reference": policy_dir}
        save_policy(
            tmp, run_dir, trainer.model, tokenizer, recipe, STAGE, parents, data.model_dump(), "DPO policy", body, policy_dir,
            weights["state"],
        )  # fmt: skip

    return Job(trainer, n_params, evaluate, write_final, _summary, export=export)


run = stage_runner(STAGE, setup)


def _summary(final: Path, m: dict) -> None:
    method_summary(STAGE, final, m, f"train loss {m['train_loss']:.4f} on {m['train_pairs']} pairs")
