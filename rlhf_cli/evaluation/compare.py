"""`rlhf compare`: every method beside PPO — and PPO — from the same SFT model and reward model, on the same budget and
the same held-out prompts, side by side against the toy world's gold reward.

    rlhf compare --recipe tiny                              # -> runs/tiny/compare/compare.{json,md,png}
    rlhf compare --recipe tiny --methods ppo,grpo,best-of-n --resume

Runs (or with `--resume` keeps) the steps the methods share — pretrain, sft, sample, label, reward — once, then each
method (rlhf_cli.runtime.steps.METHODS: ppo, dpo, best_of_n, expert_iteration, rloo, grpo) and `rlhf eval`, which answers the
same held-out prompts with every model. Per method: gold reward, reward-model score, right-fact rate, KL to the SFT
model, win rate over SFT judged by gold and by the reward model (each with a 95 % bootstrap interval), the answers it
generated to learn (its episodes) and its seconds. The plot draws gold reward against KL, one point per method, and
PPO's KL sweep as a curve where `rlhf sweep` has run in this run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhf_cli.evaluation.evaluate import evaluate_run
from rlhf_cli.evaluation.stats import interval_text
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json, write_json_atomic, write_text_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run
from rlhf_cli.runtime.lock import run_lock
from rlhf_cli.runtime.pipeline import run_pipeline
from rlhf_cli.runtime.steps import DEFAULT_STEPS, METHODS, step_name

SHARED_STEPS = tuple(s for s in DEFAULT_STEPS if s not in ("ppo", "eval", "report"))  # what every method starts from


def parse_methods(methods: str | list[str] | None) -> list[str]:
    """The methods to compare, in table order; an unknown name is a UserError listing the valid ones."""
    if methods is None:
        return list(METHODS)
    names = [step_name(m) for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        what = f"unknown method {', '.join(unknown)}" if unknown else "no method given"
        valid = ",".join(m.replace("_", "-") for m in METHODS)
        raise UserError(f"--methods: {what}; the methods are {valid}.")
    return [m for m in METHODS if m in names]


def run_compare(recipe, run_dir: str | Path, methods=None, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the shared steps, every method and `rlhf eval` into `run_dir`; write compare/compare.{json,md,png}. Every
    step's trainer config and named models are checked before the first step runs (`pipeline.check_steps`)."""
    with run_lock(run_dir):
        return _run_compare(recipe, Path(run_dir), methods, resume=resume, overwrite=overwrite)


def _run_compare(recipe, run_dir: Path, methods, *, resume: bool, overwrite: bool) -> dict:
    chosen = parse_methods(methods)
    shared = [s for s in SHARED_STEPS if recipe.stages is None or s in recipe.stages]
    if methods is None and "label" not in shared and recipe.dpo.data is None:  # DPO learns from rankings
        print("compare: this recipe makes no rankings (no label step) and sets no dpo.data; leaving out dpo.")
        chosen.remove("dpo")
    record = run_pipeline(recipe, run_dir, stages=[*shared, *chosen], resume=resume, overwrite=overwrite)
    evaluate_run(run_dir, recipe=recipe, quiet=True)  # always anew: every method present, on the same prompts
    result = summarise(run_dir, chosen, record)
    layout = RunLayout(run_dir)
    write_json_atomic(layout.compare_dir / "compare.json", result)
    write_text_atomic(layout.compare_dir / "compare.md", markdown(result))
    result["plot"] = path_in_run(plot(result, layout.compare_dir / "compare.png", _sweep_curve(layout)), run_dir)
    write_json_atomic(layout.compare_dir / "compare.json", result)
    return result


def summarise(run_dir: Path, methods: list[str], record: dict) -> dict[str, Any]:
    """One row per method (and SFT's, the baseline) from eval/eval.json, each stage's eval.json and pipeline.json."""
    layout = RunLayout(run_dir)
    ev = read_json(layout.eval_json("eval"))
    models, wins = ev["models"], ev["win_rates"]
    rows = {"sft": _row(models["sft"], None, episodes=0, seconds=None)}
    for method in methods:
        if method not in models:  # rlhf eval skipped it (best_of_n without a reward model)
            continue
        own = read_json(layout.eval_json(method))
        episodes = own.get("episodes")
        if method == "best_of_n":  # inference-time: n answers per held-out prompt, at answer time
            episodes = own["n"] * ev["num_prompts"]
        seconds = record["steps"].get(method, {}).get("seconds")
        rows[method] = _row(models[method], wins.get(f"{method}_vs_sft"), episodes=episodes or 0, seconds=seconds)
    training = {m: r["episodes"] for m, r in rows.items() if m not in ("sft", "dpo", "best_of_n")}
    return {
        "run_dir": path_in_run(run_dir, run_dir),  # "." : the paths this file names are relative to the run
        "recipe": record["recipe"],
        "num_prompts": ev["num_prompts"],
        "methods": rows,
        "same_budget": len(set(training.values())) <= 1,
        "budget": training,
        "episodes_note": "answers a method generated to learn from; dpo learns from the run's rankings (the "
        "samples every method shares), best_of_n generates n per held-out prompt at answer time",
    }


def _row(model: dict, win: dict | None, *, episodes: int, seconds: float | None) -> dict[str, Any]:
    row = {k: model.get(k) for k in ("gold_reward", "rm_score", "right_fact_rate", "kl_to_sft", "finished_rate")}
    row["win_rate_gold"] = (win or {}).get("gold")
    row["win_rate_rm"] = (win or {}).get("reward_model")
    row["episodes"], row["seconds"] = episodes, seconds
    row["episodes_per_s"] = round(episodes / seconds, 2) if seconds and episodes else None
    return row


def _sweep_curve(layout: RunLayout) -> list[tuple[float, float]]:
    """PPO's (KL, gold reward) per point of `rlhf sweep` in this run (its own KL estimate, from ppo/eval.json)."""
    path = layout.sweep_dir("ppo") / "sweep.json"
    if not path.exists():
        return []
    record = read_json(path)
    if record.get("stage", "ppo") != "ppo":
        return []
    points = record.get("points", [])
    return sorted((p["kl"], p["gold_reward"]) for p in points if _ok(p.get("kl")) and _ok(p.get("gold_reward")))


def markdown(result: dict) -> str:
    head = (
        "| method | gold reward | RM score | right facts | KL to SFT | win over SFT (gold) | win over SFT (RM) "
        "| episodes | episodes/s | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in result["methods"].items():
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        rate = "-" if r["episodes_per_s"] is None else f"{r['episodes_per_s']:.1f}"
        cells = [name.replace("_", "-"), *(interval_text(r[k]) for k in ("gold_reward", "rm_score", "right_fact_rate")),
                 interval_text(r["kl_to_sft"], 2), interval_text(r["win_rate_gold"], 2), interval_text(r["win_rate_rm"], 2),
                 str(r["episodes"]), rate, seconds]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    budget = ", ".join(f"{m} {n}" for m, n in result["budget"].items())
    return (
        f"# rlhf compare: {result['recipe']}\n\nEvery method from the same SFT and reward model, judged on the same "
        f"{result['num_prompts']} held-out prompts (greedy answers; best-of-n: the reward model's pick). Intervals: "
        f"95 % bootstrap. Episodes: {result['episodes_note']}.\n\n{head}" + "\n".join(lines) + "\n\n"
        f"Training budget (episodes): {budget}"
        + ("" if result["same_budget"] else " — not the same for every method")
        + ".\n\n![gold reward against KL](compare.png)\n"
    )


def plot(result: dict, path: Path, sweep: list[tuple[float, float]]) -> Path:
    """Gold reward against KL to the SFT model: one point per method with both intervals; PPO's sweep as a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if sweep:
        ax.plot(*zip(*sweep, strict=True), color="0.6", marker=".", label="PPO, rlhf sweep (its own KL estimate)")
    for name, r in result["methods"].items():
        kl, gold = r.get("kl_to_sft"), r.get("gold_reward")
        if not (isinstance(kl, dict) and isinstance(gold, dict) and _ok(kl["mean"]) and _ok(gold["mean"])):
            continue
        err = (
            [[kl["mean"] - kl["low"]], [kl["high"] - kl["mean"]]],
            [[gold["mean"] - gold["low"]], [gold["high"] - gold["mean"]]],
        )
        ax.errorbar(
            kl["mean"], gold["mean"], xerr=err[0], yerr=err[1], fmt="o", capsize=3, label=name.replace("_", "-")
        )
    ax.set_xlabel("KL(policy || SFT model), nats per answer (held-out prompts; best-of-n: log n - (n-1)/n)")
    ax.set_ylabel("gold reward (toy world)")
    ax.set_title(f"Methods on one budget: gold reward against KL to SFT ({result['recipe']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.1, y=0.15)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def print_table(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"rlhf compare: {result['num_prompts']} held-out prompts (95 % intervals)")
    for col in ("method", "gold reward", "RM score", "right facts", "KL to SFT", "win (gold)", "episodes", "s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, r in result["methods"].items():
        table.add_row(
            name.replace("_", "-"), interval_text(r["gold_reward"], 2), interval_text(r["rm_score"], 2), interval_text(r["right_fact_rate"], 2),
            interval_text(r["kl_to_sft"], 2), interval_text(r["win_rate_gold"], 2), str(r["episodes"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"Saved {Path(result['run_dir']) / 'compare'}/compare.{{json,md,png}}")


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
