"""SFT demonstrations written by people: `rlhf write --recipe R [--annotator web|human] [--model sft|base|PATH]`.

For each prompt a model drafts an answer once (`prepare_drafts`, through the one generation path; greedy unless
`write.temperature` says otherwise), cached in <run>/demonstrations/drafts.jsonl: starting again is instant and every
writer sees the same draft. A person keeps, edits or replaces it, in the terminal (`write_human`) or on the web page
(`rlhf_cli.people.web_label`, /write). Each answer is appended at once (flushed and fsynced, under one lock: several writers
at once lose nothing) to <run>/demonstrations/demonstrations.jsonl, in the `messages` form `sft.data` reads:

    {"messages": [prompt..., {"role": "assistant", "content": answer}], "writer", "time", "edited": answer != draft,
     "draft", "model", "sample": row of drafts.jsonl, "annotator": "human" | "web", "n": action number}

Skips go to demonstrations/skipped.jsonl. Each prompt gets one answer; a prompt on a writer's screen is held for them;
undo takes back the writer's own last answer or skip (also one of an earlier session). The files are the state:
stopping and starting again continues where everyone was. Train on them with
`rlhf sft --set sft.data.path=<run>/demonstrations/demonstrations.jsonl`.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from rlhf_cli.people.feedback import _append, _drop_last_action, _read_jsonl, answer_prompts, back_up
from rlhf_cli.people.offers import LEASE_SECONDS, Offers
from rlhf_cli.recipe import DataSpec
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import write_text_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run
from rlhf_cli.runtime.lock import run_lock
from rlhf_cli.runtime.runs import resolve_model_dir

HELP = (
    "Enter = keep the draft (or the answer taken back) · type an answer to replace it · s = skip · u = undo · q = quit"
)
MAX_ANSWER = 20_000  # characters


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def writer_of(row: dict) -> str:
    return str(row.get("writer") or "unknown")


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------------ drafts


def draft_model(rec, run_dir: Path, choice: str | None = None) -> str:
    """The model that drafts: `sft` (this run's sft/final), `base` (pretrain/final, else sft.init_from), a folder or
    hub id; by default the SFT model when it has finished, else the base model."""
    layout = RunLayout(run_dir)
    choice = choice or rec.write.model
    sft, base = layout.final("sft"), layout.final("pretrain")
    if choice in (None, "sft") and layout.finished("sft"):
        return str(sft)
    if choice == "sft":
        raise UserError(
            f"--model sft: {sft} is not finished — run `rlhf sft` for this run first, or pass --model base."
        )
    if choice in (None, "base"):
        if (base / "config.json").exists():
            return str(base)
        if rec.sft.init_from:
            return resolve_model_dir(rec.sft.init_from, run_dir, "pretrain", "sft.init_from")
        raise UserError(
            f"No model to draft answers with: neither {sft} nor {base} exists; run `rlhf pretrain` (and `rlhf sft`) "
            "for this run first, or pass --model with a model folder or hub id."
        )
    return resolve_model_dir(choice, run_dir, "sft", "--model")


def _prompt_spec(rec, prompts_file: str | None):
    """(the data spec of the prompts, how to name it): --prompts, else write.data, else feedback.data."""
    if prompts_file is not None:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise UserError(
                f'--prompts {prompts_file}: no such file; give a JSONL file of prompts ({{"prompt": ...}} rows, or '
                "conversations whose last assistant turn is dropped)."
            )
        return DataSpec(path=str(path)), str(path)
    spec = rec.write.data or rec.feedback.data
    if spec.toy:
        return spec, "the toy world's training prompts"
    return spec, spec.path or spec.hub


def read_drafts(path: Path) -> list[dict]:
    rows = _read_jsonl(Path(path))
    if not rows:
        raise UserError(f"{path} holds no drafts; run `rlhf write` to draft them.")
    return rows


def prepare_drafts(
    rec, run_dir: Path, *, model: str | None = None, prompts: str | None = None, overwrite: bool = False
) -> Path:
    """One draft per prompt in demonstrations/drafts.jsonl, made once: an existing file is kept (starting again is
    instant) unless `overwrite` (the answers written so far move to demonstrations/backup/ first)."""
    layout = RunLayout(run_dir)
    out = layout.drafts
    spec, source = _prompt_spec(rec, prompts)  # a missing file is refused before anything else
    if out.exists() and not overwrite:
        cached = read_drafts(out)[0]
        wanted = {}
        if model is not None or rec.write.model is not None:
            wanted["model"] = path_in_run(draft_model(rec, run_dir, model), run_dir)  # as drafts.jsonl stores it
        if prompts is not None or rec.write.data is not None:
            wanted["prompts"] = path_in_run(source, run_dir)
        differ = [k for k, v in wanted.items() if cached.get(k) != v]
        if differ:
            raise UserError(
                f"{out} holds drafts by {cached.get('model')} for {cached.get('prompts')}; to draft again with "
                f"{', '.join(str(wanted[k]) for k in differ)}, pass --overwrite (the answers written so far move to "
                f"{layout.demonstrations_dir / 'backup'})."
            )
        return out
    model_dir = draft_model(rec, run_dir, model)
    ws = rec.write
    start = time.time()
    conversations, answers = answer_prompts(
        rec, run_dir, model_dir, spec, ws.num_prompts, ("write", "write.max_new_tokens"),
        max_new_tokens=ws.max_new_tokens, temperature=ws.temperature, batch_size=rec.feedback.batch_size,
        progress="drafting answers",
    )  # fmt: skip
    settings = {  # the paths relative to the run when they are the run's own (a run can move)
        "model": path_in_run(model_dir, run_dir),
        "prompts": path_in_run(source, run_dir),
        "temperature": ws.temperature,
        "max_new_tokens": ws.max_new_tokens,
        "seed": rec.seed,
    }
    if overwrite:
        for path in (layout.demonstrations, layout.demonstrations_skipped):
            back_up(path, always=True)
    drafts = [
        {"prompt": p, "draft": a.text, "finished": a.finished, "num_tokens": a.num_tokens, **settings}
        for p, (a,) in zip(conversations, answers, strict=True)
    ]
    write_text_atomic(out, "".join(_json_line(r) for r in drafts))
    how = "greedy" if ws.temperature == 0 else f"temperature {ws.temperature}"
    print(f"Drafted {len(drafts)} answers with {model_dir} ({how}) in {time.time() - start:.1f}s -> {out}")
    return out


# ------------------------------------------------------------------------------------------------------ the board


def _clean_answer(text) -> str:
    if not isinstance(text, str):
        raise ValueError("send the answer as text")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise ValueError("write an answer (or keep the draft, or skip the prompt)")
    if len(text) > MAX_ANSWER:
        raise ValueError(f"an answer has at most {MAX_ANSWER} characters")
    return text


class WriteBoard(Offers):
    """Who wrote what, and which prompt to offer next: the drafts, demonstrations and skipped files, kept in memory
    under one lock; every change is written to the files (the state) before the board changes."""

    def __init__(self, run_dir: Path, lease_seconds: float = LEASE_SECONDS):
        layout = RunLayout(run_dir)
        self.drafts_path, self.path = layout.drafts, layout.demonstrations
        self.skipped_path = layout.demonstrations_skipped
        if not self.drafts_path.exists():
            raise UserError(f"{self.drafts_path} does not exist; run `rlhf write` for this run to draft the answers.")
        self.drafts = read_drafts(self.drafts_path)
        rows, skipped = _read_jsonl(self.path), _read_jsonl(self.skipped_path)
        for r in rows + skipped:
            index = r.get("sample")
            prompt = r["messages"][:-1] if "messages" in r else r.get("prompt")
            if not isinstance(index, int) or index >= len(self.drafts) or self.drafts[index]["prompt"] != prompt:
                raise UserError(
                    f"{self.path.parent} holds answers to other prompts than {self.drafts_path}; pass --overwrite to "
                    "draft and write again (the answers so far are moved to its backup/ folder)."
                )
        super().__init__(range(len(self.drafts)), 1, lease_seconds)
        self.load(rows, skipped, writer_of)

    def progress(self, writer: str) -> dict:
        c = self.counts(writer)
        return {
            "written": c["done"],
            "prompts": c["items"],
            "yours": c["yours"],
            "skipped_by_you": c["skipped_by_you"],
            "open_for_you": c["open_for_you"],
        }

    def next_for(self, writer: str, message: str = "", text: str | None = None) -> dict:
        """The state for `writer`: the prompt, its draft and the text to start from (the draft, or after an undo the
        answer taken back), and the progress."""
        with self.lock:
            index = self.next_index(writer)
            state = {"rater": writer, "progress": self.progress(writer), "message": message}
            if index is None:
                return {**state, "done": True}
            row = self.drafts[index]
            return {
                **state,
                "done": False,
                "sample": index,
                "prompt": row["prompt"],
                "draft": row["draft"],
                "finished": bool(row.get("finished", True)),
                "model": str(row.get("model", "")),
                "text": row["draft"] if text is None else text,
            }

    def save(self, writer: str, index, text, annotator: str = "web") -> dict:
        """Save one answer at once; ValueError for an empty one or a prompt not open to `writer`."""
        with self.lock:
            index = self.check(writer, index, "written")
            text = _clean_answer(text)
            row = self.drafts[index]
            _append(
                self.path,
                {
                    "messages": [*row["prompt"], {"role": "assistant", "content": text}],
                    "writer": writer,
                    "time": _now(),
                    "edited": text != row["draft"],
                    "draft": row["draft"],
                    "model": row.get("model"),
                    "sample": index,
                    "annotator": annotator,
                    "n": self.action,
                },
            )
            self.did(writer, index)
        return self.next_for(writer, "Saved." if text != row["draft"] else "Saved (the draft as it was).")

    def skip(self, writer: str, index) -> dict:
        with self.lock:
            index = self.check(writer, index, "written")
            row = {"prompt": self.drafts[index]["prompt"], "sample": index, "writer": writer, "time": _now()}
            _append(self.skipped_path, {**row, "n": self.action})
            self.skipped(writer, index)
        return self.next_for(writer, f"Skipped prompt {index + 1}.")

    def undo(self, writer: str) -> dict:
        """Take back the writer's own last answer or skip; that prompt comes next, with the answer taken back."""
        with self.lock:
            undone = _drop_last_action([self.path, self.skipped_path], rater=writer, key="writer")
            if undone is not None:
                self.undone(writer, undone["sample"], "messages" in undone)
        if undone is None:
            return self.next_for(writer, "Nothing of yours to undo.")
        text = undone["messages"][-1]["content"] if "messages" in undone else None
        return self.next_for(writer, f"Undone: prompt {undone['sample'] + 1} is back.", text)


# ------------------------------------------------------------------------------------------------------ the terminal


def _show(console, state: dict) -> None:
    from rich.panel import Panel
    from rich.text import Text

    convo = Text()
    for m in state["prompt"]:
        convo.append(f"{m['role']}: ", style="bold cyan" if m["role"] == "user" else "bold magenta")
        convo.append(m["content"] + "\n")
    p = state["progress"]
    console.print(Panel(convo, title=f"prompt {state['sample'] + 1} of {p['prompts']}", title_align="left"))
    cut = "" if state["finished"] else "  [cut off]"
    console.print(Panel(Text(state["draft"] or "(empty)"), title=f"the model's draft{cut}", title_align="left"))
    if state["text"] != state["draft"]:
        console.print(Panel(Text(state["text"]), title="your answer, taken back", title_align="left"))


def write_human(
    run_dir: Path,
    *,
    writer: str | None = None,
    ask: Callable[[str], str] | None = None,
    console=None,
    limit: int | None = None,
    continue_with: str = "rlhf write --annotator human",
    train_with: str | None = None,
) -> Path:
    """The terminal screen: each prompt and the model's draft; Enter keeps it, a typed line replaces it, s skips,
    u undoes, q quits; resumable. `limit`: stop after this many prompts written or skipped in this sitting.
    `train_with`: the command that trains SFT on the answers, said when every prompt is done."""
    from rich.console import Console

    console = console or Console()
    ask = ask or console.input
    layout = RunLayout(run_dir)
    if not layout.drafts.exists():
        raise UserError(f"{layout.drafts} does not exist; run `rlhf write` for this run to draft the answers.")
    writer = writer or _user()
    with run_lock(layout.root):  # one writer of the run at a time: a web page serving it refuses this screen
        board = WriteBoard(run_dir)
        state = board.next_for(writer)
        p = state["progress"]
        if p["written"] or p["skipped_by_you"]:
            console.print(
                f"Resuming: {p['written']} written, {p['skipped_by_you']} skipped, {p['open_for_you']} to go."
            )
        console.print(HELP)
        acted, this_session = False, 0
        while True:
            if state["done"] and not acted:
                console.print(f"All {p['prompts']} prompts are written or skipped ({layout.demonstrations}).")
                break
            if not state["done"] and limit is not None and this_session >= limit:
                console.print(
                    f"{this_session} prompts this sitting (--limit {limit}); "
                    f"{state['progress']['open_for_you']} to go. To continue: {continue_with}"
                )
                break
            if state["done"]:
                question = f"All {state['progress']['prompts']} prompts done. u = undo the last, Enter = finish: "
            else:
                if console.is_terminal:
                    console.clear()
                _show(console, state)
                question = "your answer (Enter = keep the draft) / s / u / q: "
            if state["message"]:
                console.print(f"[yellow]{state['message']}[/yellow]", highlight=False)
            try:
                reply = ask(question)
            except EOFError:
                reply = "q"
            command = reply.strip().lower()
            acted = True
            if command in ("u", "undo"):
                state = board.undo(writer)
            elif state["done"] or command in ("q", "quit"):
                saved = sum(writer_of(r) == writer for r in _read_jsonl(layout.demonstrations))
                console.print(
                    f"{saved} answers of yours in {layout.demonstrations}"
                    + (
                        f". Train on them: {train_with}"
                        if state["done"] and train_with
                        else "."
                        if state["done"]
                        else f"; to continue where you stopped: {continue_with}"
                    )
                )
                break
            elif command in ("s", "skip"):
                state = board.skip(writer, state["sample"])
                this_session += 1
            else:
                try:
                    state = board.save(writer, state["sample"], reply.strip() or state["text"], annotator="human")
                except ValueError as err:
                    state = {**state, "message": f"Not saved: {err}. {HELP}"}
                    continue
                this_session += 1
    return layout.demonstrations


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment (e.g. a container without a passwd entry)
        return "human"
