"""Pre-training speed: `rlhf pretrain`'s training loop against a plain Trainer script, same model and data, alternating.

    python -m bench.pretrain                 # or `make bench` (all benchmarks)
    python -m bench.pretrain --steps 20 --rounds 3

Both sides train the same ~5M-parameter Llama (hidden 256, 6 layers, block 256) on the toy world's corpus with the same
tokenizer, for the same number of optimizer steps over about the same number of real tokens per step:
  ours   `rlhf_cli.stages.pretrain.run`: documents packed into full 256-token blocks (EOS between them), no attention mask,
         the stage's precision (bf16 only where the hardware is fast at it), its defaults;
  plain  a textbook Trainer script: one document per row, dynamically padded batches (DataCollatorForLanguageModeling),
         TrainingArguments' defaults (fp32), batch size chosen so a step holds about as many real tokens as ours.
Each side runs in its own process; sides alternate `--rounds` times (this machine is shared and noisy). tokens/s counts
real (non-padding) tokens over the Trainer's train_runtime. MFU: 6*N + attention FLOPs per token over the measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, LAYERS, HEADS, BLOCK = 256, 6, 4, 256


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


def side_ours(work: Path, steps: int, batch: int) -> dict:
    from rlhf_cli.recipe import load_recipe
    from rlhf_cli.stages import pretrain

    metrics = pretrain.run(load_recipe("tiny", _overrides(steps, batch)), work / "ours", overwrite=True)
    return {
        "tokens_per_s": metrics["tokens_per_s_overall"],  # over train_runtime, as the plain side is measured
        "mfu": metrics["mfu"] * metrics["tokens_per_s_overall"] / metrics["tokens_per_s"],
        "peak": metrics["matmul_peak_flops"],
        "dtype": metrics["dtype"],
        "parameters": metrics["parameters"],
        "loss": metrics["loss"],
    }


def side_plain(work: Path, steps: int, batch: int) -> dict:
    """A plain Trainer script: per-document padded batches, fp32 TrainingArguments defaults."""
    import torch
    from transformers import DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from rlhf_cli.data import load_stage_data
    from rlhf_cli.data.toy import toy_files
    from rlhf_cli.modeling import load_tokenizer
    from rlhf_cli.recipe import DataSpec

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

    args = TrainingArguments(
        output_dir=str(work / "plain"),
        max_steps=steps,
        per_device_train_batch_size=plain_batch,
        learning_rate=3e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=5,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
    out = trainer.train()
    return {
        "tokens_per_s": real["tokens"] / out.metrics["train_runtime"],
        "batch": plain_batch,
        "mean_doc_tokens": mean_len,
        "loss": out.metrics["train_loss"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=4, help="packed blocks per step (ours)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours, plain) x rounds")
    p.add_argument("--side", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:  # one side, in its own process
        fn = side_ours if a.side == "ours" else side_plain
        Path(a.out).write_text(json.dumps(fn(Path(a.work), a.steps, a.batch)))
        return {}

    results: dict[str, list[dict]] = {"ours": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for side in ("ours", "plain"):  # ours first: it trains the tokenizer both sides use
                out = Path(tmp) / f"{side}-{r}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.pretrain",
                    "--side",
                    side,
                    "--work",
                    tmp,
                    "--out",
                    str(out),
                    "--steps",
                    str(a.steps),
                    "--batch",
                    str(a.batch),
                ]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results[side].append(json.loads(out.read_text()))
                print(f"round {r + 1} {side:5s} {results[side][-1]['tokens_per_s']:8.0f} tokens/s", flush=True)
    from rlhf_cli.modeling import measure_matmul_peak

    ours = statistics.median(x["tokens_per_s"] for x in results["ours"])
    plain = statistics.median(x["tokens_per_s"] for x in results["plain"])
    last = results["ours"][-1]
    bf16_peak = measure_matmul_peak("bfloat16", n=512)
    mfu_bf16 = statistics.median(x["mfu"] for x in results["ours"]) * last["peak"] / bf16_peak
    summary = {
        "ours_tokens_per_s": ours,
        "plain_tokens_per_s": plain,
        "ratio": ours / plain,
        "mfu": statistics.median(x["mfu"] for x in results["ours"]),
        "dtype": last["dtype"],
        "matmul_peak_gflops": last["peak"] / 1e9,
        "bf16_peak_gflops": bf16_peak / 1e9,
        "mfu_vs_bf16_peak": mfu_bf16,
        "parameters": last["parameters"],
        "plain_batch": results["plain"][-1]["batch"],
        "mean_doc_tokens": results["plain"][-1]["mean_doc_tokens"],
        "rounds": results,
    }
    print(
        f"\npretrain, {last['parameters'] / 1e6:.1f}M-parameter Llama, block {BLOCK}, {a.steps} steps x {a.rounds} rounds"
    )
    print(f"  rlhf pretrain   {ours:8.0f} tokens/s  (packed, {last['dtype']})")
    print(f"  plain Trainer   {plain:8.0f} tokens/s  (padded per-document batches of {summary['plain_batch']}, fp32)")
    print(f"  ratio           {ours / plain:8.2f}x")
    print(
        f"  MFU             {summary['mfu']:8.1%} of the measured {last['peak'] / 1e9:.0f} GFLOP/s {last['dtype']} peak"
        f" ({mfu_bf16:.0%} of the {bf16_peak / 1e9:.1f} GFLOP/s bf16 peak)"
    )
    return summary


if __name__ == "__main__":
    main()
