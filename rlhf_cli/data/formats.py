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

Tables (`read_table`): a `.txt` file (one row per blank-line-separated block), a folder of `.txt` files (one row per file),
`.jsonl` / `.json` / `.parquet` / `.csv`, a `save_to_disk` folder, any other folder `datasets.load_dataset` reads, hub ids.

Rules worth knowing:
- a ranking of K responses becomes its K*(K-1)/2 (chosen, rejected) pairs, better first (`expand_rankings`);
  with `scores`, tied responses give no pair and the margin of a pair is the score difference;
- every reward row has a `group`: a stable 63-bit hash of its prompt, so one prompt's pairs share it in any file;
- SFT conversations lose trailing non-assistant turns (nothing to learn from them).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_cli import hub as hf_hub
from rlhf_cli.data.toy import toy_files
from rlhf_cli.errors import UserError

STAGES = ("pretrain", "sft", "reward", "ppo")
ROLES = ("system", "user", "assistant")
TEXT_COLUMNS = ("text", "content", "document", "body", "article")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant",
    "system": "system",
}  # fmt: skip
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
STREAMING_EVAL_ROWS = 256  # eval rows taken from the head of a streamed set without max_examples
TOY_KEYS = {"pretrain": "pretrain", "sft": "sft", "ppo": "prompts"}
_SPEC_FIELDS = {
    "toy": False, "path": None, "hub": None, "config": None, "split": "train", "streaming": False, "format": None,
    "text_column": None, "eval_path": None, "eval_split": None, "eval_fraction": 0.05, "max_examples": None,
}  # fmt: skip


class BadRow(ValueError):
    """One row does not fit the format it was detected as; the caller adds the file and row index."""


# ---------------------------------------------------------------------------------------------------------- reading


def read_table(path=None, hub=None, config=None, split="train", streaming=False):
    """Raw rows from a local path or a hub id, as a `datasets.Dataset` (or `IterableDataset` when streaming).

    Raises UserError for a missing path, a non-UTF-8 text file, an unreadable file, a missing split, or no rows
    (a streamed set is checked for emptiness by `load_stage_data`, not here).
    """
    import datasets

    if (path is None) == (hub is None):
        raise UserError("Give exactly one data source: data.path (a local file or folder) or data.hub (a hub id).")
    if hub is not None:
        try:
            hf_hub.offline_unless_reachable()
            ds = datasets.load_dataset(hub, config, split=split, streaming=streaming)
        except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError, ConnectionError) as e:
            raise UserError(
                f"Could not load {hub!r} (config {config!r}, split {split!r}): {_cause(e)}. "
                "Check the hub id, data.config and data.split; offline, only local paths and cached sets load."
            ) from e
        return ds if streaming else _not_empty(ds, hub)

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"Data path not found: {p}. Check data.path (a relative path is from the current directory).")
    if p.is_dir():
        ds = _read_folder(p, split, streaming)
    elif p.suffix.lower() == ".txt":
        _no_split(p, split)
        ds = datasets.Dataset.from_dict({"text": _txt_blocks(_read_utf8(p))})
    elif p.suffix.lower() in BUILDERS:
        _check_text_file(p)
        ds = _load(p, BUILDERS[p.suffix.lower()], data_files=str(p), split=split, streaming=streaming)
    else:
        raise UserError(f"{p}: unknown file type {p.suffix!r}; use .txt, .jsonl, .json, .parquet, .csv or a folder.")
    if streaming and isinstance(ds, datasets.Dataset):
        return _not_empty(ds, str(p)).to_iterable_dataset()
    return ds if streaming else _not_empty(ds, str(p))


def _read_folder(p: Path, split: str, streaming: bool):
    import datasets

    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        saved = datasets.load_from_disk(str(p))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise UserError(f"{p} has no split {split!r}; its splits are {sorted(saved)}. Set data.split.")
            return saved[split]
        _no_split(p, split)
        return saved
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.parts))
    tables = [f for f in files if f.suffix.lower() in BUILDERS]
    if tables:
        for f in tables:
            _check_text_file(f)
        return _load(p, None, split=split, streaming=streaming)
    txts = [f for f in files if f.suffix.lower() == ".txt"]
    if not txts:
        raise UserError(f"{p} holds no .txt, .jsonl, .json, .parquet or .csv files and is not a save_to_disk folder.")
    _no_split(p, split)
    texts = [t.strip() for t in (_read_utf8(f) for f in txts)]
    return datasets.Dataset.from_dict({"text": [t for t in texts if t]})


def _load(p: Path, builder: str | None, **kwargs):
    import datasets

    try:
        return datasets.load_dataset(builder or str(p), **kwargs)
    except (datasets.exceptions.DatasetsError, ValueError, StopIteration) as e:
        raise UserError(f"Could not read {p}: {_cause(e)}. Check that it is valid {builder or 'data'}.") from e


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return str(e) or type(e).__name__


def _no_split(p: Path, split: str) -> None:
    if split != "train":
        raise UserError(f"{p} has no splits (asked for {split!r}); use data.eval_path for a separate eval file.")


def _not_empty(ds, source: str):
    if len(ds) == 0:
        raise UserError(f"{source} holds no rows; point the recipe at a data set with data in it.")
    return ds


def _utf8_error(p: Path, e: UnicodeDecodeError, offset: int = 0) -> UserError:
    return UserError(
        f"{p} is not UTF-8 text (bad byte at offset {offset + e.start}); convert it, for example "
        f"`iconv -f latin1 -t utf-8 {p} > {p.with_suffix('.utf8' + p.suffix).name}`."
    )


def _read_utf8(p: Path) -> str:
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _utf8_error(p, e) from None
    if not text.strip():
        raise UserError(f"{p} is empty; point the recipe at a file with data in it.")
    return text


def _check_text_file(p: Path) -> None:
    """UTF-8 and not empty, without holding the file in memory (datasets would read Latin-1 JSON silently)."""
    if p.stat().st_size == 0:
        raise UserError(f"{p} is empty; point the recipe at a file with data in it.")
    if p.suffix.lower() not in TEXT_SUFFIXES:
        return
    decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                blank = blank and not decoder.decode(chunk).strip()
            except UnicodeDecodeError as e:
                raise _utf8_error(p, e, offset) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise _utf8_error(p, e, offset) from None
    if blank:
        raise UserError(f"{p} is empty; point the recipe at a file with data in it.")


def _txt_blocks(text: str) -> list[str]:
    blocks = (b.strip() for b in re.split(r"\n[ \t\r\f\v]*\n", text))
    return [b for b in blocks if b]


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
    return [{"prompt": prompt}]


def _ppo_from_sft(convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def from_sft(row: dict) -> list[dict]:
        messages = convert(row)[0]["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last == 0 or messages[last - 1]["role"] != "user":
            raise BadRow("the last assistant turn should follow a user turn (the PPO prompt)")
        return [{"prompt": messages[:last]}]

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


def _features(stage: str):
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
        out: dict[str, list] = {name: [] for name in _features(stage)}
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

    kwargs = {"batched": True, "with_indices": True, "remove_columns": columns, "features": _features(stage)}
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
        return datasets.Dataset.from_list(pairs, features=_features("reward"))
    return pairs


# ----------------------------------------------------------------------------------------------------- stage data


def _get(spec, name: str):
    return getattr(spec, name, _SPEC_FIELDS[name])


def _toy_path(stage: str, part: str, toy_dir: Path | None, seed: int) -> Path:
    if stage not in TOY_KEYS:
        raise UserError(
            "Reward data for the toy world comes from the feedback stage's rankings: run `rlhf label` "
            "(or `rlhf pipeline`) first, or set reward.data.path."
        )
    if toy_dir is None:
        raise ValueError("toy_dir is required when data.toy is true")

    files, key = toy_files(Path(toy_dir), seed), f"{TOY_KEYS[stage]}_{part}"
    return Path(files[key] if key in files else files[f"{key}.jsonl"])  # keys with or without the suffix


def load_stage_data(stage: str, spec, toy_dir: Path | None = None, seed: int = 0):
    """`stage`'s training rows from a data spec, in the stage's normal form.

    A `datasets.Dataset`, or an `IterableDataset` when `spec.streaming` (hub or local). `spec.max_examples` cuts the
    raw rows (before a ranking becomes pairs). With `spec.toy` (pretrain, sft, ppo) the rows come from the toy world's
    train files under `toy_dir`, generated from `seed`.
    """
    if _get(spec, "toy") and not (stage == "reward" and (_get(spec, "path") or _get(spec, "hub"))):
        return _normalised(stage, spec, path=_toy_path(stage, "train", toy_dir, seed), toy=True)
    return _normalised(stage, spec, path=_get(spec, "path"), hub=_get(spec, "hub"), split=_get(spec, "split"))


def _normalised(stage, spec, path=None, hub=None, split="train", toy=False, streaming=None, limit="spec"):
    streaming = (_get(spec, "streaming") and not toy) if streaming is None else streaming
    ds = read_table(path=path, hub=hub, config=None if toy else _get(spec, "config"), split=split, streaming=streaming)
    limit = _get(spec, "max_examples") if limit == "spec" else limit
    if limit is not None:
        ds = ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))
    source = str(path) if hub is None else f"{hub} (split {split})"
    fmt = None if toy else _get(spec, "format")
    out = normalise(ds, stage, source, format=fmt, text_column=None if toy else _get(spec, "text_column"))
    return out if streaming else _not_empty(out, source)


def _n_eval(n: int, fraction: float) -> int:
    """Held-out count: a fraction, at least 1 when there are 2 or more, never all."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def train_eval_split(ds, spec, stage: str, seed: int = 0, toy_dir: Path | None = None):
    """(train, eval) for `stage`: eval from the toy world, `spec.eval_path`, `spec.eval_split`, else a fraction of `ds`.

    The fraction (`spec.eval_fraction`) is the tail for pretrain (of the characters when there are fewer than
    1/fraction documents, so one long file keeps a held-out tail), a seeded random draw for sft/ppo, and whole prompt
    groups for reward (one prompt's pairs never straddle train and eval). At least one eval row (group, for reward)
    when there are two or more. A streamed `ds` gives its head as eval (materialised; ceil-fraction of max_examples,
    else STREAMING_EVAL_ROWS rows) and the rest as train. Eval is always a `datasets.Dataset`.
    """
    import datasets

    streaming = not isinstance(ds, datasets.Dataset)
    if _get(spec, "toy") and stage in TOY_KEYS:
        return ds, _normalised(stage, spec, path=_toy_path(stage, "eval", toy_dir, seed), toy=True, limit=None)
    eval_rows = _stream_eval_rows(spec)
    if _get(spec, "eval_path") or _get(spec, "eval_split"):
        if _get(spec, "eval_path"):
            where = {"path": _get(spec, "eval_path")}
        else:
            where = {"path": _get(spec, "path"), "hub": _get(spec, "hub"), "split": _get(spec, "eval_split")}
        eval_ds = _normalised(stage, spec, **where, limit=eval_rows if streaming else None)
        return ds, _materialise(eval_ds, stage) if streaming else eval_ds
    fraction = _get(spec, "eval_fraction")
    if streaming:
        return _stream_split(ds, stage, eval_rows if fraction > 0 else 0)

    n = len(ds)
    if stage == "pretrain":
        if 0 < n * fraction < 1:  # fewer documents than one held-out row (a novel in one file): cut the text's tail
            return _text_tail_split(ds, fraction)
        k = _n_eval(n, fraction)
        return ds.select(range(n - k)), ds.select(
            list(range(n - k, n))
        )  # a list: datasets refuses an empty range at the end
    rng = random.Random(seed)
    if stage == "reward":
        groups = list(ds["group"]) if "group" in ds.column_names else list(range(n))
        distinct = sorted(set(groups))
        rng.shuffle(distinct)
        held = set(distinct[: _n_eval(len(distinct), fraction)])
        eval_idx = [i for i, g in enumerate(groups) if g in held]
    else:
        order = list(range(n))
        rng.shuffle(order)
        eval_idx = sorted(order[: _n_eval(n, fraction)])
    held_rows = set(eval_idx)
    return ds.select([i for i in range(n) if i not in held_rows]), ds.select(eval_idx)


def _text_tail_split(ds, fraction: float):
    """Pretrain documents -> (train, eval) with the last `fraction` of the characters held out, the document at the
    boundary cut at a whitespace: a corpus of one or a few documents still has a held-out tail."""
    import datasets

    texts = list(ds["text"])
    need = math.ceil(sum(len(t) for t in texts) * fraction)
    held: list[str] = []
    while texts and need > 0:
        last = texts.pop()
        if len(last) <= need:
            held.insert(0, last)
            need -= len(last)
            continue
        cut = len(last) - need
        space = last.rfind(" ", 0, cut + 1)  # start the held-out part at a word, not mid-word
        cut = space if space > 0 else cut
        texts.append(last[:cut].rstrip())
        held.insert(0, last[cut:].lstrip())
        need = 0
    features = _features("pretrain")
    return (
        datasets.Dataset.from_dict({"text": [t for t in texts if t]}, features=features),
        datasets.Dataset.from_dict({"text": [t for t in held if t]}, features=features),
    )


def _stream_eval_rows(spec) -> int:
    limit = _get(spec, "max_examples")
    if not limit:
        return STREAMING_EVAL_ROWS
    return max(1, _n_eval(limit, _get(spec, "eval_fraction")))


def _materialise(ds, stage: str, limit: int | None = None):
    import datasets

    rows = list(ds if limit is None else ds.take(limit))
    return datasets.Dataset.from_list(rows, features=_features(stage))


def _stream_split(ds, stage: str, k: int):
    import datasets

    head, last_group = [], None
    for row in ds:
        if len(head) >= k and (stage != "reward" or row["group"] != last_group):
            break
        head.append(row)
        last_group = row.get("group")
    eval_ds = datasets.Dataset.from_list(head, features=_features(stage))
    train = ds.skip(len(head))
    if stage == "reward" and head:
        held = {r["group"] for r in head}
        train = train.filter(lambda row: row["group"] not in held)
    return train, eval_ds
