"""What `auto` chooses when pre-training on a text (rlhf_cli.models.sizing): the logic of each choice, and the `text`
recipe run end to end on a small text, its choices printed, saved, obeyed and reused on --resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.models import sizing
from rlhf_cli.recipe import load_recipe


def test_the_vocabulary_grows_with_the_text_and_stays_in_range():
    sizes = [1_000, 50_000, 210_000, 940_000, 3_000_000, 100_000_000]
    vocab = [sizing.choose_vocab(n)[0] for n in sizes]
    assert vocab == sorted(vocab) and vocab[0] == 512 and vocab[-1] == 8192
    assert sizing.choose_vocab(210_000)[0] == 1024 and sizing.choose_vocab(940_000)[0] == 4096  # the play, the novel
    assert all(v & (v - 1) == 0 for v in vocab)  # powers of two


def test_a_longer_budget_or_a_faster_machine_never_picks_a_smaller_model():
    rates = {w: 4e9 / sizing.non_embedding_parameters(w) for w in sizing.WIDTHS}  # tokens/s falls as width grows
    widths = [sizing.choose_width(rates, s)[0] for s in (1, 10, 30, 60, 120, 300, 900, 3600, 36_000)]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    faster = [sizing.choose_width({w: 3 * r for w, r in rates.items()}, 60)[0], sizing.choose_width(rates, 60)[0]]
    assert faster[0] >= faster[1]
    width, why = sizing.choose_width(rates, 300)
    assert f"{width} wide" in why and "per non-embedding parameter" in why


def test_no_width_fits_picks_the_narrowest():
    assert sizing.choose_width({64: 1.0, 96: 0.5}, 1)[0] == 64


def test_the_block_holds_a_typical_paragraph():
    play = "\n\n".join(["LILY.", "Blow the practice! A cheerful reflection for me."] * 300)
    novel = "\n\n".join([" ".join(["word"] * 120)] * 300)  # paragraphs of ~600 bytes
    code = "\n".join(f"    x{i} = compute(x{i - 1}, {i})" for i in range(2000))  # no blank lines: 4-line groups
    blocks = {name: sizing.choose_block(sizing.paragraph_bytes([t]), 4.0)[0] for name, t in
              (("play", play), ("novel", novel), ("code", code))}  # fmt: skip
    assert blocks["play"] == 64 and blocks["novel"] > blocks["play"] and blocks["code"] >= 64
    assert sizing.choose_block(sizing.paragraph_bytes(["x" * 100_000 + "\n\n" + "y" * 100_000]), 4.0)[0] == 256
    assert all(b & (b - 1) == 0 for b in blocks.values())


def test_the_learning_rate_falls_with_width():
    rates = [sizing.learning_rate(w)[0] for w in sizing.WIDTHS]
    assert rates == sorted(rates, reverse=True) and sizing.learning_rate(128)[0] == sizing.LR_AT_128


def test_a_number_in_the_recipe_overrides_one_choice_and_the_others_stay_auto():
    recipe = load_recipe("text")
    assert set(sizing.auto_keys(recipe)) == {
        "model.size", "tokenizer.train.vocab_size", "pretrain.block_size",
        "pretrain.training.per_device_train_batch_size", "pretrain.training.learning_rate",
    }  # fmt: skip
    pinned = load_recipe("text", ["model.size=tiny", "pretrain.block_size=128"])
    assert "model.size" not in sizing.auto_keys(pinned) and "pretrain.block_size" not in sizing.auto_keys(pinned)
    assert "tokenizer.train.vocab_size" in sizing.auto_keys(pinned)
    resolved = sizing.apply(pinned, sizing.Plan(vocab_size=1024, batch_size=4, learning_rate=1e-3))
    assert resolved.tokenizer.train.vocab_size == 1024 and resolved.pretrain.block_size == 128
    assert resolved.pretrain.training["learning_rate"] == 1e-3 and resolved.model.size == "tiny"


def test_a_step_budget_sizes_without_a_probe(tmp_path):
    # Without max_time the tokens are known (steps x batch x block): no probe, and more steps never a smaller model.
    import datasets

    docs = datasets.Dataset.from_dict({"text": ["the fox ran far and sat on a mat by the sea. " * 400]})
    widths = []
    for steps in (10, 1_000, 100_000):
        recipe = load_recipe("text", ["pretrain.training.max_time=null", f"pretrain.training.max_steps={steps}"])
        plan, _ = sizing.plan(recipe, docs, lambda v: _bytes_tokenizer())
        assert plan.probe == [] and plan.vocab_size == 512
        widths.append(plan.hidden_size)
    assert widths == sorted(widths) and widths[0] < widths[-1]


def _bytes_tokenizer():
    class Tok:
        def __call__(self, text):
            return {"input_ids": list(text.encode())}

        def __len__(self):
            return 512

    return Tok()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    words = ["the", "fox", "ran", "far", "and", "sat", "on", "a", "mat", "by", "the", "sea", "LILY.", "yes"]
    text = " ".join(words[(i * 5) % len(words)] + ("\n\n" if i % 9 == 8 else "") for i in range(30_000)) + "\n"
    (tmp / "play.txt").write_text(text)
    out = tmp / "run"
    args = ["pretrain", "--recipe", "text", "-o", str(out), "--set", f"pretrain.data.path={tmp / 'play.txt'}",
            "--set", "pretrain.training.max_time=3", "--set", "pretrain.training.logging_steps=5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output, args


def test_the_text_recipe_says_what_it_chose_first_and_trains_with_it(text_run):
    from transformers import AutoConfig, AutoTokenizer

    out, output, _ = text_run
    plan = json.loads((out / "pretrain" / "plan.json").read_text())
    lines = [line for line in output.splitlines() if line.startswith("pretrain: auto:")]
    assert len(lines) == 5 and "vocabulary 512" in output and f"{plan['hidden_size']} wide" in output
    assert output.index("pretrain: auto:") < output.index("Base model saved")
    metrics = json.loads((out / "pretrain" / "eval.json").read_text())
    assert metrics["plan"] == plan and metrics["block_size"] == plan["block_size"]
    config = AutoConfig.from_pretrained(out / "pretrain" / "final")
    assert config.hidden_size == plan["hidden_size"] and config.num_hidden_layers == plan["num_layers"]
    assert len(AutoTokenizer.from_pretrained(out / "pretrain" / "final")) <= plan["vocab_size"] + 8
    assert [p["width"] for p in plan["probe"]] == list(sizing.WIDTHS[: len(plan["probe"])])  # narrowest first
    args = json.loads((out / "pretrain" / "final" / "lineage.json").read_text())
    assert "auto" not in json.dumps(args.get("recipe", {}).get("pretrain", {}))


def test_recipe_show_and_check_say_the_choice_is_made_when_pretrain_runs(tmp_path):
    result = CliRunner().invoke(app, ["recipe", "show", "text"])
    assert result.exit_code == 0, result.output
    assert "chosen by pretrain from the text and its budget" in result.output


def test_a_resumed_run_reuses_its_plan_without_probing(tmp_path, monkeypatch):
    import datasets

    from rlhf_cli.stages import pretrain

    docs = datasets.Dataset.from_dict({"text": ["the fox ran far and sat on a mat by the sea.\n\n" * 300]})
    saved = sizing.Plan(vocab_size=512, hidden_size=96, num_layers=4, num_heads=3, block_size=64, batch_size=8,
                        learning_rate=0.0029, reasons={"model": "measured before"})  # fmt: skip
    saved.save(tmp_path / "plan.json")
    monkeypatch.setattr(sizing, "measure_rate", lambda *a, **k: pytest.fail("a resumed run probed again"))
    recipe, tokenizer, _, plan = pretrain._plan(load_recipe("text"), tmp_path, docs, resume=True)
    assert plan == saved and recipe.model.hidden_size == 96 and recipe.pretrain.block_size == 64
    assert recipe.pretrain.training["learning_rate"] == 0.0029 and len(tokenizer) <= 520


def test_rlhf_check_measures_memory_at_the_largest_auto_can_choose(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the fox ran far and sat on a mat by the sea.\n\n" * 400)
    result = CliRunner().invoke(app, ["check", "--recipe", "text", "--set", f"pretrain.data.path={text}"])
    assert result.exit_code == 0, result.output
    assert "checked here at the largest it can choose" in result.output and "model.size" in result.output


def test_the_learning_rate_follows_a_width_the_recipe_sets():
    import datasets

    docs = datasets.Dataset.from_dict({"text": ["the fox ran far.\n\n" * 300]})
    recipe = load_recipe("text", ["model.size=tiny", "model.hidden_size=512", "model.num_heads=8"])
    plan, _ = sizing.plan(recipe, docs, lambda v: _bytes_tokenizer())
    assert plan.hidden_size is None and plan.learning_rate == sizing.learning_rate(512)[0] < sizing.LR_AT_128


def test_from_a_checkpoint_the_project_did_not_build_only_block_and_learning_rate_are_chosen(tmp_path):
    # A Qwen2.5-shaped checkpoint (bf16 on disk, its own tokenizer and template): its width and vocabulary stand; the
    # block and the learning rate still follow the text and the checkpoint's width.
    from transformers import AutoConfig

    from bench.foreign import build

    source = build("qwen2.5", tmp_path / "checkpoint")
    text = tmp_path / "t.txt"
    text.write_text("the fox ran far and sat on a mat by the sea.\n\n" * 400)
    out = tmp_path / "run"
    args = ["pretrain", "--recipe", "text", "-o", str(out), "--set", f"pretrain.data.path={text}",
            "--set", f"pretrain.init_from={source}", "--set", "pretrain.training.max_time=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "pretrain" / "plan.json").read_text())
    width = AutoConfig.from_pretrained(source).hidden_size
    assert plan["hidden_size"] is None and plan["vocab_size"] is None and plan["probe"] == []
    assert plan["learning_rate"] == sizing.learning_rate(width)[0] and plan["block_size"] == 64
    assert AutoConfig.from_pretrained(out / "pretrain" / "final").hidden_size == width


def test_nanogpts_baseline_given_seconds_runs_the_iterations_they_allow_and_decays_over_them(monkeypatch):
    # bench.pretrain_text's same-time baseline: the iteration count comes from the measured speed and the cosine
    # schedule ends at it. A fake clock makes every reading 5 ms later, so 2 s allow ~400 readings' worth.
    import bench.nanogpt_char as nanogpt

    clock = iter(range(10**6))
    monkeypatch.setattr(nanogpt.time, "perf_counter", lambda: next(clock) * 0.005)
    lrs = []
    step = torch.optim.AdamW.step

    def spy(opt, *args, **kwargs):
        lrs.append(opt.param_groups[0]["lr"])
        return step(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    out = nanogpt.train("the fox ran far and sat on a mat by the sea.\n" * 50, block=16, batch=2, seconds=2.0)
    assert 300 <= out["iters"] == len(lrs) <= 400
    assert lrs[99] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, abs=2e-5)
    assert math.isfinite(out["val_bits_per_char"])
