"""Pre-training speed: `rlhf pretrain`'s training loop against a plain Trainer script, same model and data, alternating.

    python -m bench.pretrain                 # or `make bench` (all benchmarks)
    python -m bench.pretrain --steps 20 --rounds 3     # table + bench/out/pretrain.json

Both sides train the same ~5M-parameter Llama (hidden 256, 6 layers, block 256) on the toy world's corpus with the same
tokenizer, for the same number of optimizer steps over about the same number of real tokens per step:
  ours   `rlhf_cli.stages.pretrain.run`: documents packed into full 256-token blocks (EOS between them), no attention mask,
         the stage's precision (bf16 only where the hardware is fast at it), its defaults;
  plain  a textbook Trainer script: one document per row, dynamically padded batches (DataCollatorForLanguageModeling),
         TrainingArguments' defaults (fp32), batch size chosen so a step holds about as many real tokens as ours.
  compile `rlhf pretrain` with `pretrain.compile: true` (torch.compile, inductor): faster steps after a compile warm-up.
  loop   the strongest plain baseline a user would write: the same model in a hand-written PyTorch loop over the same
         packed blocks, torch.compile, bf16 autocast where the hardware is fast at it (the same rule as rlhf's).
Each side runs in its own process; sides alternate `--rounds` times (this machine is shared and noisy). Two speeds, both
counting real (non-padding) tokens: overall = over the Trainer's train_runtime (start-up and compile included), steady =
over the steps after the first tenth (at least 2), the rate a long run trains at. MFU: 6*N + attention FLOPs per token
over the measured matmul peak, at the steady rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, LAYERS, HEADS, BLOCK = 256, 6, 4, 256
OUT = Path(__file__).parent / "out"


def _overrides(steps: int, batch: int) -> list[str]:
    return [
        f"model.hidden_size={HIDDEN}",
        f"model.num_layers={LAYERS}",
        f"model.num_heads={HEADS}",
        f"pretrain.block_size={BLOCK}",
        "pretrain.probes=false",
        f"pretrain.training.max_steps={steps}",
        f"pretrain.training.per_device_train_batch_size={batch}",
        "pretrain.training.save_steps=100000",
        "pretrain.training.logging_steps=5",
        "pretrain.training.warmup_steps=0",
    ]


def side_ours(work: Path, steps: int, batch: int, compile: bool = False) -> dict:
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.stages import pretrain

    overrides = [*_overrides(steps, batch), f"pretrain.compile={str(compile).lower()}"]
    # The tokenizer both sides share is trained by the plain `ours` run; the compiled side trains into its own folder.
    metrics = pretrain.run(load_recipe("tiny", overrides), work / ("compiled" if compile else "ours"), overwrite=True)
    return {
        "tokens_per_s": metrics["tokens_per_s_overall"],
        "steady_tokens_per_s": metrics["tokens_per_s"],
        "mfu": metrics["mfu"],
        "peak": metrics["matmul_peak_flops"],
        "dtype": metrics["dtype"],
        "parameters": metrics["parameters"],
        "loss": metrics["loss"],
    }


def side_plain(work: Path, steps: int, batch: int) -> dict:
    """A plain Trainer script: per-document padded batches, fp32 TrainingArguments defaults."""
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from rlhf_cli.data import load_stage_data
    from rlhf_cli.data.toy import toy_files
    from rlhf_cli.models.modeling import load_tokenizer
    from rlhf_cli.recipe import DataSpec
    from rlhf_cli.runtime.callbacks import steady_seconds_per_step

    toy_files(work / "ours" / "data" / "toy", 0)
    tok = load_tokenizer(str(work / "ours" / "pretrain" / "tokenizer"))  # the same tokenizer ours trained
    docs = load_stage_data("pretrain", DataSpec(toy=True), toy_dir=work / "ours" / "data" / "toy")
    data = docs.map(
        lambda b: tok([t + tok.eos_token for t in b["text"]], truncation=True, max_length=BLOCK),
        batched=True,
        remove_columns=["text"],
    )
    mean_len = statistics.mean(len(x) for x in data.select(range(2000))["input_ids"])
    plain_batch = max(1, round(batch * BLOCK / mean_len))  # about as many real tokens per step as a packed batch
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        intermediate_size=int(8 * HIDDEN / 3 / 16 + 1) * 16,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    real = {"tokens": 0}
    pad = DataCollatorForLanguageModeling(tok, mlm=False)

    def collate(rows):  # real (non-padding) tokens, counted on the batches the Trainer actually consumed
        batch = pad(rows)
        real["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    args = TrainingArguments(
        output_dir=str(work / "plain"),
        max_steps=steps,
        per_device_train_batch_size=plain_batch,
        learning_rate=3e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=5,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[timer])
    out = trainer.train()
    overall = real["tokens"] / out.metrics["train_runtime"]
    per_step = steady_seconds_per_step(timer.ends)  # the same warm-up rule as `rlhf pretrain`'s eval.json
    return {
        "tokens_per_s": overall,
        # mean real tokens per step / steady step time
        "steady_tokens_per_s": real["tokens"] / len(timer.ends) / per_step if per_step else overall,
        "batch": plain_batch,
        "mean_doc_tokens": mean_len,
        "loss": out.metrics["train_loss"],
    }


def side_loop(work: Path, steps: int, batch: int) -> dict:
    """The strongest plain baseline a user would write: the same model in a hand-written PyTorch loop over the same
    packed blocks, torch.compile, and bf16 autocast where the hardware is fast at it (rlhf's precision rule decides)."""
    import torch

    from rlhf_cli.data import load_stage_data
    from rlhf_cli.data.toy import toy_files
    from rlhf_cli.models.modeling import build_model, count_parameters, load_tokenizer
    from rlhf_cli.recipe import DataSpec, load_recipe
    from rlhf_cli.runtime import precision
    from rlhf_cli.runtime.callbacks import steady_seconds_per_step

    toy_files(work / "ours" / "data" / "toy", 0)
    tok = load_tokenizer(str(work / "ours" / "pretrain" / "tokenizer"))  # the same tokenizer ours trained
    docs = load_stage_data("pretrain", DataSpec(toy=True), toy_dir=work / "ours" / "data" / "toy")
    stream = [t for text in docs["text"] for t in tok(text + tok.eos_token)["input_ids"]]
    blocks = torch.tensor(stream[: len(stream) // BLOCK * BLOCK]).view(-1, BLOCK)
    model = build_model(load_recipe("tiny", _overrides(steps, batch)).model, tok, seed=0)
    bf16 = precision.for_training(count_parameters(model), "auto", {}).bf16
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    torch.manual_seed(0)
    ends, start = [], time.perf_counter()
    for _ in range(steps):
        x = blocks[torch.randint(len(blocks), (batch,))]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = compiled(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    tokens = steps * batch * BLOCK
    per_step = steady_seconds_per_step(ends)
    return {
        "tokens_per_s": tokens / (ends[-1] - start),
        "steady_tokens_per_s": batch * BLOCK / per_step if per_step else tokens / (ends[-1] - start),
        "dtype": "bf16" if bf16 else "fp32",
        "loss": float(loss),
    }


SIDES = ("ours", "compile", "loop", "plain")  # ours first: it trains the tokenizer every side uses


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=4, help="packed blocks per step (ours)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours, compile, plain) x rounds")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile side (it compiles ~1 min)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:  # one side, in its own process
        work = Path(a.work)
        if a.side in ("plain", "loop"):
            result = (side_plain if a.side == "plain" else side_loop)(work, a.steps, a.batch)
        else:
            result = side_ours(work, a.steps, a.batch, compile=a.side == "compile")
        Path(a.out).write_text(json.dumps(result))
        return {}

    sides = [s for s in SIDES if not (a.no_compile and s in ("compile", "loop"))]
    results: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for side in sides:
                out = Path(tmp) / f"{side}-{r}.json"
                cmd = [sys.executable, "-m", "bench.pretrain", "--side", side, "--work", tmp, "--out", str(out)]
                cmd += ["--steps", str(a.steps), "--batch", str(a.batch)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results[side].append(json.loads(out.read_text()))
                x = results[side][-1]
                print(
                    f"round {r + 1} {side:7s} {x['tokens_per_s']:8.0f} tokens/s overall, "
                    f"{x['steady_tokens_per_s']:8.0f} steady",
                    flush=True,
                )
    from rlhf_cli.models.modeling import measure_matmul_peak
    from rlhf_cli.runtime.callbacks import warmup_steps_skipped

    def median(side: str, key: str) -> float:
        return statistics.median(x[key] for x in results[side])

    last = results["ours"][-1]
    bf16_peak = measure_matmul_peak("bfloat16", n=512)
    mfu = median("ours", "mfu")
    summary = {
        "ours_tokens_per_s": median("ours", "tokens_per_s"),
        "plain_tokens_per_s": median("plain", "tokens_per_s"),
        "ratio": median("ours", "tokens_per_s") / median("plain", "tokens_per_s"),
        "ours_steady_tokens_per_s": median("ours", "steady_tokens_per_s"),
        "plain_steady_tokens_per_s": median("plain", "steady_tokens_per_s"),
        "steady_ratio": median("ours", "steady_tokens_per_s") / median("plain", "steady_tokens_per_s"),
        "mfu": mfu,
        "dtype": last["dtype"],
        "matmul_peak_gflops": last["peak"] / 1e9,
        "bf16_peak_gflops": bf16_peak / 1e9,
        "mfu_vs_bf16_peak": mfu * last["peak"] / bf16_peak,
        "parameters": last["parameters"],
        "plain_batch": results["plain"][-1]["batch"],
        "mean_doc_tokens": results["plain"][-1]["mean_doc_tokens"],
        "steps": a.steps,
        "rounds": results,
    }
    if "compile" in results:
        summary["compile_tokens_per_s"] = median("compile", "tokens_per_s")
        summary["compile_steady_tokens_per_s"] = median("compile", "steady_tokens_per_s")
        summary["compile_ratio"] = summary["compile_tokens_per_s"] / summary["plain_tokens_per_s"]
        summary["compile_steady_ratio"] = summary["compile_steady_tokens_per_s"] / summary["plain_steady_tokens_per_s"]
        summary["compile_mfu"] = median("compile", "mfu")
    print(
        f"\npretrain, {last['parameters'] / 1e6:.1f}M-parameter Llama, block {BLOCK}, {a.steps} steps x {a.rounds} rounds"
        f" (steady: after the first {warmup_steps_skipped(a.steps)} steps)"
    )
    print(f"  {'':34s} {'overall':>9s} {'steady':>9s}   tokens/s")
    rows = [("rlhf pretrain (packed)", "ours"), ("rlhf pretrain + torch.compile", "compile")]
    for label, side in rows:
        if side in results:
            print(f"  {label:34s} {median(side, 'tokens_per_s'):9.0f} {median(side, 'steady_tokens_per_s'):9.0f}")
    if "loop" in results:
        summary["loop_tokens_per_s"] = median("loop", "tokens_per_s")
        summary["loop_steady_tokens_per_s"] = median("loop", "steady_tokens_per_s")
        summary["loop_dtype"] = results["loop"][-1]["dtype"]
        summary["ours_vs_loop_steady"] = summary["ours_steady_tokens_per_s"] / summary["loop_steady_tokens_per_s"]
        label = f"hand-written loop (compile, {summary['loop_dtype']})"
        print(f"  {label:34s} {summary['loop_tokens_per_s']:9.0f} {summary['loop_steady_tokens_per_s']:9.0f}")
    print(
        f"  {'plain Trainer (padded, batch ' + str(summary['plain_batch']) + ')':34s} "
        f"{summary['plain_tokens_per_s']:9.0f} {summary['plain_steady_tokens_per_s']:9.0f}"
    )
    print(f"  {'ratio rlhf / plain':34s} {summary['ratio']:8.2f}x {summary['steady_ratio']:8.2f}x")
    if "compile" in results:
        print(
            f"  {'ratio rlhf + compile / plain':34s} {summary['compile_ratio']:8.2f}x {summary['compile_steady_ratio']:8.2f}x"
        )
    if "loop" in results:
        best = max(summary["ours_steady_tokens_per_s"], summary.get("compile_steady_tokens_per_s", 0.0))
        summary["best_vs_loop_steady"] = best / summary["loop_steady_tokens_per_s"]
        print(f"  {'ratio best rlhf / hand-written loop':34s} {'':9s} {summary['best_vs_loop_steady']:8.2f}x")
    against_bf16 = (
        f"{summary['mfu_vs_bf16_peak']:.0%} of the {bf16_peak / 1e9:.1f} GFLOP/s bf16 peak"
        if summary["mfu_vs_bf16_peak"] <= 1
        else f"bf16 runs at {bf16_peak / 1e9:.1f} GFLOP/s here, slower than fp32: no AMX, so rlhf trains in fp32"
    )
    print(
        f"  MFU (steady)  {mfu:.1%} of the measured {last['peak'] / 1e9:.0f} GFLOP/s {last['dtype']} peak ({against_bf16})"
        + (f"; with compile {summary['compile_mfu']:.1%}" if "compile" in results else "")
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
