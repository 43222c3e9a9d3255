"""Stage 1: a tiny pre-training run on the toy world, resume, bits per byte, and the CLI's refusal to clobber."""

from __future__ import annotations

import json
import math

import pytest

from rlhf_cli.evaluation import lm_eval
from rlhf_cli.recipe import load_recipe
from rlhf_cli.stages import pretrain

TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "pretrain.block_size=32", "pretrain.data.max_examples=400", "pretrain.probes=false",
    "pretrain.training.per_device_train_batch_size=8", "pretrain.training.learning_rate=1e-2",
    "pretrain.training.logging_steps=2", "pretrain.training.save_steps=4", "pretrain.training.warmup_steps=0",
]  # fmt: skip


def _recipe(*extra):
    return load_recipe("tiny", [*TINY, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    metrics = pretrain.run(_recipe("pretrain.training.max_steps=8"), run_dir)
    return run_dir, metrics


def test_loss_falls_and_eval_is_written(trained):
    run_dir, metrics = trained
    rows = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    saved = json.loads((run_dir / "pretrain" / "eval.json").read_text())
    assert saved["bits_per_byte"] < saved["untrained_bits_per_byte"]
    assert saved["global_step"] == 8 and saved["eval_bytes"] > 0 and 0 < saved["mfu"]
    assert math.isclose(saved["perplexity"], math.exp(saved["loss"]), rel_tol=1e-6)


def test_final_reloads_and_generates(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained[0] / "pretrain" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert tok.chat_template and tok.pad_token_id != tok.eos_token_id
    ids = tok("the fox", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert (final / "README.md").exists() and json.loads((final / "lineage.json").read_text())["stage"] == "pretrain"


def test_resume_continues_at_the_right_step(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    metrics = pretrain.run(_recipe("pretrain.training.max_steps=12"), run_dir, resume=True, accept_changes=True)
    rows = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert metrics["global_step"] == 12
    assert steps[-2:] == [10, 12] and steps.count(2) == 1  # the resumed run logged steps 10, 12 only


def test_bits_per_byte_by_hand():
    # 10 tokens at uniform probability over 256 outcomes: 10 * ln(256) nats = 80 bits over 20 bytes -> 4 bits per byte.
    assert math.isclose(lm_eval.bits_per_byte(10 * math.log(256), 20), 4.0)


def test_target_bytes_count_exactly_the_scored_text():
    from rlhf_cli.models.modeling import train_tokenizer

    tok = train_tokenizer(["héllo wörld, the fox eats berries."] * 50, vocab_size=300)
    ids = (
        tok("héllo wörld", add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id]
        + tok("fox", add_special_tokens=False)["input_ids"]
    )
    first = tok.decode(ids[:1])
    expected = len("héllo wörldfox".encode()) - len(
        first.encode()
    )  # the first token is context, not scored; EOS is 0 bytes
    lengths = lm_eval.token_byte_lengths(tok)
    assert lm_eval.target_bytes(tok, [ids], lengths) == expected
    assert lm_eval.target_bytes(tok, [ids], None) == expected


def test_pack_puts_eos_between_documents():
    import datasets

    from rlhf_cli.models.modeling import train_tokenizer

    tok = train_tokenizer(["a b c d e f g"] * 20, vocab_size=300)
    docs = datasets.Dataset.from_dict({"text": ["a b", "c d e", "f"]})
    flat = [t for b in pretrain.pack(docs, tok, 4, keep_remainder=True)["input_ids"] for t in b]
    assert flat.count(tok.eos_token_id) == 3 and flat[-1] == tok.eos_token_id
    full = pretrain.pack(docs, tok, 4)["input_ids"]
    assert all(len(b) == 4 for b in full) and len(full) == len(flat) // 4


def test_collate_pads_the_short_held_out_tail_without_scoring_it():
    # The held-out set keeps each tail as a short block; a batch that mixes it with full blocks must still collate.
    batch = pretrain.collate_blocks([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"].tolist() == [[5, 6, 7, 8], [9, 10, -100, -100]]


def test_existing_stage_refused_without_overwrite(trained):
    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    result = CliRunner().invoke(app, ["pretrain", "--recipe", "tiny", "--output-dir", str(trained[0])])
    assert result.exit_code == 2
    assert "--overwrite" in result.output


def test_steady_speed_leaves_out_the_warm_up_steps():
    from rlhf_cli.runtime.callbacks import steady_seconds_per_step

    ends = [0.0, 60.0] + [60.0 + 0.5 * i for i in range(1, 19)]  # a 60 s compile in step 1, then 0.5 s a step
    assert steady_seconds_per_step(ends) == 0.5
    assert steady_seconds_per_step(ends[:9]) is None  # too few steps to tell: the caller keeps the overall rate


def test_one_long_text_file_keeps_a_held_out_tail(tmp_path):
    # A novel is one document, paragraphs and all (it trains as written); its last 5 % of characters is held out.
    words = ["the", "fox", "ran", "far", "and", "sat", "on", "a", "mat", "by", "the", "sea"]
    text = " ".join(words[(i * 7) % len(words)] + ("\n\n" if i % 40 == 39 else "") for i in range(6000)) + "\n"
    novel = tmp_path / "novel.txt"
    novel.write_text(text)
    run_dir = tmp_path / "run"
    metrics = pretrain.run(
        _recipe(f"pretrain.data.path={novel}", "pretrain.training.max_steps=2", "pretrain.training.save_steps=100"),
        run_dir,
    )
    assert math.isfinite(metrics["bits_per_byte"])
    assert 0.03 * len(text) < metrics["eval_bytes"] <= 0.06 * len(text)


def test_no_held_out_text_is_refused_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    novel = tmp_path / "novel.txt"
    novel.write_text("one paragraph of text without any blank line in it " * 50)
    out = tmp_path / "run"
    args = ["pretrain", "--recipe", "tiny", "-o", str(out), "--set", f"pretrain.data.path={novel}"]
    result = CliRunner().invoke(app, [*args, "--set", "pretrain.data.eval_fraction=0"])
    assert result.exit_code == 2 and "eval_fraction" in result.output
    assert not out.exists()


def test_resume_with_another_recipe_is_refused_naming_the_keys(trained, tmp_path):
    # Resumed without the original --set max_steps=8, the stage used to finalise the old checkpoint as if done,
    # print "train loss 0.000" and rewrite recipe.yaml to the new values.
    import shutil

    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    shutil.rmtree(run_dir / "pretrain" / "final")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    args = ["pretrain", "--recipe", "tiny", "-o", str(run_dir), "--resume"] + [a for s in TINY for a in ("--set", s)]
    result = CliRunner().invoke(app, [*args, "--set", "pretrain.training.max_steps=6", "--set", "seed=1"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "pretrain.training.max_steps was 8, now 6" in message and "seed was 0, now 1" in message
    assert "--set pretrain.training.max_steps=8" in message and "--set seed=0" in message and "--overwrite" in message
    assert "--accept-recipe-change" in message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing written

    # a setting that changes only logging is no reason to refuse
    ok = CliRunner().invoke(
        app, [*args, "--set", "pretrain.training.max_steps=8", "--set", "pretrain.training.logging_steps=1"]
    )
    assert ok.exit_code == 0, ok.output


def test_with_max_time_the_schedule_runs_on_the_clock():
    """The cosine ends when max_time does: its progress is the larger of the time used and the steps done."""
    import time
    from types import SimpleNamespace

    import torch
    from transformers import get_cosine_schedule_with_warmup

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=1_000_000)
    budget = pretrain.TimeBudget(max_time=100.0)
    args = SimpleNamespace(lr_scheduler_type="cosine", get_warmup_steps=lambda n: 2, output_dir="/nonexistent")
    budget.on_train_begin(args, SimpleNamespace(max_steps=1_000_000, global_step=0), None, lr_scheduler=scheduler)
    assert budget._factor(0, 1_000_000, 2, pretrain._cosine) == 0.5  # warm-up in steps
    budget.start = time.time() - 50.0  # half the budget used: half-way down the cosine, whatever the step
    for _ in range(3):
        opt.step()  # no gradients: nothing moves; the order torch expects
        scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.5], abs=0.01)
    budget.start = time.time() - 100.0
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-6)
    budget.start = time.time()
    assert budget._factor(750, 1000, 2, pretrain._cosine) == pytest.approx(pretrain._cosine(0.75))  # steps ahead


def test_a_resumed_run_continues_the_budgets_clock(tmp_path):
    import time
    from types import SimpleNamespace

    budget = pretrain.TimeBudget(max_time=60.0)
    (tmp_path / "checkpoint-5").mkdir()
    args = SimpleNamespace(lr_scheduler_type="constant", output_dir=str(tmp_path))
    budget.start = time.time() - 40.0
    budget.on_save(args, SimpleNamespace(global_step=5), None)  # 40 s used at checkpoint-5
    again = pretrain.TimeBudget(max_time=60.0)
    again.on_train_begin(args, SimpleNamespace(global_step=5, max_steps=10), None)
    assert time.time() - again.start == pytest.approx(40.0, abs=1.0)  # 20 s of the budget left, not 60


def test_rounds_refuse_a_recipe_whose_reward_model_reads_another_source(tmp_path):
    from rlhf_cli.runtime.errors import UserError
    from rlhf_cli.runtime.rounds import run_rounds

    rec = _recipe("reward.data.path=elsewhere.jsonl")
    with pytest.raises(UserError, match="unset reward.data to run rounds"):
        run_rounds(rec, tmp_path, 2, "tiny", [], resume=False, overwrite=False)
