"""`xdray data multilingual` on small help trees and message catalogues written here in Debian's layout (the real
packages arrive by apt-get download): alignment by page + paragraph id, page-level splits, every language scored
on the same test content, and a transfer corpus that holds no test paragraph in any language."""

from __future__ import annotations

import json
import struct

import pytest

from xdray.cli import main
from xdray.data.multilingual import MO_PACKAGES, MODULES, prepare_multilingual, read_help
from xdray.errors import XdrayError

WORDS = {"swriter": "writer text document page", "scalc": "calc cell sheet formula", "simpress": "slide show"}


def _page(lang: str, paragraphs: dict[str, str]) -> str:
    body = "".join(f'<p id="{pid}" class="paragraph" dir="auto"><a name="x"></a>{text} <span>end</span></p>'
                   for pid, text in paragraphs.items())
    return f'<html lang="{lang}"><body><h1 id="hd_id1">Title</h1>{body}<p>no id</p></body></html>'


def _mo(path, messages: dict[str, str]) -> None:
    """A GNU .mo catalogue (header entry first, ids sorted), as msgfmt writes it."""
    items = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids, strs = (b"".join(s.encode() + b"\0" for s in col) for col in zip(*items))
    n = len(items)
    start = 28 + 16 * n
    table, at = [], start
    for k, _ in items:
        table.append((len(k.encode()), at))
        at += len(k.encode()) + 1
    values, at = [], start + len(ids)
    for _, v in items:
        values.append((len(v.encode()), at))
        at += len(v.encode()) + 1
    head = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + b"".join(struct.pack("<2I", *e) for e in table + values) + ids + strs)


def _fake_debian(cache, languages: list[str]) -> None:
    """What fetch_deb leaves in its cache: a .deb (any bytes) and its unpacked tree, marked unpacked."""
    def package(name):
        (cache / f"{name}_1.0-1_all.deb").write_bytes(b"")
        tree = cache / name
        tree.mkdir(parents=True)
        (tree / ".unpacked").touch()
        return tree

    cache.mkdir(parents=True)
    for lang in ["en-us", *languages]:
        root = package(f"libreoffice-help-{lang}") / "usr/share/libreoffice/help" / (
            "en-US" if lang == "en-us" else lang)
        for module, words in [*WORDS.items(), ("shared", "common dialog")]:
            for page in range(10):
                paragraphs = {f"par_id{k}": f"{words} paragraph {page} item {k} of this help page"
                              + ("" if lang == "en-us" else f" [{lang}]") for k in range(3)}
                if lang == "ja" and module == "scalc" and page < 5:
                    paragraphs.pop("par_id2")  # not every paragraph is translated everywhere
                (root / "text" / module / f"p{page}.html").parent.mkdir(parents=True, exist_ok=True)
                (root / "text" / module / f"p{page}.html").write_text(_page(lang, paragraphs))
    for name in MO_PACKAGES:
        tree = package(name)
        for lang in languages:
            _mo(tree / f"usr/share/locale/{lang}/LC_MESSAGES/{name}.mo",
                {f"Open the {name} file now": f"{lang}: open the {name} file now", "Short": "S"})


def test_help_paragraphs_are_read_by_id(tmp_path):
    root = tmp_path / "en-US"
    (root / "text" / "swriter").mkdir(parents=True)
    (root / "text" / "swriter" / "a.html").write_text(_page("en-US", {"par_id7": "Insert a   section"}))
    assert read_help(root) == {("swriter/a.html", "par_id7"): "Insert a section end"}


def test_task_and_corpus_from_debian_layout(tmp_path):
    out = tmp_path / "ml"
    _fake_debian(out / "cache", ["de", "ja"])
    manifest = prepare_multilingual(out, ["ja", "de"])
    assert manifest["languages"] == ["de", "ja"]
    read = {name: (out / "libreoffice" / f"{name}.tsv").read_text().splitlines()[1:]
            for name in ("train", "dev", "test", "test.de", "test.ja")}
    assert {len(read[n]) for n in ("test", "test.de", "test.ja")} == {manifest["rows"]["test"]} and read["test"]
    for en, de, ja in zip(read["test"], read["test.de"], read["test.ja"]):  # the same paragraphs, in order
        assert de.replace(" [de]", "") == en == ja.replace(" [ja]", "")
    labels = {line.rsplit("\t", 1)[1] for name in read for line in read[name]}
    assert labels <= {str(MODULES.index(m)) for m in WORDS}  # integer ids, names in the manifest; no "shared"
    pages = {name: {line.split(" item")[0] for line in read[name]} for name in ("train", "dev", "test")}
    assert not (pages["train"] & pages["test"]) and not (pages["dev"] & pages["test"])  # split by page
    corpus = set((out / "transfer.txt").read_text().splitlines())
    tests = {line.rsplit("\t", 1)[0] for name in ("test", "test.de", "test.ja") for line in read[name]}
    assert corpus and not (corpus & tests)
    assert any("common dialog" in line for line in corpus) and "de: open the coreutils file now" in corpus
    assert "S" not in corpus and "Short" not in corpus  # too short to teach anything
    assert set(manifest["transfer_sources"]) >= {"help.en", "help.de", "help.ja", "messages.de", "messages.en"}
    # idempotent; a different language list rebuilds from the cache
    stamp = (out / "MANIFEST.json").stat().st_mtime_ns
    assert prepare_multilingual(out, ["de", "ja"]) == manifest and (out / "MANIFEST.json").stat().st_mtime_ns == stamp
    assert prepare_multilingual(out, ["de"])["languages"] == ["de"]
    assert json.loads((out / "MANIFEST.json").read_text())["rows"]["test"] >= manifest["rows"]["test"]


@pytest.mark.parametrize("languages", [["en"], ["de;rm -rf"]])
def test_bad_language_is_one_line(tmp_path, languages):
    with pytest.raises(XdrayError, match="fix: use Debian's codes"):
        prepare_multilingual(tmp_path, languages)


def test_missing_help_language_is_one_line(tmp_path, capsys):
    out = tmp_path / "ml"
    _fake_debian(out / "cache", ["de"])
    (out / "cache" / "libreoffice-help-de" / ".unpacked").unlink()
    (out / "cache" / "libreoffice-help-de_1.0-1_all.deb").write_bytes(b"not a deb")
    assert main(["data", "multilingual", "--dir", str(out), "--languages", "de"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dpkg -x" in err and "fix:" in err
    assert not (out / "MANIFEST.json").exists()


def test_results_tables_have_one_column_per_language():
    from xdray.config import load_config
    from xdray.pipeline import results_table as pipeline_table
    from xdray.transfer.run import results_table as transfer_table

    summary = {"teacher_test_accuracy": 0.9, "student_test_accuracy": 0.8, "teacher_params": 10, "student_params": 1,
               "teacher_latency_ms": 2.0, "student_latency_ms": 1.0, "speedup": 2.0, "seconds": 1.0,
               "teacher_bytes": 10, "student_bytes": 1, "teacher_test_by_language": {"de": 0.875, "ja": 0.5},
               "student_test_by_language": {"de": 0.75, "ja": 0.25}}
    lines = pipeline_table(load_config("jobs/quickstart.yaml"), summary).strip().splitlines()
    assert lines[0].split()[:6] == ["model", "test", "accuracy", "test", "de", "test"]
    assert "87.5%" in lines[2] and "50.0%" in lines[2] and "25.0%" in lines[3]
    result = {"type": "classification", "metric": "accuracy", "test": {"score": 0.5}, "dev_score": 0.5,
              "params": {"total": 1e6}, "latency_ms": 1.0}
    table = transfer_table({"student": "s", "tasks": {
        "a": result | {"test_by_language": {"de": {"score": 0.625}}}, "b": result}}).strip().splitlines()
    assert "test de" in table[1] and "0.6250" in table[3] and table[4].split()[3] == "0.5000"
