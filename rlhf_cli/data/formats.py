"""Every stage's data: read a table, detect its format, normalise it to the stage's normal form, split train/eval.

Normal forms (what each stage's trainer receives):

    pretrain  {"text": str}
    sft       {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}   ends with an assistant turn
    reward    {"prompt": [messages], "chosen": str, "rejected": str, "margin": float, "group": int}
    ppo       {"prompt": [messages]}                                                         ends with a user turn

Accepted formats, detected from the first row's columns in this order (`data.format: NAME` forces one):

    stage     format             columns
    pretrain  text               .txt, or a text column: data.text_column, else text/content/document/body/article,
                                 else the only string column
    sft       messages           messages: [{role, content}]                     (+ system: str)
    sft       sharegpt           conversations: [{from, value}], from: human/gpt/system   (+ system: str)
    sft       alpaca             instruction, output                             (+ input, system)
    sft       prompt_completion  prompt, completion: strings or message lists    (+ system: str)
    reward    rankings           prompt, responses best first                    (+ scores: higher better | ranks: 1 = best)
    reward    hh                 chosen, rejected: whole "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts
    reward    pairs              chosen, rejected: strings or message lists      (+ prompt; + margin | score_chosen, score_rejected)
    ppo       prompt             prompt: string or messages
    ppo       messages, sharegpt, alpaca: an SFT row; the prompt is the history before its last assistant turn

Reading is in `data/read.py`, the stages' data and their train/eval splits in `data/stage_data.py`.

Tables (`read_table`): a `.txt` file (one row, the text as written; `data.paragraphs`: one per blank-line block), a folder of `.txt` files (one row per file),
`.jsonl` / `.json` / `.parquet` / `.csv`, a `save_to_disk` folder, any other folder `datasets.load_dataset` reads, hub ids.

Rules worth knowing:
- a ranking of K responses becomes its K*(K-1)/2 (chosen, rejected) pairs, better first (`expand_rankings`);
  with `scores`, tied responses give no pair and the margin of a pair is the score difference;
- every reward row has a `group`: a stable 63-bit hash of its prompt, so one prompt's pairs share it in any file;
- SFT conversations lose trailing non-assistant turns (nothing to learn from them);
- a prompt (ppo) whose last user turn is empty or only whitespace is refused, naming the file and row;
- preference data whose every pair has the same chosen and rejected answer is refused (it teaches nothing).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlhf_cli.runtime.errors import UserError

STAGES = ("pretrain", "sft", "reward", "ppo")
ROLES = ("system", "user", "assistant")
TEXT_COLUMNS = ("text", "content", "document", "body", "article")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant",
    "system": "system",
}  # fmt: skip


class BadRow(ValueError):
    """One row does not fit the format it was detected as; the caller adds the file and row index."""


# ------------------------------------------------------------------------------------------------- message helpers


def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"{what} should be a non-empty list of {{role, content}} messages, got {_short(value)}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRow(f"{what}[{i}] should be a message with role system/user/assistant, got {_short(m)}")
        if not isinstance(m.get("content"), str):
            raise BadRow(f"{what}[{i}] has no text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _history(value: Any, what: str) -> list[dict]:
    """A prompt: a string is one user turn; a list is messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return _messages(value, what)


def _with_system(messages: list[dict], row: dict) -> list[dict]:
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def _conversation(messages: list[dict], row: dict) -> list[dict]:
    """An SFT conversation: with the row's system prompt, up to its last assistant turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadRow("the conversation has no assistant turn to learn from")
    return _with_system(messages[: last + 1], row)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} should be a string, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def group_id(prompt: list[dict]) -> int:
    """A stable id of a prompt (same prompt, same id, in any file or process): 63 bits of a hash of its messages."""
    key = json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


# ---------------------------------------------------------------------------------------------- per-format converters
# Each converter takes one raw row (a dict) and returns a list of normal-form rows (a ranking gives several).


def _pretrain_text(column: str) -> Callable[[dict], list[dict]]:
    def convert(row: dict) -> list[dict]:
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            return []  # blank documents are skipped
        return [{"text": _text(value, column)}]

    return convert


def _sft_messages(row: dict) -> list[dict]:
    return [{"messages": _conversation(_messages(row["messages"], "messages"), row)}]


def _sft_sharegpt(row: dict) -> list[dict]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"conversations should be a non-empty list of {{from, value}} turns, got {_short(turns)}")
    messages = []
    for i, t in enumerate(turns):
        who = t.get("from", t.get("role")) if isinstance(t, dict) else None
        role = SHAREGPT_ROLES.get(str(who).lower())
        value = t.get("value", t.get("content")) if isinstance(t, dict) else None
        if role is None or not isinstance(value, str):
            raise BadRow(f"conversations[{i}] should be {{from: human/gpt/system, value: text}}, got {_short(t)}")
        messages.append({"role": role, "content": value})
    return [{"messages": _conversation(messages, row)}]


def _sft_alpaca(row: dict) -> list[dict]:
    instruction = _text(row["instruction"], "instruction")
    extra = row.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row["output"], "output")}]
    return [{"messages": _with_system(messages, row)}]


def _sft_prompt_completion(row: dict) -> list[dict]:
    completion = row["completion"]
    if isinstance(completion, str):
        answer = [{"role": "assistant", "content": completion}]
    else:
        answer = _messages(completion, "completion")
    return [{"messages": _conversation(_history(row["prompt"], "prompt") + answer, row)}]


def _margin(row: dict) -> float:
    if row.get("margin") is not None:
        return float(row["margin"])
    if row.get("score_chosen") is not None and row.get("score_rejected") is not None:
        return float(row["score_chosen"]) - float(row["score_rejected"])
    return 0.0


def _pair(prompt: list[dict], chosen: Any, rejected: Any, margin: float) -> dict:
    """A preference pair; message-list answers are split into the shared history (the prompt) and the last turns."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise BadRow("chosen and rejected should both be strings or both be message lists")
    full_chosen = prompt + _messages(chosen, "chosen")
    full_rejected = prompt + _messages(rejected, "rejected")
    for name, full in (("chosen", full_chosen), ("rejected", full_rejected)):
        if full[-1]["role"] != "assistant":
            raise BadRow(f"{name} should end with an assistant turn")
    if full_chosen[:-1] != full_rejected[:-1]:
        raise BadRow("chosen and rejected differ before their last assistant turn; they must share the history")
    return {"prompt": full_chosen[:-1], "chosen": full_chosen[-1]["content"], "rejected": full_rejected[-1]["content"], "margin": margin}  # fmt: skip


def _reward_pairs(row: dict) -> list[dict]:
    prompt = [] if row.get("prompt") is None else _history(row["prompt"], "prompt")
    return [_pair(prompt, row["chosen"], row["rejected"], _margin(row))]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def parse_hh(text: str) -> list[dict]:
    """An Anthropic HH transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") as messages."""
    if not isinstance(text, str):
        raise BadRow(f"an HH transcript should be a string, got {_short(text)}")
    parts = _HH_TURN.split("\n\n" + text.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise BadRow('an HH transcript should start with "Human:" and alternate "Human:" / "Assistant:" turns')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2], strict=True)]


def _reward_hh(row: dict) -> list[dict]:
    return [_pair([], parse_hh(row["chosen"]), parse_hh(row["rejected"]), _margin(row))]


def _reward_rankings(row: dict) -> list[dict]:
    responses = row["responses"]
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise BadRow(f"responses should be a list of at least 2 strings, got {_short(responses)}")
    scores, ranks = row.get("scores"), row.get("ranks")
    if scores is not None and ranks is not None:
        raise BadRow("give scores or ranks, not both")
    if ranks is not None:
        if not isinstance(ranks, list) or sorted(ranks) != list(range(1, len(responses) + 1)):
            raise BadRow(
                f"ranks {_short(ranks)} should hold 1..{len(responses)} once each (1 = best), one per response"
            )
        order = sorted(range(len(responses)), key=lambda i: ranks[i])
    elif scores is not None:
        numbers = isinstance(scores, list) and all(isinstance(s, (int, float)) for s in scores)
        if not numbers or len(scores) != len(responses):
            raise BadRow(f"scores {_short(scores)} should hold one number per response")
        order = sorted(range(len(responses)), key=lambda i: -scores[i])
    else:
        order = list(range(len(responses)))
    ranking = {"prompt": _history(row["prompt"], "prompt"), "responses": [responses[i] for i in order]}
    if scores is not None:
        ranking["scores"] = [float(scores[i]) for i in order]
    return expand_rankings([ranking])


def _ppo_prompt(row: dict) -> list[dict]:
    prompt = _with_system(_history(row["prompt"], "prompt"), row)
    if prompt[-1]["role"] != "user":
        raise BadRow("a PPO prompt should end with a user turn (the answer is what the policy writes)")
    return [{"prompt": _asked(prompt)}]


def _asked(prompt: list[dict]) -> list[dict]:
    """A prompt whose question (its last user turn) is empty or only whitespace is refused: a model would be sampled,
    and people asked to rank its answers, for a question nobody asked."""
    if not prompt[-1]["content"].strip():
        raise BadRow("the prompt is empty (or only whitespace); write the question or remove the row")
    return prompt


def _ppo_from_sft(convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def from_sft(row: dict) -> list[dict]:
        messages = convert(row)[0]["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last == 0 or messages[last - 1]["role"] != "user":
            raise BadRow("the last assistant turn should follow a user turn (the PPO prompt)")
        return [{"prompt": _asked(messages[:last])}]

    return from_sft


# ------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Format:
    name: str
    columns: str  # as told to the user
    required: tuple[str, ...]
    convert: Callable[[dict], list[dict]]
    detect: Callable[[dict], bool] = lambda row: True  # beyond the required columns


def _looks_hh(row: dict) -> bool:
    return "prompt" not in row and isinstance(row.get("chosen"), str) and row["chosen"].lstrip().startswith("Human:")


FORMATS: dict[str, list[Format]] = {
    "sft": [
        Format("messages", "messages: [{role, content}]", ("messages",), _sft_messages),
        Format("sharegpt", "conversations: [{from, value}]", ("conversations",), _sft_sharegpt),
        Format("alpaca", "instruction, input (optional), output", ("instruction", "output"), _sft_alpaca),
        Format("prompt_completion", "prompt + completion (strings or messages)", ("prompt", "completion"), _sft_prompt_completion),
    ],
    "reward": [
        Format("rankings", "prompt + responses best first (+ scores or ranks)", ("prompt", "responses"), _reward_rankings),
        Format("hh", 'chosen/rejected "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts', ("chosen", "rejected"), _reward_hh, _looks_hh),
        Format("pairs", "chosen + rejected (+ prompt; strings or messages)", ("chosen", "rejected"), _reward_pairs),
    ],
    "ppo": [
        Format("prompt", "prompt (string or messages)", ("prompt",), _ppo_prompt),
        Format("messages", "messages: [{role, content}] (prompt = history before the last assistant turn)", ("messages",), _ppo_from_sft(_sft_messages)),
        Format("sharegpt", "conversations: [{from, value}]", ("conversations",), _ppo_from_sft(_sft_sharegpt)),
        Format("alpaca", "instruction, input (optional), output", ("instruction", "output"), _ppo_from_sft(_sft_alpaca)),
    ],
}  # fmt: skip


def _formats(stage: str, row: dict, text_column: str | None) -> list[Format]:
    if stage != "pretrain":
        return FORMATS[stage]
    column = text_column or next((c for c in TEXT_COLUMNS if c in row), None)
    if column is None:
        strings = [c for c, v in row.items() if isinstance(v, str)]
        column = strings[0] if len(strings) == 1 else "text"
    return [Format("text", f"a text column ({text_column or '/'.join(TEXT_COLUMNS)}) or .txt", (column,), _pretrain_text(column))]  # fmt: skip


def stage_features(stage: str):
    import datasets

    messages = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    return datasets.Features(
        {
            "pretrain": {"text": datasets.Value("string")},
            "sft": {"messages": messages},
            "reward": {
                "prompt": messages,
                "chosen": datasets.Value("string"),
                "rejected": datasets.Value("string"),
                "margin": datasets.Value("float64"),
                "group": datasets.Value("int64"),
            },
            "ppo": {"prompt": messages},
        }[stage]
    )


def _reject(source: str, stage: str, index: int, columns: list[str], reason: str, formats: list[Format]) -> UserError:
    accepted = "; ".join(f"{f.name} ({f.columns})" for f in formats)
    return UserError(
        f"{source}: row {index} {reason}. Columns found: {', '.join(columns) or 'none'}. "
        f"Accepted {stage} formats: {accepted}. "
        + (
            "Set data.text_column to the column that holds the text."
            if stage == "pretrain"
            else "Convert the data, or set data.format to force one."
        )
    )


def normalise(ds, stage: str, source: str, format: str | None = None, text_column: str | None = None):
    """A raw `Dataset`/`IterableDataset` in `stage`'s normal form; `format` forces a format by name."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    first = next(iter(ds), None)
    if first is None:
        raise UserError(f"{source} holds no rows; point the recipe at a data set with data in it.")
    columns = list(ds.column_names or first)
    formats = _formats(stage, first, text_column)
    if format is not None:
        forced = [f for f in formats if f.name == format]
        if not forced:
            names = ", ".join(f.name for f in formats)
            raise UserError(f"data.format {format!r} is not a {stage} format; use one of: {names}.")
        candidates = forced
    else:
        candidates = formats
    fmt = next((f for f in candidates if all(c in first for c in f.required) and f.detect(first)), None)
    if fmt is None:
        what = f"does not fit the forced format {format!r}" if format else f"fits no {stage} format"
        raise _reject(source, stage, 0, columns, what, formats)

    def convert_batch(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {name: [] for name in stage_features(stage)}
        for k, index in enumerate(indices):
            row = {c: values[k] for c, values in batch.items()}
            try:
                rows = fmt.convert(row)
            except BadRow as e:
                raise _reject(source, stage, index, columns, f"is not valid {fmt.name} data: {e}", formats) from None
            for r in rows:
                if stage == "reward":
                    r["group"] = group_id(r["prompt"])
                for name in out:
                    out[name].append(r[name])
        return out

    kwargs = {"batched": True, "with_indices": True, "remove_columns": columns, "features": stage_features(stage)}
    if hasattr(ds, "__len__"):
        kwargs["desc"] = f"{stage} data ({fmt.name})"
    return ds.map(convert_batch, **kwargs)


def expand_rankings(rows: Iterable[dict]):
    """Rankings {"prompt", "responses" best first, optional "scores", optional "group"} -> preference pairs.

    K responses give K*(K-1)/2 pairs in order (i < j: responses[i] chosen over responses[j]); each pair carries its
    ranking's "group" (default: `group_id(prompt)`) and margin 0.0, or scores[i] - scores[j] with scores (ties give no
    pair). A `datasets.Dataset` in gives a `Dataset` out; anything else gives a list.
    """
    pairs = []
    for row in rows:
        responses, scores = row["responses"], row.get("scores")
        group = row.get("group")
        group = group_id(row["prompt"]) if group is None else group
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                margin = 0.0 if scores is None else float(scores[i]) - float(scores[j])
                if scores is not None and margin == 0.0:
                    continue
                pair = {"prompt": row["prompt"], "chosen": responses[i], "rejected": responses[j], "margin": margin}
                pairs.append({**pair, "group": group})
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return pairs
    if isinstance(rows, datasets.Dataset):
        return datasets.Dataset.from_list(pairs, features=stage_features("reward"))
    return pairs
