"""Stage 2 (SFT) on a tiny base model saved in tmp: every SFT format trains, the loss mask, truncation, optimisers, LoRA."""

import json
import math
import random

import pytest
import torch

from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.recipe import Recipe
from rlhf_cli.runtime.errors import UserError

CONVERSATIONS = [
    ("what does the fox eat?", "the fox eats berries."),
    ("where does the owl live?", "the owl lives in the forest. happy to help!"),
    ("what colour is the bear?", "the bear is brown."),
    ("who is the friend of the wolf?", "the best friend of the wolf is the deer."),
] * 4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A 2-layer, 32-wide Llama with a small BPE trained on toy text, saved like `pretrain/final`."""
    from rlhf_cli.models.modeling import build_model, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    world = ToyWorld(0)
    rng = random.Random(0)
    texts = [world._document(rng) for _ in range(300)] + [q + " " + a for q, a in CONVERSATIONS]
    tok = train_tokenizer(texts, vocab_size=400)
    model = build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok, seed=0)
    out = tmp_path_factory.mktemp("base") / "final"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def recipe_for(base_dir, data: dict, **sft) -> Recipe:
    training = {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 3,
        "warmup_steps": 0,
        **sft.pop("training", {}),
    }
    return Recipe.model_validate(
        {
            "name": "t",
            "seed": 0,
            "sft": {
                "init_from": str(base_dir),
                "data": data,
                "max_length": 64,
                "eval_prompts": 4,
                "training": training,
                **sft,
            },
            "eval": {"max_new_tokens": 8},
        }
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FORMATS = {
    "messages": lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
    "prompt_completion": lambda q, a: {"prompt": q, "completion": a},
    "alpaca": lambda q, a: {"instruction": q, "input": "", "output": a},
    "sharegpt": lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
}


def _weights_changed(base_dir, final_dir) -> bool:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tuned = AutoModelForCausalLM.from_pretrained(final_dir)
    return any(
        not torch.equal(a, b) for a, b in zip(base.state_dict().values(), tuned.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_trains_and_final_answers_through_the_chat_template(tmp_path, base_dir, fmt):
    from rlhf_cli.models.generation import generate_answers
    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer
    from rlhf_cli.stages import sft

    data = write_jsonl(tmp_path / "chats.jsonl", [FORMATS[fmt](q, a) for q, a in CONVERSATIONS])
    metrics = sft.run(recipe_for(base_dir, {"path": str(data), "eval_fraction": 0.25}), tmp_path / "run")

    final = tmp_path / "run" / "sft" / "final"
    saved = json.loads((tmp_path / "run" / "sft" / "eval.json").read_text())
    assert saved["train_steps"] == 3 and math.isfinite(saved["eval_loss"]) and saved["eval_prompts"] == 4
    assert 0.0 <= saved["finished_rate"] <= 1.0 and metrics["train_examples"] == 12
    assert (final / "lineage.json").exists() and (final / "README.md").exists()
    assert _weights_changed(base_dir, final)
    tok = load_tokenizer(str(final))
    assert "{% generation %}" in tok.chat_template
    answers = generate_answers(
        load_causal_lm(str(final)),
        tok,
        [[{"role": "user", "content": "what does the fox eat?"}]],
        temperature=0.0,
        max_new_tokens=4,
    )
    assert answers[0][0].num_tokens > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows)


def _trainer(tmp_path, base_dir, **sft_keys):
    import datasets

    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer
    from rlhf_cli.stages import sft

    rows = [
        {
            "messages": [
                {"role": "user", "content": "what does the fox eat?"},
                {"role": "assistant", "content": "the fox eats berries."},
                {"role": "user", "content": "and where does the fox live?"},
                {"role": "assistant", "content": "the fox lives in the forest."},
            ]
        }
    ] * 4
    ds = datasets.Dataset.from_list(rows)
    tok = load_tokenizer(str(base_dir))
    recipe = recipe_for(base_dir, {"path": "unused"}, **sft_keys)
    return sft.make_trainer(recipe, tmp_path, load_causal_lm(str(base_dir)), tok, ds, None), tok


def _masked_text(trainer, tok):
    batch = trainer.data_collator(list(trainer.train_dataset))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    kept = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    return tok.decode(ids), kept


def test_assistant_only_loss_masks_user_turns(tmp_path, base_dir):
    trainer, tok = _trainer(tmp_path, base_dir)
    full, kept = _masked_text(trainer, tok)
    assert "<|user|>" in full and "what does the fox eat?" in full
    # Only the two answers (each with the leading space the model writes) and their end-of-text tokens carry loss: no
    # user text, no role markers.
    assert kept == " the fox eats berries.<|endoftext|> the fox lives in the forest.<|endoftext|>"


def test_full_sequence_loss_option_keeps_every_token(tmp_path, base_dir):
    trainer, tok = _trainer(tmp_path, base_dir, assistant_only_loss=False)
    full, kept = _masked_text(trainer, tok)
    assert kept == full and "what does the fox eat?" in kept


def test_assistant_only_loss_with_packing(tmp_path, base_dir):
    trainer, tok = _trainer(tmp_path, base_dir, packing=True, max_length=256)
    assert len(trainer.train_dataset) == 1  # the four conversations packed into one row
    full, kept = _masked_text(trainer, tok)
    assert full.count("what does the fox eat?") == 4 and "what does the fox eat?" not in kept
    assert kept.count(" the fox eats berries.<|endoftext|> the fox lives in the forest.<|endoftext|>") == 4


def test_truncation_is_counted(tmp_path, base_dir):
    import datasets

    from rlhf_cli.models.modeling import load_tokenizer
    from rlhf_cli.stages.sft import count_truncated, run

    tok = load_tokenizer(str(base_dir))
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello."}]}
    long = {
        "messages": [
            {"role": "user", "content": "the fox eats berries. " * 30},
            {"role": "assistant", "content": "ok."},
        ]
    }
    assert count_truncated(tok, datasets.Dataset.from_list([short, long, long, short]), 40) == (2, 4)

    data = write_jsonl(tmp_path / "chats.jsonl", [short, long, long, short] * 3)
    recipe = recipe_for(
        base_dir, {"path": str(data), "eval_fraction": 0.25}, max_length=40, eval_prompts=0, training={"max_steps": 1}
    )
    metrics = run(recipe, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "sft" / "eval.json").read_text())
    assert metrics["train_examples"] == 9 and 1 <= saved["truncated_examples"] <= 6


@pytest.mark.parametrize("optim,state_key", [("sgd", None), ("adamw_torch", "exp_avg")])
def test_sgd_and_adamw_both_run(tmp_path, base_dir, optim, state_key):
    from rlhf_cli.stages import sft

    data = write_jsonl(tmp_path / "chats.jsonl", [FORMATS["messages"](q, a) for q, a in CONVERSATIONS])
    sft.run(
        recipe_for(
            base_dir,
            {"path": str(data)},
            eval_prompts=0,
            training={"optim": optim, "learning_rate": 0.1 if optim == "sgd" else 1e-2},
        ),
        tmp_path / "run",
    )
    state = torch.load(tmp_path / "run" / "sft" / "checkpoints" / "checkpoint-3" / "optimizer.pt", weights_only=False)
    keys = {k for s in state["state"].values() for k in s}
    assert (state_key in keys) if state_key else "exp_avg" not in keys
    assert _weights_changed(base_dir, tmp_path / "run" / "sft" / "final")


def test_lora_merged_and_adapter(tmp_path, base_dir):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from rlhf_cli.stages import sft

    data = write_jsonl(tmp_path / "chats.jsonl", [FORMATS["messages"](q, a) for q, a in CONVERSATIONS])
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    sft.run(recipe_for(base_dir, {"path": str(data)}, eval_prompts=2, lora=lora), tmp_path / "merged")
    final = tmp_path / "merged" / "sft" / "final"
    assert not (final / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(final)
    assert _weights_changed(base_dir, final)

    sft.run(
        recipe_for(base_dir, {"path": str(data)}, eval_prompts=2, lora={**lora, "merge": False}), tmp_path / "adapter"
    )
    adapter = tmp_path / "adapter" / "sft" / "final"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in model.named_parameters())


def test_toy_world_reports_gold_reward_for_sft_and_base(tmp_path, base_dir):
    from rlhf_cli.stages import sft

    recipe = recipe_for(base_dir, {"toy": True, "max_examples": 16}, eval_prompts=3, training={"max_steps": 1})
    metrics = sft.run(recipe, tmp_path / "run")
    assert metrics["eval_prompts"] == 3
    assert -1.0 <= metrics["gold_reward"] <= 1.0 and -1.0 <= metrics["base_gold_reward"] <= 1.0
    assert metrics["gold_reward_gain"] == pytest.approx(metrics["gold_reward"] - metrics["base_gold_reward"])


def test_qlora_on_cpu_is_refused_clearly(tmp_path, base_dir):
    from rlhf_cli.stages import sft

    recipe = recipe_for(base_dir, {"path": "unused.jsonl"}, lora={"qlora": True})
    with pytest.raises(UserError, match="qlora"):
        sft.run(recipe, tmp_path / "run")


def test_conversations_cut_before_any_answer_are_refused_without_a_trace(tmp_path, base_dir):
    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    long = {
        "messages": [
            {"role": "user", "content": "the fox eats berries. " * 30},
            {"role": "assistant", "content": "ok."},
        ]
    }
    data = write_jsonl(tmp_path / "long.jsonl", [long] * 8)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("earlier work")
    args = ["sft", "-o", str(run), "--set", f"sft.init_from={base_dir}", "--set", f"sft.data.path={data}"]
    result = CliRunner().invoke(app, [*args, "--set", "sft.max_length=40"])
    assert result.exit_code == 2 and "sft.max_length=40" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]  # no sft/ (not even the Trainer's checkpoints/)
