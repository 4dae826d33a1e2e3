"""One search trial: a Tune function trainable that builds one student, measures it and distils it.

The Ray 2.60 pattern: the trial function launches a ``TorchTrainer`` whose callback forwards the workers' dev
evaluations to Tune. The trial builds its student once (the teacher's weights are read for the PCA embedding,
never run) and hands the workers that directory, so Train workers never load the teacher; every trial reads
the teacher outputs the labelling step stored. Latency depends on the student's shape, not its weights, so it
is measured before training and travels in every report: Optuna and ASHA see all objectives in every result.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from xdray.common.files import read_json, replace_dir, staging_dir, write_json
from xdray.common.hf import load_classifier
from xdray.common.latency import measure_latency
from xdray.common.tracking import Tracker
from xdray.config import DistillConfig, XdrayConfig
from xdray.config.space import Candidate, candidate, stages
from xdray.distill.architectures import param_counts
from xdray.distill.prune import prune_tokenizer
from xdray.distill.role import StudentRole
from xdray.distill.student import build_student
from xdray.train.fit import export_student, fit, make_spec
from xdray.train.role import count_forwards


@dataclass
class TrialContext:
    """What every trial shares (it travels to the trial actors with the function)."""

    cfg: XdrayConfig
    tracker: Tracker
    search_run: str
    experiment: str
    trainer: DistillConfig
    datasets: dict
    dev_table: pa.Table
    num_labels: int
    latency_texts: list[str]
    pieces: tuple[int, ...] | None = None  # a pruned vocabulary's teacher ids, shared by every trial

    @property
    def out(self) -> Path:
        return self.cfg.step_dir("search")

    def result_path(self, cand: Candidate) -> Path:
        return self.out / "results" / f"{cand.key}.json"

    def run_key(self, trial_id: str) -> str:
        return f"{self.experiment}/{trial_id}"


class ReportToTune(TuneReportCallback):
    """Forwards the workers' dev evaluations (not checkpoint-only reports) with the trial's fixed metrics."""

    def __init__(self, constants: dict[str, Any]):
        super().__init__()
        self.constants = constants

    def after_report(self, run_context, metrics, checkpoint):
        if "dev_accuracy" in metrics[0]:
            super().after_report(run_context, [{**metrics[0], **self.constants}], None)


def trial_latency(ctx: TrialContext, model_dir: Path) -> tuple[dict[str, float], str]:
    """``latency_ms`` (the first batch size) and ``latency_ms_b<N>`` for each, measured in a task that reserves
    the configured device (``common.latency.measure_latency``), and the node it ran on."""
    lat = ctx.cfg.search.latency
    (ms,), node = measure_latency([model_dir], ctx.latency_texts, ctx.cfg.data.max_length, lat.batch_sizes,
                                  lat.threads, lat.device, lat.resources)
    return {"latency_ms": ms[lat.batch_sizes[0]], **{f"latency_ms_b{b}": v for b, v in ms.items()}}, node


def _build(ctx: TrialContext, cand: Candidate, dest: Path) -> tuple[dict, int]:
    """The initial student as an HF directory; returns its parameter counts and the teacher passes run (0)."""
    cfg = ctx.cfg
    teacher, tokenizer = load_classifier(str(cfg.teacher_dir), trust_remote_code=cfg.teacher.trust_remote_code)
    forwards = count_forwards(teacher)
    keep = list(ctx.pieces) if ctx.pieces is not None else None
    student = build_student(cand.student, teacher, ctx.num_labels, cfg.seed, tokenizer=tokenizer, keep=keep)
    tmp = staging_dir(dest)
    student.save_pretrained(tmp, safe_serialization=True)
    (tokenizer if keep is None else prune_tokenizer(tokenizer, keep)).save_pretrained(tmp)
    replace_dir(tmp, dest)
    return param_counts(student), forwards[0]


def make_trial(ctx: TrialContext):
    """The Tune function trainable."""

    def trial(config: dict) -> None:
        cfg, tracker = ctx.cfg, ctx.tracker
        cand = candidate(config, cfg)
        trial_id = tune.get_context().get_trial_id()
        done = ctx.result_path(cand)
        if done.is_file():  # trained already: by this trial before a restart, or the sampler proposed it again
            result = read_json(done)
            own = result["trained_by"] == trial_id
            tune.report(result | ({} if own else {"duplicate_of": result["trained_by"]}))
            return
        trial_dir = ctx.out / "trials" / trial_id
        with tracker.run(cfg, f"trial-{cand.name}", ctx.search_run, key=ctx.run_key(trial_id)) as run_id:
            tracker.params(run_id, {**cand.describe(), "trial_id": trial_id, "key": cand.key})
            counts, forwards = _build(ctx, cand, trial_dir / "init")
            constants = {"params": counts["total"], **trial_latency(ctx, trial_dir / "init")[0]}
            tracker.metrics(run_id, constants)
            trainer = ctx.trainer.model_copy(update={"lr": cand.lr})
            role = StudentRole(cand.student.model_dump(), student_dir=str(trial_dir / "init"), pieces=ctx.pieces)
            spec = make_spec(cfg, trainer, role, str(cfg.teacher_dir), stages(cfg, cand.schedule),
                             ctx.num_labels, ctx.dev_table, trial_dir / "scratch", run_id)
            result = fit(spec, trainer, ctx.datasets, ctx.out / "ray" / "trials", f"trial-{trial_id}",
                         callbacks=[ReportToTune(constants)])
            trained = export_student(result, trial_dir / "student")
            for scratch in ("scratch", "init"):
                shutil.rmtree(trial_dir / scratch, ignore_errors=True)
            final = {**constants, "dev_accuracy": trained["dev_accuracy"], "final": True, "trained_by": trial_id,
                     "teacher_forwards": trained["teacher_forwards"] + forwards}
            tracker.metrics(run_id, {"dev_accuracy": final["dev_accuracy"], "teacher_forwards": final["teacher_forwards"]})
            write_json(done, final)

    return trial
