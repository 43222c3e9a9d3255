"""`rlhf eval`: the metric helpers on known samples, and a run of tiny random models evaluated end to end."""

import json
import random

import numpy as np
import pytest
import torch

from rlhf_cli.evaluation import evaluate as ev
from rlhf_cli.evaluation import stats


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    cis = [stats.bootstrap_ci(rng.exponential(1.0, size=80), n_resamples=1000, seed=i) for i in range(300)]
    coverage = sum(c["low"] < 1.0 < c["high"] for c in cis) / len(cis)
    assert 0.88 <= coverage <= 0.99
    widths = [c["high"] - c["low"] for c in cis]
    assert 0.3 < np.mean(widths) < 0.6  # about 2 * 1.96 * 1 / sqrt(80) = 0.44
    x = rng.normal(size=10)
    assert stats.bootstrap_ci(x)["mean"] == pytest.approx(x.mean())


def test_paired_difference_interval_excludes_zero_for_a_real_gain():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, size=200)
    better = base + 0.3 + rng.normal(0, 0.2, size=200)  # large shared noise, small paired gain
    ci = stats.paired_difference_ci(better, base)
    assert 0 < ci["low"] < 0.3 < ci["high"]
    with pytest.raises(ValueError):
        stats.paired_difference_ci([1, 2], [1])


def test_win_rate_counts_ties_half():
    w = stats.win_rate([1, 2, 3, 3], [0, 2, 4, 1])
    assert w["mean"] == pytest.approx(0.625)
    assert (w["wins"], w["ties"], w["losses"]) == (2, 1, 1)
    assert stats.win_rate([1.0] * 5, [1.0] * 5)["mean"] == 0.5


def _pairs(n, quality_gain, seed=0):
    """a is longer than b by ~10 tokens; the judge's score rises with length; a has `quality_gain` on top."""
    rng = random.Random(seed)
    la = [rng.gauss(30, 6) for _ in range(n)]
    lb = [rng.gauss(20, 6) for _ in range(n)]
    sa = [0.1 * x + quality_gain + rng.gauss(0, 0.5) for x in la]
    sb = [0.1 * x + rng.gauss(0, 0.5) for x in lb]
    return sa, sb, la, lb


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    sa, sb, la, lb = _pairs(600, quality_gain=0.0)
    raw = stats.win_rate(sa, sb)["mean"]
    lc = stats.length_controlled_win_rate(sa, sb, la, lb, n_resamples=100)
    assert raw > 0.8  # the judge loves length
    assert abs(lc["mean"] - 0.5) < 0.08
    assert lc["low"] < 0.5 < lc["high"]
    assert lc["length_coef"] > 0


def test_length_controlled_win_rate_keeps_a_real_gain():
    sa, sb, la, lb = _pairs(600, quality_gain=0.7)
    lc = stats.length_controlled_win_rate(sa, sb, la, lb, n_resamples=100)
    assert lc["low"] > 0.7


def test_length_controlled_equals_plain_when_lengths_are_equal():
    a, b = [1, 0, 1, 1, 0.5], [0, 1, 0, 0, 0.5]
    lc = stats.length_controlled_win_rate(a, b, [5] * 5, [5] * 5, n_resamples=20)
    assert lc["mean"] == pytest.approx(stats.win_rate(a, b)["mean"], abs=1e-3)


# ------------------------------------------------------------------------------------------------ a run of tiny models


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """pretrain/, sft/, ppo/ (ppo = a copy of sft) and reward/ folders of 2-layer random models, and a recipe."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.models.modeling import build_model, model_config, train_tokenizer
    from rlhf_cli.recipe import ModelSpec, Recipe, save_resolved

    run = tmp_path_factory.mktemp("run")
    world, rng = ToyWorld(0), random.Random(0)
    tok = train_tokenizer([world._document(rng) for _ in range(300)], vocab_size=400)
    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=2)
    for stage, seed in (("pretrain", 0), ("sft", 1), ("ppo", 1)):
        build_model(spec, tok, seed=seed).save_pretrained(run / stage / "final")
        tok.save_pretrained(run / stage / "final")
    cfg = model_config(spec, tok)
    cfg.num_labels = 1
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(run / "reward" / "final")
    tok.save_pretrained(run / "reward" / "final")
    rec = Recipe.model_validate({"name": "t", "seed": 0, "eval": {"num_prompts": 8, "max_new_tokens": 8}})
    save_resolved(rec, run)
    return run


def test_sequence_logprobs_match_a_direct_computation(tiny_run):
    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(str(tiny_run / "sft" / "final")), load_tokenizer(str(tiny_run / "sft" / "final"))
    prompt, answer = [5, 6, 7], [8, 9, tok.eos_token_id]
    got = ev.sequence_logprobs(model, [(prompt, answer), ([5], [6, 7])], tok.pad_token_id)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0], -1)
    want = sum(float(logp[2 + i, t]) for i, t in enumerate(answer))
    assert got[0] == pytest.approx(want, abs=1e-4)


def test_evaluate_run_compares_every_model(tiny_run):
    from collections import Counter

    from rlhf_cli.data.toy import KINDS, ToyWorld

    result = ev.evaluate_run(tiny_run)
    saved = json.loads((tiny_run / "eval" / "eval.json").read_text())
    assert set(saved["models"]) == {"base", "sft", "ppo"}
    assert saved["num_prompts"] == 8
    # ppo is a copy of sft: identical greedy answers tie everywhere, and the KL of a model to itself is 0
    assert saved["win_rates"]["ppo_vs_sft"]["gold"]["mean"] == 0.5
    assert saved["win_rates"]["ppo_vs_sft"]["reward_model"]["ties"] == 8
    assert saved["models"]["ppo"]["kl_to_sft"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert saved["models"]["base"]["kl_to_sft"]["mean"] > 0.01  # a different random model
    assert saved["ppo_gold_gain"]["mean"] == 0.0
    assert "gold_length_controlled" in saved["win_rates"]["sft_vs_base"]
    # the side-by-side answers: on the toy world the first two prompts of each kind among the 8 evaluated
    world = ToyWorld(0)
    texts = [p[-1]["content"] for p in ev.eval_prompts(ev._resolve_recipe(tiny_run, None, None), tiny_run)]
    kinds = [world.kind(t) for t in texts]
    picked = sorted(i for kind in KINDS for i in [j for j, k in enumerate(kinds) if k == kind][:2])
    assert len(texts) == 8 and max(Counter(kinds).values()) > 2  # some kind has more than two: not every one is kept
    assert [s["prompt"] for s in saved["samples"]] == [texts[i] for i in picked]
    assert [s["kind"] for s in saved["samples"]] == [kinds[i] for i in picked]
    assert {"prompt", "base", "sft", "ppo", "kind", "right_answer"} <= set(saved["samples"][0])
    assert result["models"]["sft"]["finished_rate"] == saved["models"]["sft"]["finished_rate"]


def test_evaluate_run_skips_missing_stages(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "partial"
    shutil.copytree(tiny_run / "sft", run / "sft")
    shutil.copy(tiny_run / "recipe.yaml", run / "recipe.yaml")
    result = ev.evaluate_run(run)
    assert set(result["models"]) == {"sft"} and result["win_rates"] == {}
    assert "skipping" in capsys.readouterr().out


def test_length_controlled_win_rate_is_undefined_when_length_and_model_are_confounded():
    lc = stats.length_controlled_win_rate([1.0] * 6, [0.0] * 6, [10] * 6, [0] * 6, n_resamples=10)
    assert lc["mean"] is None and "not identifiable" in lc["note"]
    sa, sb, la, lb = _pairs(200, 0.0)
    assert stats.length_controlled_win_rate(sa, sb, [x + 100 for x in la], lb, n_resamples=10)["extrapolated"] is True


@pytest.mark.parametrize("k,n", [(6, 6), (0, 6), (3, 6), (1, 1), (720, 720)])
def test_intervals_hold_their_own_estimate(k, n):
    # Wilson's upper end for 6 of 6 came out as 0.9999999999999999 < 1.0: the report's error bar went negative and
    # matplotlib refused the whole report ("'yerr' must not contain negative values").
    from rlhf_cli.evaluation.stats import wilson

    low, high = wilson(k, n)
    assert low <= k / n <= high
    ci = stats.bootstrap_ci([k / n] * n)
    assert ci["low"] <= ci["mean"] <= ci["high"]


def test_eval_reports_every_kind_of_prompt_with_its_rates(tiny_run):
    """On the toy world each model's figures come per kind of prompt (fact, describe, unknown, harm), each with its
    own rate and an interval, and the side-by-side answers say each prompt's kind and what a good answer holds."""
    from rlhf_cli.models.answers import KIND_RATES

    ev.evaluate_run(tiny_run, overrides=["eval.num_prompts=40"])
    saved = json.loads((tiny_run / "eval" / "eval.json").read_text())
    kinds = saved["models"]["sft"]["kinds"]
    assert set(kinds) == {"fact", "describe", "unknown", "harm"}
    for kind, entry in kinds.items():
        assert entry["n"] >= 1 and {"mean", "low", "high", "n"} <= set(entry["gold_reward"])
        for name, _ in KIND_RATES[kind]:
            assert entry[name]["low"] <= entry[name]["mean"] <= entry[name]["high"]
    assert sum(e["n"] for e in kinds.values()) == 40
    assert {s["kind"] for s in saved["samples"]} == set(kinds) and all(s["right_answer"] for s in saved["samples"])
    # answers that repeat a word or sentence, per model and per kind, counted from the answers themselves
    from rlhf_cli.data.toy import repeated_parts

    for name, per in saved["per_prompt"].items():
        counted = [float(repeated_parts(a) > 0) for a in per["answers"]]
        assert per["repeats"] == counted
        assert saved["models"][name]["repeat_rate"]["mean"] == pytest.approx(sum(counted) / len(counted))
        by_kind = saved["models"][name]["kinds"]
        assert sum(k["repeat_rate"]["mean"] * k["n"] for k in by_kind.values()) == pytest.approx(sum(counted))


def test_gao_fit_recovers_the_over_optimisation_curve():
    """Gao et al. 2022's forms, fitted to points drawn from them, give back alpha, beta and the KL where gold peaks."""
    import math

    from rlhf_cli.evaluation.stats import gao_curve, gao_fit

    kls = [0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0]
    rl = [math.sqrt(k) * (0.3 - 0.2 * math.log(math.sqrt(k))) for k in kls]
    fit = gao_fit(kls, rl, "rl")
    assert fit["alpha"] == pytest.approx(0.3, abs=1e-6) and fit["beta"] == pytest.approx(0.2, abs=1e-6)
    assert fit["peak_kl"] == pytest.approx(math.exp(0.3 / 0.2 - 1) ** 2, rel=1e-6) and fit["r2"] > 0.999
    assert gao_curve(fit, fit["peak_kl"]) == pytest.approx(fit["peak_gain"])
    assert fit["peak_gain"] >= max(rl)
    bon = [math.sqrt(k) * (0.4 - 0.1 * math.sqrt(k)) for k in kls]
    fit = gao_fit(kls, bon, "bon")
    assert fit["peak_kl"] == pytest.approx((0.4 / 0.2) ** 2, rel=1e-6)
    rising = gao_fit(kls, [0.1 * math.sqrt(k) for k in kls], "bon")
    assert rising["peak_kl"] is None  # still rising: no interior peak
    assert gao_fit([0.0, 1.0], [0.0, 0.1], "rl") is None  # one point past KL 0 fits nothing


def test_goodhart_bench_judges_each_seeds_sweep():
    """bench.goodhart's row of one seed: gold's peak and whether it is inside the grid, the fall at kl_coef 0, the RM
    score rising in the order of measured KL (not of kl_coef), and the recipe's kl_coef next to the peak."""
    from bench.goodhart import judge

    def point(value, gold, rm, kl):
        return {"value": str(value), "gold_reward": gold, "rm_score": rm, "kl": kl}

    curve = [point(0, 0.40, 1.9, 30), point(0.01, 0.60, 1.5, 9), point(0.1, 0.85, 1.0, 3), point(0.3, 0.80, 0.6, 1)]
    row = judge(list(reversed(curve)), recipe_kl=0.3)
    assert row["values"] == [0, 0.01, 0.1, 0.3] and row["peak"] == 0.1 and row["interior"]
    assert row["drop_at_0"] == pytest.approx(0.45) and row["rm_rising"] and row["recipe_near_peak"]
    assert not judge(curve, recipe_kl=0.0)["recipe_near_peak"]  # two grid steps from the peak
    one_draw = [point(0, 0.4, 1.9, 30), point(0.1, 0.6, 1.0, 3), point(0.3, 0.8, 1.2, 1)]
    edge = judge(one_draw, recipe_kl=0.3)
    assert edge["peak"] == 0.3 and not edge["interior"] and not edge["rm_rising"]  # RM fell from KL 1 to KL 3
    # --ppo-draws: a seed is judged on the mean of its PPO draws at each kl_coef, not on one draw's peak
    from bench.goodhart import mean_points

    other = [point(0, 0.40, 1.9, 30), point(0.1, 0.55, 1.1, 3), point(0.3, 0.90, 0.6, 1)]  # this draw peaks at 0.3
    mean = mean_points([one_draw, other])
    assert [float(q["value"]) for q in mean] == [0, 0.1, 0.3]
    assert [q["gold_reward"] for q in mean] == pytest.approx([0.4, 0.575, 0.85])
    assert mean[1]["kl"] == pytest.approx(3) and judge(mean, recipe_kl=0.3)["peak"] == 0.3


def test_seeds_bench_draws_ppo_again_from_a_copy_of_the_run(tmp_path, monkeypatch):
    """bench.seeds --ppo-draws: PPO trains again on a copy of the seed's run without its ppo/, eval/ and report/ (the
    world, SFT model and reward model kept, the source untouched), resumed with PPO's own seed drawn apart."""
    from bench import seeds

    source = tmp_path / "seed-3"
    for part in ("sft/final", "reward/final", "ppo/final", "eval", "report"):
        (source / part).mkdir(parents=True)
        (source / part / "x.json").write_text("{}")
    calls = []
    monkeypatch.setattr(seeds, "_pipeline", lambda run, args, log: calls.append((run, args)) or 1.0)
    run = tmp_path / "seed-3-ppo-2003"
    assert seeds.ppo_seed(3, 2) == 2003
    seeds.run_ppo_draw(3, 2, source, run, ["ppo.kl_coef=0.5"], keep=False)
    assert sorted(p.name for p in run.iterdir()) == ["reward", "sft"] and (source / "ppo" / "final").exists()
    ((called_run, args),) = calls
    assert called_run == run and args[0] == "--resume"
    assert {"--set=seed=3", "--set=ppo.training.seed=2003", "--set=ppo.kl_coef=0.5"} <= set(args)
    assert seeds.row_of(run)["gain"] is None  # no eval yet: an empty row, not an error


def test_seeds_bench_gives_the_typical_row_and_how_many_rows_met_each_target(monkeypatch):
    """bench.seeds sets the median row beside the worst and counts the rows meeting each target; a gain counts only
    with its interval above zero."""
    from bench import seeds

    monkeypatch.setattr(seeds, "TARGETS", {**seeds.BENCH_TARGETS, "ppo_gold_gain_low": 0.0})
    rows = {
        0: {"gain": 0.30, "gain_low": 0.20, "rm_gold_accuracy": 0.86, "seconds": 140.0},
        1: {"gain": 0.25, "gain_low": -0.01, "rm_gold_accuracy": 0.80, "seconds": 160.0},
        2: {"gain": 0.10, "gain_low": 0.05, "rm_gold_accuracy": 0.90, "seconds": 150.0},
    }
    median = seeds.typical(rows)
    assert median["gain"] == 0.25 and median["rm_gold_accuracy"] == 0.86 and median["seconds"] == 150.0
    assert median["kl"] is None  # a column no row has
    met = seeds.rows_meeting(rows)
    assert met["gain"] == 1  # row 1's interval reaches below zero, row 2's gain is under +0.20
    assert met["rm_gold_accuracy"] == 2 and met["seconds"] == 2
    assert seeds.worst(rows)["gain"] == 0.10 and seeds.worst(rows)["seconds"] == 160.0
    two = {0: {"kinds_better": 2, "rf_not_worse": 0}, 1: {"kinds_better": 3, "rf_not_worse": 1}}
    assert seeds.typical(two)["kinds_better"] == 2 and seeds.typical(two)["rf_not_worse"] == 0  # a count, not 2.5
