"""docs/config.md is generated from the pydantic tree; it must match the code (no Ray, well under 2 s)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from xdray.config import XdrayConfig, reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
FIX = "docs/config.md is stale; fix: python -m xdray.config.reference > docs/config.md"


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field, walked independently of the generator (list items as ``name[]``)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested, item = reference._model_of(info.annotation), reference._list_item_model(info.annotation)
        if nested is not None:
            out += _leaves(nested, f"{path}.")
        elif item is not None:
            out += _leaves(item, f"{path}[].")
        else:
            out.append(path)
    return out


def test_reference_matches_the_code():
    assert DOC.is_file(), FIX
    assert DOC.read_text() == reference.markdown(), FIX


def test_every_leaf_field_is_documented():
    text = reference.markdown()
    leaves = _leaves(XdrayConfig)
    assert len(leaves) > 100
    assert sorted(leaves) == sorted(reference.leaf_paths())
    missing = [p for p in leaves if f"| `{p}` |" not in text]
    assert not missing, f"fields missing from the reference: {missing}; {FIX}"
    assert "output_dir" in leaves and "distill.stages[].loss" in leaves and "transfer.tasks[].preset" in leaves

