"""Student builder: a standard BERT classifier sized from the config, with PCA-compressed teacher embeddings.

The student takes on the teacher's vocabulary (the teacher's tokenizer is used for all data), so its word
embeddings start as the teacher's embedding matrix projected onto its top principal components (paper, step 3).
The result saves with ``save_pretrained`` and loads with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, PretrainedConfig, PreTrainedModel

from xdray.config import StudentConfig


def build_student(
    spec: StudentConfig, teacher: PreTrainedModel, num_labels: int, seed: int = 0
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    tcfg: PretrainedConfig = teacher.config
    config = BertConfig(
        vocab_size=tcfg.vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate or 4 * spec.hidden,
        max_position_embeddings=getattr(tcfg, "max_position_embeddings", 512),
        type_vocab_size=getattr(tcfg, "type_vocab_size", 2),
        pad_token_id=getattr(tcfg, "pad_token_id", 0) or 0,
        num_labels=num_labels,
        id2label=dict(tcfg.id2label) if len(tcfg.id2label) == num_labels else None,
        label2id=dict(tcfg.label2id) if len(tcfg.label2id) == num_labels else None,
    )
    student = BertForSequenceClassification(config)
    if spec.embeddings == "pca":
        words = teacher.get_input_embeddings().weight.detach()
        with torch.no_grad():
            student.get_input_embeddings().weight.copy_(pca_compress(words, spec.hidden))
    return student


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


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Exact parameter counts: embeddings, encoder, head, total."""
    counts = {"embeddings": 0, "encoder": 0, "head": 0}
    for name, p in model.named_parameters():
        part = "embeddings" if ".embeddings." in f".{name}" else "encoder" if ".encoder." in f".{name}" else "head"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return counts
