"""`xdray export`: a trained model as ONNX fp32 and int8 beside its tokenizer, a folder that serves alone.

The export is checked before it is kept: torch and both graphs score the task's dev and test splits in one pass;
an fp32 graph whose logits differ from torch's by more than ``export.atol`` fails the step, and the folder of an
earlier export stays as it was (the new one is built beside it and swapped in whole). int8 figures are reported,
not gated. The latency table (ms per sentence of teacher, student, fp32 and int8) is measured back to back in one
Ray task on the node that serves, the order rotated each round. MLflow gets the files and a pyfunc model
(``export.serving``) that serves the int8 graph, registered with the alias ``champion`` under
``mlflow.register``.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from xdray.common.files import replace_dir, staging_dir, weights_bytes, write_json, write_summary
from xdray.common.hf import head_class, load_classifier
from xdray.common.latency import measure_latency
from xdray.common.tracking import Tracker
from xdray.config import XdrayConfig
from xdray.data.tables import load_splits
from xdray.errors import XdrayError
from xdray.export.onnx import OrtClassifier, export_onnx, load_onnx, quantize_int8
from xdray.export.parity import compare_variants, row_length, row_text
from xdray.transfer.model import load_saved
from xdray.transfer.tasks import TaskData, load_task

FILES = {"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}
SERVED = "onnx_int8"


def run_export(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    model_dir, data_name = cfg.export_model
    data, max_length = task_data(cfg, data_name)
    task = data.worker_spec()
    model, tokenizer = load_model(model_dir, task)
    out = cfg.step_dir("export")
    dest = out / "model"
    tmp = staging_dir(dest)
    tmp.mkdir(parents=True)
    with tracker.run(cfg, "export", parent) as run_id:
        tracker.params(run_id, {"export": cfg.export.model_dump(mode="json"), "model_dir": str(model_dir),
                                "data": data_name})
        sample = sorted((row_text(r) for r in data.dev), key=len)
        graph = export_onnx(model, tokenizer, tmp / FILES["onnx_fp32"], [sample[-1], sample[0]],
                            task["type"] == "token_classification", cfg.export.opset)
        q = cfg.export.int8
        quantize_int8(tmp / FILES["onnx_fp32"], tmp / FILES["onnx_int8"], q.weight_type, q.per_channel,
                      q.reduce_range, q.ops)
        torch_model, _ = load_model(model_dir, task, eager=False)  # as users load it (SDPA attention)
        variants = {"torch_fp32": torch_model} | {v: OrtClassifier(tmp / f) for v, f in FILES.items()}
        checked = compare_variants(variants, data, tokenizer, max_length)
        diff = max(checked["max_abs_diff"]["onnx_fp32"].values())
        if diff > cfg.export.atol:
            shutil.rmtree(tmp, ignore_errors=True)
            split = max(checked["max_abs_diff"]["onnx_fp32"], key=checked["max_abs_diff"]["onnx_fp32"].get)
            raise XdrayError(f"export: ONNX fp32 logits differ from torch by {diff:.1e} on {split} > export.atol="
                             f"{cfg.export.atol:g}; the earlier export is kept; fix: export with another opset "
                             "(export.opset) or report the model type as a bug")
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        write_json(tmp / "export.json", {**graph, "task": data.type, "labels": data.names, "max_length": max_length,
                                         "serve": FILES[SERVED], "files": FILES, "source_model": str(model_dir),
                                         "int8": q.model_dump()})
        replace_dir(tmp, dest)
        latency = latency_table(cfg, model_dir, dest, task, [row_text(r) for r in data.test], max_length)
        metrics = checked["metrics"]
        summary = {
            "model_dir": str(model_dir), "data": data_name, "export_dir": str(dest), "task": data.type,
            "onnx_max_abs_diff": diff, "max_abs_diff": checked["max_abs_diff"], "metrics": metrics,
            "int8_metric_delta": round(metrics["onnx_int8"]["test"]["score"] - metrics["onnx_fp32"]["test"]["score"], 5),
            **latency, "size_bytes": {"torch_fp32": weights_bytes(model_dir)}
            | {v: (dest / f).stat().st_size for v, f in FILES.items()},
            "opset": graph["opset"], "mlflow_run_id": run_id,
        }
        tracker.metrics(run_id, {"onnx_max_abs_diff": diff, "int8_metric_delta": summary["int8_metric_delta"],
                                 "metrics": metrics, "latency_ms": summary["latency_ms"],
                                 "speedup_vs_teacher": summary["speedup_vs_teacher"], "size_bytes": summary["size_bytes"]})
        tracker.artifact(run_id, dest, "onnx")
        summary["mlflow_model_uri"] = tracker.log_onnx_pyfunc(run_id, dest, _example(data))
        if cfg.mlflow.register:
            summary["registered"] = tracker.register(run_id, "model", cfg.mlflow.register)
        tracker.artifact(run_id, write_summary(cfg, "export", summary))
    return summary


def task_data(cfg: XdrayConfig, name: str) -> tuple[TaskData, int]:
    """The rows that check the export: the source task's splits or a transfer task's, with their max length."""
    if name == "source":
        train, dev, test = load_splits(cfg)
        kind = "pair_classification" if cfg.data.pairs else "classification"
        names = [str(i) for i in range(max(train.labels) + 1)]
        return TaskData(kind, [], dev.rows(), test.rows(), names), cfg.data.max_length
    task = next(t for t in cfg.transfer.tasks if t.name == name)
    data = load_task(task, cfg.seed)
    if data.type == "question_answering":
        raise XdrayError(f"export.data: task '{name}' is question answering, which xdray export does not convert to "
                         f"ONNX yet; fix: serve {cfg.step_dir('transfer') / name / 'model'} with "
                         "AutoModelForQuestionAnswering, or export another task")
    return data, task.max_length


def load_model(path: Path, task: dict, eager: bool = True):
    """The saved model under the task's head class; a missing or unreadable directory is one line."""
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise XdrayError(f"export.model: no HF model in {path} (config.json missing); fix: run the step that writes "
                         "it first, or point export.model at a saved model directory")
    kwargs = {"attn_implementation": "eager"} if eager else {}
    try:
        model = head_class(task["type"]).from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise XdrayError(f"export.model: cannot load the model in {path} ({first[:200]}); fix: re-run the step "
                         "that wrote it, or point export.model at a complete HF model directory") from None
    if model.config.num_labels != task["num_labels"]:
        raise XdrayError(f"export.model: {path} has {model.config.num_labels} outputs but the task checking it has "
                         f"{task['num_labels']} labels; fix: set export.data to the model's own task")
    return model, tokenizer


def latency_table(cfg: XdrayConfig, model_dir: Path, export_dir: Path, task: dict, texts: list[str],
                  max_length: int) -> dict:
    """ms per sentence of each variant (and the teacher's), per thread count and batch size, and the speedup of
    each against the teacher at the first batch size and thread count."""
    lat = cfg.export.latency
    texts = texts[:lat.sentences]
    torch_loader = partial(load_saved, task=task)
    teacher = lat.teacher and (cfg.teacher_dir / "config.json").is_file()
    names = (["teacher"] if teacher else []) + ["torch_fp32", *FILES]
    by_threads = {}
    for threads in lat.threads:
        loaders = ([load_classifier] if teacher else []) + [torch_loader] + [partial(load_onnx, threads=threads)] * 2
        dirs = ([cfg.teacher_dir] if teacher else []) + [model_dir] + [export_dir / f for f in FILES.values()]
        ms, node = measure_latency(dirs, texts, max_length, lat.batch_sizes, threads, loader=loaders, rounds=lat.rounds)
        by_threads[str(threads)] = {n: {f"b{b}": round(v, 3) for b, v in m.items()} for n, m in zip(names, ms)}
    first = by_threads[str(lat.threads[0])]
    key = f"b{lat.batch_sizes[0]}"
    speedup = {n: round(first["teacher"][key] / m[key], 2) for n, m in first.items() if n != "teacher"} if teacher else None
    return {"latency_ms": first, "latency_ms_by_threads": by_threads, "speedup_vs_teacher": speedup,
            "latency_node": node, "latency_threads": lat.threads[0], "latency_batch": lat.batch_sizes[0]}


def _example(data: TaskData):
    import pandas as pd

    rows = sorted(data.test, key=row_length)[:2]
    frame = {"text": [row_text(r) for r in rows]}
    if any("text_pair" in r for r in rows):
        frame["text_pair"] = [r.get("text_pair", "") for r in rows]
    return pd.DataFrame(frame)
