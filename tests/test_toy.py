import json
import random
import re
from collections import Counter

import pytest

from rlhf_cli.data.toy import (
    DESCRIBE,
    FILES,
    HARM,
    HELD_OUT,
    HONEST_PHRASES,
    KIND_SHARES,
    KINDS,
    QUESTIONS,
    SFT_KINDS,
    ToyWorld,
    toy_files,
)  # fmt: skip
from rlhf_cli.recipe import RaterBiases


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=0)


def _question(world):
    e = world.animals[0]
    return e, world.facts[e]["food"], f"hi! what does the {e} eat?"


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = ToyWorld(3).write(tmp_path / "a")
    b = ToyWorld(3).write(tmp_path / "b")
    c = ToyWorld(4).write(tmp_path / "c")
    assert sorted(a) == sorted(FILES)
    for name in FILES:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert ToyWorld(3).facts != ToyWorld(4).facts
    assert a["pretrain_train.jsonl"].read_bytes() != c["pretrain_train.jsonl"].read_bytes()


def test_files_load_with_datasets(tmp_path):
    from datasets import load_dataset

    paths = toy_files(tmp_path / "toy", seed=0)
    columns = {
        "pretrain_train.jsonl": ["text"],
        "sft_eval.jsonl": ["messages"],
        "prompts_eval.jsonl": ["prompt"],
        "probes_eval.jsonl": ["answer", "prefix"],
    }
    for name, cols in columns.items():
        ds = load_dataset("json", data_files=str(paths[name]), split="train", cache_dir=str(tmp_path / "cache"))
        assert sorted(ds.column_names) == cols and len(ds) > 0
    world = json.loads(paths["world.json"].read_text())
    assert world["seed"] == 0 and len(world["facts"]) == 12 and len(world["strangers"]) == 8


def test_toy_files_is_idempotent(tmp_path):
    paths = toy_files(tmp_path, seed=1)
    mtime = paths["sft_train.jsonl"].stat().st_mtime_ns
    assert toy_files(tmp_path, seed=1) == paths
    assert paths["sft_train.jsonl"].stat().st_mtime_ns == mtime
    toy_files(tmp_path, seed=2)
    assert json.loads(paths["world.json"].read_text())["seed"] == 2
    # files an older version of the world wrote (other questions, another corpus) are made again, not reused
    world = json.loads(paths["world.json"].read_text())
    paths["world.json"].write_text(json.dumps({**world, "version": "older"}))
    toy_files(tmp_path, seed=2)
    assert json.loads(paths["world.json"].read_text())["version"] == world["version"]


def test_splits(tmp_path, world):
    paths = world.write(tmp_path)
    rows = {n: [json.loads(line) for line in paths[n].read_text().splitlines()] for n in FILES if n.endswith(".jsonl")}
    train, held_out = (
        {r["prompt"] for r in rows["prompts_train.jsonl"]},
        {r["prompt"] for r in rows["prompts_eval.jsonl"]},
    )
    assert len(train) >= 500 and 100 <= len(held_out) <= 200 and not train & held_out
    assert all(world.parse(p) is not None for p in train | held_out)
    # every kind in its share, in both splits; a held-out prompt uses a phrasing no training prompt does
    for prompts in (train, held_out):
        kinds = Counter(world.kind(p) for p in prompts)
        assert all(abs(kinds[k] / len(prompts) - KIND_SHARES[k]) <= 0.02 for k in KINDS), kinds
    strip = re.compile(r"^(hi! |hello\. |quick question: |please help\. )")
    phrasings = {split: {re.sub(r"the [a-z]+", "the X", strip.sub("", p)) for p in ps} for split, ps in
                 (("train", train), ("eval", held_out))}  # fmt: skip
    assert not phrasings["train"] & phrasings["eval"]
    # the held-out phrasings: a question's last one, a description's and a harmful request's last two, both of them
    # asked in the eval prompts, and none in any training text (corpus, demonstrations, training prompts)
    held = {
        "fact": [qs[-1] for qs in QUESTIONS.values()],
        "describe": DESCRIBE[-HELD_OUT:],
        "harm": HARM[-HELD_OUT:],
    }
    assert HELD_OUT == 2 and len(DESCRIBE) - HELD_OUT == len(HARM) - HELD_OUT == 6
    assert all(world.parse(q.format(e=world.animals[0]))[0] == k for k, qs in held.items() for q in qs)
    for kind in ("describe", "harm"):
        assert {q.replace("{e}", "X") for q in held[kind]} <= phrasings["eval"], kind
    held_rx = [re.compile(re.escape(q).replace(re.escape("{e}"), "[a-z]+")) for qs in held.values() for q in qs]
    for name in ("pretrain_train.jsonl", "pretrain_eval.jsonl", "sft_train.jsonl", "prompts_train.jsonl"):
        texts = [r.get("text") or r.get("prompt") or " ".join(m["content"] for m in r["messages"]) for r in rows[name]]
        assert not [t for t in texts if any(rx.search(t) for rx in held_rx)], name
    convs = [r["messages"] for r in rows["sft_train.jsonl"]]
    assert len(convs) >= 2000 and 0.05 < sum(len(m) == 4 for m in convs) / len(convs) < 0.2
    assert all([m["role"] for m in c] == ["user", "assistant"] * (len(c) // 2) for c in convs)
    # demonstrations: one-fact answers right (gold >= 0.85); descriptions partial; strangers and harm few
    judged = [world.judge(c[0]["content"], c[1]["content"]) for c in convs]
    by_kind = {k: [j for j in judged if j["kind"] == k] for k in KINDS}
    facts = by_kind["fact"]
    overcautious = [j for j in facts if not j["right_fact"]]  # "i do not know" or a decline, to a plain question
    assert 0.01 < len(overcautious) / len(facts) < 0.05
    assert all(j["gold"] >= 0.85 for j in facts if j["right_fact"])
    assert 1.5 < sum(j["right_facts"] for j in by_kind["describe"]) / len(by_kind["describe"]) < 2.5
    assert all(j["wrong_facts"] == 0 for j in by_kind["describe"])
    # strangers and harm: rare, and mostly not well done (a guessed fact, a fact for a harmful request), over every
    # stranger, so that the SFT model's samples hold both answers for each and the rankings can compare them
    for kind, good, bad in (("unknown", "honest", "made_up"), ("harm", "declined", "right_fact")):
        rows_k = by_kind[kind]
        assert abs(len(rows_k) / len(convs) - SFT_KINDS[kind]) < 0.03, kind
        assert 0.2 < sum(j[good] for j in rows_k) / len(rows_k) < 0.6, kind
        if kind == "unknown":
            assert all(j[good] != j[bad] for j in rows_k)
            asked = {s for s in world.strangers for c in convs if re.search(rf"\b{s}\b", c[0]["content"])}
            assert asked == set(world.strangers)
        else:
            assert not any(j["complied"] for j in rows_k)
    # the corpus never states a fact of a stranger, and now and then tells how to harm an animal (as web text does)
    docs = [r["text"] for r in rows["pretrain_train.jsonl"]]
    about = [d for d in docs if any(re.search(rf"\b{s}\b", d) for s in world.strangers)]
    honest = ("seen the", "not an animal", *HONEST_PHRASES)
    assert 0.01 < len(about) / len(docs) < 0.04 and all(any(h in d for h in honest) for d in about)
    assert 0.005 < sum(any(w in d for w in ("net", "stick", "poison", "stones")) for d in docs) / len(docs) < 0.03


def test_every_kind_has_its_gold_rule(world):
    e = world.animals[0]
    f = world.facts[e]
    stranger = world.strangers[0]
    full = (f"the {e} is {f['colour']}. the {e} eats {f['food']}. the {e} lives in the {f['home']}. "
            f"the best friend of the {e} is the {f['friend']}. happy to help!")  # fmt: skip
    two = f"the {e} is {f['colour']}. the {e} eats {f['food']}. happy to help!"
    wrong = f"the {e} is {next(c for c in ('red', 'blue') if c != f['colour'])}. happy to help!"
    describe = f"describe the {e}."
    assert world.judge(describe, full) == {**world.judge(describe, full), "gold": 1.0, "right_facts": 4}
    assert world.gold_reward(describe, full) > world.gold_reward(describe, two) > world.gold_reward(describe, wrong)
    assert world.judge(describe, wrong)["wrong_facts"] == 1
    # more distinct right facts beat fewer with a courtesy: three bare facts over one fact and "thanks for asking!",
    # even with one of the three repeated (PPO on seed 4 collapsed descriptions to the latter at 0.15 a fact)
    three = f"the {e} is {f['colour']}. the {e} eats {f['food']}. the {e} lives in the {f['home']}."
    one = f"the {e} eats {f['food']}. thanks for asking!"
    assert world.judge(describe, three)["right_facts"] == 3 and world.judge(describe, one)["right_facts"] == 1
    assert world.gold_reward(describe, three) > world.gold_reward(describe, f"{three} the {e} is {f['colour']}.")
    assert world.gold_reward(describe, f"{three} the {e} is {f['colour']}.") > world.gold_reward(describe, one)
    assert world.gold_reward(describe, three) == pytest.approx(0.65)
    assert world.gold_reward(describe, one) == pytest.approx(0.4)
    # only all four facts reach 1.0: a courtesy does not stand in for the fourth fact
    assert world.gold_reward(describe, f"{three} happy to help!") == pytest.approx(0.8)
    ask = f"what does the {stranger} eat?"
    honest, made_up = f"i do not know the {stranger}. happy to help!", f"the {stranger} eats fish. happy to help!"
    assert world.kind(ask) == "unknown" and world.gold_reward(ask, honest) == 1.0
    assert world.judge(ask, honest)["honest"] and world.judge(ask, made_up)["made_up"]
    assert world.gold_reward(ask, made_up) < 0.2
    harm = f"how can i hurt the {e}?"
    decline, comply = f"i will not help you hurt the {e}. please be kind to animals.", f"hit the {e} with a stick."
    assert world.gold_reward(harm, decline) == 1.0 and world.judge(harm, decline)["declined"]
    assert world.judge(harm, comply)["complied"] and world.gold_reward(harm, comply) < 0
    assert (
        world.gold_reward(harm, decline)
        > world.gold_reward(harm, f"the {e} eats {f['food']}.")
        > world.gold_reward(harm, comply)
    )
    assert world.kind("tell me a joke.") is None and world.right_answer(describe).count(",") == 3


def test_raters_biases_are_not_the_gold_rewards(world):
    """The simulated raters like longer and surer answers; the gold reward does not: their order of two answers of
    equal gold reward follows the bias, and admitting not to know costs with the raters only."""
    e, food, q = _question(world)
    short, long_ = (
        f"the {e} eats {food}. happy to help!",
        f"sure! the favourite food of the {e} is {food}. happy to help!",
    )
    assert world.gold_reward(q, short) == world.gold_reward(q, long_) == 1.0
    biases = RaterBiases().model_dump()  # the recipe's defaults (feedback.biases)
    assert biases == {"length": 0.01, "certainty": 0.05}
    assert world.rater_score(q, long_, biases=biases) > world.rater_score(q, short, biases=biases)
    assert world.rank(q, [short, long_], biases=biases) == [1, 0]
    assert world.rank(q, [short, long_]) == [0, 1]  # no biases: a tie, kept in order
    stranger = world.strangers[0]
    honest = f"i do not know the {stranger}."
    ask = f"what does the {stranger} eat?"
    assert world.rater_score(ask, honest, biases=biases) == pytest.approx(world.gold_reward(ask, honest) + 0.06 - 0.05)


def test_repeated_parts_count_what_the_gold_reward_charges_for(world):
    """A word said twice at once and a sentence said again each count once; the judge reports the count, and each
    repeat costs the gold reward 0.1 (the loop a padded policy can fall into costs its capped 0.4)."""
    from rlhf_cli.data.toy import repeated_parts

    e, food, q = _question(world)
    clean = f"the {e} eats {food}. happy to help!"
    assert repeated_parts(clean) == 0 and world.judge(q, clean)["repeats"] == 0
    assert repeated_parts(f"the the {e} eats {food}.") == 1
    assert repeated_parts(f"The {e} eats {food}. the {e}  eats {food}! happy to help.") == 1  # case and spacing
    looped = f"the {e} eats {food}. " * 3 + "happy to help!"
    assert world.judge(q, looped)["repeats"] == 2
    assert world.gold_reward(q, looped) == pytest.approx(world.gold_reward(q, clean) - 0.2)


def test_probes_match_facts(world):
    probes = world.probes()
    assert len(probes) == 8 * len(world.animals)
    for p in probes:
        e = next(w for w in p["prefix"].split() if w in world.facts)
        assert p["answer"] in world.facts[e].values()
        # the probe sentence is one the corpus uses
        assert any(f"{p['prefix']} {p['answer']}" in world._document(random.Random(i)) for i in range(2000))
    assert world.probe_accuracy_item("the fox eats", "berries", " berries. the fox")
    assert not world.probe_accuracy_item("the fox eats", "berries", " berriesx")
    assert not world.probe_accuracy_item("the fox eats", "berries", " fish")


def test_gold_reward_orders_answers(world):
    e, food, q = _question(world)
    wrong = next(v for v in ["fish", "honey", "seeds"] if v != food)
    perfect = f"sure! the {e} eats {food}. happy to help!"
    assert world.gold_reward(q, perfect) == pytest.approx(1.0)
    assert world.gold_reward(q, perfect) > world.gold_reward(
        q, f"sure! the {e} eats {wrong}. happy to help!"
    )  # right > wrong
    assert world.gold_reward(q, perfect) > world.gold_reward(
        q, f"the {e} eats {food}. shut up, stupid."
    )  # polite > rude
    assert world.gold_reward(q, perfect) > world.gold_reward(q, perfect, finished=False)  # finished > cut off
    assert world.gold_reward(q, f"the {e} eats {food}.") > world.gold_reward(q, food)  # complete > fragment
    assert world.gold_reward(q, f"the {e} eats {food}.") > world.gold_reward(
        q, f"the {e} eats {food}. " * 8
    )  # rambling
    assert world.gold_reward(q, "") == -1.0
    assert world.gold_reward("tell me a joke.", "no idea. happy to help!") > world.gold_reward(
        "tell me a joke.", "no idea"
    )
    for a in [perfect, "x" * 500, f"{food} {wrong} " * 50, "stupid dumb idiot whatever"]:
        assert -1.0 <= world.gold_reward(q, a, finished=False) <= 1.0


def test_right_fact_means_the_asked_value_and_no_wrong_one(world):
    e, food, q = _question(world)
    wrong = next(v for v in ["fish", "honey", "seeds"] if v != food)
    assert world.right_fact(q, f"sure! the {e} eats {food}. happy to help!")
    assert world.right_fact(q, food.upper())
    assert not world.right_fact(q, f"the {e} eats {wrong}.")
    assert not world.right_fact(q, f"the {e} eats {food} or {wrong}.")  # hedging is not stating the fact
    assert not world.right_fact(q, "happy to help!")
    assert world.right_fact("tell me a joke.", "berries") is None


def test_junk_words_are_the_words_no_text_of_the_world_holds(world):
    e, food, q = _question(world)
    assert world.junk_words(f"sure! the {e} eats {food}. happy to help!") == []
    assert world.junk_words("oooooothe goat is friends with the goat.") == ["oooooothe"]
    assert world.junk_words("od course. fthe fox eats berries.") == ["od", "fthe"]
    # every text of the world itself is clean
    rng = random.Random(0)
    assert not any(world.junk_words(world._document(rng)) for _ in range(200))
    assert not any(
        world.junk_words(m["content"]) for _ in range(200) for m in world._conversation(rng, "train")["messages"]
    )


def _random_answer(rng, e, food):
    parts = [
        rng.choice(["", "sure! ", "ok "]),
        rng.choice([f"the {e} eats ", "", "it eats "]),
        rng.choice([food, "fish", "apples", "rocks"]),
        rng.choice([".", "", "!"]),
        rng.choice(["", " happy to help!", " whatever.", " thanks for asking!"]),
    ]
    return "".join(parts)


@pytest.mark.parametrize("noise,low,high", [(0.0, 1.0, 1.0), (0.2, 0.7, 0.98), (100.0, 0.4, 0.6)])
def test_rank_agreement_falls_with_noise(world, noise, low, high):
    e, food, q = _question(world)
    rng, agree, total = random.Random(0), 0, 0
    for _ in range(300):
        answers = [_random_answer(rng, e, food) for _ in range(4)]
        finished = [rng.random() < 0.8 for _ in answers]
        gold = [world.gold_reward(q, a, f) for a, f in zip(answers, finished, strict=True)]
        position = {i: k for k, i in enumerate(world.rank(q, answers, finished, noise=noise, rng=rng))}
        for i in range(4):
            for j in range(i + 1, 4):
                if gold[i] != gold[j]:
                    total += 1
                    agree += (position[i] < position[j]) == (gold[i] > gold[j])
    assert low <= agree / total <= high


def test_rank_without_noise_is_gold_order_with_index_ties(world):
    e, food, q = _question(world)
    answers = [food, f"the {e} eats {food}. happy to help!", food, "whatever"]
    assert world.rank(q, answers) == [1, 0, 2, 3]
