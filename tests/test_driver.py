"""The stage lifecycle (rlhf_cli.stages.driver) with a fake stage: what it writes when, and when it writes nothing."""

import json
from types import SimpleNamespace

import pytest

from rlhf_cli.recipe import load_recipe
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.runs import Interrupted
from rlhf_cli.stages import driver


class FakeTrainer:
    def __init__(self, out_dir, interrupt=False):
        self.args = SimpleNamespace(output_dir=str(out_dir))
        self.interrupt, self.resumed_from = interrupt, "not called"

    def train(self, resume_from_checkpoint=None):
        self.resumed_from = resume_from_checkpoint
        ckpt = __import__("pathlib").Path(self.args.output_dir) / "checkpoint-2"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "trainer_state.json").write_text("{}")
        if self.interrupt:
            raise Interrupted("stopped")
        return {"loss": 0.5}


def fake_stage(calls, *, fail=False, interrupt=False):
    def setup(ctx):
        calls.append(("setup", ctx.stage_dir.exists()))
        if fail:
            raise UserError("bad input")
        trainer = FakeTrainer(ctx.layout.checkpoints("sft"), interrupt)
        calls.append(("trainer", trainer))

        def write_final(tmp, metrics, staging):
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps({"loss": metrics["loss"]}))

        return driver.Job(
            trainer,
            n_params=1000,
            evaluate=lambda output, ckpt: {"loss": output["loss"], "resumed": ckpt is not None},
            write_final=write_final,
            summary=lambda final, m: calls.append(("summary", final)),
        )

    return setup


@pytest.fixture
def recipe():
    return load_recipe("tiny")


def test_a_stage_writes_final_eval_and_recipe(tmp_path, recipe):
    calls = []
    metrics = driver.run_stage("sft", fake_stage(calls), recipe, tmp_path / "run")
    layout = RunLayout(tmp_path / "run")
    assert calls[0] == ("setup", False)  # setup runs before the stage folder exists
    assert json.loads((layout.final("sft") / "config.json").read_text()) == {"loss": 0.5}
    saved = json.loads(layout.eval_json("sft").read_text())
    assert saved["loss"] == 0.5 and saved["precision"] == "fp32" and metrics == saved
    assert layout.stage_recipe("sft").is_file() and layout.recipe.is_file()
    assert calls[-1] == ("summary", layout.final("sft"))
    assert not [p for p in layout.stage("sft").iterdir() if p.name.startswith(".")]  # no temporary twin left


def test_a_bad_input_writes_nothing(tmp_path, recipe):
    with pytest.raises(UserError, match="bad input"):
        driver.run_stage("sft", fake_stage([], fail=True), recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_existing_stage_is_refused_without_resume_or_overwrite(tmp_path, recipe):
    driver.run_stage("sft", fake_stage([]), recipe, tmp_path / "run")
    calls = []
    with pytest.raises(UserError, match="already exists; pass --resume"):
        driver.run_stage("sft", fake_stage(calls), recipe, tmp_path / "run")
    assert calls == []  # refused before setup


def test_interrupted_leaves_checkpoint_not_final(tmp_path, recipe):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(Interrupted):
        driver.run_stage("sft", fake_stage([], interrupt=True), recipe, layout.root)
    assert (layout.checkpoints("sft") / "checkpoint-2").is_dir()
    assert not layout.final("sft").exists() and not layout.eval_json("sft").exists()
    calls = []  # --resume continues from the newest complete checkpoint
    metrics = driver.run_stage("sft", fake_stage(calls), recipe, layout.root, resume=True)
    assert calls[1][1].resumed_from == str(layout.checkpoints("sft") / "checkpoint-2") and metrics["resumed"]


def test_resume_of_a_finished_stage_keeps_it(tmp_path, recipe):
    layout = RunLayout(tmp_path / "run")
    first = driver.run_stage("sft", fake_stage([]), recipe, layout.root)
    calls = []
    assert driver.run_stage("sft", fake_stage(calls), recipe, layout.root, resume=True) == first
    assert calls == []  # nothing set up, nothing trained


def test_overwrite_replaces_the_stage(tmp_path, recipe):
    layout = RunLayout(tmp_path / "run")
    driver.run_stage("sft", fake_stage([]), recipe, layout.root)
    (layout.stage("sft") / "stale.txt").write_text("old")
    driver.run_stage("sft", fake_stage([]), recipe, layout.root, overwrite=True)
    assert not (layout.stage("sft") / "stale.txt").exists() and layout.final("sft").is_dir()
