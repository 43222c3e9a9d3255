"""Human feedback: K answers per prompt from a model (`sample`), ranked best to worst (`label`).

    rlhf sample --recipe tiny                      # <run>/feedback/samples.jsonl: K answers per prompt from sft/final
    rlhf label --recipe tiny --annotator toy       # <run>/feedback/rankings.jsonl: the toy world's simulated raters
    rlhf label --recipe tiny --annotator human     # you, in the terminal (skip, undo, quit; starting again resumes)
    rlhf label --recipe tiny --annotator web       # several people on a local web page (rlhf_cli.people.web_label)
    rlhf label --recipe tiny --annotator my_rankings.jsonl   # rankings made elsewhere (any reward format, validated)
    rlhf label --recipe tiny --people --annotator web   # a people's round beside them (feedback/people/, below)

samples.jsonl, one row per prompt:
    {"prompt": [messages], "answers": [K str], "finished": [K bool], "num_tokens": [K int],
     "model", "k", "temperature", "top_p", "max_new_tokens", "seed"}
rankings.jsonl, one row per ranked prompt, in the data layer's `rankings` form (the reward stage reads it as it is):
    {"prompt": [messages], "responses": [best first], "sample": row of samples.jsonl, "annotator", "n": action number}

Identical answers among a prompt's K are ranked once (a pair of identical texts teaches nothing); a prompt whose answers
are all the same is left out. The human screen appends every ranking to rankings.jsonl (flushed and fsynced) the moment
it is given, and every skip to skipped.jsonl; starting again continues with the first prompt neither ranked nor skipped
(skipped prompts are NOT asked again — delete feedback/skipped.jsonl to see them again; --overwrite starts over, moving
the old rankings to feedback/backup/ first). Undo
takes back the last ranking or skip, also one given in an earlier session, and asks that prompt again; after the last
prompt the screen offers one more undo before it closes. When nothing is left to ask it returns at once.

A people's round (`--people`, on a run whose samples the toy annotator has ranked already): fresh prompts with K answers
each (`sample_people`, `feedback.people_prompts` at a time, a new seed each time) go to feedback/people/samples.jsonl,
people rank them (human or web) into feedback/people/rankings.jsonl, and `rlhf reward` trains on both rankings files.
The annotator's files are never touched by it, and people's rows are only ever added to. `feedback.rubric` (what the
raters value) is shown above every prompt.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rlhf_cli.data import load_stage_data, read_table
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.models.generation import check_prompts_fit, generate_answers
from rlhf_cli.models.modeling import inference_device, load_causal_lm, load_tokenizer
from rlhf_cli.recipe import DataSpec
from rlhf_cli.runtime.distributed import is_main_process, wait_for_everyone
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import write_text_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run
from rlhf_cli.runtime.runs import resolve_model_dir

SAMPLES, RANKINGS, SKIPPED = "samples.jsonl", "rankings.jsonl", "skipped.jsonl"
HELP = "rank best to worst (e.g. 3 1 4 2) · s = skip · u = undo · q = quit"


# ------------------------------------------------------------------------------------------------------ sampling


def sample(rec, run_dir: Path, model: str | None = None, overwrite: bool = False) -> Path:
    """K answers per prompt from the run's SFT model (or `model` / feedback.model) to feedback/samples.jsonl."""

    fb = rec.feedback
    out = RunLayout(run_dir).samples
    if not is_main_process():  # several processes (accelerate launch): the main one samples, the others wait for it
        wait_for_everyone()
        return out
    if out.exists() and not overwrite:
        raise UserError(
            f"{out} already exists; pass --overwrite to sample again (its rankings and skips then move to "
            f"{out.parent / 'backup'})."
        )
    model_dir = resolve_model_dir(model or fb.model, run_dir, "sft", "--model" if model else "feedback.model")
    start = time.time()
    prompts, answers = answer_prompts(
        rec, run_dir, model_dir, fb.data, fb.num_prompts, ("sample", "feedback.max_new_tokens"),
        num_return_sequences=fb.k, max_new_tokens=fb.max_new_tokens, temperature=fb.temperature, top_p=fb.top_p,
        batch_size=fb.batch_size, progress=f"sampling {fb.k} answers per prompt",
    )  # fmt: skip
    rows = _sample_rows(rec, run_dir, model_dir, prompts, answers, rec.seed)
    if overwrite:  # every check passed and the answers are made: the rankings of the old ones go aside first
        set_aside_rankings(out.parent)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    finished = sum(sum(r["finished"]) for r in rows) / max(1, sum(len(r["answers"]) for r in rows))
    print(
        f"Sampled {fb.k} answers for each of {len(rows)} prompts in {time.time() - start:.1f}s "
        f"({finished:.0%} finished) -> {out}"
    )
    wait_for_everyone()
    return out


def sample_people(rec, run_dir: Path, model: str | None = None) -> Path:
    """A people's round: `feedback.people_prompts` prompts of feedback.data not yet in it, drawn afresh, with K answers
    each (a new generation seed each time), added to feedback/people/samples.jsonl for people to rank. The rows there
    are never changed (their rankings name them by index), and the annotator's feedback/samples.jsonl and rankings are
    not touched."""

    fb, out = rec.feedback, RunLayout(run_dir).people_samples
    if not is_main_process():
        wait_for_everyone()
        return out
    before = read_samples(out, to_rank=True) if out.exists() else []
    # the annotator's samples used rec.seed; each people's sitting the next seed: other answers, another draw
    seed = max((r.get("seed", rec.seed) for r in before), default=rec.seed) + 1
    model_dir = resolve_model_dir(model or fb.model, run_dir, "sft", "--model" if model else "feedback.model")
    start = time.time()
    prompts, answers = answer_prompts(
        rec, run_dir, model_dir, fb.data, fb.people_prompts, ("sample --people", "feedback.max_new_tokens"),
        draw=(seed, [r["prompt"] for r in before]), seed=seed, num_return_sequences=fb.k,
        max_new_tokens=fb.max_new_tokens, temperature=fb.temperature, top_p=fb.top_p, batch_size=fb.batch_size,
        progress=f"sampling {fb.k} answers per prompt for people",
    )  # fmt: skip
    if not prompts:
        raise UserError(f"Every prompt of feedback.data is in {out} already; rank those, or set feedback.data.")
    rows = before + _sample_rows(rec, run_dir, model_dir, prompts, answers, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(
        f"Sampled {fb.k} answers for each of {len(prompts)} fresh prompts (seed {seed}) in {time.time() - start:.1f}s "
        f"-> {out} ({len(rows)} prompts for people to rank)"
    )
    wait_for_everyone()
    return out


def _sample_rows(rec, run_dir: Path, model_dir: str, prompts: list, answers: list, seed: int) -> list[dict]:
    """Rows of samples.jsonl: each prompt, its K answers and the settings that made them (the model relative to the
    run when it is the run's own: a run can move)."""
    fb = rec.feedback
    settings = {"model": path_in_run(model_dir, run_dir), "k": fb.k, "temperature": fb.temperature, "top_p": fb.top_p,
                "max_new_tokens": fb.max_new_tokens, "seed": seed}  # fmt: skip
    return [
        {
            "prompt": p,
            "answers": [a.text for a in group],
            "finished": [a.finished for a in group],
            "num_tokens": [a.num_tokens for a in group],
            **settings,
        }
        for p, group in zip(prompts, answers, strict=True)
    ]


def answer_prompts(
    rec,
    run_dir: Path,
    model_dir: str,
    data,
    num_prompts: int | None,
    setting: tuple[str, str],
    *,
    draw: tuple[int, list] | None = None,
    seed: int | None = None,
    **gen,
):
    """The first `num_prompts` prompts of `data` (a prompt data spec) and a model's answers to them, through the one
    generation path (`gen`: generate_answers' options; `seed`: the generation seed, default the recipe's); a prompt too
    long for the model is refused, naming `setting` (the command and the recipe key of its max_new_tokens).
    `draw` (seed, prompts to leave out): `num_prompts` drawn at random from the others instead of the first ones."""
    rows = load_stage_data("ppo", data, toy_dir=RunLayout(run_dir).toy, seed=rec.seed)
    if draw is None:
        if num_prompts is not None:
            rows = rows.select(range(min(num_prompts, len(rows))))
        prompts = [row["prompt"] for row in rows]
    else:
        taken = {json.dumps(p, sort_keys=True) for p in draw[1]}
        prompts = [row["prompt"] for row in rows if json.dumps(row["prompt"], sort_keys=True) not in taken]
        random.Random(f"draw-{draw[0]}").shuffle(prompts)
        prompts = prompts[:num_prompts]
        if not prompts:
            return [], []
    trust = rec.model.trust_remote_code
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust)
    lm = load_causal_lm(model_dir, trust_remote_code=trust).to(inference_device())
    check_prompts_fit(tokenizer, lm, prompts, gen["max_new_tokens"], *setting)
    seed = rec.seed if seed is None else seed
    return prompts, generate_answers(lm, tokenizer, prompts, seed=seed, precision=rec.precision, **gen)


def read_samples(path: Path, *, to_rank: bool = False) -> list[dict]:
    """The rows of samples.jsonl (a line that is not JSON is named); `to_rank`: each row also checked for what the
    labelling screens and the toy annotator read (a prompt's messages and its answers), else a UserError."""
    if not Path(path).exists():
        raise UserError(f"{path} does not exist; run `rlhf sample` for this run first.")
    rows = _read_jsonl(Path(path))
    for number, row in enumerate(rows if to_rank else [], 1):
        answers = row.get("answers")
        if not (
            isinstance(answers, list)
            and all(isinstance(a, str) for a in answers)
            and isinstance(row.get("prompt"), list)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in row["prompt"])
        ):
            raise UserError(
                f"{path}: row {number} is not a sample (a prompt's messages and its answers); make the file again "
                "with `rlhf sample --overwrite`."
            )
        row.setdefault("finished", [True] * len(answers))
    return rows


def unique_answers(row: dict) -> list[int]:
    """Indices of a sample's answers with duplicates removed (the first of identical texts is kept)."""
    seen: dict[str, int] = {}
    for i, text in enumerate(row["answers"]):
        seen.setdefault(text, i)
    return sorted(seen.values())


def prompt_text(messages: list[dict]) -> str:
    """The user's side of a conversation as one string (what the toy world's gold reward parses)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


# ------------------------------------------------------------------------------------------------------ labelling


def label(
    rec,
    run_dir: Path,
    annotator: str | None = None,
    overwrite: bool = False,
    ask: Callable[[str], str] | None = None,
    console=None,
    continue_with: str = "rlhf label --annotator human",
    limit: int | None = None,
    people: bool = False,
    more: str | None = None,
) -> Path:
    """Rank the samples best to worst into feedback/rankings.jsonl: `toy`, `human` or a file of rankings; a person
    stops after `limit` prompts (ranked or skipped) in this session. `people`: a person ranks the people's round
    (feedback/people/, `sample_people`) instead; `more`: what to run for more to rank, said when nothing is left.

    Rankings a person made are never deleted: `overwrite` moves them to feedback/backup/ first (`back_up`)."""

    layout = RunLayout(run_dir)
    feedback = layout.people if people else layout.feedback
    out = feedback / RANKINGS
    if not is_main_process():  # several processes (accelerate launch): the main one labels, the others wait for it
        wait_for_everyone()
        return out
    who = annotator or rec.feedback.annotator
    if people and who not in ("human", "web"):
        raise UserError(f"--people is a round ranked by people: use --annotator human or web, not {who}.")
    screen = {"ask": ask, "console": console, "continue_with": continue_with, "limit": limit, "more": more}
    path = _label_main(rec, feedback, out, who, overwrite, screen)
    wait_for_everyone()
    return path


def _label_main(rec, feedback: Path, out: Path, who: str, overwrite: bool, screen: dict) -> Path:
    """Every check of the annotator's input comes before the old rankings move to backup/ (`--overwrite`)."""
    if who == "web":
        raise UserError("The web ranking page is served by `rlhf label --annotator web` (it runs until you stop it).")
    if who == "human":
        if overwrite:
            start_over(feedback)
        return label_human(feedback / SAMPLES, out, rubric=rec.feedback.rubric, **screen)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to label again.")
    if who == "toy":
        samples = read_samples(feedback / SAMPLES, to_rank=True)
        back_up(out)
        return label_toy(samples, out, seed=rec.seed, noise=rec.feedback.noise, biases=rec.feedback.biases.model_dump())
    source, pairs = check_rankings_file(who, out)
    back_up(out)
    return copy_rankings(source, out, pairs)


def start_over(feedback: Path) -> None:
    """A person's labelling starts over (--overwrite): what was ranked or skipped is moved aside, never deleted."""
    read_samples(Path(feedback) / SAMPLES, to_rank=True)  # a missing or damaged one is refused before anything moves
    for name in (RANKINGS, SKIPPED):
        back_up(Path(feedback) / name, always=True)


def set_aside_rankings(feedback: Path) -> None:
    """New samples replace the old (`rlhf sample --overwrite`): the rankings and skips made of the old ones would no
    longer match them. A person's (or a file's) move to feedback/backup/; the toy annotator's, made again in a second,
    are removed. Each says so."""
    for name in (RANKINGS, SKIPPED):
        path = Path(feedback) / name
        if not path.exists():
            continue
        rows = _rows_if_readable(path)
        if rows is not None and all(r.get("annotator") == "toy" for r in rows):
            path.unlink()
            if rows:
                print(f"{name}: {len(rows)} rankings of the old samples by the toy annotator removed (label again).")
        else:
            back_up(path, always=True, why="they rank the old samples")


def _rows_if_readable(path: Path) -> list[dict] | None:
    try:
        return _read_jsonl(path)
    except UserError:  # a damaged file is a person's work all the same: it is moved, never judged
        return None


def back_up(path: Path, *, always: bool = False, why: str = "") -> Path | None:
    """Move `path` to feedback/backup/<name>.<time>.jsonl before it is replaced, when it holds rankings a person (or a
    file from elsewhere) made — the simulated annotator's are made again in a second — or, with `always`, whatever it
    holds (a file that cannot be read too). Returns the backup's path (None when nothing was moved)."""
    path = Path(path)
    rows = _rows_if_readable(path) if path.exists() else []
    if rows is not None and (not rows or (not always and all(r.get("annotator") == "toy" for r in rows))):
        return None
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
    while (backup := path.parent / "backup" / f"{path.stem}.{stamp}{f'-{n}' if n else ''}{path.suffix}").exists():
        n += 1
    backup.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, backup)
    because = f"; {why}" if why else ""
    count = f"{len(rows)} row{'s' * (len(rows) != 1)}" if rows is not None else "the file (not all of it readable)"
    print(f"{path.name}: {count} moved to {backup}{because} (restore it by moving it back).")
    return backup


def label_toy(samples: list[dict], out: Path, *, seed: int, noise: float, biases: dict | None = None) -> Path:
    """The toy world's simulated annotator on the rows of samples.jsonl (`read_samples`, to rank): gold reward, the
    raters' `biases` and Gaussian noise of std `noise`, seeded (rlhf_cli.data.toy: ToyWorld.rank)."""

    world, rng = ToyWorld(seed), random.Random(f"toy-annotator-{seed}")
    rows = []
    for index, row in enumerate(samples):
        keep = unique_answers(row)
        if len(keep) < 2:
            continue
        answers = [row["answers"][i] for i in keep]
        finished = [row["finished"][i] for i in keep]
        order = world.rank(prompt_text(row["prompt"]), answers, finished, noise=noise, rng=rng, biases=biases)
        rows.append(
            {
                "prompt": row["prompt"],
                "responses": [answers[i] for i in order],
                "sample": index,
                "annotator": "toy",
                "n": len(rows),
            }
        )
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    said = ", ".join(f"{k} {v:g}" for k, v in (biases or {}).items() if v)
    print(
        f"Ranked {len(rows)} prompts with the toy annotator (noise {noise}{', biases: ' + said if said else ''}) -> {out}"
    )
    return out


def check_rankings_file(source: str, out: Path) -> tuple[Path, int]:
    """A preference file made elsewhere, validated whole through the data layer (every row, and not every pair of one
    answer with itself) before anything moves; (its path, its preference pairs)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--annotator {source!r}: use human, toy, or the path of an existing rankings file.")
    if path.is_dir() and not any(path.iterdir()):
        raise UserError(f"--annotator {source}: the folder is empty; give a rankings file.")
    if out.exists() and path.resolve() == out.resolve():
        raise UserError(
            f"--annotator {source} is this run's own rankings file; give a file made elsewhere (or another run's)."
        )
    return path, len(load_stage_data("reward", DataSpec(path=str(path))))


def copy_rankings(path: Path, out: Path, pairs: int) -> Path:
    """A preference file made elsewhere, validated by `check_rankings_file` (its `pairs`), copied as JSON lines."""

    out.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, out)
    else:
        rows = read_table(path=str(path)).to_list()
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    print(f"Copied {path} ({pairs} preference pairs) -> {out}")
    return out


# ------------------------------------------------------------------------------------------------------ the human screen


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file the run keeps (none when it is missing); a line that is not a JSON object is a
    UserError naming the file and the line."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); restore it or remove it."
        ) from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}: line {number} is not a JSON object (cut short by a crash, or edited by hand?); fix or "
                "remove that line."
            )
        rows.append(row)
    return rows


def _append(path: Path, row: dict) -> None:
    """Append one row and push it to disk at once: a crash or Ctrl-C right after loses nothing typed."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _drop_last_action(paths: list[Path], rater: str | None = None, key: str = "rater") -> dict | None:
    """Remove the most recent ranking or skip (highest `n`) from whichever file holds it; return it. With `rater`,
    the most recent one whose `key` is that rater (the web page's raters, and writers, each undo their own)."""

    best = None  # (n, path, index, rows)
    for path in paths:
        rows = _read_jsonl(path)
        for index, row in enumerate(rows):
            if (rater is None or row.get(key) == rater) and (best is None or row["n"] > best[0]):
                best = (row["n"], path, index, rows)
    if best is None:
        return None
    _, path, index, rows = best
    kept = rows[:index] + rows[index + 1 :]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return rows[index]


def parse_ranking(text: str, k: int) -> list[int]:
    """'3 1 4 2', '3,1,4,2' or '3142' (K <= 9) -> 0-based indices best first; ValueError with a message otherwise."""
    parts = text.replace(",", " ").split()
    if len(parts) == 1 and len(parts[0]) == k and k <= 9:
        parts = list(parts[0])
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"use the answer numbers 1-{k}, best first, separated by spaces")
    numbers = [int(p) for p in parts]
    if sorted(numbers) != list(range(1, k + 1)):
        raise ValueError(f"give each of the numbers 1-{k} exactly once (a full ranking), got {' '.join(parts)}")
    return [n - 1 for n in numbers]


def _show(console, row: dict, keep: list[int], position: str, rubric: list[str]) -> None:
    from rich.panel import Panel
    from rich.text import Text

    if rubric:  # what the raters value, with every prompt (the screen is redrawn for each)
        console.print(Panel(Text("\n".join(f"- {line}" for line in rubric)), title="what we value", title_align="left"))
    convo = Text()
    for m in row["prompt"]:
        convo.append(f"{m['role']}: ", style="bold cyan" if m["role"] == "user" else "bold magenta")
        convo.append(m["content"] + "\n")
    console.print(Panel(convo, title=f"prompt {position}", title_align="left"))
    for number, i in enumerate(keep, 1):
        cut = "" if row["finished"][i] else "  [cut off]"
        console.print(Panel(Text(row["answers"][i] or "(empty)"), title=f"{number}{cut}", title_align="left"))


def check_rows_match(samples: list[dict], rows: list[dict], samples_path: Path) -> None:
    """Every ranking or skip names a prompt of these samples (by index, with the same prompt), and every ranking ranks
    the answers that sample offers (the same prompts sampled again give other answers), or UserError."""
    for r in rows:
        index = r.get("sample")
        ok = isinstance(index, int) and 0 <= index < len(samples) and samples[index]["prompt"] == r.get("prompt")
        if ok and "responses" in r:
            offered = {samples[index]["answers"][i] for i in unique_answers(samples[index])}
            responses = r["responses"]
            ok = isinstance(responses, list) and len(responses) == len(offered) and set(responses) == offered
        if not ok:
            which = f"sample {index + 1}" if isinstance(index, int) else "a row without a sample number"
            raise UserError(
                f"{Path(samples_path).parent} holds rankings of other samples than {samples_path} ({which}: another "
                "prompt or other answers); pass --overwrite to start labelling again (the rankings so far move to its "
                "backup/ folder)."
            )


def labelling_progress(feedback: Path) -> tuple[int, int]:
    """(prompts ranked or skipped, prompts to rank) of the human screen in this feedback folder."""
    samples = read_samples(Path(feedback) / SAMPLES, to_rank=True)
    done = {r.get("sample") for r in _read_jsonl(Path(feedback) / RANKINGS) + _read_jsonl(Path(feedback) / SKIPPED)}
    todo = [i for i, row in enumerate(samples) if len(unique_answers(row)) >= 2]
    return sum(i in done for i in todo), len(todo)


def label_human(
    samples_path: Path,
    out: Path,
    *,
    ask: Callable[[str], str] | None = None,
    console=None,
    continue_with: str = "rlhf label --annotator human",
    limit: int | None = None,
    rubric: list[str] | tuple = (),
    more: str | None = None,
) -> Path:
    """The terminal screen: show each prompt and its answers, take a full ranking, skip, undo or quit; resumable.
    When every prompt is done, the skipped ones can be revisited (r). On a terminal each prompt is drawn on a clean
    screen. `limit`: stop after this many prompts ranked or skipped in this session (a sitting of a set length).

    `continue_with` is the command the quit message offers to carry on (never one with --overwrite, which starts over);
    `more`, what to run for more prompts when none is left; `rubric`, what the raters value, shown with each prompt.
    """
    from rich.console import Console

    console = console or Console()
    ask = ask or console.input
    samples = read_samples(samples_path, to_rank=True)
    skipped_path = out.with_name(SKIPPED)
    rankings, skipped = _read_jsonl(out), _read_jsonl(skipped_path)
    check_rows_match(samples, rankings + skipped, samples_path)
    done = {r["sample"] for r in rankings + skipped}
    todo = [i for i, row in enumerate(samples) if len(unique_answers(row)) >= 2]
    action = max((r["n"] for r in rankings + skipped), default=-1) + 1
    if done:
        console.print(f"Resuming: {len(rankings)} ranked, {len(skipped)} skipped, {len(todo) - len(done)} to go.")
    console.print(HELP)
    message, acted, this_session = "", False, 0
    while True:
        pending = [i for i in todo if i not in done]
        if limit is not None and this_session >= limit and pending:
            console.print(
                f"{this_session} prompts this session (--limit {limit}); {len(pending)} to go. "
                f"To continue: {continue_with}"
            )
            break
        if not pending and not acted:  # nothing left from the start (e.g. `rlhf pipeline --resume`): return at once
            by = Counter(r.get("annotator", "unknown") for r in rankings)
            who = f" (rankings by {', '.join(f'{a} {n}' for a, n in by.most_common())})" if by else ""
            console.print(f"All {len(todo)} prompts are ranked or skipped ({out}{who}).")
            if more:
                console.print(more)
            break
        if pending:
            index = pending[0]
            row, keep = samples[index], unique_answers(samples[index])
            if console.is_terminal:  # redraw, do not scroll: one prompt on the screen at a time
                console.clear()
            _show(console, row, keep, f"{len(done) + 1} of {len(todo)}", list(rubric))
            question = f"ranking [1-{len(keep)}] / s / u / q: "
        else:  # the last answer can still be taken back, the skipped prompts revisited
            n_skipped = len(_read_jsonl(skipped_path))
            back = f"r = rank the {n_skipped} skipped, " if n_skipped else ""
            question = f"All {len(todo)} prompts done. {back}u = undo the last, Enter = finish: "
        if message:
            console.print(f"[yellow]{message}[/yellow]")
        try:
            reply = ask(question).strip().lower()
        except EOFError:
            reply = "q"
        message, acted = "", True
        if reply in ("u", "undo"):
            undone = _drop_last_action([out, skipped_path])
            if undone is None:
                message = "Nothing to undo."
            else:
                done.discard(undone["sample"])
                message = f"Undone: prompt {undone['sample'] + 1} will be asked again."
                todo.remove(undone["sample"])
                todo.insert(0, undone["sample"])  # ask it next
        elif not pending and reply in ("r", "revisit") and _read_jsonl(skipped_path):
            revisit = {r["sample"] for r in _read_jsonl(skipped_path)}
            write_text_atomic(skipped_path, "")
            done -= revisit
            message = f"{len(revisit)} skipped prompts to rank."
        elif not pending or reply in ("q", "quit"):
            saved = len(_read_jsonl(out))
            where = f"{saved} rankings saved in {out}" if saved else "No rankings given yet"
            console.print(where + ("." if not pending else f"; to continue where you stopped: {continue_with}"))
            if not pending and more:
                console.print(more)
            break
        elif reply in ("s", "skip"):
            _append(skipped_path, {"prompt": row["prompt"], "sample": index, "n": action})
            done.add(index)
            action += 1
            this_session += 1
        else:
            try:
                order = parse_ranking(reply, len(keep))
            except ValueError as err:
                message = f"Not a ranking: {err}. {HELP}"
                continue
            _append(
                out,
                {
                    "prompt": row["prompt"],
                    "responses": [row["answers"][keep[i]] for i in order],
                    "sample": index,
                    "annotator": "human",
                    "n": action,
                },
            )
            done.add(index)
            action += 1
            this_session += 1
    return out


def with_people_rankings(pairs, spec, layout: RunLayout, stage: str = "reward", *, say: bool = True):
    """The run's own rankings and, when it has a people's round (rlhf_cli.people.feedback.sample_people), the people's
    rankings beside them: (the pairs together, {file: its preference pairs}). Another source (reward.data) is read
    as it is. Says how many comparisons come from each file (`say`). The reward and DPO stages train on what it
    returns, and `rlhf reward inspect` rebuilds the same held-out prompts from it."""
    import datasets

    source = path_in_run(spec.path, layout.root) if spec.path else spec.hub  # relative when the run's own: it can move
    if not isinstance(pairs, datasets.Dataset):  # streamed from elsewhere: counted as it goes, not here
        return pairs, {str(source): None}
    comparisons = {str(source): len(pairs)}
    own = spec.path and Path(spec.path).resolve() == layout.rankings.resolve()
    people = layout.people_rankings
    if not (own and people.exists() and people.read_text(encoding="utf-8").strip()):
        return pairs, comparisons
    theirs = load_stage_data("reward", DataSpec(path=str(people)))
    comparisons[path_in_run(str(people), layout.root)] = len(theirs)
    if say and is_main_process():
        raters = ", ".join(f"{who} {n}" for who, n in _raters(people).most_common())
        print(
            f"{stage}: {len(pairs)} comparisons from {spec.path} and {len(theirs)} from the people's round "
            f"{people} ({raters}): {len(pairs) + len(theirs)} in all",
            flush=True,
        )
    return datasets.concatenate_datasets([pairs, theirs.cast(pairs.features)]), comparisons


def _raters(path: Path):
    """Rankings in a rankings file by each rater (the web page's) or annotator."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Counter(str(r.get("rater") or r.get("annotator") or "unknown") for r in rows)
