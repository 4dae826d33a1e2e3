"""Student builder: a standard Hugging Face classifier sized from the config, initialised the paper's ways.

- ``embedding_size == hidden``: a BERT student; ``embedding_size < hidden``: an ALBERT student with unshared
  layers (``num_hidden_groups == num_hidden_layers``) and a factorized embedding. Both save with
  ``save_pretrained`` and load with ``AutoModelForSequenceClassification`` (``AutoModelForTokenClassification``
  for token tasks) without remote code.
- ``init``: ``random``; ``teacher-layers`` (copy a subset of the teacher's blocks);
  ``pretrained:<path or hub id>`` (a small pre-trained encoder such as MiniLM, as the paper does). Hidden size
  and heads must match the source; a narrower FFN keeps the source's most important neurons. Blocks copy only
  between architectures with BERT's block layout (``architectures``); positions are re-based, since
  RoBERTa-style tables start at ``pad_token_id + 1`` and the student's at 0.
- Word embeddings: ``pca`` (the teacher's matrix projected onto its top principal components — also how the
  student takes on the teacher's vocabulary), ``copy`` (from the init source, across vocabularies by token:
  ``vocab``) or ``random``.
- Random weights are drawn with ``StudentConfig.initializer_range``: BERT's 0.02, or (``init_std: width``)
  scaled to the width, since at 0.02 every residual branch of a narrow student starts so small that its [CLS]
  state barely depends on the input.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xdray.common.hf import head_class
from xdray.config import StudentConfig
from xdray.distill.architectures import check_copyable, encoder_blocks, position_offset
from xdray.distill.vocab import carry_embeddings, map_vocab
from xdray.errors import XdrayError


def student_config(spec: StudentConfig, teacher: PretrainedConfig, num_labels: int,
                   keep: list[int] | None = None) -> PretrainedConfig:
    """The HF config of the student: BERT, or ALBERT with unshared layers when the embedding is factorized;
    ``keep``: the teacher ids a pruned vocabulary keeps."""
    pad = getattr(teacher, "pad_token_id", 0) or 0
    common = dict(
        vocab_size=teacher.vocab_size if keep is None else len(keep),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.ffn_width,
        max_position_embeddings=getattr(teacher, "max_position_embeddings", 512) - position_offset(teacher),
        type_vocab_size=max(getattr(teacher, "type_vocab_size", 2), 2),  # pairs, even where the teacher has no types
        pad_token_id=pad if keep is None else keep.index(pad) if pad in keep else 0,
        hidden_act="gelu",
        initializer_range=spec.initializer_range,
        num_labels=num_labels,
    )
    if len(teacher.id2label) == num_labels:
        common.update(id2label=dict(teacher.id2label), label2id=dict(teacher.label2id))
    if spec.factorized:
        return AlbertConfig(
            embedding_size=spec.embedding_size, num_hidden_groups=spec.layers, inner_group_num=1,
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, classifier_dropout_prob=0.1, **common,
        )
    return BertConfig(**common)


def build_student(spec: StudentConfig, teacher: PreTrainedModel, num_labels: int, seed: int = 0,
                  tokenizer: PreTrainedTokenizerBase | None = None, keep: list[int] | None = None,
                  task_type: str = "classification") -> PreTrainedModel:
    """A student classifier for ``teacher``'s vocabulary (or the ``keep`` rows of it: ``prune``), with the
    head of ``task_type`` (per sequence or per token); deterministic for a given seed. ``tokenizer`` (the
    teacher's) lets ``embeddings: copy`` carry a ``pretrained:`` source's rows across vocabularies."""
    check_student(spec, teacher.config)
    torch.manual_seed(seed)
    student = head_class(task_type).from_config(student_config(spec, teacher.config, num_labels, keep))
    source = None
    if spec.init == "teacher-layers":
        source = teacher.base_model
    elif spec.init.startswith("pretrained:"):
        source = AutoModel.from_pretrained(spec.init.removeprefix("pretrained:"))
    if source is not None:
        _copy_encoder(source, student.base_model, spec.init_layers)
    words, rows = student.get_input_embeddings().weight, keep if keep is not None else slice(None)
    with torch.no_grad():
        if spec.embeddings == "pca":
            words.copy_(pca_compress(teacher.get_input_embeddings().weight.detach()[rows], spec.embedding_width))
        elif spec.embeddings == "copy":
            words.copy_(_source_words(spec, source, teacher, tokenizer)[rows])
    return student


def _source_words(spec: StudentConfig, source: PreTrainedModel, teacher: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase | None) -> torch.Tensor:
    rows = source.get_input_embeddings().weight.detach()
    if spec.init == "teacher-layers":
        return rows
    source_tokenizer = AutoTokenizer.from_pretrained(spec.init.removeprefix("pretrained:"))
    if tokenizer is None:
        raise ValueError("embeddings: copy from a pretrained source needs the teacher's tokenizer")
    if source_tokenizer.get_vocab() == tokenizer.get_vocab():
        return rows
    teacher_rows = teacher.get_input_embeddings().weight.detach()
    words, _ = carry_embeddings(map_vocab(tokenizer, source_tokenizer), rows,
                                pca_compress(teacher_rows, rows.shape[1]))
    return words


def init_report(spec: StudentConfig, tokenizer: PreTrainedTokenizerBase) -> dict | None:
    """How much of the teacher's vocabulary a ``pretrained:`` source's embedding rows cover (``embeddings: copy``)."""
    if not (spec.init.startswith("pretrained:") and spec.embeddings == "copy"):
        return None
    mapping = map_vocab(tokenizer, AutoTokenizer.from_pretrained(spec.init.removeprefix("pretrained:")))
    return {"source": spec.init, "vocab_coverage": round(mapping.coverage, 4),
            "shared_tokens": len(mapping.teacher_ids), "teacher_tokens": mapping.teacher_size}


def check_student(spec: StudentConfig, teacher: PretrainedConfig) -> None:
    """Fail before any training when the init cannot apply to this teacher (one line, with the fix)."""
    if spec.init == "teacher-layers":
        check_source(spec, teacher)
    elif spec.init.startswith("pretrained:"):
        check_source(spec, AutoConfig.from_pretrained(spec.init.removeprefix("pretrained:")))


def check_source(spec: StudentConfig, source: PretrainedConfig) -> None:
    what = f"distill.student.init={spec.init}"
    check_copyable(source, what)
    hidden, heads = getattr(source, "hidden_size", None), getattr(source, "num_attention_heads", None)
    ffn = getattr(source, "intermediate_size", None)
    if (spec.hidden, spec.heads) != (hidden, heads) or ffn is None or spec.ffn_width > ffn:
        raise XdrayError(
            f"{what}: the source has hidden {hidden}, heads {heads}, FFN {ffn}; the student needs the same hidden "
            f"and heads and an FFN of at most {ffn} (got {spec.hidden}, {spec.heads}, "
            f"{spec.ffn_width}); fix: match the source's widths or use init: random"
        )
    layers = source.num_hidden_layers
    chosen = spec.init_layers or []
    if spec.layers > layers or any(not 0 <= i < layers for i in chosen):
        raise XdrayError(
            f"{what}: the source has {layers} layers, the student {spec.layers} (init_layers {chosen}); "
            "fix: pick layer indices 0.."
            f"{layers - 1}"
        )


def spread_layers(source_layers: int, layers: int) -> list[int]:
    """Evenly spaced source blocks ending with the top one (6 → 3 gives 1, 3, 5)."""
    return [round((i + 1) * source_layers / layers) - 1 for i in range(layers)]


def _copy_encoder(source: PreTrainedModel, student: PreTrainedModel, chosen: list[int] | None) -> None:
    """Copy position/type embeddings, the embedding LayerNorm and the chosen blocks (word embeddings aside);
    position rows are re-based to start at 0."""
    src_layers, dst_layers = encoder_blocks(source), encoder_blocks(student)
    chosen = chosen or spread_layers(len(src_layers), len(dst_layers))
    offsets = {"position_embeddings": position_offset(source.config), "token_type_embeddings": 0}
    with torch.no_grad():
        for name, offset in offsets.items():
            src, dst = getattr(source.embeddings, name).weight[offset:], getattr(student.embeddings, name).weight
            rows = min(len(src), len(dst))
            dst[:rows].copy_(src[:rows])
        student.embeddings.LayerNorm.load_state_dict(source.embeddings.LayerNorm.state_dict())
        for dst, i in zip(dst_layers, chosen):
            _copy_block(src_layers[i], dst)


def _copy_block(src: nn.Module, dst: nn.Module) -> None:
    """Copy one BERT block. A narrower FFN keeps the source's most important neurons (largest product of input-row
    and output-column norms), so the pruned block starts close to the source's function rather than from noise."""
    width = dst.intermediate.dense.out_features
    if width == src.intermediate.dense.out_features:
        dst.load_state_dict(src.state_dict())
        return
    w_in, w_out = src.intermediate.dense.weight, src.output.dense.weight
    keep = (w_in.norm(dim=1) * w_out.norm(dim=0)).topk(width).indices.sort().values
    dst.attention.load_state_dict(src.attention.state_dict())
    dst.output.LayerNorm.load_state_dict(src.output.LayerNorm.state_dict())
    dst.intermediate.dense.weight.copy_(w_in[keep])
    dst.intermediate.dense.bias.copy_(src.intermediate.dense.bias[keep])
    dst.output.dense.weight.copy_(w_out[:, keep])
    dst.output.dense.bias.copy_(src.output.dense.bias)


def pca_compress(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """Project rows onto the top ``dim`` principal components, rescaled to the original per-row scale.

    When ``dim`` >= the input width the matrix is zero-padded instead (nothing to compress).
    """
    matrix = matrix.float()
    if dim >= matrix.shape[1]:
        return torch.nn.functional.pad(matrix, (0, dim - matrix.shape[1]))
    centered = matrix - matrix.mean(dim=0, keepdim=True)
    # exact and deterministic: eigenvectors of the (width x width) covariance, largest first, each with its
    # largest-magnitude entry made positive (randomized PCA would give a different student every build)
    _, vectors = torch.linalg.eigh(centered.T.double() @ centered.double())
    top = vectors[:, -dim:].flip(1)
    top = top * torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    projected = centered @ top.float()
    return projected * (matrix.std() / projected.std().clamp_min(1e-8))
