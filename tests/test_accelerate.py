"""The accelerate configs in rlhf_cli/recipes/accelerate/ and the GPU recipes: each loads, says how to run it, and
(for the recipes) builds every trainer config offline with `--dry-run`, without touching the hub."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.recipe import BUILTIN_DIR, load_recipe

ACCELERATE_DIR = BUILTIN_DIR / "accelerate"
CONFIGS = ("cpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "two_node")
GPU_RECIPES = ("gpt2-124m-pretrain", "qwen-0.5b-rlhf", "qwen-0.5b-rlhf-lora")
REQUIRED = {
    "compute_environment",
    "distributed_type",
    "num_machines",
    "machine_rank",
    "num_processes",
    "mixed_precision",
    "use_cpu",
}


def launch_args(config: str):
    """What `accelerate launch --config_file <config> -m rlhf_cli sft` resolves to (which launcher, how many processes)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        ["--config_file", str(ACCELERATE_DIR / f"{config}.yaml"), "-m", "rlhf_cli", "sft"]
    )
    return _validate_launch_command(args)[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_config_loads_with_expected_keys(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = ACCELERATE_DIR / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and "accelerate launch --config_file rlhf_cli/recipes/accelerate/" in text
    raw = yaml.safe_load(text)
    assert REQUIRED <= set(raw), f"{name}: missing {REQUIRED - set(raw)}"
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader rejects unknown keys
    assert config.num_processes >= 2 and config.num_processes % config.num_machines == 0


def test_cpu_config_starts_several_processes_without_mpirun():
    # use_cpu: true (or MULTI_CPU) would send accelerate to its one-process launcher unless mpirun is installed.
    args = launch_args("cpu")
    assert args.multi_gpu and not args.cpu and not args.use_cpu
    assert args.num_processes == 2 and args.mpirun_hostfile is None


def test_sharded_and_multi_node_configs():
    zero2, zero3 = (yaml.safe_load((ACCELERATE_DIR / f"deepspeed_zero{n}.yaml").read_text()) for n in (2, 3))
    assert zero2["deepspeed_config"]["zero_stage"] == 2 and zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"]  # final/ must hold whole weights, not shards
    assert launch_args("deepspeed_zero2").use_deepspeed
    fsdp = launch_args("fsdp")
    assert fsdp.use_fsdp and fsdp.fsdp_state_dict_type == "FULL_STATE_DICT"
    two = launch_args("two_node")
    assert two.num_machines == 2 and two.main_process_ip and two.main_process_port and two.num_processes == 16


# ------------------------------------------------------------------------------------------------------ GPU recipes


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (the hub included) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during a dry run: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_documents_itself_and_validates(name):
    text = (BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    header = text.split("\nname:")[0]
    assert header.startswith("#") and f"--recipe {name}" in header and "--set " in header
    assert "GPU" in header  # the hardware it expects
    rec = load_recipe(name)
    assert rec.name == name
    hub_sources = [s.data.hub for s in (rec.pretrain, rec.sft, rec.ppo) if s.data and s.data.hub]
    hub_sources += [rec.reward.data.hub] if rec.reward.data else []
    assert hub_sources, "a GPU recipe trains on hub data sets, not the toy world"


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_dry_run_builds_every_trainer_config_offline(name, tmp_path, no_network):
    runner = CliRunner()
    for command in ("pretrain", "sft", "reward", "ppo"):  # a stage's dry run builds its own trainer config
        result = runner.invoke(app, [command, "--recipe", name, "--dry-run", "-o", str(tmp_path / "run")])
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert f"# {command}: " in result.output and "builds" in result.output
    result = runner.invoke(app, ["pipeline", "--recipe", name, "--dry-run", "-o", str(tmp_path / "run")])
    planned = [s for s in load_recipe(name).stages if s in ("pretrain", "sft", "reward", "ppo")]
    assert result.exit_code == 0 and planned, result.output
    assert all(f"# {stage}: " in result.output for stage in planned)  # the steps this recipe runs, no others
    assert not any(f"# {s}: " in result.output for s in {"pretrain", "sft", "reward", "ppo"} - set(planned))
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_gpu_recipe_settings_reach_the_trainer_configs(tmp_path):
    from rlhf_cli.stages.common import build_trainer_configs

    configs = build_trainer_configs(load_recipe("gpt2-124m-pretrain"), tmp_path)
    assert configs["pretrain"].gradient_accumulation_steps == 4 and configs["pretrain"].max_steps == 19073
    lora = load_recipe("qwen-0.5b-rlhf-lora")
    assert lora.sft.lora is not None and lora.ppo.lora is not None
    configs = build_trainer_configs(lora, tmp_path)
    assert configs["sft"].gradient_checkpointing and configs["ppo"].gradient_checkpointing


def test_two_node_and_cpu_commands_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert "rlhf_cli/recipes/accelerate/cpu.yaml" in text and "--machine_rank 1" in text
    for name in GPU_RECIPES:
        assert f"--recipe {name}" in text
