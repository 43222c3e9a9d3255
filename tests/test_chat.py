"""`rlhf chat`: one-shot answers, the interactive loop with scripted input (history, /reset, /quit), adapters, refusals."""

from __future__ import annotations

import copy

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.models import chat as chat_mod

TEXTS = ["the fox eats berries. the owl likes mice. hello there, my friend!"] * 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny causal LM folder, a LoRA adapter on it, and a tiny reward model (sequence classifier) folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_cli.models.modeling import build_model, model_config, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    root = tmp_path_factory.mktemp("chat")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=2)
    base = root / "base"
    build_model(spec, tok, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    adapter = root / "adapter"
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear")
    )
    peft_model.save_pretrained(adapter)
    reward = root / "reward"
    config = model_config(spec, tok)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(reward)
    tok.save_pretrained(reward)
    return {"base": base, "adapter": adapter, "reward": reward, "tokenizer": tok}


def test_prompt_answers_once(models):
    result = CliRunner().invoke(
        app,
        [
            "chat",
            str(models["base"]),
            "--prompt",
            "what does the fox eat?",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert "you>" not in result.stdout  # only the answer, for scripts


def test_adapter_folder_chats(models):
    result = CliRunner().invoke(
        app, ["chat", str(models["adapter"]), "-p", "hello", "--temperature", "0", "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_interactive_keeps_history_resets_and_quits(models, monkeypatch):
    seen = []
    real_reply = chat_mod.reply

    def spy(model, tokenizer, messages, **kw):
        seen.append(
            (
                copy.deepcopy(messages),
                tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            )
        )
        return real_reply(model, tokenizer, messages, **kw)

    monkeypatch.setattr(chat_mod, "reply", spy)
    script = iter(["what does the fox eat?", "and the owl?", "/reset", "hello", "/quit", "never asked"])
    history = chat_mod.chat(str(models["base"]), temperature=0.7, max_new_tokens=6, ask=lambda _: next(script))

    assert len(seen) == 3
    first_answer = seen[1][0][1]["content"]
    assert [m["role"] for m in seen[1][0]] == ["user", "assistant", "user"]
    assert "what does the fox eat?" in seen[1][1] and seen[1][1].index("what does the fox eat?") < seen[1][1].index(
        "and the owl?"
    )
    assert first_answer in seen[1][1]  # the first answer is part of the second prompt
    assert seen[2][0] == [{"role": "user", "content": "hello"}]  # /reset cleared the history
    assert next(script) == "never asked"  # /quit stopped reading input
    assert [m["content"] for m in history if m["role"] == "user"] == ["hello"]


def test_system_message_leads_every_turn_and_help_answers(models, monkeypatch, capsys):
    seen = []
    real_reply = chat_mod.reply

    def spy(model, tokenizer, messages, **kw):
        seen.append(copy.deepcopy(messages))
        return real_reply(model, tokenizer, messages, **kw)

    monkeypatch.setattr(chat_mod, "reply", spy)
    script = iter(["/help", "hi", "/reset", "hello", "/quit"])
    chat_mod.chat(str(models["base"]), max_new_tokens=4, system="be brief", ask=lambda _: next(script))
    system = {"role": "system", "content": "be brief"}
    assert seen[0] == [system, {"role": "user", "content": "hi"}]
    assert seen[1] == [system, {"role": "user", "content": "hello"}]  # /reset keeps the system message
    assert "/reset clears the history" in capsys.readouterr().err  # /help printed the commands, no model call


def test_interactive_cli_ends_at_eof(models):
    result = CliRunner().invoke(app, ["chat", str(models["base"]), "--max-new-tokens", "4"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert "bot>" in result.stdout


def test_reward_model_is_refused(models):
    result = CliRunner().invoke(app, ["chat", str(models["reward"]), "-p", "hi"])
    assert result.exit_code == 2
    assert "causal LM" in result.output and "rlhf reward inspect" in result.output


def test_folder_without_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    result = CliRunner().invoke(app, ["chat", str(tmp_path), "-p", "hi"])
    assert result.exit_code == 2
    assert "not a model folder" in result.output


def test_world_lists_the_runs_animals_and_facts(models, tmp_path, capsys):
    """/world prints world.json of the run the model is in: every animal with its colour, food, home and friend."""
    import json
    import shutil

    from rlhf_cli.data.toy import ToyWorld

    run = tmp_path / "run"
    shutil.copytree(models["base"], run / "sft" / "final")
    facts = ToyWorld(0).facts
    (run / "data" / "toy").mkdir(parents=True)
    (run / "data" / "toy" / "world.json").write_text(json.dumps({"seed": 0, "facts": facts}), encoding="utf-8")
    script = iter(["/world", "/quit"])
    chat_mod.chat(str(run / "sft" / "final"), max_new_tokens=4, ask=lambda _: next(script))
    out, err = capsys.readouterr()
    assert "12 animals" in err and "/world" in err  # the start says the world exists and how to see it
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 6}
    assert set(rows) - {"animal"} == set(facts)
    for animal, fact in facts.items():
        cells = [c.strip() for c in rows[animal].split("│")[1:-1]]
        assert cells == [animal, fact["colour"], fact["food"], fact["home"], fact["friend"]]


def test_world_outside_a_toy_run_says_so(models, capsys):
    script = iter(["/world", "/quit"])
    chat_mod.chat(str(models["base"]), max_new_tokens=4, ask=lambda _: next(script))
    assert "not in a toy-world run" in capsys.readouterr().err


def test_greedy_by_default_and_samples_on_request(models, monkeypatch):
    """Chat answers as the report's evaluation does (greedy) unless --temperature asks for sampling; one generate."""
    calls = []
    real_generate = chat_mod.generate

    def spy(*args, **kw):
        calls.append(kw["temperature"])
        return real_generate(*args, **kw)

    monkeypatch.setattr(chat_mod, "generate", spy)
    ask = ["chat", str(models["base"]), "-p", "what does the owl eat?", "--max-new-tokens", "8"]
    first, second = (CliRunner().invoke(app, ask) for _ in range(2))
    assert first.exit_code == 0, first.output
    assert calls == [0.0, 0.0] and first.stdout == second.stdout
    sampled = CliRunner().invoke(app, [*ask, "--temperature", "0.7"])
    assert sampled.exit_code == 0, sampled.output
    assert calls[-1] == 0.7


def test_readme_chat_examples_ask_about_animals_of_the_default_world():
    """The README's chat examples name animals the tiny recipe's world (seed 0) has: a student can try them as printed."""
    import re
    from pathlib import Path

    from rlhf_cli.data.toy import ANIMALS, ToyWorld
    from rlhf_cli.recipe import load_recipe

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    asked = {a for line in readme.splitlines() if "rlhf chat" in line for a in re.findall(r"the (\w+)", line)}
    asked &= set(ANIMALS)
    assert asked and asked <= set(ToyWorld(load_recipe("tiny").seed).facts)
