"""Precision on any machine: the rule behind `precision: auto`, and every stage run for real in bf16 and in fp32.

The suite runs on CPUs with fast bf16 (AMX) and without it (AVX2), so the hardware is simulated here: what the rule picks
on the other kind of CPU, and the bf16-on-a-CPU path of every command, which crashed on AMX machines while CI, on AVX2
machines, never took it.
"""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.recipe import load_recipe
from rlhf_cli.runtime import precision
from rlhf_cli.stages.common import build_trainer_configs, trainer_config

TINY = [
    "sft.training={}",  # drops the tiny recipe's bf16 pin for SFT: the rule decides, as in every other recipe
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "tokenizer.train.vocab_size=400",
    "pretrain.block_size=64", "pretrain.training.max_steps=6", "pretrain.training.per_device_train_batch_size=8",
    "pretrain.training.warmup_steps=0", "pretrain.probes=false", "pretrain.training.logging_steps=2",
    "sft.training.logging_steps=2", "reward.training.logging_steps=2",
    "sft.max_length=96", "sft.training.max_steps=4", "sft.training.per_device_train_batch_size=8", "sft.eval_prompts=4",
    "feedback.num_prompts=12", "feedback.max_new_tokens=12", "feedback.batch_size=48",
    "reward.max_length=96", "reward.training.max_steps=4", "reward.training.num_train_epochs=1",
    "ppo.training.max_steps=2", "ppo.training.per_device_train_batch_size=8", "ppo.response_length=12",
    "ppo.eval_prompts=4", "eval.num_prompts=6", "eval.max_new_tokens=12",
]  # fmt: skip
STAGES = ("pretrain", "sft", "reward", "ppo")


def simulate(monkeypatch, *, gpu: bool = False, flags: tuple[str, ...] = ()):
    monkeypatch.setattr(precision, "gpu_available", lambda: gpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
    if gpu:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


AMX = ("avx512f", "amx_bf16", "amx_tile", "avx512_bf16")
AVX2 = ("avx2", "fma")


# ------------------------------------------------------------------------------------------------------ the rule


def test_a_cpu_without_fast_bf16_always_picks_fp32(monkeypatch):
    simulate(monkeypatch, flags=AVX2)
    assert not precision.has_fast_bf16()
    for n in (10**5, 10**7, 10**9):
        chosen = precision.choose(n)
        assert not chosen.bf16 and "no AMX" in chosen.reason


def test_an_amx_cpu_picks_bf16_only_from_the_measured_size(monkeypatch):
    simulate(monkeypatch, flags=AMX)
    small = precision.choose(precision.BF16_MIN_PARAMS - 1)
    big = precision.choose(precision.BF16_MIN_PARAMS)
    assert not small.bf16 and "fp32 is faster" in small.reason
    assert big.bf16 and "AMX" in big.reason


def test_the_recipe_and_the_stage_override_the_rule(monkeypatch):
    simulate(monkeypatch, flags=AVX2)
    assert precision.choose(10**5, "bf16").bf16
    simulate(monkeypatch, flags=AMX)
    assert not precision.choose(10**9, "fp32").bf16
    assert precision.for_training(10**5, "fp32", {"bf16": True}).bf16  # the stage's own training.bf16 wins
    assert not precision.for_training(10**9, "bf16", {"bf16": False}).bf16


def test_a_gpu_with_bf16_picks_bf16_at_any_size(monkeypatch):
    simulate(monkeypatch, gpu=True)
    assert precision.choose(10**5).bf16 and "GPU" in precision.choose(10**5).reason


def test_an_unknown_precision_setting_is_a_recipe_error():
    from rlhf_cli.runtime.errors import UserError

    with pytest.raises(UserError, match="precision"):
        load_recipe("tiny", ["precision=fp16"])


@pytest.mark.parametrize("flags", [AMX, AVX2], ids=["amx", "avx2"])
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_every_trainer_config_builds_forced_either_way_on_a_cpu(monkeypatch, tmp_path, flags, bf16):
    # transformers refuses TrainingArguments(bf16=True) without a GPU unless use_cpu is set: the crash on AMX CPUs.
    simulate(monkeypatch, flags=flags)
    rec = load_recipe("tiny", [f"{s}.training.bf16={str(bf16).lower()}" for s in STAGES])
    for stage in STAGES:
        config = trainer_config(rec, stage, tmp_path / stage, n_params=10**6)
        assert config.bf16 is bf16 and config.use_cpu


def test_dry_run_plans_the_precision_of_the_tiny_model(monkeypatch, tmp_path):
    simulate(monkeypatch, flags=AMX)
    configs = build_trainer_configs(load_recipe("tiny"), tmp_path)
    assert not any(c.bf16 for c in configs.values())  # ~1M parameters: fp32 is faster even with AMX
    configs = build_trainer_configs(load_recipe("tiny", ["model.size=small"]), tmp_path)
    assert configs["pretrain"].bf16 and configs["ppo"].bf16  # ~30M parameters: bf16


# ------------------------------------------------------------------------------------------------------ real runs


def _pipeline(run, extra):
    args = ["pipeline", "--recipe", "tiny", "-o", str(run)] + [a for s in TINY + extra for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 3), result.output  # 3: finished, a target missed (a shrunk model misses them)
    return result.output


def _trained_in(run) -> dict:
    return {stage: json.loads((run / stage / "eval.json").read_text())["precision"] for stage in STAGES}


@pytest.mark.slow
def test_the_auto_rule_on_an_amx_cpu_runs_every_command_in_bf16(monkeypatch, tmp_path):
    # What `make demo` and `make test` hit on a Sapphire Rapids CPU: auto picks bf16 (here for a tiny model too).
    simulate(monkeypatch, flags=AMX)
    monkeypatch.setattr(precision, "BF16_MIN_PARAMS", 0)
    run = tmp_path / "run"
    output = _pipeline(run, [])
    assert _trained_in(run) == dict.fromkeys(STAGES, "bf16")
    assert "training in bf16" in output
    assert json.loads((run / "pretrain" / "eval.json").read_text())["dtype"] == "bfloat16"
    for stage in STAGES:
        rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [
            r.get("loss", r.get("loss/pg_loss")) for r in rows if r.get("loss", r.get("loss/pg_loss")) is not None
        ]
        assert losses and all(abs(x) < 1e6 for x in losses), (stage, rows)
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    assert set(evaluation["models"]) == {"base", "sft", "ppo"}

    # chat, reward inspect and a sweep point take the same path
    chat = CliRunner().invoke(app, ["chat", str(run / "ppo" / "final"), "--prompt", "what does the fox eat?"])
    assert chat.exit_code == 0, chat.output
    inspect = CliRunner().invoke(app, ["reward", "inspect", str(run / "reward" / "final")])
    assert inspect.exit_code == 0, inspect.output
    sweep = CliRunner().invoke(
        app,
        ["sweep", "--recipe", "tiny", "-o", str(run), "--param", "ppo.kl_coef", "--values", "0.2"]
        + [a for s in TINY for a in ("--set", s)],
    )
    assert sweep.exit_code == 0, sweep.output
    point = json.loads((run / "sweep" / "ppo.kl_coef=0.2" / "ppo" / "eval.json").read_text())
    assert point["precision"] == "bf16"


@pytest.mark.slow
def test_training_bf16_set_on_every_stage_finishes_on_any_cpu(monkeypatch, tmp_path):
    simulate(monkeypatch, flags=AVX2)  # a CPU where the rule would never pick bf16
    run = tmp_path / "run"
    _pipeline(run, ["precision=bf16", *(f"{s}.training.bf16=true" for s in STAGES)])
    assert _trained_in(run) == dict.fromkeys(STAGES, "bf16")
    reason = json.loads((run / "sft" / "eval.json").read_text())["precision_reason"]
    assert "training.bf16" in reason


@pytest.mark.slow
def test_training_bf16_false_on_every_stage_forces_fp32_where_auto_would_pick_bf16(monkeypatch, tmp_path):
    simulate(monkeypatch, flags=AMX)
    monkeypatch.setattr(precision, "BF16_MIN_PARAMS", 0)
    run = tmp_path / "run"
    output = _pipeline(run, ["precision=fp32", *(f"{s}.training.bf16=false" for s in STAGES)])
    assert _trained_in(run) == dict.fromkeys(STAGES, "fp32")
    assert "training in fp32" in output and "training in bf16" not in output
    assert json.loads((run / "pretrain" / "eval.json").read_text())["dtype"] == "float32"


def test_inference_autocasts_only_where_the_rule_says(monkeypatch):
    import torch

    layer = torch.nn.Linear(4, 4)
    simulate(monkeypatch, flags=AMX)
    monkeypatch.setattr(precision, "BF16_MIN_PARAMS", 0)
    with precision.inference(layer):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with precision.inference(layer, "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    simulate(monkeypatch, flags=AVX2)
    with precision.inference(layer):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
