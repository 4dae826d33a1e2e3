"""What a user sees: one line when a step starts, a progress bar while it works, one line when it ends, and the
results table. Everything else the process prints (Ray, Ray Data, Tune, Hugging Face, DeepSpeed, C++ logs of
Ray's core worker) goes to ``<output_dir>/logs/xdray.log``, named in the first line; ``--verbose`` shows it live
as well.

The redirection is at the file-descriptor level (``os.dup2`` on 1 and 2), because much of that output does not
pass through Python's ``sys.stdout``: Ray's C++ core worker and the worker logs Ray forwards to the driver write to
the descriptors. xdray's own lines go to a duplicate of the original stdout, and into the log. Inside a Ray Job
the driver's stdout is the job's log, so ``xdray jobs logs`` shows the same short console.

Bars are drawn with tqdm when the console is a terminal. Elsewhere (a pipe, a Ray Job's log) a bar prints a plain
line at most every ``PLAIN_EVERY_S`` seconds instead of redrawing. A bar's figures come from a ``poll`` function
run in a thread (the step's driver is busy in ``trainer.fit()`` or ``tuner.fit()``): it reads what the work
writes anyway, or a small progress file the training workers keep (``train.loop``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tqdm import tqdm

LOG_NAME = "logs/xdray.log"
POLL_S = 0.5
PLAIN_EVERY_S = 30.0

Poll = Callable[[], tuple[int, int | None, str]]
"""Returns (done so far, the total if known, a short status such as "loss 0.41 dev 0.80")."""


class Console:
    """The process's console. Outside a ``session`` (xdray used as a library, tests calling steps) lines go to
    ``sys.stdout`` and bars are not drawn."""

    def __init__(self) -> None:
        self.terminal: IO[str] | None = None
        self.log: IO[str] | None = None
        self.log_path: Path | None = None
        self.tty = False

    @property
    def active(self) -> bool:
        return self.terminal is not None

    def line(self, text: str) -> None:
        """One of xdray's own lines: on the console and in the log."""
        out = self.terminal or sys.stdout
        out.write(text + "\n")
        out.flush()
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}")

    @contextmanager
    def session(self, output_dir: Path, title: str, verbose: bool = False) -> Iterator[Path]:
        """Send the process's own output to the log (and, ``verbose``, also to the console) for the block."""
        path = Path(output_dir) / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        terminal, saved = _terminal_stream(sys.stdout)
        log = open(path, "a", buffering=1)  # noqa: SIM115 - closed in finally
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n")
        tee = None
        if verbose:  # tee copies the descriptors' output to the console and the log, even from C++ code
            tee = subprocess.Popen(["tee", "-a", str(path)], stdin=subprocess.PIPE, stdout=terminal.fileno()
                                   if saved is not None else None)
            target = tee.stdin.fileno()
        else:
            target = log.fileno()
        originals = [os.dup(1), os.dup(2)]
        os.dup2(target, 1)
        os.dup2(target, 2)
        self.terminal, self.log, self.log_path = terminal, log, path
        self.tty = saved is not None and terminal.isatty()
        try:
            self.line(f"xdray {title} · log: {path}")
            yield path
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), originals):
                os.dup2(original, fd)
                os.close(original)
            if tee is not None:
                tee.stdin.close()
                tee.wait(timeout=30)
            if saved is not None:
                terminal.close()
            log.close()
            self.terminal, self.log, self.log_path, self.tty = None, None, None, False

    @contextmanager
    def progress(self, desc: str, unit: str, poll: Poll) -> Iterator[None]:
        """A bar over the block, fed by ``poll`` (done, total, status) from a thread; nothing outside a session."""
        if not self.active:
            yield
            return
        stop = threading.Event()
        bar = _Bar(self, desc, unit)
        thread = threading.Thread(target=_watch, args=(bar, poll, stop), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            bar.close()


class _Bar:
    def __init__(self, console: Console, desc: str, unit: str):
        self.console, self.desc, self.total, self.unit = console, desc, None, unit
        self.done, self.status, self.printed = 0, "", time.monotonic()
        self.tqdm = (tqdm(desc=f"  {desc}", total=None, unit=f" {unit}", file=console.terminal, leave=False,
                          dynamic_ncols=True, disable=False,  # TQDM_DISABLE quiets the libraries' bars, not ours
                          bar_format="{desc} {bar:24} {n_fmt}/{total_fmt}{unit}{postfix} [{elapsed}]")
                     if console.tty else None)

    def update(self, done: int, total: int | None, status: str) -> None:
        if (done, total, status) == (self.done, self.total, self.status):
            return
        self.done, self.total, self.status = done, total, status
        if self.tqdm is not None:
            self.tqdm.total, self.tqdm.n = total, done
            self.tqdm.set_postfix_str(status, refresh=True)
        elif time.monotonic() - self.printed >= PLAIN_EVERY_S:
            self.printed = time.monotonic()
            self.console.line(f"  {self.desc}: {done}/{self.total if self.total is not None else '?'} {self.unit}"
                              + (f" · {status}" if status else ""))

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _watch(bar: _Bar, poll: Poll, stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        try:
            bar.update(*poll())
        except (OSError, ValueError):  # a file being replaced, or not written yet
            continue


def _terminal_stream(stdout: IO[str]) -> tuple[IO[str], int | None]:
    """A stream for xdray's lines that survives the redirection: a duplicate of stdout's descriptor, or, when
    stdout is not a descriptor (pytest's capture), stdout itself."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return stdout, None
    saved = os.dup(fd)
    return os.fdopen(saved, "w", buffering=1), saved


console = Console()
