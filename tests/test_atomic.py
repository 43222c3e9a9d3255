"""Atomic saves, the NaN guard and the signal handler, in-process.

- a save that crashes half-way leaves the previous `final/` (and JSON file) exactly as it was, and no temporary litter;
- a non-finite loss stops the run with exit code 1 and one message naming the step and the usual causes; the last good
  checkpoint stays and nothing from the bad step is saved (neither by the loss check nor, between two logged losses,
  the weight check at save time);
- SIGTERM saves a checkpoint at the end of the step and exits 130; a second Ctrl-C exits at once.
"""

import hashlib
import json
import os
import random
import signal

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.runtime import callbacks, files, runs


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_save_dir_atomic_keeps_the_old_folder_on_a_crash(tmp_path):
    final = tmp_path / "final"
    files.save_dir_atomic(final, lambda tmp: (tmp.mkdir(), (tmp / "a.txt").write_text("old")))
    before = digest(final)

    def half_way(tmp):
        tmp.mkdir()
        (tmp / "a.txt").write_text("new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.save_dir_atomic(final, half_way)
    assert digest(final) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary folder left behind
    files.save_dir_atomic(final, lambda tmp: (tmp.mkdir(), (tmp / "b.txt").write_text("new")))
    assert digest(final).keys() == {"b.txt"}  # a completed save replaces the folder whole


def test_write_json_atomic_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    path = files.write_json_atomic(tmp_path / "eval.json", {"loss": 1.0})
    monkeypatch.setattr(callbacks.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        files.write_json_atomic(path, {"loss": 2.0})
    assert json.loads(path.read_text()) == {"loss": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.models.modeling import build_model, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    world, rng = ToyWorld(0), random.Random(0)
    tok = train_tokenizer([world._document(rng) for _ in range(100)], vocab_size=300)
    out = tmp_path_factory.mktemp("model") / "m"
    build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_export_crash_half_way_keeps_the_previous_export(tmp_path, model_dir, monkeypatch):
    """The real save path: `rlhf export --overwrite` whose tokenizer save fails after the weights were written."""
    out = tmp_path / "exported"
    assert CliRunner().invoke(app, ["export", str(model_dir), "--out", str(out)]).exit_code == 0
    before = digest(out)
    from transformers import PreTrainedTokenizerBase

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    result = CliRunner().invoke(app, ["export", str(model_dir), "--out", str(out), "--overwrite"])
    assert result.exit_code != 0
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


# ------------------------------------------------------------------------------------------------------ a tiny pretrain


@pytest.fixture
def recipe_file(tmp_path):
    from rlhf_cli.data.toy import ToyWorld

    world, rng = ToyWorld(0), random.Random(0)
    (tmp_path / "corpus.txt").write_text("\n\n".join(world._document(rng) for _ in range(200)), encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2},
                "tokenizer": {"train": {"vocab_size": 300}},
                "pretrain": {
                    "data": {"path": str(tmp_path / "corpus.txt")},
                    "block_size": 32,
                    "probes": False,
                    "training": {
                        "max_steps": 8,
                        "save_steps": 2,
                        "logging_steps": 1,
                        "warmup_steps": 0,
                        "per_device_train_batch_size": 4,
                        "save_total_limit": 10,
                    },
                },
            }
        )
    )
    return path


def pretrain(recipe_file, *sets):
    args = ["pretrain", "--recipe", str(recipe_file), "--output-dir", str(recipe_file.parent / "run")]
    return CliRunner().invoke(app, [*args, *[a for s in sets for a in ("--set", s)]])


@pytest.mark.parametrize("logging_steps,caught_by", [(1, "loss"), (10, "weights")])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(recipe_file, monkeypatch, logging_steps, caught_by):
    """From step 3 on the loss is NaN: logged every step, the loss check stops at step 3; logged every 10 steps, the
    weight check refuses to save checkpoint-4. Either way checkpoint-2 stays and nothing later is written."""
    import torch
    from transformers import Trainer

    compute_loss = Trainer.compute_loss

    def nan_after_two(self, *a, **k):
        out = compute_loss(self, *a, **k)
        if self.state.global_step >= 2:
            out = out * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(Trainer, "compute_loss", nan_after_two)
    result = pretrain(recipe_file, f"pretrain.training.logging_steps={logging_steps}")
    assert result.exit_code == 1, result.output
    message = result.output
    assert "Traceback" not in message and message.count("Error:") == 1
    step = 3 if caught_by == "loss" else 4
    assert f"the {caught_by} became" in message and f"at step {step}" in message, message
    assert "learning rate" in message and "fp16" in message
    stage = recipe_file.parent / "run" / "pretrain"
    ckpts = sorted(p.name for p in (stage / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]
    state = torch.load(stage / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for s in state["state"].values() for v in s.values() if torch.is_tensor(v))
    assert not (stage / "final").exists()


def test_sigterm_saves_a_checkpoint_and_exits_130(recipe_file, monkeypatch):
    make = callbacks.make_callbacks

    def make_callbacks(stage_dir, stage):
        cb = make(stage_dir, stage)
        end = cb.on_step_end

        def on_step_end(args, state, control, **kw):
            out = end(args, state, control, **kw)
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the handler sets a flag, the next step saves
            return out

        cb.on_step_end = on_step_end
        return cb

    monkeypatch.setattr(callbacks, "make_callbacks", make_callbacks)
    old = signal.getsignal(signal.SIGTERM)
    result = pretrain(recipe_file, "pretrain.training.save_steps=100")
    assert result.exit_code == 130, result.output
    assert "SIGTERM: saving a checkpoint" in result.output and "--resume" in result.output
    stage = recipe_file.parent / "run" / "pretrain"
    assert runs.newest_checkpoint(stage / "checkpoints").name == "checkpoint-4"
    assert not (stage / "final").exists()
    assert signal.getsignal(signal.SIGTERM) == old  # handlers restored


def test_second_ctrl_c_exits_at_once(tmp_path, monkeypatch):
    cb = callbacks.make_callbacks(tmp_path, "pretrain")
    exits = []
    monkeypatch.setattr(callbacks.os, "_exit", exits.append)
    cb._handle(signal.SIGINT, None)
    assert cb.interrupted and exits == []
    cb._handle(signal.SIGINT, None)
    assert exits == [130]


def test_a_stage_logs_one_formatted_line_per_printed_step(recipe_file):
    """No raw {'loss': ...} dicts and no progress bar in a log; one line per printed step, at most callbacks.LOG_LINES."""
    result = pretrain(recipe_file, "pretrain.training.max_steps=60")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("pretrain ") and "/60 |" in line]
    assert 10 <= len(lines) <= callbacks.LOG_LINES, result.output
    assert lines[0].startswith("pretrain 3/60 | loss ") and "| grad norm " in lines[0] and "| lr " in lines[0]
    assert "{'loss'" not in result.output and "it/s]" not in result.output
    assert "pretrain: 60 steps in " in result.output  # the end of training, once


def test_print_every_keeps_a_stage_to_a_screen():
    assert (
        callbacks.print_every(10, 800) == 40
        and callbacks.print_every(1, 15) == 1
        and callbacks.print_every(10, 50) == 10
    )
    assert callbacks.print_every(0, 100) == 5  # logging_steps 0 or a fraction: every step is logged, print every 5th
