"""Loading and saving checkpoints the project did not build, fast: end-of-turn tokens from chat templates, fp32 master
weights from a bf16 checkpoint, the saved dtype's rule, and the engine helpers (DeepSpeed's auto values, sharding,
FSDP/DeepSpeed refused on CPU processes). The whole pipeline from such checkpoints: tests/test_foreign.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bench.foreign import FAMILIES, build, build_tokenizer

TEXTS = ["the fox eats berries.", "the owl lives in the forest. happy to help!"] * 50
END_OF_TURN = {"qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>", "gpt2": "<|endoftext|>", "phi3": "<|end|>"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_end_of_turn_is_the_templates_not_the_eos(family):
    from rlhf_cli.models.modeling import end_of_turn_ids, ensure_chat_ready

    tok = ensure_chat_ready(build_tokenizer(FAMILIES[family], TEXTS))
    stops = tok.convert_ids_to_tokens(end_of_turn_ids(tok))
    assert stops[0] == END_OF_TURN[family]
    assert stops[-1] == tok.eos_token  # eos always stops too
    if family in ("qwen2.5", "llama3", "phi3"):
        assert stops[0] != tok.eos_token  # the trap: decoding that waits for eos never ends a turn


def test_generation_cuts_at_any_end_of_turn_token():
    from rlhf_cli.models.generation import cut_at_eos
    from rlhf_cli.ppo.core import mask_after_eos

    assert cut_at_eos([5, 6, 9, 7, 3], [3, 9]) == ([5, 6], True)
    assert cut_at_eos([5, 6], [3, 9]) == ([5, 6], False)
    assert cut_at_eos([5, 3, 6], 3) == ([5], True)
    responses = torch.tensor([[5, 9, 6, 6], [5, 6, 3, 6], [5, 6, 6, 6]])
    cut, mask, finished = mask_after_eos(responses, [3, 9], pad_id=0)
    assert finished.tolist() == [True, True, False]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert cut.tolist() == [[5, 9, 0, 0], [5, 6, 3, 0], [5, 6, 6, 6]]


def test_a_bf16_checkpoint_loads_with_fp32_masters_and_stops_at_its_turn(tmp_path):
    from rlhf_cli.models.modeling import checkpoint_dtype, frozen_dtype, load_causal_lm, load_tokenizer

    ckpt = build("qwen2.5", tmp_path / "qwen", texts=TEXTS)
    assert checkpoint_dtype(str(ckpt)) == "bfloat16"
    tok = load_tokenizer(str(ckpt))
    model = load_causal_lm(str(ckpt), tokenizer=tok)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    frozen = load_causal_lm(str(ckpt), dtype=frozen_dtype(True))
    assert next(frozen.parameters()).dtype == torch.bfloat16
    assert frozen_dtype(False) == "float32"


def test_save_model_keeps_the_sources_dtype_only_when_rounding_keeps_the_update(tmp_path):
    from rlhf_cli.models.modeling import load_causal_lm, save_model

    ckpt = build("qwen2.5", tmp_path / "qwen", texts=TEXTS)
    model = load_causal_lm(str(ckpt))
    with torch.no_grad():  # a tiny update: far below half a bf16 step
        for p in model.parameters():
            p.add_(1e-7)
    note = save_model(model, tmp_path / "small", source=str(ckpt))
    assert json.loads((tmp_path / "small" / "config.json").read_text())["dtype"] == "float32"
    assert "would change what training learned by" in note
    with torch.no_grad():  # a large one: rounding changes it by a few per cent at most
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    note = save_model(model, tmp_path / "big", source=str(ckpt))
    assert json.loads((tmp_path / "big" / "config.json").read_text())["dtype"] == "bfloat16"
    assert note.startswith("Weights saved in bfloat16: as the checkpoint it started from")
    assert load_causal_lm(str(tmp_path / "big")).dtype == torch.float32  # and it loads back as a trainable model
    forced = save_model(model, tmp_path / "forced", source=str(ckpt), setting="float32")
    assert "save_dtype: float32 in the recipe" in forced
    fresh = save_model(model, tmp_path / "fresh", source=None)
    assert "float32" in fresh


def test_deepspeed_auto_batch_sizes_are_filled_for_ppo():
    from rlhf_cli.ppo.trainer import _fill_deepspeed_auto

    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "zero_optimization": {}}
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))
    acc.num_processes = 4
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2, max_grad_norm=1.0)
    _fill_deepspeed_auto(acc, args)
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 64 and config["gradient_clipping"] == 1.0
    config["train_micro_batch_size_per_gpu"] = 3  # a value the user set stays
    _fill_deepspeed_auto(acc, args)
    assert config["train_micro_batch_size_per_gpu"] == 3


def test_which_engines_shard_the_model():
    from rlhf_cli.runtime.distributed import sharded

    def acc(ds_stage=None, kind="MULTI_GPU"):
        plugin = SimpleNamespace(zero_stage=ds_stage) if ds_stage else None
        return SimpleNamespace(
            state=SimpleNamespace(deepspeed_plugin=plugin), distributed_type=f"DistributedType.{kind}"
        )

    assert sharded(acc(3)) and not sharded(acc(2)) and sharded(acc(kind="FSDP")) and not sharded(acc(kind="NO"))


def test_frozen_models_load_whole_under_fsdps_ram_efficient_loading(monkeypatch):
    import os

    from rlhf_cli.runtime.distributed import whole_loading

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with whole_loading():
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_fsdp_and_deepspeed_are_refused_on_cpu_processes(engine, monkeypatch, capsys):
    """accelerate runs them only on GPUs; on CPU processes a launch would quietly become plain data parallel."""
    from rlhf_cli import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
    with pytest.raises(SystemExit) as exit_:
        cli._join_cpu_process_group()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "runs on GPUs only" in err and "accelerate/cpu.yaml" in err


def test_sft_refuses_a_template_that_cannot_mask_the_answers():
    """A template without {% generation %} markers that TRL has no training twin of: refused in one sentence before
    anything trains (TRL would raise deep inside SFTTrainer); a known template gets TRL's twin."""
    from rlhf_cli.models.modeling import check_trainable_template, training_chat_template
    from rlhf_cli.runtime.errors import UserError

    tok = build_tokenizer(FAMILIES["qwen2.5"], TEXTS)
    assert "{% generation %}" in training_chat_template(tok).replace("{%- generation %}", "{% generation %}")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert training_chat_template(tok) is None
    with pytest.raises(UserError, match="sft.assistant_only_loss: false"):
        check_trainable_template(tok, "my-model", "sft")
