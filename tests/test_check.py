"""`rlhf check`: the tiny recipe passes with every table printed and nothing written; broken data lists every reason."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.evaluation import check as check_mod

SMALL = [
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_layers=2",
    "--set",
    "model.num_heads=2",
    "--set",
    "tokenizer.train.vocab_size=400",
    "--set",
    "sft.max_length=40",
    "--set",
    "sft.lora.r=4",
]


def test_tiny_recipe_passes_and_writes_nothing(tmp_path, monkeypatch):
    results = []
    real = check_mod.check_recipe
    monkeypatch.setattr(check_mod, "check_recipe", lambda *a, **kw: results.append(real(*a, **kw)))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["check", "--recipe", "tiny", "-o", str(run_dir), *SMALL], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for title in (
        "Data sets",
        "SFT token lengths",
        "Trainer configs",
        "Parameters and training memory",
        "All checks passed",
    ):
        assert title in result.stdout
    assert "[[" in result.stdout and "<|assistant|>[[" in result.stdout  # the answer is marked, the prompt is not
    assert not run_dir.exists()  # toy data went to a temporary folder
    assert f"--output-dir {run_dir}" in " ".join(result.stdout.split())  # the closing command works as printed

    summary = results[0]
    lengths = summary["sft_lengths"]
    assert 0 < lengths["over_max_length"] < lengths["count"]  # max_length=40 cuts the longer toy conversations
    assert f"{lengths['over_max_length']} of {lengths['count']}" in result.stdout
    memory = summary["memory"]
    base = memory["pretrain"]["parameters"]
    assert memory["pretrain"]["trainable"] == base
    assert 0 < memory["sft"]["trainable"] < base / 5  # LoRA trains only the adapter
    assert memory["reward"]["parameters"] == base + 32  # a scalar head on the same body (tied embeddings)
    assert memory["ppo"]["parameters"] == 2 * base + 2 * (base + 32)  # policy, reference, reward and value models
    assert memory["ppo"]["bytes_fp32"] > memory["ppo"]["bytes_bf16"] > 0


def test_broken_data_lists_every_reason(tmp_path):
    bad = tmp_path / "chats.jsonl"
    bad.write_text("\n".join(json.dumps({"question": "hi", "reply": "hello"}) for _ in range(5)) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"what does the fox eat? {i}"}) for i in range(5)) + "\n")
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(
        "name: broken\n"
        f"pretrain: {{data: {{path: {tmp_path / 'missing.txt'}}}}}\n"
        f"sft: {{data: {{path: {bad}}}}}\n"
        f"feedback: {{data: {{path: {prompts}}}}}\n"
        f"ppo: {{data: {{path: {prompts}}}}}\n"
        f"dpo: {{data: {{path: {tmp_path / 'no-pairs.jsonl'}}}}}\n"
    )
    result = CliRunner().invoke(app, ["check", "--recipe", str(recipe), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "3 problems" in result.output and "no-pairs.jsonl" in result.output  # dpo.data is checked too
    assert "missing.txt" in result.output  # the missing file
    assert "chats.jsonl" in result.output and "fits no sft format" in result.output  # the unknown format
    assert "Traceback" not in result.output
