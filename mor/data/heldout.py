"""Held-out English text for independent evaluation: sources kept out of training on purpose.

* The `fortune` cookie databases of Debian's ``fortunes`` package (quotations, jokes and aphorisms
  from many authors; the files named in FORTUNE_FILES), one cookie per document. They are never
  read by `mor data`, so no checkpoint has seen them.

Jane Austen's novels are kept out of training too (no corpus source reads them).
"""

from __future__ import annotations

import re

from .corpus import debian_file, debian_version

FORTUNES_PACKAGE = "fortunes"
FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNE_FILES = ("fortunes", "literature", "wisdom", "people", "humorists", "science", "platitudes")


def fortunes_text(limit_chars: int | None = None) -> str:
    """The cookies of FORTUNE_FILES, each with its lines re-joined, separated by blank lines."""
    cookies = []
    for name in FORTUNE_FILES:
        raw = debian_file(FORTUNES_PACKAGE, f"{FORTUNES_DIR}/{name}").read_text(encoding="utf-8", errors="replace")
        for cookie in raw.split("\n%\n"):
            lines = [re.sub(r"\s+", " ", line).strip() for line in cookie.strip("%\n").splitlines()]
            text = "\n".join(line for line in lines if line)
            if text:
                cookies.append(text)
    text = "\n\n".join(cookies) + "\n"
    return text[:limit_chars] if limit_chars else text


def fortunes_provenance() -> dict:
    return {"package": f"{FORTUNES_PACKAGE} (Debian)", "version": debian_version(FORTUNES_PACKAGE),
            "used": f"{FORTUNES_DIR}/{{{','.join(FORTUNE_FILES)}}}, one cookie per document",
            "licence": "BSD fortune databases (see /usr/share/doc/fortunes/copyright)"}
