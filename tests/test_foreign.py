"""Checkpoints the project did not build: small models shaped like Qwen2.5 (ChatML, <|im_end|> ends a turn, eos is
<|endoftext|>, tied embeddings, bf16 on disk), Llama 3 (<|eot_id|>, bf16, no pad token), GPT-2 (no chat template,
no pad token) and Phi-3 (<|end|>, bf16), built locally by bench/foreign.py with the real chat templates TRL ships.
From each, the whole pipeline on the toy world: continued pre-training, SFT, sampling, ranking, the reward model and
PPO. These are the project's "real model" tests until a GPU run replaces them (bench/gpu.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.foreign import FAMILIES, PIPELINE_SETTINGS, build
from rlhf_cli.cli import app

pytestmark = pytest.mark.slow

END_OF_TURN = {"qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>", "gpt2": "<|endoftext|>", "phi3": "<|end|>"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def run(request, tmp_path_factory):
    """(family, its checkpoint, a run folder where the pipeline ran from it)."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    source = build(family, root / "checkpoint")
    out = root / "run"
    args = ["pipeline", "--recipe", "tiny", "-o", str(out), "--stages", "pretrain,sft,sample,label,reward,ppo"]
    args += ["--set", f"pretrain.init_from={source}"] + [a for s in PIPELINE_SETTINGS for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return family, source, out


def _eval(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "eval.json").read_text())


def test_generation_stops_at_the_templates_end_of_turn(run):
    from rlhf_cli.models.modeling import end_of_turn_ids, load_tokenizer

    family, source, out = run
    tok = load_tokenizer(str(out / "sft" / "final"))
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok))[0] == END_OF_TURN[family]
    sft = _eval(out, "sft")
    assert sft["finished_rate"] >= 0.9, sft  # every answer ran to the length limit before
    samples = [json.loads(line) for line in (out / "feedback" / "samples.jsonl").open()]
    answers = [a for s in samples for a in s["answers"]]
    assert sum(f for s in samples for f in s["finished"]) / len(answers) >= 0.9
    turns = ("\nuser", "\nassistant", "user\n", "assistant\n", "<|")
    assert not any(t in a for a in answers for t in turns)  # no invented next turn carried in an answer


def test_ppo_raises_the_gold_reward(run):
    family, _, out = run
    gain = _eval(out, "ppo")["gold_gain"]
    assert gain["low"] > 0, (family, gain)


def test_every_final_loads_and_answers_with_plain_transformers(run):
    """A stock `transformers.pipeline` on the saved SFT and PPO folders stops at the end of the assistant's turn
    (generation_config.json), and the reward model loads as a sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    family, _, out = run
    prompts = [json.loads(line)["prompt"] for line in (out / "feedback" / "samples.jsonl").open()][:8]
    for stage in ("sft", "ppo"):
        folder = out / stage / "final"
        chat = pipeline("text-generation", model=str(folder), tokenizer=str(folder), device="cpu")
        tok = chat.tokenizer
        stops = chat.model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [stops]
        assert tok.convert_tokens_to_ids(END_OF_TURN[family]) in stops
        messages = [{"role": "user", "content": "what does the fox eat?"}]
        answer = chat(messages, max_new_tokens=40, do_sample=False)[0]["generated_text"][-1]
        assert answer["role"] == "assistant" and "user" not in answer["content"], answer
        # Greedy answers to 8 training prompts: generation ends at the first end of turn (a generation_config without
        # it runs past), and most answers reach one. Which prompts a small PPO model loops on is a draw of the CPU's
        # kernels (Zen 4's llama3 PPO: "what does the fox eat?", finished 0.89 over the eval), so no single prompt.
        ended = 0
        for messages in prompts:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                new = chat.model.generate(**ids, max_new_tokens=40, do_sample=False)[0, ids["input_ids"].shape[1] :]
            stop_at = [i for i, token in enumerate(new.tolist()) if token in stops]
            assert stop_at in ([], [len(new) - 1]), (stage, tok.decode(new))
            ended += bool(stop_at)
        assert ended >= len(prompts) // 2, (stage, ended)
    rm = AutoModelForSequenceClassification.from_pretrained(out / "reward" / "final")
    assert rm.config.num_labels == 1
    AutoTokenizer.from_pretrained(out / "reward" / "final")


def test_methods_beside_ppo_end_their_turns(run):
    """DPO (TRL's DPOTrainer) and GRPO (TRL's GRPOTrainer, which stops where the policy's generation_config says)
    train from the foreign SFT model and answer in finished turns."""
    family, _, out = run
    if family != "qwen2.5":  # one family is enough for the methods; the stop tokens are the same mechanism
        pytest.skip("methods run on the Qwen2.5-shaped checkpoint")
    for method, steps in (("dpo", 20), ("grpo", 4)):
        args = ["--recipe", "tiny", "-o", str(out), "--set", f"{method}.training.max_steps={steps}"]
        args += ["--set", f"{method}.eval_prompts=16"]
        result = CliRunner().invoke(app, [method, *args])
        assert result.exit_code == 0, result.output
        metrics = _eval(out, method)
        assert metrics[method]["finished_rate"] >= 0.9, metrics[method]


def test_final_is_saved_in_the_sources_dtype_when_rounding_keeps_the_update(run):
    family, source, out = run
    source_dtype = json.loads((source / "config.json").read_text())["dtype"]
    config = json.loads((out / "pretrain" / "final" / "config.json").read_text())
    card = (out / "pretrain" / "final" / "README.md").read_text()
    # 300 steps at lr 2e-3 move the weights by many bf16 steps: a bf16 checkpoint stays bf16
    assert config["dtype"] == source_dtype and f"Weights saved in {source_dtype}" in card


def test_small_updates_to_a_bf16_checkpoint_are_kept(tmp_path):
    """A bf16 checkpoint trains on fp32 master weights: at lr 1e-5 every weight moves (in bf16 most updates would
    round to nothing), and the final folder keeps them (fp32, since rounding to bf16 would undo them), as its card says."""
    import torch
    from safetensors.torch import load_file

    from rlhf_cli.models.modeling import load_causal_lm

    source = build("qwen2.5", tmp_path / "qwen")
    assert load_causal_lm(str(source)).dtype == torch.float32  # the checkpoint is bf16 on disk
    out = tmp_path / "run"
    args = ["sft", "--recipe", "tiny", "-o", str(out), "--set", f"sft.init_from={source}"]
    for s in ("sft.training.learning_rate=1e-5", "sft.training.max_steps=10", "sft.training.warmup_steps=0",
              "sft.eval_prompts=4", "sft.training.per_device_train_batch_size=8"):  # fmt: skip
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    before = load_file(source / "model.safetensors")
    after = load_file(out / "sft" / "final" / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    assert after[key].dtype == torch.float32
    moved = (after[key] != before[key].float()).float().mean().item()
    assert moved > 0.95, moved
    assert "Weights saved in float32" in (out / "sft" / "final" / "README.md").read_text()


def test_rounding_change_measures_what_bf16_would_undo(tmp_path):
    import torch
    from safetensors.torch import save_file

    from rlhf_cli.models.modeling import rounding_change

    source = torch.randn(64, 64).to(torch.bfloat16)
    save_file({"w": source}, str(tmp_path / "model.safetensors"))
    tiny = source.float() + 1e-6  # far below half a bf16 step: rounding undoes it all
    big = source.float() + 0.5 * torch.randn(64, 64)
    assert rounding_change({"w": tiny}, str(tmp_path), torch.bfloat16) > 0.9
    assert rounding_change({"w": big}, str(tmp_path), torch.bfloat16) < 0.1
    assert rounding_change({"w": big}, str(tmp_path / "missing"), torch.bfloat16) is None
