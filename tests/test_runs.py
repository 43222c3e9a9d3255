"""The run folder's safety net: a user error leaves no trace; model paths that are not models are named."""

import pytest


def test_a_user_error_leaves_no_trace_of_what_came_before_the_checks(tmp_path):
    from rlhf_cli.errors import UserError
    from rlhf_cli.runs import no_trace_on_user_error

    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "eval.json").write_text("{}")
    with pytest.raises(UserError), no_trace_on_user_error(run):
        (run / "data" / "toy").mkdir(parents=True)
        (run / "data" / "toy" / "world.json").write_text("{}")
        (run / "sft" / "checkpoints").mkdir(parents=True)
        raise UserError("bad")
    assert sorted(p.name for p in run.iterdir()) == ["pretrain"] and (run / "pretrain" / "eval.json").exists()

    fresh = tmp_path / "fresh"
    with pytest.raises(UserError), no_trace_on_user_error(fresh):
        (fresh / "data" / "toy").mkdir(parents=True)
        raise UserError("bad")
    assert not fresh.exists()

    with pytest.raises(RuntimeError), no_trace_on_user_error(fresh):  # a crash after the checks keeps what it wrote
        (fresh / "sft" / "checkpoints").mkdir(parents=True)
        raise RuntimeError("crash")
    assert (fresh / "sft" / "checkpoints").exists()


def test_model_paths_that_do_not_exist_or_hold_no_model_are_named(tmp_path):
    from rlhf_cli.errors import UserError
    from rlhf_cli.modeling import load_causal_lm, load_tokenizer

    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere" / "final"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model folder"):
        load_tokenizer(str(tmp_path / "empty"))


def test_the_steps_to_run_first_are_those_the_recipe_needs(tmp_path):
    from rlhf_cli.layout import RunLayout
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.runs import run_first

    layout = RunLayout(tmp_path / "run")
    tiny = run_first(layout, "reward", load_recipe("tiny"))
    assert tiny.startswith(
        "`rlhf pretrain`, then `rlhf sft`, then `rlhf sample`, then `rlhf label`, then `rlhf reward`"
    )
    # SFT from a hub model, rankings from the hub, no pretrain/sample/label steps: only sft and reward are missing
    qwen = run_first(layout, "reward", load_recipe("qwen-0.5b-rlhf", check_training=False))
    assert qwen == "`rlhf sft`, then `rlhf reward` (or `rlhf pipeline --stages sft,reward`)"
