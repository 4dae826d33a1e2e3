"""Tiny teachers of every encoder family xdray supports, each with a tokenizer of its own kind trained on the fly
(byte-level BPE for RoBERTa, SentencePiece Unigram for XLM-R and DeBERTa, WordPiece for MPNet and ELECTRA), saved
as standard HF directories that ``AutoModel`` / ``AutoTokenizer`` load without remote code."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DebertaV2Config,
    DebertaV2Model,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

FAIRSEQ = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4: bos/cls, pad, eos/sep, unk, mask
BERT_STYLE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
KINDS = ("roberta", "xlm-roberta", "mpnet", "electra", "deberta-v2")


def _fairseq_pairs(tok: Tokenizer) -> None:
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])


def _byte_bpe(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=FAIRSEQ,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def _unigram(corpus: list[str], specials: list[str], unk: str) -> Tokenizer:
    """A SentencePiece-style Unigram model over the corpus' words (``▁word``), their characters and ``▁``, scored
    by log frequency (the tokenizers trainer keeps only characters on a corpus this small)."""
    counts = Counter(word for line in corpus for word in line.split())
    chars = Counter(c for word, n in counts.items() for c in word * n)
    total = sum(counts.values()) + sum(chars.values())
    pieces = [(f"▁{w}", math.log(n / total)) for w, n in counts.most_common()]
    pieces += [(c, math.log(n / total) - 5) for c, n in chars.most_common()] + [("▁", -20.0)]
    tok = Tokenizer(models.Unigram([(s, 0.0) for s in specials] + pieces, unk_id=specials.index(unk)))
    tok.normalizer, tok.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(specials)
    return tok


def _wordpiece(corpus: list[str], specials: list[str], unk: str) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    return tok


def _bert_pairs(tok: Tokenizer) -> None:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def _fairseq_kind(corpus, byte_level):
    tok = _byte_bpe(corpus) if byte_level else _unigram(corpus, FAIRSEQ, "<unk>")
    if not byte_level:
        _fairseq_pairs(tok)
    return tok, dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), FAIRSEQ),
                     cls_token="<s>", sep_token="</s>")


def build_tiny_encoder(kind: str, directory: Path, corpus: list[str]) -> Path:
    """A 2-layer, hidden-32 encoder of ``kind`` with its tokenizer, saved (safetensors) under ``directory``."""
    if kind in ("roberta", "xlm-roberta"):
        tok, special = _fairseq_kind(corpus, byte_level=kind == "roberta")
        cls, config_cls, model_cls = (("RobertaTokenizer", RobertaConfig, RobertaModel) if kind == "roberta"
                                      else ("XLMRobertaTokenizer", XLMRobertaConfig, XLMRobertaModel))
        config = config_cls(vocab_size=tok.get_vocab_size(), max_position_embeddings=66, type_vocab_size=1,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2, **SIZE)
    elif kind == "mpnet":
        tok = _wordpiece(corpus, ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], "[UNK]")
        _fairseq_pairs(tok)
        special = dict(bos_token="<s>", cls_token="<s>", pad_token="<pad>", eos_token="</s>", sep_token="</s>",
                       unk_token="[UNK]", mask_token="<mask>")
        cls, model_cls = "MPNetTokenizer", MPNetModel
        config = MPNetConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=66, pad_token_id=1,
                             **SIZE)  # 32 relative buckets: MPNet hard-codes that many in its forward
    elif kind == "electra":
        tok = _wordpiece(corpus, BERT_STYLE, "[UNK]")
        _bert_pairs(tok)
        special = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_STYLE))
        cls, model_cls = "ElectraTokenizer", ElectraModel
        config = ElectraConfig(vocab_size=tok.get_vocab_size(), embedding_size=32, max_position_embeddings=64, **SIZE)
    elif kind == "deberta-v2":
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        tok = _unigram(corpus, specials, "[UNK]")
        _bert_pairs(tok)
        special = dict(zip(("pad_token", "cls_token", "sep_token", "unk_token", "mask_token"), specials))
        cls, model_cls = "DebertaV2Tokenizer", DebertaV2Model
        config = DebertaV2Config(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, type_vocab_size=0,
                                 relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                                 max_relative_positions=16, position_buckets=8, pad_token_id=0, **SIZE)
    else:
        raise ValueError(kind)
    directory.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(directory)
    settings = directory / "tokenizer_config.json"  # load as the family's own tokenizer class
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "tokenizer_class": cls}))
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory, safe_serialization=True)
    return directory
