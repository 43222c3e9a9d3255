"""People rank answers on a local web page: `rlhf label --annotator web [--host 127.0.0.1] [--port 8765]`.

One page (rlhf_cli/web/label.html, no build step) served by the standard library's threaded HTTP server. A rater enters
a name, sees a prompt and its K answers (model text is put in the page as text, never as HTML), orders them (drag, or
select with 1-K and move with the arrow keys), optionally ticks the criteria that decided it, and submits, skips or
undoes. Each submission is appended to feedback/rankings.jsonl at once (flushed and fsynced, under one lock: several
raters at once lose nothing), in the form `rlhf reward` reads, with the rater, the time and the criteria:

    {"prompt", "responses": [best first], "sample", "annotator": "web", "rater", "time", "criteria": [...], "n"}

Skips go to feedback/skipped.jsonl (per rater). A prompt is offered until it has `feedback.raters_per_prompt`
rankings, never twice to one rater; a prompt shown to a rater is held for them (LEASE_SECONDS) so that two raters do not
rank the same prompt beyond the count. Stopping the server and starting it again continues where everyone was (the
files are the state). Undo takes back the rater's own last ranking or skip, also one of an earlier session.

Safe by default: the server binds 127.0.0.1 (and answers only requests addressed to a local host name, against DNS
rebinding); any other --host needs the random token the printed link carries (a request without it gets 403). It
writes nothing but those two files of the run's feedback folder; only one server serves a run at a time.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rlhf_cli.errors import UserError
from rlhf_cli.feedback import (
    _append,
    _drop_last_action,
    _read_jsonl,
    check_rows_match,
    read_samples,
    start_over,
    unique_answers,
)
from rlhf_cli.layout import RunLayout

PAGE = Path(__file__).parent / "web" / "label.html"
CRITERIA = ("helpfulness", "honesty", "harmlessness", "clarity", "relevance")  # the seeds' criteria
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
LEASE_SECONDS = 30 * 60  # a prompt shown to a rater is held for them this long (or until they act)
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


class Board:
    """Who ranked what, and what to offer next: the rankings and skipped files, kept in memory under one lock.

    The files are the state: the board is rebuilt from them when a server starts, and every change is written to
    them (under the lock) before the board changes."""

    def __init__(self, feedback: Path, raters_per_prompt: int = 1, lease_seconds: float = LEASE_SECONDS):
        self.feedback = Path(feedback)
        self.samples_path = self.feedback / "samples.jsonl"
        self.rankings_path = self.feedback / "rankings.jsonl"
        self.skipped_path = self.feedback / "skipped.jsonl"
        self.per_prompt, self.lease_seconds = raters_per_prompt, lease_seconds
        self.samples = read_samples(self.samples_path)
        rankings, skipped = _read_jsonl(self.rankings_path), _read_jsonl(self.skipped_path)
        check_rows_match(self.samples, rankings + skipped, self.samples_path)
        self.keep = {i: unique_answers(row) for i, row in enumerate(self.samples)}
        self.todo = [i for i, kept in self.keep.items() if len(kept) >= 2]
        if not self.todo:
            raise UserError(f"{self.samples_path} holds no prompt with two different answers to rank.")
        self.ranked_by: dict[int, list[str]] = defaultdict(list)
        self.skipped_by: dict[str, set[int]] = defaultdict(set)
        for row in rankings:
            self.ranked_by[row["sample"]].append(rater_of(row))
        for row in skipped:
            self.skipped_by[rater_of(row)].add(row["sample"])
        self.action = max((r.get("n", -1) for r in rankings + skipped), default=-1) + 1
        self.leases: dict[str, tuple[int, float]] = {}  # rater -> (sample, until)
        self.lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- what to offer

    def _open_for(self, rater: str, index: int) -> bool:
        return (
            rater not in self.ranked_by[index]
            and index not in self.skipped_by[rater]
            and len(self.ranked_by[index]) < self.per_prompt
        )

    def _held_by_others(self, rater: str, index: int, now: float) -> int:
        return sum(s == index and until > now for who, (s, until) in self.leases.items() if who != rater)

    def _next_index(self, rater: str) -> int | None:
        now = time.monotonic()
        held = self.leases.get(rater)
        if held and held[1] > now and self._open_for(rater, held[0]):
            return held[0]
        for index in self.todo:
            if (
                self._open_for(rater, index)
                and len(self.ranked_by[index]) + self._held_by_others(rater, index, now) < self.per_prompt
            ):
                self.leases[rater] = (index, now + self.lease_seconds)
                return index
        self.leases.pop(rater, None)
        return None

    def progress(self, rater: str) -> dict:
        rankings = sum(min(len(self.ranked_by[i]), self.per_prompt) for i in self.todo)
        return {
            "rankings": rankings,
            "needed": len(self.todo) * self.per_prompt,
            "prompts": len(self.todo),
            "prompts_done": sum(len(self.ranked_by[i]) >= self.per_prompt for i in self.todo),
            "raters_per_prompt": self.per_prompt,
            "yours": sum(rater in self.ranked_by[i] for i in self.todo),
            "skipped_by_you": len(self.skipped_by[rater]),
            "open_for_you": sum(self._open_for(rater, i) for i in self.todo),
        }

    def next_for(self, rater: str, message: str = "") -> dict:
        """The page's state for `rater`: the prompt to rank (answers in an order of their own) and the progress."""
        with self.lock:
            index = self._next_index(rater)
            state = {"rater": rater, "progress": self.progress(rater), "criteria": list(CRITERIA), "message": message}
            if index is None:
                return {**state, "done": True}
            row = self.samples[index]
            shown = list(self.keep[index])
            random.Random(f"{rater}\0{index}").shuffle(shown)  # no position bias shared by every rater
            finished = row.get("finished") or [True] * len(row["answers"])
            answers = [{"id": i, "text": row["answers"][i], "finished": bool(finished[i])} for i in shown]
            return {**state, "done": False, "sample": index, "prompt": row["prompt"], "answers": answers}

    # -------------------------------------------------------------------------------------------- actions

    def _check_sample(self, rater: str, index) -> int:
        if not isinstance(index, int) or index not in self.keep or index not in self.todo:
            raise ValueError("no such prompt to rank")
        if rater in self.ranked_by[index] or index in self.skipped_by[rater]:
            raise ValueError("you have already ranked or skipped this prompt (undo it to change it)")
        return index

    def rank(self, rater: str, index, order, criteria=()) -> dict:
        """Save one ranking (answer ids best first) at once; ValueError for a ranking that is not whole."""
        with self.lock:
            index = self._check_sample(rater, index)
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
            self.action += 1
            self.ranked_by[index].append(rater)
            self.leases.pop(rater, None)
        return self.next_for(rater, "Saved.")

    def skip(self, rater: str, index) -> dict:
        with self.lock:
            index = self._check_sample(rater, index)
            row = {"prompt": self.samples[index]["prompt"], "sample": index, "rater": rater, "time": _now()}
            _append(self.skipped_path, {**row, "n": self.action})
            self.action += 1
            self.skipped_by[rater].add(index)
            self.leases.pop(rater, None)
        return self.next_for(rater, f"Skipped prompt {index + 1}.")

    def undo(self, rater: str) -> dict:
        """Take back the rater's own last ranking or skip (also one of an earlier session); that prompt comes next."""
        with self.lock:
            undone = _drop_last_action([self.rankings_path, self.skipped_path], rater=rater)
            if undone is None:
                message = "Nothing of yours to undo."
            else:
                index = undone["sample"]
                if "responses" in undone:
                    self.ranked_by[index].remove(rater)
                else:
                    self.skipped_by[rater].discard(index)
                self.leases[rater] = (index, time.monotonic() + self.lease_seconds)
                message = f"Undone: prompt {index + 1} is back."
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
            b"Forbidden: open the link `rlhf label --annotator web` printed (with its token).\n",
            "text/plain; charset=utf-8",
        )

    # -------------------------------------------------------------------------------------------- routes

    def do_GET(self):  # noqa: N802 - http.server's name
        if not self._allowed():
            return self._forbidden()
        url = urlsplit(self.path)
        if url.path == "/":
            nonce = secrets.token_urlsafe(12)
            page = self.server.page.replace("{{NONCE}}", nonce).encode()
            csp = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
            return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": csp})
        if url.path == "/api/next":
            try:
                rater = _clean_name((parse_qs(url.query).get("rater") or [""])[0])
            except ValueError as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return self._json(HTTPStatus.OK, self.server.board.next_for(rater))
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
        board, path = self.server.board, urlsplit(self.path).path
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("send a JSON object")
            rater = _clean_name(body.get("rater"))
            if path == "/api/rank":
                state = board.rank(rater, body.get("sample"), body.get("order"), body.get("criteria", []))
            elif path == "/api/skip":
                state = board.skip(rater, body.get("sample"))
            elif path == "/api/undo":
                state = board.undo(rater)
            else:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "no such action"})
        except ValueError as err:  # json.JSONDecodeError is one
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        return self._json(HTTPStatus.OK, state)


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, board: Board, token: str | None):
        self.board, self.token = board, token
        self.page = PAGE.read_text(encoding="utf-8")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def make_server(
    feedback: Path, host: str = "127.0.0.1", port: int = 8765, raters_per_prompt: int = 1
) -> tuple[LabelServer, str]:
    """The server (bound, not yet serving) and the link to print. Any host but a local one gets a token."""
    require_web_extra()
    board = Board(feedback, raters_per_prompt)
    token = None if host in LOCAL_HOSTS else secrets.token_urlsafe(16)
    try:
        server = LabelServer((host, port), board, token)
    except OSError as err:
        raise UserError(
            f"Cannot serve on {host}:{port} ({err.strerror or err}); pass another --port, or a --host of this machine."
        ) from err
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    return server, url


def _lock_run(feedback: Path):
    """Hold an exclusive lock on the feedback folder itself (no file is written): one server per run."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    fd = os.open(feedback, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"{feedback} is already being served by another `rlhf label --annotator web`.") from None
    return fd


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
) -> Path:
    """Serve the ranking page for the run's samples until Ctrl-C; returns the rankings file."""
    layout = RunLayout(run_dir)
    require_web_extra()
    if not layout.feedback.is_dir():
        read_samples(layout.samples)  # says to run `rlhf sample` first
    lock = _lock_run(layout.feedback)
    try:
        if overwrite:
            start_over(layout.feedback)
        server, url = make_server(layout.feedback, host, port, rec.feedback.raters_per_prompt)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    board = server.board
    print(
        f"Ranking page for {len(board.todo)} prompts of {layout.samples} "
        f"({board.per_prompt} rater{'s' * (board.per_prompt > 1)} each): {url}\n"
        + ("Anyone with this link can rank; share it only with your raters. " if server.token else "")
        + "Stop with Ctrl-C; starting again continues where everyone was.",
        flush=True,
    )
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None  # a scheduler's stop is a Ctrl-C too
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if lock is not None:
            os.close(lock)
        if main:
            signal.signal(signal.SIGTERM, previous)
    rows = _read_jsonl(layout.rankings)
    by = Counter(rater_of(r) for r in rows)
    print(
        f"{len(rows)} ranking{'s' * (len(rows) != 1)} in {layout.rankings}"
        + (f" ({', '.join(f'{who} {n}' for who, n in by.most_common())})" if by else "")
        + f". To continue: {continue_with}"
    )
    return layout.rankings
