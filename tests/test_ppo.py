"""The PPO stage end to end on tiny models: outputs, resume after a kill, the KL coefficient's effect, LoRA."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf_cli.recipe import ModelSpec, load_recipe

TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=256)


def count_a(prompts, answers, finished):
    """A dense reward a random model can climb: the share of the letter 'a' in the answer."""
    return [a.count("a") / max(len(a), 1) * 10 for a in answers]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and a busy 2-core machine makes two threads stall each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    """A run folder with toy data, an 'SFT' model (random, tiny) and a reward model sharing its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_cli.data.toy import toy_files
    from rlhf_cli.models.modeling import build_model, train_tokenizer

    run = tmp_path_factory.mktemp("ppo_skeleton")
    files = toy_files(run / "data" / "toy", 0)
    texts = [json.loads(line)["text"] for line in open(files["pretrain_train.jsonl"])][:500]
    tok = train_tokenizer(texts, vocab_size=400)
    sft = run / "sft" / "final"
    build_model(TINY, tok).save_pretrained(sft)
    tok.save_pretrained(sft)
    rm = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(run / "reward" / "final")
    tok.save_pretrained(run / "reward" / "final")
    (run / "reward" / "final" / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 2.0}))
    return run


def make_run(skeleton, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(skeleton, run)
    return run


def recipe(*extra):
    base = [
        "ppo.training.per_device_train_batch_size=4",
        "ppo.response_length=10",
        "ppo.eval_prompts=4",
        "ppo.training.num_ppo_epochs=2",
        "ppo.training.logging_steps=1",
    ]
    return load_recipe("tiny", [*base, *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_stage_outputs_then_resume_after_a_kill(skeleton, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_cli.stages import ppo

    run = make_run(skeleton, tmp_path)
    first = recipe("ppo.training.max_steps=2", "ppo.training.save_steps=1")
    metrics = ppo.run(first, run)
    stage = run / "ppo"
    assert metrics["episodes"] == 8 and metrics["steps"] == 2
    for key in ("rm_score", "gold_reward", "length", "finished_rate", "kl_to_reference"):
        assert key in metrics["ppo"], key
    assert (
        metrics["gold_gain"]["low"] <= metrics["gold_gain"]["mean"] <= metrics["gold_gain"]["high"]
        and len(metrics["examples"]) == 4
    )
    assert json.loads((stage / "eval.json").read_text())["episodes"] == 8
    log = rows(stage / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    for key in (
        "objective/rm_score",
        "objective/kl",
        "objective/rlhf_reward",
        "policy/entropy",
        "loss/pg_loss",
        "loss/vf_loss",
        "policy/pg_clipfrac",
        "value/vf_clipfrac",
        "policy/approxkl",
        "answer/length",
        "answer/eos_share",
        "episodes_per_s",
        "beta",
        "objective/gold",  # the toy world's gold reward of the rollouts, monitored (not rewarded)
    ):
        assert key in log[-1], key
    assert all(-1.0 <= r["objective/gold"] <= 1.0 for r in log)
    model = AutoModelForCausalLM.from_pretrained(stage / "final")  # a plain causal LM
    assert model.config.vocab_size > 0
    assert (stage / "final" / "lineage.json").exists() and (stage / "final" / "README.md").exists()
    assert (stage / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    # The policy moved away from the SFT weights.
    sft = AutoModelForCausalLM.from_pretrained(run / "sft" / "final")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), sft.parameters(), strict=True))

    # Without --resume or --overwrite the stage refuses to clobber the folder.
    from rlhf_cli.runtime.errors import UserError

    with pytest.raises(UserError):
        ppo.run(first, run)

    # SIGKILL after checkpoint-1: what a killed run leaves is the checkpoint, no final/ and no eval.json.
    shutil.rmtree(stage / "final")
    (stage / "eval.json").unlink()
    metrics = ppo.run(
        recipe("ppo.training.max_steps=3", "ppo.training.save_steps=1"), run, resume=True, accept_changes=True
    )
    assert metrics["episodes"] == 12 and metrics["steps"] == 3  # same count as an unbroken 3-step run
    assert [r["step"] for r in rows(stage / "metrics.jsonl")] == [1, 2, 2, 3]  # continued from step 1
    state = json.loads((stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["episode"] == 8 and state["data_position"] == 2
    AutoModelForCausalLM.from_pretrained(stage / "final")


def _kl(skeleton, tmp_path, kl_coef: float, name: str) -> float:
    from rlhf_cli.stages import ppo

    run = tmp_path / name
    shutil.copytree(skeleton, run)
    rec = recipe(
        f"ppo.kl_coef={kl_coef}",
        "ppo.training.max_steps=10",
        "ppo.training.learning_rate=1e-2",
        "ppo.training.save_steps=100",
        "ppo.eval_prompts=48",
        "ppo.training.per_device_train_batch_size=16",
        "ppo.rewards=[{function: 'test_ppo:count_a'}]",
        "ppo.missing_eos_penalty=0",
    )
    metrics = ppo.run(rec, run)
    log = rows(run / "ppo" / "metrics.jsonl")
    return metrics["ppo"]["kl_to_reference"], sum(r["objective/kl"] for r in log[-4:]) / 4


def test_larger_kl_coef_keeps_the_policy_closer(skeleton, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    free = _kl(skeleton, tmp_path, 0.0, "free")
    tied = _kl(skeleton, tmp_path, 1.0, "tied")
    assert tied[0] < free[0] and tied[1] < free[1], (tied, free)


def test_lora_policy_saves_a_merged_causal_lm(skeleton, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_cli.stages import ppo

    run = make_run(skeleton, tmp_path)
    metrics = ppo.run(
        recipe("ppo.training.max_steps=1", "ppo.lora={r: 4, alpha: 8}", "ppo.training.learning_rate=1e-2"), run
    )
    final = run / "ppo" / "final"
    assert not (final / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(final)
    assert metrics["steps"] == 1 and "kl_to_reference" in metrics["ppo"]
