"""One writer per run folder: `<run>/.rlhf.lock`, held by every command that writes into the run.

    with run_lock(run_dir, "rlhf reward --overwrite"):
        ...                                   # a second writer gets a UserError naming this command and process

- The file holds the holder's command, process id, host and start time, and the holder keeps an exclusive `flock` on
  it. The kernel drops that lock when the process dies, so a file left by a killed process (`kill -9`, a crash, a lost
  machine) is free: the next command takes it over and says whose it was.
- Re-entrant within a thread: a command that runs others in the same process (pipeline -> stages, compare ->
  pipeline, rounds) takes it once. Another thread of the same process is refused as another process is (one web
  server per run).
- A run folder inside another (a sweep's points, a round of `--rounds`) is refused while the outer run is held by
  another process.
- The processes of one launch (`accelerate launch`, `torchrun`): only the main process takes it (the others wait for
  it at the launch's barriers).
- A refused or failed command leaves the disk as it found it: the file is removed on release, a folder made for it
  alone is removed, and a folder's modification time is put back when the lock file was the only change to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_cli.runtime.distributed import is_main_process
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import LOCK_NAME

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: a process id check instead of a kernel lock
    fcntl = None


@dataclass
class _Held:
    """A lock this process holds: the file's descriptor, the thread that took it, how often (re-entry)."""

    path: Path
    fd: int | None
    thread: int
    info: dict
    count: int = 1
    created: list[Path] = field(default_factory=list)  # folders made for the lock, outermost first
    restore: tuple[int, int, int] | None = None  # (atime, mtime before, mtime after the lock file) of the run folder
    parent_times: tuple[Path, int, int, int] | None = None  # the same for the folder the created ones went into


_held: dict[str, _Held] = {}  # real path of the run folder -> its lock
_registry = threading.Lock()


def command_line() -> str:
    """This process's command as a person would type it: `rlhf reward --overwrite ...`, else the Python command."""
    argv = list(sys.argv)
    name = Path(argv[0]).name if argv else ""
    if name in ("rlhf", "__main__.py") or name.startswith("rlhf"):
        return shlex.join(["rlhf", *argv[1:]])
    return shlex.join(["python", *argv]) if argv else "python"


def holder(run_dir: str | Path) -> dict | None:
    """Who holds the run folder's lock (its recorded command, pid, host, started), or None when nobody does."""
    path = Path(run_dir) / LOCK_NAME
    with _registry:
        held = _held.get(_key(run_dir))
    if held is not None:
        return held.info
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_flock(fd):
            return None  # nobody holds it: a stale file
        return _read_info(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str | None = None) -> Iterator[None]:
    """Hold the run folder's lock for the block (see the module's docstring); UserError when another holds it."""
    if not is_main_process():
        yield
        return
    key = _key(run_dir)
    with _registry:
        held = _held.get(key)
        if held is not None and held.thread == threading.get_ident():
            held.count += 1
        elif held is not None:
            raise UserError(_busy(Path(run_dir), held.info))
        else:
            held = None
    if held is not None:  # re-entered by the thread that holds it
        try:
            yield
        finally:
            with _registry:
                held.count -= 1
        return
    held = _acquire(Path(run_dir), key, command or command_line())
    try:
        yield
    finally:
        _release(key, held)


# ------------------------------------------------------------------------------------------------------ internals


def _key(run_dir: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(run_dir)))


def _try_flock(fd: int) -> bool:
    """Take the exclusive lock on `fd` without waiting; False when another open file holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:  # a file system without locks: nothing to enforce with
        if err.errno in (getattr(os, "ENOTSUP", -1), getattr(os, "EOPNOTSUPP", -1), getattr(os, "ENOLCK", -1)):
            return True
        raise
    return True


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(info: dict) -> str:
    command = info.get("command") or "another rlhf command"
    pid = info.get("pid")
    where = []
    if pid is not None:
        where.append(f"PID {pid}")
    host = info.get("host")
    if host and host != socket.gethostname():
        where.append(f"on {host}")
    if info.get("started"):
        where.append(f"since {info['started']}")
    return f"`{command}`" + (f" ({', '.join(where)})" if where else "")


def _busy(run_dir: Path, info: dict, inner: Path | None = None) -> str:
    what = f"{inner} is inside the run folder {run_dir}, which" if inner is not None else str(run_dir)
    return (
        f"{what} is in use by {_describe(info)}: one command writes into a run at a time; wait for it to finish or "
        "stop it, then run this again."
    )


def _check_ancestors(run_dir: Path, key: str) -> None:
    """A run folder inside another one that another process (or thread) holds is refused."""
    for parent in Path(key).parents:
        lock_file = parent / LOCK_NAME
        with _registry:
            held = _held.get(str(parent))
        if held is not None:
            if held.thread != threading.get_ident():
                raise UserError(_busy(parent, held.info, inner=run_dir))
            continue
        if not lock_file.is_file():
            continue
        info = holder(parent)
        if info is not None:
            raise UserError(_busy(parent, info, inner=run_dir))


def _make_folder(run_dir: Path) -> tuple[list[Path], tuple[Path, int, int, int] | None]:
    """Create the run folder (and missing parents) for the lock file; the folders made, and the times of the folder
    they went into (to put back when they are removed again)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder; give a run folder (--output-dir is created if missing).")
    missing = []
    probe = run_dir
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise UserError(f"{probe} is a link to a folder that does not exist; give a folder that exists.")
        missing.insert(0, probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not missing:
        return [], None
    if not probe.is_dir():
        raise UserError(f"{probe} is a file, not a folder; a run folder cannot be made inside it.")
    st = probe.stat()
    try:
        for folder in missing:
            folder.mkdir()
    except OSError as err:
        for folder in reversed(missing):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(f"Cannot create the run folder {run_dir}: {err.strerror or err}.") from None
    return missing, (probe, st.st_atime_ns, st.st_mtime_ns, probe.stat().st_mtime_ns)


def _acquire(run_dir: Path, key: str, command: str) -> _Held:
    _check_ancestors(run_dir, key)
    created, parent_times = _make_folder(run_dir)
    lock_file = run_dir / LOCK_NAME
    try:
        if lock_file.is_dir() or lock_file.is_symlink():
            raise UserError(
                f"{lock_file} is a {'link' if lock_file.is_symlink() else 'folder'}, where rlhf keeps the run's lock "
                "file; remove it, then run this again."
            )
        before = run_dir.stat()
        while True:
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"Cannot write in the run folder {run_dir}: {err.strerror or err}.") from None
            if fcntl is None:  # pragma: no cover - Windows
                old = _read_info(fd)
                if old.get("pid") not in (None, os.getpid()) and _pid_alive(old.get("pid")):
                    os.close(fd)
                    raise UserError(_busy(run_dir, old))
            elif not _try_flock(fd):
                info = _read_info(fd)
                os.close(fd)
                raise UserError(_busy(run_dir, info))
            try:  # the file may have been removed (released) between our open and our lock: take the new one then
                same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_info(fd)
        if old.get("pid") not in (None, os.getpid()):
            print(
                f"Taking over the lock of {run_dir} left by {_describe(old)}, which is no longer running.",
                file=sys.stderr,
                flush=True,
            )
        info = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    except BaseException:
        _remove_created(created, parent_times)
        raise
    after = run_dir.stat().st_mtime_ns
    held = _Held(lock_file, fd, threading.get_ident(), info, created=created, parent_times=parent_times)
    held.restore = (before.st_atime_ns, before.st_mtime_ns, after)
    with _registry:
        _held[key] = held
    return held


def _release(key: str, held: _Held) -> None:
    with _registry:
        _held.pop(key, None)
    run_dir = held.path.parent
    try:
        untouched = held.restore is not None and run_dir.stat().st_mtime_ns == held.restore[2]
        try:
            if os.fstat(held.fd).st_ino == os.stat(held.path).st_ino:
                held.path.unlink()
        except FileNotFoundError:
            pass
        if untouched:  # the lock file was the only change to the folder: give it back its time
            os.utime(run_dir, ns=held.restore[:2])
    except OSError:
        pass
    finally:
        os.close(held.fd)
    _remove_created(held.created, held.parent_times)


def _remove_created(created: list[Path], parent_times) -> None:
    """Remove the folders made for the lock that are still empty, innermost first; then put back the time of the folder
    they were made in, when nothing else changed it."""
    untouched = False
    if created and parent_times is not None:
        with contextlib.suppress(OSError):
            untouched = parent_times[0].stat().st_mtime_ns == parent_times[3]
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return  # something was written in it: keep it and its parents
    if untouched:
        parent, atime, mtime, _ = parent_times
        with contextlib.suppress(OSError):
            os.utime(parent, ns=(atime, mtime))
