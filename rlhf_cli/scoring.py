"""The one reward-scoring path: a reward model (one scalar per conversation) scores prompt + answer rendered with the
chat template, the answer's end-of-text included, read at the last token, kept from the right to `max_length`. Used by
the reward stage's training and evaluation, `rlhf reward inspect`, PPO's rewards and `rlhf eval`."""

from __future__ import annotations

import json
import random
import statistics

from rlhf_cli import precision as precisions
from rlhf_cli.errors import UserError
from rlhf_cli.modeling import attention
from rlhf_cli.stats import proportion

STATS_ANSWERS = 1024  # training answers scored for reward_stats.json


def encode(tokenizer, prompt: list[dict], answer: str, max_length: int | None = None) -> list[int]:
    """Token ids of prompt + answer through the chat template (answer's end-of-text included), kept from the right."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return ids[-max_length:] if max_length else ids  # the score is read at the end; cut the oldest context


def count_cut(tokenizer, pairs, max_length: int) -> tuple[int, int]:
    """(pairs with an answer longer than `max_length` tokens with its prompt, pairs counted): `encode` keeps such a
    conversation's last `max_length` tokens, so its start is lost. Each distinct (prompt, answer) is counted once; a
    streamed data set is not read ahead of training: (0, 0)."""
    import datasets

    if not isinstance(pairs, datasets.Dataset):
        return 0, 0
    lengths: dict[tuple[str, str], int] = {}
    cut = 0
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], strict=True):
        key = json.dumps(prompt)
        longest = 0
        for text in (chosen, rejected):
            if (key, text) not in lengths:
                lengths[(key, text)] = len(encode(tokenizer, prompt, text))
            longest = max(longest, lengths[(key, text)])
        cut += longest > max_length
    return cut, len(pairs)


def score(
    model,
    tokenizer,
    prompts: list[list[dict]],
    answers: list[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    precision: str = "auto",
) -> list[float]:
    """The reward model's score of each (prompt, answer), batched (longest first, right padding); `precision` is the
    recipe's setting (rlhf_cli.precision)."""
    import torch
    from trl.trainer.utils import pad

    rows = [encode(tokenizer, p, a, max_length) for p, a in zip(prompts, answers, strict=True)]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    with torch.no_grad(), precisions.inference(model, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [torch.tensor(rows[i]) for i in idx]
            ids = pad(seqs, padding_value=tokenizer.pad_token_id, padding_side="right")
            mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right")
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
            for i, value in zip(idx, logits.float().tolist(), strict=True):
                out[i] = value
    model.train(was_training)
    return out


def load_reward_model(
    ref: str, tokenizer, *, trust_remote_code: bool = False, dtype: str = "float32", attn_implementation: str = "auto"
):
    """A sequence-classification model with one output (a fresh head when `ref` is a causal LM), pad id set; fp32
    weights unless `dtype` asks otherwise (a frozen scorer: `modeling.frozen_dtype`), whatever the checkpoint's."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    try:
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(
                ref,
                num_labels=1,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                dtype=getattr(torch, dtype),
                attn_implementation=attention(attn_implementation),
            )
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load a reward model from '{ref}': {str(err).splitlines()[0]}") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model


def score_pairs(model, tokenizer, pairs, max_length: int, precision: str = "auto") -> tuple[list[float], list[float]]:
    """Scores of each pair's chosen and rejected answer (each distinct (prompt, answer) scored once)."""
    keys = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            keys.setdefault((json.dumps(row["prompt"]), text), (row["prompt"], text))
    values = score(
        model,
        tokenizer,
        [p for p, _ in keys.values()],
        [a for _, a in keys.values()],
        max_length=max_length,
        precision=precision,
    )
    table = dict(zip(keys, values, strict=True))
    chosen = [table[(json.dumps(r["prompt"]), r["chosen"])] for r in pairs]
    rejected = [table[(json.dumps(r["prompt"]), r["rejected"])] for r in pairs]
    return chosen, rejected


def pair_metrics(model, tokenizer, pairs, max_length: int, precision: str = "auto") -> dict:
    """Pairwise accuracy ({mean, low, high, n}: a 95 % Wilson interval) and mean margin r_chosen - r_rejected on `pairs`."""
    pairs = [r for r in pairs if r["chosen"] != r["rejected"]]
    chosen, rejected = score_pairs(model, tokenizer, pairs, max_length, precision)
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    return {
        "accuracy": proportion(right, len(pairs)),
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs)),
    }


def score_stats(
    model, tokenizer, pairs, max_length: int, *, source: str, limit: int = STATS_ANSWERS, precision: str = "auto"
) -> dict:
    """Mean and standard deviation of the scores of (up to `limit`) distinct answers in `pairs`."""
    seen = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            seen.setdefault((json.dumps(row["prompt"]), text), (row["prompt"], text))
    items = list(seen.values())
    random.Random(0).shuffle(items)
    items = items[:limit]
    values = score(
        model, tokenizer, [p for p, _ in items], [a for _, a in items], max_length=max_length, precision=precision
    )
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 1.0,
        "n": len(values),
        "source": source,
    }
