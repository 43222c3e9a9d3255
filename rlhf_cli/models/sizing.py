"""What `auto` means when pre-training a fresh model on a text: settings chosen from the text and the time budget.

The `text` recipe leaves five choices to the stage: `model.size`, `tokenizer.train.vocab_size`, `pretrain.block_size`,
`pretrain.training.per_device_train_batch_size` and `pretrain.training.learning_rate` are `auto`. The pretrain stage
calls `plan()` once (the main process; the others take its plan), prints what it chose and why in its first lines, and
keeps the plan in `pretrain/plan.json` (a resumed run reuses it; `pretrain/eval.json["plan"]` repeats it). A number in
the recipe overrides any one choice; the others still follow.

    vocabulary      from the training text's size: one entry per BYTES_PER_VOCAB_ENTRY bytes, a power of two in
                    [512, 8192]: a short text cannot teach a large vocabulary's rare tokens
    block, batch    from the text's structure: the 75th-percentile paragraph (blank-line separated; four-line groups in
                    text without blank lines) in tokens, a power of two in [64, 256]; TOKENS_PER_STEP a step
    model           from the budget and this machine: a throughput probe of the widths (a few real training steps
                    each, in the precision the rule picks for its size), then the widest the budget trains on at least
                    TOKENS_PER_PARAMETER tokens per non-embedding parameter (the compute-optimal idea, its ratio
                    measured on 2-core CPUs at 60 s rather than Chinchilla's 20, which is for far larger runs)
    learning rate   from the width: LR_AT_128 at 128 wide, x (128 / width) ** 0.5

Measured with `python -m bench.pretrain_text` and its ablations (bench/README.md); the figures are beside each constant.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_cli.models.modeling import (
    VocabSize,
    attention,
    count_parameters,
    inference_device,
    model_config,
    model_dimensions,
)
from rlhf_cli.runtime import precision
from rlhf_cli.runtime.files import write_text_atomic

AUTO = "auto"
# Widths tried, narrowest first; 4 layers, heads of 32 (nanoGPT's CPU size is the 128 rung).
WIDTHS = (64, 96, 128, 160, 192, 256, 320, 384, 512)
LAYERS, HEAD_DIM = 4, 32
# On the play in 60 s (seed 0): 96 wide 3.286 bits/byte (1.8 tokens per non-embedding parameter), 128 wide 3.255 (0.8),
# 192 wide 3.330 (0.2); the threshold sits between the best and the next wider.
TOKENS_PER_PARAMETER = 0.4
TOKENS_PER_STEP = 512  # the recipe's earlier 8 blocks of 64; at 512 a step, block 64 and 128 gave 1.993 / 2.002 (novel)
# The play (0.21 MB): 512 / 1024 / 2048 entries 3.329 / 3.255 / 3.279 bits/byte; code (0.88 MB): 4096 1.896, 2048 1.986
BYTES_PER_VOCAB_ENTRY = 200
LR_AT_128 = 2e-3  # War and Peace, 60 s, 128 wide: 2e-3 1.948 bits/byte, 3e-3 2.025; the play: 3e-3 worse (3.307)
PROBE_SECONDS = 0.6  # per width, after two warm-up steps


@dataclass
class Plan:
    """The settings `auto` resolved to, and a reason for each, in words."""

    vocab_size: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    block_size: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    probe: list[dict] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


# ------------------------------------------------------------------------------------------------------ the choices


def choose_vocab(train_bytes: int) -> tuple[int, str]:
    """A byte-level BPE vocabulary for a text of `train_bytes` bytes: one entry per BYTES_PER_VOCAB_ENTRY bytes."""
    raw = train_bytes / BYTES_PER_VOCAB_ENTRY
    vocab = int(min(8192, max(512, 2 ** round(math.log2(max(raw, 1))))))
    return vocab, f"{train_bytes / 1e6:.2g} MB of training text: ~1 entry per {BYTES_PER_VOCAB_ENTRY} bytes"


def paragraph_bytes(texts) -> list[int]:
    """Bytes of each paragraph (text between blank lines) of `texts`; lines stand in where a text has no blank lines."""
    out = []
    for text in texts:
        parts = [p for p in text.split("\n\n") if p.strip()]
        if len(parts) <= 1:  # no paragraphs: groups of four lines
            lines = text.splitlines()
            parts = ["\n".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
        out += [len(p.encode("utf-8")) + 2 for p in parts]
    return out


def choose_block(sizes: list[int], bytes_per_token: float) -> tuple[int, str]:
    """A block that holds the text's typical unit: the 75th-percentile paragraph, in tokens, as a power of two."""
    if not sizes:
        return 64, "no paragraphs to measure: 64"
    unit = statistics.quantiles(sizes, n=4)[-1] if len(sizes) > 1 else sizes[0]
    tokens = unit / max(bytes_per_token, 1.0)
    block = int(min(256, max(64, 2 ** math.ceil(math.log2(max(tokens, 1))))))
    return block, f"3 in 4 paragraphs hold at most {unit:,.0f} bytes, ~{tokens:.0f} tokens"


def learning_rate(hidden: int) -> tuple[float, str]:
    lr = float(f"{LR_AT_128 * (128 / hidden) ** 0.5:.2g}")
    return lr, f"{LR_AT_128:g} at 128 wide, x (128 / {hidden}) ** 0.5"


def dimensions(hidden: int) -> dict[str, int]:
    return {"hidden_size": hidden, "num_layers": LAYERS, "num_heads": max(1, hidden // HEAD_DIM)}


def non_embedding_parameters(hidden: int) -> int:
    """A Llama block's matrices (attention 4h², SwiGLU 3·h·inter with inter ~8h/3), times the layers."""
    inter = int(8 * hidden / 3 / 16 + 1) * 16
    return LAYERS * (4 * hidden * hidden + 3 * hidden * inter)


def choose_width(rates: dict[int, float], seconds: float) -> tuple[int, str]:
    """The widest of `rates` ({width: measured tokens/s}) whose budget gives TOKENS_PER_PARAMETER tokens a parameter."""
    fits = [w for w, r in rates.items() if r * seconds >= TOKENS_PER_PARAMETER * non_embedding_parameters(w)]
    width = max(fits) if fits else min(rates)
    tokens = rates[width] * seconds
    per = tokens / non_embedding_parameters(width)
    return width, (
        f"{seconds:g} s at {rates[width]:,.0f} tokens/s here trains {width} wide on ~{tokens / 1e6:.2g}M tokens, "
        f"{per:.2g} per non-embedding parameter (the widest with at least {TOKENS_PER_PARAMETER:g})"
    )


# ------------------------------------------------------------------------------------------------------ the probe


def measure_rate(model_spec, vocab: int, block: int, batch: int, precision_setting: str, training: dict) -> dict:
    """Training tokens/s of a fresh model of `model_spec`'s dimensions on this machine: a few real steps (forward,
    backward, AdamW) on random tokens, in the precision the rule picks for its size; two warm-up steps not counted."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    device = inference_device()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        model_config(model_spec, VocabSize(vocab)), attn_implementation=attention(model_spec.attn_implementation)
    ).to(device)
    chosen = precision.for_training(count_parameters(model), precision_setting, training)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if chosen.bf16 else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, block), device=device)
    steps, start = 0, None
    while True:
        with cast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps += 1
        if steps == 2:
            start = time.perf_counter()
        elif steps > 2 and time.perf_counter() - start >= PROBE_SECONDS:
            break
    rate = (steps - 2) * batch * block / (time.perf_counter() - start)
    return {"width": model_spec.hidden_size, "tokens_per_s": round(rate), "precision": chosen.name}


# ------------------------------------------------------------------------------------------------------ the plan


def auto_keys(recipe) -> list[str]:
    """The recipe's settings left to the plan."""
    spec, training = recipe.pretrain, recipe.pretrain.training
    keys = []
    if recipe.model.size == AUTO and not spec.init_from:
        keys.append("model.size")
    train = recipe.tokenizer.train
    if train is not None and train.vocab_size == AUTO and not (recipe.tokenizer.from_ or spec.init_from):
        keys.append("tokenizer.train.vocab_size")
    if spec.block_size == AUTO:
        keys.append("pretrain.block_size")
    keys += [
        f"pretrain.training.{k}" for k in ("per_device_train_batch_size", "learning_rate") if training.get(k) == AUTO
    ]
    return keys


def sample_texts(docs, max_bytes: int = 2_000_000) -> tuple[list[str], int, bool]:
    """(the head of `docs`, up to `max_bytes`; its bytes; whether that was all of them)."""
    texts, size = [], 0
    for row in docs:
        if size >= max_bytes:
            return texts, size, False
        texts.append(row["text"])
        size += len(row["text"].encode("utf-8"))
    return texts, size, True


def plan(recipe, docs, tokenizer_for, model_width=None) -> tuple[Plan, object]:
    """Resolve the recipe's `auto` settings for pre-training on `docs` (auto_keys): (the plan, the tokenizer).

    `tokenizer_for(vocab_size)` trains or loads the tokenizer; `model_width` is a loaded model's width (init_from)."""
    keys, out = auto_keys(recipe), Plan()
    texts, size, whole = sample_texts(docs)
    if "tokenizer.train.vocab_size" in keys:
        if not whole:  # a corpus past the sample is at least that large: the largest vocabulary the rule gives
            size = max(size, 8192 * BYTES_PER_VOCAB_ENTRY)
        out.vocab_size, out.reasons["vocabulary"] = choose_vocab(size)
    tokenizer = tokenizer_for(out.vocab_size)
    training = recipe.pretrain.training
    block = recipe.pretrain.block_size
    if "pretrain.block_size" in keys:
        head = "".join(texts)[:200_000]
        bytes_per_token = len(head.encode("utf-8")) / max(1, len(tokenizer(head)["input_ids"]))
        block, out.reasons["block size"] = choose_block(paragraph_bytes(texts), bytes_per_token)
        out.block_size = block
    batch = training.get("per_device_train_batch_size", 8)
    if batch == AUTO:
        batch = out.batch_size = max(1, TOKENS_PER_STEP // block)
        out.reasons["batch"] = f"{TOKENS_PER_STEP} tokens a step in {block}-token blocks"
    width = model_width
    if width is None and recipe.model.size != AUTO:  # a fresh model the recipe sizes itself
        width = model_dimensions(recipe.model)["hidden_size"]
    if "model.size" in keys:
        seconds, steps = training.get("max_time"), training.get("max_steps")
        rates = {}
        for w in WIDTHS:  # narrowest first; stop at the first width the budget cannot train well
            spec = recipe.model.model_copy(update={"size": "tiny", **dimensions(w), "intermediate_size": None})
            if seconds:
                probe = measure_rate(spec, len(tokenizer), block, batch, recipe.precision, training)
                out.probe.append(probe)
                rates[w] = probe["tokens_per_s"]
            else:  # a step budget: the tokens are known without measuring
                rates[w] = (steps or 1000) * batch * block
            if rates[w] * (seconds or 1) < TOKENS_PER_PARAMETER * non_embedding_parameters(w):
                break
        width, out.reasons["model"] = choose_width(rates, seconds or 1)
        out.hidden_size, out.num_layers, out.num_heads = dimensions(width).values()
    if training.get("learning_rate") == AUTO:
        out.learning_rate, out.reasons["learning rate"] = learning_rate(width)
    return out, tokenizer


def apply(recipe, p: Plan):
    """The recipe with the plan's choices in place of `auto`."""
    update = {}
    if p.hidden_size:
        dims = {"hidden_size": p.hidden_size, "num_layers": p.num_layers, "num_heads": p.num_heads}
        update["model"] = recipe.model.model_copy(update={"size": "tiny", "intermediate_size": None, **dims})
    if p.vocab_size:
        train = recipe.tokenizer.train.model_copy(update={"vocab_size": p.vocab_size})
        update["tokenizer"] = recipe.tokenizer.model_copy(update={"train": train})
    training = dict(recipe.pretrain.training)
    if p.batch_size:
        training["per_device_train_batch_size"] = p.batch_size
    if p.learning_rate:
        training["learning_rate"] = p.learning_rate
    pretrain = {"training": training, **({"block_size": p.block_size} if p.block_size else {})}
    update["pretrain"] = recipe.pretrain.model_copy(update=pretrain)
    return recipe.model_copy(update=update)


def describe(p: Plan) -> list[str]:
    """The plan in words, one line per choice (the stage prints them first)."""
    said = {
        "vocabulary": f"vocabulary {p.vocab_size}",
        "block size": f"block {p.block_size} tokens",
        "batch": f"batch {p.batch_size} blocks",
        "model": f"model {p.hidden_size} wide x {p.num_layers} layers ({p.num_heads} heads)",
        "learning rate": f"learning rate {p.learning_rate:g}" if p.learning_rate else "",
    }
    return [f"auto: {said[k]} - {why}" for k, why in p.reasons.items()]


def largest(recipe) -> Plan:
    """The largest settings `auto` can choose (what `rlhf check` measures memory at, before the text is planned)."""
    keys, out = auto_keys(recipe), Plan()
    if "tokenizer.train.vocab_size" in keys:
        out.vocab_size = 8192
    if "pretrain.block_size" in keys:
        out.block_size = 256
    if "pretrain.training.per_device_train_batch_size" in keys:
        out.batch_size = TOKENS_PER_STEP // 64
    if "model.size" in keys:
        out.hidden_size, out.num_layers, out.num_heads = dimensions(WIDTHS[-1]).values()
    if "pretrain.training.learning_rate" in keys:
        out.learning_rate = learning_rate(WIDTHS[0])[0]
    return out
