"""The stage table (rlhf_cli.runtime.steps) is what the CLI, pipeline, layout, recipe and trainer configs read."""

import dataclasses

from typer.testing import CliRunner

from rlhf_cli import cli, recipe
from rlhf_cli.models.trainer_configs import config_class
from rlhf_cli.runtime import layout, pipeline, steps
from rlhf_cli.stages.common import planned_parameters


def test_every_model_stage_has_a_command_with_its_help_and_the_stage_flags():
    runner = CliRunner()
    for name in steps.MODEL_STAGES:
        step = steps.BY_NAME[name]
        out = runner.invoke(cli.app, [step.command, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        assert step.summary.split(":")[0] in out.output
        for flag in ("--recipe", "--set", "--resume", "--overwrite", "--dry-run"):
            assert flag in out.output, (name, flag)


def test_the_table_drives_the_pipeline_layout_and_recipe():
    assert layout.STEPS == steps.STEPS
    assert set(pipeline.RUNNERS) == set(steps.STEPS)
    assert recipe.STAGES == steps.TRAINING_STAGES
    assert "dpo" in steps.STEPS and "dpo" not in steps.DEFAULT_STEPS  # a method beside PPO, run on request
    assert pipeline.parse_stages(None) == list(steps.DEFAULT_STEPS)
    for name in steps.TRAINING_STAGES:  # each config class imports, and takes every default the table gives it
        fields = {f.name for f in dataclasses.fields(config_class(name))}
        assert set(steps.BY_NAME[name].defaults) <= fields, name
        assert name in recipe.Recipe.model_fields  # its recipe section exists


def test_lineage_and_planned_size_follow_the_parent_links():
    assert steps.lineage("pretrain") == ["pretrain"]
    assert steps.lineage("dpo") == ["pretrain", "sft", "dpo"]
    assert steps.lineage("ppo") == ["pretrain", "sft", "ppo"]
    rec = recipe.load_recipe("tiny")
    assert planned_parameters(rec, "dpo") == planned_parameters(rec, "sft") > 0
    # a model named for SFT: every stage that descends from it has an unknown size, pretrain does not
    named = recipe.load_recipe("tiny", ["sft.init_from=some/model"])
    assert planned_parameters(named, "ppo") is None and planned_parameters(named, "pretrain") is not None


def test_a_section_key_and_the_same_training_key_are_refused_for_every_stage():
    problems = recipe.check_training_keys({"dpo": {"beta": 0.2, "training": {"beta": 0.3}}})
    assert problems == ["'dpo.training.beta' and 'dpo.beta' both set; keep one"]
    rec = recipe.load_recipe("tiny", ["dpo.beta=0.3"])
    assert rec.dpo.trainer_settings()["beta"] == 0.3
