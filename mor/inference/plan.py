"""One pass's inputs on the device, and how its items read their K/V rows (attention read plans).

The scheduler knows on the host everything a pass needs: which items ride in it, their positions,
K/V rows, write indices and how many cache entries each may see. `build_pass` packs those lists
into ONE host-to-device copy (pinned and non-blocking on CUDA), so preparing a pass never waits
for the device.

K/V layout: one buffer (cache slots x M, G, 2, capacity, D), M the request slots; the row of a
layer application is `cache slot * M + request slot`, where the cache slots are the model's own
(`MoRModel.slot_of`). Entries of a row are in position order, so an item's causal mask is
"entry index < visible": its own write index + 1, or its position + 1 when it reads step 1's rows
under recursive KV sharing (every token takes step 1, so that row's index is the position). An
item writes its K/V before any item of the pass attends, so the tokens of a prompt chunk see the
earlier tokens of the same chunk.

Read plans, decided once per pass (the same for every layer; only the cache slot changes). The
pass's single-token items are grouped by the cache slot they read (their key: the recursion step
under recursion-wise caching), and each group is one *part* of the plan, with its own entry count
L (the most any of its items sees): a deep step's rows hold only the tokens that took it, so its
items attend over a fraction of step 1's entries instead of the pass's longest row. A part reads:
- gather: copy the items' rows side by side (index_select), then attend; any set of rows;
- in place ("block"): when the items fill more than `IN_PLACE_SHARE` of a contiguous range of
  request slots, attend over that range of rows where it lies, each query at its slot's offset.
  A group that is too sparse as a whole is cut at its widest gaps in slot order into runs (the
  engine's cohorts leave a pass's decode items as a few dense slot ranges): each dense run of at
  least `MIN_IN_PLACE` items is a block part of its own, and the rest are gathered together;
- chunk: the items of a prompt chunk all read ONE row (one request, one step), so the row is read
  once and all the chunk's queries attend to it together, causally masked, rather than copying
  the row once per query. Every prompt chunk of the pass is in one chunk part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Attend a range of a cache slot's rows in place when the items reading it fill more than this
# share of the range. A gathered row costs about twice an in-place one (copy, then attend), but the
# in-place block also carries the rows nobody reads plus a few scatter operators; measured on the
# shipped checkpoints (engine of one block run per iteration), 0.5 cost mor-ec-r3 6% while 0.7 left
# it unchanged and still gave mor-ec-r3-lean up to 6%.
IN_PLACE_SHARE = 0.7
# A run of a sparse group is read in place only when it holds at least this many items: every part
# costs its own few operators per layer, about what copying this many rows costs.
MIN_IN_PLACE = 8


class _Packer:
    """Collects int lists under names; `upload` sends them as one tensor and returns views."""

    def __init__(self):
        self.values: list[int] = []
        self.spans: dict[str, tuple[int, tuple[int, ...]]] = {}

    def add(self, name: str, values: list[int], shape: tuple[int, ...] | None = None) -> None:
        self.spans[name] = (len(self.values), shape or (len(values),))
        self.values.extend(values)

    def upload(self, device: torch.device) -> dict[str, torch.Tensor]:
        flat = torch.tensor(self.values, dtype=torch.long)
        if device.type == "cuda":  # pinned + non_blocking: the copy queues behind the last pass, the host goes on
            flat = flat.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            flat = flat.to(device)
        return {name: flat[start:start + math.prod(shape)].view(shape) for name, (start, shape) in self.spans.items()}


@dataclass
class ReadPart:
    """How one group of the pass's items reads its K/V at each of the pass's J layers (see the
    module docstring). kind: "gather", "block" or "chunk"; L: entries attended; idx: the items'
    positions in the pass (None: every item, in order); mask: True where hidden.
    gather: rows (J, n), the row each item copies. block: base[j], the first of `span` consecutive
    rows; at, each item's offset there (None: item i at offset i). chunk: rows (J, U), the one row
    of each of U chunks; span, queries per chunk (padded); take, the part's item of each padded
    query (n for padding); at, each item's padded query."""

    kind: str
    L: int
    idx: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    base: list[int] | None = None
    span: int = 0
    at: torch.Tensor | None = None
    take: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class ReadPlan:
    """A pass's read parts; together they cover each item exactly once."""

    parts: list[ReadPart]

    @property
    def kinds(self) -> list[str]:
        return [part.kind for part in self.parts]


@dataclass
class PassInput:
    """A pass's items on the device: pool rows (their hidden states), positions, the K/V writes
    (rows (J, Nw), entry index (Nw,), `writers`: which items write, None: all) and the read plan;
    `extra`: per-stage lists (entry: `tokens`, `next_step`; block: `next_step`; exit: `want`)."""

    n: int
    rows: torch.Tensor
    pos: torch.Tensor
    write_rows: torch.Tensor | None
    write_idx: torch.Tensor | None
    writers: torch.Tensor | None
    read: ReadPlan | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    cos: torch.Tensor | None = None  # the rotary tables at `pos`, gathered by the pass's first layer
    sin: torch.Tensor | None = None


@dataclass
class Items:
    """Host lists describing a pass's items, one entry per item. keys[i]: which column of the
    stage's cache-slot table the item uses (its recursion step; 0 for unique layers and under
    recursive KV sharing); widx[i]: the entry it writes (-1: none); vis[i]: entries it may see;
    units: (first item, count) of each unit, consecutive."""

    rows: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    widx: list[int] = field(default_factory=list)
    vis: list[int] = field(default_factory=list)
    units: list[tuple[int, int]] = field(default_factory=list)


def build_pass(items: Items, table: list[list[int]], M: int, device: torch.device, arange: torch.Tensor,
               extra: dict[str, list[int]] | None = None) -> PassInput:
    """Pack a pass's inputs and upload them. table[j][key]: the cache slot layer j of the stage
    uses for that key; M: request slots; arange: a device arange at least as long as any row.
    A stage without layers (J = 0) gets no writes and no read plan."""
    pk = _Packer()
    N = len(items.rows)
    pk.add("rows", items.rows)
    pk.add("pos", items.pos)
    for name, values in (extra or {}).items():
        pk.add(name, values)
    J = len(table)
    kv_rows = [[t[k] * M + s for k, s in zip(items.keys, items.slots)] for t in table]  # [j][i]
    writers = [i for i, w in enumerate(items.widx) if w >= 0]
    if J and writers:
        if len(writers) < N:
            pk.add("writers", writers)
        pk.add("write_rows", [r[i] for r in kv_rows for i in writers], (J, len(writers)))
        pk.add("write_idx", [items.widx[i] for i in writers])
    plan = _plan_lists(pk, items, kv_rows, table, M) if J else None
    t = pk.upload(device)
    if plan is not None:
        _finish_plan(plan, t, arange)
    return PassInput(N, t["rows"], t["pos"], t.get("write_rows"), t.get("write_idx"), t.get("writers"), plan,
                     {name: t[name] for name in (extra or {})})


def _plan_lists(pk: _Packer, items: Items, kv_rows: list[list[int]], table: list[list[int]], M: int) -> ReadPlan:
    """Decide the read plan (host only) and add its index lists to the packer under the names
    "<part>.<field>"; masks come after the upload (`_finish_plan`)."""
    N, vis, J = len(items.rows), items.vis, len(table)
    everyone = list(range(N))
    by_key: dict[int, list[int]] = {}
    for s, c in items.units:
        if c == 1:
            by_key.setdefault(items.keys[s], []).append(s)
    parts = []
    groups = []  # (readers, in place?) per part
    for readers in by_key.values():
        runs, loose = _runs(sorted(readers, key=items.slots.__getitem__), items.slots)
        groups += [(run, True) for run in runs] + ([(loose, False)] if loose else [])
    for readers, in_place in sorted(groups, key=lambda g: -len(g[0])):  # the largest part first
        key = items.keys[readers[0]]
        name, L = f"{len(parts)}.", max(vis[i] for i in readers)
        if readers != everyone:
            pk.add(name + "idx", readers)
        if in_place:
            lo = items.slots[readers[0]]
            span = items.slots[readers[-1]] - lo + 1
            at = [items.slots[i] - lo for i in readers]
            part = ReadPart("block", L, base=[t[key] * M + lo for t in table], span=span)
            if at != list(range(span)):
                pk.add(name + "at", at)
            block_vis = [L] * span  # rows nobody reads: anything finite will do
            for i, a in zip(readers, at):
                block_vis[a] = vis[i]
            pk.add(name + "vis", block_vis)
        else:
            part = ReadPart("gather", L)
            pk.add(name + "rows", [r[i] for r in kv_rows for i in readers], (J, len(readers)))
            pk.add(name + "vis", [vis[i] for i in readers])
        parts.append(part)
    chunks = [(s, c) for s, c in items.units if c > 1]
    if chunks:
        name = f"{len(parts)}."
        cmax = max(c for _, c in chunks)
        part = ReadPart("chunk", max(max(vis[s:s + c]) for s, c in chunks), span=cmax)
        n = sum(c for _, c in chunks)
        take, chunk_vis, idx = [], [], []
        for s, c in chunks:
            take += [*range(len(idx), len(idx) + c), *[n] * (cmax - c)]
            chunk_vis += [*vis[s:s + c], *[1] * (cmax - c)]  # padding queries see entry 0: no empty softmax
            idx += range(s, s + c)
        if idx != everyone:
            pk.add(name + "idx", idx)
        pk.add(name + "rows", [r[s] for r in kv_rows for s, _ in chunks], (J, len(chunks)))
        pk.add(name + "take", take)
        pk.add(name + "vis", chunk_vis, (len(chunks), cmax))
        pk.add(name + "at", [u * cmax + k for u, (_, c) in enumerate(chunks) for k in range(c)])
        parts.append(part)
    return ReadPlan(parts)


def _runs(readers: list[int], slots: list[int]) -> tuple[list[list[int]], list[int]]:
    """Split one key's readers (sorted by slot) into runs to read in place and the rest, to gather.
    The whole group is one run when it is dense (more than IN_PLACE_SHARE of its slot range);
    otherwise it is cut at its widest gap until each piece is dense, and a dense piece is a run
    if it holds at least MIN_IN_PLACE items."""
    runs, loose, todo = [], [], [readers]
    while todo:
        piece = todo.pop()
        dense = len(piece) > IN_PLACE_SHARE * (slots[piece[-1]] - slots[piece[0]] + 1)
        if dense and (piece is readers or len(piece) >= MIN_IN_PLACE):
            runs.append(piece)
        elif dense or len(piece) < MIN_IN_PLACE:
            loose += piece
        else:
            cut = max(range(len(piece) - 1), key=lambda k: slots[piece[k + 1]] - slots[piece[k]])
            todo += [piece[:cut + 1], piece[cut + 1:]]
    return runs, sorted(loose, key=slots.__getitem__)


def _finish_plan(plan: ReadPlan, t: dict[str, torch.Tensor], arange: torch.Tensor) -> None:
    """Fill the parts' tensors from the uploaded lists, masks included (True where hidden)."""
    for k, part in enumerate(plan.parts):
        name = f"{k}."
        part.idx, part.rows, part.at, part.take = (t.get(name + f) for f in ("idx", "rows", "at", "take"))
        hidden, vis = arange[:part.L], t[name + "vis"]
        if part.kind == "chunk":
            part.mask = (hidden >= vis[..., None])[:, None, :, None, :]  # (U, 1, cmax, 1, L)
        else:
            part.mask = (hidden[None, :] >= vis[:, None])[:, None, None, :]  # (n, 1, 1, L)


def attend(kv: torch.Tensor, q: torch.Tensor, plan: ReadPlan, j: int) -> torch.Tensor:
    """Attention of the pass's queries q (N, G, H/G, D) at its layer j, per the read plan;
    returns (N, G, H/G, D). kv: the engine's K/V buffer (rows, G, 2, capacity, D)."""
    if len(plan.parts) == 1 and plan.parts[0].idx is None:
        return _read(kv, q, plan.parts[0], j)
    out = torch.empty_like(q)
    for part in plan.parts:
        out[part.idx] = _read(kv, q[part.idx], part, j)
    return out


def _read(kv: torch.Tensor, q: torch.Tensor, part: ReadPart, j: int) -> torch.Tensor:
    """One part's attention: q (n, G, H/G, D), its items' queries in part order; returns the same shape."""
    window = kv[:, :, :, :part.L]
    if part.kind == "gather":
        return _attention(q, window.index_select(0, part.rows[j]), part.mask)
    if part.kind == "chunk":
        return _chunk_attention(q, window.index_select(0, part.rows[j]), part)[part.at]
    rows = window[part.base[j]:part.base[j] + part.span]
    if part.at is None:
        return _attention(q, rows, part.mask)
    qb = q.new_zeros((part.span, *q.shape[1:]))
    qb[part.at] = q
    return _attention(qb, rows, part.mask)[part.at]  # (span, G, H/G, D) -> the part's items


def _attention(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Single-query attention: q (N, G, H/G, D) over kv (N, G, 2, L, D) (keys, values; the
    scale is folded into q), mask (N, 1, 1, L) True where hidden; returns (N, G, H/G, D)."""
    scores = torch.matmul(q, kv[:, :, 0].transpose(-1, -2)).masked_fill(mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), kv[:, :, 1])


def _chunk_attention(q: torch.Tensor, kv: torch.Tensor, part: ReadPart) -> torch.Tensor:
    """Every chunk's queries over its one row: q (n, G, H/G, D), the part's items, kv (U, G, 2, L, D);
    returns the padded queries' outputs (U * cmax, G, H/G, D)."""
    U, C = kv.shape[0], part.span
    G, hg, D = q.shape[1:]
    L = kv.shape[3]
    padded = torch.cat([q, q.new_zeros((1, G, hg, D))])[part.take]  # (U * C, G, H/G, D)
    qp = padded.view(U, C, G, hg, D).transpose(1, 2).reshape(U, G, C * hg, D)
    scores = torch.matmul(qp, kv[:, :, 0].transpose(-1, -2)).view(U, G, C, hg, L)
    scores = scores.masked_fill(part.mask, float("-inf")).view(U, G, C * hg, L)
    out = torch.matmul(scores.softmax(-1), kv[:, :, 1])  # (U, G, C * H/G, D)
    return out.view(U, G, C, hg, D).transpose(1, 2).reshape(U * C, G, hg, D)


__all__ = ["IN_PLACE_SHARE", "MIN_IN_PLACE", "Items", "PassInput", "ReadPart", "ReadPlan", "attend", "build_pass"]
