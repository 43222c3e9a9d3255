"""How well a causal LM models held-out text and knows its facts: loss, perplexity, bits per byte (on the UTF-8 bytes
the scored tokens stand for, so any tokenizer compares), the toy world's completion probes, and the parameters a token's
matmuls touch (for MFU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.models.generation import generate, left_pad


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood (nats) over the UTF-8 bytes it covers, in bits per byte (tokenizer-independent)."""
    return total_nll_nats / math.log(2) / n_bytes


def token_byte_lengths(tokenizer) -> list[int] | None:
    """UTF-8 bytes each token id stands for (special tokens: 0), for byte-level BPE tokenizers; None for others."""
    from tokenizers import decoders

    if not isinstance(getattr(tokenizer.backend_tokenizer, "decoder", None), decoders.ByteLevel):
        return None
    # GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    to_byte = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(extra)}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    lengths = [0] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i not in special and i < len(lengths):
            lengths[i] = len(token.encode()) if any(c not in to_byte for c in token) else len(token)
    return lengths


def target_bytes(tokenizer, blocks: list[list[int]], lengths: list[int] | None = None) -> int:
    """UTF-8 bytes of exactly the text the scored tokens (each block's tokens after its first) decode to."""
    if lengths is not None:
        return sum(lengths[t] for ids in blocks for t in ids[1:])
    return sum(len(tokenizer.decode(ids[1:], skip_special_tokens=True).encode()) for ids in blocks)


def evaluate_lm(model, tokenizer, blocks: list[list[int]], batch_size: int = 16) -> dict:
    """Held-out loss (per token), perplexity and bits per byte of `model` (on its own device) on packed blocks."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    nll, tokens = 0.0, 0
    ordered = sorted(blocks, key=len)
    with torch.no_grad():
        for i in range(0, len(ordered), batch_size):
            group = [b for b in ordered[i : i + batch_size] if len(b) > 1]
            for length in sorted({len(b) for b in group}):
                ids = torch.tensor([b for b in group if len(b) == length], device=device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                nll += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
                ).item()
                tokens += ids[:, 1:].numel()
    model.train()
    n_bytes = target_bytes(tokenizer, blocks, token_byte_lengths(tokenizer))
    if tokens == 0 or n_bytes == 0:  # no held-out text (eval_fraction 0)
        return {
            "loss": float("nan"),
            "perplexity": float("nan"),
            "bits_per_byte": float("nan"),
            "eval_tokens": 0,
            "eval_bytes": 0,
        }
    loss = nll / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "eval_tokens": tokens,
        "eval_bytes": n_bytes,
    }


def probe_accuracy(model, tokenizer, probes_path: Path, max_new_tokens: int = 4, batch_size: int = 96) -> float:
    """Share of the toy world's completion probes ("the fox eats" -> "berries") the model continues right, greedily."""
    import torch

    probes = [json.loads(line) for line in Path(probes_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    device = next(model.parameters()).device
    model.eval()
    right = 0
    for i in range(0, len(probes), batch_size):
        batch = probes[i : i + batch_size]
        rows = [[tokenizer.eos_token_id, *tokenizer(p["prefix"], add_special_tokens=False)["input_ids"]] for p in batch]
        ids, mask = left_pad(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            out = generate(
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                temperature=0.0,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        for p, new in zip(batch, out[:, ids.shape[1] :].tolist(), strict=True):
            completion = tokenizer.decode(new, skip_special_tokens=True)
            right += ToyWorld.probe_accuracy_item(p["prefix"], p["answer"], completion)
    model.train()
    return right / max(len(probes), 1)


def matmul_parameters(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embeddings (a tied output head counts)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    positions = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's learned positions: a lookup too
    return total - (0 if tied else embed.numel()) - (positions.weight.numel() if positions is not None else 0)
