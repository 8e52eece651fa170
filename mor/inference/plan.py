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

Read plans, decided once per pass (the same for every layer; only the cache slot changes):
- gather: copy the items' rows side by side (index_select), then attend; any set of rows;
- in place: when the single-token items reading one cache slot (the "major" one: step 1 under a
  shallow router, the prelude and coda, every step under recursive KV sharing) fill more than
  `IN_PLACE_SHARE` of a contiguous range of request slots, attend over that range of rows where it
  lies, each query at its slot's offset, and gather only the others;
- chunk: the items of a prompt chunk all read ONE row (one request, one step), so the row is read
  once and all the chunk's queries attend to it together, causally masked, rather than copying
  the row once per query.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

# Attend a range of a cache slot's rows in place when the items reading it fill more than this
# share of the range. A gathered row costs about twice an in-place one (copy, then attend), but the
# in-place block also carries the rows nobody reads plus a few scatter operators; measured on the
# shipped checkpoints (engine of one block run per iteration), 0.5 cost mor-ec-r3 6% while 0.7 left
# it unchanged and still gave mor-ec-r3-lean up to 6%.
IN_PLACE_SHARE = 0.7


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
class ReadPlan:
    """Where the N items of a pass read their K/V at each of its J layers (see the module docstring).

    L: entries attended (the most any item sees). Tensors index the pass's items ("idx": positions
    in the pass; None means every item in order) and the K/V buffer's rows ((J, n) per layer):
    gather_*: single-token items whose rows are copied; block_*: those read in place from
    `block_len` consecutive rows starting at `block_base[j]` (`block_at`: each one's offset there);
    chunk_*: U prompt chunks, padded to `chunk_len` queries (`chunk_take`: the item of each padded
    query, N for padding; `chunk_at`: each item's padded query). Masks are True where hidden."""

    L: int
    gather_idx: torch.Tensor | None = None
    gather_rows: torch.Tensor | None = None
    gather_mask: torch.Tensor | None = None
    block_base: list[int] | None = None
    block_len: int = 0
    block_idx: torch.Tensor | None = None
    block_at: torch.Tensor | None = None
    block_mask: torch.Tensor | None = None
    chunk_rows: torch.Tensor | None = None
    chunk_len: int = 0
    chunk_take: torch.Tensor | None = None
    chunk_idx: torch.Tensor | None = None
    chunk_at: torch.Tensor | None = None
    chunk_mask: torch.Tensor | None = None
    parts: int = 0  # how many of gather / block / chunk are used


@dataclass
class PassInput:
    """A pass's items on the device: pool rows (their hidden states), positions, the K/V writes
    (rows (J, Nw), entry index (Nw,), `writers`: which items write, None: all) and the read plan;
    `extra`: per-stage lists (prelude: `tokens`; block: `next_step`; head: `want`)."""

    n: int
    rows: torch.Tensor
    pos: torch.Tensor
    write_rows: torch.Tensor | None
    write_idx: torch.Tensor | None
    writers: torch.Tensor | None
    read: ReadPlan | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


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
    """Decide the read plan (host only) and add its index lists to the packer; masks come after
    the upload (`_finish_plan`)."""
    N, vis, J = len(items.rows), items.vis, len(table)
    plan = ReadPlan(max(vis))
    singles = [s for s, c in items.units if c == 1]
    chunks = [(s, c) for s, c in items.units if c > 1]
    gathered = singles
    if singles:
        major, count = Counter(items.keys[i] for i in singles).most_common(1)[0]
        readers = [i for i in singles if items.keys[i] == major]
        lo = min(items.slots[i] for i in readers)
        span = max(items.slots[i] for i in readers) - lo + 1
        if count > IN_PLACE_SHARE * span:
            at = [items.slots[i] - lo for i in readers]
            plan.block_base, plan.block_len = [t[major] * M + lo for t in table], span
            if not (readers == list(range(N)) and at == list(range(span))):
                pk.add("block_idx", readers)
                pk.add("block_at", at)
            block_vis = [plan.L] * span  # rows nobody reads: anything finite will do
            for i, a in zip(readers, at):
                block_vis[a] = vis[i]
            pk.add("block_vis", block_vis)
            gathered = [i for i in singles if items.keys[i] != major]
    if gathered:
        if gathered != list(range(N)):
            pk.add("gather_idx", gathered)
        pk.add("gather_rows", [r[i] for r in kv_rows for i in gathered], (J, len(gathered)))
        pk.add("gather_vis", [vis[i] for i in gathered])
    if chunks:
        plan.chunk_len = cmax = max(c for _, c in chunks)
        take, chunk_vis, at, idx = [], [], [], []
        for u, (s, c) in enumerate(chunks):
            take += [*range(s, s + c), *[N] * (cmax - c)]
            chunk_vis += [*vis[s:s + c], *[1] * (cmax - c)]  # padding queries see entry 0: no empty softmax
            idx += range(s, s + c)
            at += range(u * cmax, u * cmax + c)
        pk.add("chunk_rows", [r[s] for r in kv_rows for s, _ in chunks], (J, len(chunks)))
        pk.add("chunk_take", take)
        pk.add("chunk_vis", chunk_vis, (len(chunks), cmax))
        pk.add("chunk_idx", idx)
        pk.add("chunk_at", at)
    plan.parts = (plan.block_base is not None) + bool(gathered) + bool(chunks)
    return plan


def _finish_plan(plan: ReadPlan, t: dict[str, torch.Tensor], arange: torch.Tensor) -> None:
    """Fill the plan's tensors from the uploaded lists, masks included (True where hidden)."""
    hidden = arange[:plan.L]

    def mask(vis):  # (n,) -> (n, 1, 1, L)
        return (hidden[None, :] >= vis[:, None])[:, None, None, :]

    if "gather_rows" in t:
        plan.gather_idx, plan.gather_rows, plan.gather_mask = t.get("gather_idx"), t["gather_rows"], mask(t["gather_vis"])
    if "block_vis" in t:
        plan.block_idx, plan.block_at, plan.block_mask = t.get("block_idx"), t.get("block_at"), mask(t["block_vis"])
    if "chunk_rows" in t:
        plan.chunk_rows, plan.chunk_take, plan.chunk_idx, plan.chunk_at = (
            t["chunk_rows"], t["chunk_take"], t["chunk_idx"], t["chunk_at"])
        plan.chunk_mask = (hidden >= t["chunk_vis"][..., None])[:, None, :, None, :]  # (U, 1, cmax, 1, L)


def attend(kv: torch.Tensor, q: torch.Tensor, plan: ReadPlan, j: int) -> torch.Tensor:
    """Attention of the pass's queries q (N, G, H/G, D) at its layer j, per the read plan;
    returns (N, G, H/G, D). kv: the engine's K/V buffer (rows, G, 2, capacity, D)."""
    L = plan.L
    window = kv[:, :, :, :L]
    if plan.parts == 1 and plan.gather_rows is not None and plan.gather_idx is None:
        return _attention(q, window.index_select(0, plan.gather_rows[j]), plan.gather_mask)
    if plan.parts == 1 and plan.block_base is not None and plan.block_idx is None:
        base = plan.block_base[j]
        return _attention(q, window[base:base + plan.block_len], plan.block_mask)
    out = torch.empty_like(q)
    if plan.gather_rows is not None:
        out[plan.gather_idx] = _attention(q[plan.gather_idx], window.index_select(0, plan.gather_rows[j]),
                                          plan.gather_mask)
    if plan.block_base is not None:
        base = plan.block_base[j]
        qb = q.new_zeros((plan.block_len, *q.shape[1:]))
        qb[plan.block_at] = q[plan.block_idx]
        ob = _attention(qb, window[base:base + plan.block_len], plan.block_mask)  # (span, G, H/G, D)
        out[plan.block_idx] = ob[plan.block_at]
    if plan.chunk_rows is not None:
        out[plan.chunk_idx] = _chunk_attention(q, window.index_select(0, plan.chunk_rows[j]), plan)[plan.chunk_at]
    return out


def _attention(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Single-query attention: q (N, G, H/G, D) over kv (N, G, 2, L, D) (keys, values; the
    scale is folded into q), mask (N, 1, 1, L) True where hidden; returns (N, G, H/G, D)."""
    scores = torch.matmul(q, kv[:, :, 0].transpose(-1, -2)).masked_fill(mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), kv[:, :, 1])


def _chunk_attention(q: torch.Tensor, kv: torch.Tensor, plan: ReadPlan) -> torch.Tensor:
    """Every chunk's queries over its one row: q (N, G, H/G, D), kv (U, G, 2, L, D); returns the
    padded queries' outputs (U * cmax, G, H/G, D)."""
    U, C = kv.shape[0], plan.chunk_len
    G, hg, D = q.shape[1:]
    L = kv.shape[3]
    padded = torch.cat([q, q.new_zeros((1, G, hg, D))])[plan.chunk_take]  # (U * C, G, H/G, D)
    qp = padded.view(U, C, G, hg, D).transpose(1, 2).reshape(U, G, C * hg, D)
    scores = torch.matmul(qp, kv[:, :, 0].transpose(-1, -2)).view(U, G, C, hg, L)
    scores = scores.masked_fill(plan.chunk_mask, float("-inf")).view(U, G, C * hg, L)
    out = torch.matmul(scores.softmax(-1), kv[:, :, 1])  # (U, G, C * H/G, D)
    return out.view(U, G, C, hg, D).transpose(1, 2).reshape(U * C, G, hg, D)


__all__ = ["IN_PLACE_SHARE", "Items", "PassInput", "ReadPlan", "attend", "build_pass"]
