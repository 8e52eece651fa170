"""KV cache for MoR: one slot per (layer application) that stores K/V, with byte accounting.

Shapes use B = batch, N = tokens, H = key/value heads, D = head dim.

Under recursion-wise caching every (recursion step, layer) has its own slot and holds only the
tokens active at that step; under recursive KV sharing only the first recursion's slots exist and
deeper steps read them. A slot keeps, per batch row, a prefix of valid entries plus the original
position of each entry, which is what the causal mask is built from (tokens of a deep recursion
are a sparse subset of positions).
"""

from __future__ import annotations

import torch

# Decode-time growth is in blocks of this many tokens: bounded over-allocation, no per-token copy.
GROWTH_BLOCK = 64


class LayerKV:
    """K/V of one layer application: buffers (B, capacity, H, D) and positions (B, capacity)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.length: torch.Tensor | None = None  # (B,) valid entries per row

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor):
        """Store new entries (valid ones form a prefix of each row) and return the whole cache
        as (k, v, pos, valid) with k, v of shape (B, N_total, H, D)."""
        counts = valid.sum(1)
        if self.k is None:
            # First write (prefill, or a training forward): adopt the tensors, no copy, so
            # autograd sees one plain graph.
            self.k, self.v, self.pos, self.length = k, v, pos, counts
        else:
            need = int((self.length + counts).max())
            if need > self.k.shape[1]:
                self._grow(-(-need // GROWTH_BLOCK) * GROWTH_BLOCK)
            rows = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(valid)
            dest = self.length[:, None] + valid.cumsum(1) - 1  # (B, N) slot of each new entry
            self.k[rows[valid], dest[valid]] = k[valid]
            self.v[rows[valid], dest[valid]] = v[valid]
            self.pos[rows[valid], dest[valid]] = pos[valid]
            self.length = self.length + counts
        return self.view()

    def view(self):
        """(k, v, pos, valid) trimmed to the longest row."""
        n = int(self.length.max()) if self.length.numel() else 0
        valid = torch.arange(n, device=self.k.device)[None, :] < self.length[:, None]
        return self.k[:, :n], self.v[:, :n], self.pos[:, :n], valid

    def _grow(self, capacity: int) -> None:
        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((t.shape[0], capacity, *t.shape[2:]))
            out[:, : t.shape[1]] = t
            return out

        self.k, self.v, self.pos = grown(self.k), grown(self.v), grown(self.pos)

    def tensors(self) -> list[torch.Tensor]:
        return [] if self.k is None else [self.k, self.v]

    def cached_tokens(self) -> int:
        """Entries actually stored, summed over batch rows."""
        return 0 if self.length is None else int(self.length.sum())

    def used_bytes(self) -> int:
        """Bytes of the stored K and V entries (excluding growth slack and batch padding)."""
        if self.k is None:
            return 0
        per_token = 2 * self.k.shape[2] * self.k.shape[3] * self.k.element_size()
        return self.cached_tokens() * per_token


class MoRCache:
    """All K/V slots of one MoR model plus the next position of each batch row.

    `slot_names[i]` names slot i: "prelude", "step r / layer j" (1-based), "coda"; under recursive
    KV sharing only step 1 has slots. `step_of_slot[i]` is the recursion step (0 for
    prelude and coda layers that every token passes).
    """

    def __init__(self, slot_names: list[str], step_of_slot: list[int], batch_size: int, device):
        self.slot_names = slot_names
        self.step_of_slot = step_of_slot
        self.slots = [LayerKV() for _ in slot_names]
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

    def nbytes(self) -> int:
        """Bytes of every K/V tensor the cache holds (position bookkeeping excluded)."""
        return sum(t.numel() * t.element_size() for s in self.slots for t in s.tensors())

    def used_bytes(self) -> int:
        """Bytes of the K/V entries actually stored."""
        return sum(s.used_bytes() for s in self.slots)

    def bytes_per_step(self) -> dict[str, int]:
        """Used K/V bytes grouped by recursion step: "unique layers", "step 1", "step 2", ..."""
        out: dict[str, int] = {}
        for slot, step in zip(self.slots, self.step_of_slot):
            key = f"step {step}" if step else "unique layers"
            out[key] = out.get(key, 0) + slot.used_bytes()
        return out

    def tokens_per_step(self) -> dict[str, int]:
        """Tokens cached in each recursion step's first layer (all layers of a step hold the same)."""
        out: dict[str, int] = {}
        for slot, step in zip(self.slots, self.step_of_slot):
            if step:
                out.setdefault(f"step {step}", slot.cached_tokens())
        return out

    def get_seq_length(self) -> int:
        return int(self.next_pos.max()) if self.next_pos.numel() else 0
