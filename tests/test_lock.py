"""One writer per run folder (rlhf_cli.runtime.lock): a second writer is refused in one sentence naming the holder's command and
process; a lock left by a killed process is taken over; nothing is left behind. Between real processes (subprocess),
and within one (re-entry, threads, run folders inside runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_bad_input import snapshot

from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.lock import holder, run_lock

RLHF = [sys.executable, "-m", "rlhf_cli"]
HOLD = """
import sys, time
from rlhf_cli.runtime.lock import run_lock
with run_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_in_another_process(run: Path, command: str = "rlhf reward --overwrite") -> subprocess.Popen:
    """A process that takes the run's lock (as `command`) and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def rlhf(*args, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    return subprocess.run([*RLHF, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------------ in one process


def test_the_lock_file_names_the_holder_and_goes_away(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: x\n")
    before = snapshot(tmp_path)
    with run_lock(run, "rlhf sft --overwrite"):
        info = json.loads((run / ".rlhf.lock").read_text())
        assert info["command"] == "rlhf sft --overwrite" and info["pid"] == os.getpid()
        assert holder(run) == info
        with run_lock(run):  # re-entered by the same thread (pipeline -> stage): no deadlock
            assert holder(run) == info
        assert (run / ".rlhf.lock").exists()  # still held by the outer block
    assert holder(run) is None
    assert snapshot(tmp_path) == before  # the file is gone and the folder's time is what it was


def test_a_folder_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    before = snapshot(tmp_path)
    with pytest.raises(UserError), run_lock(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / ".rlhf.lock").exists()
        raise UserError("a check failed")
    assert snapshot(tmp_path) == before
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "recipe.yaml").write_text("name: x\n")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["recipe.yaml"]


@contextmanager
def held_by_another_thread(run: Path, command: str):
    """The run's lock held by another thread (as another server of this process would) for the `with` block."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with run_lock(run, command):
            held.set()
            release.wait(20)

    other = threading.Thread(target=hold, daemon=True)
    other.start()
    try:
        assert held.wait(20)
        yield
    finally:
        release.set()
        other.join(20)


def test_another_thread_and_a_run_inside_a_held_run_are_refused(tmp_path):
    run = tmp_path / "run"
    with held_by_another_thread(run, "rlhf label --annotator web"):
        with pytest.raises(UserError, match=r"is in use by `rlhf label --annotator web` \(PID \d+"):
            with run_lock(run):
                pass
        with pytest.raises(UserError, match="is inside the run folder .*, which is in use by `rlhf label"):
            with run_lock(run / "sweep" / "ppo.kl_coef=0.1"):
                pass
    with run_lock(run), run_lock(run / "rounds" / "round-2"):  # nested runs of one command: fine
        pass


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"), run_lock(tmp_path / "afile"):
        pass


def test_only_the_main_process_of_a_launch_takes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path / "run"):
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------ two processes


def test_a_second_writer_process_is_refused_naming_the_first(finished_run, tmp_path):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(finished_run, run)
    holding = hold_in_another_process(run)
    try:
        before = snapshot(tmp_path)
        recipe = str(run / "recipe.yaml")
        for args in (
            ["reward", "--recipe", recipe, "-o", str(run), "--overwrite"],
            ["label", "--recipe", recipe, "-o", str(run), "--annotator", "toy", "--overwrite"],
            ["report", str(run)],
        ):
            result = rlhf(*args)
            assert result.returncode == 2, result.stderr
            error = result.stderr.strip()
            assert error.startswith("Error:") and error.count("Error") == 1 and "Traceback" not in error
            assert f"is in use by `rlhf reward --overwrite` (PID {holding.pid}" in " ".join(error.split())
        assert snapshot(tmp_path) == before  # nothing written, the rankings where they were
    finally:
        holding.kill()
        holding.wait()

    # Killed (as by kill -9): its lock file stays, naming a process that no longer runs. The next command takes over.
    assert json.loads((run / ".rlhf.lock").read_text())["pid"] == holding.pid
    result = rlhf("label", "--recipe", str(run / "recipe.yaml"), "-o", str(run), "--annotator", "toy", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert f"Taking over the lock of {run} left by `rlhf reward --overwrite` (PID {holding.pid}" in result.stderr
    assert "which is no longer running" in result.stderr
    assert not (run / ".rlhf.lock").exists()


def test_a_lock_file_naming_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = {"command": "rlhf ppo", "pid": dead_pid(), "host": "here", "started": "2026-12-06 10:00:00"}
    (run / ".rlhf.lock").write_text(json.dumps(stale))
    assert holder(run) is None  # nobody holds it
    with run_lock(run, "rlhf eval"):
        assert holder(run)["command"] == "rlhf eval"
    assert not (run / ".rlhf.lock").exists()


@pytest.mark.slow
def test_two_trainings_of_one_run_and_the_web_page_against_a_labeller(finished_run, tmp_path):
    """The issue's cases with real commands: a second `rlhf reward --overwrite` while the first trains, and a toy
    labelling while the ranking page serves the run."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    recipe = str(run / "recipe.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    train = [*RLHF, "reward", "--recipe", recipe, "-o", str(run), "--overwrite"]
    first = subprocess.Popen(
        [*train, "--set", "reward.training.max_steps=100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while (holder(run) or {}).get("pid") != first.pid or not (run / "reward" / "checkpoints").is_dir():
            assert first.poll() is None and time.time() < deadline  # until it holds the run and trains
            time.sleep(0.2)
        second = rlhf("reward", "--recipe", recipe, "-o", str(run), "--overwrite")
        assert second.returncode == 2 and f"(PID {first.pid}" in second.stderr, second.stderr
        assert first.poll() is None  # the first trains on, its folder untouched
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: a checkpoint, exit 130
        first.wait(120)
    assert first.returncode == 130 and not (run / ".rlhf.lock").exists()

    page = subprocess.Popen(
        [*RLHF, "label", "--recipe", recipe, "-o", str(run), "--annotator", "web", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the page serves (and holds the lock) once it has said so; on a run the toy annotator ranked whole it first
        # says that, and the command for a people's round
        said = []
        while len(said) < 6 and not any("Ranking page for" in line for line in said):
            said.append(page.stdout.readline())
        assert "Ranking page for" in said[-1], said
        rankings = (run / "feedback" / "rankings.jsonl").read_bytes()
        toy = rlhf("label", "--recipe", recipe, "-o", str(run), "--annotator", "toy", "--overwrite")
        assert toy.returncode == 2 and "rlhf label" in toy.stderr and "--annotator web" in toy.stderr, toy.stderr
        assert (run / "feedback" / "rankings.jsonl").read_bytes() == rankings
        assert not (run / "feedback" / "backup").exists()
    finally:
        page.send_signal(signal.SIGTERM)
        page.wait(60)
    assert page.returncode == 0 and not (run / ".rlhf.lock").exists()
