"""The methods beside PPO (best-of-n, expert iteration, RLOO, GRPO) on tiny models: each runs through the shared
lifecycle and writes a `final/` that loads with from_pretrained and an eval.json against SFT; best-of-n keeps the reward
model's argmax; `rlhf eval` judges every method a run holds and `rlhf compare` writes its table and plot."""

import json

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.data.toy import toy_files
from rlhf_cli.models.answers import best_of_n, best_of_n_kl
from rlhf_cli.models.modeling import build_model, train_tokenizer
from rlhf_cli.models.scoring import load_reward_model, score
from rlhf_cli.recipe import ModelSpec, load_recipe
from rlhf_cli.runtime.errors import UserError

TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=256)
METHODS = ["best_of_n", "rloo", "grpo"]  # expert iteration: below (a random model never ends an answer)
FAST = [  # every method a few steps on a handful of prompts
    "eval.max_new_tokens=8",
    "eval.num_prompts=6",
    "ppo.response_length=8",
    "best_of_n.n=4",
    "best_of_n.eval_prompts=6",
    "expert_iteration.n=4",
    "expert_iteration.num_prompts=16",
    "expert_iteration.eval_prompts=6",
    "expert_iteration.training={max_steps: 3, per_device_train_batch_size: 4, logging_steps: 1}",
    *(
        f"{m}.training={{max_steps: 3, per_device_train_batch_size: 4, num_generations: 2, max_completion_length: 8, "
        f"logging_steps: 1, learning_rate: 1.0e-3}}"
        for m in ("rloo", "grpo")
    ),
    "rloo.eval_prompts=6",
    "grpo.eval_prompts=6",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with the toy world's files, a random tiny 'base' and 'SFT' model and a reward model on top of it,
    each stage's eval.json and the feedback files, so that every shared step counts as finished."""
    run = tmp_path_factory.mktemp("methods") / "run"
    files = toy_files(run / "data" / "toy", 0)
    texts = [json.loads(line)["text"] for line in open(files["pretrain_train.jsonl"])][:400]
    tok = train_tokenizer(texts, vocab_size=400)
    for stage, seed in (("pretrain", 1), ("sft", 0)):
        build_model(TINY, tok, seed=seed).save_pretrained(run / stage / "final")
        tok.save_pretrained(run / stage / "final")
    import torch

    torch.manual_seed(0)
    rm = load_reward_model(str(run / "sft" / "final"), tok)
    rm.save_pretrained(run / "reward" / "final")
    tok.save_pretrained(run / "reward" / "final")
    for stage in ("pretrain", "sft", "reward"):
        (run / stage / "eval.json").write_text("{}")
    (run / "feedback").mkdir()
    for name in ("samples.jsonl", "rankings.jsonl"):
        (run / "feedback" / name).write_text("")
    return run


def _recipe(*extra):
    return load_recipe("tiny", [*FAST, *extra])


def test_best_of_n_keeps_the_reward_models_argmax(run):
    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer

    recipe = _recipe()
    tok = load_tokenizer(str(run / "sft" / "final"))
    model = load_causal_lm(str(run / "sft" / "final"))
    judge = (load_reward_model(str(run / "reward" / "final"), tok), tok)
    prompts = [[{"role": "user", "content": q}] for q in ("what colour is the goat?", "where does the fox live?")]
    chosen, scores = best_of_n(recipe, model, tok, judge, prompts, n=8, temperature=1.0, seed=0)
    assert [len(s) for s in scores] == [8, 8] and any(max(s) > min(s) for s in scores)
    again = score(*judge, prompts, [a.text for a in chosen], max_length=recipe.reward.max_length)
    assert again == pytest.approx([max(s) for s in scores], abs=1e-5)  # the chosen answer is each prompt's best
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(16) == pytest.approx(1.8351, abs=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_loadable_policy_and_its_eval(run, method):
    import importlib

    from transformers import AutoModelForCausalLM

    metrics = importlib.import_module(f"rlhf_cli.stages.{method}").run(_recipe(), run)
    final = run / method / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.hidden_size == 32
    saved = json.loads((run / method / "eval.json").read_text())
    assert saved[method]["finished_rate"] >= 0.0 and saved["eval_prompts"] == 6
    assert set(saved["gold_gain"]) == {"mean", "low", "high", "n"}  # the toy world judges it against SFT
    assert saved["episodes"] == metrics["episodes"] > 0
    lineage = json.loads((final / "lineage.json").read_text())
    assert lineage["stage"] == method and lineage["parents"]["policy"] == "sft/final"  # relative to the run
    if method == "best_of_n":
        assert json.loads((final / "best_of_n.json").read_text())["n"] == 4
        assert saved["kl_to_sft_bound"] == pytest.approx(best_of_n_kl(4), abs=1e-6)
    else:
        assert metrics["train_steps"] == 3
        assert (run / method / "metrics.jsonl").exists()
    if method in ("rloo", "grpo"):
        assert metrics["episodes"] == 3 * 4  # steps x answers per step


def test_expert_iteration_refuses_when_no_best_answer_ends(run):
    """A model that never ends its answers has nothing to teach (a trained one: test_end_to_end's compare)."""
    from rlhf_cli.stages import expert_iteration

    with pytest.raises(UserError, match=r"no best answer of 4 ended with end-of-text; raise expert_iteration.n"):
        expert_iteration.run(_recipe(), run)
    assert not (run / "expert_iteration").exists()  # refused before the stage folder was made


def test_a_method_without_a_reward_model_says_which_step_to_run(tmp_path, run):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run / "sft", bare / "sft")
    shutil.copytree(run / "data", bare / "data")
    from rlhf_cli.stages import grpo

    with pytest.raises(UserError, match=r"reward/final does not exist — run .*reward"):
        grpo.run(_recipe(), bare)
    assert not (bare / "grpo").exists()  # nothing written


def test_compare_tables_every_method_and_eval_judges_them(run):
    result = CliRunner().invoke(
        app,
        ["compare", "--recipe", "tiny", "-o", str(run), "--resume", "--methods", "best-of-n,grpo,rloo",
         *(f"--set={s}" for s in FAST)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    compare = json.loads((run / "compare" / "compare.json").read_text())
    assert list(compare["methods"]) == ["sft", "best_of_n", "rloo", "grpo"]
    for name, row in compare["methods"].items():
        assert set(row["gold_reward"]) >= {"mean", "low", "high", "n"}, name
        if name != "sft":
            assert row["win_rate_gold"]["mean"] is not None and row["episodes"] > 0
    assert compare["methods"]["best_of_n"]["kl_to_sft"]["mean"] == pytest.approx(best_of_n_kl(4), abs=1e-6)
    assert (run / "compare" / "compare.png").stat().st_size > 10_000
    assert "| grpo |" in (run / "compare" / "compare.md").read_text()
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert {"grpo_vs_sft", "best_of_n_vs_sft"} <= set(ev["win_rates"]) and "grpo_gold_gain" in ev


def test_compare_refuses_an_unknown_method():
    result = CliRunner().invoke(app, ["compare", "--recipe", "tiny", "--methods", "ppo,bon"])
    assert result.exit_code == 2
    assert "unknown method bon" in result.output and "best-of-n" in result.output
