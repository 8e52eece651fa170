"""KV cache for MoR: one slot per (layer application) that stores K/V, with byte accounting.

Shapes use B = batch, N = tokens, H = key/value heads, D = head dim.

Under recursion-wise caching every (recursion step, layer) has its own slot and holds only the
tokens active at that step; under recursive KV sharing only the first recursion's slots exist and
deeper steps read them. A slot keeps, per batch row, a prefix of valid entries plus the original
position of each entry, which is what the causal mask is built from (tokens of a deep recursion
are a sparse subset of positions).

`MoRCache` is a `transformers.Cache` whose layers are these slots (`LayerKV`, a
`CacheLayerMixin`), so `generate` carries it between steps and beam search reorders it like any
other cache. Two things differ from transformers' `DynamicCache`: a slot's sequence axis is 1,
(B, N, H, D), and its length differs from row to row and from slot to slot (a row holds only the
tokens that took that step), which is why every entry carries its position.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Decode-time growth is in blocks of this many tokens: bounded over-allocation, no per-token copy.
GROWTH_BLOCK = 64


class LayerKV(CacheLayerMixin):
    """K/V of one layer application: buffers `keys`, `values` (B, capacity, H, D), `pos` (B, capacity)."""

    # Rows hold different numbers of entries and grow in blocks: no static shape to compile, and no
    # way to drop "the last n columns" (a column's token is in some slots and not in others).
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self) -> None:
        super().__init__()
        self.pos: torch.Tensor | None = None
        self.length: torch.Tensor | None = None  # (B,) valid entries per row

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # First write (prefill, or a training forward): adopt the tensors, no copy, so autograd
        # sees one plain graph.
        self.keys, self.values = key_states, value_states
        self.is_initialized = True

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor):
        """Store new entries (valid ones form a prefix of each row) and return the whole cache
        as (k, v, pos, valid) with k, v of shape (B, N_total, H, D)."""
        counts = valid.sum(1)
        if not self.is_initialized:
            self.lazy_initialization(k, v)
            self.pos, self.length = pos, counts
        else:
            need = int((self.length + counts).max())
            if need > self.keys.shape[1]:
                self._grow(-(-need // GROWTH_BLOCK) * GROWTH_BLOCK)
            rows = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(valid)
            dest = self.length[:, None] + valid.cumsum(1) - 1  # (B, N) slot of each new entry
            self.keys[rows[valid], dest[valid]] = k[valid]
            self.values[rows[valid], dest[valid]] = v[valid]
            self.pos[rows[valid], dest[valid]] = pos[valid]
            self.length = self.length + counts
        return self.view()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, pos: torch.Tensor,
               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' layer contract: store, return every key and value (see `append`, which
        also returns the positions and validity the mask needs)."""
        k, v, _, _ = self.append(key_states, value_states, pos, valid)
        return k, v

    def view(self):
        """(k, v, pos, valid) trimmed to the longest row."""
        n = self.get_seq_length()
        valid = torch.arange(n, device=self.keys.device)[None, :] < self.length[:, None]
        return self.keys[:, :n], self.values[:, :n], self.pos[:, :n], valid

    def _grow(self, capacity: int) -> None:
        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((t.shape[0], capacity, *t.shape[2:]))
            out[:, : t.shape[1]] = t
            return out

        self.keys, self.values, self.pos = grown(self.keys), grown(self.values), grown(self.pos)

    def get_seq_length(self) -> int:
        """Entries of the longest row."""
        return int(self.length.max()) if self.length is not None and self.length.numel() else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1  # grows without bound

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows in the order `beam_idx` gives (beam search keeps the best beams)."""
        if self.is_initialized:
            idx = beam_idx.to(self.keys.device)
            self.keys, self.values = self.keys.index_select(0, idx), self.values.index_select(0, idx)
            self.pos, self.length = self.pos.index_select(0, idx), self.length.index_select(0, idx)

    def reset(self) -> None:
        self.keys = self.values = self.pos = self.length = None
        self.is_initialized = False

    def tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values] if self.is_initialized else []

    def cached_tokens(self) -> int:
        """Entries actually stored, summed over batch rows."""
        return 0 if self.length is None else int(self.length.sum())

    def used_bytes(self) -> int:
        """Bytes of the stored K and V entries (excluding growth slack and batch padding)."""
        if not self.is_initialized:
            return 0
        per_token = 2 * self.keys.shape[2] * self.keys.shape[3] * self.keys.element_size()
        return self.cached_tokens() * per_token


class MoRCache(Cache):
    """All K/V slots of one MoR model plus the next position of each batch row.

    `slot_names[i]` names slot i: "prelude", "step r / layer j" (1-based), "coda"; under recursive
    KV sharing only step 1 has slots. `step_of_slot[i]` is the recursion step (0 for
    prelude and coda layers that every token passes). `slots` is transformers' `layers`.
    Make one with `model.model.new_cache(batch_size)`.
    """

    def __init__(self, slot_names: list[str], step_of_slot: list[int], batch_size: int, device):
        super().__init__(layers=[LayerKV() for _ in slot_names])
        self.slot_names = slot_names
        self.step_of_slot = step_of_slot
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.columns = 0  # input columns seen, padding included: transformers' sequence length

    @property
    def slots(self) -> list[LayerKV]:
        return self.layers

    def advance(self, real: torch.Tensor) -> torch.Tensor:
        """Positions (B, T) of a call's new columns (real (B, T) is False on padding), and move
        every row on by its real tokens. A padding column gets the position of its row's previous
        token (0 before the first); it is masked everywhere, so the value only has to be valid."""
        positions = (self.next_pos[:, None] + real.long().cumsum(1) - 1).clamp(min=0)
        self.next_pos = self.next_pos + real.sum(1)
        self.columns += real.shape[1]
        return positions

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns fed so far (padding included), whatever the slot: what `generate` slices new
        input against. Positions are per row (`next_pos`), as rows hold different numbers of tokens."""
        return self.columns

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.next_pos = self.next_pos.index_select(0, beam_idx.to(self.next_pos.device))

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
