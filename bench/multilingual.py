"""Cross-lingual distillation: an English-trained multilingual teacher, a small student with a pruned vocabulary,
scored zero-shot in every language of the LibreOffice help task.

Teacher: multilingual-e5-small (117.7M params, 96M of them the 250k-row embedding table; ``xdray data teachers
me5-small``) fine-tuned on the English train split of ``xdray data multilingual``. Student: 3 of its 12 blocks
(layers 3, 7, 11 — a quarter of its encoder FLOPs per token), its embedding rows, and a pruned vocabulary
(specials, single characters, the pieces the data uses, capped). Arms, over the same splits and seeds:
  teacher       the fine-tuned teacher;
  labels        (a) the student trained on the English labels only;
  progressive   (b) the paper's schedule on the multilingual transfer corpus labelled by the teacher (hidden
                states, then logits with gradual unfreezing), then the English labels.
Every language's test split holds the same paragraphs, so the columns compare like with like.

Prints one JSON line per arm and language (``arm``, ``language``, ``metric``, ``value``, ``params``, mean over
seeds, with ``std``), then one per language for (b) − (a), and writes ``multilingual.md``. A rerun reuses
finished runs. ``--quick``: one seed, subsets.

    python bench/multilingual.py [--quick] [--seeds 3] [--languages de,fr,es,it,ja] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from quality import encoder_flops, out_dir, run
from transformers import AutoConfig

from xdray.config import validate_config
from xdray.data.multilingual import prepare_multilingual
from xdray.data.teachers import prepare_teachers

VOCAB_CAP = 30_000
STUDENT = {"layers": 3, "hidden": 384, "heads": 12, "intermediate": 1536, "init": "teacher-layers",
           "embeddings": "copy", "vocab": "prune", "vocab_cap": VOCAB_CAP}
TRAIN = {"workers": 2, "cpus_per_worker": 1, "batch_size": 32, "lr": 1.0e-4,
         "deepspeed": {"zero_stage": 2, "precision": "fp32"}}


def arms(epochs: int) -> dict[str, list[dict]]:
    labels = {"name": "labels", "data": "train", "loss": "ce", "epochs": epochs, "patience": 2}
    return {
        "labels": [{**labels, "epochs": 2 * epochs}],
        "progressive": [
            {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": epochs, "patience": 1},
            {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 1, "unfreeze": "gradual"},
            {"name": "labels", "data": "train", "loss": "ce", "epochs": epochs, "patience": 2},
        ],
    }


def base_config(data: Path, teacher: Path, out: Path, languages: list[str], quick: bool) -> dict:
    task = data / "libreoffice"
    return {
        "output_dir": str(out / "shared"),
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-multilingual"},
        "data": {
            "train": str(task / "train.tsv"), "dev": str(task / "dev.tsv"), "test": str(task / "test.tsv"),
            "tests": {lang: str(task / f"test.{lang}.tsv") for lang in languages},
            "transfer": [str(data / "transfer.txt")], "max_length": 64,
            "max_train_rows": 3000 if quick else None, "max_transfer_rows": 16_000 if quick else 60_000,
        },
        "teacher": {"backbone": str(teacher), "epochs": 1 if quick else 2, "batch_size": 32, "lr": 5.0e-5,
                    "workers": 1, "cpus_per_worker": 2},
        "label": {"batch_size": 64, "actors": 2, "cpus_per_actor": 1},
        "distill": {"student": STUDENT, **TRAIN},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed on subsets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="most epochs per stage (early stopping on dev)")
    parser.add_argument("--languages", default="de,fr,es,it,ja")
    parser.add_argument("--data", type=Path, default=Path("data/multilingual"))
    parser.add_argument("--teachers", type=Path, default=Path("data/teachers"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    languages = sorted(x.strip() for x in args.languages.split(",") if x.strip())
    seeds = 1 if args.quick else args.seeds
    out = out_dir(args.out, "multilingual", args.quick)
    prepare_multilingual(args.data, languages)
    prepare_teachers(args.teachers, ["me5-small"])

    base = base_config(args.data.resolve(), (args.teachers / "me5-small").resolve(), out, languages, args.quick)
    teacher = run(base, "teacher")
    run(base, "label")
    shared = validate_config(base)
    t = AutoConfig.from_pretrained(shared.teacher_dir)
    share = encoder_flops(STUDENT["layers"], STUDENT["hidden"], STUDENT["intermediate"], 64) / encoder_flops(
        t.num_hidden_layers, t.hidden_size, t.intermediate_size, 64)

    def scores(summary: dict) -> dict[str, float]:
        return {"en": summary["test_accuracy"], **summary["test_by_language"]}

    rows, means = [], {"teacher": scores(teacher)}
    params = {"teacher": teacher["params"]["total"]}
    for arm, stages in arms(args.epochs).items():
        results = []
        for seed in range(seeds):
            raw = {**base, "output_dir": str(out / "arms" / f"{arm}-seed{seed}"), "seed": seed,
                   "label": {"teacher": str(shared.teacher_dir)},
                   "distill": {**base["distill"], "stages": stages, "labels": str(shared.labels_dir)}}
            results.append(run(raw, "distill"))
        per_seed = [scores(r) for r in results]
        means[arm] = {lang: statistics.mean(s[lang] for s in per_seed) for lang in per_seed[0]}
        params[arm] = results[0]["params"]["total"]
        for lang in per_seed[0]:
            values = [s[lang] for s in per_seed]
            rows.append({"arm": arm, "language": lang, "metric": "accuracy", "value": round(means[arm][lang], 4),
                         "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "seeds": seeds,
                         "params": params[arm], "vocab": results[0].get("vocab"),
                         "encoder_flops_share": round(share, 3)})
    rows = [{"arm": "teacher", "language": lang, "metric": "accuracy", "value": round(v, 4), "std": 0.0,
             "seeds": 1, "params": params["teacher"]} for lang, v in means["teacher"].items()] + rows
    for lang in means["teacher"]:
        rows.append({"arm": "progressive-labels", "language": lang, "metric": "accuracy_delta",
                     "value": round(means["progressive"][lang] - means["labels"][lang], 4),
                     "params": params["progressive"]})
    for row in rows:
        print(json.dumps(row), flush=True)
    table = out / "multilingual.md"
    table.write_text(markdown(means, params, seeds, share, args.quick))
    print(f"table: {table}", file=sys.stderr)
    return 0


def markdown(means: dict, params: dict, seeds: int, share: float, quick: bool) -> str:
    langs = list(means["teacher"])
    lines = [
        f"LibreOffice help module task (8 classes), trained in English, zero-shot elsewhere; "
        f"{'quick subsets' if quick else 'full splits'}, {seeds} seed(s); student L3-H384 from teacher blocks "
        f"({share:.0%} of its encoder FLOPs per token), pruned vocabulary (cap {VOCAB_CAP:,}).", "",
        "| arm | params | " + " | ".join(langs) + " | min % of teacher |",
        "|---|---|" + "---|" * len(langs) + "---|",
    ]
    for arm in ("teacher", "labels", "progressive"):
        worst = min(means[arm][lang] / means["teacher"][lang] for lang in langs)
        lines.append(f"| {arm} | {params[arm] / 1e6:.1f}M | " + " | ".join(f"{means[arm][lang]:.1%}" for lang in langs)
                     + f" | {worst:.1%} |")
    lines.append("| (b) − (a) | | " + " | ".join(f"{means['progressive'][lang] - means['labels'][lang]:+.1%}"
                                                 for lang in langs) + " | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
