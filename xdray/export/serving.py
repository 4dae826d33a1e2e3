"""The MLflow pyfunc of an exported model: its tokenizer and an ONNX Runtime session, text in, predictions out.

A models-from-code file: MLflow copies it into the logged model and runs it wherever the model is loaded, so it
imports only what the model's requirements list (onnxruntime, transformers, numpy, pandas), never xdray. Input: a
DataFrame with ``text`` (and ``text_pair`` for pair tasks; words separated by spaces for token tasks). Output:
``label`` and ``score`` (the class probability) for classification, ``score`` for regression, ``tags`` (one per
word, space-separated) for token classification.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd


class OnnxTextModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        root = Path(context.artifacts["export"])
        self.meta = json.loads((root / "export.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(root))
        self.session = ort.InferenceSession(str(root / self.meta["serve"]), providers=["CPUExecutionProvider"])

    def _logits(self, enc) -> np.ndarray:
        feed = {i.name: np.asarray(enc[i.name], dtype=np.int64) for i in self.session.get_inputs()}
        return self.session.run(None, feed)[0]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        meta, texts = self.meta, model_input["text"].astype(str).tolist()
        labels, length = meta["labels"], meta["max_length"]
        if meta["task"] == "token_classification":
            words = [t.split() for t in texts]
            enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=length, padding=True,
                                 return_tensors="np")
            best = self._logits(enc).argmax(-1)
            tags = []
            for i in range(len(words)):
                first = {}  # word → its first sub-word's position, where the tag is predicted
                for position, word in enumerate(enc.word_ids(i)):
                    if word is not None:
                        first.setdefault(word, position)
                tags.append(" ".join(labels[best[i, p]] for p in first.values()))
            return pd.DataFrame({"tags": tags})
        pairs = model_input["text_pair"].astype(str).tolist() if "text_pair" in model_input else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=length, padding=True, return_tensors="np")
        logits = self._logits(enc)
        if meta["task"] == "regression":
            return pd.DataFrame({"score": logits[:, 0].astype(float)})
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return pd.DataFrame({"label": [labels[i] for i in probs.argmax(-1)], "score": probs.max(-1).astype(float)})


mlflow.models.set_model(OnnxTextModel())
