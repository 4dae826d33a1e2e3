"""The E5S1 → Hugging Face conversion behind ``xdray data teachers me5-small``, on a small file written here in the
same format (the real one is 72 MB and arrives by download), and the checks that guard the conversion."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from xdray.cli import main
from xdray.data.e5s1 import read_e5s1, save_hf
from xdray.data.teachers import check_retrieval, check_tokenizer
from xdray.errors import XdrayError

PIECES = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁Hello", -2.0), ("▁world", -2.5),
          ("▁", -4.0), ("H", -6.0), ("e", -6.0), ("l", -6.0), ("o", -6.0), ("w", -6.0), ("r", -6.0), ("d", -6.0),
          ("▁Welt", -3.0), ("<mask>", 0.0)]
H, LAYERS, HEADS, FFN, VOCAB, MAXP = 32, 2, 2, 64, 20, 128  # VOCAB > pieces: the table is padded, as XLM-R's
SCALE = 0.5  # exact in fp16, so the expected weights are (nibble - 8) * 0.5 with no rounding of ours


def _q4(nibbles: np.ndarray) -> bytes:
    """ggml Q4_0: per 32 weights an fp16 scale, then byte j = weight j (low nibble) | weight j + 16 (high)."""
    out = bytearray()
    for block in nibbles.reshape(-1, 32):
        out += np.float16(SCALE).tobytes() + bytes(int(block[j]) | (int(block[j + 16]) << 4) for j in range(16))
    return bytes(out)


def write_e5s1(path, rng) -> dict:
    """A small E5S1 file; returns the weights a correct reader must find (name → flat array)."""
    shapes = {"emb.word": (VOCAB, H), "emb.pos": (MAXP, H), "emb.type": (2, H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
    for i in range(LAYERS):
        for part, shape in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FFN, H), "fo": (H, FFN)}.items():
            shapes[f"l{i}.{part}.w"], shapes[f"l{i}.{part}.b"] = shape, shape[:1]
        for norm in ("aln", "oln"):
            shapes[f"l{i}.{norm}.w"], shapes[f"l{i}.{norm}.b"] = (H,), (H,)
    quantized = {"emb.word"} | {n for n in shapes if n.endswith(".w") and len(shapes[n]) == 2}
    expected, blobs = {}, []
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        if name in quantized:
            nibbles = rng.integers(0, 16, count)
            expected[name] = (nibbles - 8) * SCALE
            blobs.append((name, 1, count, _q4(nibbles)))
        else:
            expected[name] = rng.normal(size=count).astype(np.float32)
            blobs.append((name, 0, count, expected[name].astype("<f4").tobytes()))
    text = b"".join(p.encode() for p, _ in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p, _ in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, LAYERS, HEADS, FFN, VOCAB, MAXP, 2, 1e-12, 32)
    head += struct.pack("<i4iQ", len(PIECES), 0, 2, 1, 3, len(text)) + offsets.tobytes()
    head += np.array([s for _, s in PIECES], dtype="<f4").tobytes() + text
    norm = struct.pack("<IB", 0x2126, 1) + struct.pack("<I", 0x3A9)  # Ω (ohm) → Ω, as the real map holds
    head += struct.pack("<iI", 1, len(norm)) + norm
    directory = struct.pack("<i", len(blobs))
    sizes = sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in blobs)
    at = len(head) + len(directory) + sizes
    for name, dtype, count, blob in blobs:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, at, len(blob))
        at += len(blob)
    path.write_bytes(head + directory + b"".join(b for *_, b in blobs))
    return expected


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("e5s1")
    expected = write_e5s1(root / "tiny.bin", np.random.default_rng(0))
    save_hf(read_e5s1(root / "tiny.bin"), root / "hf")
    return root, expected


def test_weights_land_where_hf_bert_expects_them(converted):
    root, expected = converted
    model = AutoModel.from_pretrained(root / "hf")
    assert model.config.model_type == "bert" and model.config.vocab_size == VOCAB
    state = model.state_dict()
    torch.testing.assert_close(state["embeddings.word_embeddings.weight"].flatten(),
                               torch.tensor(expected["emb.word"], dtype=torch.float32))
    torch.testing.assert_close(state["encoder.layer.1.intermediate.dense.weight"],
                               torch.tensor(expected["l1.fi.w"], dtype=torch.float32).reshape(FFN, H))
    torch.testing.assert_close(state["encoder.layer.0.output.LayerNorm.bias"], torch.tensor(expected["l0.oln.b"]))
    assert (root / "hf" / "model.safetensors").is_file()


def test_tokenizer_is_xlmr_style_unigram(converted):
    root, _ = converted
    tok = AutoTokenizer.from_pretrained(root / "hf")
    assert type(tok).__name__ == "XLMRobertaTokenizer"
    assert tok("Hello world")["input_ids"] == [0, 4, 5, 2]  # <s> ▁Hello ▁world </s>
    assert tok("Hello   Welt")["input_ids"] == [0, 4, 14, 2]  # spaces collapsed
    assert tok("ｗｏｒｌｄ")["input_ids"] == [0, 5, 2]  # nmt_nfkc folds full-width letters
    assert (tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (1, 15, 3)
    pair = tok("Hello", "world")["input_ids"]
    assert pair == [0, 4, 2, 2, 5, 2]
    with pytest.raises(XdrayError, match="'Hello world'"):
        check_tokenizer(root / "hf")  # not XLM-R's 250k vocabulary


def test_retrieval_check_fails_in_one_line_for_a_wrong_model(converted):
    root, _ = converted
    with pytest.raises(XdrayError) as err:
        check_retrieval(root / "hf")  # random weights retrieve at about chance
    assert "acc@1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_corrupt_e5s1_file_is_one_line(converted, tmp_path, damage):
    data = (converted[0] / "tiny.bin").read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + data[4:] if damage == "magic" else data[: len(data) // 2])
    with pytest.raises(XdrayError) as err:
        read_e5s1(bad)
    assert str(bad) in str(err.value) and "fix:" in str(err.value)


def test_unknown_teacher_name_is_refused(tmp_path, capsys):
    assert main(["data", "teachers", "--dir", str(tmp_path), "bert-huge"]) == 1
    err = capsys.readouterr().err
    assert "unknown teacher 'bert-huge'" in err and "mpnet-base, me5-small" in err and not list(tmp_path.iterdir())
