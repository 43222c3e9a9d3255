"""Reading a table: a `.txt` file (one row: the text as written; with `paragraphs`, one row per blank-line-separated
block), a folder of `.txt` files (one row per file), `.jsonl` / `.json` / `.parquet` / `.csv`, a `save_to_disk` folder, any folder `datasets.load_dataset` reads, or a
hub id; UTF-8 checked with the line and byte of a bad character, an empty table refused."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from rlhf_cli.models import hub as hf_hub
from rlhf_cli.runtime.errors import UserError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")


def read_table(path=None, hub=None, config=None, split="train", streaming=False, paragraphs=False):
    """Raw rows from a local path or a hub id, as a `datasets.Dataset` (or `IterableDataset` when streaming).

    A `.txt` file is one document, blank lines and all (a novel trains as the text it is); `paragraphs`: one document
    per blank-line-separated block, for a file of separate short documents.

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
        return ds if streaming else not_empty(ds, hub)

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"Data path not found: {p}. Check data.path (a relative path is from the current directory).")
    if p.is_dir():
        ds = _read_folder(p, split, streaming)
    elif p.suffix.lower() == ".txt":
        _no_split(p, split)
        text = _read_utf8(p)
        ds = datasets.Dataset.from_dict({"text": _txt_blocks(text) if paragraphs else [text.strip()]})
    elif p.suffix.lower() in BUILDERS:
        _check_text_file(p)
        ds = _load(p, BUILDERS[p.suffix.lower()], data_files=str(p), split=split, streaming=streaming)
    else:
        raise UserError(f"{p}: unknown file type {p.suffix!r}; use .txt, .jsonl, .json, .parquet, .csv or a folder.")
    if streaming and isinstance(ds, datasets.Dataset):
        return not_empty(ds, str(p)).to_iterable_dataset()
    return ds if streaming else not_empty(ds, str(p))


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


def not_empty(ds, source: str):
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
