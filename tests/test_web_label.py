"""`rlhf label --annotator web` and `rlhf label stats`: the ranking page driven by a real headless Chromium (Debian's
/usr/bin/chromium through Playwright), the board behind it (who gets which prompt, undo, resume), the token and host
guards, the file `rlhf reward` reads, and the agreement figures.

The browser tests skip when Chromium or Playwright is missing, unless RLHF_BROWSER_TESTS=required (as `.ci/run` sets
it), where they fail instead. `python tests/test_web_label.py docs/label-web.png` takes docs/people.md's screenshot.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhf_cli.cli import app
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.people import web_label
from rlhf_cli.people.web_label import Board, make_server
from rlhf_cli.recipe import load_recipe, save_resolved
from rlhf_cli.runtime.errors import UserError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>'
PROMPTS = [
    "what does the fox eat?",
    "where does the owl live?",
    "what colour is the bear?",
    "hi",
    "what does the cat like?",
]
runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_samples(run_dir: Path) -> Path:
    """Five prompts: three of three answers (one answer is markup), one of identical answers (never offered), one of
    four answers."""
    answers = [
        ["The fox eats mice. Thank you for asking!", "fox mice", "The fox eats berries and it was cut"],
        ["The owl lives in the forest.", XSS, "owl owl owl"],
        ["The bear is brown.", "It is brown, thanks for asking!", "The bear is bl"],
        ["hello", "hello", "hello"],
        ["The cat likes milk.", "Cats like milk, I think.", "milk and the bl", "The cat likes fish, thank you."],
    ]
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "answers": a,
            "finished": [not t.endswith(("cut", "bl")) for t in a],
        }
        for p, a in zip(PROMPTS, answers, strict=True)
    ]
    path = run_dir / "feedback" / "samples.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextmanager
def serving(run_dir: Path, host: str = "127.0.0.1", raters_per_prompt: int = 1):
    server, url = make_server(run_dir / "feedback", host, 0, raters_per_prompt)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _local(url: str) -> str:
    """A link printed for another host, pointed at this machine (the test reaches the server on 127.0.0.1)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()


def _request(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={**(headers or {})})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# ------------------------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("RLHF_BROWSER_TESTS") == "required"
    why = None
    if not Path(CHROMIUM).exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            why = "Playwright is not installed (pip install -e '.[dev]' or 'rlhf-cli[web]')"
    if why:
        if required:
            pytest.fail(f"RLHF_BROWSER_TESTS=required but {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _page(browser, url: str, name: str | None = None):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    if name is not None:
        page.fill("#rater-name", name)
        page.click("#start")
        page.wait_for_selector("#rank-screen:not([hidden]), #done-screen:not([hidden])")
    page.js_errors = errors
    return page


def _shown(page) -> tuple[int, list[str]]:
    """The prompt on the page (its sample index) and its answers in the order shown, best first."""
    label = page.text_content("#prompt-label")
    return int(label.split()[-1]) - 1, page.locator("#answers li .text").all_text_contents()


def _wait_for_change(page, before: str):
    page.wait_for_function(
        "before => document.querySelector('#prompt-label').textContent !== before"
        " || !document.querySelector('#done-screen').hidden",
        arg=before,
    )


def _act(page, selector: str):
    before = page.text_content("#prompt-label")
    page.click(selector)
    _wait_for_change(page, before)


def test_a_rater_ranks_undoes_reloads_and_continues(tmp_path, browser):
    write_samples(tmp_path)
    rankings = tmp_path / "feedback" / "rankings.jsonl"
    with serving(tmp_path) as (_, url):
        page = _page(browser, url, "Ana")
        assert page.text_content("#who-name") == "Ana"
        assert "0 of 4 rankings" in page.text_content("#progress")
        given = {}

        # 1: by keyboard: select the last answer (key K) and move it to the top with the up arrow, then Enter.
        index, texts = _shown(page)
        page.keyboard.press(str(len(texts)))
        for _ in range(len(texts) - 1):
            page.keyboard.press("ArrowUp")
        expect = [texts[-1], *texts[:-1]]
        assert _shown(page)[1] == expect
        page.locator("#criteria input[value=honesty]").check()
        before = page.text_content("#prompt-label")
        page.keyboard.press("Enter")
        _wait_for_change(page, before)
        given[index] = expect

        # 2: by dragging the second answer above the first.
        index, texts = _shown(page)
        page.drag_and_drop("#answers li:nth-child(2)", "#answers li:nth-child(1)", target_position={"x": 40, "y": 5})
        expect = [texts[1], texts[0], *texts[2:]]
        assert _shown(page)[1] == expect
        _act(page, "#submit")
        given[index] = expect

        # 3: with the buttons: the first answer down one.
        index, texts = _shown(page)
        page.click("#answers li:nth-child(1) .down")
        expect = [texts[1], texts[0], *texts[2:]]
        _act(page, "#submit")
        given[index] = expect
        third = index
        assert "3 of 4 rankings" in page.text_content("#progress")

        # undo takes back the third: it is shown again, and the file no longer holds it
        _act(page, "#undo")
        assert _shown(page)[0] == third
        assert "Undone" in page.text_content("#message")
        assert [r["sample"] for r in _rows(rankings)] == [i for i in given if i != third]

        # reload: the name is remembered, the same prompt comes back; rank it as shown, then the last one.
        page.reload()
        page.wait_for_selector("#rank-screen:not([hidden])")
        index, texts = _shown(page)
        assert index == third
        _act(page, "#submit")
        given[third] = texts
        index, texts = _shown(page)
        _act(page, "#submit")
        given[index] = texts
        assert page.is_visible("#done-screen") and "4 of 4 rankings" in page.text_content("#progress")
        assert page.js_errors == []

    rows = _rows(rankings)
    assert len(rows) == 4 and [r["n"] for r in rows] == sorted(r["n"] for r in rows)
    assert {r["sample"]: r["responses"] for r in rows} == given
    assert 3 not in given  # the prompt whose answers are all the same is never offered
    assert all(r["rater"] == "Ana" and r["annotator"] == "web" and r["time"].endswith("+00:00") for r in rows)
    assert rows[0]["criteria"] == ["honesty"] and rows[1]["criteria"] == []
    assert all(r["prompt"] == [{"role": "user", "content": PROMPTS[r["sample"]]}] for r in rows)

    # Stopped and started again: one rater per prompt, so nothing is left for Ben either.
    with serving(tmp_path) as (_, url):
        page = _page(browser, url, "Ben")
        assert page.is_visible("#done-screen")


def test_two_raters_at_once_each_rank_every_prompt_once(tmp_path, browser):
    write_samples(tmp_path)
    with serving(tmp_path, raters_per_prompt=2) as (_, url):
        pages = {name: _page(browser, url, name) for name in ("ana", "ben")}
        given = {name: {} for name in pages}
        for _ in range(4):
            shown = {name: _shown(page) for name, page in pages.items()}
            labels = {name: page.text_content("#prompt-label") for name, page in pages.items()}
            for page in pages.values():  # both submit before either answer is awaited
                page.locator("#answers li:nth-child(1) .down").click()
                page.locator("#submit").click(no_wait_after=True)
            for name, page in pages.items():
                _wait_for_change(page, labels[name])
                index, texts = shown[name]
                given[name][index] = [texts[1], texts[0], *texts[2:]]
        for page in pages.values():
            page.click("#check-again")  # the one that finished first saw the other's last ranking still to come
            page.wait_for_function("() => document.querySelector('#progress').textContent.startsWith('8 of 8')")
            assert page.is_visible("#done-screen") and page.js_errors == []

    rows = _rows(tmp_path / "feedback" / "rankings.jsonl")
    assert len(rows) == 8 and sorted(r["n"] for r in rows) == list(range(8))
    for name in pages:
        mine = {r["sample"]: r["responses"] for r in rows if r["rater"] == name}
        assert mine == given[name] and len(mine) == 4  # every prompt once, exactly as ranked


def test_a_second_tab_of_the_same_rater_is_told_and_moves_on(tmp_path, browser):
    write_samples(tmp_path)
    with serving(tmp_path) as (_, url):
        first = _page(browser, url, "Ana")
        second = first.context.new_page()  # the same browser profile: the same name
        second.goto(url)
        second.wait_for_selector("#rank-screen:not([hidden])")
        assert _shown(second)[0] == _shown(first)[0] == 0
        _act(first, "#submit")
        _act(second, "#submit")  # prompt 0 is ranked already: an error, and the page moves on
        assert "already ranked" in second.text_content("#message") and _shown(second)[0] == 1
    assert [r["sample"] for r in _rows(tmp_path / "feedback" / "rankings.jsonl")] == [0]


def test_markup_in_an_answer_is_shown_as_text(tmp_path, browser):
    write_samples(tmp_path)
    with serving(tmp_path) as (_, url):
        page = _page(browser, url, "Ana")
        while XSS not in _shown(page)[1]:
            _act(page, "#skip")
        item = page.locator("#answers li", has_text="<script>")
        assert item.locator(".text").text_content() == XSS
        assert page.locator("#answers script, #answers img, #answers b").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert page.js_errors == []


def test_another_host_needs_the_token(tmp_path, browser):
    write_samples(tmp_path)
    with serving(tmp_path, host="0.0.0.0") as (server, url):
        assert server.token and f"?token={server.token}" in url
        base = _local(url).split("?")[0]
        for path in ("", "api/next?rater=eve"):
            assert _request(base + path)[0] == 403
            assert _request(f"{base}{path}{'&' if '?' in path else '?'}token=wrong")[0] == 403
        assert _request(base + "api/undo", {"rater": "eve"})[0] == 403
        assert _request(base + "api/next?rater=eve", headers={"X-Rlhf-Token": server.token})[0] == 200
        page = _page(browser, _local(url), "Ana")  # the printed link works: the page sends its token along
        _act(page, "#submit")
        assert "1 of 4 rankings" in page.text_content("#progress")
        plain = _page(browser, base)
        assert "Forbidden" in plain.text_content("body")
    assert [r["rater"] for r in _rows(tmp_path / "feedback" / "rankings.jsonl")] == ["Ana"]


# ------------------------------------------------------------------------------------------------------ no browser


def test_local_server_refuses_other_host_names_and_forms(tmp_path):
    write_samples(tmp_path)
    with serving(tmp_path) as (server, url):
        assert server.token is None and url.startswith("http://127.0.0.1:")
        assert _request(url + "api/next?rater=ana")[0] == 200
        # a site whose name was rebound to 127.0.0.1 sends its own name as Host
        assert _request(url + "api/next?rater=ana", headers={"Host": "evil.example"})[0] == 403
        form = urllib.request.Request(url + "api/undo", data=b"rater=ana", headers={"Content-Type": "text/plain"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(form, timeout=10)
        assert err.value.code == 415
        status, body = _request(url + "api/rank", {"rater": "ana", "sample": 0, "order": [0, 0, 1]})
        assert status == 400 and "exactly once" in json.loads(body)["error"]
        assert _request(url + "api/next?rater=")[0] == 400
    assert not (tmp_path / "feedback" / "rankings.jsonl").exists()


def test_many_raters_at_once_lose_nothing(tmp_path):
    write_samples(tmp_path)
    raters = [f"rater{i}" for i in range(8)]
    with serving(tmp_path, raters_per_prompt=len(raters)) as (_, url):

        def rank_all(name):
            done = []
            state = json.loads(_request(f"{url}api/next?rater={name}")[1])
            while not state["done"]:
                order = [a["id"] for a in state["answers"]]
                done.append((state["sample"], order))
                status, body = _request(url + "api/rank", {"rater": name, "sample": state["sample"], "order": order})
                assert status == 200, body
                state = json.loads(body)
            return name, done

        with ThreadPoolExecutor(len(raters)) as pool:
            results = dict(pool.map(rank_all, raters))
    rows = _rows(tmp_path / "feedback" / "rankings.jsonl")
    assert len(rows) == 8 * 4 and sorted(r["n"] for r in rows) == list(range(32))
    for name, done in results.items():
        assert sorted(i for i, _ in done) == [0, 1, 2, 4]
        assert sorted(r["sample"] for r in rows if r["rater"] == name) == [0, 1, 2, 4]


def test_board_offers_each_prompt_until_it_has_its_raters(tmp_path):
    write_samples(tmp_path)
    feedback = tmp_path / "feedback"
    board = Board(feedback, raters_per_prompt=2)
    a = board.next_for("ana")
    b = board.next_for("ben")
    c = board.next_for("cy")
    assert a["sample"] == b["sample"] == 0 and c["sample"] == 1  # prompt 0 is held for ana and ben
    assert board.next_for("ana")["sample"] == 0  # asking again (a reload) shows the same prompt
    board.rank("ana", 0, [a["answers"][0]["id"], a["answers"][1]["id"], a["answers"][2]["id"]])
    with pytest.raises(ValueError, match="already"):
        board.rank("ana", 0, [0, 1, 2])
    assert board.next_for("ana")["sample"] == 1
    board.skip("ben", 0)
    assert board.next_for("dee")["sample"] == 0  # ben skipped it: a second rater is still wanted
    board.rank("dee", 0, [2, 1, 0])
    assert board.next_for("eve")["sample"] != 0  # two rankings: prompt 0 is complete

    # A new server (a restart) reads the files: the same state, and each rater's undo takes back their own last act.
    again = Board(feedback, raters_per_prompt=2)
    assert again.action == board.action == 3
    assert again.next_for("dee")["sample"] == 1
    state = again.undo("ana")
    assert state["sample"] == 0 and "Undone" in state["message"]
    assert [(r["rater"], r["sample"]) for r in _rows(feedback / "rankings.jsonl")] == [("dee", 0)]
    assert again.undo("ben")["sample"] == 0 and _rows(feedback / "skipped.jsonl") == []
    assert "Nothing" in again.undo("zed")["message"]


def test_rankings_of_several_raters_are_what_rlhf_reward_reads(tmp_path):
    from rlhf_cli.data import load_stage_data
    from rlhf_cli.recipe import DataSpec

    write_samples(tmp_path)
    board = Board(tmp_path / "feedback", raters_per_prompt=2)
    for name, order in (("ana", [0, 1, 2]), ("ben", [2, 1, 0])):
        for index in (0, 1):
            board.rank(name, index, order, ["clarity"] if name == "ana" else [])
    pairs = load_stage_data("reward", DataSpec(path=str(tmp_path / "feedback" / "rankings.jsonl")))
    assert len(pairs) == 4 * 3  # 4 rankings of 3 answers
    groups = {}
    for row in pairs:
        groups.setdefault(row["prompt"][0]["content"], set()).add(row["group"])
    assert all(len(g) == 1 for g in groups.values()) and len(groups) == 2  # both raters' pairs: one prompt, one group


def test_cli_web_errors_are_one_sentence_exit_2(tmp_path, monkeypatch):
    result = runner.invoke(app, ["label", "--annotator", "web", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "rlhf sample" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()

    write_samples(tmp_path / "run")
    monkeypatch.setattr(web_label, "WEB_EXTRA_MODULES", ("no_such_module_for_the_web_page",))
    result = runner.invoke(app, ["label", "--annotator", "web", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "pip install 'rlhf-cli[web]'" in result.output and result.output.count(".") <= 2
    monkeypatch.setattr(web_label, "WEB_EXTRA_MODULES", ())

    with serving(tmp_path / "run") as (server, _):  # the run is served already, on another port
        port = str(server.server_address[1])
        result = runner.invoke(app, ["label", "--annotator", "web", "-o", str(tmp_path / "run"), "--port", port])
    assert result.exit_code == 2 and "Cannot serve" in result.output
    assert sorted(p.name for p in (tmp_path / "run" / "feedback").iterdir()) == ["samples.jsonl"]


def test_one_server_per_run_and_no_other_writer_while_it_serves(tmp_path, monkeypatch):
    """The page holds the run's lock while it serves (rlhf_cli.runtime.lock): a second page, and a toy labelling over the
    rankings, are refused in one sentence naming the server's command; the rankings stay where they are."""
    write_samples(tmp_path)
    (tmp_path / "feedback" / "rankings.jsonl").write_text("")
    serving_now, stop = threading.Event(), threading.Event()

    def serve(server):  # instead of serving until Ctrl-C: hold the lock until the test is done
        serving_now.set()
        stop.wait(20)
        server.server_close()

    monkeypatch.setattr(web_label, "_serve", serve)
    rec = load_recipe("tiny")
    first = threading.Thread(target=web_label.label_web, args=(rec, tmp_path), kwargs={"port": 0}, daemon=True)
    first.start()
    try:
        assert serving_now.wait(20)
        with pytest.raises(UserError, match="is in use by `.*` \\(PID"):
            web_label.label_web(rec, tmp_path, port=0)
        result = runner.invoke(app, ["label", "--annotator", "toy", "--overwrite", "-o", str(tmp_path)])
        assert result.exit_code == 2 and "in use by" in result.output and "Traceback" not in result.output
        assert sorted(p.name for p in (tmp_path / "feedback").iterdir()) == ["rankings.jsonl", "samples.jsonl"]
    finally:
        stop.set()
        first.join(20)
    assert not (tmp_path / ".rlhf.lock").exists()  # released when the server stopped


def test_the_pipeline_label_step_points_web_to_the_command(tmp_path):
    from rlhf_cli.people.feedback import label

    write_samples(tmp_path)
    rec = load_recipe("tiny", ["feedback.annotator=web"])
    with pytest.raises(UserError, match="--annotator web"):
        label(rec, tmp_path)


# ------------------------------------------------------------------------------------------------------ stats


def test_label_stats_between_raters_and_against_gold(tmp_path):
    write_samples(tmp_path)
    save_resolved(load_recipe("tiny", ["seed=3"]), tmp_path)
    board = Board(tmp_path / "feedback", raters_per_prompt=3)
    world = ToyWorld(3)
    samples = board.samples
    gold_order = {}
    for index in (0, 1, 2, 4):
        row = samples[index]
        gold = world.rank(row["prompt"][0]["content"], row["answers"], row["finished"])
        gold_order[index] = gold
        board.rank("ana", index, gold)  # ana ranks as the gold reward does
        board.rank("ben", index, gold[::-1])  # ben the other way round
    board.rank("cy", 0, gold_order[0])
    result = runner.invoke(app, ["label", "stats", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["rankings"] == 9 and stats["raters"] == {"ana": 4, "ben": 4, "cy": 1}
    between = stats["between_raters"]
    by_pair = {tuple(p["raters"]): p for p in between["by_pair"]}
    assert by_pair[("ana", "ben")]["prompts"] == 4 and by_pair[("ana", "ben")]["pairs"] == 3 + 3 + 3 + 6
    assert by_pair[("ana", "ben")]["agreement"]["mean"] == 0 and by_pair[("ana", "ben")]["kendall_tau"] == -1
    assert by_pair[("ana", "cy")]["agreement"]["mean"] == 1 and by_pair[("ana", "cy")]["kendall_tau"] == 1
    assert between["prompts"] == 4 and between["comparisons"] == 4 + 2
    assert between["agreement"]["n"] == 15 + 3 + 3 and between["agreement"]["mean"] == pytest.approx(3 / 21)
    gold = {g["rater"]: g for g in stats["gold"]}
    assert gold["ana"]["agreement"]["mean"] == 1 and gold["ana"]["kendall_tau"]["mean"] == 1
    assert gold["ben"]["agreement"]["mean"] == 0 and gold["ben"]["pairs"] + gold["ben"]["gold_ties"] == 15

    table = runner.invoke(app, ["label", "stats", str(tmp_path)])
    assert table.exit_code == 0 and "Kendall" in table.output and "gold order" in table.output

    (tmp_path / "recipe.yaml").unlink()  # without the run's recipe: no gold, said so
    result = json.loads(runner.invoke(app, ["label", "stats", str(tmp_path), "--json"]).output)
    assert result["gold"] is None and "recipe" in result["gold_note"]
    assert runner.invoke(app, ["label", "stats", str(tmp_path / "nowhere")]).exit_code == 2
    empty = tmp_path / "empty"
    write_samples(empty)
    result = runner.invoke(app, ["label", "stats", str(empty)])
    assert result.exit_code == 2 and "no rankings" in result.output


# ------------------------------------------------------------------------------------------------------ screenshot


def screenshot(out: Path) -> None:
    """The ranking page as a rater sees it, for docs/people.md (docs/label-web.png)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        write_samples(run)
        board = Board(run / "feedback", raters_per_prompt=2)
        board.rank("ben", 0, [0, 2, 1])
        with serving(run, raters_per_prompt=2) as (_, url), sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = chromium.new_page(viewport={"width": 980, "height": 760}, device_scale_factor=1)
            page.goto(url)
            page.fill("#rater-name", "Ana")
            page.click("#start")
            page.wait_for_selector("#rank-screen:not([hidden])")
            for key in ("Enter", "s", "s"):  # rank the first prompt, skip two: the one of four answers is shown
                before = page.text_content("#prompt-label")
                page.keyboard.press(key)
                page.wait_for_function("b => document.querySelector('#prompt-label').textContent !== b", arg=before)
            texts = page.locator("#answers li .text").all_text_contents()
            page.keyboard.press(str(texts.index("The cat likes fish, thank you.") + 1))
            for _ in range(4):  # the best to the top
                page.keyboard.press("ArrowUp")
            texts = page.locator("#answers li .text").all_text_contents()
            page.keyboard.press(str(texts.index("milk and the bl") + 1))
            for _ in range(4):  # the one cut off to the bottom
                page.keyboard.press("ArrowDown")
            page.keyboard.press("1")
            page.locator("#criteria input[value=helpfulness]").check()
            page.locator("#criteria input[value=honesty]").check()
            page.mouse.move(0, 0)
            page.screenshot(path=str(out), full_page=True)
            chromium.close()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/label-web.png"))


# ------------------------------------------------------------------------------------------------------ a people's round

RUBRIC = ["The right fact above all.", "Polite: <b>happy to help!</b> is better."]


def _people_recipe(run: Path, tmp_path: Path) -> Path:
    """The small run's recipe with a rubric and people's rounds of 4 prompts."""
    import yaml

    data = yaml.safe_load((run / "recipe.yaml").read_text())
    data["feedback"].update(rubric=RUBRIC, people_prompts=4)
    path = tmp_path / "people.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _printed_command(output: str, start: str) -> list[str]:
    """The arguments of the command `output` prints after `start` (`rlhf label ...`), as a shell would split it."""
    import shlex

    line = next(line for line in output.splitlines() if start in line)
    return shlex.split(line[line.index(start) :].split(" && ")[0])[1:]  # without `rlhf`


def test_a_person_ranks_a_peoples_round_on_a_finished_run(small_run, tmp_path, browser, monkeypatch):
    """On a run the toy annotator has ranked whole, the page says nothing is left and names the people's round's
    command; that command, as printed, samples fresh answers into feedback/people/, serves them with the recipe's
    rubric, and a person's ranking lands there; the toy rankings stay byte for byte; `rlhf reward` trains on both."""
    recipe = _people_recipe(small_run, tmp_path)
    toy = small_run / "feedback" / "rankings.jsonl"
    toy_bytes, toy_samples = toy.read_bytes(), (small_run / "feedback" / "samples.jsonl").read_bytes()
    seen = {}

    def nothing_left(server):  # instead of serving until Ctrl-C: what a rater sees on the page, then stop
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            page = _page(browser, f"http://127.0.0.1:{port}/", "Ana")
            seen["done"] = page.is_visible("#done-screen")
            seen["text"] = page.text_content("#done-text")
            seen["more"] = page.text_content("#done-more") if page.is_visible("#done-more") else ""
            seen["errors"] = page.js_errors
        finally:
            server.shutdown()
            server.server_close()

    monkeypatch.setattr(web_label, "_serve", nothing_left)
    result = runner.invoke(app, ["label", "--recipe", str(recipe), "-o", str(small_run), "--annotator", "web",
                                 "--port", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["done"] and "ranked already (toy 12)" in seen["text"] and seen["errors"] == []
    assert "ranked already (toy 12)" in result.output
    command = _printed_command(result.output, "rlhf label")
    assert command[command.index("--output-dir") :] == [
        "--output-dir",
        str(small_run),
        "--people",
        "--annotator=web",
        "--port=0",  # this server's port, kept (0: any free one)
    ]
    assert "rlhf label" in seen["more"] and f"--output-dir {small_run} --people --annotator=web" in seen["more"]

    def rank_two(server):  # a person ranks two prompts of the people's round, then the server stops
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            page = _page(browser, f"http://127.0.0.1:{server.server_address[1]}/", "Ana")
            assert page.is_visible("#rubric-box")
            assert page.locator("#rubric li").all_text_contents() == RUBRIC  # as text, never as markup
            assert page.locator("#rubric b").count() == 0
            for _ in range(2):
                index, texts = _shown(page)
                page.click("#answers li:nth-child(1) .down")
                seen.setdefault("given", {})[index] = [texts[1], texts[0], *texts[2:]]
                _act(page, "#submit")
            seen["errors"] = page.js_errors
        finally:
            server.shutdown()
            server.server_close()

    monkeypatch.setattr(web_label, "_serve", rank_two)
    result = runner.invoke(app, command)  # the printed command
    assert result.exit_code == 0, result.output
    assert "fresh prompts" in result.output and seen["errors"] == []
    people = small_run / "feedback" / "people"
    samples = _rows(people / "samples.jsonl")
    assert len(samples) == 4 and all(s["seed"] == 1 for s in samples)  # the run's seed is 0: other answers
    rows = _rows(people / "rankings.jsonl")
    assert {r["sample"]: r["responses"] for r in rows} == seen["given"]
    assert all(r["rater"] == "Ana" and r["annotator"] == "web" for r in rows)
    assert toy.read_bytes() == toy_bytes and (small_run / "feedback" / "samples.jsonl").read_bytes() == toy_samples

    # `rlhf reward` (again, on the finished run) trains on the toy annotator's comparisons and the person's
    result = runner.invoke(app, ["reward", "--recipe", str(recipe), "-o", str(small_run), "--overwrite"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((small_run / "reward" / "eval.json").read_text())
    comparisons = metrics["comparisons"]
    people_pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in rows)
    # each file named relative to the run (a run can move)
    assert comparisons == {"feedback/rankings.jsonl": comparisons["feedback/rankings.jsonl"],
                           "feedback/people/rankings.jsonl": people_pairs}  # fmt: skip
    toy_pairs = comparisons["feedback/rankings.jsonl"]
    assert toy_pairs > 0 and metrics["train_pairs"] + metrics["eval_pairs"] == sum(comparisons.values())
    assert f"{toy_pairs} comparisons from {toy} and {people_pairs} from the people's round" in result.output
    assert "(Ana 1)" not in result.output and "(Ana 2)" in result.output
    assert toy.read_bytes() == toy_bytes
    # `rlhf reward inspect` rebuilds the held-out prompts the stage drew, the people's included
    from rlhf_cli.evaluation.reward_inspect import inspect_reward_model

    inspected = inspect_reward_model(small_run / "reward" / "final")
    assert inspected["pairs"] == metrics["eval_pairs"]
    assert abs(inspected["accuracy"] - metrics["accuracy"]["mean"]) < 1e-6


def test_a_peoples_round_only_ever_adds_and_is_ranked_by_people(small_run, tmp_path):
    """`rlhf sample --people` adds fresh prompts and leaves the rows people may have ranked as they are; a people's
    round is refused to the toy annotator, and --overwrite with --people is refused."""
    recipe = _people_recipe(small_run, tmp_path)
    args = ["--recipe", str(recipe), "-o", str(small_run)]
    result = runner.invoke(app, ["label", *args, "--people", "--annotator", "toy"])
    assert result.exit_code == 2 and "--annotator human or web" in result.output
    result = runner.invoke(app, ["sample", *args, "--people", "--overwrite"])
    assert result.exit_code == 2 and "never replaces" in result.output
    assert not (small_run / "feedback" / "people").exists()
    for _ in range(2):
        result = runner.invoke(app, ["sample", *args, "--people"])
        assert result.exit_code == 0, result.output
    path = small_run / "feedback" / "people" / "samples.jsonl"
    rows = _rows(path)
    assert len(rows) == 8 and [r["seed"] for r in rows] == [1] * 4 + [2] * 4
    assert len({json.dumps(r["prompt"]) for r in rows}) == 8  # a fresh draw: no prompt twice
    first_four = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:4])
    assert path.read_text().startswith(first_four)
