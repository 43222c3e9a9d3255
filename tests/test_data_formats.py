"""The data layer: every table type and format of the table in rlhf_cli/data/formats.py, read, normalised, split."""

import csv
import json
from types import SimpleNamespace

import datasets
import pytest

from rlhf_cli.data import expand_rankings, group_id, load_stage_data, read_table, train_eval_split
from rlhf_cli.runtime.errors import UserError

datasets.disable_progress_bars()


def spec(**kw):
    base = dict(toy=False, path=None, hub=None, config=None, split="train", streaming=False, format=None,
                text_column=None, eval_path=None, eval_split=None, eval_fraction=0.05, max_examples=None)  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(stage, path, **kw):
    return load_stage_data(stage, spec(path=str(path), **kw)).to_list()


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# ------------------------------------------------------------------------------------------------ tables (pretrain)

TEXTS = [{"text": "the fox is red."}, {"text": "the owl eats seeds."}]


def test_txt_file_is_the_text_as_written_or_split_on_blank_lines(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("\ufefffirst block\nstill first\n\n\nsecond block\n  \nthird\n", encoding="utf-8")
    assert load("pretrain", f) == [{"text": "first block\nstill first\n\n\nsecond block\n  \nthird"}]
    blocks = [{"text": "first block\nstill first"}, {"text": "second block"}, {"text": "third"}]
    assert load("pretrain", f, paragraphs=True) == blocks


def test_txt_folder_one_row_per_file(tmp_path):
    (tmp_path / "b.txt").write_text("doc b\n\npara 2\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("doc a", encoding="utf-8")
    (tmp_path / "a.txt").write_text("doc top", encoding="utf-8")
    assert load("pretrain", tmp_path) == [{"text": "doc top"}, {"text": "doc b\n\npara 2"}, {"text": "doc a"}]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "save_to_disk", "folder"])
def test_table_types(tmp_path, kind):
    rows = [{"content": r["text"], "id": i} for i, r in enumerate(TEXTS)]
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        path = tmp_path / "d.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["content", "id"])
            w.writeheader()
            w.writerows(rows)
    elif kind == "save_to_disk":
        path = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        path = tmp_path / "folder"
        path.mkdir()
        write_jsonl(path / "part-0.jsonl", rows)
    assert load("pretrain", path) == TEXTS


def test_text_column_and_blank_documents(tmp_path):
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [{"passage": "a", "note": "x"}, {"passage": "  ", "note": "y"}, {"passage": "b", "note": "z"}],
    )
    assert load("pretrain", f, text_column="passage") == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(UserError, match="passage, note"):
        load("pretrain", f)  # two string columns and no known name: which one is ambiguous


def test_save_to_disk_dataset_dict_takes_split(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(TEXTS), "test": datasets.Dataset.from_list(TEXTS[:1])}
    ).save_to_disk(str(path))
    assert len(read_table(path=str(path))) == 2
    assert read_table(path=str(path), split="test").to_list() == TEXTS[:1]
    with pytest.raises(UserError, match="no split 'validation'"):
        read_table(path=str(path), split="validation")


def test_hub_code_path_on_local_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", TEXTS)
    write_jsonl(tmp_path / "test.jsonl", TEXTS[:1])
    ds = load_stage_data("pretrain", spec(hub=str(tmp_path)))
    assert ds.to_list() == TEXTS
    train, eval_ = train_eval_split(ds, spec(hub=str(tmp_path), eval_split="test"), "pretrain")
    assert train.to_list() == TEXTS and eval_.to_list() == TEXTS[:1]
    streamed = load_stage_data("pretrain", spec(hub=str(tmp_path), streaming=True))
    assert isinstance(streamed, datasets.IterableDataset) and list(streamed) == TEXTS


def test_max_examples(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(10)])
    assert load("pretrain", f, max_examples=3) == [{"text": "0"}, {"text": "1"}, {"text": "2"}]


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl"):
        load("sft", tmp_path / "nope.jsonl")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_non_utf8_file(tmp_path, suffix):
    f = tmp_path / f"latin{suffix}"
    f.write_bytes({".txt": b"caf\xe9\n", ".jsonl": b'{"text": "caf\xe9"}\n', ".csv": b"text\ncaf\xe9\n"}[suffix])
    with pytest.raises(UserError, match=r"latin.*not UTF-8.*iconv -f latin1 -t utf-8"):
        load("pretrain", f)


@pytest.mark.parametrize("content", ["", "\n  \n"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_empty_file(tmp_path, suffix, content):
    f = tmp_path / f"empty{suffix}"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load("pretrain", f)


def test_empty_after_normalisation(tmp_path):
    f = write_jsonl(tmp_path / "blank.jsonl", [{"text": " "}, {"text": ""}])
    with pytest.raises(UserError, match="no rows"):
        load("pretrain", f)


def test_unknown_format_one_message(tmp_path):
    f = write_jsonl(tmp_path / "weird.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError) as e:
        load("sft", f)
    msg = str(e.value)
    assert "weird.jsonl" in msg and "row 0" in msg and "question, answer" in msg
    for name in ("messages", "prompt_completion", "alpaca", "sharegpt"):
        assert name in msg
    with pytest.raises(UserError) as e:
        load("reward", f)
    assert all(name in str(e.value) for name in ("pairs", "hh", "rankings"))


def test_bad_row_names_first_offending_row(tmp_path):
    rows = [{"messages": [user("hi"), bot("hello")]}] * 2 + [{"messages": [{"role": "bot", "content": "x"}]}] * 2
    f = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(UserError, match=r"chat.jsonl: row 2 .*role system/user/assistant.*Columns found: messages"):
        load("sft", f)


def test_forced_format(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(UserError, match="forced format 'alpaca'"):
        load("sft", f, format="alpaca")
    with pytest.raises(UserError, match="not a sft format"):
        load("sft", f, format="nonsense")
    assert load("sft", f, format="prompt_completion") == [{"messages": [user("p"), bot("c")]}]


# ------------------------------------------------------------------------------------------------------- sft

SFT_CASES = {
    "messages": (
        [{"messages": [system("be kind"), user("hi"), bot("hello"), user("bye")]}],
        [system("be kind"), user("hi"), bot("hello")],  # a trailing user turn has nothing to learn from
    ),
    "messages_system_column": ([{"messages": [user("hi"), bot("hello")], "system": "be kind"}], [system("be kind"), user("hi"), bot("hello")]),
    "prompt_completion_strings": ([{"prompt": "2+2?", "completion": "4"}], [user("2+2?"), bot("4")]),
    "prompt_completion_messages": ([{"prompt": [system("s"), user("2+2?")], "completion": [bot("4")]}], [system("s"), user("2+2?"), bot("4")]),
    "alpaca_with_input": ([{"instruction": "Sum", "input": "2, 2", "output": "4"}], [user("Sum\n\n2, 2"), bot("4")]),
    "alpaca_without_input": ([{"instruction": "Say hi", "output": "hi"}], [user("Say hi"), bot("hi")]),
    "alpaca_empty_input": ([{"instruction": "Say hi", "input": "", "output": "hi"}], [user("Say hi"), bot("hi")]),
    "sharegpt": (
        [{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
        [system("s"), user("hi"), bot("yo")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", SFT_CASES)
def test_sft_formats(tmp_path, case):
    rows, messages = SFT_CASES[case]
    assert load("sft", write_jsonl(tmp_path / "d.jsonl", rows)) == [{"messages": messages}]


# ----------------------------------------------------------------------------------------------------- reward


def pair(prompt, chosen, rejected, margin=0.0):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin, "group": group_id(prompt)}


HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: what is 2+2?\n\nAssistant: It is 4."
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: what is 2+2?\n\nAssistant: go away"
HISTORY = [user("hi"), bot("hello!"), user("what is 2+2?")]

REWARD_CASES = {
    "pairs_with_prompt": ([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], [pair([user("2+2?")], "4", "5")]),
    "pairs_with_scores": (
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9.0, "score_rejected": 2.5}],
        [pair([user("2+2?")], "4", "5", 6.5)],
    ),
    "pairs_prompt_messages": (
        [{"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]}],
        [pair([user("2+2?")], "4", "5")],
    ),
    "pairs_without_prompt_messages": (
        [{"chosen": [user("2+2?"), bot("4")], "rejected": [user("2+2?"), bot("5")]}],
        [pair([user("2+2?")], "4", "5")],
    ),
    "hh": ([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], [pair(HISTORY, "It is 4.", "go away")]),
    "rankings_best_first": (
        [{"prompt": "q", "responses": ["a", "b", "c"]}],
        [pair([user("q")], "a", "b"), pair([user("q")], "a", "c"), pair([user("q")], "b", "c")],
    ),
    "rankings_scores": (
        [{"prompt": "q", "responses": ["b", "a", "c"], "scores": [2.0, 3.0, 1.0]}],
        [pair([user("q")], "a", "b", 1.0), pair([user("q")], "a", "c", 2.0), pair([user("q")], "b", "c", 1.0)],
    ),
    "rankings_ranks": (
        [{"prompt": [user("q")], "responses": ["c", "a", "b"], "ranks": [3, 1, 2]}],
        [pair([user("q")], "a", "b"), pair([user("q")], "a", "c"), pair([user("q")], "b", "c")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REWARD_CASES)
def test_reward_formats(tmp_path, case):
    rows, expected = REWARD_CASES[case]
    assert load("reward", write_jsonl(tmp_path / "d.jsonl", rows)) == expected


def test_reward_forced_pairs_keeps_hh_text(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    assert load("reward", f, format="pairs") == [pair([], HH_CHOSEN, HH_REJECTED)]


@pytest.mark.parametrize("ranks", [[1, 1, 3], [1, 2, 4], [1, 2]])
def test_bad_ranks(tmp_path, ranks):
    rows = [
        {"prompt": "ok", "responses": ["a", "b", "c"], "ranks": [1, 2, 3]},
        {"prompt": "q", "responses": ["a", "b", "c"], "ranks": ranks},
    ]
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*ranks"):
        load("reward", write_jsonl(tmp_path / "d.jsonl", rows))


def test_pairs_with_different_histories_rejected(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"chosen": [user("a"), bot("x")], "rejected": [user("b"), bot("y")]}])
    with pytest.raises(UserError, match="share the history"):
        load("reward", f)


def test_expand_rankings_order_and_groups():
    rankings = [
        {"prompt": [user("p")], "responses": list("abcd")},
        {"prompt": [user("q")], "responses": list("xy"), "group": 7},
    ]
    pairs = expand_rankings(rankings)
    assert len(pairs) == 4 * 3 // 2 + 1
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"), ("x", "y"),
    ]  # fmt: skip
    assert {p["group"] for p in pairs[:6]} == {group_id([user("p")])} and pairs[6]["group"] == 7
    as_dataset = expand_rankings(datasets.Dataset.from_list(rankings[:1]))
    assert isinstance(as_dataset, datasets.Dataset) and as_dataset.to_list() == pairs[:6]


def test_reward_split_keeps_groups_whole(tmp_path):
    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c"]} for i in range(40)]
    ds = load_stage_data("reward", spec(path=str(write_jsonl(tmp_path / "r.jsonl", rows))))
    assert len(ds) == 120 and len(set(ds["group"])) == 40
    train, eval_ = train_eval_split(ds, spec(eval_fraction=0.2), "reward", seed=3)
    assert len(train) + len(eval_) == 120 and len(eval_) == 8 * 3
    assert not set(train["group"]) & set(eval_["group"])
    again = train_eval_split(ds, spec(eval_fraction=0.2), "reward", seed=3)[1]
    assert list(again["group"]) == list(eval_["group"])


def test_pairs_rows_share_group_by_prompt(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "c"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    groups = load_stage_data("reward", spec(path=str(write_jsonl(tmp_path / "r.jsonl", rows))))["group"]
    assert groups[0] == groups[1] != groups[2]


# -------------------------------------------------------------------------------------------------------- ppo

PPO_CASES = {
    "prompt_string": ([{"prompt": "hi?"}], [user("hi?")]),
    "prompt_messages": ([{"prompt": [system("s"), user("hi?")]}], [system("s"), user("hi?")]),
    "sft_messages": ([{"messages": [user("a"), bot("b"), user("c"), bot("d")]}], [user("a"), bot("b"), user("c")]),
    "alpaca": ([{"instruction": "do", "output": "done"}], [user("do")]),
}  # fmt: skip


@pytest.mark.parametrize("case", PPO_CASES)
def test_ppo_formats(tmp_path, case):
    rows, prompt = PPO_CASES[case]
    assert load("ppo", write_jsonl(tmp_path / "d.jsonl", rows)) == [{"prompt": prompt}]


def test_ppo_prompt_must_end_with_user(tmp_path):
    with pytest.raises(UserError, match="end with a user turn"):
        load("ppo", write_jsonl(tmp_path / "d.jsonl", [{"prompt": [user("a"), bot("b")]}]))


# ------------------------------------------------------------------------------------------------------ splits


def test_pretrain_split_is_the_tail(tmp_path):
    ds = datasets.Dataset.from_list([{"text": str(i)} for i in range(20)])
    train, eval_ = train_eval_split(ds, spec(eval_fraction=0.1), "pretrain")
    assert train["text"] == [str(i) for i in range(18)] and eval_["text"] == ["18", "19"]


def test_pretrain_split_of_one_document_is_its_tail_cut_at_a_word():
    text = " ".join(f"w{i}" for i in range(1000))
    train, eval_ = train_eval_split(datasets.Dataset.from_list([{"text": text}]), spec(eval_fraction=0.05), "pretrain")
    (head,), (tail,) = train["text"], eval_["text"]
    assert head + " " + tail == text and tail.startswith("w") and text.endswith(tail)
    assert 0.045 * len(text) <= len(tail) <= 0.055 * len(text)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "ppo", "reward"])
def test_at_least_one_eval_row(stage):
    rows = {
        "pretrain": [{"text": "a"}, {"text": "b"}],
        "sft": [{"messages": [user("a"), bot("b")]}] * 2,
        "ppo": [{"prompt": [user("a")]}, {"prompt": [user("b")]}],
        "reward": [pair([user("a")], "x", "y"), pair([user("b")], "x", "y")],
    }[stage]
    train, eval_ = train_eval_split(datasets.Dataset.from_list(rows), spec(eval_fraction=0.01), stage, seed=0)
    assert len(train) == 1 and len(eval_) == 1


def test_sft_split_is_seeded_random(tmp_path):
    ds = datasets.Dataset.from_list([{"messages": [user(str(i)), bot("x")]} for i in range(50)])
    a = train_eval_split(ds, spec(eval_fraction=0.2), "sft", seed=1)
    b = train_eval_split(ds, spec(eval_fraction=0.2), "sft", seed=1)
    assert len(a[1]) == 10 and a[1].to_list() == b[1].to_list()
    assert a[1]["messages"] != ds.select(range(40, 50))["messages"]  # not the tail
    assert sorted(m[0]["content"] for m in list(a[0]["messages"]) + list(a[1]["messages"])) == sorted(
        str(i) for i in range(50)
    )


def test_eval_path(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "c", "output": "d"}])
    s = spec(path=str(train_file), eval_path=str(eval_file))
    train, eval_ = train_eval_split(load_stage_data("sft", s), s, "sft")
    assert len(train) == 3 and eval_.to_list() == [{"messages": [user("c"), bot("d")]}]


def test_streaming_split(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(10)])
    s = spec(path=str(f), streaming=True, max_examples=10, eval_fraction=0.2)
    ds = load_stage_data("pretrain", s)
    assert isinstance(ds, datasets.IterableDataset)
    train, eval_ = train_eval_split(ds, s, "pretrain")
    assert eval_["text"] == ["0", "1"] and [r["text"] for r in train] == [str(i) for i in range(2, 10)]


def test_toy_world(tmp_path):
    pytest.importorskip("rlhf_cli.data.toy")
    for stage, column in (("pretrain", "text"), ("sft", "messages"), ("ppo", "prompt")):
        s = spec(toy=True, max_examples=20)
        ds = load_stage_data(stage, s, toy_dir=tmp_path, seed=0)
        train, eval_ = train_eval_split(ds, s, stage, seed=0, toy_dir=tmp_path)
        assert len(train) == 20 and len(eval_) > 0 and train.column_names == eval_.column_names == [column]
    with pytest.raises(UserError, match="feedback"):
        load_stage_data("reward", spec(toy=True), toy_dir=tmp_path)
