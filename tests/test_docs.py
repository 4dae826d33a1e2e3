"""The front door stays true: README within its size, its sample output in the shape the current console prints
(the figures come from a real run: `make readme-demo`), and every relative link in the docs resolving."""

from __future__ import annotations

import re
from pathlib import Path

from xdray.checks import pipeline_steps
from xdray.config import load_config
from xdray.pipeline import results_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "cluster" / "README.md"]


def _demo_block() -> list[str]:
    found = re.search(r"<!-- demo-output -->\n```text\n(.*?)```\n<!-- /demo-output -->", (ROOT / "README.md").read_text(),
                      re.S)
    assert found, "README.md lost its <!-- demo-output --> block; fix: restore it and run `make readme-demo`"
    return found[1].splitlines()


def test_the_readme_is_a_front_door():
    assert (ROOT / "README.md").stat().st_size <= 15_000


def test_the_readme_sample_output_is_what_the_console_prints_now():
    lines = _demo_block()
    stale = "README.md's sample output is stale; fix: `make readme-demo`"
    assert lines[0] == "xdray pipeline jobs/quickstart.yaml · log: outputs/quickstart/logs/xdray.log", stale
    cfg = load_config(ROOT / "jobs" / "quickstart.yaml")
    steps = pipeline_steps(cfg)
    for i, step in enumerate(steps, 1):
        assert any(line.startswith(f"[{i}/{len(steps)}] {step}: done in ") for line in lines), stale
    summary = {"teacher_test_accuracy": 0.5, "student_test_accuracy": 0.5, "teacher_params": 1, "student_params": 1,
               "teacher_latency_ms": 1.0, "student_latency_ms": 1.0, "speedup": 1.0, "seconds": 1.0,
               "teacher_bytes": 1, "student_bytes": 1}
    header = results_table(cfg, summary).strip().splitlines()[0]
    assert " ".join(header.split()) in {" ".join(line.split()) for line in lines}, stale


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://|mailto:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
