"""A saved HF classifier as an ONNX graph with dynamic batch and sequence axes, and int8 by ONNX Runtime's dynamic
quantization. Plain torch + onnxruntime; no Ray.

The exporter is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``: it ships with torch (no onnxscript
or optimum), it is the path Hugging Face's own exporter takes for BERT-family encoders with ``dynamic_axes``, and
it needs no patches. ``optimum``'s ONNX exporter does not install beside transformers 5 (optimum-onnx pins
``transformers<4.58``), and the dynamo exporter still specialises dynamic shapes of BERT's attention mask
(pytorch/pytorch#150842, #152018). Attention is exported in its eager form (MatMul + Softmax), the pattern ONNX
Runtime's CPU kernels and quantizer know.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class LogitsOnly(torch.nn.Module):
    """The model with positional inputs and one output, what a graph export traces."""

    def __init__(self, model: PreTrainedModel, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits


def graph_inputs(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The model inputs the tokenizer produces, in a fixed order (RoBERTa-style tokenizers have no segment ids)."""
    return tuple(n for n in INPUT_NAMES if n in tokenizer.model_input_names)


def export_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, sample: list[str],
                per_token: bool, opset: int) -> dict:
    """Trace ``model`` (in eval mode, eager attention) on two ``sample`` texts of different lengths, so the padded
    row exercises the mask, and write ``path``. Returns what ``export.json`` records about the graph."""
    import onnx

    names = graph_inputs(tokenizer)
    enc = tokenizer(sample[:2], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    wrapper = LogitsOnly(model.eval(), names).eval()  # the exporter restores the wrapper's mode, and with it the model's
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), dynamo=False, input_names=list(names),
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    return {"exporter": f"torch.onnx (TorchScript) {torch.__version__}", "opset": _opset(graph), "inputs": list(names),
            "outputs": ["logits"], "per_token": per_token}


def _opset(graph) -> int:
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(fp32: Path, out: Path, weight_type: str, per_channel: bool, reduce_range: bool,
                  ops: list[str]) -> None:
    """Dynamic quantization (ONNX Runtime's advice for transformers): int8 weights, activation scales computed per
    batch. The graph is first pre-processed (shape inference, basic fusions) as ONNX Runtime recommends; its
    symbolic shape inference is skipped, since it cannot complete on the traced attention mask."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        quantize_dynamic(str(prep), str(out), weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                         per_channel=per_channel, reduce_range=reduce_range, op_types_to_quantize=ops or None)


def ort_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads (one inter-op thread, all graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_onnx(path: str, threads: int = 1) -> tuple[OrtClassifier, object]:
    """A latency loader: the graph at ``path`` and the tokenizer saved beside it."""
    from transformers import AutoTokenizer

    return OrtClassifier(Path(path), threads), AutoTokenizer.from_pretrained(Path(path).parent)


class OrtClassifier:
    """An ONNX Runtime session that takes a tokenizer's torch encoding and returns logits as a tensor, so evaluation
    and latency code runs it exactly as it runs the torch model."""

    def __init__(self, path: Path, threads: int = 1):
        self.session = ort_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **enc: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {n: enc[n].cpu().numpy() for n in self.inputs})
        return torch.from_numpy(logits)

    def eval(self) -> OrtClassifier:
        return self

    def to(self, device: str) -> OrtClassifier:
        return self
