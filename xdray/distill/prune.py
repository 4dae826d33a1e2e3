"""Vocabulary pruning for students (``distill.student.vocab: prune``): keep what the data uses.

A multilingual teacher's embedding table is most of its parameters (multilingual-e5-small: 96M of 118M, 250k
rows), and a student for one corpus needs a fraction of the rows. Kept: the special tokens, every piece the
labelled transfer corpus and the task splits use under the teacher's tokenizer, and every single-character piece
(so any text still segments, into smaller pieces at worst); with ``vocab_cap``, the most frequent used pieces up
to the cap. Kept pieces keep their teacher order, so new ids are ranks among the kept ids.

The labelled Parquet keeps the teacher's ids and the student maps them (``DistillModule.id_map``) rather than
re-tokenizing: the pruned tokenizer segments every kept text exactly as the teacher's does (its pieces are all
there), so the map is the same thing, and one labelled set then serves full and pruned students alike. The
pruned tokenizer is saved with the student, which serves alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from xdray.distill.vocab import spelling


def piece_counts(tokenizer: PreTrainedTokenizerBase, id_columns: Iterable[pa.ChunkedArray],
                 texts: Iterable[list[str]]) -> np.ndarray:
    """How often each teacher id occurs: in labelled ``input_ids`` columns and in tokenized texts."""
    size = len(tokenizer)
    counts = np.zeros(size, dtype=np.int64)
    for column in id_columns:
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        counts += np.bincount(flat, minlength=size)[:size]
    for batch in texts:
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=size)[:size]
    return counts


def choose_pieces(tokenizer: PreTrainedTokenizerBase, counts: np.ndarray, cap: int | None = None) -> list[int]:
    """The kept teacher ids, ascending: specials, single characters, then used pieces (most frequent first to
    ``cap``); a byte-level BPE vocabulary also keeps every merge's parts, which its merges need to apply."""
    spell = spelling(tokenizer)
    vocab = tokenizer.get_vocab()
    always = set(tokenizer.all_special_ids) | {i for t, i in vocab.items() if len(spell(t)[1]) <= 1}
    used = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0 and i not in always]
    if cap is not None:
        used = used[:max(cap - len(always), 0)]
    keep = always | set(used)
    return sorted(_close_merges(tokenizer, keep))


def _close_merges(tokenizer: PreTrainedTokenizerBase, keep: set[int]) -> set[int]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        return keep
    vocab, parents = model["vocab"], {}
    for merge in model["merges"]:
        a, b, joined = _merge_parts(merge)
        parents.setdefault(joined, (a, b))
    todo, names = list(keep), {i: t for t, i in vocab.items()}
    while todo:
        token = names.get(todo.pop())
        for part in parents.get(token, ()):
            if vocab[part] not in keep:
                keep.add(vocab[part])
                todo.append(vocab[part])
    return keep


def id_map(keep: list[int], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Teacher id → student id; an id outside ``keep`` (not in the data the pieces were chosen from) maps to the
    unknown token."""
    unk = keep.index(tokenizer.unk_token_id) if tokenizer.unk_token_id in keep else 0
    table = torch.full((len(tokenizer),), unk, dtype=torch.long)
    table[torch.tensor(keep)] = torch.arange(len(keep))
    return table


def prune_tokenizer(tokenizer: PreTrainedTokenizerBase, keep: list[int]) -> PreTrainedTokenizerBase:
    """The teacher's tokenizer restricted to ``keep`` (ids renumbered by rank), of the same class."""
    new_id = {old: new for new, old in enumerate(keep)}
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in keep]
        model["unk_id"] = new_id.get(model.get("unk_id"), model.get("unk_id"))
    else:
        model["vocab"] = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
        if model["type"] == "BPE":
            model["merges"] = [m for m in model["merges"]
                               if all(p in model["vocab"] for p in _merge_parts(m))]
    spec["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in spec.get("added_tokens", []) if t["id"] in new_id]
    spec["post_processor"] = _remap_ids(spec.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(spec))
    return type(tokenizer)(tokenizer_object=backend, **tokenizer.special_tokens_map,
                           model_max_length=tokenizer.model_max_length)


def _merge_parts(merge) -> tuple[str, str, str]:
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a, b, a + b


def _remap_ids(node, new_id: dict[int, int]):
    """Special-token ids inside a post-processor (template ``ids`` lists, RoBERTa/BERT ``[token, id]`` pairs)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [new_id[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                out[key] = [value[0], new_id[value[1]]]
            else:
                out[key] = _remap_ids(value, new_id)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def corpus_pieces(cfg, texts: list[list[str]], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], dict]:
    """The kept ids for ``cfg``'s student and a report: the labelled transfer Parquet's ids, the source splits'
    and every file-based transfer task's texts (``texts``: the source splits', one list per split)."""
    from xdray.export.parity import row_text
    from xdray.transfer.tasks import load_task

    columns = [pq.read_table(cfg.labels_dir / part, columns=["input_ids"]).column("input_ids")
               for part in ("transfer", "dev") if (cfg.labels_dir / part).exists()]
    texts = list(texts)
    for task in (cfg.transfer.tasks if cfg.transfer else []):
        if not task.preset:  # presets download; their pieces segment into kept ones (single characters stay)
            data = load_task(task)
            texts += [[row_text(r) for r in rows] + [r["text_pair"] for r in rows if "text_pair" in r]
                      for rows in (data.train, data.dev, data.test)]
    counts = piece_counts(tokenizer, columns, texts)
    spec = cfg.distill.student
    keep = choose_pieces(tokenizer, counts, spec.vocab_cap)
    width = spec.embedding_width
    return keep, {"teacher_pieces": len(tokenizer), "kept_pieces": len(keep), "used_pieces": int((counts > 0).sum()),
                  "embedding_params_saved": (len(tokenizer) - len(keep)) * width}
