"""Small students must not collapse to the majority class: a 10-trial random search over small students
(layers 1-3, hidden 64-128) on the quickstart data, with the teacher and labels of `jobs/search_quickstart.yaml`.

Runs `xdray teacher`, `xdray label` (both reused when finished) and `xdray search` in ``--out``, then prints one
JSON line: every trial's architecture and dev accuracy, the dev set's majority-class share, and how many trials
ended at it (within one dev row). ``--base DIR`` copies the teacher and labels of a finished run instead, and
``--code DIR`` runs the search step with another checkout of xdray (an older commit, say): together, a
before/after comparison on the same teacher and labels. ``--schedule quickstart`` trains every trial on
`jobs/quickstart.yaml`'s stages instead (hidden states, gradual unfreezing, then labels: the schedule of
`make demo`, where the collapse was first seen) and offers one attention head as well.

It also prints ``init_cls_spread``: for fresh L2 students of several widths (this checkout's builder, PCA
embeddings from the run's teacher), how much the top [CLS] state varies over 256 dev sentences relative to its
norm, at BERT's init std 0.02 and at ``init_std: width``. Near zero means the student starts on the
majority-class plateau. ``--init-std`` sets ``distill.student.init_std`` for every trial (0.02 or width).

``python bench/small_students.py [--out outputs/bench/small] [--schedule search|quickstart] [--base DIR] [--code DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPACE = {"layers": [1, 2, 3], "hidden": [64, 128], "heads": [2, 4], "ffn_ratio": [2, 4],
         "embedding_factor": [0.5, 1.0]}


def config(out: Path, schedule: str, init_std: str | None) -> Path:
    raw = yaml.safe_load((ROOT / "jobs" / "search_quickstart.yaml").read_text())
    if init_std:
        raw["distill"]["student"]["init_std"] = init_std if init_std == "width" else float(init_std)
    space = dict(SPACE)
    if schedule == "quickstart":
        raw["distill"]["stages"] = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())["distill"]["stages"]
        space["heads"] = [1, 2, 4]
    for key in ("train", "dev", "test"):
        raw["data"][key] = str(ROOT / raw["data"][key])
    raw["data"]["transfer"] = [str(ROOT / p) for p in raw["data"]["transfer"]]
    raw["teacher"]["backbone"] = str(ROOT / raw["teacher"]["backbone"])
    raw["output_dir"] = str(out)
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-small"}
    raw["search"] |= {"space": space, "num_samples": 10, "sampler": "random", "budget": {"latency_ms": None}}
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def init_spread(out: Path, dev_texts: list[str]) -> dict[int, dict[str, float]]:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xdray.config import StudentConfig
    from xdray.distill.batches import collate, model_inputs
    from xdray.distill.student import build_student

    teacher = AutoModelForSequenceClassification.from_pretrained(out / "teacher" / "model")
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "samples" / "minilm-l6")
    batch = model_inputs(collate({"text": np.array(dev_texts[:256])}, tokenizer, 64, "cpu"))
    spread = {}
    for hidden in (16, 64, 128, 256, 384):
        spread[hidden] = {}
        for name, std in (("fixed_0.02", 0.02), ("width", "width")):
            spec = StudentConfig(layers=2, hidden=hidden, heads=2, embeddings="pca", init_std=std)
            with torch.no_grad():
                cls = build_student(spec, teacher, 2).eval()(**batch, output_hidden_states=True).hidden_states[-1][:, 0]
            spread[hidden][name] = round(float(cls.std(0).norm() / cls.mean(0).norm()), 4)
    return spread


def xdray(command: str, job: Path, code: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", command, str(job)], check=False, cwd=code, env=env)
    if proc.returncode:
        sys.exit(f"xdray {command} failed (exit {proc.returncode}); see {job.parent / 'logs'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/small"))
    parser.add_argument("--schedule", choices=("search", "quickstart"), default="search")
    parser.add_argument("--code", type=Path, default=ROOT, help="the xdray checkout whose search step runs")
    parser.add_argument("--base", type=Path, help="a finished run whose teacher and labels are copied")
    parser.add_argument("--init-std", help="distill.student.init_std for every trial: a number, or width")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    job = config(out, args.schedule, args.init_std)
    if args.base:
        for step in ("teacher", "label"):
            if not (out / step).exists():
                shutil.copytree(args.base.resolve() / step, out / step)
    else:
        xdray("teacher", job, ROOT)
        xdray("label", job, ROOT)
    if not (out / "search" / "summary.json").is_file():
        xdray("search", job, args.code.resolve())
    summary = json.loads((out / "search" / "summary.json").read_text())
    rows = [line.rsplit("\t", 1) for line in Path(yaml.safe_load(job.read_text())["data"]["dev"]).read_text()
            .splitlines()[1:] if line.strip()]
    dev = [int(label) for _, label in rows]
    majority = max(Counter(dev).values()) / len(dev)
    trials = [{"arch": t["arch"], "dev_accuracy": round(t["dev_accuracy"], 4), "status": t["status"]}
              for t in summary["trials"]]
    collapsed = [t for t in trials if abs(t["dev_accuracy"] - majority) <= 1 / len(dev) + 1e-9]
    print(json.dumps({"bench": "small_students", "schedule": args.schedule, "code": str(args.code.resolve()),
                      "majority_share": round(majority, 4), "trials": trials, "collapsed": len(collapsed),
                      "completed": summary["completed"], "init_cls_spread": init_spread(out, [t for t, _ in rows])}))


if __name__ == "__main__":
    main()
