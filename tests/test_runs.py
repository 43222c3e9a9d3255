"""The run folder's safety net: a user error leaves no trace; model paths that are not models are named."""

import pytest


def test_a_user_error_leaves_no_trace_of_what_came_before_the_checks(tmp_path):
    from rlhf_cli.runtime.errors import UserError
    from rlhf_cli.runtime.runs import no_trace_on_user_error

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
    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer
    from rlhf_cli.runtime.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere" / "final"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model folder"):
        load_tokenizer(str(tmp_path / "empty"))


def test_the_steps_to_run_first_are_those_the_recipe_needs(tmp_path):
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.runtime.layout import RunLayout
    from rlhf_cli.runtime.runs import run_first

    layout = RunLayout(tmp_path / "run")
    tiny = run_first(layout, "reward", load_recipe("tiny"))
    assert tiny.startswith(
        "`rlhf pretrain`, then `rlhf sft`, then `rlhf sample`, then `rlhf label`, then `rlhf reward`"
    )
    # SFT from a hub model, rankings from the hub, no pretrain/sample/label steps: only sft and reward are missing
    qwen = run_first(layout, "reward", load_recipe("qwen-0.5b-rlhf", check_training=False))
    assert qwen == "`rlhf sft`, then `rlhf reward` (or `rlhf pipeline --stages sft,reward`)"


# ------------------------------------------------------------------------------------------------ a run can move


def _moved(finished_run, tmp_path):
    """The finished small run copied to old/run and moved to new/run: the old place is gone, as after a `mv`."""
    import shutil

    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    shutil.copytree(finished_run, old, symlinks=True)
    shutil.move(old, new)
    assert not old.exists()
    return old, new


def test_a_moved_run_stores_no_path_of_where_it_was_and_still_reads(finished_run, tmp_path):
    from typer.testing import CliRunner

    from rlhf_cli.cli import app
    from rlhf_cli.runtime.runs import read_lineage

    old, new = _moved(finished_run, tmp_path)
    places = {str(p) for p in (finished_run, finished_run.resolve(), old)}
    for path in (p for ext in ("json", "jsonl", "yaml", "md") for p in new.rglob(f"*.{ext}")):  # md: model cards
        text = path.read_text(encoding="utf-8")
        assert not [p for p in places if p in text], f"{path.relative_to(new)} names where the run was"

    assert read_lineage(new / "reward" / "final")["data"]["spec"]["path"] == str(new / "feedback" / "rankings.jsonl")
    assert read_lineage(new / "ppo" / "final")["parents"]["policy"] == str(new / "sft" / "final")
    runner = CliRunner()
    inspected = runner.invoke(app, ["reward", "inspect", str(new / "reward" / "final")])
    assert inspected.exit_code == 0, inspected.output
    assert "is gone" not in inspected.output
    evaluated = runner.invoke(app, ["eval", str(new)])
    assert evaluated.exit_code in (0, 3), evaluated.output  # 3: a model this small misses the targets
    reported = runner.invoke(app, ["report", str(new)])
    assert reported.exit_code in (0, 3), reported.output
    exported = runner.invoke(app, ["export", str(new / "sft" / "final"), "--out", str(tmp_path / "exported")])
    assert exported.exit_code == 0, exported.output
    # outside any run, the export names the models where they are now
    assert read_lineage(tmp_path / "exported")["parents"]["base"] == str(new / "pretrain" / "final")
    for path in (p for ext in ("json", "jsonl", "yaml") for p in new.rglob(f"*.{ext}")):  # nor what they rewrote
        assert str(new) not in path.read_text(encoding="utf-8"), f"{path.relative_to(new)} names the run's place"


def test_a_run_written_with_absolute_paths_reads_where_it_is_now(small_run, tmp_path):
    """Older runs stored absolute paths: a path still there is used as it is; one gone because the run moved is
    found at the same place in the run."""
    from typer.testing import CliRunner

    from rlhf_cli.cli import app
    from rlhf_cli.runtime.files import read_json, write_json_atomic
    from rlhf_cli.runtime.runs import read_lineage

    gone = tmp_path / "gone" / "somewhere" / "run"  # where the run was when it wrote its files
    elsewhere = tmp_path / "base-model"  # a model outside the run, still there
    elsewhere.mkdir()
    lineage_file = small_run / "reward" / "final" / "lineage.json"
    lineage = read_json(lineage_file)
    lineage["data"]["spec"]["path"] = str(gone / "feedback" / "rankings.jsonl")
    lineage["parents"] = {"init": str(gone / "sft" / "final"), "other": str(elsewhere), "hub": "owner/name"}
    write_json_atomic(lineage_file, lineage)

    read = read_lineage(small_run / "reward" / "final")
    assert read["data"]["spec"]["path"] == str(small_run / "feedback" / "rankings.jsonl")
    assert read["parents"] == {"init": str(small_run / "sft" / "final"), "other": str(elsewhere), "hub": "owner/name"}
    inspected = CliRunner().invoke(app, ["reward", "inspect", str(small_run / "reward" / "final")])
    assert inspected.exit_code == 0, inspected.output


def test_paths_inside_a_run_are_stored_relative_to_it_and_others_as_given(tmp_path):
    from rlhf_cli.runtime.layout import path_in_run, resolve_in_run

    run = tmp_path / "run"
    (run / "sft" / "final").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    round_2 = run / "rounds" / "round-2"
    (round_2 / "feedback").mkdir(parents=True)
    (round_2 / "recipe.yaml").write_text("name: x\n")
    outside = tmp_path / "data.jsonl"

    assert path_in_run(run / "sft" / "final", run) == "sft/final"
    assert path_in_run(run, run) == "."
    assert path_in_run(outside, run) == str(outside) and path_in_run("owner/name", run) == "owner/name"
    assert path_in_run(run / "sft" / "final", None) == str(run / "sft" / "final")  # a file in no run
    assert path_in_run(run / "sft" / "final", round_2) == "../../sft/final"  # a round uses the run's models

    assert resolve_in_run("sft/final", run) == str(run / "sft" / "final")
    assert resolve_in_run("../../sft/final", round_2) == str(run / "sft" / "final")
    assert resolve_in_run("owner/name", run) == "owner/name"
    assert resolve_in_run(str(outside), run) == str(outside)  # gone, and not in the run: as stored
    assert resolve_in_run("/old/place/run/sft/final", run) == str(run / "sft" / "final")
