"""The reward stage: the K-wise batch and loss, grouped splits, a tiny reward model learning an easy preference (and HH
transcripts through the pairwise path), the saved model scoring a conversation, and `inspect`'s length alarm."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

from rlhf_cli.data import expand_rankings
from rlhf_cli.evaluation import reward_inspect, stats
from rlhf_cli.models import kwise, scoring
from rlhf_cli.recipe import ModelSpec, load_recipe
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.stages import reward

TOPICS = ["cats", "dogs", "rain", "tea", "maps", "boats", "snow", "bread", "music", "trees", "stars", "shoes"]


def _user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rlhf_cli.models.modeling import build_model, train_tokenizer

    words = TOPICS + ["good", "bad", "this", "is", "about", "tell", "me", "it", "very", "quite", "really", "ok"]
    rng = random.Random(0)
    tok = train_tokenizer([" ".join(rng.choices(words, k=12)) for _ in range(400)], vocab_size=320, min_frequency=1)
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _recipe(data, init, *extra):
    return load_recipe(
        "tiny",
        [
            f"reward.data={{path: {data}, eval_fraction: 0.25}}",
            f"reward.init_from={init}",
            "reward.max_length=64",
            "reward.training.num_train_epochs=6",
            "reward.training.learning_rate=3.0e-3",
            "reward.training.per_device_train_batch_size=8",
            "reward.training.warmup_steps=0",
            "reward.training.logging_steps=5",
            *extra,
        ],
    )


def test_kwise_batch_holds_a_prompts_comparisons_in_order(tiny_model):
    from rlhf_cli.models.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rankings = [
        {"prompt": _user("tell me about cats"), "responses": ["a", "b", "c", "d"]},
        {"prompt": _user("tell me about dogs"), "responses": ["x", "y"]},
    ]
    grouped = kwise.group_pairs(expand_rankings(rankings), tok, max_length=64)
    assert len(grouped) == 2  # one batch element per prompt
    first = grouped[0]
    assert len(first["response_ids"]) == 4  # each answer tokenized once
    assert list(zip(first["pair_chosen"], first["pair_rejected"], strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    assert first["response_ids"][2] == scoring.encode(tok, _user("tell me about cats"), "c")
    assert first["response_ids"][2][-1] == tok.eos_token_id  # the whole answer, end-of-text included


def test_kwise_loss_is_mean_pairwise_loss(tiny_model):
    from rlhf_cli.models.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rankings = [
        {"prompt": _user("tell me about cats"), "responses": ["a", "b", "c"]},
        {"prompt": _user("tell me about dogs"), "responses": ["x", "y"]},
    ]
    grouped = kwise.group_pairs(expand_rankings(rankings), tok, max_length=64)
    # The collator flattens both prompts' answers: [a, b, c, x, y]; comparisons index into that.
    batch = kwise.KWiseCollator(tok.pad_token_id)([grouped[0], grouped[1]])
    assert batch["input_ids"].shape[0] == 5
    assert batch["chosen_index"].tolist() == [0, 0, 1, 3] and batch["rejected_index"].tolist() == [1, 2, 2, 4]
    rewards = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.9])
    loss, _ = kwise.kwise_loss(rewards, batch["chosen_index"], batch["rejected_index"], batch["pair_weight"])
    nll = lambda a, b: -F.logsigmoid(torch.tensor(a - b))  # noqa: E731
    by_hand = ((nll(2.0, 0.5) + nll(2.0, -1.0) + nll(0.5, -1.0)) / 3 + nll(0.3, 0.9)) / 2
    assert torch.allclose(loss, by_hand)
    margin = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with_margin, _ = kwise.kwise_loss(
        rewards, batch["chosen_index"], batch["rejected_index"], batch["pair_weight"], margin
    )
    assert torch.allclose(with_margin, ((nll(1.0, 0.5) + nll(2.0, -1.0) + nll(0.5, -1.0)) / 3 + nll(0.3, 0.9)) / 2)


def test_length_chunks_cut_where_padding_costs_more_than_a_forward():
    # four long answers and forty short ones: padding the short ones to 60 costs far more than a second forward
    assert kwise.length_chunks([60] * 4 + [12] * 40, overhead=256) == [(0, 4), (4, 44)]
    assert kwise.length_chunks([30] * 20, overhead=256) == [(0, 20)]  # equal lengths: nothing to save
    assert kwise.length_chunks([60, 12], overhead=256) == [(0, 2)]  # 48 padded tokens are cheaper than a forward
    assert kwise.length_chunks([], overhead=256) == []


def test_chunked_rewards_equal_one_forward(tiny_model):
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.utils import pad

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = 0
    gen = torch.Generator().manual_seed(0)
    lengths = [40, 7, 33, 5, 6, 40, 8, 5, 39, 6] * 4  # two clusters, shuffled: the chunks must be put back in order
    seqs = [torch.randint(3, 300, (n,), generator=gen) for n in lengths]
    ids = pad(seqs, padding_value=0, padding_side="right")
    mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right")
    assert len(kwise.length_chunks(sorted(lengths, reverse=True))) > 1
    weights = torch.randn(len(seqs), generator=gen)
    whole = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    (whole * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = kwise.chunked_rewards(model, ids, mask)
    (chunked * weights).sum().backward()
    assert torch.allclose(chunked, whole, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4)


def _synthetic_rankings(path, n=48):
    """An easy preference: 'good' answers beat neutral ones, which beat 'bad' ones."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        fill = " ".join(rng.choices(["very", "quite", "really", "ok"], k=2))
        rows.append(
            {
                "prompt": f"tell me about {topic} {i}",
                "responses": [f"{topic} is {fill} good", f"{topic} is {fill} it", f"{topic} is {fill} bad"],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reward_model_learns_easy_preference(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification

    from rlhf_cli.data import load_stage_data, train_eval_split
    from rlhf_cli.models.modeling import load_tokenizer

    data = _synthetic_rankings(tmp_path / "rankings.jsonl")
    rec = _recipe(data, tiny_model, "reward.training.center_rewards_coefficient=0.01")

    # One prompt's comparisons never straddle train and eval.
    spec = reward.data_spec(rec, tmp_path / "run")
    train, held = train_eval_split(load_stage_data("reward", spec), spec, "reward", seed=rec.seed)
    assert len(held) and not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held}

    metrics = reward.run(rec, tmp_path / "run")
    assert metrics["objective"] == "kwise" and metrics["eval_pairs"] == len(held)
    assert metrics["accuracy"]["mean"] >= 0.8 and metrics["mean_margin"] > 0
    # The fit on training pairs is measured too (easy data: learnt there as well), on every pair of this small set.
    assert metrics["train_accuracy"]["mean"] >= 0.8 and metrics["train_accuracy"]["n"] == len(train)
    saved = json.loads((tmp_path / "run" / "reward" / "eval.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "reward" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert losses[-1] < losses[0]

    final = tmp_path / "run" / "reward" / "final"
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["std"] > 0 and stats["n"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(final)
    tok = load_tokenizer(str(final))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    good, bad = scoring.score(
        model, tok, [_user("tell me about rain 99")] * 2, ["rain is quite good", "rain is quite bad"]
    )
    assert good > bad

    with pytest.raises(Exception, match="already exists"):
        reward.run(rec, tmp_path / "run")


def test_hh_transcripts_pairwise_and_inspect_flags_length(tmp_path, tiny_model):
    """HH transcripts as they come take the pairwise path; chosen is always the longer answer here, so the model learns
    to prefer length and `inspect` raises the alarm."""
    rng = random.Random(2)
    rows = []
    for i in range(40):
        topic = TOPICS[i % len(TOPICS)]
        short = f"{topic} ok"
        long = f"{topic} " + " ".join(rng.choices(["very", "quite", "really", "it", "is"], k=rng.randint(6, 10)))
        human = f"\n\nHuman: tell me about {topic} {i}\n\nAssistant:"
        rows.append({"chosen": f"{human} {long}", "rejected": f"{human} {short}"})
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = reward.run(_recipe(data, tiny_model), tmp_path / "run")
    assert metrics["objective"] == "pairwise" and metrics["accuracy"]["mean"] >= 0.8
    assert "gold_accuracy" not in metrics  # not the toy world's own feedback

    final = tmp_path / "run" / "reward" / "final"
    train_stats = json.loads((final / "reward_stats.json").read_text())
    report = reward_inspect.inspect_reward_model(
        final, out_dir=tmp_path / "inspect"
    )  # default data: its held-out prompts
    assert report["length_alarm"] and report["length_correlation"] > 0.5 and report["prefers_longer"] > 0.8
    # the stage measured the same on the same held-out pairs: its summary, the report and inspect give one verdict
    assert metrics["length"]["length_alarm"]
    assert abs(metrics["length"]["length_correlation"] - report["length_correlation"]) < 0.01
    assert report["pairs"] == metrics["eval_pairs"] and abs(report["accuracy"] - metrics["accuracy"]["mean"]) < 1e-9
    assert report["accuracy_low"] <= report["accuracy"] <= report["accuracy_high"]
    assert (tmp_path / "inspect" / "scores.png").stat().st_size > 1000
    assert json.loads((tmp_path / "inspect" / "inspect.json").read_text())["length_alarm"] is True
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["mean"] == train_stats["mean"] and "inspect" in stats  # PPO keeps normalising with the training stats


def test_inspect_scores_length_alarm_with_stub_scores():
    pairs = [
        {"prompt": _user(f"q{i}"), "chosen": "a " * (i % 5 + 1), "rejected": "b " * (5 - i % 5), "margin": 0.0}
        for i in range(40)
    ]
    n_tokens = {t: len(t.split()) for r in pairs for t in (r["chosen"], r["rejected"])}
    by_length = [float(n_tokens[r["chosen"]]) for r in pairs], [float(n_tokens[r["rejected"]]) for r in pairs]
    report = reward_inspect.inspect_scores(pairs, *by_length, n_tokens)
    assert report["length_alarm"] and report["length_correlation"] > 0.99 and report["prefers_longer"] == 1.0
    assert (
        report["by_length"]["chosen longer"]["accuracy"] == 1.0
        and report["by_length"]["chosen shorter"]["accuracy"] == 0.0
    )
    fair = reward_inspect.inspect_scores(pairs, [1.0 + 0.01 * i for i in range(40)], [0.0] * 40, n_tokens)
    assert not fair["length_alarm"] and fair["accuracy"] == 1.0


def test_wilson_interval():
    low, high = stats.wilson(80, 100)
    assert 0.70 < low < 0.72 and 0.86 < high < 0.88
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_inspect_without_data_on_a_policy_model_names_the_problem(tmp_path):
    policy = tmp_path / "sft" / "final"
    policy.mkdir(parents=True)
    (policy / "config.json").write_text("{}")
    (policy / "lineage.json").write_text(json.dumps({"stage": "sft", "data": {"seed": 0}}))
    with pytest.raises(UserError, match="not a reward model"):
        reward_inspect.inspect_reward_model(policy)


def test_no_held_out_pairs_is_said_not_scored_as_zero(tmp_path, tiny_model, capsys):
    data = _synthetic_rankings(tmp_path / "rankings.jsonl", n=12)
    rec = _recipe(data, tiny_model, "reward.data.eval_fraction=0", "reward.training.num_train_epochs=1")
    metrics = reward.run(rec, tmp_path / "run")
    assert metrics["eval_pairs"] == 0 and metrics["accuracy"] is None
    assert "no held-out pairs" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "reward" / "eval.json").read_text())["accuracy"] is None


def test_few_ranked_prompts_are_warned_about(tmp_path, tiny_model, capsys):
    # A person who stopped labelling after a few prompts: the stage trains, but says how little it has to learn from.
    run = tmp_path / "run"
    (run / "feedback").mkdir(parents=True)
    (run / "feedback" / "samples.jsonl").write_text(
        "".join(json.dumps({"prompt": _user(t)}) + "\n" for t in TOPICS * 60)
    )
    rankings = _synthetic_rankings(run / "feedback" / "rankings.jsonl", n=12)
    rec = _recipe(rankings, tiny_model, "reward.training.num_train_epochs=1")
    reward.run(rec, run)
    out = capsys.readouterr().out
    assert "rank only 12 prompts of the 720 sampled" in out and "rlhf label" in out

    many = _synthetic_rankings(tmp_path / "many.jsonl", n=reward.FEW_PROMPTS)
    reward.run(_recipe(many, tiny_model, "reward.training.max_steps=1"), tmp_path / "run2")
    assert "Warning" not in capsys.readouterr().out


def test_inspect_rebuilds_the_held_out_prompts_of_a_run_with_a_peoples_round(small_run):
    """The stage draws its held-out prompts from the run's rankings and a people's round's together; `rlhf reward
    inspect` must score exactly those, not the held-out part of the annotator's file alone."""
    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    people = small_run / "feedback" / "people" / "rankings.jsonl"
    people.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"what is the colour of the fox number {i}?"}],
            "responses": [f"the fox is red {i}.", f"fox {i}", f"no {i}"],
            "rater": "ana",
        }  # fmt: skip
        for i in range(60)
    ]
    people.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = CliRunner().invoke(
        app, ["reward", "--recipe", str(small_run / "recipe.yaml"), "-o", str(small_run), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((small_run / "reward" / "eval.json").read_text())
    assert metrics["comparisons"]["feedback/people/rankings.jsonl"] == 60 * 3
    report = reward_inspect.inspect_reward_model(small_run / "reward" / "final")
    assert report["pairs"] == metrics["eval_pairs"] and report["accuracy"] == pytest.approx(metrics["accuracy"]["mean"])
