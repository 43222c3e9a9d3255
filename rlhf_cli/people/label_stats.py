"""`rlhf label stats RUN_DIR`: how far the raters of a run agree, with each other and (on the toy world) with the gold
reward.

Between raters: for every prompt ranked by two or more raters, each pair of raters is compared on the answer pairs
both ordered: pairwise agreement (the share of answer pairs they order the same way, with its 95 % Wilson interval)
and Kendall's tau of their two orders ((agreeing - disagreeing) / pairs; the mean over prompts, with a bootstrap
interval), overall and per pair of raters. With the gold: each rater's order of each prompt against the toy world's
gold reward (pairs of equal gold reward are left out and counted as ties). A rater is the web page's `rater`, else
the row's `annotator` (human, toy).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.evaluation.stats import bootstrap_ci, kendall_tau, pair_agreement, proportion, ranking_scores
from rlhf_cli.people.feedback import _read_jsonl, prompt_text, read_samples
from rlhf_cli.people.web_label import rater_of
from rlhf_cli.recipe import load_recipe
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout


def _prompt_key(row: dict):
    return row["sample"] if isinstance(row.get("sample"), int) else json.dumps(row["prompt"], sort_keys=True)


def _toy_world(run_dir: Path) -> tuple[ToyWorld | None, str]:
    """The run's toy world, when its samples' prompts came from it (else None and why)."""
    path = RunLayout(run_dir).recipe
    if not path.exists():
        return None, f"no {path}: the gold order needs the run's recipe"
    try:
        rec = load_recipe(str(path), check_training=False)
    except UserError as err:
        return None, f"{path} does not load ({err})"
    if not rec.feedback.data.toy:
        return None, "the prompts are not the toy world's (feedback.data), so there is no gold order"
    return ToyWorld(rec.seed), ""


def _between(rankings: dict) -> dict:
    """rankings: prompt -> {rater: scores}."""
    by_pair: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for raters in rankings.values():
        for a, b in itertools.combinations(sorted(raters), 2):
            by_pair[(a, b)].append(pair_agreement(raters[a], raters[b]))
    every = [cd for pairs in by_pair.values() for cd in pairs]
    taus = [t for c, d in every if (t := kendall_tau(c, d)) is not None]
    agree, pairs = sum(c for c, _ in every), sum(c + d for c, d in every)
    return {
        "prompts": sum(len(r) >= 2 for r in rankings.values()),
        "comparisons": len(every),  # (prompt, pair of raters)
        "pairs": pairs,  # answer pairs compared
        "agreement": proportion(agree, pairs),
        "kendall_tau": bootstrap_ci(taus),
        "by_pair": [
            {
                "raters": list(who),
                "prompts": len(cds),
                "pairs": sum(c + d for c, d in cds),
                "agreement": proportion(sum(c for c, _ in cds), sum(c + d for c, d in cds)),
                "kendall_tau": _mean([kendall_tau(c, d) for c, d in cds]),
            }
            for who, cds in sorted(by_pair.items())
        ],
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _gold(world: ToyWorld, rows: list[dict], samples: list[dict]) -> list[dict]:
    per_rater: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for row in rows:
        index = row.get("sample")
        sample = samples[index] if isinstance(index, int) and 0 <= index < len(samples) else None
        finished = {}
        if sample is not None:
            flags = sample.get("finished") or [True] * len(sample["answers"])
            finished = {text: bool(f) for text, f in zip(sample["answers"], flags, strict=False)}
        text = prompt_text(row["prompt"])
        gold = {a: world.gold_reward(text, a, finished.get(a, True)) for a in row["responses"]}
        c, d = pair_agreement(ranking_scores(row["responses"]), gold)
        k = len(row["responses"])
        per_rater[rater_of(row)].append((c, d, k * (k - 1) // 2 - c - d))
    return [
        {
            "rater": who,
            "prompts": len(cds),
            "pairs": sum(c + d for c, d, _ in cds),
            "gold_ties": sum(t for _, _, t in cds),
            "agreement": proportion(sum(c for c, _, _ in cds), sum(c + d for c, d, _ in cds)),
            "kendall_tau": bootstrap_ci([t for c, d, _ in cds if (t := kendall_tau(c, d)) is not None]),
        }
        for who, cds in sorted(per_rater.items())
    ]


def agreement(run_dir: str | Path) -> dict:
    """The agreement figures of a run's feedback/rankings.jsonl (see the module docstring)."""
    layout = RunLayout(run_dir)
    rows = _read_jsonl(layout.rankings)
    if not rows:
        raise UserError(f"{layout.rankings} holds no rankings yet; rank with `rlhf label` first.")
    samples = read_samples(layout.samples) if layout.samples.exists() else []
    rankings: dict = defaultdict(dict)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        if "responses" not in row or "prompt" not in row:
            raise UserError(f"{layout.rankings}: a row without prompt and responses; is it a rankings file?")
        rankings[_prompt_key(row)][rater_of(row)] = ranking_scores(row["responses"])
        counts[rater_of(row)] += 1
    world, note = _toy_world(layout.root)
    return {
        "rankings": len(rows),
        "prompts": len(rankings),
        "raters": dict(sorted(counts.items())),
        "between_raters": _between(rankings),
        "gold": _gold(world, rows, samples) if world is not None else None,
        "gold_note": note,
    }


def show(result: dict, console=None) -> None:
    """The figures as tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    raters = ", ".join(f"{who} {n}" for who, n in result["raters"].items())
    console.print(
        f"{result['rankings']} rankings of {result['prompts']} prompts by {len(result['raters'])} raters ({raters})"
    )
    between = result["between_raters"]
    if between["comparisons"]:
        table = Table(title="Agreement between raters (prompts ranked by both)", title_justify="left")
        for col in ("raters", "prompts", "answer pairs", "pairwise agreement [95 %]", "Kendall's tau"):
            table.add_column(col, justify="left" if col == "raters" else "right")
        for row in between["by_pair"]:
            table.add_row(
                " / ".join(row["raters"]), str(row["prompts"]), str(row["pairs"]), _interval(row["agreement"]),
                _num(row["kendall_tau"]),
            )  # fmt: skip
        tau = between["kendall_tau"]
        table.add_row(
            "all", str(between["prompts"]), str(between["pairs"]), _interval(between["agreement"]),
            f"{_num(tau['mean'])} [{_num(tau['low'])}, {_num(tau['high'])}]",
            style="bold",
        )  # fmt: skip
        console.print(table)
    else:
        console.print("No prompt has been ranked by two raters yet: no agreement between raters to measure.")
    if result["gold"] is None:
        console.print(f"Gold order: {result['gold_note']}.")
        return
    table = Table(title="Agreement with the toy world's gold order", title_justify="left")
    for col in ("rater", "prompts", "answer pairs", "gold ties", "pairwise agreement [95 %]", "Kendall's tau [95 %]"):
        table.add_column(col, justify="left" if col == "rater" else "right")
    for row in result["gold"]:
        tau = row["kendall_tau"]
        table.add_row(
            row["rater"], str(row["prompts"]), str(row["pairs"]), str(row["gold_ties"]), _interval(row["agreement"]),
            f"{_num(tau['mean'])} [{_num(tau['low'])}, {_num(tau['high'])}]",
        )  # fmt: skip
    console.print(table)


def _num(x) -> str:
    return "-" if x is None or x != x else f"{x:+.3f}"


def _interval(p: dict) -> str:
    return "-" if not p["n"] else f"{p['mean']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"
