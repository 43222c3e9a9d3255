"""SFT benchmark: tokens/s of `rlhf sft` with packing (TRL's BFD packing, padding-free) against plain padded batches.

    .venv/bin/python -m bench.sft                    # 2 runs per side, alternating; table + bench/out/sft.json
    .venv/bin/python -m bench.sft --repeats 3 --train 600

The data: synthetic toy-world conversations whose lengths (chat template included) spread evenly over 20-400 tokens, a
question and an answer of toy-world sentences. Both sides run the SFT stage's own trainer set-up
(`rlhf_cli.stages.sft.make_trainer`: TRL's SFTTrainer with the recipe's SFTConfig, assistant-only loss) from the same freshly
initialised small Llama, on the same conversations, each run in its own subprocess, the sides alternating so both see the
same machine load. Padded batches hold `--batch` conversations; packed batches hold rows of `max_length` tokens, as many as
carry the same number of tokens per optimiser step on average (so both take about the same number of steps and the
held-out losses are comparable). tokens/s = real (non-pad) training tokens / train_runtime. The held-out loss is measured
after training by the same code for both: the mean loss per assistant token of held-out conversations, one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
MAX_LENGTH = 512  # above the longest conversation (400 tokens): nothing is cut on either side


# ------------------------------------------------------------------------------------------------------ data


def make_data(data_dir: Path, n_train: int, n_eval: int, seed: int = 0) -> dict:
    """Write a tokenizer and train/eval conversations with lengths spread over 20-400 tokens; returns their statistics."""
    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.models.modeling import train_tokenizer

    world = ToyWorld(seed)
    rng = random.Random(seed)
    corpus = [world._document(rng) for _ in range(3000)]
    tok = train_tokenizer(corpus, vocab_size=2048)
    tok.save_pretrained(data_dir / "tokenizer")

    def conversation() -> dict:
        target = rng.randint(20, 400)
        e, attr = rng.choice(world.animals), rng.choice(["colour", "food", "home", "friend"])
        question = world._question(rng, e, attr, "train")
        answer = " ".join(world._document(rng) for _ in range(40))
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        overhead = n_tokens(tok, messages)
        ids = tok(answer, add_special_tokens=False)["input_ids"][: max(target - overhead, 3)]
        messages[1]["content"] = tok.decode(ids).strip()
        return {"messages": messages}

    rows = {"train": [conversation() for _ in range(n_train)], "eval": [conversation() for _ in range(n_eval)]}
    stats = {}
    for split, items in rows.items():
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
        lengths = [n_tokens(tok, r["messages"]) for r in items]
        stats[split] = {
            "conversations": len(items),
            "tokens": sum(lengths),
            "min_len": min(lengths),
            "max_len": max(lengths),
            "mean_len": round(sum(lengths) / len(lengths), 1),
        }
    return stats


def n_tokens(tok, messages) -> int:
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


# ------------------------------------------------------------------------------------------------------ one run


def one_run(side: str, data_dir: Path, out_json: Path, batch: int, hidden: int, layers: int, lr: float) -> None:
    """Train once with the SFT stage's trainer (packed or padded) and write {tokens_per_s, eval_loss, ...} to out_json."""
    import datasets
    import torch

    from rlhf_cli.models.modeling import build_model, load_tokenizer
    from rlhf_cli.recipe import ModelSpec, load_recipe
    from rlhf_cli.stages.sft import make_trainer

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    tok = load_tokenizer(str(data_dir / "tokenizer"))
    train = datasets.load_dataset("json", data_files=str(data_dir / "train.jsonl"), split="train")
    evals = [json.loads(line)["messages"] for line in (data_dir / "eval.jsonl").read_text().splitlines()]
    lengths = [n_tokens(tok, m) for m in train["messages"]]
    packed = side == "packed"
    # Packed rows carry ~MAX_LENGTH tokens each: as many rows as give the padded side's tokens per step.
    rows = max(1, round(batch * (sum(lengths) / len(lengths)) / MAX_LENGTH)) if packed else batch
    recipe = load_recipe(
        "tiny",
        [
            f"sft.packing={str(packed).lower()}",
            f"sft.max_length={MAX_LENGTH}",
            f"sft.training.per_device_train_batch_size={rows}",
            f"sft.training.learning_rate={lr}",
            "sft.training.num_train_epochs=1",
            "sft.training.max_steps=-1",
            "sft.training.save_steps=100000",
            "sft.training.logging_steps=1000",
            "sft.training.disable_tqdm=true",
        ],
    )
    model = build_model(ModelSpec(hidden_size=hidden, num_layers=layers, num_heads=4), tok, seed=0)
    stage_dir = out_json.parent / f"{out_json.stem}-stage"
    trainer = make_trainer(recipe, stage_dir, model, tok, train, None)
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    runtime = result.metrics.get("train_runtime", wall)
    model.eval()
    with torch.no_grad():
        eval_loss = held_out_loss(model, tok, evals)
    out = {
        "side": side,
        "rows_per_batch": trainer.args.per_device_train_batch_size,
        "grad_accum": trainer.args.gradient_accumulation_steps,
        "steps": result.global_step,
        "train_tokens": sum(lengths),
        "train_runtime_s": round(runtime, 3),
        "tokens_per_s": round(sum(lengths) / runtime, 1),
        "cpu_s": round(cpu, 3),
        "tokens_per_cpu_s": round(sum(lengths) / cpu, 1),
        "train_loss": round(result.training_loss, 4),
        "eval_loss": round(eval_loss, 4),
        "threads": torch.get_num_threads(),
    }
    out_json.write_text(json.dumps(out, indent=2))


def held_out_loss(model, tok, conversations) -> float:
    """Mean cross-entropy per assistant token (the tokens SFT trains on), one conversation at a time: no padding."""
    import torch

    total, count = 0.0, 0
    for messages in conversations:
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.tensor(
            [[t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True)]]
        )
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total, count = total + float(loss), count + int((target != -100).sum())
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------------ driver


def spread(xs: list[float]) -> str:
    return f"{min(xs):.4g}..{max(xs):.4g}" if len(xs) > 1 else "-"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    p.add_argument("--train", type=int, default=400, help="training conversations")
    p.add_argument("--eval", type=int, default=64, help="held-out conversations")
    p.add_argument("--batch", type=int, default=16, help="conversations per padded batch")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--one", choices=["padded", "packed"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        one_run(a.one, a.data, a.out, a.batch, a.hidden, a.layers, a.lr)
        return {}

    work = OUT / "sft"
    work.mkdir(parents=True, exist_ok=True)
    stats = make_data(work, a.train, a.eval)
    print(
        f"sft bench: {stats['train']['conversations']} training conversations, {stats['train']['tokens']} tokens, "
        f"lengths {stats['train']['min_len']}-{stats['train']['max_len']} (mean {stats['train']['mean_len']})",
        flush=True,
    )
    runs: dict[str, list[dict]] = {"padded": [], "packed": []}
    for r in range(a.repeats):
        for side in ("padded", "packed") if r % 2 == 0 else ("packed", "padded"):
            out = work / f"{side}-{r}.json"
            cmd = [
                sys.executable,
                "-m",
                "bench.sft",
                "--one",
                side,
                "--data",
                str(work),
                "--out",
                str(out),
                "--batch",
                str(a.batch),
                "--hidden",
                str(a.hidden),
                "--layers",
                str(a.layers),
                "--lr",
                str(a.lr),
            ]
            subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
            runs[side].append(json.loads(out.read_text()))
            print(
                f"  {side} run {r}: {runs[side][-1]['tokens_per_s']:.0f} tok/s, held-out loss "
                f"{runs[side][-1]['eval_loss']:.4f}",
                flush=True,
            )

    def med(side, key):
        return statistics.median(x[key] for x in runs[side])

    ratios = [pk["tokens_per_s"] / pd["tokens_per_s"] for pk, pd in zip(runs["packed"], runs["padded"], strict=True)]
    cpu_ratios = [
        pk["tokens_per_cpu_s"] / pd["tokens_per_cpu_s"] for pk, pd in zip(runs["packed"], runs["padded"], strict=True)
    ]
    result = {
        "data": stats,
        "settings": vars(a) | {"data": None, "out": None, "max_length": MAX_LENGTH},
        "runs": runs,
        "tokens_per_s": {s: med(s, "tokens_per_s") for s in runs},
        "eval_loss": {s: med(s, "eval_loss") for s in runs},
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "target_ratio": 1.5,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    (OUT / "sft.json").write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    return result


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"SFT: packing vs padded batches ({r['data']['train']['conversations']} conversations, "
        f"lengths {r['data']['train']['min_len']}-{r['data']['train']['max_len']} tokens)"
    )
    cols = (
        "side",
        "rows x accum",
        "steps",
        "tokens/s (median)",
        "tokens/s runs",
        "tokens/CPU-s",
        "held-out loss",
        "loss runs",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for side in ("padded", "packed"):
        runs = r["runs"][side]
        table.add_row(
            side,
            f"{runs[0]['rows_per_batch']} x {runs[0]['grad_accum']}",
            str(runs[0]["steps"]),
            f"{r['tokens_per_s'][side]:.0f}",
            spread([x["tokens_per_s"] for x in runs]),
            f"{statistics.median(x['tokens_per_cpu_s'] for x in runs):.0f}",
            f"{r['eval_loss'][side]:.4f}",
            spread([x["eval_loss"] for x in runs]),
        )
    Console(width=150).print(table)
    print(
        f"packing / padded tokens/s: {r['ratio']:.2f}x (per pair {r['ratios']}; per CPU-second {r['cpu_ratio']:.2f}x; "
        f"target >= {r['target_ratio']}x; load average {r['load_avg_1m']}); "
        f"held-out loss packed - padded {r['eval_loss']['packed'] - r['eval_loss']['padded']:+.4f}"
    )


if __name__ == "__main__":
    main()
