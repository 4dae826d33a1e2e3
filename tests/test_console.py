"""The console, in a subprocess as a user's shell sees it: xdray's lines on stdout, everything else the process
writes (Python prints, raw writes to descriptors 1 and 2 as C++ code does) in the log; ``verbose`` shows both."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import xdray.console as c
    c.PLAIN_EVERY_S, c.POLL_S = 0.0, 0.05
    out, verbose = Path(sys.argv[1]), sys.argv[2] == "1"
    with c.console.session(out, "demo job.yaml", verbose):
        c.console.line("[1/1] step: running")
        print("a library's print")
        os.write(2, b"core_worker.cc: a C++ message\\n")
        state = {"n": 0}
        def poll():
            state["n"] += 1
            return min(state["n"], 3), 3, "loss 0.5"
        with c.console.progress("step", "epochs", poll):
            time.sleep(0.5)
        c.console.warn("a trial diverged")
    print("after the session")
""")


def _run(tmp_path, verbose: bool) -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "1" if verbose else "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return (proc.stdout + proc.stderr).splitlines(), (tmp_path / "logs" / "xdray.log").read_text()


def test_quiet_console_keeps_xdray_lines_and_logs_the_rest(tmp_path):
    lines, log = _run(tmp_path, verbose=False)
    assert lines[0] == f"xdray demo job.yaml · log: {tmp_path / 'logs' / 'xdray.log'}"
    assert "[1/1] step: running" in lines and "warning: a trial diverged" in lines
    assert any(line.startswith("  step: 3/3 epochs · loss 0.5") for line in lines)  # a plain line: not a terminal
    assert "a library's print" not in lines and "core_worker.cc: a C++ message" not in lines
    assert lines[-1] == "after the session"  # the descriptors are back
    assert "a library's print" in log and "core_worker.cc: a C++ message" in log and "[1/1] step: running" in log


def test_verbose_console_shows_the_libraries_live_and_still_logs_them(tmp_path):
    lines, log = _run(tmp_path, verbose=True)
    assert "a library's print" in lines and "core_worker.cc: a C++ message" in lines
    assert "a library's print" in log and "[1/1] step: running" in log
