"""`rlhf reward inspect MODEL_DIR`: how a reward model orders held-out pairs — accuracy with a 95 % interval, by margin
and by length, the correlation of its score with answer length (length hacking), and a histogram of its scores.

    rlhf reward inspect runs/tiny/reward/final
    rlhf reward inspect runs/tiny/reward/final --data pairs.jsonl --out inspect/
"""

from __future__ import annotations

from pathlib import Path

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.evaluation.stats import bucket_name, tertiles, wilson
from rlhf_cli.models.modeling import REWARD_MODEL, check_model_kind, inference_device, load_tokenizer
from rlhf_cli.models.scoring import answer_tokens, length_caution, length_preference, load_reward_model, score_pairs
from rlhf_cli.people.feedback import with_people_rankings
from rlhf_cli.recipe import DataSpec
from rlhf_cli.runtime import files
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json
from rlhf_cli.runtime.layout import RunLayout, enclosing_run, path_in_run
from rlhf_cli.runtime.runs import read_lineage


def inspect_reward_model(model_dir, data: str | None = None, out_dir=None) -> dict:
    """Is this reward model any good? Accuracy with a 95 % interval, by margin and length bucket, score histograms,
    the correlation of score with answer length (a length-hacking alarm), score mean/std saved next to the model.

    `data`: any reward format; default the held-out part of the data the model was trained on (from its lineage.json).
    Writes <out_dir>/inspect.json and scores.png (default out_dir: MODEL_DIR/../inspect). Returns the report.
    """

    model_dir = Path(model_dir)
    run = enclosing_run(model_dir)  # the files written below name paths inside it relative to it (a run can move)
    if output_folder(model_dir, out_dir).exists() and not output_folder(model_dir, out_dir).is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder for the report (it is created if missing).")
    if not (model_dir / "config.json").exists():
        raise UserError(f"{model_dir} is not a model folder (no config.json); give a reward model's final/ folder.")
    check_model_kind(str(model_dir), REWARD_MODEL, "rlhf reward inspect")
    if data is None:
        if not (model_dir / "lineage.json").exists():
            raise UserError(f"{model_dir} has no lineage.json telling what it was trained on; pass --data FILE.")
        lineage = read_lineage(model_dir)  # its data's path resolved against the run the model is in now
        info = lineage.get("data") or {}
        if lineage.get("stage") != "reward" or "spec" not in info:
            raise UserError(
                f"{model_dir} is not a reward model trained by `rlhf reward`; pass --data FILE to score it."
            )
        spec = DataSpec(**info["spec"])
        if spec.path and not Path(spec.path).exists():
            raise UserError(f"{spec.path} (the data {model_dir} was trained on) is gone; pass --data FILE.")
        pairs = load_stage_data("reward", spec, seed=info["seed"])
        if run is not None:  # the held-out prompts the stage drew: from its rankings and a people's round's together
            pairs, _ = with_people_rankings(pairs, spec, RunLayout(run), say=False)
        pairs = train_eval_split(pairs, spec, "reward", seed=info["seed"])[1]
        source = f"{path_in_run(spec.path, run) or spec.hub} (held-out prompts)"
    else:
        pairs, source = load_stage_data("reward", DataSpec(path=data)), data
    tokenizer = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tokenizer).to(inference_device())
    pairs = [r for r in pairs if r["chosen"] != r["rejected"]]
    chosen, rejected = score_pairs(model, tokenizer, pairs, max_length=None)
    report = inspect_scores(pairs, chosen, rejected, answer_tokens(tokenizer, pairs))
    report["data"] = source

    out = output_folder(model_dir, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["histogram"] = path_in_run(_histogram(chosen, rejected, out / "scores.png"), run)
    stats_path = model_dir / "reward_stats.json"  # the training-time stats stay what PPO normalises with
    stats = read_json(stats_path) if stats_path.exists() else {**report["scores"], "source": source}
    stats["inspect"] = {**report["scores"], "source": source}
    files.write_json_atomic(stats_path, stats)
    files.write_json_atomic(out / "inspect.json", report)
    _print_report(report, out)
    return report


def output_folder(model_dir, out_dir=None) -> Path:
    """Where the report goes: `out_dir`, else the folder beside the model's (`<stage>/inspect`)."""
    return Path(out_dir) if out_dir else Path(model_dir).parent / "inspect"


def inspect_scores(pairs: list[dict], chosen: list[float], rejected: list[float], n_tokens: dict[str, int]) -> dict:
    """The inspect report from scores: accuracy and interval, buckets, score spread, length correlation and alarm."""
    import statistics

    right = [c > r for c, r in zip(chosen, rejected, strict=True)]
    low, high = wilson(sum(right), len(right))

    def bucket(names: list[str]) -> dict:
        table = {}
        for name, ok in zip(names, right, strict=True):
            table.setdefault(name, []).append(ok)
        return {name: {"pairs": len(v), "accuracy": sum(v) / len(v)} for name, v in sorted(table.items())}

    margins = [r["margin"] for r in pairs]
    if any(m != 0 for m in margins):  # the data's own margins (score differences)
        cuts, by = tertiles([abs(m) for m in margins]), "data margin"
        margin_names = [bucket_name(abs(m), cuts) for m in margins]
    else:  # no margins in the data: how accuracy grows with the model's own confidence |r_chosen - r_rejected|
        gaps = [abs(c - r) for c, r in zip(chosen, rejected, strict=True)]
        cuts, by = tertiles(gaps), "reward-model score gap"
        margin_names = [bucket_name(g, cuts) for g in gaps]
    diffs = [n_tokens[r["chosen"]] - n_tokens[r["rejected"]] for r in pairs]
    length_names = ["chosen shorter" if d < 0 else "same length" if d == 0 else "chosen longer" for d in diffs]
    distinct = {}  # an answer ranked against several others counts once
    for row, c, r in zip(pairs, chosen, rejected, strict=True):
        distinct[(str(row["prompt"]), row["chosen"])] = c
        distinct[(str(row["prompt"]), row["rejected"])] = r
    scores = list(distinct.values())
    return {
        "pairs": len(pairs),
        "accuracy": sum(right) / max(1, len(right)),
        "accuracy_low": low,
        "accuracy_high": high,
        "by_margin": {"by": by, "buckets": bucket(margin_names)},
        "by_length": bucket(length_names),
        "scores": {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "n": len(scores)},
        "chosen_mean": statistics.fmean(chosen),
        "rejected_mean": statistics.fmean(rejected),
        **length_preference(pairs, chosen, rejected, n_tokens),
    }


def _histogram(chosen: list[float], rejected: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = 30 if len(chosen) > 60 else 12
    ax.hist(chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("pairs")  # an answer ranked against several others counts once per pair
    ax.set_title(f"Scores of the chosen and rejected answer of {len(chosen)} pairs", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _print_report(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"Reward model on {report['pairs']} pairs of {report['data']}: accuracy {report['accuracy']:.3f} "
        f"(95 % interval {report['accuracy_low']:.3f}-{report['accuracy_high']:.3f})"
    )
    for title, buckets in (
        (f"by {report['by_margin']['by']}", report["by_margin"]["buckets"]),
        ("by length", report["by_length"]),
    ):
        table = Table(title=f"accuracy {title}")
        table.add_column("bucket")
        table.add_column("pairs", justify="right")
        table.add_column("accuracy", justify="right")
        for name, row in buckets.items():
            table.add_row(name, str(row["pairs"]), f"{row['accuracy']:.3f}")
        console.print(table)
    s = report["scores"]
    console.print(
        f"scores: mean {s['mean']:.3f}, std {s['std']:.3f} over {s['n']} answers; chosen mean "
        f"{report['chosen_mean']:.3f}, rejected mean {report['rejected_mean']:.3f}"
    )
    console.print(
        f"correlation of score with answer length: {report['length_correlation']:+.2f}; prefers the longer "
        f"answer in {report['prefers_longer']:.0%} of pairs (the data: {report['chosen_longer_in_data']:.0%})"
    )
    if caution := length_caution(report):  # the same sentence the report and the pipeline's summary give
        console.print(f"[bold yellow]Caution[/bold yellow]: {caution}.")
    console.print(f"Report: {out / 'inspect.json'}, histogram: {out / 'scores.png'}")
