"""rlhf sample / rlhf label: the samples file, the toy annotator, a file made elsewhere, and the human screen driven by
scripted input (rank, skip, invalid input, undo, quit, resume)."""

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.people.feedback import label, label_human, parse_ranking, sample
from rlhf_cli.recipe import ModelSpec, load_recipe
from rlhf_cli.runtime.errors import UserError

PROMPTS = ["what does the fox eat?", "where does the owl live?", "what colour is the bear?", "hi"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _write_samples(run_dir: Path) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": PROMPTS[0]}],
            "answers": ["a0", "b0", "c0"],
            "finished": [True, True, False],
        },
        {"prompt": [{"role": "user", "content": PROMPTS[1]}], "answers": ["a1", "b1", "c1"], "finished": [True] * 3},
        {"prompt": [{"role": "user", "content": PROMPTS[2]}], "answers": ["a2", "a2", "b2"], "finished": [True] * 3},
        {
            "prompt": [{"role": "user", "content": PROMPTS[3]}],
            "answers": ["same", "same", "same"],
            "finished": [True] * 3,
        },
    ]
    path = run_dir / "feedback" / "samples.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _script(*replies):
    it = iter(replies)
    return lambda prompt: next(it)


def test_parse_ranking():
    assert parse_ranking("3 1 4 2", 4) == [2, 0, 3, 1]
    assert parse_ranking("3,1,2", 3) == [2, 0, 1]
    assert parse_ranking("312", 3) == [2, 0, 1]
    for bad in ("1 2", "1 1 2", "1 2 4", "a b c", ""):
        with pytest.raises(ValueError):
            parse_ranking(bad, 3)


def test_human_screen_rank_skip_undo_quit_resume(tmp_path):
    samples = _write_samples(tmp_path)
    out = tmp_path / "feedback" / "rankings.jsonl"
    skipped = out.with_name("skipped.jsonl")
    screen = io.StringIO()
    console = Console(file=screen, width=100)

    # prompt 0 ranked; prompt 1 skipped; nonsense re-asks prompt 2; undo brings prompt 1 back; it is ranked; quit.
    label_human(samples, out, ask=_script("3 1 2", "s", "1 2 3 4", "u", "2 3 1", "q"), console=console)
    rows = _rows(out)
    assert [r["sample"] for r in rows] == [0, 1]
    assert rows[0]["responses"] == ["c0", "a0", "b0"] and rows[1]["responses"] == ["b1", "c1", "a1"]
    assert rows[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]}] and rows[0]["annotator"] == "human"
    assert _rows(skipped) == []  # the skip was undone
    assert "Not a ranking" in screen.getvalue() and "Undone" in screen.getvalue()

    # Resume: undo takes back the previous session's last ranking (prompt 1), which is asked again; then prompt 2 (its
    # identical answers shown once: 2 to rank); after the last one, one more undo is offered; the redo is a skip.
    asked = []
    replies = iter(["u", "1 2 3", "2 1", "u", "s", ""])

    def ask(prompt):
        asked.append(prompt)
        return next(replies)

    label_human(samples, out, ask=ask, console=Console(file=io.StringIO()))
    rows = _rows(out)
    assert [r["sample"] for r in rows] == [0, 1] and rows[1]["responses"] == ["a1", "b1", "c1"]
    assert [r["sample"] for r in _rows(skipped)] == [2]
    assert "[1-3]" in asked[1] and "[1-2]" in asked[2] and "done" in asked[3] and "done" in asked[5]
    assert max(r["n"] for r in rows) < _rows(skipped)[0]["n"]  # undo order spans both files; prompt 3 never asked

    def never(prompt):
        raise AssertionError("nothing is left to ask")

    label_human(samples, out, ask=never, console=Console(file=io.StringIO()))  # all done: returns at once

    # End of input (Ctrl-D) is a quit, not a crash.
    def eof(prompt):
        raise EOFError

    fresh = tmp_path / "fresh" / "rankings.jsonl"
    fresh.parent.mkdir()
    label_human(samples, fresh, ask=eof, console=Console(file=io.StringIO()))
    assert _rows(fresh) == []

    # The file the screen leaves is read by the reward stage's data layer as it is.
    from rlhf_cli.data import load_stage_data
    from rlhf_cli.recipe import DataSpec

    pairs = load_stage_data("reward", DataSpec(path=str(out)))
    assert len(pairs) == 6 and pairs[0]["chosen"] == "c0" and pairs[0]["rejected"] == "a0"
    assert pairs[3]["chosen"] == "a1" and pairs[3]["rejected"] == "b1"


def test_human_screen_revisits_skipped_prompts_and_stops_at_a_limit(tmp_path):
    samples = _write_samples(tmp_path)
    out = tmp_path / "feedback" / "rankings.jsonl"
    skipped = out.with_name("skipped.jsonl")
    asked = []

    def script(*replies):
        it = iter(replies)

        def ask(prompt):
            asked.append(prompt)
            return next(it)

        return ask

    # --limit 1: one prompt this sitting, then stop with the way back in
    screen = io.StringIO()
    label_human(samples, out, ask=script("s"), console=Console(file=screen, width=200), limit=1, continue_with="AGAIN")
    assert (
        [r["sample"] for r in _rows(skipped)] == [0]
        and "--limit 1" in screen.getvalue()
        and "AGAIN" in screen.getvalue()
    )
    # the rest, then r: the skipped prompt comes back and is ranked; nothing is left skipped
    label_human(samples, out, ask=script("1 2 3", "2 1", "r", "3 2 1", ""), console=Console(file=io.StringIO()))
    assert "r = rank the 1 skipped" in asked[3]
    assert [r["sample"] for r in _rows(out)] == [1, 2, 0] and _rows(skipped) == []
    assert _rows(out)[2]["responses"] == ["c0", "b0", "a0"]


def test_human_refuses_rankings_of_other_samples(tmp_path):
    samples = _write_samples(tmp_path)
    out = tmp_path / "feedback" / "rankings.jsonl"
    out.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "other"}], "responses": ["x", "y"], "sample": 0, "n": 0})
        + "\n"
    )
    with pytest.raises(UserError, match="--overwrite"):
        label_human(samples, out, ask=_script("q"), console=Console(file=io.StringIO()))
    rec = load_recipe("tiny", check_training=False)
    label(rec, tmp_path, annotator="human", overwrite=True, ask=_script("q"), console=Console(file=io.StringIO()))
    assert _rows(out) == []
    backups = list((tmp_path / "feedback" / "backup").glob("rankings.*.jsonl"))
    assert len(backups) == 1 and _rows(backups[0])[0]["prompt"][0]["content"] == "other"  # moved aside, not lost


def test_overwrite_never_deletes_what_a_person_ranked(tmp_path):
    # A person ranks two prompts and quits; the quit message's command must continue, not start over, and an
    # explicit --overwrite (or a toy run over a person's file) moves their rankings to feedback/backup/ first.
    from typer.testing import CliRunner

    from rlhf_cli.cli import app
    from rlhf_cli.people import feedback

    _write_samples(tmp_path)
    out = tmp_path / "feedback" / "rankings.jsonl"
    args = ["label", "--recipe", "tiny", "-o", str(tmp_path), "--annotator", "human", "--overwrite"]
    replies = iter(["3 1 2", "2 1 3", "q"])
    original = feedback.label_human

    def scripted(*a, **k):
        return original(*a, **{**k, "ask": lambda prompt: next(replies)})

    feedback.label_human = scripted
    try:
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        assert "2 rankings saved" in first.output and "--overwrite" not in first.output.split("continue")[-1]
        said = " ".join(first.output.split())  # the console wraps the command where the temp folder's length puts it
        assert "rlhf label --recipe tiny" in said and "--annotator=human" in said
        ranked = _rows(out)
        assert len(ranked) == 2

        replies = iter(["q"])
        again = CliRunner().invoke(app, args)  # the same command, --overwrite included: start over, with a backup
        assert again.exit_code == 0, again.output
    finally:
        feedback.label_human = original
    assert _rows(out) == []
    backups = sorted((tmp_path / "feedback" / "backup").glob("rankings.*.jsonl"))
    assert len(backups) == 1 and _rows(backups[0]) == ranked
    assert "moved to" in again.output and "No rankings given yet" in again.output

    # a toy annotator run over a person's rankings backs them up too; over its own, it just replaces them
    out.write_text("".join(json.dumps(r) + "\n" for r in ranked))
    rec = load_recipe("tiny", check_training=False)
    label(rec, tmp_path, annotator="toy", overwrite=True)
    assert len(list((tmp_path / "feedback" / "backup").glob("rankings.*.jsonl"))) == 2
    label(rec, tmp_path, annotator="toy", overwrite=True)
    assert len(list((tmp_path / "feedback" / "backup").glob("rankings.*.jsonl"))) == 2
    assert all(r["annotator"] == "toy" for r in _rows(out))


def test_toy_annotator_ranks_by_gold(tmp_path):
    world = ToyWorld(0)
    fox = world.animals[0]
    food = world.facts[fox]["food"]
    good, bare, wrong = f"the {fox} eats {food}. happy to help!", f"the {fox} eats {food}.", "you are stupid"
    path = tmp_path / "feedback" / "samples.jsonl"
    path.parent.mkdir(parents=True)
    row = {
        "prompt": [{"role": "user", "content": f"what does the {fox} eat?"}],
        "answers": [wrong, bare, good],
        "finished": [True] * 3,
    }
    path.write_text(json.dumps(row) + "\n")
    rec = load_recipe("tiny", ["feedback.noise=0"], check_training=False)
    out = label(rec, tmp_path, annotator="toy")
    assert _rows(out)[0]["responses"] == [good, bare, wrong]
    with pytest.raises(UserError, match="--overwrite"):
        label(rec, tmp_path, annotator="toy")


def test_rankings_file_made_elsewhere(tmp_path):
    rec = load_recipe("tiny", check_training=False)
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"prompt": "q?", "chosen": "yes", "rejected": "no"}) + "\n")
    out = label(rec, tmp_path / "run", annotator=str(src))
    assert out.read_text() == src.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(UserError, match="fits no reward format"):
        label(rec, tmp_path / "run", annotator=str(bad), overwrite=True)
    with pytest.raises(UserError, match="human, toy"):
        label(rec, tmp_path / "run", annotator="nobody", overwrite=True)


def test_sample_writes_k_answers_per_prompt(tmp_path):
    from rlhf_cli.models.modeling import build_model, train_tokenizer

    tok = train_tokenizer([p for p in PROMPTS * 20] + ["the fox eats berries."] * 20, vocab_size=300, min_frequency=1)
    model_dir = tmp_path / "model"
    build_model(ModelSpec(hidden_size=32, num_layers=2, num_heads=2), tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    rec = load_recipe(
        "tiny",
        [
            f"feedback.data={{path: {prompts}}}",
            "feedback.k=3",
            "feedback.num_prompts=3",
            "feedback.max_new_tokens=6",
            "feedback.temperature=0.8",
            "feedback.top_p=0.9",
        ],
    )
    with pytest.raises(UserError, match="rlhf sft"):
        sample(rec, tmp_path / "run")  # no sft/final in this run and no model given
    out = sample(rec, tmp_path / "run", model=str(model_dir))
    rows = _rows(out)
    assert len(rows) == 3 and [r["prompt"][0]["content"] for r in rows] == PROMPTS[:3]
    assert all(len(r["answers"]) == len(r["finished"]) == 3 for r in rows)
    assert (
        rows[0]["k"] == 3
        and rows[0]["temperature"] == 0.8
        and rows[0]["top_p"] == 0.9
        and rows[0]["model"] == str(model_dir)
    )
    with pytest.raises(UserError, match="--overwrite"):
        sample(rec, tmp_path / "run", model=str(model_dir))
    sample(rec, tmp_path / "run", model=str(model_dir), overwrite=True)


def test_the_terminal_shows_the_rubric_and_names_the_peoples_round_when_nothing_is_left(tmp_path):
    """The recipe's rubric is on the screen with every prompt (none set: nothing extra); a person who finds every
    prompt ranked by the toy annotator is told who ranked them and what to run (`more`), and ranks a people's round
    into feedback/people/ with the annotator's rankings untouched."""
    from rlhf_cli.people.feedback import label_toy, read_samples

    samples = _write_samples(tmp_path)
    toy = tmp_path / "feedback" / "rankings.jsonl"
    label_toy(read_samples(samples, to_rank=True), toy, seed=0, noise=0.1)
    toy_bytes = toy.read_bytes()
    rubric = load_recipe("tiny").feedback.rubric
    assert rubric and any("right fact" in line for line in rubric)  # the toy world's, in words

    screen = io.StringIO()
    label_human(samples, toy, ask=_script(), console=Console(file=screen, width=200), rubric=rubric, more="RUN THIS")
    assert "All 3 prompts are ranked or skipped" in screen.getvalue() and "toy 3" in screen.getvalue()
    assert screen.getvalue().rstrip().endswith("RUN THIS") and toy.read_bytes() == toy_bytes

    people = tmp_path / "feedback" / "people"
    people.mkdir()
    (people / "samples.jsonl").write_bytes(samples.read_bytes())
    rec = load_recipe("tiny")
    screen = io.StringIO()
    label(
        rec,
        tmp_path,
        annotator="human",
        people=True,
        ask=_script("2 1 3", "q"),
        console=Console(file=screen, width=200),
    )
    assert rubric[0] in screen.getvalue() and "what we value" in screen.getvalue()
    assert [r["responses"] for r in _rows(people / "rankings.jsonl")] == [["b0", "a0", "c0"]]
    assert toy.read_bytes() == toy_bytes
    with pytest.raises(UserError, match="--annotator human or web"):
        label(rec, tmp_path, annotator="toy", people=True)

    screen = io.StringIO()
    label_human(samples, tmp_path / "fresh.jsonl", ask=_script("q"), console=Console(file=screen, width=200))
    assert "what we value" not in screen.getvalue()  # no rubric: nothing extra
