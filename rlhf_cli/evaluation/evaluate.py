"""`rlhf eval RUN_DIR`: every stage's model on the same held-out prompts, side by side, plus the metric helpers.

    rlhf eval runs/tiny                    # -> a table, and runs/tiny/eval/eval.json

The base (pretrain/final), SFT and PPO models answer the same held-out prompts (`eval.num_prompts`, greedy). Each answer
gets the reward model's score (reward/final, on the chat-rendered conversation) and, on the toy world, the gold reward.
Each model's KL to the SFT model is estimated from answers it *samples* (temperature 1): the mean over answers of
log pi(answer) - log pi_sft(answer), summed over the answer's tokens (the k1 estimator of the sequence-level KL).
Win rates (PPO over SFT, SFT over base) are judged by the reward model and by the gold reward, ties counting half, each
with a 95 % bootstrap interval and a length-controlled variant (`length_controlled_win_rate`). Missing stages are skipped.

The intervals and win rates are in rlhf_cli.evaluation.stats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.data.toy import KINDS, ToyWorld, repeated_parts
from rlhf_cli.evaluation.stats import bootstrap_ci, length_controlled_win_rate, paired_difference_ci, win_rate
from rlhf_cli.models.answers import BEST_OF_N_SETTINGS, KIND_RATES, best_of_n, best_of_n_kl, kind_metrics
from rlhf_cli.models.generation import cut_at_eos, generate, generate_answers, left_pad, render_prompts
from rlhf_cli.models.modeling import end_of_turn_ids, inference_device, load_causal_lm, load_tokenizer
from rlhf_cli.models.scoring import load_reward_model, score
from rlhf_cli.people.feedback import prompt_text
from rlhf_cli.recipe import Recipe, load_recipe
from rlhf_cli.runtime import precision as precisions
from rlhf_cli.runtime.distributed import is_main_process
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json, write_json_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run, resolve_in_run
from rlhf_cli.runtime.steps import METHODS

# name in the tables -> stage folder: the ChatGPT recipe's three models, then every method beside PPO a run holds
MODELS = {"base": "pretrain", "sft": "sft", **{method: method for method in METHODS}}
EXPECTED = ("base", "sft", "ppo")  # the models `rlhf pipeline` makes; a missing one is said, a missing method is not
PAIRS = [*((method, "sft") for method in METHODS), ("sft", "base")]  # (challenger, baseline)
N_SAMPLES = 8  # answers kept in eval.json for the report's side-by-side table


def sample_with_ids(
    model, tokenizer, prompts, *, max_new_tokens: int, batch_size: int = 64, seed: int = 0, precision: str = "auto"
):
    """Sampled answers (temperature 1) as (prompt ids, answer ids incl. the end-of-turn token when finished) pairs."""
    import torch

    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    rendered, out, stops = render_prompts(tokenizer, prompts), [], end_of_turn_ids(tokenizer)
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start : start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id)
        with torch.no_grad(), precisions.inference(model, precision):
            gen = generate(
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                temperature=1.0,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        for prompt_ids, seq in zip(chunk, gen[:, ids.shape[1] :].tolist(), strict=True):
            tokens, finished = cut_at_eos(seq, stops)
            out.append((prompt_ids, seq[: len(tokens) + 1] if finished else tokens))  # with the turn's last token
    return out


def sequence_logprobs(model, pairs, pad_id: int, batch_size: int = 32, precision: str = "auto") -> list[float]:
    """Sum of log p(answer token | context) over each answer's tokens.

    Prompts are left-padded and answers right-padded, so every answer starts at the same column: only the answers'
    logits are computed (`logits_to_keep`) and only their log-softmax is taken in fp32, row by row (TRL's
    selective_log_softmax) — at a 150k-token vocabulary the whole sequence's fp32 log-softmax is gigabytes."""
    import torch
    from trl.trainer.utils import selective_log_softmax

    totals, device = [], next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts, prompt_mask = left_pad([p for p, _ in chunk], pad_id)
        width = max(1, *(len(a) for _, a in chunk))
        answers = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        answer_mask = torch.zeros_like(answers)
        for i, (_, a) in enumerate(chunk):
            answers[i, : len(a)] = torch.tensor(a, dtype=torch.long)
            answer_mask[i, : len(a)] = 1
        ids, mask = torch.cat([prompts, answers], 1).to(device), torch.cat([prompt_mask, answer_mask], 1).to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), precisions.inference(model, precision):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
        logps = selective_log_softmax(logits[:, :-1].float(), answers.to(device)) * answer_mask.to(device)
        totals += logps.sum(1).tolist()
    return totals


# ------------------------------------------------------------------------------------------------------ the run


def _resolve_recipe(run_dir: Path, recipe, overrides):

    if isinstance(recipe, Recipe):
        return recipe
    if recipe is None:
        saved = RunLayout(run_dir).recipe
        if not saved.exists():
            raise UserError(f"{run_dir} has no recipe.yaml; pass --recipe (the recipe the run was made with).")
        recipe = str(saved)
    return load_recipe(recipe, overrides)


def eval_prompts(recipe, run_dir: Path) -> list[list[dict]]:
    """The held-out PPO prompts (the toy world's prompts_eval, or the ppo data's eval split), first eval.num_prompts."""

    spec, toy_dir = recipe.ppo.data, RunLayout(run_dir).toy
    ds = load_stage_data("ppo", spec, toy_dir=toy_dir, seed=recipe.seed)
    _, held = train_eval_split(ds, spec, "ppo", seed=recipe.seed, toy_dir=toy_dir)
    return [list(p) for p in held.select(range(min(recipe.eval.num_prompts, len(held))))["prompt"]]


def evaluate_run(run_dir: str | Path, recipe=None, overrides: list[str] | None = None, *, quiet: bool = False) -> dict:
    """Evaluate every finished model of a run on the same held-out prompts; write <run>/eval/eval.json and return it.

    Args:
        run_dir: the run folder.
        recipe: a Recipe, a recipe name or path; default the run's recipe.yaml.
        overrides: `--set` overrides applied to that recipe.
    """
    import torch
    from rich.console import Console

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; give the folder `rlhf pipeline` wrote (runs/<name>).")
    console = Console()
    rec = _resolve_recipe(run_dir, recipe, overrides)
    torch.manual_seed(rec.seed)
    present = {
        name: RunLayout(run_dir).final(stage)
        for name, stage in MODELS.items()
        if (RunLayout(run_dir).final(stage) / "config.json").exists()
    }
    if "base" not in present and rec.sft.init_from:  # no pre-training stage: the base is the model SFT started from
        present = {"base": rec.sft.init_from, **present}
    missing = [f"{name} ({run_dir / MODELS[name] / 'final'})" for name in EXPECTED if name not in present]
    if missing:
        console.print(f"[yellow]eval: skipping models not in this run: {', '.join(missing)}[/]")
    if not present:
        raise UserError(
            f"{run_dir} has no finished model (pretrain/final, sft/final or ppo/final); run `rlhf pipeline` first."
        )

    prompts = eval_prompts(rec, run_dir)

    texts = [prompt_text(p) for p in prompts]  # the user's side, as the gold reward and the annotator read it
    world = None
    if rec.ppo.data.toy:
        world = ToyWorld(rec.seed)
    rm = None
    rm_dir = RunLayout(run_dir).final("reward")
    if (rm_dir / "config.json").exists():
        rm_tokenizer = load_tokenizer(str(rm_dir))
        rm = (load_reward_model(str(rm_dir), rm_tokenizer).to(inference_device()), rm_tokenizer)
    else:
        console.print(f"[yellow]eval: no reward model at {rm_dir}; reward-model scores are skipped[/]")

    per_model: dict[str, dict[str, Any]] = {}
    sampled: dict[str, list] = {}
    own_logprobs: dict[str, list[float]] = {}  # each model's log-probability of its own samples
    models = {}
    for name, path in present.items():
        tok = load_tokenizer(str(path))
        model = load_causal_lm(str(path)).to(inference_device())
        models[name] = (model, tok)
        if name == "best_of_n":  # an inference-time policy: its answers are the judge's pick of n samples
            made = read_json(Path(path) / BEST_OF_N_SETTINGS)  # the n, temperature and judge the stage was run with
            n, judge, own_judge = made["n"], rm, Path(resolve_in_run(made["reward_model"], run_dir))
            if own_judge.exists() and (rm is None or own_judge.resolve() != rm_dir.resolve()):
                judge_tok = load_tokenizer(str(own_judge))
                judge = (load_reward_model(str(own_judge), judge_tok).to(inference_device()), judge_tok)
            if judge is None:
                console.print(f"[yellow]eval: best_of_n's judge {own_judge} is gone; its answers are skipped[/]")
                del models[name]
                continue
            answers, _ = best_of_n(rec, model, tok, judge, prompts, n=n, temperature=made["temperature"], seed=rec.seed)
        else:
            answers = [
                a[0]
                for a in generate_answers(
                    model,
                    tok,
                    prompts,
                    temperature=0.0,
                    max_new_tokens=rec.eval.max_new_tokens,
                    progress=f"eval {name}",
                    precision=rec.precision,
                )
            ]
        row: dict[str, Any] = {
            "model": path_in_run(path, run_dir),
            "answers": [a.text for a in answers],
            "finished": [a.finished for a in answers],
            "lengths": [a.num_tokens for a in answers],
            "repeats": [float(repeated_parts(a.text) > 0) for a in answers],
        }
        if world is not None:
            judged = [world.judge(t, a.text, a.finished) for t, a in zip(texts, answers, strict=True)]
            row["gold"] = [j["gold"] for j in judged]
            row["kind"] = [j["kind"] for j in judged]
            row["right_fact"] = [float(j["right_fact"]) if "right_fact" in j else None for j in judged]
            row["junk"] = [float(bool(world.junk_words(a.text))) for a in answers]
            row["judged"] = judged
        if rm is not None:
            texts_only = [a.text for a in answers]
            row["rm"] = score(*rm, prompts, texts_only, max_length=rec.reward.max_length, precision=rec.precision)
        per_model[name] = row
        if name == "best_of_n":
            row["kl_to_sft"] = [best_of_n_kl(n)] * len(prompts)  # its analytic bound: it samples from the SFT model
        else:
            sampled[name] = sample_with_ids(
                model, tok, prompts, max_new_tokens=rec.eval.max_new_tokens, seed=rec.seed, precision=rec.precision
            )
            own_logprobs[name] = sequence_logprobs(model, sampled[name], tok.pad_token_id, precision=rec.precision)
        if name != "sft":  # only the SFT model is needed later (the KL's reference): one model in memory at a time
            del models[name]

    # KL(model || sft), from the model's own samples
    if "sft" in models:
        ref, ref_tok = models["sft"]
        for name, own in own_logprobs.items():
            if name != "sft":
                under_ref = sequence_logprobs(ref, sampled[name], ref_tok.pad_token_id, precision=rec.precision)
                per_model[name]["kl_to_sft"] = [o - r for o, r in zip(own, under_ref, strict=True)]
        per_model["sft"]["kl_to_sft"] = [0.0] * len(prompts)

    summary = {name: _summarise(row) for name, row in per_model.items()}
    wins = {}
    for a, b in PAIRS:
        if a in per_model and b in per_model:
            wins[f"{a}_vs_{b}"] = _compare(per_model[a], per_model[b])
    result = {
        "run_dir": path_in_run(run_dir, run_dir),  # "." : the paths this file names are relative to the run
        "recipe": rec.name,
        "num_prompts": len(prompts),
        "max_new_tokens": rec.eval.max_new_tokens,
        "decoding": "greedy; KL from temperature-1 samples",
        "skipped": [m.split(" ")[0] for m in missing],
        "models": summary,
        "win_rates": wins,
        "samples": [_sample_row(texts[i], i, per_model, world) for i in _sample_indices(texts, world)],
        "per_prompt": {
            name: {k: v for k, v in row.items() if k not in ("model", "judged")} for name, row in per_model.items()
        },
    }
    for method in (m for m in METHODS if m in per_model and "sft" in per_model):  # ppo_gold_gain, dpo_rm_gain, ...
        if world is not None:
            result[f"{method}_gold_gain"] = paired_difference_ci(
                per_model[method]["gold"], per_model["sft"]["gold"], seed=rec.seed
            )
            result[f"{method}_kind_gains"] = kind_gains(
                per_model[method]["judged"], per_model["sft"]["judged"], rec.seed
            )
        if rm is not None:
            result[f"{method}_rm_gain"] = paired_difference_ci(
                per_model[method]["rm"], per_model["sft"]["rm"], seed=rec.seed
            )
    if is_main_process():
        path = write_json_atomic(RunLayout(run_dir).eval_json("eval"), result)
        if not quiet:
            _print_tables(console, result, path)
    return result


def kind_gains(own: list[dict], sft: list[dict], seed: int = 0) -> dict:
    """Per kind of prompt, a policy's gold reward and each of the kind's rates against the SFT model's on the same
    prompts (ToyWorld.judge of each pair of answers): the paired difference with its 95 % bootstrap interval."""
    out = {}
    for kind in KINDS:
        pairs = [(a, b) for a, b in zip(own, sft, strict=True) if a.get("kind") == kind]
        if not pairs:
            continue
        out[kind] = {"gold_reward": paired_difference_ci([a["gold"] for a, _ in pairs], [b["gold"] for _, b in pairs],
                                                         seed=seed)}  # fmt: skip
        for name, key in KIND_RATES[kind]:
            out[kind][name] = paired_difference_ci(
                [float(a[key]) for a, _ in pairs], [float(b[key]) for _, b in pairs], seed=seed
            )
    return out


def _sample_indices(texts: list[str], world) -> list[int]:
    """The prompts of the side-by-side table: the first N_SAMPLES, or on the toy world the first two of each kind."""
    if world is None:
        return list(range(min(N_SAMPLES, len(texts))))
    kinds = [world.kind(t) for t in texts]
    per_kind = max(1, N_SAMPLES // len(KINDS))
    return sorted(i for kind in KINDS for i in [j for j, k in enumerate(kinds) if k == kind][:per_kind])


def _sample_row(prompt: str, i: int, per_model: dict, world) -> dict:
    """One prompt's answers for the report's side-by-side table: each model's answer and, on the toy world, the kind
    of prompt, what a good answer holds and each answer's gold reward."""
    row = {"prompt": prompt, **{name: per_model[name]["answers"][i] for name in per_model}}
    if world is not None:
        row["kind"] = world.kind(prompt)
        row["right_answer"] = world.right_answer(prompt)
        row.update({f"{name}_gold": per_model[name]["gold"][i] for name in per_model})
    return row


def _summarise(row: dict) -> dict:
    out = {
        "model": row["model"],
        "finished_rate": sum(row["finished"]) / len(row["finished"]),
        "mean_length": sum(row["lengths"]) / len(row["lengths"]),
    }
    for key, name in (
        ("rm", "rm_score"),
        ("gold", "gold_reward"),
        ("right_fact", "right_fact_rate"),  # one-fact questions only
        ("junk", "junk_rate"),
        ("repeats", "repeat_rate"),  # answers that repeat a word or sentence
        ("kl_to_sft", "kl_to_sft"),
    ):
        if key in row:
            out[name] = bootstrap_ci([v for v in row[key] if v is not None])
    if "judged" in row:
        out["kinds"] = kind_metrics(row["judged"])
    return out


def _compare(a: dict, b: dict) -> dict:
    out = {}
    for key, judge in (("rm", "reward_model"), ("gold", "gold")):
        if key in a and key in b:
            out[judge] = win_rate(a[key], b[key])
            out[f"{judge}_length_controlled"] = length_controlled_win_rate(a[key], b[key], a["lengths"], b["lengths"])
    return out


def _fmt(stat) -> str:
    if stat is None:
        return "-"
    if isinstance(stat, dict) and stat.get("mean") is None:
        return "n/a"
    if isinstance(stat, dict):
        return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"
    return f"{stat:.3f}"


def _print_tables(console, result: dict, path: Path) -> None:
    from rich.table import Table

    table = Table(title=f"Held-out prompts: {result['num_prompts']} (greedy)")
    for col in ("model", "RM score", "gold reward", "right fact", "KL to SFT", "finished", "repeats", "length"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, s in result["models"].items():
        table.add_row(
            name,
            _fmt(s.get("rm_score")),
            _fmt(s.get("gold_reward")),
            _fmt(s.get("right_fact_rate")),
            _fmt(s.get("kl_to_sft")),
            f"{s['finished_rate']:.2f}",
            f"{s['repeat_rate']['mean']:.2f}" if s.get("repeat_rate") else "-",
            f"{s['mean_length']:.1f}",
        )
    console.print(table)
    if result["win_rates"]:
        wins = Table(title="Win rates (ties count half; 95 % bootstrap interval)")
        for col in ("pair", "judge", "win rate", "length-controlled", "W/T/L"):
            wins.add_column(col)
        for pair, judges in result["win_rates"].items():
            for judge in ("reward_model", "gold"):
                if judge in judges:
                    w = judges[judge]
                    wins.add_row(
                        pair.replace("_vs_", " over "),
                        judge.replace("_", " "),
                        _fmt(w),
                        _fmt(judges[f"{judge}_length_controlled"]),
                        f"{w['wins']}/{w['ties']}/{w['losses']}",
                    )
        console.print(wins)
    console.print(f"Saved {path}")
