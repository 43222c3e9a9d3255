"""Every stage under `accelerate launch` with 2 CPU processes (gloo), against the same run in one process.

The 2-process run halves each stage's per-device batch, so both runs take optimizer steps on the same global batch:
pre-training, SFT and the reward model then see the same examples in the same order and their losses agree closely;
PPO samples different answers on each process, so only its statistics are compared. The 2-process run is the
documented command (docs/scaling.md):

    accelerate launch --config_file rlhf_cli/recipes/accelerate/cpu.yaml -m rlhf_cli pipeline --recipe R ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_cli.recipe import BUILTIN_DIR

pytestmark = pytest.mark.slow

STAGES = "pretrain,sft,sample,label,reward,ppo"
TRAINED = ("pretrain", "sft", "reward", "ppo")
MICRO = {
    "name": "micro",
    "seed": 0,
    "model": {"arch": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "tokenizer": {"train": {"vocab_size": 400}},
    "pretrain": {
        "data": {"toy": True, "max_examples": 400},
        "block_size": 64,
        "probes": False,
        "training": {"max_steps": 8, "per_device_train_batch_size": 4, "logging_steps": 2, "save_steps": 100},
    },
    "sft": {
        "data": {"toy": True, "max_examples": 200},
        "max_length": 128,
        "eval_prompts": 8,
        "training": {"max_steps": 8, "per_device_train_batch_size": 4, "logging_steps": 2, "save_steps": 100},
    },
    "feedback": {"num_prompts": 16, "k": 3, "max_new_tokens": 16, "batch_size": 16},
    "reward": {
        "max_length": 128,
        "training": {"max_steps": 8, "per_device_train_batch_size": 4, "logging_steps": 2, "save_steps": 100},
    },
    "ppo": {
        "data": {"toy": True, "max_examples": 64},
        "response_length": 12,
        "eval_prompts": 8,
        "training": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 100,
            "local_rollout_forward_batch_size": 8,
        },
    },
    "eval": {"num_prompts": 8, "max_new_tokens": 12},
}
HALVED = [arg for s in TRAINED for arg in ("--set", f"{s}.training.per_device_train_batch_size=2")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same pipeline once in 1 process and once in 2 (run side by side); returns (one, two, two's output)."""
    root = tmp_path_factory.mktemp("distributed")
    recipe = root / "micro.yaml"
    recipe.write_text("# micro: a 2-layer, 32-wide model for the distributed tests\n" + yaml.safe_dump(MICRO))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    common = ["pipeline", "--recipe", str(recipe), "--stages", STAGES]
    accelerate = Path(sys.executable).parent / "accelerate"
    two = [
        str(accelerate),
        "launch",
        "--config_file",
        str(BUILTIN_DIR / "accelerate" / "cpu.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "rlhf_cli",
        *common,
        "-o",
        str(root / "two"),
        *HALVED,
    ]
    one = [sys.executable, "-m", "rlhf_cli", *common, "-o", str(root / "one")]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in (one, two)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out, what in zip(procs, outputs, ("1-process", "2-process"), strict=True):
        assert proc.returncode == 0, f"{what} run failed:\n{out[-4000:]}"
    return root / "one", root / "two", outputs[1]


def free_port() -> int:
    """A port no other test run is using for its rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines() if line.strip()]


def eval_json(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "eval.json").read_text())


def test_rank0_alone_writes_and_prints(runs):
    one, two, output = runs
    for stage in TRAINED:
        steps = [row["step"] for row in metrics(two, stage) if "loss" in row or "objective/rm_score" in row]
        assert steps and len(steps) == len(set(steps)), f"{stage}: metrics.jsonl written by more than one process"
        assert [r["step"] for r in metrics(one, stage) if "loss" in r or "objective/rm_score" in r] == steps
    assert output.count("Base model saved to") == 1 and output.count("rlhf pipeline micro ->") == 1
    assert (two / "feedback" / "rankings.jsonl").read_text() == (one / "feedback" / "rankings.jsonl").read_text()


def test_pretrain_two_processes_match_one(runs):
    from transformers import AutoModelForCausalLM

    one, two, _ = runs
    rows1, rows2 = (metrics(run, "pretrain") for run in (one, two))
    # Same epoch at every step: each of the 2 processes took half of the same global batch (a lone process would not).
    assert [r["epoch"] for r in rows1] == pytest.approx([r["epoch"] for r in rows2])
    losses1, losses2 = ([r["loss"] for r in rows if "loss" in r] for rows in (rows1, rows2))
    assert losses2 == pytest.approx(losses1, abs=1e-3)
    assert eval_json(two, "pretrain")["loss"] == pytest.approx(eval_json(one, "pretrain")["loss"], abs=1e-3)
    assert AutoModelForCausalLM.from_pretrained(two / "pretrain" / "final").config.hidden_size == 32


def test_sft_two_processes_match_one(runs):
    from transformers import AutoModelForCausalLM

    one, two, _ = runs
    m1, m2 = eval_json(one, "sft"), eval_json(two, "sft")
    assert m2["train_steps"] == m1["train_steps"] == 8
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-2)
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], abs=1e-2)
    AutoModelForCausalLM.from_pretrained(two / "sft" / "final")


def test_reward_two_processes_match_one(runs):
    from transformers import AutoModelForSequenceClassification

    one, two, _ = runs
    (end1,), (end2,) = ([r for r in metrics(run, "reward") if "train_loss" in r] for run in (one, two))
    assert end2["step"] == end1["step"] and end2["epoch"] == pytest.approx(end1["epoch"])
    assert end2["train_loss"] == pytest.approx(end1["train_loss"], abs=1e-2)
    assert eval_json(two, "reward")["eval_pairs"] == eval_json(one, "reward")["eval_pairs"]
    model = AutoModelForSequenceClassification.from_pretrained(two / "reward" / "final")
    assert model.config.num_labels == 1


def test_ppo_two_processes_match_one(runs):
    from transformers import AutoModelForCausalLM

    one, two, _ = runs
    rows1, rows2 = (metrics(run, "ppo") for run in (one, two))
    # Same number of answers per PPO step (the global batch), different answers: compare statistics, not values.
    assert [r["episode"] for r in rows2 if "episode" in r] == [r["episode"] for r in rows1 if "episode" in r]
    for r1, r2 in zip(rows1, rows2, strict=False):
        if "policy/entropy" in r1:
            assert r2["policy/entropy"] == pytest.approx(r1["policy/entropy"], rel=0.02)
            assert abs(r2["loss/pg_loss"] - r1["loss/pg_loss"]) < 0.05
    assert eval_json(two, "ppo")["steps"] == eval_json(one, "ppo")["steps"] == 2
    AutoModelForCausalLM.from_pretrained(two / "ppo" / "final")
