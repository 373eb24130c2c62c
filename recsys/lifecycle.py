"""Process death: SIGTERM / SIGINT become an exception that ends the job's MLflow run as KILLED and the process with
128 + signal; a process identity (host, pid, start time) lets the next job tell a run left RUNNING by a dead process
from a live one; sweep workers stop when their launcher dies; checkpoint folders of dead jobs are removed.

Written by hand because it is recommender-agnostic glue between POSIX signals, Lightning and MLflow that none of them
covers: Lightning turns SIGTERM into a clean ``SystemExit`` (exit 0), MLflow has no notion of a dead writer."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any

PARENT_ENV = "RECSYS_LAUNCHER_PID"   # set by run.py in the launching process; sweep workers watch that pid
HANDLED = (signal.SIGTERM, signal.SIGINT)


class JobInterrupted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT (a BaseException, so Lightning and ``except Exception`` pass it
    on instead of swallowing it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame: Any) -> None:
    # the first signal wins; a second one during cleanup must not abort the cleanup (MLflow status, temp dirs)
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)
    raise JobInterrupted(signum)


def install_signal_handlers() -> bool:
    """SIGTERM and SIGINT raise ``JobInterrupted`` (main thread only; False where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for s in HANDLED:
        signal.signal(s, _raise)
    return True


def hostname() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def process_start(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of a live process (None when it does not exist): tells a pid reused
    by another process from the original one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None if not _exists(pid) else "unknown"
    fields = stat[stat.rindex(")") + 2:].split()   # the command name may contain spaces and parentheses
    if fields[0] == "Z":                            # exited, not yet reaped by its parent: dead
        return None
    return f"{_boot_id()}:{fields[19]}"              # field 22 of proc(5): starttime


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity() -> dict[str, str]:
    """Tags that identify the process writing a run: host, pid and the pid's start time."""
    pid = os.getpid()
    return {"process.host": hostname(), "process.pid": str(pid), "process.start": process_start(pid) or "unknown"}


def is_dead(host: str | None, pid: str | None, start: str | None) -> bool:
    """True only when the recorded process is certainly gone: same host, and no process with that pid, or one that
    started at another time (pid reuse). Runs from other hosts or without tags are never judged."""
    if host != hostname() or not pid or not str(pid).isdigit():
        return False
    now = process_start(int(pid))
    if now is None:
        return True
    return bool(start) and start != "unknown" and now != "unknown" and now != start


_WATCHER: threading.Thread | None = None


def orphaned() -> bool:
    """True in a sweep worker whose launcher (``PARENT_ENV``) has died."""
    parent = os.environ.get(PARENT_ENV)
    return bool(parent) and parent.isdigit() and int(parent) != os.getpid() and os.getppid() != int(parent)


def watch_parent(poll_s: float = 0.5, grace_s: float = 30.0) -> threading.Thread | None:
    """In a sweep worker (a child of the launching ``run.py``), send ourselves SIGTERM when that launcher dies, so a
    killed sweep does not leave workers finishing and logging trials (the run ends KILLED); if the process still lives
    ``grace_s`` later (a pool's worker loop outliving its job), it exits hard. No-op in the launching process."""
    global _WATCHER
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or int(parent) == os.getpid() or os.getppid() != int(parent):
        return None
    if _WATCHER is not None and _WATCHER.is_alive():   # a reused worker (joblib/loky) runs many jobs: one watcher
        return _WATCHER
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != int(parent):     # re-parented: the launcher is gone
                os.kill(os.getpid(), signal.SIGTERM)
                stop.wait(grace_s)
                os._exit(128 + signal.SIGTERM)

    _WATCHER = threading.Thread(target=loop, name="recsys-parent-watch", daemon=True)
    _WATCHER.start()
    return _WATCHER


CKPT_RE = re.compile(r"^ckpt-.+-p(\d+)-")


def ckpt_prefix(stage: str) -> str:
    """Prefix of a stage's checkpoint folder: carries the pid so that a later job can remove it if we die."""
    return f"ckpt-{stage}-p{os.getpid()}-"


def remove_dead_ckpts(cache_dir: str | Path) -> list[Path]:
    """Remove ``ckpt-*-p<pid>-*`` folders in ``cache_dir`` whose process no longer exists (left by kill -9)."""
    removed = []
    d = Path(cache_dir)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and not _exists(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
