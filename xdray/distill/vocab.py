"""Carrying embeddings across vocabularies: a ``pretrained:`` init whose tokenizer is not the teacher's.

The student always uses the teacher's vocabulary (the labelled Parquet holds the teacher's ids). Rows whose token
exists in the source vocabulary are copied from the source; a token is the same when its text and its
word-start flag agree, whatever the tokenizer's spelling (WordPiece ``##ing``, SentencePiece ``▁word``, byte-level
``Ġword``), and special tokens match by role. The remaining rows come from the PCA of the teacher's embeddings,
carried into the source's embedding space by a ridge-regression map fitted on the shared rows, so copied and
filled rows live in one space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from tokenizers import decoders
from transformers import PreTrainedTokenizerBase

SPECIAL_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")
RIDGE = 1e-3


@dataclass(frozen=True)
class VocabMap:
    teacher_ids: list[int]  # teacher rows found in the source vocabulary ...
    source_ids: list[int]   # ... and the source rows they copy
    teacher_size: int

    @property
    def coverage(self) -> float:
        return len(self.teacher_ids) / self.teacher_size


def spelling(tokenizer: PreTrainedTokenizerBase):
    """A function from a token to (starts a word, text) under this tokenizer's convention."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec["model"], json.dumps(spec.get("pre_tokenizer"))
    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        return lambda t: (False, t[len(prefix):]) if t.startswith(prefix) else (True, t)
    if "ByteLevel" in pre:
        decoder = decoders.ByteLevel()

        def byte_level(t):
            text = decoder.decode([t])
            return text.startswith(" "), text.lstrip(" ")
        return byte_level
    return lambda t: (t.startswith("▁"), t.lstrip("▁"))  # SentencePiece (Metaspace)


def _lowercases(tokenizer: PreTrainedTokenizerBase) -> bool:
    return "Lowercase" in json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer"))


def map_vocab(teacher: PreTrainedTokenizerBase, source: PreTrainedTokenizerBase) -> VocabMap:
    """Which teacher rows have a counterpart in the source vocabulary (specials by role, the rest by spelling)."""
    pairs = {}
    for role in SPECIAL_ROLES:
        t, s = getattr(teacher, f"{role}_id", None), getattr(source, f"{role}_id", None)
        if t is not None and s is not None:
            pairs.setdefault(t, s)
    specials = set(teacher.all_special_ids)
    t_spell, s_spell, lower = spelling(teacher), spelling(source), _lowercases(source)
    index: dict[tuple[bool, str], int] = {}
    for token, i in sorted(source.get_vocab().items(), key=lambda kv: kv[1]):
        index.setdefault(s_spell(token), i)
    for token, i in teacher.get_vocab().items():
        if i in pairs or i in specials:
            continue
        start, text = t_spell(token)
        found = index.get((start, text.lower() if lower else text))
        if found is not None and text:
            pairs[i] = found
    size = max(teacher.get_vocab().values()) + 1
    ids = sorted(t for t in pairs if t < size)
    return VocabMap(ids, [pairs[t] for t in ids], size)


def carry_embeddings(mapping: VocabMap, source: torch.Tensor, teacher_pca: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The student's word embeddings (teacher rows × source width) and the R² of the fill map on the shared rows.

    ``teacher_pca``: the teacher's embeddings compressed to the source width (``pca_compress``)."""
    keep = [(t, s) for t, s in zip(mapping.teacher_ids, mapping.source_ids) if t < len(teacher_pca)]
    if len(keep) <= teacher_pca.shape[1]:  # too few shared rows to fit a map: the teacher's PCA alone
        return teacher_pca.to(source.dtype), float("nan")
    t_ids, s_ids = (torch.tensor(ids) for ids in zip(*keep))
    x = torch.nn.functional.pad(teacher_pca.double(), (0, 1), value=1.0)  # affine: a constant column
    y = source.double()[s_ids]
    gram = x[t_ids].T @ x[t_ids]
    weights = torch.linalg.solve(gram + RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                                 x[t_ids].T @ y)
    filled = x @ weights
    residual = (filled[t_ids] - y).pow(2).sum()
    r2 = float(1 - residual / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))
    filled[t_ids] = y
    return filled.to(source.dtype), r2
