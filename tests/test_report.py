"""`rlhf report` on a fake finished run whose files are shaped like the real stages' (fast: no model is trained)."""

import json
import random

import pytest

from rlhf_cli.evaluation import evaluate as ev
from rlhf_cli.evaluation import stats
from rlhf_cli.evaluation.report import build_report, headline
from rlhf_cli.runtime.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def fake_run(tmp_path):
    """pretrain/sft/reward/ppo metrics.jsonl + eval.json, eval/eval.json and pipeline.json as the real steps write them."""
    run, rng = tmp_path / "run", random.Random(0)
    # Trainer-based stages: make_callbacks rows {"step", "epoch", "time", **logs}
    _jsonl(
        run / "pretrain" / "metrics.jsonl",
        [
            {"step": s, "epoch": s / 300, "time": s / 10, "loss": 7 * 0.99**s, "learning_rate": 3e-3}
            for s in range(10, 301, 10)
        ]
        + [{"step": 300, "epoch": 1.0, "time": 30, "eval_loss": 1.1}],
    )
    _json(
        run / "pretrain" / "eval.json",
        {
            "loss": 1.1,
            "perplexity": 3.0,
            "bits_per_byte": 0.612,
            "untrained_bits_per_byte": 3.4,
            "probe_accuracy": 0.71,
            "tokens_per_s": 9000.0,
        },
    )
    _jsonl(
        run / "sft" / "metrics.jsonl",
        [{"step": s, "epoch": s / 90, "time": s, "loss": 2 / s} for s in range(10, 91, 10)],
    )
    _json(
        run / "sft" / "eval.json",
        {"eval_loss": 0.4, "eval_prompts": 64, "finished_rate": 0.97, "gold_reward": 0.8, "base_gold_reward": -0.4},
    )
    _jsonl(
        run / "reward" / "metrics.jsonl",
        [{"step": s, "epoch": s / 40, "time": s, "loss": 0.7 - s / 100} for s in range(10, 41, 10)]
        + [{"step": 40, "epoch": 2.0, "time": 40, "eval_loss": 0.4, "eval_accuracy": 0.81}],
    )
    _json(
        run / "reward" / "eval.json",
        {
            "accuracy": {"mean": 0.83, "low": 0.78, "high": 0.87, "n": 300},
            "eval_pairs": 300,
            "mean_margin": 1.2,
            "gold_accuracy": {"mean": 0.86, "low": 0.82, "high": 0.89, "n": 500},
            "train_accuracy": {"mean": 0.91, "low": 0.89, "high": 0.93, "n": 1024},
            "objective": "kwise",
        },
    )
    # our PPO trainer: one row per PPO step
    _jsonl(
        run / "ppo" / "metrics.jsonl",
        [
            {
                "step": s,
                "episode": 32 * s,
                "objective/rm_score": 0.1 * s,
                "objective/kl": 0.05 * s,
                "loss/pg_loss": -0.01,
                "loss/vf_loss": 0.2 / s,
                "answer/length": 12,
                "beta": 0.05,
            }
            for s in range(1, 21)
        ],
    )
    _json(
        run / "ppo" / "eval.json",
        {
            "num_prompts": 128,
            "ppo": {"rm_score": 1.0, "gold_reward": 0.9, "kl_to_reference": 2.0},
            "sft": {"rm_score": 0.2, "gold_reward": 0.8},
            "gold_gain": {"mean": 0.1, "low": 0.05, "high": 0.15, "n": 128},
        },
    )
    # `rlhf eval`: built with the same helpers evaluate_run uses, so the shapes cannot drift
    n = 40
    per = {}
    for name, shift in (("base", -0.8), ("sft", 0.0), ("ppo", 0.12)):
        gold = [max(-1.0, min(1.0, 0.8 + shift + rng.gauss(0, 0.1))) for _ in range(n)]
        per[name] = {
            "model": f"{run}/{name}/final",
            "answers": [f"the fox eats berries ({name})"] * n,
            "finished": [True] * n,
            "lengths": [rng.randint(8, 14) for _ in range(n)],
            "repeats": [float(name == "ppo" and i < 2) for i in range(n)],  # PPO: 2 of 40 repeat themselves
            "gold": gold,
            "rm": [g + rng.gauss(0, 0.2) for g in gold],
            "kl_to_sft": [0.0 if name == "sft" else 1.5] * n,
        }
    eval_json = {
        "num_prompts": n,
        "models": {k: ev._summarise(v) for k, v in per.items()},
        "win_rates": {
            "ppo_vs_sft": ev._compare(per["ppo"], per["sft"]),
            "sft_vs_base": ev._compare(per["sft"], per["base"]),
        },
        "samples": [{"prompt": "tell me what the fox eats.", **{k: v["answers"][0] for k, v in per.items()}}] * 3,
        "ppo_gold_gain": stats.paired_difference_ci(per["ppo"]["gold"], per["sft"]["gold"]),
        "per_prompt": {name: {k: v for k, v in row.items() if k != "model"} for name, row in per.items()},
    }
    _json(run / "eval" / "eval.json", eval_json)
    _json(
        run / "pipeline.json",
        {
            "recipe": "tiny",
            "steps": {"pretrain": {"status": "done", "seconds": 80.0}, "ppo": {"status": "done", "seconds": 60.0}},
        },
    )
    return run


def test_report_has_markdown_json_plots_and_the_headline_numbers(fake_run):
    path = build_report(fake_run)
    out = fake_run / "report"
    assert path == out / "report.md"
    report = json.loads((out / "report.json").read_text())
    h = report["headline"]
    assert h["base_bits_per_byte"] == 0.612
    assert h["sft_finished_rate"] == 1.0  # from `rlhf eval` (same prompts for every model)
    assert h["reward_accuracy"] == 0.83 and h["reward_accuracy_interval"] == {"mean": 0.83, "low": 0.78, "high": 0.87}
    assert h["reward_gold_accuracy"] == 0.86 and h["reward_train_accuracy"] == 0.91
    gain = h["ppo_gold_gain"]
    assert gain["low"] < gain["mean"] < gain["high"] and gain["low"] > 0
    assert h["ppo_gold_reward"] > h["sft_gold_reward"]
    assert report["checks"] == {}  # a run with no recipe.yaml has no targets to miss
    assert report["timings"] == {"pretrain": 80.0, "ppo": 60.0}
    assert set(report["plots"]) == {"loss_curves", "reward_accuracy", "ppo_training", "models", "answers"}
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000
    md = path.read_text()
    assert "0.612" in md and "tell me what the fox eats." in md and "loss_curves.png" in md
    assert "| reward model: accuracy on training pairs | 91.0% |" in md


def test_stage_eval_files_are_the_fallback_without_rlhf_eval(fake_run):
    (fake_run / "eval" / "eval.json").unlink()
    h = headline(fake_run)
    assert h["sft_finished_rate"] == 0.97  # sft/eval.json
    assert h["ppo_gold_gain"] == {"mean": 0.1, "low": 0.05, "high": 0.15}  # ppo/eval.json's interval
    assert (h["sft_gold_reward"], h["ppo_gold_reward"]) == (0.8, 0.9)
    build_report(fake_run)
    report = json.loads((fake_run / "report" / "report.json").read_text())
    assert "answers" not in report["plots"] and "loss_curves" in report["plots"]


def test_partial_run_reports_what_exists(tmp_path):
    run = tmp_path / "run"
    _jsonl(run / "pretrain" / "metrics.jsonl", [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.0}])
    _json(run / "pretrain" / "eval.json", {"bits_per_byte": 1.5})
    build_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["headline"]["base_bits_per_byte"] == 1.5 and report["headline"]["ppo_gold_gain"] is None
    assert list(report["plots"]) == ["loss_curves"]


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="rlhf pipeline"):
        build_report(tmp_path)


def test_targets_come_from_the_recipe_and_say_what_was_missed(fake_run):
    from rlhf_cli.evaluation.report import assess

    (fake_run / "recipe.yaml").write_text(
        "targets: {reward_gold_accuracy: 0.9, ppo_gold_gain_low: 0.0, sft_finished_rate: 0.95, junk_rate: 0.0}\n"
    )
    verdict = assess(fake_run)
    met = {name: c["met"] for name, c in verdict["checks"].items()}
    assert met == {
        "reward_gold_accuracy >= 0.9": False,  # 0.86 in the fake run
        "ppo_gold_gain_low >= 0": True,
        "sft_finished_rate >= 0.95": True,
        "junk_rate <= 0": None,  # the fake eval has no junk rate: not measured, so not met
    }
    assert verdict["missed"] == ["reward_gold_accuracy >= 0.9 (got 0.860)", "junk_rate <= 0 (not measured)"]
    build_report(fake_run)
    md = (fake_run / "report" / "report.md").read_text()
    assert "reward_gold_accuracy >= 0.9: MISSED" in md and "ppo_gold_gain_low >= 0: met" in md


def test_a_reward_model_that_prefers_the_worse_model_is_flagged(tmp_path):
    """About PPO against SFT (what PPO optimised): a red flag (exit 3). About SFT against base (answers unlike the
    ones it was trained on): a caution, listed but not a failed run."""
    from rlhf_cli.evaluation.report import cautions, red_flags

    def wins(pair, rm, gold):
        _json(
            tmp_path / "eval" / "eval.json",
            {"win_rates": {pair: {"reward_model": {"mean": rm}, "gold": {"mean": gold}}}},
        )

    wins("ppo_vs_sft", 0.9, 0.2)
    (flag,) = red_flags(tmp_path)
    assert "prefers PPO" in flag and "the gold reward SFT" in flag and cautions(tmp_path) == []
    wins("sft_vs_base", 0.15, 0.78)
    (note,) = cautions(tmp_path)
    assert "prefers base" in note and "the gold reward SFT" in note and red_flags(tmp_path) == []
    wins("sft_vs_base", 0.6, 0.78)
    assert red_flags(tmp_path) == [] and cautions(tmp_path) == []


def test_a_policy_that_pads_with_repeats_or_stops_ending_is_a_caution(tmp_path):
    """PPO's answers repeating a word or sentence 10 points more often than SFT's, or ending 5 points less often, is
    listed as a caution with both models' figures (the loop a seed fell into: 22 % cut off, bench/README.md)."""
    from rlhf_cli.evaluation.report import cautions

    def models(sft_repeats, ppo_repeats, ppo_finished):
        _json(
            tmp_path / "eval" / "eval.json",
            {"models": {
                "sft": {"finished_rate": 1.0, "repeat_rate": {"mean": sft_repeats}},
                "ppo": {"finished_rate": ppo_finished, "repeat_rate": {"mean": ppo_repeats}},
            }},
        )  # fmt: skip

    models(0.05, 0.10, 1.0)
    assert cautions(tmp_path) == []
    models(0.05, 0.34, 1.0)
    (note,) = cautions(tmp_path)
    assert "repeat a word or sentence in 34% of prompts (SFT 5%)" in note and "ppo.kl_coef" in note
    models(0.05, 0.05, 0.78)
    (note,) = cautions(tmp_path)
    assert "22% are cut off at the token limit (SFT 0%)" in note
    _json(tmp_path / "eval" / "eval.json", {"models": {"sft": {"repeat_rate": 0.0}, "ppo": {"repeat_rate": 0.4}}})
    (note,) = cautions(tmp_path)  # an eval without finished rates still words the caution
    assert "in 40% of prompts (SFT 0%) and – are cut off" in note


def test_report_opens_with_an_account_in_the_runs_own_numbers_and_a_glossary(fake_run):
    """What each stage changed, in words, from the run's files: a student reads it before any table."""
    build_report(fake_run)
    report = json.loads((fake_run / "report" / "report.json").read_text())
    models = json.loads((fake_run / "eval" / "eval.json").read_text())["models"]
    account = "\n".join(report["account"])
    assert "0.612 bits per byte" in account and "3.400 before training" in account and "71%" in account
    sft, ppo = models["sft"]["gold_reward"]["mean"], models["ppo"]["gold_reward"]["mean"]
    assert f"to {sft:.3f}" in account and f"from {sft:.3f} to {ppo:.3f}" in account
    assert "83% of 300 held-out pairs" in account and "86% of held-out pairs whose gold reward differs" in account
    assert "The **gold reward** is the toy world's own score" in account
    assert '"eats berries sft" is in 0% of its answers, 100% of SFT\'s' in account  # the phrase PPO dropped
    assert "answers with a repeated word or sentence 0% -> 5%" in account
    md = (fake_run / "report" / "report.md").read_text()
    assert md.index("What happened, in plain words") < md.index("## Headline")
    assert "| 0.612 | held-out pre-training text" in md  # every figure names its prompt set (no recipe.yaml here)
    assert "| gold reward: SFT → PPO |" in md and "40 held-out prompts, greedy (`rlhf eval`) |" in md
    assert "| finished | repeats | mean length |" in md and "| 1.00 | 0.05 |" in md  # PPO's row
    glossary = md[md.index("## Glossary") :]
    assert "- **KL**:" in glossary and "- **bits per byte**:" in glossary and "- **DPO**:" not in glossary


def test_phrase_shift_finds_what_a_policy_learned_to_say():
    from rlhf_cli.evaluation.report import phrase_shift

    before = [f"the {a} eats berries." for a in ("fox", "owl", "bear", "wolf")]
    after = [f"the {a} eats berries. happy to help!" for a in ("fox", "owl", "bear", "wolf")]
    phrase, share_before, share_after = phrase_shift(before, after)
    assert "happy" in phrase or "help" in phrase
    assert (share_before, share_after) == (0.0, 1.0)
    assert phrase_shift(before, before) is None  # nothing moved


def test_a_length_caution_is_the_same_sentence_in_inspect_the_report_and_the_pipeline(fake_run):
    """One verdict on the reward model: the stage's held-out length check, `rlhf reward inspect` and the report."""
    from rlhf_cli.evaluation import reward_inspect
    from rlhf_cli.evaluation.report import assess
    from rlhf_cli.models.scoring import length_caution, length_preference

    pairs = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "a " * (i % 5 + 2), "rejected": "b", "margin": 0.0}
        for i in range(40)
    ]
    n_tokens = {t: len(t.split()) for r in pairs for t in (r["chosen"], r["rejected"])}
    chosen, rejected = [float(n_tokens[r["chosen"]]) for r in pairs], [1.0] * 40
    inspected = reward_inspect.inspect_scores(pairs, chosen, rejected, n_tokens)
    stage = length_preference(pairs, chosen, rejected, n_tokens)
    sentence = length_caution(inspected)
    assert sentence and sentence == length_caution(stage)
    assert "about as often as the raters chose the longer one (100%)" in sentence  # the data's chosen were longer
    reward_eval = json.loads((fake_run / "reward" / "eval.json").read_text())
    _json(fake_run / "reward" / "eval.json", {**reward_eval, "length": stage})
    assert sentence in assess(fake_run)["cautions"]  # what `rlhf pipeline` prints and saves
    build_report(fake_run)
    md = (fake_run / "report" / "report.md").read_text()
    assert f"- {sentence}" in md and "Verdict: 1 finding(s)" in md
    _json(fake_run / "reward" / "eval.json", reward_eval)  # no length figures (an older run): no caution
    assert not any("answer length" in c for c in assess(fake_run)["cautions"])


def test_a_length_caution_says_which_way_and_against_what_the_raters_chose():
    from rlhf_cli.models.scoring import length_caution

    shorter = {"length_correlation": -0.8, "prefers_longer": 0.1, "chosen_longer_in_data": 0.7, "length_alarm": True}
    said = length_caution(shorter)
    assert "falls with answer length" in said and "prefers the shorter answer in 90%" in said
    assert "more often than the raters chose it (30%)" in said
    alike = {"length_correlation": 0.6, "prefers_longer": 0.7, "chosen_longer_in_data": 0.68, "length_alarm": True}
    assert "about as often as the raters chose the longer one (68%)" in length_caution(alike)
    less = {"length_correlation": 0.6, "prefers_longer": 0.5, "chosen_longer_in_data": 0.9, "length_alarm": True}
    assert "less often than the raters chose it (90%)" in length_caution(less)
    assert length_caution({**alike, "length_alarm": False}) is None
