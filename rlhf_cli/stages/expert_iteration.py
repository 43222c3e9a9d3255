"""Expert iteration — the reward model's best of n answers to training prompts become SFT data (TRL's SFTTrainer).

    rlhf expert-iteration --recipe tiny                    # after `rlhf reward --recipe tiny` (or `rlhf pipeline`)
    rlhf expert-iteration --recipe tiny --set expert_iteration.n=16 --overwrite

One round of Anthony et al. 2017's loop as AlpacaFarm ran it: the SFT model (`expert_iteration.policy_from`) samples
`n` answers to each of `num_prompts` training prompts (PPO's prompts; n x num_prompts answers, the episode budget), the
reward model (`expert_iteration.reward_from`) keeps the best finished one, and the SFT model is fine-tuned on those
conversations. Writes `expert_iteration/best_answers.jsonl` (the data), `final/` (a plain causal LM) and `eval.json`:
its greedy answers to the held-out prompts beside the SFT model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_cli.models.answers import best_of_n, score_answers
from rlhf_cli.models.modeling import count_parameters, inference_device, load_causal_lm, load_tokenizer
from rlhf_cli.models.scoring import load_reward_model
from rlhf_cli.runtime import callbacks, distributed, files, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.stages.common import (
    gather_weights,
    method_prompts,
    method_summary,
    model_options,
    policy_vs_sft,
    save_policy,
    toy_world,
    trainer_config,
)
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "expert_iteration"
DATA = "best_answers.jsonl"


def setup(ctx) -> Job:
    """Best-of-n answers to the training prompts (generated, nothing written), the policy and TRL's SFTTrainer."""
    import datasets
    from transformers import set_seed
    from trl import SFTTrainer

    recipe, spec, run_dir = ctx.recipe, ctx.recipe.expert_iteration, ctx.layout.root
    trust = recipe.model.trust_remote_code
    policy_dir = runs.resolve_model_dir(spec.policy_from, run_dir, "sft", f"{STAGE}.policy_from", "reward", recipe)
    reward_dir = runs.resolve_model_dir(spec.reward_from, run_dir, "reward", f"{STAGE}.reward_from", recipe=recipe)
    train, eval_prompts, toy = method_prompts(recipe, ctx.layout, STAGE)
    prompts = [
        list(p) for p in train.shuffle(seed=recipe.seed).select(range(min(spec.num_prompts, len(train))))["prompt"]
    ]

    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    reference = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe)).to(inference_device())
    judge_tokenizer = load_tokenizer(reward_dir, trust_remote_code=trust)
    judge = (load_reward_model(reward_dir, judge_tokenizer, **model_options(recipe)).to(inference_device()),
             judge_tokenizer)  # fmt: skip
    chosen, scores = best_of_n(recipe, reference, tokenizer, judge, prompts, n=spec.n, temperature=spec.temperature,
                               seed=recipe.seed)  # fmt: skip
    rows = [
        {"messages": [*p, {"role": "assistant", "content": a.text}], "score": max(s)}
        for p, a, s in zip(prompts, chosen, scores, strict=True)
        if a.finished and a.text  # an answer the model never ended would teach it not to end
    ]
    if not rows:
        raise UserError(
            f"{STAGE}: no best answer of {spec.n} ended with end-of-text; raise {STAGE}.n or train SFT longer."
        )
    del judge

    set_seed(recipe.seed)
    model = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe))
    n_params = count_parameters(model)
    args = trainer_config(recipe, STAGE, ctx.stage_dir, n_params=n_params,
                          assistant_only_loss=recipe.sft.assistant_only_loss)  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        processing_class=tokenizer,
        callbacks=[callbacks.make_callbacks(ctx.stage_dir, STAGE)],
    )

    def prepared() -> None:
        files.write_text_atomic(ctx.stage_dir / DATA, "".join(json.dumps(r) + "\n" for r in rows))

    def evaluate(output, _checkpoint) -> dict:
        metrics = {
            "train_loss": output.training_loss,
            "train_steps": output.global_step,
            "n": spec.n,
            "episodes": spec.n * len(prompts),
            "train_examples": len(rows),
            "best_answer_score": sum(r["score"] for r in rows) / len(rows),
        }
        if eval_prompts:  # every process: generation is collective when the model is sharded
            world = toy_world(recipe, toy)
            with distributed.whole_model(trainer.model_wrapped, trainer.accelerator) as model:
                own = score_answers(recipe, model, tokenizer, eval_prompts, world)
            metrics.update(policy_vs_sft(recipe, STAGE, own, reference, tokenizer, eval_prompts, world))
        return metrics

    weights = {}

    def export(_staging) -> None:
        weights["state"] = gather_weights(trainer)

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        body = (
            f"`{path_in_run(policy_dir, run_dir)}` fine-tuned by `rlhf expert-iteration` (rlhf-cli) on the best of {spec.n} of its own answers "
            f"to {len(rows)} prompts, as the reward model `{path_in_run(reward_dir, run_dir)}` judged them; {metrics['train_steps']} steps."
        )
        parents = {"policy": policy_dir, "reward": reward_dir}
        data = str(ctx.stage_dir / DATA)
        save_policy(
            tmp, run_dir, trainer.model, tokenizer, recipe, STAGE, parents, data, "expert-iteration policy", body, policy_dir,
            weights["state"],
        )  # fmt: skip

    return Job(trainer, n_params, evaluate, write_final, _summary, prepared=prepared, export=export)


run = stage_runner(STAGE, setup)


def _summary(final: Path, m: dict) -> None:
    method_summary(STAGE, final, m, f"{m['train_steps']} steps on {m['train_examples']} best-of-{m['n']} answers")
