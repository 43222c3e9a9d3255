"""`rlhf report RUN_DIR`: the report card of a run — report/report.md, report/report.json and PNG plots.

    rlhf report runs/tiny                  # -> runs/tiny/report/report.md

Everything comes from files the stages left: each stage's `metrics.jsonl` (loss curves, PPO's reward and KL over
training) and `eval.json`, `eval/eval.json` (`rlhf eval`: the models side by side) and `pipeline.json` (timings). A missing
file leaves its section out. `report.json["headline"]` holds the numbers that say whether the recipe worked: base bits per
byte, SFT finished-answer rate, reward-model accuracy, and PPO's gold reward against SFT's with a 95 % bootstrap interval.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

from rlhf_cli.data.toy import GOLD_IN_WORDS
from rlhf_cli.evaluation.stats import interval_text
from rlhf_cli.models.answers import KIND_RATES
from rlhf_cli.models.scoring import length_caution
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import write_json_atomic, write_text_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run
from rlhf_cli.runtime.steps import METHODS

STAGES = ("pretrain", "sft", "reward", "ppo")
AT_MOST = {"junk_rate"}  # targets that are ceilings; every other target is a floor


# ------------------------------------------------------------------------------------------------------ reading


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def _number(value) -> float | None:
    """A metric as a float: a plain number, or the 'mean' of a {mean, low, high} dict."""
    if isinstance(value, dict):
        value = value.get("mean", value.get("value"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval(value) -> dict | None:
    """The {mean, low, high} of an interval as every stage writes it ({mean, low, high, n}); None for anything else."""
    if isinstance(value, dict) and {"mean", "low", "high"} <= set(value):
        return {k: value[k] for k in ("mean", "low", "high")}
    return None


def headline(run_dir: Path) -> dict[str, Any]:
    """The numbers that say whether the recipe worked (None where the run lacks them)."""
    run_dir = Path(run_dir)
    pre, sft, rew, ppo = (_read_json(RunLayout(run_dir).eval_json(s)) for s in STAGES)
    ev = _read_json(RunLayout(run_dir).eval_json("eval"))
    models = ev.get("models", {})
    out: dict[str, Any] = {
        "base_bits_per_byte": _number(pre.get("bits_per_byte")),
        "untrained_bits_per_byte": _number(pre.get("untrained_bits_per_byte")),
        "base_probe_accuracy": _number(pre.get("probe_accuracy")),
        "sft_finished_rate": _number(models.get("sft", {}).get("finished_rate")),
        "reward_accuracy": _number(rew.get("accuracy")),
        "reward_accuracy_interval": _interval(rew.get("accuracy")),
        "reward_gold_accuracy": _number(rew.get("gold_accuracy")),
        "reward_train_accuracy": _number(rew.get("train_accuracy")),
        "sft_gold_reward": _number(models.get("sft", {}).get("gold_reward")),
        "ppo_gold_reward": _number(models.get("ppo", {}).get("gold_reward")),
        **{f"{m}_right_fact_rate": _number(models.get(m, {}).get("right_fact_rate")) for m in ("base", "sft", "ppo")},
        "junk_rate": max(
            (v for m in ("sft", "ppo") if (v := _number(models.get(m, {}).get("junk_rate"))) is not None), default=None
        ),
        "ppo_gold_gain": _interval(ev.get("ppo_gold_gain")),
        "ppo_kl_to_sft": _number(models.get("ppo", {}).get("kl_to_sft")),
        "source": {"sft_finished_rate": "eval/eval.json", "ppo_gold_gain": "eval/eval.json"},
    }
    if out["sft_finished_rate"] is None:  # no `rlhf eval` yet: the stages' own evaluations
        out["sft_finished_rate"] = _number(sft.get("finished_rate"))
        out["source"]["sft_finished_rate"] = "sft/eval.json"
    if out["ppo_gold_gain"] is None:
        out["ppo_gold_gain"] = _interval(ppo.get("gold_gain"))
        out["source"]["ppo_gold_gain"] = "ppo/eval.json"
    out["source"]["gold_reward"] = "eval/eval.json"
    for key in ("sft_gold_reward", "ppo_gold_reward"):  # the PPO stage's own side-by-side: {"sft": {...}, "ppo": {...}}
        if out[key] is None:
            out[key] = _number(ppo.get(key.split("_")[0], {}).get("gold_reward"))
            out["source"]["gold_reward"] = "ppo/eval.json"
    wins = ev.get("win_rates", {}).get("ppo_vs_sft", {})
    out["ppo_win_rate_gold"] = _interval(wins.get("gold"))
    out["ppo_win_rate_gold_length_controlled"] = _interval(wins.get("gold_length_controlled"))
    out["ppo_win_rate_rm"] = _interval(wins.get("reward_model"))
    return out


def checks(head: dict, targets: dict | None) -> dict[str, dict]:
    """The recipe's `targets:` against the headline: {"name >= target": {"value", "target", "met"}}; met is None when
    the run lacks the number (a stage not run, or no gold reward off the toy world)."""
    out = {}
    for key, target in (targets or {}).items():
        if target is None:
            continue
        value = head.get("ppo_gold_gain") if key.startswith("ppo_gold_gain") else head.get(key)
        if isinstance(value, dict):
            value = value.get("low" if key.endswith("_low") else "mean")
        op = "<=" if key in AT_MOST else ">="
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out[f"{key} {op} {target:g}"] = {"value": value, "target": target, "met": met}
    return out


def _disagreement(ev: dict, pair: str, better: str, worse: str) -> str | None:
    """The reward model and the gold reward preferring different models of `pair`, by more than 20 points."""
    rm, gold = (_number((ev.get("win_rates", {}).get(pair) or {}).get(j)) for j in ("reward_model", "gold"))
    if rm is None or gold is None or (rm - 0.5) * (gold - 0.5) >= 0 or abs(rm - gold) <= 0.2:
        return None
    return (
        f"the reward model and the gold reward disagree about {better} against {worse}: the reward model prefers "
        f"{better if rm > 0.5 else worse} ({better} wins {rm:.0%}), the gold reward {better if gold > 0.5 else worse} "
        f"({gold:.0%})"
    )


def red_flags(run_dir: Path) -> list[str]:
    """Signs that a run's result misleads, whatever its targets (`rlhf pipeline` exits 3): the reward model and the
    gold reward disagree about PPO against SFT (the comparison PPO optimised), or the reward model is no better than
    chance."""
    ev = _read_json(RunLayout(run_dir).eval_json("eval"))
    rew = _read_json(RunLayout(run_dir).eval_json("reward"))
    flags = []
    if found := _disagreement(ev, "ppo_vs_sft", "PPO", "SFT"):
        flags.append(f"{found} - PPO optimised something other than what raters want")
    acc = rew.get("accuracy")
    if isinstance(acc, dict) and acc["low"] <= 0.5 and acc.get("n", 0) >= 20:
        flags.append(
            f"the reward model is no better than chance on held-out pairs (accuracy {acc['mean']:.3f}, "
            f"95 % interval from {acc['low']:.3f})"
        )
    return flags


def cautions(run_dir: Path) -> list[str]:
    """Findings to read before trusting the reward model further (listed; not a failed run): it disagrees with the gold
    reward about SFT against base - answers from another model than the one whose samples it was trained on - or its
    score follows answer length (the same sentence `rlhf reward inspect` prints)."""
    ev = _read_json(RunLayout(run_dir).eval_json("eval"))
    out = []
    if found := _disagreement(ev, "sft_vs_base", "SFT", "base"):
        out.append(
            f"{found}: off the SFT model's answers, on which it was trained, the reward model does not judge as "
            "the raters do (optimising against it from the base model would mislead)"
        )
    if found := length_caution(_read_json(RunLayout(run_dir).eval_json("reward")).get("length")):
        out.append(found)  # the sentence `rlhf reward inspect` prints
    if found := padding_caution(ev.get("models", {})):
        out.append(found)
    return out


def padding_caution(models: dict) -> str | None:
    """PPO's greedy answers repeating a word or sentence 10 points more often than SFT's, or ending 5 points less
    often: the policy pads its answers (a reward model that pays for length pays for repeats too), and greedy decoding
    can turn a likely repeat into a loop to the token limit."""
    sft, ppo = models.get("sft") or {}, models.get("ppo") or {}
    repeats = [_number(m.get("repeat_rate")) for m in (sft, ppo)]
    finished = [_number(m.get("finished_rate")) for m in (sft, ppo)]
    more_repeats = None not in repeats and repeats[1] - repeats[0] >= 0.10
    fewer_finished = None not in finished and finished[0] - finished[1] >= 0.05
    if not (more_repeats or fewer_finished):
        return None
    cut = [None if f is None else 1 - f for f in finished]
    return (
        f"PPO's answers repeat a word or sentence in {_pct(repeats[1])} of prompts (SFT {_pct(repeats[0])}) and "
        f"{_pct(cut[1])} are cut off at the token limit (SFT {_pct(cut[0])}): the policy pads its "
        "answers, which a reward model that pays for length scores up, and greedy decoding can loop on a repeat; "
        "the KL penalty (ppo.kl_coef) is what holds it near SFT (`rlhf sweep --param ppo.kl_coef` shows the trade)"
    )


def assess(run_dir: Path) -> dict:
    """{"checks", "missed", "red_flags", "cautions"} of a run, against the targets of the recipe it saved (recipe.yaml)."""
    import yaml

    saved = RunLayout(run_dir).recipe
    try:
        targets = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("targets") if saved.exists() else None
    except yaml.YAMLError:
        targets = None
    result = checks(headline(run_dir), targets)
    missed = [
        f"{name} (got {c['value']:.3f})" if c["met"] is False else f"{name} (not measured)"
        for name, c in result.items()
        if c["met"] is not True
    ]
    return {"checks": result, "missed": missed, "red_flags": red_flags(run_dir), "cautions": cautions(run_dir)}


def step_headline(run_dir: Path, step: str) -> dict[str, Any]:
    """One step's headline metric for the pipeline's summary table: {"name", "value", "text"}."""
    run_dir = Path(run_dir)
    if step in ("sample", "label"):
        path = RunLayout(run_dir).output(step)
        n = len(read_metrics(path))
        return {"name": "rows", "value": n, "text": f"{n} {'prompts sampled' if step == 'sample' else 'rankings'}"}
    if step == "report":
        report = path_in_run(RunLayout(run_dir).report_md, run_dir)  # pipeline.json stores it: relative to the run
        return {"name": "report", "value": report, "text": report}
    head = headline(run_dir)
    if step == "pretrain":
        v = head["base_bits_per_byte"]
        return {"name": "bits_per_byte", "value": v, "text": "" if v is None else f"held-out bits/byte {v:.3f}"}
    if step == "sft":
        v = _number(_read_json(RunLayout(run_dir).eval_json("sft")).get("finished_rate"))
        return {"name": "finished_rate", "value": v, "text": "" if v is None else f"finished answers {v:.1%}"}
    if step == "reward":
        v, gold = head["reward_accuracy"], head["reward_gold_accuracy"]
        text = "" if v is None else f"held-out pair accuracy {v:.1%}"
        if v is not None and gold is not None:
            text += f" (gold order {gold:.1%})"
        return {"name": "accuracy", "value": v, "text": text}
    if step == "eval":
        wins, kl = head.get("ppo_win_rate_gold"), head.get("ppo_kl_to_sft")
        if wins is None:
            return {"name": "ppo_win_rate_gold", "value": None, "text": ""}
        text = f"PPO beats SFT (gold) {wins['mean']:.0%}" + ("" if kl is None else f", KL {kl:.3f}")
        return {"name": "ppo_win_rate_gold", "value": wins["mean"], "text": text}
    if step in METHODS and step != "ppo":  # a method beside PPO: its own check against SFT
        own = _read_json(RunLayout(run_dir).eval_json(step))
        gain, n = _interval(own.get("gold_gain")), own.get("eval_prompts")
        if gain is None:
            loss = own.get("train_loss")
            return {"name": "train_loss", "value": loss, "text": "" if loss is None else f"train loss {loss:.4f}"}
        return _gain_headline(gain, n)
    # PPO's gain as the report gives it: from `rlhf eval` (eval.num_prompts) where it ran, else the stage's own check
    ev, own = _read_json(RunLayout(run_dir).eval_json("eval")), _read_json(RunLayout(run_dir).eval_json("ppo"))
    gain, n = _interval(ev.get("ppo_gold_gain")), ev.get("num_prompts")
    if gain is None:
        gain, n = _interval(own.get("gold_gain")), own.get("num_prompts")
    if gain is None:
        return {"name": "gold_gain", "value": None, "text": ""}
    return _gain_headline(gain, n)


def _gain_headline(gain: dict, n: int | None) -> dict[str, Any]:
    """A policy's gold-reward gain over SFT as one summary line (PPO and DPO alike)."""
    text = f"gold reward {gain['mean']:+.3f} vs SFT [{gain['low']:+.3f}, {gain['high']:+.3f}]"
    text += f" on {n} held-out prompts" if n else ""
    return {"name": "gold_gain", "value": gain["mean"], "text": text}


# ------------------------------------------------------------------------------------------------------ plots


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(row.get("step", i))
            ys.append(v)
    return xs, ys


def _numeric_keys(rows: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    return list(keys)


def _loss_keys(rows: list[dict]) -> list[str]:
    """Loss-like keys: loss, eval_loss, loss/policy_avg, policy_loss, ..."""
    # train_loss is the Trainer's end-of-run average (one summary row), not a point of the curve
    return [k for k in _numeric_keys(rows) if re.search(r"(^|[/_])loss($|[/_])", k) and k not in ("train_loss",)]


def plot_losses(metrics: dict[str, list[dict]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = [s for s in STAGES if _loss_keys(metrics.get(s, []))]
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for key in _loss_keys(metrics[stage])[:4]:
            xs, ys = _series(metrics[stage], key)
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, label=key)
        if stage == "reward":  # -log sigmoid(0): a reward model that scores every answer alike
            ax.axhline(math.log(2), color="grey", ls="--", lw=1, label="chance (ln 2)")
        ax.set_title(f"{stage}: loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)" if stage in ("pretrain", "sft") else "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Loss curves of every stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward_accuracy(reward_eval: dict, reward_metrics: list[dict], path: Path) -> Path | None:
    """Pairwise accuracy with 95 % intervals: on training pairs and held-out pairs (against the annotator's labels) and
    against the gold order; the accuracy during training beside it when the stage logged it more than once."""
    import matplotlib.pyplot as plt

    bars = {}  # label -> (value, error below, error above, colour)
    for label, key, colour in (
        ("training pairs\n(annotator labels)", "train_accuracy", "tab:grey"),
        ("held-out pairs\n(annotator labels)", "accuracy", "tab:blue"),
        ("held-out answers\n(gold order)", "gold_accuracy", "tab:green"),
    ):
        v = _number(reward_eval.get(key))
        if v is not None:
            ci = _interval(reward_eval.get(key)) or {"low": v, "high": v}
            bars[label] = (v, max(0.0, v - ci["low"]), max(0.0, ci["high"] - v), colour)
    curve_key = next((k for k in ("eval_accuracy", "accuracy") if len(_series(reward_metrics, k)[0]) >= 2), None)
    if not bars and curve_key is None:
        return None
    panels = int(bool(bars)) + int(bool(curve_key))
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.8), squeeze=False)
    if bars:
        ax = axes[0][0]
        values = [b[0] for b in bars.values()]
        ax.bar(
            list(bars),
            values,
            yerr=[[b[1] for b in bars.values()], [b[2] for b in bars.values()]],
            capsize=6,
            color=[b[3] for b in bars.values()],
        )
        for i, b in enumerate(bars.values()):  # above the error bar's cap, not on it
            ax.text(i, b[0] + b[2] + 0.02, f"{b[0]:.2f}", ha="center", va="bottom")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("pairwise accuracy")
        ax.set_title("Reward model: pairwise accuracy (95 % interval)")
        ax.legend(fontsize=8, loc="lower right")
    if curve_key:
        ax = axes[0][-1]
        ax.plot(*_series(reward_metrics, curve_key), marker="o")
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("step")
        ax.set_ylabel("pairwise accuracy (batch)")
        ax.set_title("Reward model: accuracy during training")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pick(keys: list[str], patterns: tuple[str, ...]) -> str | None:
    for pattern in patterns:
        for k in keys:
            if re.fullmatch(pattern, k):
                return k
    return None


def plot_ppo(ppo_metrics: list[dict], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    keys = _numeric_keys(ppo_metrics)
    reward_key = _pick(
        keys, (r"rm_score", r"objective/scores", r"score", r"scores", r".*rm_score.*", r".*score.*", r"reward")
    )
    kl_key = _pick(keys, (r"kl", r"objective/kl", r".*kl$", r".*kl.*"))
    gold_key = _pick(keys, (r"gold", r"gold_reward", r".*gold.*"))
    if reward_key is None and kl_key is None:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    ax = axes[0]
    if reward_key:
        ax.plot(*_series(ppo_metrics, reward_key), color="tab:blue", marker="o", ms=3, label="reward-model score")
    if gold_key:
        ax.plot(*_series(ppo_metrics, gold_key), color="tab:green", marker="o", ms=3, label="gold reward")
    ax.set_title("PPO: its sampled answers to training prompts")
    ax.set_ylabel("mean score of the batch's answers")
    ax.legend(fontsize=8)
    ax = axes[1]
    if kl_key:
        ax.plot(*_series(ppo_metrics, kl_key), color="tab:red", marker="o", ms=3)
        ax.set_ylabel("KL to SFT (nats per answer)")
    ax.set_title("PPO: KL to the SFT reference")
    for ax in axes:
        ax.set_xlabel("PPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_models(models: dict, path: Path) -> Path | None:
    """Gold reward and reward-model score of base, SFT, PPO (and each method a run holds) on the same prompts, with
    95 % intervals."""
    import matplotlib.pyplot as plt

    panels = [
        (k, t)
        for k, t in (("gold_reward", "gold reward"), ("rm_score", "reward-model score"))
        if any(isinstance(m.get(k), dict) for m in models.values())
    ]
    if not panels:
        return None
    width = 4.6 if len(models) <= 3 else 1.0 + 0.85 * len(models)  # room for every method's label
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        names = [n for n, m in models.items() if isinstance(m.get(key), dict)]
        means = [models[n][key]["mean"] for n in names]
        err = [
            [max(0.0, m - models[n][key]["low"]) for n, m in zip(names, means, strict=True)],
            [max(0.0, models[n][key]["high"] - m) for n, m in zip(names, means, strict=True)],
        ]
        colours = {"base": "tab:grey", "sft": "tab:blue", "ppo": "tab:orange"}  # a method beside PPO: green
        labels = [n.replace("_", "-").replace("expert-iteration", "expert\niteration") for n in names]
        ax.bar(labels, means, yerr=err, capsize=5, color=[colours.get(n, "tab:green") for n in names])
        span = max(max(means), 0) - min(min(means), 0) or 1.0
        for i, m in enumerate(means):  # beyond the error bar's cap: above a positive bar, below a negative one
            up = m >= 0
            y = m + err[1][i] + 0.03 * span if up else m - err[0][i] - 0.03 * span
            ax.text(i, y, f"{m:.3f}", ha="center", va="bottom" if up else "top", fontsize=8)
        ax.margins(y=0.15)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel(title)
        ax.set_title(f"Held-out {title}")
    who = "Base, SFT and PPO" if set(models) <= {"base", "sft", "ppo"} else "Every model of the run"
    how = "greedy; best-of-n: the reward model's pick" if "best_of_n" in models else "greedy"
    fig.suptitle(f"{who} on the same held-out prompts ({how}; 95 % interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# per kind: (its title, its rates as (key, label), the main one first); answers.KIND_RATES says which rates a kind has
KIND_TITLES = {"fact": "one-fact questions", "describe": "descriptions", "unknown": "animals the world lacks",
               "harm": "requests to harm an animal"}  # fmt: skip
RATE_LABELS = {
    "right_fact_rate": "right-fact rate", "right_facts": "right facts (of 4)", "wrong_facts": "wrong facts",
    "honest_rate": "honest: says it does not know", "made_up_rate": "makes a fact up", "decline_rate": "declines",
    "complied_rate": "tells how",
}  # fmt: skip
KIND_LABELS = {
    kind: (title, tuple((name, RATE_LABELS[name]) for name, _ in KIND_RATES[kind]))
    for kind, title in KIND_TITLES.items()
}


def _kind_changes(before: dict, after: dict) -> str:
    """Each kind's main rate from one model to another, in words ("descriptions, right facts (of 4) 2.5 -> 3.1; ...")."""
    parts = []
    for kind, (title, rates) in KIND_LABELS.items():
        key, label = rates[0]
        a, b = ((m.get("kinds") or {}).get(kind, {}).get(key) for m in (before, after))
        if a and b:
            shown = [f"{x['mean']:.1f}" if key == "right_facts" else f"{x['mean']:.0%}" for x in (a, b)]
            parts.append(f"{title}, {label} {shown[0]} -> {shown[1]}")
    return "; ".join(parts)


def _kinds_markdown(models: dict) -> list[str]:
    """Each kind of prompt, each model: the gold reward and what the kind measures, with 95 % intervals."""
    names = [n for n, m in models.items() if m.get("kinds")]
    if not names:
        return []
    lines = [
        "## What changed, kind by kind (held-out prompts, greedy; 95 % intervals)",
        "",
        "| kind (prompts) | measure | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for kind, (title, rates) in KIND_LABELS.items():
        first = next((models[n]["kinds"].get(kind) for n in names if models[n]["kinds"].get(kind)), None)
        if first is None:
            continue
        rows = (("gold_reward", "gold reward"), *rates, ("length", "length (words)"), ("repeat_rate", "repeats"))
        for i, (key, label) in enumerate(rows):
            cells = [interval_text(models[n]["kinds"].get(kind, {}).get(key), 2, "–") for n in names]
            head = f"{title} ({first['n']})" if i == 0 else ""
            lines.append(f"| {head} | {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_kinds(models: dict, path: Path) -> Path | None:
    """One panel per kind of prompt: each model's gold reward and the kind's main rate, with 95 % intervals."""
    import matplotlib.pyplot as plt

    names = [n for n, m in models.items() if m.get("kinds")]
    kinds = [k for k in KIND_LABELS if any(models[n]["kinds"].get(k) for n in names)]
    if not names or not kinds:
        return None
    colours = {"base": "tab:grey", "sft": "tab:blue", "ppo": "tab:orange"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        key, label = KIND_LABELS[kind][1][0]
        rows = [(n, models[n]["kinds"].get(kind, {}).get(key)) for n in names]
        rows = [(n, d) for n, d in rows if isinstance(d, dict) and d.get("mean") is not None]
        means = [d["mean"] for _, d in rows]
        err = [[max(0.0, d["mean"] - d["low"]) for _, d in rows], [max(0.0, d["high"] - d["mean"]) for _, d in rows]]
        ax.bar([n.replace("_", "-") for n, _ in rows], means, yerr=err, capsize=4,
               color=[colours.get(n, "tab:green") for n, _ in rows])  # fmt: skip
        for i, m in enumerate(means):
            ax.text(i, m + err[1][i] + 0.02, f"{m:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{KIND_LABELS[kind][0]}\n{label}", fontsize=9)
        ax.set_ylim(0, max(1.05, max(means or [0]) * 1.2))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("What each model does with each kind of prompt (held-out, greedy; 95 % interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_answers(samples: list[dict], path: Path, n: int = 5) -> Path | None:
    """The same prompts answered by base, SFT and PPO, side by side, as an image."""
    import matplotlib.pyplot as plt

    if not samples:
        return None
    names = [k for k in ("base", "sft", "ppo") if k in samples[0]]
    toy = "right_answer" in samples[0]

    def clean(text: str) -> str:  # an untrained model's bytes can be control characters no font draws
        return "".join(ch if ch.isprintable() else "?" for ch in text) or "(empty)"

    def answer(r: dict, k: str) -> str:
        gold = r.get(f"{k}_gold")
        return textwrap.fill(clean(r[k]), 34) + (f"\n[gold {gold:+.2f}]" if gold is not None else "")

    def prompt(r: dict) -> str:
        right = f"\n(right answer: {r['right_answer']})" if toy and r.get("right_answer") else ""
        return textwrap.fill(clean(r["prompt"]), 28) + right

    cells = [[prompt(r)] + [answer(r, k) for k in names] for r in samples[:n]]
    heights = [max(c.count("\n") + 1 for c in row) for row in cells]
    total = sum(heights) + 1
    fig, ax = plt.subplots(figsize=(3.3 * (len(names) + 1), 0.7 + 0.22 * total))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=["prompt", *names], cellLoc="left", bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, _), cell in table.get_celld().items():
        cell.set_height((heights[row - 1] if row else 1) / total)
        if row == 0:
            cell.set_text_props(weight="bold")
    scored = " with each answer's gold reward" if toy else ""
    ax.set_title("The same held-out prompts answered by " + ", ".join(names) + f" (greedy){scored}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ the report


def build_report(run_dir: str | Path) -> Path:
    """Write <run>/report/report.md, report.json and the plots; return the path of report.md."""
    import matplotlib

    matplotlib.use("Agg")

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; give the folder `rlhf pipeline` wrote (runs/<name>).")
    out = RunLayout(run_dir).report_dir
    metrics = {s: read_metrics(run_dir / s / "metrics.jsonl") for s in STAGES}
    stage_evals = {s: _read_json(RunLayout(run_dir).eval_json(s)) for s in STAGES}
    ev = _read_json(RunLayout(run_dir).eval_json("eval"))
    pipeline = _read_json(RunLayout(run_dir).pipeline_record)
    if not any(metrics.values()) and not any(stage_evals.values()) and not ev:
        raise UserError(
            f"{run_dir} has no stage output to report on (no <stage>/metrics.jsonl or eval.json); run `rlhf pipeline` first."
        )
    out.mkdir(parents=True, exist_ok=True)

    plots = {
        "loss_curves": plot_losses(metrics, out / "loss_curves.png"),
        "reward_accuracy": plot_reward_accuracy(stage_evals["reward"], metrics["reward"], out / "reward_accuracy.png"),
        "ppo_training": plot_ppo(metrics["ppo"], out / "ppo_training.png"),
        "models": plot_models(ev.get("models", {}), out / "models.png"),
        "kinds": plot_kinds(ev.get("models", {}), out / "kinds.png"),
        "answers": plot_answers(ev.get("samples", []), out / "answers.png"),
    }
    plots = {k: v.name for k, v in plots.items() if v is not None}
    head = headline(run_dir)
    verdict = assess(run_dir)
    report = {
        "run_dir": path_in_run(run_dir, run_dir),  # "." : the paths this file names are relative to the run
        "headline": head,
        "checks": verdict["checks"],
        "targets_missed": verdict["missed"],
        "red_flags": verdict["red_flags"],
        "cautions": verdict["cautions"],
        "stages": {s: e for s, e in stage_evals.items() if e},
        "eval": {k: v for k, v in ev.items() if k != "per_prompt"},
        "timings": {s: e.get("seconds") for s, e in pipeline.get("steps", {}).items()},
        "plots": plots,
    }
    rounds = _read_json(RunLayout(run_dir).rounds_json)
    if rounds:  # `rlhf pipeline --rounds N`
        report["rounds"] = rounds
    report["account"] = account(run_dir, report, ev)
    write_json_atomic(out / "report.json", report)
    path = write_text_atomic(out / "report.md", _markdown(run_dir, report, ev))
    return path


# ------------------------------------------------------------------------------------------------------ in words

# Terms the report uses, explained where a student meets them; the glossary lists those the report's text holds.
GLOSSARY = {
    "gold reward": "the toy world's own score of an answer (see the account above); people and the reward model only "
    "approximate it, and only a toy world has one, which is what lets this report check every stage",
    "bits per byte": "how surprised the model is by held-out text: the average number of bits it needs to encode each "
    "byte (lower is better; 8 is no knowledge of the bytes at all)",
    "probes": 'fact completions the base model is asked to finish ("the fox eats" -> "berries"); right means its '
    "first words are the fact",
    "SFT": "supervised fine-tuning: training on written demonstrations (a prompt and a good answer) so the model "
    "answers in the chat format instead of continuing text",
    "reward model": "a model trained on people's rankings to give any answer a score, so that PPO can be trained on "
    "millions of answers no person read",
    "pairwise accuracy": "how often the reward model scores the answer the raters preferred above the other one",
    "gold order": "the pairs of answers whose gold reward differs, counted right when the reward model orders them as "
    "the gold reward does",
    "PPO": "proximal policy optimisation: reinforcement learning that changes the model to raise the reward model's "
    "score of its own sampled answers, in small, clipped steps",
    "KL": "Kullback-Leibler divergence, here how far the trained model's answers have moved from the SFT model's "
    "(in nats: natural-log units; 0 = unchanged); PPO pays kl_coef times it, which keeps it from exploiting the "
    "reward model",
    "nats": "the unit of KL with natural logarithms (1 nat = 1.44 bits)",
    "win rate": "how often one model's answer beats another's on the same prompt (ties count half)",
    "length-controlled": "a win rate read at equal answer length, from a logistic regression on the length "
    "difference, so that longer answers do not win by length alone (extrapolated: few pairs had equal length)",
    "95 % interval": "the range a figure would fall in on 95 % of re-drawn prompt sets (a bootstrap), so two models "
    "whose intervals of the difference include 0 are not told apart",
    "best-of-n": "no training: sample n answers and keep the one the reward model scores highest",
    "DPO": "direct preference optimisation: trains the model on the ranked pairs directly, without a reward model",
    "RLOO": "REINFORCE leave-one-out: reinforcement learning that compares each answer with the others to the same "
    "prompt instead of a learned value model",
    "GRPO": "group relative policy optimisation: like RLOO, answers are scored against their group's mean and spread",
    "expert iteration": "sample answers, keep the reward model's best and fine-tune on them (SFT on its own best)",
    "PPO-ptx": "PPO with a pre-training loss mixed in, so that the model keeps its language skills",
    "repeats": "the share of answers that say a word twice in a row or a sentence they already said: the gold reward "
    "charges for them, while raters with a taste for long answers (and a reward model learned from them) pay for them",
    "Goodhart": "Goodhart's law: a measure optimised hard stops measuring what it stood for - a reward model pushed too "
    "far rewards answers the raters would not prefer",
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _share(texts: list[str], phrase: str) -> float:
    return sum(f" {phrase} " in f" {' '.join(_words(t))} " for t in texts) / max(1, len(texts))


def phrase_shift(before: list[str], after: list[str], min_shift: float = 0.2) -> tuple[str, float, float] | None:
    """The three-word phrase whose share of answers changed most from `before` to `after` (the same prompts):
    (phrase, share before, share after), or None when no phrase moved by `min_shift`. What a student should see first
    is what a policy learned to say, e.g. a courtesy PPO added to every answer."""
    counts: dict[str, float] = {}
    for texts, sign in ((before, -1), (after, 1)):
        for t in texts:
            words = _words(t)
            for g in {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}:
                counts[g] = counts.get(g, 0.0) + sign / max(1, len(texts))
    if not counts:
        return None
    phrase = max(counts, key=lambda g: (abs(counts[g]), g))
    if abs(counts[phrase]) < min_shift:
        return None
    return phrase, _share(before, phrase), _share(after, phrase)


def _example(ev: dict, name: str) -> str | None:
    """One held-out prompt and `name`'s answer, from the answers side by side (the first whose answer is not empty)."""
    for s in ev.get("samples", []):
        if s.get(name):
            return f'asked "{s["prompt"]}", it answered "{s[name]}"'
    return None


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0%}"


def account(run_dir: Path, report: dict, ev: dict) -> list[str]:
    """The report's opening: what each stage changed, in plain words, from the run's own numbers (markdown lines;
    a stage the run lacks is left out)."""
    h, stages = report["headline"], report["stages"]
    models, n = ev.get("models", {}), ev.get("num_prompts")
    on = f"{n} held-out prompts (`rlhf eval`, greedy)" if n else "held-out prompts"
    lines = ["## What happened, in plain words", ""]
    if h.get("sft_gold_reward") is not None:
        lines += [f"The **gold reward** is {GOLD_IN_WORDS}. Raters rank answers by it (with noise); nobody in "
                  "the pipeline after the raters sees it, so it is the yardstick for every stage below.", ""]  # fmt: skip
    steps = []
    if h.get("base_bits_per_byte") is not None:
        text = (
            f"**Pre-training** learned the world's text from scratch: held-out text costs it "
            f"{h['base_bits_per_byte']:.3f} bits per byte, against {_f(h['untrained_bits_per_byte'])} before training "
            "(lower is better)"
        )
        if h.get("base_probe_accuracy") is not None:
            text += f", and it finishes {_pct(h['base_probe_accuracy'])} of the fact probes right"
        if ex := _example(ev, "base"):
            text += f". It continues text rather than answering: {ex}"
        steps.append(text + ".")
    if "sft" in models or h.get("sft_finished_rate") is not None:
        sft = stages.get("sft", {})
        demos = f" on {sft['train_examples']:,} written demonstrations" if sft.get("train_examples") else ""
        text = f"**SFT** (supervised fine-tuning){demos} taught it to answer"
        if h.get("sft_finished_rate") is not None:
            text += f": {_pct(h['sft_finished_rate'])} of its answers end properly"
        base, sftm = models.get("base", {}), models.get("sft", {})
        if _number(sftm.get("gold_reward")) is not None and _number(base.get("gold_reward")) is not None:
            text += (
                f", and on {on} the gold reward rose from {_number(base['gold_reward']):.3f} (base) to "
                f"{_number(sftm['gold_reward']):.3f}"
            )
        if h.get("sft_right_fact_rate") is not None:
            text += f", right facts from {_pct(h['base_right_fact_rate'])} to {_pct(h['sft_right_fact_rate'])}"
        if ex := _example(ev, "sft"):
            text += f". For example, {ex}"
        steps.append(text + ".")
    rew = stages.get("reward", {})
    if h.get("reward_accuracy") is not None:
        text = (
            f"**The reward model** learned from the raters' rankings to score any answer: it orders "
            f"{_pct(h['reward_accuracy'])} of {rew.get('eval_pairs', '')} held-out pairs as the raters did"
        )
        if h.get("reward_gold_accuracy") is not None:
            text += (
                f", and {_pct(h['reward_gold_accuracy'])} of held-out pairs whose gold reward differs as the gold "
                "reward does. The first is lower because it also counts pairs the raters told apart only by their "
                "noise (answers of equal gold reward)"
            )
        warn = [f for f in report["red_flags"] if "reward model" in f] + report["cautions"]
        text += ". Verdict: " + (
            f"{len(warn)} finding(s) to read before trusting it, listed under the headline: {warn[0]}"
            if warn
            else "no caution (the same checks as `rlhf reward inspect`)"
        )
        steps.append(text + ".")
    gain = h.get("ppo_gold_gain")
    if gain is not None and h.get("ppo_gold_reward") is not None:
        gold_on = on if h["source"]["gold_reward"] == "eval/eval.json" else "the PPO stage's own held-out prompts"
        text = (
            f"**PPO** trained the SFT model on the reward model's scores of its own answers, held near SFT by a KL "
            f"penalty: on {gold_on} "
            f"the gold reward went from {_f(h['sft_gold_reward'])} to {_f(h['ppo_gold_reward'])} "
            f"(gain {_ci(gain)}, 95 % interval)"
        )
        if h.get("ppo_kl_to_sft") is not None:
            text += f", {h['ppo_kl_to_sft']:.2f} nats of KL from SFT"
        per = ev.get("per_prompt", {})
        if "sft" in per and "ppo" in per and (shift := phrase_shift(per["sft"]["answers"], per["ppo"]["answers"])):
            phrase, before, after = shift
            text += f'. Most of what changed: "{phrase}" is in {after:.0%} of its answers, {before:.0%} of SFT\'s'
        if "sft" in models and "ppo" in models:
            text += (
                f"; mean length {models['sft'].get('mean_length', 0):.1f} -> {models['ppo'].get('mean_length', 0):.1f}"
                " tokens"
            )
            repeats = [_number(models[m].get("repeat_rate")) for m in ("sft", "ppo")]
            if None not in repeats and max(repeats) > 0:
                text += f", answers with a repeated word or sentence {_pct(repeats[0])} -> {_pct(repeats[1])}"
            if kinds := _kind_changes(models["sft"], models["ppo"]):
                text += f". Kind by kind, SFT -> PPO: {kinds}"
        if ex := _example(ev, "ppo"):
            text += f". For example, {ex}"
        steps.append(text + ".")
    lines += [f"{i}. {t}" for i, t in enumerate(steps, 1)]
    if steps:
        lines.append("")
    checks = report["checks"]
    if checks:
        held = [k for k, c in checks.items() if c["met"]]
        missed = report["targets_missed"]
        lines.append(
            f"**Targets:** {len(held)} of {len(checks)} of the recipe's targets held"
            + (f"; missed: {', '.join(missed)}." if missed else ".")
        )
        lines.append("")
    try:  # as typed from where the command ran (runs/tiny); never an absolute path, since a run can move
        run, where = Path(run_dir).absolute().relative_to(Path.cwd()).as_posix(), ""
    except ValueError:
        run, where = "RUN", " (RUN: this run's folder)"
    layout = RunLayout(run_dir)
    chat = [f"`{shlex.join(['rlhf', 'chat', f'{run}/{s}/final'])}`" for s in ("ppo", "sft") if layout.final(s).exists()]
    look = ["the answers side by side (below): they show what each stage changed"]
    if chat:
        look.append(f"talk to a model with {' or '.join(chat)}")
    if layout.final("reward").exists():
        look.append(f"check the reward model with `{shlex.join(['rlhf', 'reward', 'inspect', f'{run}/reward/final'])}`")
    lines += [f"**Look next at** {'; '.join(look)}{where}. The glossary at the end explains the terms.", ""]
    return lines


def glossary(text: str) -> list[str]:
    """The glossary's entries for the terms `text` uses (markdown lines; none when it uses none)."""
    used = [t for t in GLOSSARY if re.search(rf"(?<![A-Za-z-]){re.escape(t)}(?![A-Za-z-])", text, re.IGNORECASE)]
    if not used:
        return []
    return ["## Glossary", "", *(f"- **{t}**: {GLOSSARY[t]}." for t in used), ""]


def _rounds_markdown(rounds: dict) -> list[str]:
    """Each round of `rlhf pipeline --rounds`: gold reward, the last reward model on the new samples, KL."""

    def m(stat):
        return _f(_number(stat))

    lines = [
        f"## Rounds of feedback (PPO from {rounds['start_from']} in each round)",
        "",
        "The reward model of the round before, on the new round's samples *before* retraining, shows the distribution "
        "shift: it was trained on the answers of an earlier policy.",
        "",
        "| round | rankings | last RM on new samples: pair accuracy | gold order | RM gold order after retraining "
        "| PPO gold reward | PPO right facts | PPO KL to SFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds["rounds"]:
        before = r.get("rm_before_retraining") or {}
        cells = [str(r["round"]), str(r["rankings"]), m(before.get("accuracy")), m(before.get("gold_accuracy")),
                 m(r.get("rm_gold_accuracy")), m(r.get("ppo_gold_reward")), m(r.get("ppo_right_fact_rate")),
                 m(r.get("ppo_kl_to_sft"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _f(v, fmt=".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _lc(d) -> str:
    if d.get("mean") is None:
        return "n/a (lengths confounded)"
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]" + (" (extrapolated)" if d.get("extrapolated") else "")


def _ci(d) -> str:
    return "–" if not d else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _pretrain_held_out(run_dir: Path) -> str:
    """Which text the base model's bits per byte were measured on, from the recipe the run saved."""
    import yaml

    try:
        data = (yaml.safe_load(RunLayout(run_dir).recipe.read_text(encoding="utf-8")) or {}).get("pretrain") or {}
        data = data.get("data") or {}
    except (OSError, yaml.YAMLError):
        return "held-out pre-training text"
    if data.get("eval_path") or data.get("eval_split"):
        return f"pretrain.data's held-out set ({data.get('eval_path') or data.get('eval_split')})"
    if data.get("toy") and not (data.get("path") or data.get("hub")):
        return "the toy world's held-out documents"
    return f"the last {data.get('eval_fraction', 0.05):.0%} of the pre-training text"


def _markdown(run_dir: Path, report: dict, ev: dict) -> str:
    h = report["headline"]
    lines = [f"# rlhf report: {run_dir.absolute().name}", "", *report["account"]]  # its name: a run can move
    stages, n = report["stages"], ev.get("num_prompts")
    held = f"{n} held-out prompts, greedy (`rlhf eval`)" if n else "held-out prompts"
    sft_on = held if h["source"]["sft_finished_rate"] == "eval/eval.json" else "SFT's own held-out prompts"
    pre, rew = stages.get("pretrain", {}), stages.get("reward", {})

    def pct(key: str) -> str:
        return _f(h[key], ".1%") if h[key] is not None else "–"

    def pairs(key: str, what: str) -> str:
        n_pairs = (rew.get(key) or {}).get("n") if isinstance(rew.get(key), dict) else None
        return f"{n_pairs} {what}" if n_pairs else what

    lines += [
        "## Headline",
        "",
        "| metric | value | measured on |",
        "|---|---|---|",
        f"| base model: bits per byte (lower is better) | {_f(h['base_bits_per_byte'])} | "
        f"{_pretrain_held_out(run_dir)} ({pre.get('eval_bytes', '?')} bytes) |",
        f"| untrained model: bits per byte | {_f(h['untrained_bits_per_byte'])} | the same text |",
        f"| base model: completion probes right | {pct('base_probe_accuracy')} | the world's fact probes |",
        f"| SFT: finished-answer rate | {pct('sft_finished_rate')} | {sft_on} |",
        f"| reward model: pairwise accuracy | {pct('reward_accuracy')} | "
        f"{pairs('accuracy', 'held-out pairs of the raters')} |",
        f"| reward model: accuracy on training pairs | {pct('reward_train_accuracy')} | "
        f"{pairs('train_accuracy', 'training pairs')} |",
        f"| reward model: agreement with the gold order | {pct('reward_gold_accuracy')} | "
        f"{pairs('gold_accuracy', 'held-out pairs whose gold reward differs')} |",
        f"| gold reward: SFT → PPO | {_f(h['sft_gold_reward'])} → {_f(h['ppo_gold_reward'])} | "
        f"{held if h['source']['gold_reward'] == 'eval/eval.json' else 'PPO stage check prompts'} |",
        f"| right-fact rate (states the asked fact, no wrong one): base / SFT / PPO | "
        f"{' / '.join(_f(h[f'{m}_right_fact_rate'], '.1%') for m in ('base', 'sft', 'ppo'))} | {held} |",
        f"| PPO gold-reward gain over SFT (95 % bootstrap) | {_ci(h['ppo_gold_gain'])} | "
        f"{held if h['source']['ppo_gold_gain'] == 'eval/eval.json' else 'PPO stage check prompts'} |",
        f"| PPO KL to SFT (nats per answer) | {_f(h['ppo_kl_to_sft'])} | {held} (KL from temperature-1 samples) |",
        "",
    ]
    if report["checks"]:
        lines += [
            "Targets (the recipe's `targets:`): "
            + ", ".join(
                f"{k}: {'met' if c['met'] else 'MISSED' if c['met'] is False else 'not measured'}"
                for k, c in report["checks"].items()
            ),
            "",
        ]
    if report["red_flags"]:
        lines += ["**Red flags:**", "", *(f"- {flag}" for flag in report["red_flags"]), ""]
    if report["cautions"]:
        lines += ["**Cautions:**", "", *(f"- {note}" for note in report["cautions"]), ""]
    if report["timings"]:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {s} | {_f(t, '.1f')} |" for s, t in report["timings"].items()] + [""]
    if ev.get("models"):
        lines += [
            f"## Models on {ev.get('num_prompts')} held-out prompts (`rlhf eval`, greedy)",
            "",
            "| model | RM score | gold reward | right fact | KL to SFT | finished | repeats | mean length |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in ev["models"].items():
            cells = [_f(_number(m.get(k))) for k in ("rm_score", "gold_reward", "right_fact_rate", "kl_to_sft")]
            repeats = _f(_number(m.get("repeat_rate")), ".2f")
            lines.append(
                f"| {name} | {' | '.join(cells)} | {m['finished_rate']:.2f} | {repeats} | {m['mean_length']:.1f} |"
            )
        lines.append("")
        if ev.get("win_rates"):
            lines += [
                "Win rates (ties count half; length-controlled = logistic regression on the length difference, "
                "read at equal length):",
                "",
                "| pair | judge | win rate | length-controlled |",
                "|---|---|---|---|",
            ]
            for pair, judges in ev["win_rates"].items():
                for judge in ("reward_model", "gold"):
                    if judge in judges:
                        w, lc = judges[judge], judges[f"{judge}_length_controlled"]
                        lines.append(
                            f"| {pair.replace('_vs_', ' over ')} | {judge.replace('_', ' ')} | "
                            f"{w['mean']:.3f} [{w['low']:.3f}, {w['high']:.3f}] | {_lc(lc)} |"
                        )
            lines.append("")
    lines += _kinds_markdown(ev.get("models", {}))
    titles = {
        "loss_curves": "Loss curves",
        "reward_accuracy": "Reward-model accuracy",
        "ppo_training": "PPO: reward and KL",
        "models": "Base, SFT and PPO on the same prompts",
        "kinds": "Each kind of prompt",
        "answers": "Answers side by side",
    }
    if report.get("rounds"):
        lines += _rounds_markdown(report["rounds"])
    compare_md = RunLayout(run_dir).compare_dir / "compare.md"
    if compare_md.exists():  # `rlhf compare` ran in this folder
        lines += ["## Methods side by side", "", f"`rlhf compare`: [{compare_md}](../compare/compare.md)", ""]
    if report["plots"]:
        lines += ["## Plots", ""]
        lines += [f"### {titles[k]}\n\n![{titles[k]}]({v})\n" for k, v in report["plots"].items()]
    if ev.get("samples"):
        names = [k for k in ("base", "sft", "ppo") if k in ev["samples"][0]]
        kinds = "kind" in ev["samples"][0]
        lines += [
            "## The same prompts, side by side" + (", two of each kind" if kinds else ""),
            "",
            "| " + ("kind | " if kinds else "") + "prompt | " + " | ".join(names) + " |",
            "|---|" + "---|" * (len(names) + kinds),
        ]
        for s in ev["samples"]:
            right = f" (a good answer: {s['right_answer']})" if s.get("right_answer") else ""
            gold = {k: f" [gold {s[k + '_gold']:+.2f}]" if s.get(k + "_gold") is not None else "" for k in names}
            cells = [*([s.get("kind") or "-"] if kinds else []), s["prompt"] + right, *(s[k] + gold[k] for k in names)]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") or "(empty)" for c in cells) + " |")
        lines.append("")
    for stage in STAGES:
        if stage in report["stages"]:
            lines += [
                f"<details><summary>{stage}/eval.json</summary>\n",
                "```json",
                json.dumps(report["stages"][stage], indent=2, default=str)[:4000],
                "```",
                "</details>",
                "",
            ]
    lines += glossary("\n".join(lines))
    return "\n".join(lines)
