"""The DPO stage on a tiny model: it learns the rankings (the chosen answer's margin over the rejected one grows), its
final/ loads, eval.json compares it with the SFT model, and it runs through the shared lifecycle (resume, bad input)."""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.data.toy import ToyWorld, toy_files
from rlhf_cli.models.modeling import build_model, train_tokenizer
from rlhf_cli.recipe import ModelSpec, load_recipe
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.stages import dpo

TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=256)


@pytest.fixture
def run(tmp_path):
    """A run folder with toy data, a random tiny 'SFT' model, and rankings that always prefer one kind of answer."""
    run = tmp_path / "run"
    files = toy_files(run / "data" / "toy", 0)
    texts = [json.loads(line)["text"] for line in open(files["pretrain_train.jsonl"])][:400]
    tok = train_tokenizer(texts, vocab_size=400)
    build_model(TINY, tok).save_pretrained(run / "sft" / "final")
    tok.save_pretrained(run / "sft" / "final")
    world, rows = ToyWorld(0), []
    prompts = [json.loads(line)["prompt"] for line in open(files["prompts_train.jsonl"])]
    prompts = [p for p in prompts if world.parse_prompt(p)][:48]  # one-fact questions (the other kinds have no fact)
    for i, prompt in enumerate(prompts):
        animal, attr = world.parse_prompt(prompt)
        right = f"the {animal} is {world.facts[animal][attr]}. thanks for asking!"
        rows.append(
            {"prompt": [{"role": "user", "content": prompt}], "responses": [right, "no."], "annotator": "toy", "n": i}
        )
    (run / "feedback").mkdir(parents=True)
    (run / "feedback" / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _recipe(*extra):
    return load_recipe(
        "tiny",
        [
            "dpo.training.max_steps=12",
            "dpo.training.per_device_train_batch_size=8",
            "dpo.training.learning_rate=5e-3",
            "dpo.training.logging_steps=1",
            "dpo.eval_prompts=4",
            "eval.max_new_tokens=8",
            *extra,
        ],
    )


def test_dpo_learns_the_rankings_and_saves_a_policy(run):
    from transformers import AutoModelForCausalLM

    metrics = dpo.run(_recipe(), run)
    log = [json.loads(line) for line in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in log if "rewards/margins" in r]
    assert margins[-1] > margins[0] and margins[-1] > 0  # the chosen answers pull ahead of the rejected ones
    saved = json.loads((run / "dpo" / "eval.json").read_text())
    assert saved["train_steps"] == 12 and saved["eval_prompts"] == 4 and {"dpo", "sft"} <= set(saved)
    assert saved["gold_gain"]["low"] <= saved["gold_gain"]["mean"] <= saved["gold_gain"]["high"]
    assert metrics["precision"] in ("fp32", "bf16")
    assert AutoModelForCausalLM.from_pretrained(run / "dpo" / "final").config.hidden_size == 32
    lineage = json.loads((run / "dpo" / "final" / "lineage.json").read_text())
    assert lineage["stage"] == "dpo" and lineage["parents"]["reference"].endswith("sft/final")
    from rlhf_cli.evaluation.report import step_headline

    headline = step_headline(run, "dpo")["text"]  # the pipeline's summary line: DPO's own check, not PPO's
    assert headline.startswith("gold reward ") and "vs SFT" in headline and "on 4 held-out prompts" in headline
    # the shared lifecycle: a finished stage is kept on --resume, an existing one refused without it
    assert dpo.run(_recipe(), run, resume=True)["train_steps"] == 12
    with pytest.raises(UserError, match="already exists; pass --resume"):
        dpo.run(_recipe(), run)


def test_dpo_without_rankings_names_the_steps_to_run(tmp_path):
    result = CliRunner().invoke(app, ["dpo", "-o", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "rlhf pipeline --stages pretrain,sft,sample,label" in result.output
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("bf16", [True, False])
def test_dpo_trains_in_either_precision_on_any_cpu(run, bf16):
    metrics = dpo.run(
        _recipe("dpo.training.max_steps=2", f"dpo.training.bf16={str(bf16).lower()}", "dpo.eval_prompts=0"), run
    )
    assert metrics["precision"] == ("bf16" if bf16 else "fp32") and metrics["train_steps"] == 2
