"""Exact resume and interrupts, with real signals.

Each stage runs as `python -m rlhf_cli <stage>` in a subprocess that SIGKILLs itself at step 3 (after checkpoint-2,
before checkpoint-4: a hook wrapped around the stage's callbacks, so the kill always lands between two checkpoints).
`--resume` then continues in this process from checkpoint-2, and the losses it logs must equal those of an
uninterrupted run with the same seed (1e-5 on CPU). PPO must finish with the same episode count; how close its
logged metrics come is measured too. Another subprocess gets one SIGINT mid-training: exit 130 and a checkpoint.

The subprocesses start together (one import of torch/transformers each is most of their cost).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

KILL_AT = 3  # checkpoints at 2 and 4 (the end)
STEPS = 4
TOL = 1e-5

# Runs the CLI in a child that kills itself with SIGKILL at step KILL_AT (Trainer stages: a wrapped callback; PPO: after
# the step's log line), i.e. after checkpoint-2 and before checkpoint-4.
CHILD = """
import os, signal, sys
from rlhf_cli.runtime import callbacks
kill_at = int(os.environ["RLHF_TEST_KILL_AT"])
make = callbacks.make_callbacks
def make_callbacks(stage_dir, stage):
    cb = make(stage_dir, stage)
    end = cb.on_step_end
    def on_step_end(args, state, control, **kw):
        out = end(args, state, control, **kw)
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    cb.on_step_end = on_step_end
    return cb
callbacks.make_callbacks = make_callbacks
from rlhf_cli.ppo import trainer as ppo_trainer
log = ppo_trainer.PPOTrainer._log
def _log(self, row, start, first_step):
    log(self, row, start, first_step)
    if self.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
ppo_trainer.PPOTrainer._log = _log
from rlhf_cli.cli import main
sys.argv = ["rlhf", *sys.argv[1:]]
main()
"""


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny causal LM and a reward model sharing its tokenizer, data files, and a recipe for every stage."""
    import random

    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.models.modeling import build_model, train_tokenizer
    from rlhf_cli.recipe import ModelSpec

    root = tmp_path_factory.mktemp("resume")
    world, rng = ToyWorld(0), random.Random(0)
    docs = [world._document(rng) for _ in range(300)]
    tok = train_tokenizer(docs, vocab_size=400)
    model = build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")

    questions = [f"what does the {a} eat?" for a in ("fox", "owl", "bear", "deer", "wolf", "hare", "crow", "frog")]
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    chats = write_jsonl(
        root / "chats.jsonl",
        [{"prompt": q, "completion": f"it eats {w}."} for q in questions for w in ("berries", "fish", "seeds")],
    )
    ranked = write_jsonl(
        root / "rankings.jsonl",
        [{"prompt": q, "responses": ["berries.", "fish, mostly.", "stones?"]} for q in questions * 2],
    )
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": q} for q in questions])
    training = {
        "max_steps": STEPS,
        "save_steps": 2,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "warmup_steps": 0,
        "save_total_limit": 5,
    }
    recipe = {
        "name": "resume",
        "seed": 3,
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "tokenizer": {"train": {"vocab_size": 300}},
        "pretrain": {
            "data": {"path": str(root / "corpus.txt")},
            "block_size": 32,
            "probes": False,
            "training": {**training, "learning_rate": 3e-3},
        },
        "sft": {
            "init_from": str(root / "base"),
            "data": {"path": chats},
            "max_length": 48,
            "eval_prompts": 0,
            "training": {**training, "learning_rate": 1e-3},
        },
        "reward": {
            "init_from": str(root / "base"),
            "data": {"path": ranked, "eval_fraction": 0.2},
            "max_length": 48,
            "training": {**training, "learning_rate": 1e-3},
        },
        "ppo": {
            "policy_from": str(root / "base"),
            "reward_from": str(root / "rm"),
            "data": {"path": prompts},
            "response_length": 6,
            "eval_prompts": 0,
            "training": {**training, "num_ppo_epochs": 1, "learning_rate": 1e-3},
        },
        "grpo": {  # an online method on TRL's trainer: its sampled answers must resume as they were
            "policy_from": str(root / "base"),
            "reward_from": str(root / "rm"),
            "data": {"path": prompts},
            "eval_prompts": 0,
            "training": {**training, "num_generations": 2, "max_completion_length": 6, "learning_rate": 1e-3},
        },
        "eval": {"max_new_tokens": 6},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


@pytest.fixture(scope="module")
def children(setup):
    """Start every subprocess at once: five stages that SIGKILL themselves at step 3, and a pretrain that gets SIGINT."""
    env = {
        **os.environ,
        "RLHF_TEST_KILL_AT": str(KILL_AT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    recipe = str(setup / "recipe.yaml")
    procs = {}
    for stage in ("pretrain", "sft", "reward", "ppo", "grpo"):
        procs[stage] = subprocess.Popen(
            [sys.executable, "-c", CHILD, stage, "--recipe", recipe, "--output-dir", str(setup / f"killed-{stage}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    sigint_dir = setup / "sigint"
    sigint = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf_cli",
            "pretrain",
            "--recipe",
            recipe,
            "--output-dir",
            str(sigint_dir),
            "--set",
            "pretrain.training.max_steps=100000",
            "--set",
            "pretrain.training.save_steps=100000",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = sigint_dir / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and sigint.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # mid-training
            sigint.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    out = {stage: (p.wait(timeout=400), p.stdout.read()) for stage, p in procs.items()}
    out["sigint"] = (sigint.wait(timeout=400), sigint.stdout.read())
    return out


def losses(path: Path, keys=("loss", "grad_norm", "learning_rate")) -> dict[int, dict]:
    """step -> the logged training values of that step (the last row for a step: a resumed run logs it again)."""
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if any(k in row for k in keys) and "train_runtime" not in row:
            rows[row["step"]] = {k: row[k] for k in keys if k in row}
    return rows


def max_diff(a: dict[int, dict], b: dict[int, dict], steps) -> float:
    return max(abs(float(a[s][k]) - float(b[s][k])) for s in steps for k in b[s])


def run_stage(stage: str, setup: Path, run_dir: Path, **kw) -> dict:
    import importlib

    from rlhf_cli.recipe import load_recipe

    module = importlib.import_module(f"rlhf_cli.stages.{stage}")
    return module.run(load_recipe(str(setup / "recipe.yaml")), run_dir, **kw)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "grpo"])
def test_sigkill_then_resume_is_exact(setup, children, stage):
    from rlhf_cli.runtime.runs import newest_checkpoint

    rc, output = children[stage]
    assert rc == -signal.SIGKILL, output[-3000:]
    killed = setup / f"killed-{stage}"
    assert newest_checkpoint(killed / stage / "checkpoints").name == "checkpoint-2"
    assert not (killed / stage / "final").exists()

    run_stage(stage, setup, killed, resume=True)
    run_stage(stage, setup, setup / f"straight-{stage}")
    resumed = losses(killed / stage / "metrics.jsonl")
    straight = losses(setup / f"straight-{stage}" / stage / "metrics.jsonl")
    after = range(KILL_AT, STEPS + 1)
    assert set(after) <= set(resumed) and set(range(1, STEPS + 1)) <= set(straight)
    diff = max_diff(resumed, straight, after)
    print(f"{stage}: max |resumed - uninterrupted| over steps {KILL_AT}..{STEPS} (loss, grad_norm, lr) = {diff:.2e}")
    assert diff <= TOL, (resumed, straight)
    assert all(math.isfinite(straight[s]["loss"]) for s in after)
    assert (killed / stage / "final" / "config.json").exists()


def test_ppo_sigkill_then_resume(setup, children):
    from rlhf_cli.runtime.runs import newest_checkpoint

    rc, output = children["ppo"]
    assert rc == -signal.SIGKILL, output[-3000:]
    killed = setup / "killed-ppo"
    assert newest_checkpoint(killed / "ppo" / "checkpoints").name == "checkpoint-2"

    resumed = run_stage("ppo", setup, killed, resume=True)
    straight = run_stage("ppo", setup, setup / "straight-ppo")
    assert resumed["episodes"] == straight["episodes"] == STEPS * 4
    assert (killed / "ppo" / "final" / "config.json").exists()
    keys = ("objective/rm_score", "objective/kl", "loss/pg_loss", "loss/vf_loss")
    a, b = (losses(d / "ppo" / "metrics.jsonl", keys) for d in (killed, setup / "straight-ppo"))
    diff = max_diff(a, b, range(KILL_AT, STEPS + 1))
    print(f"ppo: max |resumed - uninterrupted| over steps {KILL_AT}..{STEPS} ({', '.join(keys)}) = {diff:.2e}")
    assert diff <= TOL


def test_sigint_saves_a_checkpoint_and_exits_130(setup, children):
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.runtime.runs import newest_checkpoint
    from rlhf_cli.stages import pretrain

    rc, output = children["sigint"]
    assert rc == 130, output[-3000:]
    assert "SIGINT: saving a checkpoint" in output and "Traceback" not in output
    run = setup / "sigint"
    ckpt = newest_checkpoint(run / "pretrain" / "checkpoints")
    assert ckpt is not None and not (run / "pretrain" / "final").exists()
    step = int(ckpt.name.split("-")[1])
    assert step >= 2
    rec = load_recipe(
        str(setup / "recipe.yaml"), [f"pretrain.training.max_steps={step + 2}", "pretrain.training.save_steps=100000"]
    )
    metrics = pretrain.run(rec, run, resume=True, accept_changes=True)  # a shorter run on purpose: end soon
    assert metrics["global_step"] == step + 2
    assert (run / "pretrain" / "final" / "config.json").exists()
