"""The one reward-scoring path: a reward model (one scalar per conversation) scores prompt + answer rendered with the
chat template, the answer's end-of-text included, read at the last token, kept from the right to `max_length`. Used by
the reward stage's training and evaluation, `rlhf reward inspect`, PPO's rewards and `rlhf eval`."""

from __future__ import annotations

import json
import random
import statistics

from rlhf_cli.evaluation.stats import pearson, proportion
from rlhf_cli.models.modeling import attention
from rlhf_cli.runtime import precision as precisions
from rlhf_cli.runtime.errors import UserError

STATS_ANSWERS = 1024  # training answers scored for reward_stats.json
LENGTH_ALARM = 0.5  # |correlation(score, answer length)| at which a reward model is suspected of rewarding length


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
    recipe's setting (rlhf_cli.runtime.precision)."""
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


def pair_metrics(
    model, tokenizer, pairs, max_length: int, precision: str = "auto", *, with_length: bool = False
) -> dict:
    """Pairwise accuracy ({mean, low, high, n}: a 95 % Wilson interval) and mean margin r_chosen - r_rejected on `pairs`;
    `with_length`: also how the scores follow answer length (`length_preference`, under "length")."""
    pairs = [r for r in pairs if r["chosen"] != r["rejected"]]
    chosen, rejected = score_pairs(model, tokenizer, pairs, max_length, precision)
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    out = {
        "accuracy": proportion(right, len(pairs)),
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs)),
    }
    if with_length and pairs:
        out["length"] = length_preference(pairs, chosen, rejected, answer_tokens(tokenizer, pairs))
    return out


def answer_tokens(tokenizer, pairs) -> dict[str, int]:
    """{answer text: its length in tokens} over every chosen and rejected answer of `pairs`."""
    n_tokens: dict[str, int] = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            n_tokens.setdefault(text, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return n_tokens


def length_preference(pairs, chosen: list[float], rejected: list[float], n_tokens: dict[str, int]) -> dict:
    """How a reward model's scores follow answer length on `pairs`: the correlation of score with length over the
    distinct answers, how often it prefers the longer answer of a pair and how often the data's chosen one is the
    longer, and the alarm (|correlation| >= LENGTH_ALARM)."""
    diffs = [n_tokens[r["chosen"]] - n_tokens[r["rejected"]] for r in pairs]
    answers = {}
    for row, c, r in zip(pairs, chosen, rejected, strict=True):
        answers[(str(row["prompt"]), row["chosen"])] = (c, n_tokens[row["chosen"]])
        answers[(str(row["prompt"]), row["rejected"])] = (r, n_tokens[row["rejected"]])
    corr = pearson([s for s, _ in answers.values()], [n for _, n in answers.values()])
    longer = [(c > r) == (d > 0) for c, r, d in zip(chosen, rejected, diffs, strict=True) if d != 0]
    return {
        "length_correlation": corr,
        "prefers_longer": sum(longer) / max(1, len(longer)),
        "chosen_longer_in_data": sum(d > 0 for d in diffs) / max(1, sum(d != 0 for d in diffs)),
        "length_alarm": abs(corr) >= LENGTH_ALARM,
    }


def length_caution(length: dict) -> str | None:
    """The one sentence every view of a reward model (`rlhf reward inspect`, the reward stage, the report and the
    pipeline's summary) gives when its scores follow answer length: None when they do not."""
    if not length or not length.get("length_alarm"):
        return None
    corr = length["length_correlation"]
    longer = corr > 0  # which way the score goes; the shares below are of the pairs' answer that way
    word = "longer" if longer else "shorter"
    model = length["prefers_longer"] if longer else 1 - length["prefers_longer"]
    data = length["chosen_longer_in_data"] if longer else 1 - length["chosen_longer_in_data"]
    text = (
        f"the reward model's score {'rises' if longer else 'falls'} with answer length (correlation {corr:+.2f}, "
        f"|r| >= {LENGTH_ALARM}): it prefers the {word} answer in {model:.0%} of held-out pairs"
    )
    if model > data + 0.1:
        return f"{text}, more often than the raters chose it ({data:.0%}) - it may reward length itself"
    if model < data - 0.1:
        return f"{text}, less often than the raters chose it ({data:.0%}); PPO may still learn length from it"
    # the raters' own choices carry length: quality and length go together in this data
    return (
        f"{text}, about as often as the raters chose the {word} one ({data:.0%}) - length and what raters value "
        "go together in this data, so PPO may learn length with it; compare the models' mean length"
    )


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
