"""`rlhf pipeline --rounds N`: after the pipeline, N-1 more rounds of feedback, as the policy improves "iteratively and
continuously as new human feedback is collected".

    rlhf pipeline --recipe tiny --rounds 2          # -> runs/tiny/rounds/round-2/, runs/tiny/rounds/rounds.json

Round k (a run folder `<run>/rounds/round-k/` sharing the run's data, base and SFT models through links): the last
round's PPO policy answers the feedback prompts (sample), they are ranked (label: the recipe's annotator), the last
round's reward model is scored on those new rankings *before* it is retrained (the distribution shift: it was trained on
the SFT model's answers), the reward model trains again on every ranking so far (`feedback/rankings.jsonl` holds them
all; this round's alone are in `feedback/rankings.jsonl`), PPO runs again, and `rlhf eval` judges it. PPO starts
from the SFT model or the last policy (`rounds.start_from`). `rounds.json` and the run's report give each round's gold
reward, the reward model's accuracy on the new round's samples before retraining, and KL to SFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_cli.data import load_stage_data
from rlhf_cli.evaluation.evaluate import evaluate_run
from rlhf_cli.evaluation.report import build_report
from rlhf_cli.models.modeling import inference_device, load_tokenizer
from rlhf_cli.models.scoring import load_reward_model, pair_metrics
from rlhf_cli.people.feedback import read_samples
from rlhf_cli.recipe import DataSpec, load_recipe
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json, write_json_atomic, write_text_atomic
from rlhf_cli.runtime.layout import RunLayout, link_in_run, path_in_run
from rlhf_cli.runtime.pipeline import run_pipeline
from rlhf_cli.stages.reward import gold_order_accuracy

SHARED = ("data", "pretrain", "sft")  # what every round takes from the run as it is (links)


def run_rounds(
    recipe,
    run_dir: str | Path,
    rounds: int,
    recipe_ref: str,
    overrides: list[str],
    *,
    resume: bool,
    overwrite: bool,
    accept_changes: bool = False,
) -> dict:
    """Rounds 2..`rounds` after a finished pipeline in `run_dir`; writes rounds/rounds.json and the run's report."""
    layout = RunLayout(run_dir)
    if recipe.reward.data is not None and (recipe.reward.data.path or recipe.reward.data.hub):
        raise UserError(
            "--rounds retrains the reward model on the run's own rankings, round after round, but this recipe's "
            "reward.data names another source; unset reward.data to run rounds."
        )
    if not all(layout.finished(s) for s in ("reward", "ppo", "eval")):
        raise UserError(f"--rounds: {run_dir} has no finished reward, ppo and eval steps to start round 2 from.")
    history = [_round_row(1, layout, layout, None)]
    for k in range(2, rounds + 1):
        previous = layout if k == 2 else RunLayout(layout.round_dir(k - 1))
        flags = {"resume": resume, "overwrite": overwrite, "accept_changes": accept_changes}
        round_overrides = [*overrides, *_start(recipe, previous, layout.round_dir(k))]
        history.append(_one_round(k, layout, recipe_ref, round_overrides, flags))
        write_json_atomic(layout.rounds_json, {"start_from": recipe.rounds.start_from, "rounds": history})
    build_report(layout.root)  # the run's report shows every round
    return {"start_from": recipe.rounds.start_from, "rounds": history}


def _start(recipe, previous, folder: Path) -> list[str]:
    """The overrides of a round: the last round's policy answers; the reward model trains on every ranking so far;
    PPO starts from the last policy too with start_from: last."""
    policy = str(previous.final("ppo").resolve())
    fraction = recipe.reward.data.eval_fraction if recipe.reward.data is not None else 0.1  # as reward.data_spec
    out = [f"feedback.model={policy}", f"reward.data.path={RunLayout(folder).rankings_so_far}",
           f"reward.data.eval_fraction={fraction}", "reward.data.toy=false"]  # fmt: skip
    return out + ([f"ppo.policy_from={policy}"] if recipe.rounds.start_from == "last" else [])


def _one_round(k: int, layout, recipe_ref: str, overrides: list[str], flags: dict) -> dict:
    folder = RunLayout(layout.round_dir(k))
    folder.root.mkdir(parents=True, exist_ok=True)
    for name in SHARED:  # the same toy world, base model and SFT model in every round (when the run has them)
        link, source = folder.root / name, layout.root / name
        if source.exists() and not (link.is_symlink() or link.exists()):
            link_in_run(link, source)
    rec = load_recipe(recipe_ref, overrides)
    print(f"round {k}: the round-{k - 1} policy answers, people (or the toy annotator) rank -> {folder.root}")
    run_pipeline(rec, folder.root, stages=["sample", "label"], **flags)
    # This round's rankings stay in rankings.jsonl (a person's screen resumes from it); the reward model trains on
    # rankings_so_far.jsonl: every round's, rewritten from them each time.
    everything = [layout.rankings, *(RunLayout(layout.round_dir(j)).rankings for j in range(2, k + 1))]
    write_text_atomic(folder.rankings_so_far, "".join(p.read_text(encoding="utf-8") for p in everything))
    previous = layout if k == 2 else RunLayout(layout.round_dir(k - 1))
    before = _judge_before_retraining(rec, previous, folder)
    run_pipeline(rec, folder.root, stages=["reward", "ppo"], **flags)
    evaluate_run(folder.root, recipe=rec, quiet=True)  # the round's models judged; its targets are round 1's business
    return _round_row(k, layout, folder, before)


def _judge_before_retraining(rec, previous, folder) -> dict[str, Any]:
    """The last round's reward model on this round's new rankings and samples, before it is retrained."""
    rm_dir, trust = str(previous.final("reward")), rec.model.trust_remote_code
    tokenizer = load_tokenizer(rm_dir, trust_remote_code=trust)
    model = load_reward_model(rm_dir, tokenizer, trust_remote_code=trust).to(inference_device())
    pairs = list(load_stage_data("reward", DataSpec(path=str(folder.rankings), eval_fraction=0.0), seed=rec.seed))
    out = {"accuracy": pair_metrics(model, tokenizer, pairs, rec.reward.max_length, rec.precision)["accuracy"]}
    if rec.feedback.data.toy:
        out["gold_accuracy"] = gold_order_accuracy(rec, read_samples(folder.samples), model, tokenizer)
    return out


def _round_row(k: int, run, layout, before: dict | None) -> dict[str, Any]:
    """Round k's line of rounds.json (in `run`, the whole run; `layout`: the round's own folder)."""
    ev, rm = read_json(layout.eval_json("eval")), read_json(layout.eval_json("reward"))
    ppo = ev.get("models", {}).get("ppo", {})
    return {
        "round": k,
        "run_dir": path_in_run(layout.root, run.root),  # relative to the run: it can move
        "rankings": sum(1 for _ in (layout.rankings_so_far if k > 1 else layout.rankings).open(encoding="utf-8")),
        "rm_before_retraining": before,  # round 1: none (its reward model is the first)
        "rm_gold_accuracy": rm.get("gold_accuracy"),
        "ppo_gold_reward": ppo.get("gold_reward"),
        "ppo_right_fact_rate": ppo.get("right_fact_rate"),
        "ppo_kl_to_sft": ppo.get("kl_to_sft"),
        "ppo_gold_gain": ev.get("ppo_gold_gain"),
    }


def print_rounds(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Rounds of feedback (PPO from {result['start_from']} each round)")
    for col in ("round", "rankings", "old RM on new samples", "(gold order)", "RM gold order", "PPO gold", "KL"):
        table.add_column(col, justify="right")
    for r in result["rounds"]:
        before = r["rm_before_retraining"] or {}
        table.add_row(str(r["round"]), str(r["rankings"]), _mean(before.get("accuracy")),
                      _mean(before.get("gold_accuracy")), _mean(r["rm_gold_accuracy"]), _mean(r["ppo_gold_reward"]),
                      _mean(r["ppo_kl_to_sft"]))  # fmt: skip
    Console().print(table)


def _mean(stat) -> str:
    return f"{stat['mean']:.3f}" if isinstance(stat, dict) and stat.get("mean") is not None else "-"
