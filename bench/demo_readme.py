"""README's sample output, from the current code: runs the demo's pipeline (``jobs/quickstart.yaml``) into a fresh
output directory and puts its console between README.md's ``<!-- demo-output -->`` markers.

    .venv/bin/python bench/demo_readme.py            # `make readme-demo`; needs `xdray data samples` first

Paths are shown as `make demo` prints them (``outputs/quickstart``); the figures are this run's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OUT = "outputs/readme-demo"
BLOCK = re.compile(r"(<!-- demo-output -->\n```text\n).*?(```\n<!-- /demo-output -->)", re.S)


def main() -> int:
    shutil.rmtree(ROOT / OUT, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "pipeline", "jobs/quickstart.yaml", "--set",
                           f"output_dir={OUT}"], cwd=ROOT, capture_output=True, text=True)
    # as `make demo` prints it: into the quickstart's own output directory
    console = (proc.stdout + proc.stderr).replace(str(ROOT) + "/", "").replace(OUT, "outputs/quickstart")
    print(console, end="")
    if proc.returncode:
        return proc.returncode
    text = README.read_text()
    if not BLOCK.search(text):
        print("README.md has no <!-- demo-output --> block; fix: put the markers back", file=sys.stderr)
        return 2
    README.write_text(BLOCK.sub(lambda m: m[1] + console.rstrip("\n") + "\n" + m[2], text))
    print(f"README.md sample output replaced ({len(console.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
