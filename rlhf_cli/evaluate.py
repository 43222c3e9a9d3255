"""`rlhf eval RUN_DIR`: every stage's model on the same held-out prompts, side by side, plus the metric helpers.

    rlhf eval runs/tiny                    # -> a table, and runs/tiny/eval/eval.json

The base (pretrain/final), SFT and PPO models answer the same held-out prompts (`eval.num_prompts`, greedy). Each answer
gets the reward model's score (reward/final, on the chat-rendered conversation) and, on the toy world, the gold reward.
Each model's KL to the SFT model is estimated from answers it *samples* (temperature 1): the mean over answers of
log pi(answer) - log pi_sft(answer), summed over the answer's tokens (the k1 estimator of the sequence-level KL).
Win rates (PPO over SFT, SFT over base) are judged by the reward model and by the gold reward, ties counting half, each
with a 95 % bootstrap interval and a length-controlled variant (`length_controlled_win_rate`). Missing stages are skipped.

The helpers here (bootstrap intervals, win rates) are shared by the report and the sweep.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhf_cli.errors import UserError

MODELS = {"base": "pretrain", "sft": "sft", "ppo": "ppo"}  # name in the tables -> stage folder
PAIRS = [("ppo", "sft"), ("sft", "base")]  # (challenger, baseline)
N_SAMPLES = 8  # answers kept in eval.json for the report's side-by-side table


# ------------------------------------------------------------------------------------------------------ metric helpers


def bootstrap_ci(values, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of `values` with a percentile-bootstrap interval: {"mean", "low", "high", "n"}."""
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(x.mean())  # resampled means of equal values can round a hair past it: keep low <= mean <= high
    return {"mean": mean, "low": min(float(low), mean), "high": max(float(high), mean), "n": int(x.size)}


def paired_difference_ci(a, b, **kwargs) -> dict[str, float]:
    """Mean of a[i] - b[i] (the same prompts) with a bootstrap interval over prompts."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    return bootstrap_ci([x - y for x, y in zip(a, b, strict=True)], **kwargs)


def outcomes(a, b, tol: float = 1e-9) -> list[float]:
    """Per pair: 1 when a beats b, 0 when b beats a, 0.5 for a tie (|a - b| <= tol)."""
    return [0.5 if abs(x - y) <= tol else float(x > y) for x, y in zip(a, b, strict=True)]


def win_rate(a, b, *, tol: float = 1e-9, **kwargs) -> dict[str, float]:
    """Share of pairs a wins, ties counting half, with a bootstrap interval; also the win/tie/loss counts."""
    out = outcomes(a, b, tol)
    result = bootstrap_ci(out, **kwargs)
    result.update(wins=sum(o == 1 for o in out), ties=sum(o == 0.5 for o in out), losses=sum(o == 0 for o in out))
    return result


def _fit_logistic(x, y, ridge: float = 1e-3, iters: int = 50):
    """Intercept and slope of P(win) = sigmoid(t0 + t1*x) for soft labels y in [0, 1] (Newton / IRLS, tiny ridge)."""
    import numpy as np

    X = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ theta)))
        grad = X.T @ (p - y) + ridge * theta
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def length_controlled_win_rate(a, b, len_a, len_b, *, tol: float = 1e-9, n_resamples: int = 500, seed: int = 0) -> dict:
    """The win rate of a over b at equal length: a logistic regression of the outcome on the length difference.

    Each pair's outcome y (1 win, 0.5 tie, 0 loss — a soft label) is regressed on x = (len_a - len_b) / sd(len_a - len_b)
    as P(a wins) = sigmoid(t0 + t1*x), fitted by maximum likelihood; the length-controlled win rate is the prediction at
    zero length difference, sigmoid(t0). This is the idea of AlpacaEval 2's length-controlled win rate (Dubois et al.
    2024) reduced to the one covariate we have: a judge that only rewards length gives ~0.5, a genuine gain survives.
    The interval re-fits the regression on bootstrap resamples of the pairs. Caveats: where the two models' lengths never
    overlap the value extrapolates (flagged "extrapolated"); where every pair differs by the same length, length and
    model cannot be told apart (mean None); and a quality that really costs words (a courteous closing) is partly
    removed too.
    """
    import numpy as np

    y = np.asarray(outcomes(a, b, tol), dtype=float)
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if y.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "length_coef": math.nan}
    if diff.std() == 0 and diff.mean() != 0:  # every pair differs by the same length: length and model are confounded
        note = "not identifiable: every pair differs in length by the same amount"
        return {
            "mean": None,
            "low": None,
            "high": None,
            "n": int(y.size),
            "length_coef": None,
            "mean_length_diff": float(diff.mean()),
            "note": note,
        }
    scale = diff.std() or 1.0
    x = diff / scale

    def fit(idx):
        return _fit_logistic(x[idx], y[idx])

    t0, t1 = fit(np.arange(y.size))
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, y.size, y.size))[0] for _ in range(n_resamples)]
    low, high = (1 / (1 + np.exp(-np.percentile(boots, [2.5, 97.5])))).tolist()
    return {
        "mean": float(1 / (1 + np.exp(-t0))),
        "low": low,
        "high": high,
        "n": int(y.size),
        "length_coef": float(t1),
        "mean_length_diff": float(diff.mean()),
        "extrapolated": bool(not diff.min() <= 0 <= diff.max()),  # no pair of equal length: sigmoid(t0) extrapolates
    }


# ------------------------------------------------------------------------------------------------------ scoring


def score_conversations(
    model, tokenizer, conversations: list[list[dict]], batch_size: int = 32, precision: str = "auto"
) -> list[float]:
    """A sequence-classification reward model's score of each whole conversation (chat-rendered, right-padded)."""
    import torch

    from rlhf_cli import precision as precisions

    scores, device = [], next(model.parameters()).device
    model.eval()
    for start in range(0, len(conversations), batch_size):
        rows = [
            list(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])
            for c in conversations[start : start + batch_size]
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.no_grad(), precisions.inference(model, precision):
            scores += model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().tolist()
    return scores


def sample_with_ids(
    model, tokenizer, prompts, *, max_new_tokens: int, batch_size: int = 64, seed: int = 0, precision: str = "auto"
):
    """Sampled answers (temperature 1) as (prompt ids, answer ids incl. end-of-text when finished) pairs."""
    import torch

    from rlhf_cli import precision as precisions
    from rlhf_cli.generation import cut_at_eos, left_pad, render_prompts

    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    rendered, out = render_prompts(tokenizer, prompts), []
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start : start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id)
        with torch.no_grad(), precisions.inference(model, precision):
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        for prompt_ids, seq in zip(chunk, gen[:, ids.shape[1] :].tolist(), strict=True):
            tokens, finished = cut_at_eos(seq, tokenizer.eos_token_id)
            out.append((prompt_ids, tokens + [tokenizer.eos_token_id] if finished else tokens))
    return out


def sequence_logprobs(model, pairs, pad_id: int, batch_size: int = 32, precision: str = "auto") -> list[float]:
    """Sum of log p(answer token | context) over each answer's tokens."""
    import torch

    from rlhf_cli import precision as precisions

    totals, device = [], next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = [p + a for p, a in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.no_grad(), precisions.inference(model, precision):
            logp = torch.log_softmax(
                model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), dim=-1
            )
        for i, (p, a) in enumerate(chunk):
            if not a:
                totals.append(0.0)
                continue
            positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            totals.append(float(logp[i, positions.to(device), torch.tensor(a, device=device)].sum()))
    return totals


# ------------------------------------------------------------------------------------------------------ the run


def _resolve_recipe(run_dir: Path, recipe, overrides):
    from rlhf_cli.recipe import Recipe, load_recipe

    if isinstance(recipe, Recipe):
        return recipe
    if recipe is None:
        saved = run_dir / "recipe.yaml"
        if not saved.exists():
            raise UserError(f"{run_dir} has no recipe.yaml; pass --recipe (the recipe the run was made with).")
        recipe = str(saved)
    return load_recipe(recipe, overrides)


def eval_prompts(recipe, run_dir: Path) -> list[list[dict]]:
    """The held-out PPO prompts (the toy world's prompts_eval, or the ppo data's eval split), first eval.num_prompts."""
    from rlhf_cli.data.formats import load_stage_data, train_eval_split

    spec, toy_dir = recipe.ppo.data, run_dir / "data" / "toy"
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

    from rlhf_cli.modeling import inference_device, load_causal_lm, load_tokenizer
    from rlhf_cli.runs import is_main_process, write_json_atomic

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; give the folder `rlhf pipeline` wrote (runs/<name>).")
    console = Console()
    rec = _resolve_recipe(run_dir, recipe, overrides)
    torch.manual_seed(rec.seed)
    present = {
        name: run_dir / stage / "final"
        for name, stage in MODELS.items()
        if (run_dir / stage / "final" / "config.json").exists()
    }
    if "base" not in present and rec.sft.init_from:  # no pre-training stage: the base is the model SFT started from
        present = {"base": rec.sft.init_from, **present}
    missing = [f"{name} ({run_dir / MODELS[name] / 'final'})" for name in MODELS if name not in present]
    if missing:
        console.print(f"[yellow]eval: skipping models not in this run: {', '.join(missing)}[/]")
    if not present:
        raise UserError(
            f"{run_dir} has no finished model (pretrain/final, sft/final or ppo/final); run `rlhf pipeline` first."
        )

    prompts = eval_prompts(rec, run_dir)
    from rlhf_cli.feedback import prompt_text

    texts = [prompt_text(p) for p in prompts]  # the user's side, as the gold reward and the annotator read it
    world = None
    if rec.ppo.data.toy:
        from rlhf_cli.data.toy import ToyWorld

        world = ToyWorld(rec.seed)
    rm = None
    rm_dir = run_dir / "reward" / "final"
    if (rm_dir / "config.json").exists():
        from transformers import AutoModelForSequenceClassification

        rm = (
            AutoModelForSequenceClassification.from_pretrained(rm_dir, use_safetensors=True).to(inference_device()),
            load_tokenizer(str(rm_dir)),
        )
    else:
        console.print(f"[yellow]eval: no reward model at {rm_dir}; reward-model scores are skipped[/]")

    from rlhf_cli.generation import generate_answers

    per_model: dict[str, dict[str, Any]] = {}
    sampled: dict[str, list] = {}
    models = {}
    for name, path in present.items():
        tok = load_tokenizer(str(path))
        model = load_causal_lm(str(path)).to(inference_device())
        models[name] = (model, tok)
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
            "model": str(path),
            "answers": [a.text for a in answers],
            "finished": [a.finished for a in answers],
            "lengths": [a.num_tokens for a in answers],
        }
        if world is not None:
            row["gold"] = [world.gold_reward(t, a.text, a.finished) for t, a in zip(texts, answers, strict=True)]
            row["right_fact"] = [float(bool(world.right_fact(t, a.text))) for t, a in zip(texts, answers, strict=True)]
            row["junk"] = [float(bool(world.junk_words(a.text))) for a in answers]
        if rm is not None:
            convs = [[*p, {"role": "assistant", "content": a.text}] for p, a in zip(prompts, answers, strict=True)]
            row["rm"] = score_conversations(rm[0], rm[1], convs, precision=rec.precision)
        per_model[name] = row
        sampled[name] = sample_with_ids(
            model, tok, prompts, max_new_tokens=rec.eval.max_new_tokens, seed=rec.seed, precision=rec.precision
        )

    # KL(model || sft), from the model's own samples
    if "sft" in models:
        ref, ref_tok = models["sft"]
        for name in ("base", "ppo"):
            if name in models:
                own = sequence_logprobs(
                    models[name][0], sampled[name], models[name][1].pad_token_id, precision=rec.precision
                )
                under_ref = sequence_logprobs(ref, sampled[name], ref_tok.pad_token_id, precision=rec.precision)
                per_model[name]["kl_to_sft"] = [o - r for o, r in zip(own, under_ref, strict=True)]
        per_model["sft"]["kl_to_sft"] = [0.0] * len(prompts)

    summary = {name: _summarise(row) for name, row in per_model.items()}
    wins = {}
    for a, b in PAIRS:
        if a in per_model and b in per_model:
            wins[f"{a}_vs_{b}"] = _compare(per_model[a], per_model[b])
    result = {
        "run_dir": str(run_dir),
        "recipe": rec.name,
        "num_prompts": len(prompts),
        "max_new_tokens": rec.eval.max_new_tokens,
        "decoding": "greedy; KL from temperature-1 samples",
        "skipped": [m.split(" ")[0] for m in missing],
        "models": summary,
        "win_rates": wins,
        "samples": [
            {"prompt": texts[i], **{name: per_model[name]["answers"][i] for name in per_model}}
            for i in range(min(N_SAMPLES, len(prompts)))
        ],
        "per_prompt": {name: {k: v for k, v in row.items() if k != "model"} for name, row in per_model.items()},
    }
    if "ppo" in per_model and "sft" in per_model and world is not None:
        result["ppo_gold_gain"] = paired_difference_ci(
            per_model["ppo"]["gold"], per_model["sft"]["gold"], seed=rec.seed
        )
    if "ppo" in per_model and "sft" in per_model and rm is not None:
        result["ppo_rm_gain"] = paired_difference_ci(per_model["ppo"]["rm"], per_model["sft"]["rm"], seed=rec.seed)
    if is_main_process():
        path = write_json_atomic(run_dir / "eval" / "eval.json", result)
        if not quiet:
            _print_tables(console, result, path)
    return result


def _summarise(row: dict) -> dict:
    out = {
        "model": row["model"],
        "finished_rate": sum(row["finished"]) / len(row["finished"]),
        "mean_length": sum(row["lengths"]) / len(row["lengths"]),
    }
    for key, name in (
        ("rm", "rm_score"),
        ("gold", "gold_reward"),
        ("right_fact", "right_fact_rate"),
        ("junk", "junk_rate"),
        ("kl_to_sft", "kl_to_sft"),
    ):
        if key in row:
            out[name] = bootstrap_ci(row[key])
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
    for col in ("model", "RM score", "gold reward", "right fact", "KL to SFT", "finished", "length"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, s in result["models"].items():
        table.add_row(
            name,
            _fmt(s.get("rm_score")),
            _fmt(s.get("gold_reward")),
            _fmt(s.get("right_fact_rate")),
            _fmt(s.get("kl_to_sft")),
            f"{s['finished_rate']:.2f}",
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
