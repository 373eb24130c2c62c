"""Progress output: ``trainer.enable_progress_bar=auto`` (the default) gives Lightning's bar on a terminal and one line
per epoch elsewhere. Real ``python run.py`` jobs, once with stdout captured (a pipe, as in a log file / multirun job /
CI) and once on a pseudo-terminal (``pty``)."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from recsys.errors import ConfigError
from recsys.tasks.progress import resolve_progress_bar

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^\[dense\] epoch (\d+)/2  train_loss=[0-9.e+-]+  .*val_hr_at_10=[0-9.e+-]+.*\(\d+\.\ds\)$",
                        re.MULTILINE)


def job(tmp_path: Path, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """A small real job (ml-100k, NeuMF, 2 epochs, no compression) into a temporary store; the bar is left on auto."""
    cmd = [sys.executable, "run.py", "data=ml-100k", "train.epochs=2", "train.batch_size=4096", "model.factors=8",
           "model.mlp_layers=[16,8]", "bench.requests=10", "bench.warmup=2", "bench.full_catalogue_requests=2",
           "bench.throughput_repeats=2", "bench.throughput_batch=512", "eval.full_ranking=false",
           "tracking.log_model=false", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={tmp_path}/out"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    env.pop("RECSYS_TRACKING_URI", None)
    return cmd, env


def test_auto_resolves_on_the_stream_being_a_terminal():
    assert resolve_progress_bar("auto", io.StringIO()) is False
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert resolve_progress_bar("auto", tty) is True
    finally:
        os.close(master)
        os.close(slave)
    assert resolve_progress_bar(True, io.StringIO()) is True
    assert resolve_progress_bar(False) is False
    with pytest.raises(ConfigError, match=r"trainer.enable_progress_bar='yes': must be one of true, false, auto"):
        resolve_progress_bar("yes")


@pytest.mark.realdata
def test_captured_stdout_gets_one_line_per_epoch_and_no_bar(tmp_path, shared_data_dir):
    cmd, env = job(tmp_path, shared_data_dir)
    out = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = EPOCH_LINE.findall(out.stdout)
    assert lines == ["1", "2"], out.stdout[-3000:]
    assert "\r" not in out.stdout and "\r" not in out.stderr     # no progress-bar redraws in the log
    assert "it/s" not in out.stdout + out.stderr


@pytest.mark.realdata
def test_terminal_gets_the_progress_bar(tmp_path, shared_data_dir):
    cmd, env = job(tmp_path, shared_data_dir)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # a 0-column terminal hides tqdm
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:     # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "it/s" in text, text[-3000:]    # tqdm's bar, redrawn in place
    assert "Epoch 1" in text
    assert not EPOCH_LINE.search(text.replace("\r\n", "\n")), text[-3000:]
