"""PPO benchmark: episodes/s and gold-reward gain of `rlhf ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

    .venv/bin/python -m bench.ppo                         # 2 runs per side (ABBA order); table + bench/out/ppo.json
    .venv/bin/python -m bench.ppo --run runs/tiny --repeats 3 --steps 10

Models: a finished tiny run's SFT model (policy and reference) and reward model (reward and value model) — `--run`,
by default bench/out/pipeline-run (made by `python -m bench.pipeline`), else made here with
`rlhf pipeline --recipe tiny --stages pretrain,sft,sample,label,reward -o bench/out/ppo-run`.
Both sides: the same toy training prompts, batch size, response length, PPO epochs, mini-batches, KL coefficient,
learning rate (constant), temperature, EOS penalty, reward normalisation (reward_stats.json) and seed; no checkpoints.

- ours: the PPO stage itself (`rlhf_cli.stages.ppo.run`, in a subprocess), with per-phase timers wrapped around the
  trainer's methods from the outside (generation, rollout forward passes, scoring, checkpoints; the rest of each step
  is the PPO update).
- TRL 1.12: bench/ppo_trl112.py in its own virtual environment, bench/.venv-trl112 (made here on first use: torch,
  trl==1.12.0, the main venv's transformers/accelerate/datasets). Never a dependency of the package.

episodes/s = episodes / wall time of the training loop (model loading and saving excluded, on both sides). Gold reward:
every saved policy and the SFT model answer the toy world's held-out prompts greedily (same code, main venv); the gain
is the policy's mean gold reward minus the SFT model's, with a paired 95 % bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
VENV = ROOT / "bench" / ".venv-trl112"
TRL_VERSION = "1.12.0"


# ------------------------------------------------------------------------------------------------------ set-up


def ensure_run(run: Path | None) -> Path:
    """A run folder with sft/final and reward/final (and the toy data)."""
    candidates = [run] if run else [OUT / "pipeline-run", OUT / "ppo-run"]
    for c in candidates:
        if c and (c / "sft" / "final" / "config.json").exists() and (c / "reward" / "final" / "config.json").exists():
            return c
    target = run or OUT / "ppo-run"
    cmd = [
        sys.executable,
        "-m",
        "rlhf_cli",
        "pipeline",
        "--recipe",
        "tiny",
        "--stages",
        "pretrain,sft,sample,label,reward",
        "--resume",
        "-o",
        str(target),
    ]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return target


def ensure_trl_venv() -> Path:
    """bench/.venv-trl112 with TRL 1.12 and the main venv's transformers; its python."""
    import accelerate
    import datasets
    import transformers

    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import trl, transformers; print(trl.__version__, transformers.__version__)"]
    want = f"{TRL_VERSION} {transformers.__version__}"
    if py.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == want:
        return py
    print(f"bench: making {VENV} (trl=={TRL_VERSION}, transformers=={transformers.__version__}) ...", flush=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    import torch

    torch_pin = "torch==" + torch.__version__.split("+")[0]
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            torch_pin,
            f"trl=={TRL_VERSION}",
            f"transformers=={transformers.__version__}",
            f"accelerate=={accelerate.__version__}",
            f"datasets=={datasets.__version__}",
        ],
        check=True,
    )
    return py


# ------------------------------------------------------------------------------------------------------ our side


def ours_overrides(a) -> list[str]:
    return [
        f"seed={a.seed}",
        f"ppo.kl_coef={a.kl_coef}",
        f"ppo.response_length={a.response_length}",
        f"ppo.temperature={a.temperature}",
        f"ppo.missing_eos_penalty={a.missing_eos_penalty}",
        "ppo.eval_prompts=0",
        f"ppo.training.max_steps={a.steps}",
        f"ppo.training.per_device_train_batch_size={a.batch_size // a.num_mini_batches}",
        "ppo.training.gradient_accumulation_steps=1",
        f"ppo.training.num_mini_batches={a.num_mini_batches}",
        f"ppo.training.num_ppo_epochs={a.num_ppo_epochs}",
        f"ppo.training.learning_rate={a.lr}",
        "ppo.training.lr_scheduler_type=constant",
        "ppo.training.save_steps=0",
        "ppo.training.logging_steps=5",
        f"ppo.training.local_rollout_forward_batch_size={a.forward_batch_size}",
    ]


def run_ours(a) -> None:
    """One `rlhf ppo` run (the stage's run()) in a run folder linked to the source run's models; phase times to --out."""
    from rlhf_cli.ppo import trainer as ppo_trainer
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.stages import ppo as ppo_stage

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("sft", "reward", "data"):
        link = work / name
        if link.is_symlink():  # a folder from an earlier run may link to another run's models
            link.unlink()
        link.symlink_to(Path(a.run).resolve() / name)
    phases = {"generation": 0.0, "rollout_forward": 0.0, "scoring": 0.0, "checkpoints": 0.0, "train": 0.0, "cpu": 0.0}
    active = {"on": False}
    cls = ppo_trainer.PPOTrainer

    def timed(method, phase, always=False):
        def wrapper(*args, **kwargs):
            if not (active["on"] or always):
                return method(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                phases[phase] += time.perf_counter() - t0

        return wrapper

    def train(self, *args, **kwargs):
        active["on"] = True
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            phases["train"] += time.perf_counter() - t0
            phases["cpu"] += time.process_time() - c0
            active["on"] = False

    original_train = cls.train
    cls.generate = timed(cls.generate, "generation")
    cls._forward_logprobs = timed(cls._forward_logprobs, "rollout_forward")
    cls.score = timed(cls.score, "scoring")
    cls.save_checkpoint = timed(cls.save_checkpoint, "checkpoints")
    cls.train = train

    recipe = load_recipe("tiny", ours_overrides(a))
    metrics = ppo_stage.run(recipe, work, overwrite=True)
    import torch

    episodes = metrics["episodes"]
    rest = phases["train"] - sum(v for k, v in phases.items() if k not in ("train", "cpu"))
    result = {
        "side": "ours",
        "train_s": round(phases["train"], 3),
        "episodes": episodes,
        "episodes_per_s": round(episodes / phases["train"], 3),
        "cpu_s": round(phases["cpu"], 3),
        "episodes_per_cpu_s": round(episodes / phases["cpu"], 3),
        "steps": metrics["steps"],
        "policy_dir": str(work / "ppo" / "final"),
        "threads": torch.get_num_threads(),
        "phases_s": {
            **{k: round(v, 3) for k, v in phases.items() if k not in ("train", "cpu")},
            "ppo_update": round(rest, 3),
        },
        "last_log": metrics.get("train_last_step"),
    }
    Path(a.out).write_text(json.dumps(result, indent=2, default=float))
    print(
        f"rlhf ppo: {episodes} episodes in {phases['train']:.1f} s = {result['episodes_per_s']:.2f} episodes/s",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------------ evaluation


def gold_rewards(model_dir: str, prompts: list[str], world, max_new_tokens: int) -> list[float]:
    """Gold reward of the model's greedy answer to each prompt (the same code for every model)."""
    import torch

    from rlhf_cli.models.generation import generate_answers
    from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    with torch.no_grad():
        answers = generate_answers(
            model,
            tok,
            [[{"role": "user", "content": p}] for p in prompts],
            temperature=0.0,
            max_new_tokens=max_new_tokens,
        )
    return [world.gold_reward(p, group[0].text, group[0].finished) for p, group in zip(prompts, answers, strict=True)]


# ------------------------------------------------------------------------------------------------------ driver


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="finished run with sft/final and reward/final")
    p.add_argument("--repeats", type=int, default=2, help="runs per side (ABBA order)")
    p.add_argument("--steps", type=int, default=20, help="PPO batches per run (the tiny recipe's max_steps)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes per PPO batch")
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--num-ppo-epochs", type=int, default=4)
    p.add_argument("--num-mini-batches", type=int, default=1)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--missing-eos-penalty", type=float, default=1.0)
    p.add_argument("--forward-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-prompts", type=int, default=128, help="held-out prompts for the gold reward")
    p.add_argument("--only", choices=["ours", "trl"], help="run one side only")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        run_ours(a)
        return {}

    run = ensure_run(a.run)
    trl_py = ensure_trl_venv() if a.only != "ours" else None
    work = OUT / "ppo"
    work.mkdir(parents=True, exist_ok=True)
    settings = [
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--response-length",
        str(a.response_length),
        "--num-ppo-epochs",
        str(a.num_ppo_epochs),
        "--num-mini-batches",
        str(a.num_mini_batches),
        "--kl-coef",
        str(a.kl_coef),
        "--lr",
        str(a.lr),
        "--temperature",
        str(a.temperature),
        "--missing-eos-penalty",
        str(a.missing_eos_penalty),
        "--forward-batch-size",
        str(a.forward_batch_size),
        "--seed",
        str(a.seed),
    ]
    sides = [s for s in ("ours", "trl") if a.only in (None, s)]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for r in range(a.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            out = work / f"{side}-{r}.json"
            if side == "ours":
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.ppo",
                    "--one",
                    "--run",
                    str(run),
                    "--work",
                    str(work / f"ours-{r}"),
                    "--out",
                    str(out),
                    *settings,
                ]
            else:
                cmd = [
                    str(trl_py),
                    str(ROOT / "bench" / "ppo_trl112.py"),
                    "--policy",
                    str(run / "sft" / "final"),
                    "--reward",
                    str(run / "reward" / "final"),
                    "--prompts",
                    str(run / "data" / "toy" / "prompts_train.jsonl"),
                    "--output-dir",
                    str(work / f"trl-{r}"),
                    "--out",
                    str(out),
                    *settings,
                ]
            print(f"--- {side} run {r}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            runs[side].append(json.loads(out.read_text()))

    # Gold reward on held-out prompts: the SFT model, then every trained policy, with the same code.
    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.evaluation.stats import bootstrap_ci

    world = ToyWorld(a.seed)
    prompts = [
        json.loads(line)["prompt"] for line in (run / "data" / "toy" / "prompts_eval.jsonl").read_text().splitlines()
    ]
    prompts = prompts[: a.eval_prompts]
    sft_gold = gold_rewards(str(run / "sft" / "final"), prompts, world, a.response_length)
    for side_runs in runs.values():
        for x in side_runs:
            gold = gold_rewards(x["policy_dir"], prompts, world, a.response_length)
            gains = [g - s for g, s in zip(gold, sft_gold, strict=True)]
            x["gold_reward"] = round(statistics.mean(gold), 4)
            x["gold_gain"] = round(statistics.mean(gains), 4)
            ci = bootstrap_ci(gains, seed=a.seed)
            x["gold_gain_ci95"] = [ci["low"], ci["high"]]

    def med(side, key):
        return statistics.median(x[key] for x in runs[side])

    result = {
        "run": str(run),
        "settings": {k: v for k, v in vars(a).items() if k not in ("one", "work", "out")},
        "eval_prompts": len(prompts),
        "sft_gold_reward": round(statistics.mean(sft_gold), 4),
        "runs": runs,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    for side in sides:
        result[side] = {"episodes_per_s": med(side, "episodes_per_s"), "gold_gain": med(side, "gold_gain")}
    if len(sides) == 2:
        pairs = list(zip(runs["ours"], runs["trl"], strict=True))
        result["episodes_per_s_ratio"] = round(med("ours", "episodes_per_s") / med("trl", "episodes_per_s"), 3)
        result["episodes_per_s_ratios"] = [round(o["episodes_per_s"] / t["episodes_per_s"], 3) for o, t in pairs]
        result["episodes_per_cpu_s_ratio"] = round(
            med("ours", "episodes_per_cpu_s") / med("trl", "episodes_per_cpu_s"), 3
        )
    (OUT / "ppo.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True))
    print_tables(result)
    return result


def print_tables(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    s = r["settings"]
    table = Table(
        title=f"PPO: rlhf ppo vs TRL 1.12 PPOTrainer ({s['steps']} steps x {s['batch_size']} episodes, "
        f"response {s['response_length']}, {s['num_ppo_epochs']} epochs; gold on {r['eval_prompts']} "
        f"held-out prompts, SFT {r['sft_gold_reward']:+.3f})"
    )
    for col in ("side", "run", "train s", "episodes/s", "episodes/CPU-s", "gold", "gold gain", "95% CI of gain"):
        table.add_column(col, justify="right")
    for side, side_runs in r["runs"].items():
        for i, x in enumerate(side_runs):
            lo, hi = x["gold_gain_ci95"]
            table.add_row(
                "rlhf ppo" if side == "ours" else "TRL 1.12",
                str(i),
                f"{x['train_s']:.1f}",
                f"{x['episodes_per_s']:.2f}",
                f"{x['episodes_per_cpu_s']:.2f}",
                f"{x['gold_reward']:+.3f}",
                f"{x['gold_gain']:+.3f}",
                f"{lo:+.3f} .. {hi:+.3f}",
            )
    console.print(table)
    for side, side_runs in r["runs"].items():
        eps = [x["episodes_per_s"] for x in side_runs]
        gains = [x["gold_gain"] for x in side_runs]
        console.print(
            f"{side}: episodes/s median {statistics.median(eps):.2f} (runs {min(eps):.2f}..{max(eps):.2f}); "
            f"gold gain median {statistics.median(gains):+.3f} (runs {min(gains):+.3f}..{max(gains):+.3f})"
        )
    if "episodes_per_s_ratio" in r:
        console.print(
            f"episodes/s ours / TRL 1.12: {r['episodes_per_s_ratio']:.2f}x (per pair {r['episodes_per_s_ratios']}; "
            f"per CPU-second {r['episodes_per_cpu_s_ratio']:.2f}x; load average {r['load_avg_1m']}; "
            "target >= 1.0x at an equal or larger gold gain)"
        )
    ours = r["runs"].get("ours")
    if ours:
        prof = Table(title="where rlhf ppo's training time goes (mean over runs)")
        prof.add_column("phase")
        prof.add_column("s", justify="right")
        prof.add_column("share", justify="right")
        total = statistics.mean(x["train_s"] for x in ours)
        for phase in ours[0]["phases_s"]:
            v = statistics.mean(x["phases_s"][phase] for x in ours)
            prof.add_row(phase, f"{v:.1f}", f"{v / total:.0%}")
        prof.add_row("total (training loop)", f"{total:.1f}", "100%")
        console.print(prof)


if __name__ == "__main__":
    main()
