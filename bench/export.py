"""Export benchmark: the quality bench's progressive student as ONNX fp32 and int8, on the full movie dev and test
splits, timed against the teacher.

Runs xdray's own export step (``xdray.export.run``) on ``bench/quality.py``'s progressive student (seed 0) with
its teacher as the latency reference: parity of the fp32 graph with torch, accuracy of torch fp32, ONNX fp32 and
ONNX int8, and ms per sentence at batch 1 and 32 on 1 thread and on every core, measured back to back in one Ray
task with the order rotated each round, after waiting for an idle CPU. ``--int8-sweep`` adds the other dynamic
quantization settings (uint8 weights, reduce_range, ONNX Runtime's default operator set) on the same splits.

Prints one JSON line and writes ``export.md`` (the README's table) next to the run. A rerun reuses a finished
export (its summary.json). The headline checked: int8 ≥ 10× faster than the teacher at batch 1 on 1 thread,
with ≥ 98% of the teacher's test accuracy.

    python bench/export.py [--quality outputs/bench/quality] [--seed 0] [--rounds 5] [--sentences 256] [--int8-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from transfer import wait_for_idle_cpu

from xdray.common.files import read_json, read_summary, weights_bytes, write_json
from xdray.common.latency import latency_ms
from xdray.common.tracking import Tracker, tracking_uri
from xdray.config import validate_config
from xdray.export.onnx import OrtClassifier, load_onnx, quantize_int8
from xdray.export.parity import compare_variants, row_text
from xdray.export.run import load_model, task_data
from xdray.pipeline import run_step

SWEEP = {  # name: (weight_type, reduce_range, ops); the step's own default is int8 weights, MatMul only
    "uint8": ("uint8", False, ["MatMul"]),
    "int8_reduce_range": ("int8", True, ["MatMul"]),
    "int8_default_ops": ("int8", False, []),
}


def config(quality: Path, samples: Path, out: Path, student: Path, sentences: int, rounds: int) -> dict:
    teacher = quality / "shared" / "teacher" / "model"
    return {
        "output_dir": str(out), "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
                                           "experiment": "xdray-bench-export"},
        "data": {"train": str(samples / "movie/train.tsv"), "dev": str(samples / "movie/dev.tsv"),
                 "test": str(samples / "movie/test.tsv"), "transfer": [str(samples / "transfer.txt")],
                 "max_length": 64},
        "teacher": {"backbone": str(teacher)}, "label": {"teacher": str(teacher)},
        "export": {"model": str(student), "data": "source",
                   "latency": {"sentences": sentences, "batch_sizes": [1, 32], "threads": sorted({1, os.cpu_count() or 1}),
                               "rounds": rounds}},
    }


def cpu() -> dict:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    flags = next((line for line in lines if line.startswith("flags")), "")
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return {"model": model, "cores": os.cpu_count(), "avx2": " avx2" in flags,
            "vnni": " avx512_vnni" in flags or " avx_vnni" in flags}


def sweep(cfg, out: Path, sentences: int) -> dict:
    """The other int8 settings on the same splits: accuracy, largest logit gap to torch, batch-1 latency."""
    model_dir, name = cfg.export_model
    data, max_length = task_data(cfg, name)
    model, tokenizer = load_model(model_dir, data.worker_spec(), eager=False)
    fp32 = Path(cfg.step_dir("export") / "model" / "model.onnx")
    done = read_json(out / "sweep.json") or {}
    texts = [row_text(r) for r in data.test[:sentences]]
    for variant, (weight_type, reduce_range, ops) in SWEEP.items():
        if variant in done:
            continue
        path = fp32.with_name(f"model.{variant}.onnx")
        quantize_int8(fp32, path, weight_type, False, reduce_range, ops)
        checked = compare_variants({"torch_fp32": model, variant: OrtClassifier(path)}, data, tokenizer, max_length)
        ms = latency_ms(path, texts, max_length, [1], loader=load_onnx)[1]
        done[variant] = {"test": checked["metrics"][variant]["test"]["accuracy"],
                         "dev": checked["metrics"][variant]["dev"]["accuracy"],
                         "max_abs_diff": max(checked["max_abs_diff"][variant].values()),
                         "latency_ms_b1": round(ms, 3), "size_bytes": path.stat().st_size}
        write_json(out / "sweep.json", done)
    return done


def markdown(summary: dict, teacher: dict, info: dict, swept: dict, busy: float) -> str:
    threads = sorted(int(t) for t in summary["latency_ms_by_threads"])
    lat = summary["latency_ms_by_threads"]
    cols = [f"{b} · {t} thread{'s' if t > 1 else ''}" for t in threads for b in ("b1", "b32")]
    head = ["variant", "test acc", "dev acc", "max abs Δlogit vs torch", "size", *[f"ms/sentence {c}" for c in cols],
            "speedup vs teacher (b1, 1 thread)"]
    rows = []
    for v in ("teacher", "torch_fp32", "onnx_fp32", "onnx_int8"):
        m = summary["metrics"].get(v)
        test, dev = (f"{teacher['test_accuracy']:.1%}", f"{teacher['dev_accuracy']:.1%}") if v == "teacher" else (
            f"{m['test']['accuracy']:.1%}", f"{m['dev']['accuracy']:.1%}")
        gap = "" if v in ("teacher", "torch_fp32") else f"{max(summary['max_abs_diff'][v].values()):.1e}"
        size = teacher["bytes"] if v == "teacher" else summary["size_bytes"][v]
        ms = [f"{lat[str(t)][v][b]:.2f}" for t in threads for b in ("b1", "b32")]
        speed = "1.0x" if v == "teacher" else f"{summary['speedup_vs_teacher'][v]:.1f}x"
        rows.append([v, test, dev, gap, f"{size / 1e6:.1f} MB", *ms, speed])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + (f"\n\nCPU: {info['model']}, {info['cores']} cores, VNNI {'yes' if info['vnni'] else 'no'}; "
                               f"{busy:.0f}% busy before timing; latency node {summary['latency_node'][:12]}.\n")
    if swept:
        text += "\n| int8 setting | test acc | dev acc | max abs Δlogit vs torch | size | ms/sentence b1 · 1 thread |\n"
        text += "|---|---|---|---|---|---|\n"
        for v, r in swept.items():
            text += (f"| {v} | {r['test']:.1%} | {r['dev']:.1%} | {r['max_abs_diff']:.1e} | "
                     f"{r['size_bytes'] / 1e6:.1f} MB | {r['latency_ms_b1']:.2f} |\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quality", type=Path, default=Path("outputs/bench/quality"),
                        help="bench/quality.py's output (outputs/bench/quality-quick for its --quick run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=256, help="test sentences timed")
    parser.add_argument("--int8-sweep", action="store_true")
    parser.add_argument("--samples", type=Path, default=Path("data/samples"))
    parser.add_argument("--out", type=Path, default=None, help="default outputs/bench/export-<quality dir name>")
    args = parser.parse_args(argv)
    quality = args.quality.resolve()
    student = quality / "arms-minilm" / f"progressive-seed{args.seed}" / "distill" / "student"
    teacher_summary = read_json(quality / "shared" / "teacher" / "summary.json")
    if not (student / "config.json").is_file() or teacher_summary is None:
        print(f"bench/export.py: no progressive student or teacher under {quality}; fix: run bench/quality.py "
              "(or pass --quality)", file=sys.stderr)
        return 2
    out = (args.out or Path("outputs/bench") / f"export-{quality.name}").resolve()
    cfg = validate_config(config(quality, args.samples.resolve(), out, student, args.sentences, args.rounds))
    busy = wait_for_idle_cpu()
    summary = read_summary(cfg, "export") or run_step(cfg, Tracker(tracking_uri(cfg)), "export")
    swept = sweep(cfg, out, 64) if args.int8_sweep else {}
    teacher = {**teacher_summary, "bytes": weights_bytes(cfg.teacher_dir)}
    info = cpu()
    int8_acc = summary["metrics"]["onnx_int8"]["test"]["accuracy"]
    headline = {"speedup_b1": summary["speedup_vs_teacher"]["onnx_int8"],
                "share_of_teacher_accuracy": round(int8_acc / teacher["test_accuracy"], 4)}
    headline["met"] = headline["speedup_b1"] >= 10 and headline["share_of_teacher_accuracy"] >= 0.98
    print(json.dumps({"bench": "export", "student": str(student), "teacher_test_accuracy": teacher["test_accuracy"],
                      **{k: summary[k] for k in ("onnx_max_abs_diff", "metrics", "latency_ms", "latency_ms_by_threads",
                                                 "speedup_vs_teacher", "int8_metric_delta", "size_bytes")},
                      "int8_sweep": swept, "cpu": info, "busy_percent": busy, "headline": headline}), flush=True)
    (out / "export.md").write_text(markdown(summary, teacher, info, swept, busy))
    print(f"table: {out / 'export.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
