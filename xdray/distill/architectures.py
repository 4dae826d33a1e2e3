"""What xdray needs to know about an encoder architecture, found generically with a small table per model_type.

Every Hugging Face encoder keeps its blocks in one ``nn.ModuleList`` of ``num_hidden_layers`` entries under the
base model and its embeddings in ``base_model.embeddings``; only a few facts differ by family and are tabled
here: whether a block has BERT's layout (so ``teacher-layers`` / ``pretrained:`` init can copy it into the BERT
student), where absolute positions start (RoBERTa-style models count from ``pad_token_id + 1``), and the module
that maps a factorized embedding to the hidden width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from xdray.errors import XdrayError


@dataclass(frozen=True)
class Family:
    """``why_not``: why this family's blocks cannot be copied into a BERT block (empty: they can)."""

    why_not: str = ""
    positions_after_pad: bool = False  # absolute positions start at pad_token_id + 1 (fairseq's convention)


ROBERTA_LIKE = Family(positions_after_pad=True)
FAMILIES = {
    "bert": Family(),
    "roberta": ROBERTA_LIKE,
    "xlm-roberta": ROBERTA_LIKE,
    "camembert": ROBERTA_LIKE,
    "electra": Family(),
    "mpnet": Family("MPNet's blocks add a relative attention bias shared across layers, which a BERT block has no "
                    "place for", positions_after_pad=True),
    "deberta": Family("DeBERTa's disentangled attention (content-to-position terms, no absolute positions) has no "
                      "BERT counterpart"),
    "deberta-v2": Family("DeBERTa's disentangled attention (content-to-position terms, no absolute positions) has "
                         "no BERT counterpart"),
    "albert": Family("ALBERT shares its blocks across layers"),
    "distilbert": Family("DistilBERT blocks lay out attention and FFN differently (no intermediate/output split)"),
    "xlm-roberta-xl": Family("XLM-R XL blocks normalise before attention (pre-LN), BERT's after"),
    "roberta-prelayernorm": Family("pre-LN RoBERTa blocks normalise before attention, BERT's after"),
}
UNKNOWN = Family("its model_type is not one xdray knows the block layout of")
EMBEDDING_PROJECTIONS = ("embedding_hidden_mapping_in", "embeddings_project")  # ALBERT (in the encoder); ELECTRA


def family(config: PretrainedConfig) -> Family:
    return FAMILIES.get(config.model_type, UNKNOWN)


def position_offset(config: PretrainedConfig) -> int:
    """Row of the position-embedding table that holds position 0."""
    return (config.pad_token_id or 0) + 1 if family(config).positions_after_pad else 0


def check_copyable(config: PretrainedConfig, what: str) -> None:
    """Fail in one line when blocks of ``config``'s architecture cannot initialise a BERT student's blocks."""
    why = family(config).why_not
    if not why and config.model_type == "electra" and config.embedding_size != config.hidden_size:
        why = f"this ELECTRA's embedding width ({config.embedding_size}) is not its hidden width"
    if why:
        raise XdrayError(
            f"{what}: cannot copy {config.model_type} blocks into the BERT student: {why}; "
            "fix: use init: random (or pretrained: a BERT/RoBERTa/XLM-R checkpoint) with embeddings: pca"
        )


def encoder_blocks(model: PreTrainedModel) -> list[nn.Module]:
    """The transformer blocks, bottom first: the base model's module list with one entry per layer (per group for
    ALBERT, whose unshared students have one group per layer)."""
    config = model.config
    count = getattr(config, "num_hidden_groups", None) or config.num_hidden_layers
    for name, module in model.base_model.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module)
    raise XdrayError(f"{type(model).__name__}: no list of {count} transformer blocks found; "
                     "fix: use an encoder with one module per layer (BERT, RoBERTa, MPNet, DeBERTa, ...)")


def embedding_modules(model: PreTrainedModel) -> list[nn.Module]:
    """Everything before the first block: the embeddings, plus the projection of a factorized embedding."""
    base = model.base_model
    found = [base.embeddings]
    for owner in (base, getattr(base, "encoder", None)):
        found += [getattr(owner, name) for name in EMBEDDING_PROJECTIONS if owner is not None
                  and isinstance(getattr(owner, name, None), nn.Module)]
    return found


def param_counts(model: PreTrainedModel) -> dict[str, int]:
    """Exact parameter counts: embeddings, encoder (the blocks and what they share, such as a relative attention
    bias), head (pooler + classifier), total."""
    def size(modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    base = model.base_model
    pooler = getattr(base, "pooler", None)
    counts = {"embeddings": size(embedding_modules(model))}
    counts["encoder"] = size([base]) - counts["embeddings"] - (size([pooler]) if isinstance(pooler, nn.Module) else 0)
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["head"] = counts["total"] - counts["embeddings"] - counts["encoder"]
    return {k: counts[k] for k in ("embeddings", "encoder", "head", "total")}
