"""``export``: the deployable student: ONNX fp32 and int8 beside its tokenizer, checked against torch on the task's
dev and test splits, timed against the teacher."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from xdray.config.base import Section, looks_local

MODEL_KEYWORDS = ("auto", "distill", "search", "teacher")
"""``export.model`` keywords; ``transfer/<task>`` and a local directory are the other forms."""


class Int8Config(Section):
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized per batch at run time."""

    weight_type: Literal["int8", "uint8"] = "int8"
    """Weight type; ``uint8`` can be more accurate on x86 CPUs without VNNI (AVX2 saturates int8 × uint8)."""
    per_channel: bool = False
    """One scale per output channel instead of per tensor."""
    reduce_range: bool = False
    """7-bit weights: avoids the saturation of int8 products on CPUs without VNNI, at some precision."""
    ops: list[str] = ["MatMul"]
    """Operator types quantized; [] = ONNX Runtime's defaults (these add Gather: quantized embeddings)."""


class ExportLatencyConfig(Section):
    """The latency table: ms per sentence of each variant, measured back to back in one Ray task."""

    sentences: int = Field(64, ge=1)
    """Test sentences timed."""
    batch_sizes: list[int] = Field([1, 32], min_length=1)
    """Each is measured; the first gives ``speedup_vs_teacher``."""
    threads: list[int] = Field([1], min_length=1)
    """CPU threads of each measurement (the task reserves the largest); the first gives ``speedup_vs_teacher``."""
    rounds: int = Field(3, ge=1)
    """Passes over every variant, the order rotated each round; each figure is its fastest round."""
    teacher: bool = True
    """Time the teacher too (the speedup's reference); needs the teacher's directory."""


class ExportConfig(Section):
    """What is exported, which splits check it, the graph's opset and tolerance."""

    model: str = "auto"
    """What to export: ``distill`` (<output_dir>/distill/student), ``search`` (the search's chosen student),
    ``transfer/<task>`` (a transfer task's model), ``teacher``, or a local HF directory. ``auto``: ``distill``
    when the config has a source task, else the first transfer task."""
    data: str | None = None
    """Whose dev/test splits check the export: ``source`` (data.*) or a transfer task's name. None = the
    exported model's own task (a directory: the source task)."""
    opset: int = Field(17, ge=14, le=20)
    """ONNX opset of the fp32 graph."""
    atol: float = Field(1e-4, gt=0)
    """Most absolute difference between torch and ONNX fp32 logits on dev and test; a larger one fails the export."""
    int8: Int8Config = Int8Config()
    latency: ExportLatencyConfig = ExportLatencyConfig()

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value.startswith("transfer/") and not re.fullmatch(r"transfer/[A-Za-z0-9_.-]+", value):
            raise ValueError(f"model {value!r}: a transfer model is transfer/<task name>; fix: name a task")
        if value in MODEL_KEYWORDS or value.startswith("transfer/") or looks_local(value):
            return value
        raise ValueError(f"model {value!r} is not known; fix: use one of {', '.join(MODEL_KEYWORDS)}, "
                         "transfer/<task> or a path to an HF model directory")
