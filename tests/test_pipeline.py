"""`rlhf pipeline` with fake stages (fast): the order, --stages validation, --resume keeping finished stages, refusals."""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli import pipeline
from rlhf_cli.errors import UserError
from rlhf_cli.recipe import load_recipe


@pytest.fixture
def fake_steps(monkeypatch):
    """Replace every step by a fake that records (step, resume, overwrite) and writes what the real one leaves."""
    calls = []

    def fake(step, recipe, run_dir, *, resume, overwrite):
        calls.append((step, resume, overwrite))
        out = pipeline.step_outputs(run_dir, step)
        if step in pipeline.MODEL_STAGES:
            (out / "final").mkdir(parents=True, exist_ok=True)
            (out / "final" / "config.json").write_text("{}")
            (out / "eval.json").write_text(json.dumps({"bits_per_byte": 1.25, "finished_share": 0.97, "accuracy": 0.8}))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}\n")
        return {}

    monkeypatch.setattr(pipeline, "_run_step", fake)
    return calls


def test_runs_every_step_in_order_and_records_timings(tmp_path, fake_steps):
    rec = load_recipe("tiny", check_training=False)
    record = pipeline.run_pipeline(rec, tmp_path / "run")
    assert [c[0] for c in fake_steps] == list(pipeline.STEPS)
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert set(saved["steps"]) == set(pipeline.STEPS)
    assert all(e["status"] == "done" and e["seconds"] >= 0 for e in saved["steps"].values())
    assert saved["steps"]["pretrain"]["headline"]["value"] == 1.25
    assert (tmp_path / "run" / "recipe.yaml").read_text() == rec.to_yaml()
    assert record["total_seconds"] >= 0


def test_resume_skips_finished_stages_and_resumes_the_unfinished_one(tmp_path, fake_steps):
    run = tmp_path / "run"
    for stage in ("pretrain", "sft"):
        (run / stage / "final").mkdir(parents=True)
        (run / stage / "final" / "config.json").write_text("{}")
    (run / "feedback").mkdir()
    (run / "feedback" / "samples.jsonl").write_text("{}\n")
    (run / "reward" / "checkpoints" / "checkpoint-5").mkdir(parents=True)  # started, not finished
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), run, resume=True)
    assert [c[0] for c in fake_steps] == ["label", "reward", "ppo", "eval", "report"]
    assert dict((c[0], c[1]) for c in fake_steps)["reward"] is True  # continues from its checkpoint
    steps = json.loads((run / "pipeline.json").read_text())["steps"]
    assert steps["pretrain"]["status"] == "kept" and steps["reward"]["status"] == "done"


def test_second_resume_runs_nothing_but_eval_and_report_are_kept_too(tmp_path, fake_steps):
    run = tmp_path / "run"
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), run)
    fake_steps.clear()
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), run, resume=True)
    assert fake_steps == []


def test_existing_stage_is_refused_before_anything_runs(tmp_path, fake_steps):
    run = tmp_path / "run"
    (run / "sft" / "final").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: old\n")
    with pytest.raises(UserError, match="--resume"):
        pipeline.run_pipeline(load_recipe("tiny", check_training=False), run)
    assert fake_steps == []
    assert (run / "recipe.yaml").read_text() == "name: old\n"  # not clobbered


def test_overwrite_passes_through(tmp_path, fake_steps):
    run = tmp_path / "run"
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), run, stages="pretrain")
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), run, stages="pretrain", overwrite=True)
    assert fake_steps[-1] == ("pretrain", False, True)


def test_stage_subset_is_put_in_pipeline_order(tmp_path, fake_steps):
    pipeline.run_pipeline(load_recipe("tiny", check_training=False), tmp_path / "run", stages="reward, sft,label")
    assert [c[0] for c in fake_steps] == ["sft", "label", "reward"]


@pytest.mark.parametrize("bad", ["sft,rewrd", "", "ppo,evaluate"])
def test_unknown_stage_names_list_the_valid_ones(bad):
    with pytest.raises(UserError) as err:
        pipeline.parse_stages(bad)
    assert "pretrain,sft,sample,label,reward,ppo,eval,report" in str(err.value)


def test_cli_bad_stage_exits_2_with_a_hint(tmp_path):
    from rlhf_cli.cli import app

    result = CliRunner().invoke(app, ["pipeline", "--stages", "sft,rewrd", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "did you mean 'reward'" in result.output
    assert not (tmp_path / "run").exists()
