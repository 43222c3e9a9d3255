"""The bad-input suite: each mistake a user makes is answered by ONE clear message and exit code 2, no traceback, and
no file created, changed or removed (the tmp tree — the working directory included — is snapshotted before and after).

Every case runs the real CLI (`rlhf_cli.cli.app` through Typer's CliRunner) from inside tmp_path.
"""

import json
import os
import random

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_cli.cli import app

SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2}


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny causal LMs saved like `final/` folders: `a` and `b` have different tokenizers; `short` has a 16-token
    context; `remote` is `a` with a config whose auto_map names custom code; `rm` is `a` with a score head (a reward
    model)."""
    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.models.modeling import build_model, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    root = tmp_path_factory.mktemp("models")
    world, rng = ToyWorld(0), random.Random(0)
    texts = [world._document(rng) for _ in range(200)]
    out = {}
    for name, vocab, ctx in (("a", 400, 256), ("b", 320, 256), ("short", 400, 16)):
        tok = train_tokenizer(texts if name != "b" else texts[::-1][:120], vocab_size=vocab)
        model = build_model(ModelSpec(**SMALL, max_position_embeddings=ctx), tok, seed=0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    import shutil

    shutil.copytree(root / "a", root / "remote")
    cfg = json.loads((root / "remote" / "config.json").read_text())
    cfg["model_type"] = "my-own-arch"  # known to no transformers version: only the folder's code can build it
    cfg["auto_map"] = {"AutoConfig": "custom.MyConfig", "AutoModelForCausalLM": "custom.MyModel"}
    (root / "remote" / "config.json").write_text(json.dumps(cfg))
    (root / "remote" / "custom.py").write_text("raise RuntimeError('custom code ran')\n")
    out["remote"] = root / "remote"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(root / "a", num_labels=1)
    rm.save_pretrained(root / "rm")
    AutoTokenizer.from_pretrained(root / "a").save_pretrained(root / "rm")
    out["rm"] = root / "rm"
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tmp_path as the working directory, with a few data files and a recipe file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    chat = {
        "messages": [
            {"role": "user", "content": "what does the fox eat?"},
            {"role": "assistant", "content": "the fox eats berries."},
        ]
    }
    write_jsonl(tmp_path / "chats.jsonl", [chat] * 8)
    (tmp_path / "corpus.txt").write_text(
        "the fox eats berries. the owl lives in the forest.\n\n" * 200, encoding="utf-8"
    )
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "what does the fox eat?"}] * 8)
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "model": SMALL,
                "tokenizer": {"train": {"vocab_size": 300}},
                "pretrain": {"data": {"path": "corpus.txt"}, "block_size": 32, "training": {"max_steps": 2}},
                "sft": {"data": {"path": "chats.jsonl"}, "max_length": 64, "training": {"max_steps": 2}},
                "ppo": {"data": {"path": "prompts.jsonl"}, "response_length": 8, "training": {"max_steps": 1}},
            }
        )
    )
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def snapshot(root):
    """Every file and folder under `root`: relative path -> (mtime_ns, size)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(base, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_size if name in files else 0)
    return out


def assert_refused(work, args, *phrases):
    """Run `rlhf ARGS`: exit 2, one `Error:` message naming `phrases`, no traceback, nothing on disk changed."""
    before = snapshot(work)
    result = CliRunner().invoke(app, args)
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code} for {args}:\n{output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    assert output.count("Error") == 1, output
    for phrase in phrases:
        assert phrase.lower() in output.lower(), f"{phrase!r} not in:\n{output}"
    after = snapshot(work)
    assert after == before, f"files changed by {args}: {sorted(set(after.items()) ^ set(before.items()))}"
    return output


def rankings(work, rows):
    return str(write_jsonl(work / "rankings.jsonl", rows))


RANKING = {"prompt": "what does the fox eat?", "responses": ["berries.", "fish.", "stones."]}
R = ["--recipe", "recipe.yaml", "--output-dir", "run"]


# ------------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize(
    "args,phrases",
    [
        (["pretrain", *R, "--set", "modle.arch=gpt2"], ["unknown key 'modle'", "model"]),
        (["pretrain", *R, "--set", "pretrain.block_sise=64"], ["unknown key", "pretrain.block_size"]),
        (["pretrain", *R, "--set", "pretrain.training.max_step=5"], ["pretrain.training.max_steps"]),
        (["sft", *R, "--set", "sft.lora.rank=8"], ["unknown key", "sft.lora"]),
        (["pretrain", *R, "--set", "pretrain.block_size=big"], ["pretrain.block_size", "integer"]),
        (["pretrain", *R, "--set", "seed=[1, 2]"], ["seed"]),
        (["pretrain", *R, "--set", "model.arch=mamba"], ["model.arch"]),
        (["sft", *R, "--set", "sft.data.eval_fraction=1.5"], ["eval_fraction"]),
        (["sample", *R, "--set", "feedback.k=20"], ["feedback.k"]),
        (["pretrain", *R, "--set", "pretrain.block_size"], ["key.path=value"]),
        (["pretrain", *R, "--set", "pretrain.block_size.x=1"], ["not a section"]),
        (["pretrain", *R, "--set", "pretrain.training.learning_rate=-1"], ["learning_rate"]),
        (["pretrain", *R, "--set", "pretrain.training.lr_scheduler_type=zigzag"], ["pretrain.training"]),
        (["pretrain", "--recipe", "missing.yaml"], ["No recipe 'missing.yaml'"]),
        (["pretrain", "--recipe", "tinny"], ["did you mean 'tiny'"]),
        (["pipeline", *R, "--stages", "pretrain,sfft"], ["--stages", "sfft"]),
        (["pipeline", *R, "--resume", "--overwrite"], ["--resume", "--overwrite"]),
    ],
)
def test_recipe_mistakes(work, args, phrases):
    assert_refused(work, args, *phrases)


def test_recipe_not_a_mapping(work):
    (work / "list.yaml").write_text("- pretrain\n- sft\n")
    assert_refused(work, ["pretrain", "--recipe", "list.yaml"], "mapping")


def test_recipe_not_yaml(work):
    (work / "broken.yaml").write_text("pretrain: {data: [\n")
    assert_refused(work, ["pretrain", "--recipe", "broken.yaml"], "not valid YAML", "line 2, column 1")
    (work / "indented.yaml").write_text("name: x\n  seed: 3\n")  # where an editor shows it: line 2, column 7
    assert_refused(work, ["pretrain", "--recipe", "indented.yaml"], "line 2, column 7: mapping values are not allowed")


# ------------------------------------------------------------------------------------------------------ data


def test_missing_data_file(work):
    assert_refused(work, ["pretrain", *R, "--set", "pretrain.data.path=nowhere.txt"], "nowhere.txt", "not found")


def test_empty_data_set(work):
    (work / "empty.jsonl").write_text("")
    assert_refused(
        work, ["sft", *R, "--set", "sft.init_from=" + str(work / "m"), "--set", "sft.data.path=empty.jsonl"], "empty"
    )


def test_empty_data_set_after_models(work, models):
    (work / "empty.jsonl").write_text("")
    assert_refused(
        work, ["sft", *R, "--set", f"sft.init_from={models['a']}", "--set", "sft.data.path=empty.jsonl"], "empty"
    )


def test_unknown_format(work, models):
    write_jsonl(work / "odd.jsonl", [{"question": "q", "reply": "a"}] * 4)
    assert_refused(
        work, ["sft", *R, "--set", f"sft.init_from={models['a']}", "--set", "sft.data.path=odd.jsonl"], "odd.jsonl"
    )


def test_unknown_file_type(work, models):
    (work / "chats.xml").write_text("<chats/>")
    assert_refused(
        work,
        ["sft", *R, "--set", f"sft.init_from={models['a']}", "--set", "sft.data.path=chats.xml"],
        "unknown file type",
    )


def test_non_utf8_text(work):
    (work / "latin.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    assert_refused(work, ["pretrain", *R, "--set", "pretrain.data.path=latin.txt"], "latin.txt")


@pytest.mark.parametrize("ranks", [[1, 1, 2], [1, 3, 4], [1, 2]])
def test_bad_ranks(work, models, ranks):
    path = rankings(work, [{**RANKING, "ranks": ranks}] * 4)
    assert_refused(
        work, ["reward", *R, "--set", f"reward.init_from={models['a']}", "--set", f"reward.data.path={path}"], "ranks"
    )


def test_two_data_sources(work, models):
    assert_refused(
        work,
        [
            "sft",
            *R,
            "--set",
            f"sft.init_from={models['a']}",
            "--set",
            "sft.data.path=a.jsonl",
            "--set",
            "sft.data.hub=o/s",
        ],
        "exactly one",
    )


def test_prompts_longer_than_context(work, models):
    long = "what does the fox eat in the forest when the owl sleeps and the bear fishes? " * 6
    write_jsonl(work / "long.jsonl", [{"prompt": long}] * 8)
    assert_refused(
        work,
        [
            "ppo",
            *R,
            "--set",
            f"ppo.policy_from={models['short']}",
            "--set",
            f"ppo.reward_from={models['rm']}",
            "--set",
            "ppo.data.path=long.jsonl",
        ],
        "context",
    )
    sample_args = ["sample", *R, "--model", str(models["short"]), "--set", "feedback.data={path: long.jsonl}"]
    assert_refused(work, sample_args, "feedback.max_new_tokens")


def test_block_size_beyond_context(work):
    assert_refused(
        work,
        ["pretrain", *R, "--set", "model.max_position_embeddings=16", "--set", "pretrain.block_size=64"],
        "block_size",
    )


# ------------------------------------------------------------------------------------------------------ models


def test_init_from_not_a_model(work):
    (work / "notamodel").mkdir()
    (work / "notamodel" / "notes.txt").write_text("hello")
    assert_refused(work, ["sft", *R, "--set", "sft.init_from=notamodel"], "not a model folder")


def test_init_from_missing_path(work):
    assert_refused(work, ["sft", *R, "--set", "sft.init_from=./gone/model"], "does not exist")


def test_init_from_stage_not_run(work):
    assert_refused(work, ["sft", *R], "rlhf pretrain", "set sft.init_from to a model")
    assert_refused(work, ["ppo", *R], "rlhf sft", "set ppo.policy_from to a model")  # the key that names it
    # every step still to run, not only the parent stage
    assert_refused(work, ["ppo", *R], "`rlhf pretrain`, then `rlhf sft`, then `rlhf sample`, then `rlhf label`, then")
    assert_refused(work, ["reward", *R], "rlhf pipeline --stages pretrain,sft,sample,label")


def test_reward_before_sft(work):
    path = rankings(work, [{**RANKING, "ranks": [1, 2, 3]}] * 4)
    assert_refused(work, ["reward", *R, "--set", f"reward.data.path={path}"], "rlhf sft")


def test_ppo_before_reward(work, models):
    assert_refused(work, ["ppo", *R, "--set", f"ppo.policy_from={models['a']}"], "rlhf reward")


def test_trust_remote_code_off(work, models):
    out = assert_refused(work, ["sft", *R, "--set", f"sft.init_from={models['remote']}"], "trust_remote_code")
    assert "custom code ran" not in out


def test_value_model_with_other_tokenizer(work, models):
    assert_refused(
        work,
        [
            "ppo",
            *R,
            "--set",
            f"ppo.policy_from={models['a']}",
            "--set",
            f"ppo.reward_from={models['rm']}",
            "--set",
            f"ppo.value_from={models['b']}",
        ],
        "tokenizer",
    )


def test_hub_id_offline(work):
    assert_refused(work, ["sft", *R, "--set", "sft.init_from=nobody-here/no-such-model"], "no-such-model")


def test_qlora_on_cpu(work, models):
    assert_refused(work, ["sft", *R, "--set", f"sft.init_from={models['a']}", "--set", "sft.lora.qlora=true"], "qlora")


def test_chat_on_non_model(work):
    (work / "folder").mkdir()
    assert_refused(work, ["chat", "folder", "--prompt", "hi"], "not a model folder")


def test_export_of_non_model(work):
    (work / "folder").mkdir()
    assert_refused(work, ["export", "folder", "--out", "exported"], "not a model folder")


def test_reward_inspect_non_model(work):
    (work / "folder").mkdir()
    assert_refused(work, ["reward", "inspect", "folder"], "not a model folder")


def test_eval_on_non_run(work):
    (work / "folder").mkdir()
    assert_refused(work, ["eval", "folder"], "recipe.yaml")


# ------------------------------------------------------------------------------------------------------ no clobbering


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "ppo"])
def test_existing_stage_folder(work, models, stage):
    (work / "run" / stage / "final").mkdir(parents=True)
    (work / "run" / stage / "final" / "config.json").write_text("{}")
    path = rankings(work, [{**RANKING, "ranks": [1, 2, 3]}] * 4)
    inputs = {
        "sft": [f"sft.init_from={models['a']}"],
        "reward": [f"reward.init_from={models['a']}", f"reward.data.path={path}"],
        "ppo": [f"ppo.policy_from={models['a']}", f"ppo.reward_from={models['rm']}"],
    }.get(stage, [])
    assert_refused(work, [stage, *R, *[a for i in inputs for a in ("--set", i)]], "already exists", "--overwrite")


def test_overwrite_with_bad_data_keeps_old_stage(work):
    """--overwrite does not remove the old stage before the new inputs are known to be good."""
    (work / "run" / "pretrain" / "final").mkdir(parents=True)
    (work / "run" / "pretrain" / "final" / "config.json").write_text("{}")
    assert_refused(work, ["pretrain", *R, "--overwrite", "--set", "pretrain.data.path=nowhere.txt"], "not found")


@pytest.mark.parametrize(
    "override,phrase",
    [
        ("pretrain.training.per_device_train_batch_size=0", "whole number, 1 or more"),
        ("pretrain.training.max_steps=abc", "must be a number"),
    ],
    ids=["batch-size-0", "max-steps-text"],
)
def test_overwrite_with_a_training_value_torch_refuses_late_keeps_old_stage(work, override, phrase):
    # Found by a probe: batch size 0 passed the config class, failed in the DataLoader after --overwrite emptied the stage.
    (work / "run" / "pretrain" / "final").mkdir(parents=True)
    (work / "run" / "pretrain" / "final" / "config.json").write_text("{}")
    assert_refused(work, ["pretrain", *R, "--overwrite", "--set", override], phrase)


def test_export_onto_existing_folder(work, models):
    (work / "exported").mkdir()
    (work / "exported" / "mine.txt").write_text("keep me")
    assert_refused(work, ["export", str(models["a"]), "--out", "exported"], "not an `rlhf export`")


def test_sample_onto_existing_samples(work, models):
    (work / "run" / "feedback").mkdir(parents=True)
    write_jsonl(work / "run" / "feedback" / "samples.jsonl", [{"prompt": "x"}])
    assert_refused(work, ["sample", *R, "--model", str(models["a"])], "already exists")


def test_label_onto_existing_rankings(work):
    (work / "run" / "feedback").mkdir(parents=True)
    write_jsonl(work / "run" / "feedback" / "samples.jsonl", [{"prompt": "x"}])
    write_jsonl(work / "run" / "feedback" / "rankings.jsonl", [{"prompt": "x"}])
    assert_refused(work, ["label", *R], "already exists")


def test_label_without_samples(work):
    assert_refused(work, ["label", *R], "rlhf sample")
