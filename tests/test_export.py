"""`rlhf export`: a LoRA adapter merged into a plain HF folder that loads without peft; refusals; hub push offline."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app

TEXTS = ["the fox eats berries. the owl likes mice. hello there, my friend!"] * 40


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny causal LM folder and a trained-looking (non-zero) LoRA adapter on it, with lineage.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf_cli.models.modeling import build_model, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    root = tmp_path_factory.mktemp("export")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    base = root / "base"
    build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter change the model so merging matters
                p.normal_(0, 0.5)
    ids = torch.tensor([tok("the fox eats")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
    folder = root / "sft_final"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "lineage.json").write_text(
        json.dumps({"stage": "sft", "parents": {"init": str(base)}, "recipe_name": "tiny"})
    )
    return {"dir": folder, "base": base, "ids": ids, "expected": expected}


def test_export_merges_lora_into_a_plain_folder(adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "clean"
    result = CliRunner().invoke(app, ["export", str(adapter["dir"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "adapter_config.json").exists()
    assert list(out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out)  # no peft involved
    with torch.no_grad():
        logits = model(adapter["ids"]).logits
    torch.testing.assert_close(
        logits, adapter["expected"], atol=1e-4, rtol=1e-4
    )  # the merged adapter, not the bare base
    assert AutoTokenizer.from_pretrained(out).chat_template
    card = (out / "README.md").read_text()
    assert "sft" in card and "AutoModelForCausalLM" in card and "merged" in card
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "sft" and lineage["export"]["merged_lora"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_existing_out_is_refused_and_kept(adapter, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["export", str(adapter["dir"]), "--out", str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


def test_push_without_network_is_a_clear_user_error(adapter, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here either way; never hang
    out = tmp_path / "pushed"
    result = CliRunner().invoke(
        app, ["export", str(adapter["base"]), "--out", str(out), "--push-to-hub", "someone/tiny"]
    )
    assert result.exit_code == 2, result.output
    assert "Could not push" in result.output and "someone/tiny" in result.output
    assert "Traceback" not in result.output
    assert (out / "config.json").exists()  # the export itself was written before the push failed
