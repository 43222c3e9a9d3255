"""Misuse of a finished run, as a new user tries it (issue 30): each case is one sentence, exit code 2 and a disk left
exactly as it was (every path under tmp_path, folders' times included) — or works as documented.

The run is the session's finished small run (tests/conftest.py `small_run`), copied per test; the CLI runs in-process
through Typer's CliRunner from inside tmp_path. The lock between two real processes is tests/test_lock.py.
"""

from __future__ import annotations

import json

import pytest
from test_bad_input import assert_refused, snapshot, write_jsonl
from typer.testing import CliRunner

from rlhf_cli.cli import app

runner = CliRunner()


@pytest.fixture
def run(small_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return small_run


def R(run):
    return ["--recipe", str(run / "recipe.yaml"), "--output-dir", str(run)]


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_a_person(run):
    """The run's rankings, as if a person had made them (the toy annotator's are made again in a second)."""
    path = run / "feedback" / "rankings.jsonl"
    write_jsonl(path, [{**r, "annotator": "human"} for r in rows(path)])
    return path


# ------------------------------------------------------------------------------------------------------ 1. export


@pytest.mark.parametrize(
    "out,phrase",
    [
        ("run", "holds the model being exported"),  # the run itself: every stage and the rankings
        ("run/ppo", "holds the model being exported"),  # the model's own stage folder
        ("run/sft", "is a stage's folder"),
        ("run/ppo/final/merged", "inside the model folder"),
        (".", "holds the model being exported"),  # a folder holding the run
    ],
)
def test_export_never_replaces_a_run_or_the_model(run, tmp_path, out, phrase):
    assert_refused(tmp_path, ["export", str(run / "ppo" / "final"), "--out", out, "--overwrite"], phrase)


def test_export_overwrites_only_an_earlier_export(run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_refused(tmp_path, ["export", str(run / "ppo" / "final"), "--out", "mine", "--overwrite"], "not an `rlhf ex")
    (tmp_path / "repo" / ".git").mkdir(parents=True)  # hidden files count: a clone's history is not replaced either
    assert_refused(tmp_path, ["export", str(run / "ppo" / "final"), "--out", "repo", "--overwrite"], ".git")
    other = tmp_path / "other-run"
    (other / "sft" / "final").mkdir(parents=True)  # a run folder, even one the model is not in
    (other / "recipe.yaml").write_text("name: x\n")
    assert_refused(
        tmp_path, ["export", str(run / "ppo" / "final"), "--out", "other-run", "--overwrite"], "a run folder"
    )

    first = runner.invoke(app, ["export", str(run / "sft" / "final"), "--out", "exported"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["export", str(run / "ppo" / "final"), "--out", "exported", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "exported" / "lineage.json").read_text())["stage"] == "ppo"


def test_export_into_a_run_folder_works_under_its_lock(run, tmp_path):
    result = runner.invoke(app, ["export", str(run / "ppo" / "final"), "--out", str(run / "exports" / "ppo")])
    assert result.exit_code == 0, result.output
    assert (run / "exports" / "ppo" / "config.json").exists() and not (run / ".rlhf.lock").exists()


# ------------------------------------------------------------------------------------------------------ 3, 4. rankings


def test_a_broken_rankings_file_is_refused_before_the_persons_rankings_move(run, tmp_path):
    by_a_person(run)
    good = rows(run / "feedback" / "rankings.jsonl")
    write_jsonl(tmp_path / "broken.jsonl", [*good[:5], {"prompt": "q", "responses": None}, *good[5:]])
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "broken.jsonl", "--overwrite"], "broken.jsonl", "row 5")
    # its own rankings file as the annotator: moving it aside first would leave nothing to copy
    own = str(run / "feedback" / "rankings.jsonl")
    assert_refused(tmp_path, ["label", *R(run), "--annotator", own, "--overwrite"], "own rankings file")


def test_sampling_again_moves_the_rankings_of_the_old_samples_aside(run, tmp_path):
    by_a_person(run)
    write_jsonl(run / "feedback" / "skipped.jsonl", [{"prompt": [], "sample": 0, "n": 99}])
    result = runner.invoke(app, ["sample", *R(run), "--overwrite", "--set", "seed=1"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "rankings.jsonl: 12 rows moved to" in out and "they rank the old samples" in out
    assert sorted(p.name for p in (run / "feedback").iterdir()) == ["backup", "samples.jsonl"]
    assert len(list((run / "feedback" / "backup").iterdir())) == 2  # rankings and skips, nothing lost
    # the person's screen starts from the first prompt of the new samples
    screen = runner.invoke(app, ["label", *R(run), "--annotator", "human"], input="q\n")
    assert screen.exit_code == 0 and "Resuming" not in screen.output and "prompt 1 of" in screen.output

    # The toy annotator's rankings of the old samples are made again in a second: removed, and said so.
    runner.invoke(app, ["label", *R(run), "--annotator", "toy"])
    result = runner.invoke(app, ["sample", *R(run), "--overwrite"])
    assert result.exit_code == 0 and "by the toy annotator removed" in result.output
    assert not (run / "feedback" / "rankings.jsonl").exists()


def test_a_resumed_screen_checks_the_answers_not_only_the_prompt(run, tmp_path):
    samples = run / "feedback" / "samples.jsonl"
    other = [{**r, "answers": [a + " (again)" for a in r["answers"]]} for r in rows(samples)]
    write_jsonl(samples, other)  # the same prompts sampled again: other answers
    by_a_person(run)
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "human"], "other samples", "sample 1", "--overwrite")
    from rlhf_cli.people.web_label import Board

    with pytest.raises(Exception, match="other samples"):
        Board(run / "feedback")


def test_a_damaged_rankings_file_is_named_by_its_line(run, tmp_path):
    path = run / "feedback" / "rankings.jsonl"
    path.write_text(path.read_text() + '{"prompt": [{"role": "us')  # a write cut short
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "human"], "rankings.jsonl: line 13")
    # --overwrite moves the damaged file aside whole (a person's work is never judged unreadable and dropped)
    result = runner.invoke(app, ["label", *R(run), "--annotator", "toy", "--overwrite"])
    assert result.exit_code == 0 and "not all of it readable" in result.output


# ------------------------------------------------------------------------------------------------------ 6, 7. model kinds


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["ppo", "--overwrite", "--set", "ppo.reward_from={run}/sft/final"], "ppo.reward_from: "),
        (["ppo", "--overwrite", "--set", "ppo.policy_from={run}/reward/final"], "ppo.policy_from: "),
        (["ppo", "--overwrite", "--set", "ppo.rewards=[{{model: {run}/sft/final}}]"], "ppo.rewards[0].model"),
        (["dpo", "--set", "dpo.policy_from={run}/reward/final"], "dpo.policy_from"),
        (["grpo", "--set", "grpo.reward_from={run}/ppo/final"], "grpo.reward_from"),
        (["rloo", "--set", "rloo.policy_from={run}/reward/final"], "rloo.policy_from"),
        (["best-of-n", "--set", "best_of_n.reward_from={run}/sft/final"], "best_of_n.reward_from"),
        (["expert-iteration", "--set", "expert_iteration.reward_from={run}/sft/final"], "reward_from"),
        (["sft", "--overwrite", "--set", "sft.init_from={run}/reward/final"], "sft.init_from"),
        (["pretrain", "--overwrite", "--set", "pretrain.init_from={run}/reward/final"], "pretrain.init_from"),
        (["sample", "--overwrite", "--model", "{run}/reward/final"], "--model: "),
        (["write", "--annotator", "human", "--model", "{run}/reward/final"], "--model: "),
    ],
)
def test_a_model_of_the_wrong_kind_is_refused_before_it_loads(run, tmp_path, args, phrase):
    args = [a.format(run=run) for a in args]
    wrong = "is a causal LM, not a reward model" if "reward_from" in phrase or "rewards" in phrase else "is a reward m"
    out = assert_refused(tmp_path, [*args, *R(run)], phrase, wrong)
    assert "MISSING" not in out and "LOAD REPORT" not in out


def test_reward_inspect_and_chat_refuse_the_other_kind(run, tmp_path):
    assert_refused(tmp_path, ["reward", "inspect", str(run / "sft" / "final")], "is a causal LM, not a reward model")
    assert_refused(tmp_path, ["chat", str(run / "reward" / "final"), "--prompt", "hi"], "is a reward model")


def test_the_value_model_from_a_causal_lm_says_its_head_is_new(run, tmp_path):
    args = ["ppo", *R(run), "--overwrite", "--set", f"ppo.value_from={run / 'sft' / 'final'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "new, random value head" in result.output and "MISSING" not in result.output


# ------------------------------------------------------------------------------------------------------ 8. pairs


def test_rankings_whose_every_pair_is_one_answer_twice_are_refused(run, tmp_path):
    ranked = rows(run / "feedback" / "rankings.jsonl")
    same = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][0]} for r in ranked]
    write_jsonl(tmp_path / "same.jsonl", same)
    phrase = "every one of its 12 preference pairs has the same chosen and rejected answer"
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "same.jsonl", "--overwrite"], phrase)
    reward = ["reward", *R(run), "--overwrite", "--set", f"reward.data.path={tmp_path / 'same.jsonl'}"]
    assert_refused(tmp_path, reward, phrase)


# ------------------------------------------------------------------------------------------------------ 9. sweep, compare


@pytest.mark.parametrize(
    "extra,phrase",
    [
        (["--param", "ppo.kl_coeff", "--values", "0.1"], "did you mean 'ppo.kl_coef'"),
        (["--param", "ppo.kl_coef", "--values", "0.1,abc"], "ppo.kl_coef"),
        (["--param", "ppo.training.learning_rate", "--values", "abc"], "must be a number"),
        (["--param", "ppo.training.max_step", "--values", "5"], "ppo.training.max_steps"),
        (["--param", "ppo.kl_coef", "--values", "0.1,0.1"], "more than once"),
        (["--param", "ppo.reward_from", "--values", "a"], "cannot vary"),
        (["--param", "ppo.data.path", "--values", "a.jsonl"], "cannot vary"),
        (["--param", "best_of_n.n", "--values", "4,-1"], "best_of_n.n"),
        (["--param", "sft.max_length", "--values", "64"], "ppo.* or best_of_n.*"),
    ],
)
def test_sweep_checks_every_argument_before_the_first_stage(run, tmp_path, extra, phrase):
    fresh = ["--recipe", str(run / "recipe.yaml"), "--output-dir", "fresh"]  # nothing trained yet: refused at once
    assert_refused(tmp_path, ["sweep", *fresh, *extra], phrase)
    assert_refused(tmp_path, ["sweep", *R(run), *extra], phrase)


@pytest.mark.parametrize(
    "extra,phrase",
    [
        (["--set", "grpo.training.learning_rate=abc"], "grpo.training.learning_rate"),
        (["--set", "dpo.policy_from={run}/reward/final"], "dpo.policy_from"),
        (["--methods", "ppo,dpo", "--set", "ppo.training.per_device_train_batch_size=0"], "per_device_train_batch"),
        (["--methods", "ppo,grpoo"], "grpoo"),
    ],
)
def test_compare_and_pipeline_check_every_step_before_the_first(run, tmp_path, extra, phrase):
    extra = [a.format(run=run) for a in extra]
    fresh = ["--recipe", str(run / "recipe.yaml"), "--output-dir", "fresh"]
    assert_refused(tmp_path, ["compare", *fresh, *extra], phrase)
    if "--methods" not in extra:
        assert_refused(tmp_path, ["pipeline", *fresh, "--stages", "pretrain,sft,dpo,grpo", *extra], phrase)


# ------------------------------------------------------------------------------------------------------ 10-12. recipe, paths


def test_a_key_twice_in_a_recipe_is_refused_with_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.yaml").write_text("name: two\nppo: {kl_coef: 0.1}\nsft: {max_length: 64}\nppo: {kl_coef: 0.3}\n")
    assert_refused(tmp_path, ["ppo", "--recipe", "two.yaml"], "duplicate key 'ppo'", "line 4", "line 2")
    (tmp_path / "inner.yaml").write_text("name: two\nppo:\n  kl_coef: 0.1\n  kl_coef: 0.3\n")
    assert_refused(tmp_path, ["recipe", "show", "inner.yaml"], "duplicate key 'kl_coef'", "line 4")


@pytest.mark.parametrize("command", ["pretrain", "sft", "sample", "label", "pipeline", "write", "sweep", "compare"])
def test_an_output_dir_that_is_a_file(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    assert_refused(tmp_path, [command, "--output-dir", "afile"], "--output-dir afile is a file")


def test_a_recipe_that_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    assert_refused(tmp_path, ["pretrain", "--recipe", "recipes"], "--recipe recipes is a folder")


# ------------------------------------------------------------------------------------------------------ 13, 14. data


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompts_are_refused_with_the_file_and_row(run, tmp_path, prompt):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "what does the fox eat?"}, {"prompt": prompt}])
    sample = ["sample", *R(run), "--overwrite", "--set", "feedback.data={path: prompts.jsonl}"]
    assert_refused(tmp_path, sample, "prompts.jsonl: row 1", "prompt is empty")
    assert_refused(tmp_path, ["ppo", *R(run), "--overwrite", "--set", "ppo.data.path=prompts.jsonl"], "row 1")
    assert_refused(tmp_path, ["write", *R(run), "--annotator", "human", "--prompts", "prompts.jsonl"], "row 1")


def test_the_reward_stage_says_how_many_pairs_max_length_cuts(run):
    result = runner.invoke(app, ["reward", *R(run), "--overwrite", "--set", "reward.max_length=12"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "training pairs are longer than max_length=12 tokens and will be cut" in text
    quiet = runner.invoke(app, ["reward", *R(run), "--overwrite", "--set", "reward.max_length=64"])
    assert quiet.exit_code == 0 and "will be cut" not in quiet.output


def test_the_finished_run_is_left_as_it_was_by_every_refusal_above(run, tmp_path):
    """The snapshot the cases compare includes folders' times: a refused command's lock file leaves no trace."""
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["ppo", *R(run)])  # exists already: refused after taking the lock
    assert result.exit_code == 2 and "already exists" in result.output
    assert snapshot(tmp_path) == before


def test_the_kind_is_read_from_a_folder_an_adapter_or_a_hub_ids_cached_config(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from rlhf_cli.models.modeling import CAUSAL_LM, REWARD_MODEL, check_model_kind
    from rlhf_cli.runtime.errors import UserError

    def folder(name, files):
        path = tmp_path / name
        path.mkdir(parents=True)
        for file, content in files.items():
            (path / file).write_text(json.dumps(content))
        return str(path)

    causal = folder("lm", {"config.json": {"architectures": ["GPT2LMHeadModel"]}})
    scorer = folder("rm", {"config.json": {"architectures": ["Qwen2ForSequenceClassification"]}})
    adapter = folder("adapter", {"adapter_config.json": {"task_type": "SEQ_CLS", "base_model_name_or_path": causal}})
    odd = folder("odd", {"config.json": {"architectures": ["T5ForConditionalGeneration"]}})
    assert check_model_kind(causal, CAUSAL_LM, "x") == CAUSAL_LM and check_model_kind(scorer, None, "x") == REWARD_MODEL
    assert check_model_kind(odd, REWARD_MODEL, "x") is None  # cannot be told: the load decides
    with pytest.raises(UserError, match="^ppo.reward_from: .* is a causal LM, not a reward model"):
        check_model_kind(causal, REWARD_MODEL, "ppo.reward_from")
    with pytest.raises(UserError, match="^ppo.policy_from: .* is a reward model"):
        check_model_kind(adapter, CAUSAL_LM, "ppo.policy_from")

    # A hub id: the config in the local cache (never a download), else let through.
    cache = tmp_path / "hub"
    snapshot_dir = cache / "models--someone--scorer" / "snapshots" / "abc123"
    snapshot_dir.mkdir(parents=True)
    (snapshot_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    (cache / "models--someone--scorer" / "refs").mkdir()
    (cache / "models--someone--scorer" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(UserError, match="someone/scorer is a reward model"):
        check_model_kind("someone/scorer", CAUSAL_LM, "sft.init_from")
    assert check_model_kind("someone/not-cached", CAUSAL_LM, "sft.init_from") is None


def test_a_busy_port_is_refused_before_anything_moves_or_is_drafted(run, tmp_path):
    import socket

    by_a_person(run)
    wrote = runner.invoke(
        app, ["write", *R(run), "--annotator", "human", "--set", "write.num_prompts=2"], input="mine\nq\n"
    )
    assert wrote.exit_code == 0 and len(rows(run / "demonstrations" / "demonstrations.jsonl")) == 1, wrote.output
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    try:
        label = ["label", *R(run), "--annotator", "web", "--port", port, "--overwrite"]
        assert_refused(tmp_path, label, "Cannot serve on 127.0.0.1:" + port)  # the rankings stay where they are
        write = ["write", *R(run), "--annotator", "web", "--port", port, "--overwrite", "--set", "write.num_prompts=2"]
        assert_refused(tmp_path, write, "Cannot serve on 127.0.0.1:" + port)  # no drafts made, no answers moved
    finally:
        busy.close()


# ------------------------------------------------------------------------------------------------------ more misuse


def test_odd_paths_are_one_sentence(run, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_refused(tmp_path, ["pretrain", "--output-dir", "afile/run"], "afile is a file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = runner.invoke(app, ["pretrain", "--output-dir", "dangling"])
    assert result.exit_code == 2 and "a link to a folder that does not exist" in result.output
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "nowhere").exists()
    (tmp_path / "dangling").unlink()
    assert_refused(tmp_path, ["data", "toy", "--out", "afile/toy"], "afile is a file")
    inspect = ["reward", "inspect", str(run / "reward" / "final"), "--out", "afile"]
    assert_refused(tmp_path, inspect, "--out afile is a file")
    (run / ".rlhf.lock").mkdir()
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "toy", "--overwrite"], ".rlhf.lock is a folder")


def test_damaged_samples_and_contradicting_flags_are_one_sentence(run, tmp_path):
    assert_refused(tmp_path, ["sft", *R(run), "--resume", "--overwrite"], "pass one of the two")
    samples = run / "feedback" / "samples.jsonl"
    original = samples.read_text()
    samples.write_text(original + "oops\n")
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "toy", "--overwrite"], "samples.jsonl: line 13")
    samples.write_text('{"prompt": "what?"}\n')
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "toy", "--overwrite"], "row 1 is not a sample")
    assert_refused(tmp_path, ["label", *R(run), "--annotator", "human", "--overwrite"], "row 1 is not a sample")


def test_a_stage_that_would_train_no_step_is_refused(run, tmp_path):
    # Found by a probe: max_steps -1 with num_train_epochs 0 trained nothing and saved the starting model as trained.
    nothing = ["--set", "sft.training.max_steps=-1", "--set", "sft.training.num_train_epochs=0"]
    assert_refused(tmp_path, ["sft", *R(run), "--overwrite", *nothing], "nothing would train")
