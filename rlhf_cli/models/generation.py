"""Batched answer generation through the chat template — the one place sampling, evaluation, PPO rollouts, chat and the
pretrain probes generate text (`generate` is the only call of `model.generate`).

Prompts are conversations (lists of {"role", "content"}); they are rendered with the tokenizer's chat template and a
generation prompt, left-padded into batches and generated with the KV cache. Generation stops at the end of an assistant turn as the
chat template writes it (`modeling.end_of_turn_ids`: Qwen's <|im_end|>, Llama 3's <|eot_id|>, or eos); an answer is cut
there, and `finished` records whether the model ended its turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_cli.models.modeling import end_of_turn_ids
from rlhf_cli.runtime import precision as precisions
from rlhf_cli.runtime.distributed import is_main_process
from rlhf_cli.runtime.errors import UserError


@dataclass
class Answer:
    text: str
    finished: bool
    num_tokens: int


def render_prompts(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation followed by the assistant's generation prompt."""
    out = []
    for messages in prompts:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        out.append(list(enc["input_ids"]))
    return out


def check_prompts_fit(tokenizer, model, prompts: list[list[dict]], new_tokens: int, stage: str, setting: str) -> None:
    """A UserError when a rendered prompt plus `new_tokens` generated tokens exceeds the model's context."""

    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        return
    lengths = [len(ids) for ids in render_prompts(tokenizer, prompts)]
    too_long = sum(n + new_tokens > context for n in lengths)
    if too_long:
        raise UserError(
            f"{stage}: {too_long} of {len(lengths)} prompts plus {setting}={new_tokens} exceed the model's context of "
            f"{context} tokens (longest prompt {max(lengths)} tokens); shorten or drop those prompts, or lower {setting}."
        )


def left_pad(rows: list[list[int]], pad_id: int):
    """A left-padded batch (input_ids, attention_mask): decoder-only models generate from the right edge."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def cut_at_eos(tokens: list[int], stop_ids) -> tuple[list[int], bool]:
    """The answer's tokens up to (not including) the first end of turn (any of `stop_ids`, or the one id given), and
    whether there was one."""
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i], True
    return tokens, False


def generate(
    model, ids, mask, *, max_new_tokens: int, temperature: float, eos_token_id, pad_token_id, top_p=1.0, **extra
):
    """`model.generate` on a left-padded batch with the KV cache: sampling at `temperature` (top-k off, nucleus `top_p`)
    or greedy at 0. `extra` passes generate's own options (num_return_sequences, streamer, suppress_tokens, ...)."""
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        **sampling,
        **extra,
    )


def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    *,
    num_return_sequences: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int | None = None,
    progress: str | None = None,
    precision: str = "auto",
) -> list[list[Answer]]:
    """`num_return_sequences` answers for each prompt (temperature 0 = greedy), batched, with an optional progress bar;
    `precision` is the recipe's setting (rlhf_cli.runtime.precision)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rendered = render_prompts(tokenizer, prompts)
    eos_id, pad_id = end_of_turn_ids(tokenizer), tokenizer.pad_token_id
    results: list[list[Answer]] = []
    per_batch = max(1, batch_size // num_return_sequences)
    bar = _progress(progress, len(prompts))
    try:
        for start in range(0, len(rendered), per_batch):
            ids, mask = left_pad(rendered[start : start + per_batch], pad_id)
            with torch.no_grad(), precisions.inference(model, precision):
                out = generate(
                    model,
                    ids.to(device),
                    mask.to(device),
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                    num_return_sequences=num_return_sequences,
                )
            new = out[:, ids.shape[1] :].tolist()
            for i in range(0, len(new), num_return_sequences):
                group = []
                for seq in new[i : i + num_return_sequences]:
                    tokens, finished = cut_at_eos(seq, eos_id)
                    group.append(
                        Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), finished, len(tokens))
                    )
                results.append(group)
            if bar:
                bar[0].update(bar[1], advance=min(per_batch, len(rendered) - start))
    finally:
        if bar:
            bar[0].stop()
        model.train(was_training)
    return results


def _progress(label: str | None, total: int):
    if not label or not is_main_process():  # every process may generate (sharded models); one bar
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    task = prog.add_task(label, total=total)
    prog.start()
    return prog, task
