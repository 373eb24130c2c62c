"""Helpers for tests that start a real local server (MLflow tracking / model server, the stack): a free loopback
port, and waiting until the server answers (or failing with the end of its log)."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; raise with the server's log tail if it dies or ``timeout`` passes."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what} did not start:\n" + Path(log).read_text()[-3000:])
        time.sleep(0.5)
