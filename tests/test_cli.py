"""The CLI surface: --help everywhere (with an example), --version, exit codes for user errors."""

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app

runner = CliRunner()

COMMANDS = [
    ["pipeline"],
    ["pretrain"],
    ["sft"],
    ["sample"],
    ["label"],
    ["label", "stats"],
    ["write"],
    ["reward"],
    ["reward", "inspect"],
    ["ppo"],
    ["chat"],
    ["eval"],
    ["report"],
    ["sweep"],
    ["check"],
    ["export"],
    ["env"],
    ["recipe", "list"],
    ["recipe", "show"],
    ["data", "toy"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "rlhf" in result.output


def test_recipe_show_with_override():
    result = runner.invoke(app, ["recipe", "show", "tiny", "--set", "pretrain.training.max_steps=5"])
    assert result.exit_code == 0
    assert "max_steps: 5" in result.output


def test_recipe_show_misspelt_key_exits_2_naming_the_key():
    result = runner.invoke(app, ["recipe", "show", "tiny", "--set", "pretrain.trainng.max_steps=5"])
    assert result.exit_code == 2
    assert "training" in result.output
    assert "Traceback" not in result.output


def test_stage_dry_run_builds_trainer_configs(tmp_path):
    result = runner.invoke(app, ["pretrain", "--dry-run", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "PretrainArguments builds" in result.output and "PPOConfig" not in result.output  # only its own stage
    result = runner.invoke(app, ["pipeline", "--dry-run", "-o", str(tmp_path / "run")])
    assert "PretrainArguments builds" in result.output and "PPOConfig builds" in result.output
    result = runner.invoke(app, ["pipeline", "--recipe", "qwen-0.5b-rlhf", "--dry-run", "-o", str(tmp_path / "run")])
    assert "# steps: sft, reward, ppo, eval, report" in result.output and "PretrainArguments" not in result.output
    assert not (tmp_path / "run").exists()


def test_bad_training_value_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["sft", "--dry-run", "--set", "sft.training.lr_scheduler_type=nonsense"])
    assert result.exit_code == 2
    assert "sft.training" in result.output


def test_env_prints_versions():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0 and "transformers" in result.output and "device" in result.output


def test_data_toy_writes_loadable_json(tmp_path):
    import datasets

    result = runner.invoke(app, ["data", "toy", "--out", str(tmp_path / "toy")])
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "toy" / "sft_train.jsonl"), split="train")
    assert "messages" in ds.column_names and len(ds) > 100


def test_data_toy_refuses_a_file_and_an_existing_world(tmp_path):
    out = tmp_path / "toy"
    assert runner.invoke(app, ["data", "toy", "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["data", "toy", "--out", str(out), "--seed", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["data", "toy", "--out", str(out), "--seed", "1", "--overwrite"]).exit_code == 0
    (tmp_path / "f.txt").write_text("x")
    assert runner.invoke(app, ["data", "toy", "--out", str(tmp_path / "f.txt")]).exit_code == 2


def test_a_data_section_given_a_file_says_to_use_path(tmp_path):
    result = runner.invoke(app, ["reward", "-o", str(tmp_path / "run"), "--set", "reward.data=pairs.jsonl"])
    assert result.exit_code == 2 and "reward.data.path=pairs.jsonl" in result.output
    assert not (tmp_path / "run").exists()


def test_report_on_a_folder_without_stages_writes_nothing(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no stage output" in result.output
    assert list(tmp_path.iterdir()) == []
