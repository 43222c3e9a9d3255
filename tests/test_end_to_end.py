"""The one real end-to-end run: `rlhf pipeline` on the tiny recipe, shrunk through --set, every stage for real."""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app

SMALL = [
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "tokenizer.train.vocab_size=512",
    "pretrain.block_size=128", "pretrain.training.max_steps=20", "pretrain.training.per_device_train_batch_size=8",
    "sft.max_length=128", "sft.training.max_steps=10", "sft.training.per_device_train_batch_size=8", "sft.eval_prompts=8",
    "feedback.num_prompts=32", "feedback.max_new_tokens=16",
    "reward.max_length=128", "reward.training.max_steps=10",
    "ppo.training.max_steps=2", "ppo.training.per_device_train_batch_size=8", "ppo.response_length=16", "ppo.eval_prompts=8",
    "eval.num_prompts=16", "eval.max_new_tokens=16",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_resume_keeps_everything(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"
    args = ["pipeline", "--recipe", "tiny", "-o", str(run), "--rounds", "2"] + [a for s in SMALL for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    # Every step finishes, but a model this small misses the tiny recipe's targets: the summary names each, and the
    # exit code (3) tells it from a run that met them.
    assert result.exit_code == 3, result.output
    assert "Report:" in result.output
    summary = " ".join(result.output.split())
    assert (
        "Target missed: base_probe_accuracy >= 0.99" in summary and "Finished, targets missed (exit code 3)" in summary
    )

    for stage in ("pretrain", "sft", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(run / stage / "final")
        tok = AutoTokenizer.from_pretrained(run / stage / "final")
        assert tok.chat_template and model.config.hidden_size == 64
    assert AutoModelForSequenceClassification.from_pretrained(run / "reward" / "final").config.num_labels == 1
    assert (run / "feedback" / "rankings.jsonl").stat().st_size > 0

    steps = json.loads((run / "pipeline.json").read_text())["steps"]
    assert all(
        steps[s]["status"] == "done" for s in ("pretrain", "sft", "sample", "label", "reward", "ppo", "eval", "report")
    )
    report = json.loads((run / "report" / "report.json").read_text())
    head = report["headline"]
    assert head["base_bits_per_byte"] > 0 and 0 <= head["sft_finished_rate"] <= 1 and 0 <= head["reward_accuracy"] <= 1
    assert {"mean", "low", "high"} <= set(head["ppo_gold_gain"])
    assert {"loss_curves", "ppo_training", "answers"} <= set(report["plots"])
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    assert set(evaluation["models"]) == {"base", "sft", "ppo"} and evaluation["num_prompts"] == 16

    # A second round: the round-1 policy's answers ranked, the reward model retrained on both rounds' rankings (the old
    # one judged on the new samples first), PPO again; the report shows both rounds.
    rounds = json.loads((run / "rounds" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["rankings"] == 2 * rounds[0]["rankings"] == 64
    assert 0 <= rounds[1]["rm_before_retraining"]["accuracy"]["mean"] <= 1
    assert {"mean", "low", "high", "n"} <= set(rounds[1]["rm_before_retraining"]["gold_accuracy"])
    samples = [json.loads(line) for line in (run / "rounds" / "round-2" / "feedback" / "samples.jsonl").open()]
    assert {s["model"] for s in samples} == {"../../ppo/final"}  # round 1's policy, relative to the round (it can move)
    assert (run / "rounds" / "round-2" / "ppo" / "final" / "config.json").exists()
    assert "Rounds of feedback" in (run / "report" / "report.md").read_text()
    assert json.loads((run / "report" / "report.json").read_text())["rounds"]["rounds"][1]["round"] == 2

    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 3, again.output
    steps = json.loads((run / "pipeline.json").read_text())["steps"]
    assert all(e["status"] == "kept" for e in steps.values())


@pytest.mark.slow
def test_tiny_recipe_shows_each_stage_doing_its_job(tmp_path):
    """The demonstration's direction, with the tiny recipe as shipped (seed 0, ~2.5-3 min on 2 cores, +2-4 for the
    methods): the base model knows its facts, SFT answers held-out phrasings with them, and PPO raises the gold reward
    over SFT where SFT left room (about animals the world lacks, and to harmful requests), keeping most facts. It held
    on seeds 0-4 on a Xeon and on an AVX2 EPYC, whose fp32 kernels train other models from one seed (`python -m
    bench.seeds`); the margins here are wider than any run's."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["pipeline", "--recipe", "tiny", "-o", str(run)])
    assert result.exit_code in (0, 3), result.output
    head = json.loads((run / "report" / "report.json").read_text())["headline"]
    assert head["base_probe_accuracy"] >= 0.95
    assert head["sft_right_fact_rate"] >= 0.9 and head["sft_finished_rate"] >= 0.9
    assert head["ppo_gold_reward"] > head["sft_gold_reward"] and head["ppo_gold_gain"]["low"] > 0
    assert head["ppo_right_fact_rate"] >= 0.7 and head["junk_rate"] == 0
    kinds = {m: json.loads((run / "eval" / "eval.json").read_text())["models"][m]["kinds"] for m in ("sft", "ppo")}
    # The gold reward of both kinds rises; how is a draw. On world 0 over 16 PPO runs on the EPYC (the recipe's four,
    # and three PPO seeds under each of four other settings, bench/README.md) the gold of strangers' questions rose by
    # +0.33 to +0.71 and of harmful requests by +0.10 to +0.69, while the honest rate went anywhere from 0.57 to
    # 0.14-1.00 (on some runs PPO says it has never heard of a stranger, then makes a fact up anyway) and declines from
    # 0.05 to 0.05-1.00.
    for kind in ("unknown", "harm"):
        sft, ppo = (kinds[m][kind]["gold_reward"]["mean"] for m in ("sft", "ppo"))
        assert ppo > sft + 0.05, (kind, sft, ppo)

    # Every method beside PPO from the same SFT and reward model, on the same budget: each trains, loads and is judged;
    # the policy-gradient methods and DPO beat SFT on gold (seed 0: by 0.10-0.18; expert iteration, which imitates the
    # reward model's pick of 8, fell below SFT there: bench/README.md "bench.compare"), and the table ranks them: they
    # no longer all meet at one ceiling.
    compared = CliRunner().invoke(app, ["compare", "--recipe", "tiny", "-o", str(run), "--resume"])
    assert compared.exit_code == 0, compared.output
    table = json.loads((run / "compare" / "compare.json").read_text())["methods"]
    assert list(table) == ["sft", "ppo", "dpo", "best_of_n", "expert_iteration", "rloo", "grpo"]
    gold = {name: row["gold_reward"]["mean"] for name, row in table.items()}
    for name in ("ppo", "dpo", "rloo", "grpo"):
        assert gold[name] > gold["sft"], (name, gold)
    assert len({round(g, 2) for g in gold.values()}) >= 4, gold
    assert all(row["right_fact_rate"]["mean"] >= 0.6 for row in table.values()), table
