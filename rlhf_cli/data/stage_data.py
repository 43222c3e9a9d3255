"""A stage's data as its trainer receives it: the recipe's `data:` spec (a file, a folder, a hub id, or the toy world)
read, normalised to the stage's normal form (`data/formats.py`) and split into training and held-out rows (by prompt
group for the reward model, the tail of the text for pre-training)."""

from __future__ import annotations

import math
import random
from pathlib import Path

from rlhf_cli.data.formats import normalise, stage_features
from rlhf_cli.data.read import not_empty, read_table
from rlhf_cli.data.toy import toy_files
from rlhf_cli.runtime.errors import UserError

STREAMING_EVAL_ROWS = 256  # eval rows taken from the head of a streamed set without max_examples
TOY_KEYS = {"pretrain": "pretrain", "sft": "sft", "ppo": "prompts"}
_SPEC_FIELDS = {
    "toy": False, "path": None, "hub": None, "config": None, "split": "train", "streaming": False, "format": None,
    "text_column": None, "eval_path": None, "eval_split": None, "eval_fraction": 0.05, "max_examples": None,
    "paragraphs": False,
}  # fmt: skip


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
    config, paragraphs = (None, False) if toy else (_get(spec, "config"), bool(_get(spec, "paragraphs")))
    ds = read_table(path=path, hub=hub, config=config, split=split, streaming=streaming, paragraphs=paragraphs)
    limit = _get(spec, "max_examples") if limit == "spec" else limit
    if limit is not None:
        ds = ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))
    source = str(path) if hub is None else f"{hub} (split {split})"
    fmt = None if toy else _get(spec, "format")
    out = normalise(ds, stage, source, format=fmt, text_column=None if toy else _get(spec, "text_column"))
    if streaming:
        return out
    out = not_empty(out, source)
    if stage == "reward" and all(c == r for c, r in zip(out["chosen"], out["rejected"], strict=True)):
        raise UserError(
            f"{source}: every one of its {len(out)} preference pairs has the same chosen and rejected answer, which "
            "teaches a reward model nothing; rank different answers (or check which columns hold them)."
        )
    return out


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
    features = stage_features("pretrain")
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
    return datasets.Dataset.from_list(rows, features=stage_features(stage))


def _stream_split(ds, stage: str, k: int):
    import datasets

    head, last_group = [], None
    for row in ds:
        if len(head) >= k and (stage != "reward" or row["group"] != last_group):
            break
        head.append(row)
        last_group = row.get("group")
    eval_ds = datasets.Dataset.from_list(head, features=stage_features(stage))
    train = ds.skip(len(head))
    if stage == "reward" and head:
        held = {r["group"] for r in head}
        train = train.filter(lambda row: row["group"] not in held)
    return train, eval_ds
