"""`rlhf chat`: one-shot answers, the interactive loop with scripted input (history, /reset, /quit), adapters, refusals."""

from __future__ import annotations

import copy

import pytest
from typer.testing import CliRunner

from rlhf_cli import chat as chat_mod
from rlhf_cli.cli import app

TEXTS = ["the fox eats berries. the owl likes mice. hello there, my friend!"] * 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny causal LM folder, a LoRA adapter on it, and a tiny reward model (sequence classifier) folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_cli.modeling import build_model, model_config, train_tokenizer
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
