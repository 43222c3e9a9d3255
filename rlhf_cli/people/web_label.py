"""People rank answers, and write them, on a local web page: `rlhf label --annotator web [--host 127.0.0.1]
[--port 8765]` (/), `rlhf write --annotator web` (/write; the demonstrations, rlhf_cli.people.demonstrations).

One page (rlhf_cli/people/web/label.html, no build step) served by the standard library's threaded HTTP server. A rater enters
a name, sees a prompt and its K answers (model text is put in the page as text, never as HTML), orders them (drag, or
select with 1-K and move with the arrow keys), optionally ticks the criteria that decided it, and submits, skips or
undoes. Each submission is appended to feedback/rankings.jsonl at once (flushed and fsynced, under one lock: several
raters at once lose nothing), in the form `rlhf reward` reads, with the rater, the time and the criteria:

    {"prompt", "responses": [best first], "sample", "annotator": "web", "rater", "time", "criteria": [...], "n"}

Skips go to feedback/skipped.jsonl (per rater). `--people`: the same, in a people's round's folder (feedback/people/,
rlhf_cli.people.feedback.sample_people) beside the annotator's rankings. `feedback.rubric` (what the raters value) is shown
above the answers. A prompt is offered until it has `feedback.raters_per_prompt`
rankings, never twice to one rater; a prompt shown to a rater is held for them (LEASE_SECONDS) so that two raters do not
rank the same prompt beyond the count. Stopping the server and starting it again continues where everyone was (the
files are the state). Undo takes back the rater's own last ranking or skip, also one of an earlier session.

Safe by default: the server binds 127.0.0.1 (and answers only requests addressed to a local host name, against DNS
rebinding); any other --host needs the random token the printed link carries (a request without it gets 403). It
writes nothing but those two files of the run's feedback folder (and, writing, those of its demonstrations folder),
and holds the run's lock (rlhf_cli.runtime.lock) while it serves: only one server serves a run, and no other command writes
into it meanwhile (`rlhf label --annotator toy --overwrite` is refused, naming the server's command and process). One server serves both pages when the run has both to do (a link joins them).
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import random
import secrets
import signal
import socket
import threading
from collections import Counter
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rlhf_cli.people.demonstrations import WriteBoard, writer_of
from rlhf_cli.people.feedback import (
    _append,
    _drop_last_action,
    _read_jsonl,
    check_rows_match,
    read_samples,
    start_over,
    unique_answers,
)
from rlhf_cli.people.offers import LEASE_SECONDS, Offers
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.lock import run_lock

PAGE = Path(__file__).parent / "web" / "label.html"
CRITERIA = ("helpfulness", "honesty", "harmlessness", "clarity", "relevance")  # the seeds' criteria
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 1 << 20
MAX_NAME = 40
# Modules the web page needs beyond the standard library (none today; the `web` extra also holds the browser tests').
WEB_EXTRA_MODULES: tuple[str, ...] = ()


def require_web_extra() -> None:
    missing = [m for m in WEB_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"The web ranking page needs {', '.join(missing)}: install it with `pip install 'rlhf-cli[web]'`."
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rater_of(row: dict) -> str:
    """Who made a ranking or skip: the web page's rater, else the annotator (human, toy, ...)."""
    return str(row.get("rater") or row.get("annotator") or "unknown")


class Board(Offers):
    """Who ranked what, and what to offer next: the rankings and skipped files, kept in memory under one lock.

    The files are the state: the board is rebuilt from them when a server starts, and every change is written to
    them (under the lock) before the board changes."""

    def __init__(
        self,
        feedback: Path,
        raters_per_prompt: int = 1,
        lease_seconds: float = LEASE_SECONDS,
        fresh: bool = False,
        rubric: list[str] | tuple = (),
        more: str | None = None,
    ):
        """`fresh`: the rankings and skips so far are about to be moved aside (--overwrite): start from none.
        `rubric`: what the raters value, shown above the answers; `more`: what to run for more prompts to rank, shown
        when nothing is left."""
        self.feedback = Path(feedback)
        self.rubric, self.more = list(rubric), more
        self.samples_path = self.feedback / "samples.jsonl"
        self.rankings_path = self.feedback / "rankings.jsonl"
        self.skipped_path = self.feedback / "skipped.jsonl"
        self.samples = read_samples(self.samples_path, to_rank=True)
        rankings, skipped = ([], []) if fresh else (_read_jsonl(self.rankings_path), _read_jsonl(self.skipped_path))
        check_rows_match(self.samples, rankings + skipped, self.samples_path)
        self.keep = {i: unique_answers(row) for i, row in enumerate(self.samples)}
        todo = [i for i, kept in self.keep.items() if len(kept) >= 2]
        if not todo:
            raise UserError(f"{self.samples_path} holds no prompt with two different answers to rank.")
        super().__init__(todo, raters_per_prompt, lease_seconds)
        self.load(rankings, skipped, rater_of)
        self.per_prompt, self.ranked_by = self.per_item, self.done_by

    def ranked_by_count(self) -> dict[str, int]:
        """Rankings of this board's prompts by each rater (or annotator), most first."""
        return dict(Counter(r for i in self.todo for r in self.ranked_by[i]).most_common())

    def all_ranked(self) -> bool:
        return all(len(self.ranked_by[i]) >= self.per_prompt for i in self.todo)

    def progress(self, rater: str) -> dict:
        c = self.counts(rater)
        return {
            "rankings": c["done"],
            "needed": c["needed"],
            "prompts": c["items"],
            "prompts_done": c["items_done"],
            "raters_per_prompt": self.per_prompt,
            "yours": c["yours"],
            "skipped_by_you": c["skipped_by_you"],
            "open_for_you": c["open_for_you"],
        }

    def next_for(self, rater: str, message: str = "") -> dict:
        """The page's state for `rater`: the prompt to rank (answers in an order of their own) and the progress."""
        with self.lock:
            index = self.next_index(rater)
            state = {"rater": rater, "progress": self.progress(rater), "criteria": list(CRITERIA), "message": message}
            state["rubric"] = self.rubric
            if index is None:
                return {**state, "done": True, "ranked_by": self.ranked_by_count(), "more": self.more}
            row = self.samples[index]
            shown = list(self.keep[index])
            random.Random(f"{rater}\0{index}").shuffle(shown)  # no position bias shared by every rater
            finished = row.get("finished") or [True] * len(row["answers"])
            answers = [{"id": i, "text": row["answers"][i], "finished": bool(finished[i])} for i in shown]
            return {**state, "done": False, "sample": index, "prompt": row["prompt"], "answers": answers}

    # -------------------------------------------------------------------------------------------- actions

    def rank(self, rater: str, index, order, criteria=()) -> dict:
        """Save one ranking (answer ids best first) at once; ValueError for a ranking that is not whole."""
        with self.lock:
            index = self.check(rater, index, "ranked")
            if not isinstance(order, list) or sorted(order) != self.keep[index]:
                raise ValueError(f"rank each of the {len(self.keep[index])} answers exactly once")
            if not isinstance(criteria, (list, tuple)) or not set(criteria) <= set(CRITERIA):
                raise ValueError(f"criteria are some of {', '.join(CRITERIA)}")
            row = self.samples[index]
            _append(
                self.rankings_path,
                {
                    "prompt": row["prompt"],
                    "responses": [row["answers"][i] for i in order],
                    "sample": index,
                    "annotator": "web",
                    "rater": rater,
                    "time": _now(),
                    "criteria": [c for c in CRITERIA if c in criteria],
                    "n": self.action,
                },
            )
            self.did(rater, index)
        return self.next_for(rater, "Saved.")

    def skip(self, rater: str, index) -> dict:
        with self.lock:
            index = self.check(rater, index, "ranked")
            row = {"prompt": self.samples[index]["prompt"], "sample": index, "rater": rater, "time": _now()}
            _append(self.skipped_path, {**row, "n": self.action})
            self.skipped(rater, index)
        return self.next_for(rater, f"Skipped prompt {index + 1}.")

    def undo(self, rater: str) -> dict:
        """Take back the rater's own last ranking or skip (also one of an earlier session); that prompt comes next."""
        with self.lock:
            undone = _drop_last_action([self.rankings_path, self.skipped_path], rater=rater)
            if undone is None:
                message = "Nothing of yours to undo."
            else:
                self.undone(rater, undone["sample"], "responses" in undone)
                message = f"Undone: prompt {undone['sample'] + 1} is back."
        return self.next_for(rater, message)


# ------------------------------------------------------------------------------------------------------ the server


def _clean_name(value) -> str:
    name = " ".join(str(value or "").split())
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"enter your name (1-{MAX_NAME} printable characters)")
    return name


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "rlhf-label"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the terminal shows the link and the summary, not every request

    # -------------------------------------------------------------------------------------------- guards

    def _allowed(self) -> bool:
        srv = self.server
        if srv.token is not None:
            query = parse_qs(urlsplit(self.path).query)
            given = self.headers.get("X-Rlhf-Token") or (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), srv.token.encode())
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in LOCAL_HOSTS  # a page of another site that rebinds its name to 127.0.0.1 is refused

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            **(extra or {}),
        }
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _forbidden(self) -> None:
        self._send(
            HTTPStatus.FORBIDDEN,
            b"Forbidden: open the link `rlhf label --annotator web` or `rlhf write` printed (with its token).\n",
            "text/plain; charset=utf-8",
        )

    # -------------------------------------------------------------------------------------------- routes

    def do_GET(self):  # noqa: N802 - http.server's name
        if not self._allowed():
            return self._forbidden()
        url = urlsplit(self.path)
        srv = self.server
        if url.path == "/" and srv.board is None:  # only writing is served: the page's writing mode
            query = f"?{url.query}" if url.query else ""
            return self._send(HTTPStatus.FOUND, b"", "text/plain; charset=utf-8", {"Location": f"/write{query}"})
        if url.path == "/" or (url.path == "/write" and srv.writing is not None):
            nonce = secrets.token_urlsafe(12)
            modes = " ".join(m for m, b in (("rank", srv.board), ("write", srv.writing)) if b is not None)
            page = srv.page.replace("{{NONCE}}", nonce).replace("{{MODES}}", modes).encode()
            csp = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
            return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": csp})
        if url.path in ("/api/next", "/api/write/next"):
            board = srv.board if url.path == "/api/next" else srv.writing
            if board is None:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "this server does not serve that page"})
            try:
                rater = _clean_name((parse_qs(url.query).get("rater") or [""])[0])
            except ValueError as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return self._json(HTTPStatus.OK, board.next_for(rater))
        return self._send(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain; charset=utf-8")

    def do_POST(self):  # noqa: N802 - http.server's name
        if not self._allowed():
            return self._forbidden()
        # JSON only: a form of another site cannot send it without a CORS preflight, which this server never answers.
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
        path = urlsplit(self.path).path
        board = self.server.writing if path.startswith("/api/write/") else self.server.board
        action = path.removeprefix("/api/write/" if path.startswith("/api/write/") else "/api/")
        if board is None or action not in ("rank" if board is self.server.board else "save", "skip", "undo"):
            return self._json(HTTPStatus.NOT_FOUND, {"error": "no such action"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("send a JSON object")
            rater = _clean_name(body.get("rater"))
            if action == "rank":
                state = board.rank(rater, body.get("sample"), body.get("order"), body.get("criteria", []))
            elif action == "save":
                state = board.save(rater, body.get("sample"), body.get("text"))
            elif action == "skip":
                state = board.skip(rater, body.get("sample"))
            else:
                state = board.undo(rater)
        except ValueError as err:  # json.JSONDecodeError is one
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        return self._json(HTTPStatus.OK, state)


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, board: Board | None, token: str | None, writing: WriteBoard | None = None):
        self.board, self.writing, self.token = board, writing, token
        self.page = PAGE.read_text(encoding="utf-8")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def check_can_serve(host: str, port: int) -> None:
    """Refuse now (one sentence) a host or port the page could not be served on: before anything is drafted or moved.
    The server binds again when it starts; port 0 (any free port) always passes."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does (allow_reuse_address)
        probe.bind((host, port))
    except OSError as err:
        raise UserError(
            f"Cannot serve on {host}:{port} ({err.strerror or err}); pass another --port, or a --host of this machine."
        ) from None
    finally:
        probe.close()


def make_server(
    feedback: Path | None,
    host: str = "127.0.0.1",
    port: int = 8765,
    raters_per_prompt: int = 1,
    writing: WriteBoard | None = None,
    fresh: bool = False,
    rubric: list[str] | tuple = (),
    more: str | None = None,
) -> tuple[LabelServer, str]:
    """The server (bound, not yet serving) and the link to print: ranking the samples of `feedback` (None: no ranking),
    writing on the board `writing` (None: no writing). Any host but a local one gets a token. `fresh`: ranking starts
    over (the caller moves the rankings so far aside once the server is bound); `rubric`, `more`: as `Board`'s."""
    require_web_extra()
    ranking = {"fresh": fresh, "rubric": rubric, "more": more}
    board = Board(feedback, raters_per_prompt, **ranking) if feedback is not None else None
    token = None if host in LOCAL_HOSTS else secrets.token_urlsafe(16)
    try:
        server = LabelServer((host, port), board, token, writing)
    except OSError as err:
        raise UserError(
            f"Cannot serve on {host}:{port} ({err.strerror or err}); pass another --port, or a --host of this machine."
        ) from err
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    page = "" if board is not None else "write"
    url = f"http://{shown}:{server.server_address[1]}/{page}" + (f"?token={token}" if token else "")
    return server, url


def _also(make):
    """The other page's board for the same server, when the run has that work to do (else None)."""
    try:
        return make()
    except UserError:
        return None


def _serve(server: LabelServer) -> None:
    """Serve until Ctrl-C or SIGTERM (a scheduler's stop is a Ctrl-C too), then close the server."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _at(url: str, page: str) -> str:
    """The printed link, pointed at another page of the same server (its token kept)."""
    return urlsplit(url)._replace(path=f"/{page}").geturl()


def _stop(signum, frame):
    raise KeyboardInterrupt


def label_web(
    rec,
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    overwrite: bool = False,
    continue_with: str = "rlhf label --annotator web",
    people: bool = False,
    more: str | None = None,
) -> Path:
    """Serve the ranking page for the run's samples (`people`: the people's round's, feedback/people/) until Ctrl-C;
    returns the rankings file. `more`: the command for more prompts to rank, shown when none is left. The server holds
    the run's lock (rlhf_cli.runtime.lock) while it serves: no other command writes into the run meanwhile, a second server
    included."""
    layout = RunLayout(run_dir)
    feedback = layout.people if people else layout.feedback
    require_web_extra()
    if not feedback.is_dir():
        read_samples(feedback / "samples.jsonl")  # says to run `rlhf sample` first
    with run_lock(layout.root):
        writing = _also(lambda: WriteBoard(layout.root)) if layout.demonstrations_dir.is_dir() else None
        raters, rubric = rec.feedback.raters_per_prompt, rec.feedback.rubric
        server, url = make_server(feedback, host, port, raters, writing, fresh=overwrite, rubric=rubric, more=more)
        if overwrite:  # every check passed and the port is ours: only now move the rankings so far aside
            try:
                start_over(feedback)
            except BaseException:
                server.server_close()
                raise
        _announce_and_serve(server, url, feedback, writing)
    rankings = feedback / "rankings.jsonl"
    print(f"{_tally(rankings, 'ranking', rater_of)}. To continue: {continue_with}")
    return rankings


def _tally(path: Path, noun: str, person_of) -> str:
    """ "N <noun>s in <path> (alice 3, bob 2)": what a page's people left in its file when it stopped."""
    rows = _read_jsonl(path)
    by = Counter(person_of(r) for r in rows)
    who = f" ({', '.join(f'{name} {n}' for name, n in by.most_common())})" if by else ""
    return f"{len(rows)} {noun}{'s' * (len(rows) != 1)} in {path}{who}"


def _announce_and_serve(server: LabelServer, url: str, feedback: Path, writing) -> None:
    board = server.board
    if board.all_ranked():  # e.g. the toy annotator ranked every sample of the demo run: say so, and what to run
        by = ", ".join(f"{who} {n}" for who, n in board.ranked_by_count().items())
        print(f"All {len(board.todo)} prompts of {board.samples_path} are ranked already ({by}).")
        if board.more:
            print(board.more)
    print(
        f"Ranking page for {len(board.todo)} prompts of {board.samples_path} "
        f"({board.per_prompt} rater{'s' * (board.per_prompt > 1)} each): {url}"
        + (f" (and writing answers: {_at(url, 'write')})" if writing is not None else "")
        + "\n"
        + ("Anyone with this link can rank; share it only with your raters. " if server.token else "")
        + "Stop with Ctrl-C; starting again continues where everyone was.",
        flush=True,
    )
    _serve(server)


def write_web(
    rec,
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    continue_with: str = "rlhf write --annotator web",
    train_with: str | None = None,
) -> Path:
    """Serve the writing page (/write) for the run's drafts until Ctrl-C (and the ranking page too, when the run has
    samples to rank); returns the demonstrations file. The server holds the run's lock (rlhf_cli.runtime.lock) while it serves."""
    layout = RunLayout(run_dir)
    require_web_extra()
    with run_lock(layout.root):
        writing = WriteBoard(layout.root)
        raters = rec.feedback.raters_per_prompt
        rubric = rec.feedback.rubric
        ranking = _also(lambda: Board(layout.feedback, raters, rubric=rubric)) if layout.feedback.is_dir() else None
        feedback = layout.feedback if ranking is not None else None
        server, url = make_server(feedback, host, port, raters, writing, rubric=rubric)
        _announce_writing_and_serve(server, url, layout, writing)
    train_with = train_with or f"rlhf sft --output-dir {layout.root} --set sft.data.path={layout.demonstrations}"
    print(
        f"{_tally(layout.demonstrations, 'answer', writer_of)}. Train on them: {train_with}. To continue: {continue_with}"
    )
    return layout.demonstrations


def _announce_writing_and_serve(server: LabelServer, url: str, layout: RunLayout, writing: WriteBoard) -> None:
    print(
        f"Writing page for {len(writing.todo)} prompts of {layout.drafts} (the model's drafts, to keep, edit or "
        f"replace): {_at(url, 'write')}"
        + (f" (and ranking the samples: {_at(url, '')})" if server.board is not None else "")
        + "\n"
        + ("Anyone with this link can write; share it only with your writers. " if server.token else "")
        + "Stop with Ctrl-C; starting again continues where everyone was.",
        flush=True,
    )
    _serve(server)
