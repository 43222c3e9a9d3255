"""The GPU acceptance bench: a Qwen2.5-0.5B-shaped checkpoint (bf16 on disk, ChatML, <|im_end|> ends a turn; built
from a config by bench/foreign.py, no network) through pretrain -> SFT -> reward -> PPO -> --resume in the default
precision, a one-process DeepSpeed ZeRO-3 SFT whose final/ reloads whole, and a one-process FSDP2 PPO run. One line
per check: what was expected, what happened.

    python -m bench.gpu                     # one GPU, about 5-8 minutes; writes bench/out/gpu/ and gpu.json
    python -m bench.gpu --out $OUT/gpu      # elsewhere (the device tool's output folder)
    python -m bench.gpu --smoke             # the same script on a CPU with a tiny checkpoint (checks the bench itself;
                                            # the ZeRO-3 and FSDP checks need a GPU and say so)

Each step runs the real CLI in its own process (`rlhf ...` or `accelerate launch -m rlhf_cli ...`) with a time limit,
and its log stays in the output folder. `rlhf check`'s PPO memory estimate is printed beside the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.foreign import build
from bench.seeds import rlhf_command
from rlhf_cli.recipe import BUILTIN_DIR

OUT = Path(__file__).parent / "out" / "gpu"

# (GPU, --smoke on a CPU): the toy world at a size each finishes in its budget
SIZES = {
    "gpu": {
        "family_size": "0.5b", "pretrain_steps": 200, "sft_steps": 120, "prompts": 256, "reward_steps": 60,
        "ppo_steps": 8, "batch": 16, "lr": 1e-4,
    },
    "smoke": {
        "family_size": "tiny", "pretrain_steps": 40, "sft_steps": 20, "prompts": 32, "reward_steps": 8,
        "ppo_steps": 4, "batch": 8, "lr": 2e-3,
    },
}  # fmt: skip


def settings(size: dict, ckpt: Path) -> list[str]:
    s = [
        f"pretrain.init_from={ckpt}", f"pretrain.training.max_steps={size['pretrain_steps']}",
        f"pretrain.training.learning_rate={size['lr']}", "pretrain.probes=false",
        f"sft.training.max_steps={size['sft_steps']}", f"sft.training.learning_rate={size['lr'] / 2}",
        f"sft.training.per_device_train_batch_size={size['batch']}", "sft.eval_prompts=32",
        f"feedback.num_prompts={size['prompts']}",
        f"reward.training.max_steps={size['reward_steps']}", f"reward.training.per_device_train_batch_size={size['batch']}",
        f"ppo.training.max_steps={size['ppo_steps']}", f"ppo.training.per_device_train_batch_size={size['batch']}",
        f"ppo.training.save_steps={size['ppo_steps'] // 2}", "ppo.training.learning_rate=1e-5", "ppo.eval_prompts=32", "eval.num_prompts=32",
    ]  # fmt: skip
    return [a for x in s for a in ("--set", x)]


class Bench:
    def __init__(self, out: Path):
        self.out, self.results = out, []

    def run(self, name: str, cmd: list[str], timeout: int) -> tuple[int, str]:
        """Run one step, keep its log; (exit code, output)."""
        start = time.time()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            code, text = 124, f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout}s"
        (self.out / f"{name}.log").write_text(" ".join(cmd) + "\n\n" + str(text))
        print(f"[{name}] exit {code} in {time.time() - start:.0f}s", flush=True)
        return code, str(text)

    def check(self, name: str, expected: str, got: str, ok: bool | None) -> None:
        verdict = "PASS" if ok else "not run" if ok is None else "FAIL"
        self.results.append({"check": name, "expected": expected, "got": got, "verdict": verdict})
        print(f"CHECK {name} | expected: {expected} | got: {got} | {verdict}", flush=True)


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def reloads_whole(final: Path) -> tuple[bool, str]:
    """Every weight of `final` loads with its config's full shape and is not all zero (a ZeRO-3 shard saved alone is
    empty or cut, a rank's zero-filled copy all zero)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        return False, f"does not load: {str(err).splitlines()[0]}"
    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(final))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = [k for k in want if have.get(k) != want[k]]
    empty = [k for k, v in model.state_dict().items() if v.float().abs().sum() == 0 and v.dim() > 1]
    ok = not bad and not empty
    return ok, f"{len(have)} tensors, {len(bad)} with the wrong shape, {len(empty)} all zero"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--smoke", action="store_true", help="A tiny checkpoint on a CPU: checks the bench itself.")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    size = SIZES["smoke" if args.smoke or not gpu else "gpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.out)
    device = torch.cuda.get_device_name(0) if gpu else "CPU (smoke: tiny checkpoint)"
    print(f"bench.gpu on {device}, torch {torch.__version__}", flush=True)

    ckpt = build("qwen2.5", args.out / "checkpoint", size=size["family_size"])
    on_disk = read(ckpt / "config.json").get("dtype")
    bench.check("checkpoint", "Qwen2.5-shaped, bf16 on disk", f"{on_disk}, {ckpt}", on_disk == "bfloat16")
    run = args.out / "run"
    common = ["--recipe", "tiny", "-o", str(run), *settings(size, ckpt)]

    # 1. pretrain -> sft -> sample -> label -> reward -> ppo in the default precision
    code, text = bench.run(
        "pipeline",
        rlhf_command("pipeline", *common, "--overwrite", "--stages", "pretrain,sft,sample,label,reward,ppo"),
        timeout=420,
    )
    bench.check("pipeline", "exit 0", f"exit {code}", code == 0)
    sft, rm, ppo = (read(run / s / "eval.json") for s in ("sft", "reward", "ppo"))
    fin = sft.get("finished_rate")
    bench.check("sft ends its turns", "finished >= 0.9 (<|im_end|>)", f"{fin}", fin is not None and fin >= 0.9)
    acc = (rm.get("accuracy") or {}).get("mean")
    bench.check("reward model", "held-out accuracy > 0.5", f"{acc}", acc is not None and acc > 0.5)
    gain = ppo.get("gold_gain", {})
    bench.check(
        "ppo", f"{size['ppo_steps']} steps, gold gain reported", f"steps {ppo.get('steps')}, gain {gain}",
        ppo.get("steps") == size["ppo_steps"] and "mean" in gain,
    )  # fmt: skip
    for stage in ("sft", "reward", "ppo"):
        e = read(run / stage / "eval.json")
        card = (run / stage / "final" / "README.md").read_text() if (run / stage / "final").exists() else ""
        saved = next((line for line in card.splitlines() if line.startswith("Weights saved")), "no card")
        bench.check(
            f"{stage} precision and dtype", "bf16 training on a GPU; saved dtype stated",
            f"{e.get('precision')}; {saved}; peak {e.get('peak_gpu_memory_gib')} GiB",
            (e.get("precision") == "bf16" or not gpu) and saved != "no card",
        )  # fmt: skip

    # 2. --resume: PPO continues from its newest checkpoint to more steps
    more = size["ppo_steps"] + 4
    code, text = bench.run(
        "resume",
        rlhf_command("ppo", *common, "--resume", "--accept-recipe-change", "--set", f"ppo.training.max_steps={more}"),
        timeout=240,
    )
    resumed = read(run / "ppo" / "eval.json").get("steps")
    bench.check(
        "ppo --resume", f"resumes from its newest checkpoint, ends at {more} steps",
        f"exit {code}, {'Resuming from' in text and 'resumed' or 'did not resume'}, steps {resumed}",
        code == 0 and "Resuming from" in text and resumed == more,
    )  # fmt: skip

    # 3. the memory estimate against the measured peak
    code, text = bench.run("check", rlhf_command("check", *common), timeout=120)
    line = next((x for x in text.splitlines() if x.strip().startswith("│ ppo") or x.strip().startswith("ppo ")), "")
    peak = read(run / "ppo" / "eval.json").get("peak_gpu_memory_gib")
    bench.check("memory estimate", "rlhf check's PPO row beside the measured peak", f"{line.strip()} | peak {peak}",
                code == 0)  # fmt: skip

    # 4. one-process ZeRO-3: SFT saves a whole model; 5. one-process FSDP2: PPO runs and saves
    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "1"]
    engines = (
        ("zero3", "deepspeed_zero3.yaml", "sft", "deepspeed"),
        ("fsdp", "fsdp.yaml", "ppo", None),
    )
    for name, config, stage, package in engines:
        if not gpu:
            bench.check(f"{name} {stage}", "runs on a GPU", "skipped: no GPU here", None)
            continue
        if package and importlib_missing(package):
            bench.check(f"{name} {stage}", f"runs ({package} installed)", f"skipped: {package} not installed", None)
            continue
        out = args.out / f"run-{name}"
        sources = [f"ppo.policy_from={run / 'sft' / 'final'}", f"ppo.reward_from={run / 'reward' / 'final'}"]
        extra = [a for s in sources for a in ("--set", s)] if stage == "ppo" else []
        extra += ["--set", f"sft.init_from={run / 'pretrain' / 'final'}"] if stage == "sft" else []
        cmd = [*accelerate, "--config_file", str(BUILTIN_DIR / "accelerate" / config), "-m", "rlhf_cli", stage]
        code, text = bench.run(name, [*cmd, "--recipe", "tiny", "-o", str(out), *settings(size, ckpt), *extra], 360)
        ok, what = reloads_whole(out / stage / "final") if code == 0 else (False, "no final/")
        bench.check(f"{name} {stage}", "exit 0, final/ reloads whole", f"exit {code}, {what}", code == 0 and ok)

    passed = sum(r["verdict"] == "PASS" for r in bench.results)
    failed = sum(r["verdict"] == "FAIL" for r in bench.results)
    print(f"bench.gpu: {passed} passed, {failed} failed, {len(bench.results) - passed - failed} not run", flush=True)
    (args.out / "gpu.json").write_text(json.dumps({"device": device, "checks": bench.results}, indent=2) + "\n")


def importlib_missing(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is None


if __name__ == "__main__":
    main()
