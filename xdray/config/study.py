"""``study``: the paper's question asked of your data — which source task distils the most universal student."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from xdray.config.base import Section
from xdray.config.data import TEST_NAME, TransferSource, bare_paths

SOURCE_KEYS = ("task", "train", "dev", "test", "tests", "pairs", "max_length", "stride", "max_train_rows")
"""What a source may set in ``data``: its labeled task. The transfer corpora (and their cleaning) are the study's
own, shared by every source."""


class StudyConfig(Section):
    """One student per source task, all distilled over the same transfer corpora (``data.transfer``) and measured
    on the same targets (``transfer.tasks``). ``xdray study`` runs teacher → label → distill → transfer for each
    source in ``<output_dir>/sources/<name>/`` (the whole config, with ``data`` updated by the source's keys) and
    tables every student's target scores and their average. A target whose train split is the source's own is
    left out for that source: it would not be a transfer."""

    sources: dict[str, dict[str, Any]] = Field(min_length=1)
    """Source name → the ``data`` keys it sets (``train``, ``dev``, ``test``, and ``pairs``, ``task``, ...), e.g.
    ``{movies: {train: ..., dev: ..., test: ...}, bible: {train: ..., dev: ..., test: ..., pairs: true}}``."""

    transfer_pairs: list[TransferSource] = []
    """What a sentence-pair source (``pairs: true``) reads in place of ``data.transfer``: the same corpus as
    pairs, e.g. ``data/general/pairs.txt`` (``xdray data general-corpus --pairs N``). A pair teacher's logits for
    a lone sentence carry none of its task; empty: every source reads ``data.transfer``."""

    @field_validator("transfer_pairs", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        return bare_paths(value)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, keys in value.items():
            if not TEST_NAME.match(name):
                raise ValueError(f"study.sources: {name!r} is not a name; fix: use letters, digits, _ and -")
            if not isinstance(keys, dict):
                raise ValueError(f"study.sources.{name}: give the data keys it sets, e.g. {{train: ..., dev: ..., "
                                 "test: ...}")
            if bad := sorted(set(keys) - set(SOURCE_KEYS)):
                raise ValueError(f"study.sources.{name}.{bad[0]}: a source sets only its labeled task "
                                 f"({', '.join(SOURCE_KEYS)}); fix: set the shared keys in data")
        return value
