"""`rlhf pipeline` with fake stages (fast): the order, --stages validation, --resume keeping finished stages, refusals."""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.recipe import load_recipe
from rlhf_cli.runtime import pipeline
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.steps import MODEL_STAGES


@pytest.fixture
def fake_steps(monkeypatch):
    """Replace every step by a fake that records (step, resume, overwrite) and writes what the real one leaves."""
    calls = []

    def fake(step, recipe, run_dir, *, resume, overwrite, accept_changes=False):
        calls.append((step, resume, overwrite))
        out = RunLayout(run_dir).output(step)
        if step in MODEL_STAGES:
            (out / "final").mkdir(parents=True, exist_ok=True)
            (out / "final" / "config.json").write_text("{}")
            (out / "eval.json").write_text(
                json.dumps(
                    {
                        "bits_per_byte": 1.25,
                        "finished_rate": 0.97,
                        "accuracy": {"mean": 0.8, "low": 0.7, "high": 0.9, "n": 100},
                    }
                )
            )
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}\n")
        return {}

    monkeypatch.setattr(pipeline, "_run_step", fake)
    return calls


def test_runs_every_step_in_order_and_records_timings(tmp_path, fake_steps):
    rec = load_recipe("tiny", check_training=False)
    record = pipeline.run_pipeline(rec, tmp_path / "run")
    assert [c[0] for c in fake_steps] == list(pipeline.DEFAULT_STEPS)  # dpo only when asked for
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert set(saved["steps"]) == set(pipeline.DEFAULT_STEPS)
    assert all(e["status"] == "done" and e["seconds"] >= 0 for e in saved["steps"].values())
    assert saved["steps"]["pretrain"]["headline"]["value"] == 1.25
    assert (tmp_path / "run" / "recipe.yaml").read_text() == rec.to_yaml()
    assert record["total_seconds"] >= 0


def test_a_recipe_names_the_steps_it_runs(tmp_path, fake_steps):
    rec = load_recipe("tiny", ["stages=[report, sft, reward]"], check_training=False)
    pipeline.run_pipeline(rec, tmp_path / "run")
    assert [c[0] for c in fake_steps] == ["sft", "reward", "report"]  # in pipeline order
    fake_steps.clear()
    pipeline.run_pipeline(rec, tmp_path / "other", stages="ppo")  # --stages wins
    assert [c[0] for c in fake_steps] == ["ppo"]
    assert load_recipe("qwen-0.5b-rlhf", check_training=False).stages == ["sft", "reward", "ppo", "eval", "report"]
    with pytest.raises(UserError, match="stages"):
        load_recipe("tiny", ["stages=[sft, rm]"], check_training=False)


def test_resume_skips_finished_stages_and_resumes_the_unfinished_one(tmp_path, fake_steps):
    run = tmp_path / "run"
    for stage in ("pretrain", "sft"):  # finished: final/ and the eval.json written after it
        (run / stage / "final").mkdir(parents=True)
        (run / stage / "final" / "config.json").write_text("{}")
        (run / stage / "eval.json").write_text("{}")
    (run / "ppo" / "final").mkdir(parents=True)  # final/ without eval.json: a crash between the two, not finished
    (run / "ppo" / "final" / "config.json").write_text("{}")
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


def test_bad_input_found_by_the_first_stage_leaves_no_trace(tmp_path):
    # The real pretrain stage: its data check fails before it writes; the pipeline writes no recipe.yaml or record either.
    from rlhf_cli.cli import app

    run = tmp_path / "run"
    args = ["pipeline", "-o", str(run), "--set", f"pretrain.data.path={tmp_path / 'missing.txt'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "missing.txt" in result.output
    assert not run.exists()


def test_a_failing_later_stage_is_recorded(tmp_path, fake_steps, monkeypatch):
    ran = pipeline._run_step

    def failing_reward(step, *args, **kwargs):
        if step == "reward":
            raise UserError("bad reward data")
        return ran(step, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_run_step", failing_reward)
    run = tmp_path / "run"
    with pytest.raises(UserError):
        pipeline.run_pipeline(load_recipe("tiny", check_training=False), run)
    steps = json.loads((run / "pipeline.json").read_text())["steps"]
    assert steps["label"]["status"] == "done" and steps["reward"]["status"] == "failed"
    assert (run / "recipe.yaml").exists()


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
    assert "pretrain,sft,sample,label,reward,ppo,dpo,best_of_n,expert_iteration,rloo,grpo,eval,report" in str(err.value)


def test_cli_bad_stage_exits_2_with_a_hint(tmp_path):
    from rlhf_cli.cli import app

    result = CliRunner().invoke(app, ["pipeline", "--stages", "sft,rewrd", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "did you mean 'reward'" in result.output
    assert not (tmp_path / "run").exists()


def test_sweep_trains_ppo_per_value_from_the_same_models_and_plots(tmp_path, monkeypatch):
    from rlhf_cli.evaluation import sweep
    from rlhf_cli.stages import ppo

    run = tmp_path / "run"
    for stage in ("sft", "reward"):  # finished: final/ and eval.json
        (run / stage / "final").mkdir(parents=True)
        (run / stage / "final" / "config.json").write_text("{}")
        (run / stage / "eval.json").write_text("{}")
    (run / "data" / "toy").mkdir(parents=True)
    seen = []

    def fake_ppo(recipe, run_dir, *, resume=False, overwrite=False):
        beta = recipe.ppo.kl_coef
        seen.append((beta, recipe.ppo.policy_from, recipe.ppo.reward_from, recipe.ppo.training.get("max_steps")))
        kl = 0.5 / (beta + 0.05)  # smaller penalty, larger KL; RM score keeps rising, gold peaks then falls
        (run_dir / "ppo" / "final").mkdir(parents=True)
        (run_dir / "ppo" / "final" / "config.json").write_text("{}")
        (run_dir / "ppo" / "eval.json").write_text(
            json.dumps(
                {
                    "ppo": {"kl_to_reference": kl, "rm_score": 0.3 * kl, "gold_reward": 0.8 + 0.05 * kl - 0.01 * kl**2},
                    "sft": {"rm_score": 0.0, "gold_reward": 0.8},
                    "gold_gain": {"mean": 0.01, "low": 0.0, "high": 0.02, "n": 64},
                }
            )
        )
        return {}

    monkeypatch.setattr(ppo, "run", fake_ppo)
    rec = load_recipe("tiny", check_training=False)
    record = sweep.run_sweep(rec, run, "ppo.kl_coef", ["0", "0.05", "0.2"], ["ppo.training.max_steps=3"], "tiny")
    assert [s[0] for s in seen] == [0.0, 0.05, 0.2]
    assert {s[1] for s in seen} == {str((run / "sft" / "final").resolve())}
    assert {s[2] for s in seen} == {str((run / "reward" / "final").resolve())} and {s[3] for s in seen} == {3}
    saved = json.loads((run / "sweep" / "sweep.json").read_text())
    assert [p["value"] for p in saved["points"]] == ["0", "0.05", "0.2"]
    assert saved["points"][0]["kl"] == pytest.approx(10.0) and saved["reference"]["gold_reward"] == pytest.approx(0.8)
    assert (run / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Gao et al.'s RL form through the points: gold rises then falls with KL, so the fit has an interior peak
    fit = saved["fit"]
    assert fit["form"] == "rl" and fit["beta"] > 0 and 0 < fit["peak_kl"] < 10 and fit["best_point"]["value"] == "0.2"
    assert (run / "sweep" / "ppo.kl_coef=0.05" / "data").resolve() == (run / "data").resolve()
    # a second call keeps the finished points
    seen.clear()
    sweep.run_sweep(rec, run, "ppo.kl_coef", ["0", "1"], [], "tiny")
    assert [s[0] for s in seen] == [1.0]
    assert record["plot"].endswith("sweep.png")


def test_sweep_runs_best_of_n_per_n_with_its_analytic_kl(tmp_path, monkeypatch):
    from rlhf_cli.evaluation import sweep
    from rlhf_cli.models.answers import best_of_n_kl
    from rlhf_cli.stages import best_of_n

    run = tmp_path / "run"
    for stage in ("sft", "reward"):  # finished: final/ and eval.json
        (run / stage / "final").mkdir(parents=True)
        (run / stage / "final" / "config.json").write_text("{}")
        (run / stage / "eval.json").write_text("{}")
    seen = []

    def fake_best_of_n(recipe, run_dir, *, resume=False, overwrite=False):
        n = recipe.best_of_n.n
        seen.append((n, recipe.best_of_n.policy_from, recipe.best_of_n.reward_from))
        (run_dir / "best_of_n" / "final").mkdir(parents=True)
        (run_dir / "best_of_n" / "final" / "config.json").write_text("{}")
        own = {"gold_reward": 0.9 - 0.01 * n, "rm_score": 0.1 * n, "mean_answer_tokens": 12.0, "finished_rate": 1.0}
        (run_dir / "best_of_n" / "eval.json").write_text(
            json.dumps({"best_of_n": own, "sft": {"gold_reward": 0.85}, "kl_to_sft_bound": best_of_n_kl(n)})
        )
        return {}

    monkeypatch.setattr(best_of_n, "run", fake_best_of_n)
    record = sweep.run_sweep(
        load_recipe("tiny", check_training=False), run, "best_of_n.n", ["1", "4", "16"], [], "tiny"
    )
    assert [s[0] for s in seen] == [1, 4, 16] and {s[2] for s in seen} == {str((run / "reward" / "final").resolve())}
    assert [p["kl"] for p in record["points"]] == pytest.approx([0.0, best_of_n_kl(4), best_of_n_kl(16)])
    assert [p["rm_score"] for p in record["points"]] == pytest.approx([0.1, 0.4, 1.6])
    assert record["stage"] == "best_of_n" and (run / "sweep-best_of_n" / "sweep.png").exists()


def test_sweep_refuses_a_key_outside_ppo(tmp_path):
    from rlhf_cli.evaluation.sweep import run_sweep

    with pytest.raises(UserError, match="ppo"):
        run_sweep(
            load_recipe("tiny", check_training=False), tmp_path, "sft.training.learning_rate", ["1e-3"], [], "tiny"
        )


def test_report_to_an_uninstalled_logger_is_a_user_error(tmp_path):
    import importlib.util

    from rlhf_cli.stages.common import trainer_config

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    rec = load_recipe("tiny", ["reward.training.report_to=[tensorboard]"], check_training=False)
    with pytest.raises(UserError, match="rlhf-cli\\[tensorboard\\]"):
        trainer_config(rec, "reward", tmp_path / "reward")
