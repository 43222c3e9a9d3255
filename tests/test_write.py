"""`rlhf write`: people keep, edit or replace a model's drafts into SFT demonstrations — the writing page in a real
headless Chromium (the ranking page's server and browser helpers, tests/test_web_label.py), the terminal screen by
scripted input, drafts made once through the one generation path from a tiny random model, the file `sft.data` reads,
and bad input (one sentence, exit 2, nothing written).
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import test_web_label
from rich.console import Console
from test_web_label import XSS, _local, _page, _request, _rows, write_samples
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.data import load_stage_data
from rlhf_cli.data.toy import toy_files
from rlhf_cli.models.modeling import build_model, train_tokenizer
from rlhf_cli.people import demonstrations
from rlhf_cli.people.demonstrations import WriteBoard, draft_model, write_human
from rlhf_cli.people.web_label import make_server
from rlhf_cli.recipe import ModelSpec, load_recipe
from rlhf_cli.runtime.errors import UserError

TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=256)
PROMPTS = ["what does the fox eat?", "where does the owl live?", "what colour is the bear?", "hi", "who is the cat?"]
DRAFTS = ["the fox eats", "owl owl owl", "The bear is brown.", XSS, ""]
FAST = ["write.num_prompts=3", "write.max_new_tokens=6"]
runner = CliRunner()
chromium = test_web_label.browser  # the ranking page tests' headless Chromium (skips, or fails, as they do)


def _screen(out) -> str:
    """What the console printed, as one line: where rich wraps depends on the length of pytest's tmp path."""
    return " ".join(out.getvalue().split())


def write_drafts(run: Path, drafts: list[str] = DRAFTS) -> Path:
    path = run / "demonstrations" / "drafts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": [{"role": "user", "content": p}], "draft": d, "finished": bool(d), "num_tokens": len(d.split()),
         "model": "runs/x/pretrain/final", "prompts": "test prompts", "temperature": 0.0, "max_new_tokens": 8}
        for p, d in zip(PROMPTS, drafts, strict=True)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextmanager
def serving(run: Path, host: str = "127.0.0.1", ranking: bool = False):
    server, url = make_server(run / "feedback" if ranking else None, host, 0, writing=WriteBoard(run))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _start(chromium, url: str, name: str):
    page = _page(chromium, url)
    page.fill("#rater-name", name)
    page.click("#start")
    page.wait_for_selector("#write-screen:not([hidden]), #write-done:not([hidden])")
    return page


def _index(page) -> int:
    return int(page.text_content("#w-prompt-label").split()[-1]) - 1


def _then(page, act):
    """Do `act` and wait for the next prompt (or the end)."""
    before = page.text_content("#w-prompt-label")
    act()
    page.wait_for_function(
        "b => document.querySelector('#w-prompt-label').textContent !== b"
        " || !document.querySelector('#write-done').hidden",
        arg=before,
    )


def _answers(run: Path) -> list[dict]:
    return _rows(run / "demonstrations" / "demonstrations.jsonl")


# ------------------------------------------------------------------------------------------------------ the browser


def test_a_writer_edits_replaces_skips_undoes_reloads_and_continues(tmp_path, chromium):
    write_drafts(tmp_path)
    with serving(tmp_path) as (_, url):
        assert url.endswith("/write")
        page = _start(chromium, url, "Ana")
        assert page.title() == "rlhf · write answers" and page.is_hidden("#modes")  # no ranking here: no link
        assert "0 of 5 prompts written" in page.text_content("#progress")

        # 0: edit the draft (type at its end)
        assert _index(page) == 0 and page.input_value("#w-answer") == DRAFTS[0]
        page.click("#w-answer")
        page.keyboard.press("Control+End")
        page.keyboard.type(" mice. thanks for asking!")
        assert "not the draft" in page.text_content("#w-state")
        assert page.text_content("#who").startswith("writing as Ana")
        _then(page, lambda: page.click("#w-save"))

        # 1: replace it, saved with Ctrl+Enter
        assert _index(page) == 1
        page.click("#w-clear")
        page.keyboard.type("The owl lives in the forest.\nHappy to help!")
        _then(page, lambda: page.keyboard.press("Control+Enter"))

        # 2: keep the draft as it is
        assert "draft as it is" in page.text_content("#w-state")
        _then(page, lambda: page.click("#w-save"))
        assert "Saved (the draft as it was)" in page.text_content("#w-message")

        # 3: skip, then undo the skip: prompt 3 is back
        assert _index(page) == 3
        _then(page, lambda: page.click("#w-skip"))
        assert _index(page) == 4 and (tmp_path / "demonstrations" / "skipped.jsonl").exists()
        page.click("#w-undo")
        page.wait_for_function("() => document.querySelector('#w-message').textContent.startsWith('Undone')")
        assert _index(page) == 3

        # reload: the name is remembered and prompt 3 is still held; an empty answer is refused on the page
        page.reload()
        page.wait_for_selector("#write-screen:not([hidden])")
        assert _index(page) == 3 and page.input_value("#w-answer") == XSS
        page.click("#w-clear")
        page.click("#w-save")
        assert "Write an answer" in page.text_content("#w-message") and _index(page) == 3
        page.fill("#w-answer", "hello! how can I help?")
        _then(page, lambda: page.click("#w-save"))

        # 4: the draft is empty: write one
        assert _index(page) == 4 and page.text_content("#w-draft") == "(empty draft)"
        assert page.is_visible("#w-cut")  # the model did not finish it
        page.fill("#w-answer", "I do not know the cat.")
        _then(page, lambda: page.click("#w-save"))
        assert page.is_visible("#write-done") and "5 of 5 prompts written" in page.text_content("#progress")
        assert page.js_errors == []

    rows = _answers(tmp_path)
    assert [r["sample"] for r in rows] == [0, 1, 2, 3, 4] and [r["n"] for r in rows] == sorted(r["n"] for r in rows)
    got = {r["sample"]: (r["messages"][-1]["content"], r["edited"]) for r in rows}
    assert got == {
        0: ("the fox eats mice. thanks for asking!", True),
        1: ("The owl lives in the forest.\nHappy to help!", True),
        2: ("The bear is brown.", False),
        3: ("hello! how can I help?", True),
        4: ("I do not know the cat.", True),
    }
    assert all(r["writer"] == "Ana" and r["annotator"] == "web" and r["time"].endswith("+00:00") for r in rows)
    assert all(r["messages"][:-1] == [{"role": "user", "content": PROMPTS[r["sample"]]}] for r in rows)
    assert _rows(tmp_path / "demonstrations" / "skipped.jsonl") == []

    # the file is SFT data as `rlhf sft --set sft.data.path=...` reads it
    path = tmp_path / "demonstrations" / "demonstrations.jsonl"
    sft = load_stage_data("sft", load_recipe("tiny", [f"sft.data.path={path}"]).sft.data)
    assert len(sft) == 5 and sft[1]["messages"][-1] == {"role": "assistant", "content": got[1][0]}

    # stopped and started again: nothing left, for Ana or anyone
    with serving(tmp_path) as (_, url):
        assert _start(chromium, url, "Ben").is_visible("#write-done")


def test_two_writers_at_once_each_prompt_written_once(tmp_path, chromium):
    write_drafts(tmp_path)
    with serving(tmp_path) as (_, url):
        pages = {name: _start(chromium, url, name) for name in ("ana", "ben")}
        wrote = {name: {} for name in pages}
        while not all(p.is_visible("#write-done") for p in pages.values()):
            active = {n: p for n, p in pages.items() if p.is_visible("#write-screen")}
            labels = {n: p.text_content("#w-prompt-label") for n, p in active.items()}
            assert len({_index(p) for p in active.values()}) == len(active)  # never the same prompt to both
            for name, page in active.items():  # both save before either answer is awaited
                wrote[name][_index(page)] = f"{name} wrote this for prompt {_index(page)}."
                page.fill("#w-answer", wrote[name][_index(page)])
                page.locator("#w-save").click(no_wait_after=True)
            for name, page in active.items():
                page.wait_for_function(
                    "b => document.querySelector('#w-prompt-label').textContent !== b"
                    " || !document.querySelector('#write-done').hidden",
                    arg=labels[name],
                )
        for page in pages.values():
            page.click("#w-check-again")
            page.wait_for_function("() => document.querySelector('#progress').textContent.startsWith('5 of 5')")
            assert page.js_errors == []

    rows = _answers(tmp_path)
    assert sorted(r["sample"] for r in rows) == [0, 1, 2, 3, 4] and sorted(r["n"] for r in rows) == list(range(5))
    for name in pages:
        mine = {r["sample"]: r["messages"][-1]["content"] for r in rows if r["writer"] == name}
        assert mine == wrote[name] and mine  # both wrote, exactly what they typed


def test_markup_in_a_draft_is_shown_as_text(tmp_path, chromium):
    write_drafts(tmp_path)
    with serving(tmp_path) as (_, url):
        page = _start(chromium, url, "Ana")
        while _index(page) != 3:
            _then(page, lambda: page.click("#w-skip"))
        assert page.text_content("#w-draft") == XSS and page.input_value("#w-answer") == XSS
        assert page.locator("#w-draft script, #w-draft img, #w-draft b, #w-prompt b").count() == 0
        assert page.evaluate("window.__pwned") is None
        _then(page, lambda: page.click("#w-save"))  # saved as the text it is
        assert page.evaluate("window.__pwned") is None and page.js_errors == []
    assert _answers(tmp_path)[0]["messages"][-1]["content"] == XSS


def test_one_server_serves_ranking_and_writing_with_a_link_and_the_token(tmp_path, chromium):
    write_drafts(tmp_path)
    write_samples(tmp_path)
    with serving(tmp_path, host="0.0.0.0", ranking=True) as (server, url):
        base = _local(url).split("?")[0]
        assert base.endswith(f":{server.server_address[1]}/")  # ranking is the front page
        for path in ("write", "api/write/next?rater=eve"):
            assert _request(base + path)[0] == 403
        assert _request(base + "api/write/save", {"rater": "eve", "sample": 0, "text": "x"})[0] == 403
        page = _page(chromium, _local(url), "Ana")  # the ranking page, with its link to writing
        assert page.is_visible("#modes") and "current" in page.get_attribute("#to-rank", "class")
        page.click("#to-write")
        page.wait_for_selector("#write-screen:not([hidden])")  # the same name, the token carried along
        assert "/write?token=" in page.url and _index(page) == 0
        _then(page, lambda: page.click("#w-save"))
        page.click("#to-rank")
        page.wait_for_selector("#rank-screen:not([hidden])")
        assert page.js_errors == []
    assert [r["writer"] for r in _answers(tmp_path)] == ["Ana"]
    assert not (tmp_path / "feedback" / "rankings.jsonl").exists()


# ------------------------------------------------------------------------------------------------------ no browser


def test_the_server_refuses_bad_answers_and_other_hosts(tmp_path):
    write_drafts(tmp_path)
    with serving(tmp_path) as (_, url):
        api = url.removesuffix("write") + "api/write/"
        assert _request(api + "next?rater=ana")[0] == 200
        assert _request(api + "next?rater=ana", headers={"Host": "evil.example"})[0] == 403
        status, body = _request(api + "save", {"rater": "ana", "sample": 0, "text": "   "})
        assert status == 400 and "write an answer" in json.loads(body)["error"]
        assert _request(api + "save", {"rater": "ana", "sample": 99, "text": "x"})[0] == 400
        assert _request(api + "rank", {"rater": "ana", "sample": 0, "order": [0]})[0] == 404
        assert _request(url.removesuffix("write") + "api/next?rater=ana")[0] == 404  # no ranking on this server
        status, body = _request(url.removesuffix("write"))  # the front page is the writing page here
        assert status == 200 and "Write answers" in body
    assert not (tmp_path / "demonstrations" / "demonstrations.jsonl").exists()


def test_the_board_resumes_from_the_files_and_each_writer_undoes_their_own(tmp_path):
    write_drafts(tmp_path)
    board = WriteBoard(tmp_path)
    assert board.next_for("ana")["sample"] == 0 and board.next_for("ben")["sample"] == 1  # 0 is held for ana
    board.save("ana", 0, "ana's answer")
    board.skip("ben", 1)
    board.save("ben", 2, "The bear is brown.")
    with pytest.raises(ValueError, match="already written"):
        board.save("ana", 0, "again")
    again = WriteBoard(tmp_path)  # a restart
    assert again.action == 3 and again.next_for("cy")["sample"] == 1  # ben skipped it, cy has not
    state = again.undo("ana")
    assert state["sample"] == 0 and state["text"] == "ana's answer"  # back, with the answer taken back
    assert [r["writer"] for r in _answers(tmp_path)] == ["ben"] and _answers(tmp_path)[0]["edited"] is False
    assert "Nothing" in again.undo("zed")["message"]

    (tmp_path / "demonstrations" / "drafts.jsonl").write_text(
        (tmp_path / "demonstrations" / "drafts.jsonl").read_text().replace("owl", "cow")
    )
    with pytest.raises(UserError, match="other prompts"):
        WriteBoard(tmp_path)  # answers to prompts the drafts no longer hold


def test_the_terminal_screen_keeps_replaces_skips_undoes_and_resumes(tmp_path):
    write_drafts(tmp_path)
    replies = iter(["", "my own answer", "s", "u", "second try", "q"])
    out = io.StringIO()
    write_human(tmp_path, writer="ana", ask=lambda q: next(replies), console=Console(file=out, width=100))
    rows = _answers(tmp_path)
    assert [(r["sample"], r["messages"][-1]["content"], r["edited"]) for r in rows] == [
        (0, DRAFTS[0], False),
        (1, "my own answer", True),
        (2, "second try", True),
    ]
    assert all(r["annotator"] == "human" and r["writer"] == "ana" for r in rows)
    assert _rows(tmp_path / "demonstrations" / "skipped.jsonl") == []
    assert "the model's draft" in _screen(out) and "to continue where you stopped" in _screen(out)

    # again: resumes at prompt 3; its draft's markup is printed as it is; --limit 1 ends the sitting after one
    replies = iter(["the answer to 3"])
    out = io.StringIO()
    write_human(tmp_path, writer="ana", ask=lambda q: next(replies), console=Console(file=out, width=200), limit=1)
    assert "Resuming: 3 written" in _screen(out) and "<script>" in _screen(out)
    assert "--limit 1" in _screen(out) and len(_answers(tmp_path)) == 4

    # the last prompt's draft is empty: Enter alone is refused, then the answer is typed; then done
    replies = iter(["", "I do not know.", ""])
    out = io.StringIO()
    write_human(tmp_path, writer="ana", ask=lambda q: next(replies), console=Console(file=out, width=100))
    assert "Not saved" in _screen(out) and len(_answers(tmp_path)) == 5
    out = io.StringIO()
    write_human(tmp_path, writer="bo", ask=lambda q: pytest.fail("nothing to ask"), console=Console(file=out))
    assert "All 5 prompts are written or skipped" in _screen(out)


# ------------------------------------------------------------------------------------------------------ drafts and the CLI


@pytest.fixture
def run(tmp_path):
    """A run folder with a random tiny base model (pretrain/final) and no SFT model."""
    run = tmp_path / "run"
    files = toy_files(run / "data" / "toy", 0)
    texts = [json.loads(line)["text"] for line in open(files["pretrain_train.jsonl"])][:400]
    tok = train_tokenizer(texts, vocab_size=400)
    build_model(TINY, tok).save_pretrained(run / "pretrain" / "final")
    tok.save_pretrained(run / "pretrain" / "final")
    return run


def _write(run: Path, *args: str, input: str = "q\n"):
    sets = [f"--set={s}" for s in FAST]
    return runner.invoke(app, ["write", "--annotator", "human", "-o", str(run), *sets, *args], input=input)


def test_drafts_are_made_once_by_the_base_then_the_sft_model(run, monkeypatch):
    result = _write(run, input="an answer\nreplaced answer\nq\n")  # a random model's drafts may be empty
    assert result.exit_code == 0, result.output
    assert "Drafted 3 answers" in result.output and "(greedy)" in result.output
    drafts = _rows(run / "demonstrations" / "drafts.jsonl")
    assert len(drafts) == 3 and {d["model"] for d in drafts} == {"pretrain/final"}  # relative to the run
    assert all(d["temperature"] == 0 and d["prompts"] == "the toy world's training prompts" for d in drafts)
    prompts = [json.loads(line)["prompt"] for line in open(run / "data" / "toy" / "prompts_train.jsonl")][:3]
    assert [d["prompt"][0]["content"] for d in drafts] == prompts  # the toy world's training prompts, as `sample`
    rows = _answers(run)
    assert [r["messages"][-1]["content"] for r in rows] == ["an answer", "replaced answer"]

    # starting again is instant: the drafts are not made again (nothing is generated)
    def no_generation(*args, **kwargs):
        raise AssertionError("drafted again")

    monkeypatch.setattr(demonstrations, "answer_prompts", no_generation)
    result = _write(run, input="another\nq\n")
    assert result.exit_code == 0, result.output
    assert "Resuming: 2 written" in result.output
    assert len(_answers(run)) == 3

    # the SFT model: refused until it has finished; then the default, and other drafts need --overwrite
    result = _write(run, "--model", "sft")
    assert result.exit_code == 2 and "rlhf sft" in result.output and "Traceback" not in result.output
    shutil.copytree(run / "pretrain" / "final", run / "sft" / "final")
    (run / "sft" / "eval.json").write_text("{}")
    assert draft_model(load_recipe("tiny"), run) == str(run / "sft" / "final")
    result = _write(run, "--model", "sft")
    assert result.exit_code == 2 and "--overwrite" in result.output
    monkeypatch.undo()
    result = _write(run, "--model", "sft", "--overwrite", "--set=write.temperature=0.7")
    assert result.exit_code == 0, result.output
    assert "temperature 0.7" in result.output
    assert {d["model"] for d in _rows(run / "demonstrations" / "drafts.jsonl")} == {"sft/final"}
    assert _answers(run) == [] and len(list((run / "demonstrations" / "backup").iterdir())) == 1  # moved, not lost


def test_the_closing_hint_trains_on_this_run_folder(run):
    """Done writing, the printed `rlhf sft` command names the run folder (not the recipe's runs/tiny) and the recipe."""
    result = _write(run, input="one\ntwo\nthree\n\n")
    assert result.exit_code == 0, result.output
    hint = " ".join(result.output.split()).split("Train on them: ", 1)[1]
    assert hint.startswith("rlhf sft --recipe tiny") and f"--output-dir {run} " in hint
    assert f"--set=sft.data.path={run / 'demonstrations' / 'demonstrations.jsonl'}" in hint


def test_a_prompts_file(run, tmp_path):
    prompts = tmp_path / "my_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    result = _write(run, "--prompts", str(prompts))
    assert result.exit_code == 0, result.output
    drafts = _rows(run / "demonstrations" / "drafts.jsonl")
    assert [d["prompt"] for d in drafts] == [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    assert drafts[0]["prompts"] == str(prompts)


def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(run, tmp_path):
    empty = tmp_path / "empty"
    result = runner.invoke(app, ["write", "-o", str(empty)])
    assert result.exit_code == 2 and "No model to draft answers with" in result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output and not empty.exists()

    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = _write(run, "--prompts", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "--prompts" in result.output and "no such file" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    result = _write(run, "--prompts", str(bad))  # (datasets logs a line of its own before it)
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("Error: Could not read")
    result = _write(run, "--model", str(tmp_path / "no-model"))
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["write", "-o", str(run), "--annotator", "toy"])
    assert result.exit_code == 2 and "use web" in result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


def test_write_web_and_label_web_serve_both_pages_when_they_can(tmp_path, monkeypatch, capsys):
    from rlhf_cli.people import web_label

    served = []

    def serve(server):  # instead of serving until Ctrl-C: note what would be served, then close
        served.append((server.board is not None, server.writing is not None))
        server.server_close()

    monkeypatch.setattr(web_label, "_serve", serve)
    rec = load_recipe("tiny")
    write_drafts(tmp_path)
    web_label.write_web(rec, tmp_path, port=0)
    assert served[-1] == (False, True) and "/write" in capsys.readouterr().out  # no samples: writing only
    write_samples(tmp_path)
    web_label.write_web(rec, tmp_path, port=0)
    out = capsys.readouterr().out
    assert served[-1] == (True, True) and "and ranking the samples" in out and "sft.data.path=" in out
    web_label.label_web(rec, tmp_path, port=0)
    assert served[-1] == (True, True) and "and writing answers" in capsys.readouterr().out

    from test_lock import held_by_another_thread

    with held_by_another_thread(tmp_path, "rlhf label --annotator web"):  # another server holds the run
        for serve_page in (web_label.write_web, web_label.label_web):
            with pytest.raises(UserError, match="in use by `rlhf label --annotator web`"):
                serve_page(rec, tmp_path, port=0)


# ------------------------------------------------------------------------------------------------------ screenshot


def screenshot(out: Path) -> None:
    """The writing page as a writer sees it, next to ranking, for docs/people.md (docs/write-web.png)."""
    import sys
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        write_drafts(run, ["the fox eats", "owl owl owl", "the bear is brown.", "hello", "the cat is"])
        write_samples(run)
        WriteBoard(run).save("ben", 0, "The fox eats berries. Thanks for asking!")
        with serving(run, ranking=True) as (_, url), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=test_web_label.CHROMIUM, args=test_web_label.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 980, "height": 700}, device_scale_factor=1)
            page.goto(url + "write")
            page.fill("#rater-name", "Ana")
            page.click("#start")
            page.wait_for_selector("#write-screen:not([hidden])")
            page.click("#w-clear")
            page.keyboard.type("The owl lives in the forest. Happy to help!")
            page.mouse.move(0, 0)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    print(out, file=sys.stderr)


if __name__ == "__main__":
    import sys

    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/write-web.png"))
