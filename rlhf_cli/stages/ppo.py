"""Stage 3b: PPO with a KL penalty — the SFT model (the policy) learns to earn reward while staying near the SFT model.

    rlhf ppo --recipe tiny                                 # after `rlhf reward --recipe tiny`
    rlhf ppo --recipe tiny --set ppo.kl_coef=0.2 --overwrite
    accelerate launch -m rlhf_cli ppo --recipe tiny        # many processes (DDP, DeepSpeed)

Policy and reference from `<run>/sft/final` (`ppo.policy_from`), reward model from `<run>/reward/final`
(`ppo.reward_from`, normalised by its `reward_stats.json` when present), value model from the reward model
(`ppo.value_from`). `ppo.rewards` replaces the reward with a weighted sum of reward models and Python functions
(`module:function`, called as f(prompts, answers, finished) -> list of floats). Writes `ppo/final/` (a plain causal LM),
`ppo/metrics.jsonl`, `ppo/checkpoints/` and `ppo/eval.json`: the PPO policy next to the SFT model on held-out prompts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.evaluation.stats import paired_difference_ci
from rlhf_cli.models.answers import kind_metrics
from rlhf_cli.models.generation import check_prompts_fit, generate_answers
from rlhf_cli.models.modeling import count_parameters, frozen_base_in_bf16, frozen_dtype, load_causal_lm, load_tokenizer
from rlhf_cli.people.feedback import prompt_text
from rlhf_cli.ppo import sources
from rlhf_cli.runtime.distributed import whole_loading
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.runtime.runs import resolve_model_dir, write_lineage, write_model_card
from rlhf_cli.stages.common import model_options, trainer_config
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "ppo"


def setup(ctx) -> Job:
    """Prompts, policy, reference, reward sources, value model and the PPO trainer, every input checked; the driver
    (rlhf_cli.stages.driver) does the rest: `ppo/final`, `ppo/eval.json`."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from rlhf_cli.ppo.trainer import PPOTrainer

    recipe, spec, run_dir, stage_dir = ctx.recipe, ctx.recipe.ppo, ctx.layout.root, ctx.stage_dir
    trust = recipe.model.trust_remote_code

    # Data: training prompts, and held-out prompts for the evaluation.
    toy_dir = ctx.layout.toy
    with PartialState().main_process_first():  # one process prepares and caches the data, the others read it
        data = load_stage_data(STAGE, spec.data, toy_dir=toy_dir, seed=recipe.seed)
        train_ds, eval_ds = train_eval_split(data, spec.data, STAGE, seed=recipe.seed, toy_dir=toy_dir)
    eval_prompts = [row["prompt"] for row in eval_ds.select(range(min(spec.eval_prompts, len(eval_ds))))]

    # Models: policy + reference (SFT), reward sources, value model.
    own_reward = spec.reward_from is None and spec.rewards is None  # this run's reward model: its stages are needed
    policy_dir = resolve_model_dir(
        spec.policy_from, run_dir, "sft", "ppo.policy_from", "reward" if own_reward else None, recipe
    )
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    set_seed(recipe.seed)  # a fresh head or resized embeddings start the same in every run of this seed
    options = model_options(recipe)
    policy = load_causal_lm(policy_dir, tokenizer=tokenizer, **options)  # fp32 master weights
    n_params = count_parameters(policy)
    args = trainer_config(recipe, STAGE, stage_dir, n_params=n_params)
    frozen = frozen_dtype(args.bf16)  # the reference and the reward models never train: the compute dtype
    with whole_loading():  # on every process, whatever FSDP's ram-efficient loading does for the trained model
        ref_model = None if spec.lora else load_causal_lm(policy_dir, tokenizer=tokenizer, dtype=frozen, **options)
        reward_funcs, reward_dirs = sources.reward_sources(recipe, run_dir, trust, "bf16" if args.bf16 else "fp32")
    if spec.lora:
        from peft import LoraConfig, get_peft_model

        if args.bf16:
            frozen_base_in_bf16(policy, policy_dir)

        lora = spec.lora
        policy = get_peft_model(
            policy,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    reward_names = [getattr(f, "name", "?") for f, _ in reward_funcs]
    value_model, value_dir = sources.value_model(
        spec, tokenizer, policy_dir, reward_dirs, trust, recipe.model.attn_implementation
    )
    ptx_blocks = sources.ptx_blocks(recipe, run_dir, tokenizer) if (args.ptx_coef or 0) > 0 else None
    if hasattr(train_ds, "__len__"):  # a streamed data set is not read ahead
        check_prompts_fit(
            tokenizer, policy, [row["prompt"] for row in train_ds], args.response_length, "ppo", "ppo.response_length"
        )
    trainer = PPOTrainer(
        args,
        tokenizer,
        policy,
        ref_model,
        value_model,
        reward_funcs,
        train_ds,
        ptx_blocks=ptx_blocks,
        metrics_path=ctx.layout.metrics(STAGE),
        monitors=_gold_monitor(recipe),
    )

    def started() -> None:
        print(
            f"ppo: {trainer.num_steps} steps x {trainer.batch_size} episodes, policy {policy_dir}, value {value_dir}, "
            f"rewards {reward_names} -> {stage_dir}",
            flush=True,
        )

    def evaluate(last, _checkpoint) -> dict:
        """The PPO policy next to the SFT model on held-out prompts (every process: generation is collective when the
        policy is sharded; the main one writes)."""
        metrics = {
            "episodes": trainer.episode,
            "steps": trainer.step,
            "kl_coef": trainer.kl_ctl.value,
            "train_last_step": last,
        }
        if eval_prompts:
            with torch.no_grad():
                metrics.update(_evaluate(recipe, trainer, eval_prompts, toy_dir))
        return metrics

    saved = {}

    def export(staging: Path) -> None:
        """Every process: the policy's weights gathered into `staging` (sharded under ZeRO-3 / FSDP)."""
        saved["note"] = trainer.save_model(staging, source=policy_dir, setting=recipe.model.save_dtype)

    def write_final(tmp: Path, metrics: dict, staging: Path) -> None:
        """A plain causal-LM folder (the weights every process gathered into `staging`), tokenizer, card, lineage."""
        shutil.copytree(staging, tmp, dirs_exist_ok=True)
        tokenizer.save_pretrained(tmp)
        write_model_card(
            tmp,
            title=f"{recipe.name}: PPO policy",
            body=f"PPO with a KL penalty (beta {trainer.kl_ctl.value:.4g}, {trainer.episode} episodes) from "
            f"`{path_in_run(policy_dir, run_dir)}`, rewards: {reward_names}.\n\nMade with `rlhf ppo` (rlhf-cli).\n\n{saved.get('note', '')}",
        )
        parents = {"policy": policy_dir, "value": value_dir, **reward_dirs}
        write_lineage(tmp, run_dir=run_dir, stage=STAGE, parents=parents, data=spec.data.model_dump(), recipe=recipe)

    return Job(trainer, n_params, evaluate, write_final, _summary, prepared=started, export=export)


run = stage_runner(STAGE, setup)


# ------------------------------------------------------------------------------------------------------ evaluation


def _evaluate(recipe, trainer, prompts: list[list[dict]], toy_dir: Path) -> dict:
    """The PPO policy next to the SFT model on held-out prompts: greedy answers scored by the reward and (toy world)
    the gold reward, with a paired 95 % bootstrap interval of the gain; KL to the reference on sampled answers."""
    tok, args = trainer.tokenizer, trainer.args
    gen = {
        "max_new_tokens": args.response_length,
        "temperature": 0.0,
        "batch_size": args.local_rollout_forward_batch_size,
    }
    gen["precision"] = recipe.precision
    with trainer.whole_policy() as policy:
        ppo_answers = [a[0] for a in generate_answers(policy, tok, prompts, **gen, progress="eval ppo")]
    with trainer.reference() as ref:
        sft_answers = [a[0] for a in generate_answers(ref, tok, prompts, **gen, progress="eval sft")]
    world = None
    if recipe.ppo.data.toy:
        world = ToyWorld(recipe.seed)
    out: dict = {"num_prompts": len(prompts)}
    per_model = {}
    for name, answers in (("ppo", ppo_answers), ("sft", sft_answers)):
        texts, fin = [a.text for a in answers], [a.finished for a in answers]
        scores, _ = trainer.score(prompts, texts, torch_bool(fin))
        row = {
            "rm_score": _mean(scores.tolist()),
            "length": _mean([a.num_tokens for a in answers]),
            "finished_rate": _mean([float(f) for f in fin]),
        }
        if world:
            judged = [world.judge(prompt_text(p), t, f) for p, t, f in zip(prompts, texts, fin, strict=True)]
            gold = [j["gold"] for j in judged]
            row["gold_reward"] = _mean(gold)
            row["right_fact_rate"] = _mean(float(j["right_fact"]) for j in judged if "right_fact" in j)
            row["kinds"] = kind_metrics(judged)
            per_model[name] = gold
        out[name] = row
    kl, lengths = trainer.sequence_kl(prompts)
    out["ppo"]["kl_to_reference"] = _mean(kl)
    out["ppo"]["sampled_length"] = _mean(lengths)
    out["rm_score_gain"] = out["ppo"]["rm_score"] - out["sft"]["rm_score"]
    if world:
        gain = paired_difference_ci(per_model["ppo"], per_model["sft"], seed=recipe.seed)
        out["gold_gain"] = {k: round(v, 6) if k != "n" else v for k, v in gain.items()}
    out["examples"] = [
        {"prompt": prompt_text(p), "sft": s.text, "ppo": q.text}
        for p, s, q in list(zip(prompts, sft_answers, ppo_answers, strict=True))[:5]
    ]
    return out


def _gold_monitor(recipe) -> dict:
    """On the toy world, the gold reward of each step's rollouts, logged beside the reward model's score (not trained
    on): the report draws both, so a reward model being gamed shows as the two curves parting."""
    if not recipe.ppo.data.toy:
        return {}

    world = ToyWorld(recipe.seed)

    def gold(prompts, answers, finished):
        return [world.gold_reward(prompt_text(p), a, f) for p, a, f in zip(prompts, answers, finished, strict=True)]

    return {"gold": gold}


def torch_bool(values):
    import torch

    return torch.tensor(values, dtype=torch.bool)


def _mean(xs) -> float:
    xs = list(xs)
    return round(sum(xs) / len(xs), 6) if xs else float("nan")


def _summary(final: Path, m: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"ppo: saved the policy to {final} ({m['episodes']} episodes, beta {m['kl_coef']:.4g})")
    if "ppo" not in m:
        return
    table = Table(title="held-out prompts: SFT vs PPO")
    for col in ("model", "rm score", "gold", "length", "finished", "KL"):
        table.add_column(col)
    for name in ("sft", "ppo"):
        r = m[name]
        table.add_row(
            name,
            f"{r['rm_score']:+.3f}",
            f"{r.get('gold_reward', float('nan')):+.3f}",
            f"{r['length']:.1f}",
            f"{r['finished_rate']:.2f}",
            f"{r.get('kl_to_reference', 0.0):.3f}",
        )
    console.print(table)
    if "gold_gain" in m:
        g = m["gold_gain"]
        console.print(f"gold gain PPO-SFT {g['mean']:+.3f} (95% CI {g['low']:+.3f} .. {g['high']:+.3f})")
    ex = Table(title="answers side by side", show_lines=True)
    for col in ("prompt", "sft", "ppo"):
        ex.add_column(col, overflow="fold")
    for e in m["examples"][:3]:
        ex.add_row(e["prompt"], e["sft"], e["ppo"])
    console.print(ex)
