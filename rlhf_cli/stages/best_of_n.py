"""Best-of-n — an inference-time policy: the SFT model samples n answers to a prompt, the reward model keeps its best.

    rlhf best-of-n --recipe tiny                           # after `rlhf reward --recipe tiny` (or `rlhf pipeline`)
    rlhf best-of-n --recipe tiny --set best_of_n.n=64 --overwrite

Nothing is trained: `best_of_n/final/` is the generator (the SFT model, `best_of_n.policy_from`; loads with
`from_pretrained`) with `best_of_n.json` naming n, the temperature and the judge (`best_of_n.reward_from`). Its
`eval.json` judges the chosen answers to the held-out prompts beside the SFT model's greedy ones (on the toy world: gold
reward, right-fact rate, the gain with a paired 95 % bootstrap interval); its KL to the generator is at most
log n - (n-1)/n nats (Stiennon et al. 2020). `rlhf eval` and `rlhf compare` choose answers the same way.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_cli.models.answers import BEST_OF_N_SETTINGS as SETTINGS
from rlhf_cli.models.answers import answer_metrics, best_of_n, best_of_n_kl
from rlhf_cli.models.modeling import count_parameters, inference_device, load_causal_lm, load_tokenizer
from rlhf_cli.models.scoring import load_reward_model
from rlhf_cli.runtime import files, runs
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.stages.common import (
    method_prompts,
    method_summary,
    model_options,
    policy_vs_sft,
    save_policy,
    toy_world,
)
from rlhf_cli.stages.driver import Job, NoTraining, stage_runner

STAGE = "best_of_n"


def setup(ctx) -> Job:
    """The generator and the judge, every input checked; the driver (rlhf_cli.stages.driver) does the rest."""
    recipe, spec, run_dir = ctx.recipe, ctx.recipe.best_of_n, ctx.layout.root
    trust = recipe.model.trust_remote_code
    policy_dir = runs.resolve_model_dir(spec.policy_from, run_dir, "sft", "best_of_n.policy_from", "reward", recipe)
    reward_dir = runs.resolve_model_dir(spec.reward_from, run_dir, "reward", "best_of_n.reward_from", recipe=recipe)
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    model = load_causal_lm(policy_dir, tokenizer=tokenizer, **model_options(recipe)).to(inference_device())
    judge_tokenizer = load_tokenizer(reward_dir, trust_remote_code=trust)
    judge = (load_reward_model(reward_dir, judge_tokenizer, **model_options(recipe)).to(inference_device()),
             judge_tokenizer)  # fmt: skip
    _, prompts, toy = method_prompts(recipe, ctx.layout, STAGE)
    settings = {  # the models relative to the run when they are its own (evaluate resolves them: a run can move)
        "n": spec.n,
        "temperature": spec.temperature,
        "reward_model": path_in_run(reward_dir, run_dir),
        "generator": path_in_run(policy_dir, run_dir),
    }

    def evaluate(_output, _checkpoint) -> dict:
        metrics = {**settings, "kl_to_sft_bound": round(best_of_n_kl(spec.n), 6), "episodes": spec.n * len(prompts)}
        if prompts:  # every process (as every stage's evaluation; the main one writes)
            world = toy_world(recipe, toy)
            draw = {"n": spec.n, "temperature": spec.temperature, "seed": recipe.seed}
            chosen, scores = best_of_n(recipe, model, tokenizer, judge, prompts, **draw)
            own = answer_metrics(prompts, chosen, world)
            own[0]["rm_score"] = sum(max(row) for row in scores) / len(scores)  # the judge's score of its picks
            metrics["sample_rm_score"] = sum(sum(row) / len(row) for row in scores) / len(scores)  # of one sample
            metrics.update(policy_vs_sft(recipe, STAGE, own, model, tokenizer, prompts, world))
        return metrics

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        body = (
            f"An inference-time policy made by `rlhf best-of-n` (rlhf-cli): these weights are the generator "
            f"`{path_in_run(policy_dir, run_dir)}`; to answer as the policy does, sample {spec.n} answers at temperature {spec.temperature} "
            f"and keep the one the reward model `{path_in_run(reward_dir, run_dir)}` scores highest ({SETTINGS})."
        )
        parents = {"policy": policy_dir, "reward": reward_dir}
        save_policy(
            tmp, run_dir, model, tokenizer, recipe, STAGE, parents, None, f"best-of-{spec.n} policy", body, policy_dir
        )
        files.write_json_atomic(tmp / SETTINGS, settings)

    return Job(NoTraining(ctx.stage_dir), count_parameters(model), evaluate, write_final, _summary)


run = stage_runner(STAGE, setup)


def _summary(final: Path, m: dict) -> None:
    method_summary(STAGE, final, m, f"best of {m['n']} answers by {m['reward_model']}")
