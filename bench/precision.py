"""Precision: is bf16 faster than fp32 here, and from which model size? The measurement behind `rlhf_cli.runtime.precision`.

    python -m bench.precision                         # the default sizes; table + bench/out/precision.json
    python -m bench.precision --hidden 64,128,256 --steps 20

For each Llama size (hidden h, layers, heads = h/32 at least 2), the same training step as the stages run — forward,
backward and AdamW on a batch of token blocks — is timed in fp32 and in bf16 autocast (what `training.bf16: true` does on
a CPU: fp32 master weights, bf16 matrix products), alternating the two in the same process, and likewise a greedy
`generate` of 32 tokens for a batch of 64 prompts (sampling, eval, chat). The result is the bf16/fp32 speed ratio per size;
`rlhf_cli.runtime.precision.BF16_MIN_PARAMS` is where that ratio passes 1 on a CPU with AMX. A timing is never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def model_of(hidden: int, layers: int, vocab: int = 2048, context: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(2, hidden // 32)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=int(8 * hidden / 3 / 16 + 1) * 16,
        max_position_embeddings=context,
        vocab_size=vocab,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def time_train(model, batch: int, block: int, steps: int, bf16: bool) -> float:
    """Seconds per training step (median of `steps` after 2 warm-up steps)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, block))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_generate(model, batch: int, new_tokens: int, bf16: bool, repeats: int = 3) -> float:
    import torch

    ids = torch.randint(5, model.config.vocab_size, (batch, 12))
    mask = torch.ones_like(ids)
    model.eval()
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        if i >= 1:
            times.append(time.perf_counter() - t0)
    model.train()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", default="64,128,192,256,384,512", help="Comma-separated hidden sizes.")
    p.add_argument("--layers", type=int, default=4, help="Layers of every size.")
    p.add_argument("--batch", type=int, default=16, help="Blocks per training step.")
    p.add_argument("--block", type=int, default=128, help="Tokens per block.")
    p.add_argument("--steps", type=int, default=8, help="Timed training steps per side and round.")
    p.add_argument("--rounds", type=int, default=2, help="fp32/bf16 alternations per size.")
    p.add_argument("--no-generate", action="store_true", help="Skip the generation timing.")
    args = p.parse_args(argv)

    import torch

    from rlhf_cli.runtime.precision import describe_hardware

    print(f"bench.precision: {describe_hardware()}, {torch.get_num_threads()} torch threads", flush=True)
    rows = []
    for hidden in [int(h) for h in args.hidden.split(",")]:
        model = model_of(hidden, args.layers)
        params = sum(p.numel() for p in model.parameters())
        train = {"fp32": [], "bf16": []}
        gen = {"fp32": [], "bf16": []}
        for r in range(args.rounds):
            for side in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                train[side].append(time_train(model, args.batch, args.block, args.steps, side == "bf16"))
                if not args.no_generate:
                    gen[side].append(time_generate(model, 64, 32, side == "bf16"))
        row = {
            "hidden": hidden,
            "layers": args.layers,
            "parameters": params,
            "train_step_s": {k: statistics.median(v) for k, v in train.items()},
            "train_bf16_speedup": statistics.median(train["fp32"]) / statistics.median(train["bf16"]),
        }
        if not args.no_generate:
            row["generate_s"] = {k: statistics.median(v) for k, v in gen.items()}
            row["generate_bf16_speedup"] = statistics.median(gen["fp32"]) / statistics.median(gen["bf16"])
        rows.append(row)
        g = f", generate bf16 {row['generate_bf16_speedup']:.2f}x" if "generate_bf16_speedup" in row else ""
        print(
            f"hidden {hidden:4d} ({params / 1e6:5.2f}M params): train step fp32 {row['train_step_s']['fp32'] * 1e3:7.1f} ms, "
            f"bf16 {row['train_step_s']['bf16'] * 1e3:7.1f} ms -> bf16 {row['train_bf16_speedup']:.2f}x{g}",
            flush=True,
        )
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"hardware": describe_hardware(), "threads": torch.get_num_threads(), "args": vars(args), "rows": rows}
    (OUT / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {OUT / 'precision.json'}")


if __name__ == "__main__":
    main()
