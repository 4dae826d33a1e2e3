"""`xdray data multilingual`: a real cross-lingual task and a multilingual transfer corpus, from Debian.

- Task ``libreoffice``: which LibreOffice module a help paragraph belongs to (``swriter``, ``scalc``,
  ``simpress``, ``sdraw``, ``smath``, ``sbasic``, ``schart``, ``sdatabase``: the page path's module; ``shared``
  pages describe every module and are left out). Source: Debian's ``libreoffice-help-<lang>`` packages (MPL-2.0),
  HTML pages whose paragraphs carry ids that align across languages. Paragraphs of at least 6 words; a text found
  under two modules is ambiguous and dropped. Pages (not paragraphs) split 80/10/10 with a fixed seed, so no page
  straddles two splits. English train/dev; ``test.tsv`` holds the English test paragraphs that every listed
  language translates, ``test.<lang>.tsv`` their translations in the same order: every language is scored on
  the same content.
- ``transfer.txt``: help paragraphs of English and the listed languages from train/dev pages and every ``shared``
  page, plus the English and translated message strings of the ``.mo`` catalogues of a few Debian packages
  (their own licences: GPL/LGPL/MIT, see each package's copyright file). No test page in any language is read
  into it, and any line equal to a test paragraph is dropped as well (counted in the manifest).

Any language Debian ships help for works (``--languages de,fr,zh-cn``). Idempotent: MANIFEST.json is written
last, and a directory holding one for other languages is rebuilt.
"""

from __future__ import annotations

import gettext
import json
import random
import re
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

from xdray.common.files import atomic_path, write_json
from xdray.data.debian import fetch_deb
from xdray.data.tables import write_atomic_tsv
from xdray.errors import XdrayError

DEFAULT_LANGUAGES = ("de", "fr", "es", "it", "ja")
MODULES = ("swriter", "scalc", "simpress", "sdraw", "smath", "sbasic", "schart", "sdatabase")
MO_PACKAGES = ("libc-l10n", "libglib2.0-data", "xkb-data", "coreutils")
MIN_WORDS = 6
MIN_CORPUS_CHARS = 12
SPLIT_SEED = 13
_FIX = "fix: check network access to the Debian archive (apt-get download), or pick languages Debian ships help for"
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,4})?$")


class _Paragraphs(HTMLParser):
    """Text of every ``<p id="par_id...">`` (nested markup flattened), keyed by its id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: dict[str, str] = {}
        self._id, self._depth, self._text = None, 0, []

    def handle_starttag(self, tag, attrs):
        if self._id is not None:
            self._depth += tag == "p"
            return
        ident = dict(attrs).get("id") or ""
        if tag == "p" and ident.startswith("par_id"):
            self._id, self._depth, self._text = ident, 1, []

    def handle_endtag(self, tag):
        if self._id is not None and tag == "p":
            self._depth -= 1
            if self._depth == 0:
                self.found.setdefault(self._id, " ".join("".join(self._text).split()))
                self._id = None

    def handle_data(self, data):
        if self._id is not None:
            self._text.append(data)


def read_help(root: Path) -> dict[tuple[str, str], str]:
    """``(page path under text/, paragraph id) → text`` for one language's help tree."""
    out = {}
    for page in sorted((root / "text").rglob("*.html")):
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        rel = page.relative_to(root / "text").as_posix()
        out.update({(rel, pid): text for pid, text in parser.found.items() if text})
    return out


def read_catalogues(tree: Path, locales: dict[str, str]) -> dict[str, list[str]]:
    """Message strings per language (``en``: the msgids) from every ``.mo`` under ``tree``; ``locales`` maps a
    locale directory name (``zh_CN``) to our language code."""
    found: dict[str, list[str]] = defaultdict(list)
    for mo in sorted(tree.rglob("*.mo")):
        lang = locales.get(mo.parent.parent.name)
        if lang is None:
            continue
        with open(mo, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
        for msgid, msgstr in catalog.items():
            if isinstance(msgid, str) and msgid and isinstance(msgstr, str):
                found["en"].append(msgid)
                found[lang].append(msgstr)
    return found


def split_pages(pages: list[str], seed: int = SPLIT_SEED) -> dict[str, set[str]]:
    shuffled = sorted(pages)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    cuts = {"train": (0, int(0.8 * n)), "dev": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
    return {name: set(shuffled[lo:hi]) for name, (lo, hi) in cuts.items()}


def build_task(english: dict, translations: dict[str, dict]) -> tuple[dict, dict]:
    """The splits (``train``/``dev``/``test`` English rows and ``test.<lang>`` rows) and the test keys' pages."""
    by_text: dict[str, set[str]] = defaultdict(set)
    rows = []
    for (page, pid), text in english.items():
        module = page.split("/", 1)[0]
        if module in MODULES and len(text.split()) >= MIN_WORDS:
            by_text[text].add(module)
            rows.append((page, pid, text, module))
    seen, unique = set(), []
    for row in rows:
        if len(by_text[row[2]]) == 1 and row[2] not in seen:
            seen.add(row[2])
            unique.append(row)
    pages = split_pages(sorted({r[0] for r in unique}))
    splits = {name: [(t, m) for p, _, t, m in unique if p in pages[name]] for name in ("train", "dev")}
    test = [r for r in unique if r[0] in pages["test"]
            and all((r[0], r[1]) in tr and tr[(r[0], r[1])] != r[2] for tr in translations.values())]
    splits["test"] = [(t, m) for _, _, t, m in test]
    for lang, tr in translations.items():
        splits[f"test.{lang}"] = [(tr[(p, pid)], m) for p, pid, _, m in test]
    return splits, pages


def prepare_multilingual(out: Path, languages: list[str] | None = None) -> dict:
    """Create (or confirm) the task and corpus under ``out`` for ``languages``; returns the manifest."""
    languages = sorted(dict.fromkeys(lang.lower() for lang in (languages or DEFAULT_LANGUAGES)))
    bad = [lang for lang in languages if not _LANGUAGE.match(lang) or lang in ("en", "en-us")]
    if bad:
        raise XdrayError(f"--languages: {', '.join(bad)} is not a help language code (English is the source); "
                         "fix: use Debian's codes such as de, fr, es, ja, zh-cn, pt-br")
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("languages") == languages:
            return manifest
        manifest_path.unlink()  # other languages: rebuild; the download cache is kept
    cache = out / "cache"
    sources = {}
    help_trees = {}
    for lang in ["en-us", *languages]:
        tree, version = fetch_deb(f"libreoffice-help-{lang}", cache, _FIX)
        dirs = [d for d in (tree / "usr/share/libreoffice/help").iterdir() if d.is_dir() and (d / "text").is_dir()]
        if not dirs:
            raise XdrayError(f"libreoffice-help-{lang} {version} holds no help pages; {_FIX}")
        help_trees[lang] = dirs[0]
        sources[f"libreoffice-help-{lang}"] = version
    english = read_help(help_trees.pop("en-us"))
    translations = {lang: read_help(tree) for lang, tree in help_trees.items()}
    splits, pages = build_task(english, translations)
    if not splits["test"]:
        raise XdrayError(f"no English test paragraph is translated into every one of {', '.join(languages)}; "
                         "fix: list fewer languages")
    task_dir = out / "libreoffice"
    for name, rows in splits.items():
        write_atomic_tsv(task_dir / f"{name}.tsv", ["text", "label"],
                         [{"text": t, "label": MODULES.index(m)} for t, m in rows])  # ids: data.* reads them

    locales = {_locale(lang): lang for lang in languages}
    corpus: dict[str, Counter] = defaultdict(Counter)
    for package in MO_PACKAGES:
        tree, sources[package] = fetch_deb(package, cache, _FIX)
        for lang, strings in read_catalogues(tree, locales).items():
            corpus[f"messages.{lang}"].update(" ".join(s.split()) for s in strings)
    for lang, texts in [("en", english), *translations.items()]:
        corpus[f"help.{lang}"].update(t for (page, _), t in texts.items() if page not in pages["test"])
    held_out = {t for name, rows in splits.items() if name.startswith("test") for t, _ in rows}
    lines, counts, dropped = [], {}, 0
    seen: set[str] = set()
    for source in sorted(corpus):
        kept = 0
        for text in corpus[source]:
            if len(text) < MIN_CORPUS_CHARS or text in seen:
                continue
            if text in held_out:
                dropped += 1
                continue
            seen.add(text)
            lines.append(text)
            kept += 1
        counts[source] = kept
    random.Random(SPLIT_SEED).shuffle(lines)
    with atomic_path(out / "transfer.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")

    manifest = {
        "languages": languages,
        "task": "libreoffice: which module a help paragraph belongs to; English train/dev, test per language",
        "labels": list(MODULES),
        "rows": {name: len(rows) for name, rows in splits.items()},
        "class_counts": {name: dict(Counter(m for _, m in splits[name])) for name in ("train", "dev", "test")},
        "transfer_lines": len(lines),
        "transfer_sources": counts,
        "transfer_dropped_test_lines": dropped,
        "sources": sources,
        "licences": "LibreOffice help: MPL-2.0; message catalogues: their packages' licences (GPL/LGPL/MIT)",
        "files": {"train": "libreoffice/train.tsv", "dev": "libreoffice/dev.tsv", "test": "libreoffice/test.tsv",
                  **{f"test.{lang}": f"libreoffice/test.{lang}.tsv" for lang in languages},
                  "transfer": "transfer.txt"},
    }
    write_json(manifest_path, manifest)
    return manifest


def _locale(lang: str) -> str:
    """Our code (``zh-cn``) → a gettext locale directory (``zh_CN``)."""
    base, _, region = lang.partition("-")
    return f"{base}_{region.upper()}" if region else base
