"""The depth policy: which tokens take each recursion step, and how much of its update a token keeps.

Every decoding path asks this one object: the model's forward (gathering the active tokens), the
continuous depth-wise batching engine (one item per request, each at its own step) and the naive
full-width path. So the rules below exist once:

- `depth_cap=k`: no token takes more than k steps; `fixed_depth=k`: every token takes exactly k
  (routers ignored for the decision; their gates still scale the update);
- routing "none": every token takes every step up to the cap;
- expert-choice, "causal" mode (decoding): a token that took step r-1 takes step r (0-based,
  r >= 1) iff sigmoid(router r logit) > router_threshold[r - 1], a decision it makes alone;
- expert-choice, "capacity" mode (training): each row keeps its top ceil(capacity_r x real tokens)
  candidates by router logit, which looks at the whole sequence;
- token-choice: one router picks a depth 1..N_r per token up front (capped, or replaced by the
  fixed depth), and the token takes the steps below it;
- gates: expert-choice scales step r's update by the gate of router r's score, token-choice
  scales the whole recursion's update once by the gate of the chosen depth's probability.

Step indices may be an int (one step for every token: the model's loop) or a LongTensor with one
step per token (the engine, where items in flight sit at different steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .configuration import ROUTING_MODES, MoRConfig


def check_depth_args(depth_cap: int | None, fixed_depth: int | None, num_recursions: int) -> int:
    """Validate the test-time depth options; return the deepest step any token may take."""
    for name, value in (("depth_cap", depth_cap), ("fixed_depth", fixed_depth)):
        if value is not None and not 1 <= value <= num_recursions:
            raise ValueError(f"{name}={value} is outside 1..{num_recursions} (num_recursions).")
    if depth_cap is not None and fixed_depth is not None:
        raise ValueError("Give depth_cap or fixed_depth, not both.")
    return fixed_depth or depth_cap or num_recursions


def gate_value(score: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """'scaled': alpha * score. 'straight_through': 1 in the forward pass, alpha * d(score) in
    the backward pass, so the router learns from the LM loss without shrinking the update."""
    if kind == "scaled":
        return alpha * score
    return 1.0 + alpha * (score - score.detach())


@dataclass
class TokenChoice:
    """A token-choice router's decision for (B, T) tokens.

    probs: (B, T, R) depth probabilities. chosen: (B, T) the router's own depth, 1..R (what the
    balancing loss counts). target: (B, T) the depth the token takes (chosen, capped, or the fixed
    depth). gate: (B, T) the scale of the recursion's update."""

    probs: torch.Tensor
    chosen: torch.Tensor
    target: torch.Tensor
    gate: torch.Tensor


class DepthPolicy:
    """The depth rule of one model under one set of test-time options (see the module docstring).

    config: the model's config (routing, thresholds, capacities, gate); read at construction, so
        build a new policy after changing them. depth_cap / fixed_depth: as in `model.generate`.
    routing_mode: "causal" (decodable) or "capacity" (top-k over the sequence, the training rule).
    """

    def __init__(self, config: MoRConfig, depth_cap: int | None = None, fixed_depth: int | None = None,
                 routing_mode: str = "causal"):
        if routing_mode not in ROUTING_MODES:
            raise ValueError(f"routing_mode={routing_mode!r}; use 'causal' or 'capacity'.")
        self.num_recursions = config.num_recursions
        self.max_depth = check_depth_args(depth_cap, fixed_depth, config.num_recursions)
        self.fixed_depth, self.mode = fixed_depth, routing_mode
        self.routing = config.routing
        self.capacities = config.capacities
        # threshold of step r (0-based): step 0 keeps every candidate (capacity 1)
        self.thresholds = [-math.inf, *config.router_threshold]
        self.alpha, self.gate_kind = config.router_alpha, config.router_gate
        self._threshold_tables: dict[torch.device, torch.Tensor] = {}

    @property
    def ranks_by_capacity(self) -> bool:
        """True when expert-choice routers decide by top-k (the training rule, which also trains them)."""
        return self.routing == "expert_choice" and self.mode == "capacity" and self.fixed_depth is None

    @property
    def scales_updates(self) -> bool:
        """False when every gate is exactly 1 in the forward pass (no router, or straight-through),
        so inference may skip the gate arithmetic."""
        return self.routing != "none" and self.gate_kind != "straight_through"

    def gate(self, logits: torch.Tensor) -> torch.Tensor:
        """Expert-choice gate of a step from its router logits (any shape)."""
        return gate_value(torch.sigmoid(logits), self.alpha, self.gate_kind)

    def token_choice(self, logits: torch.Tensor) -> TokenChoice:
        """Token-choice decision from the router's logits (..., R)."""
        probs = logits.softmax(-1)
        top_p, top_i = probs.max(-1)
        chosen = top_i + 1
        target = torch.full_like(chosen, self.fixed_depth) if self.fixed_depth else chosen.clamp(max=self.max_depth)
        return TokenChoice(probs, chosen, target, gate_value(top_p, self.alpha, self.gate_kind))

    def takes_step(self, r: int | torch.Tensor, candidates: torch.Tensor | None = None,
                   logits: torch.Tensor | None = None, target: torch.Tensor | None = None,
                   real: torch.Tensor | None = None) -> torch.Tensor:
        """Which tokens take recursion step r (0-based).

        candidates: bool, the tokens that took step r-1 (every real token for r = 0); None: every
        token (with r a tensor, one step per token: the engine's items). logits: expert-choice router r's logits for those tokens (float). target:
        token-choice depths (`TokenChoice.target`). real: (B, T) non-padding tokens, needed by
        capacity mode (k is a share of each row's real tokens; r must then be an int)."""
        take = r < self.max_depth
        if candidates is not None:
            take = candidates & take
        if self.routing == "token_choice":
            return take & (target > r)
        if self.routing == "none" or self.fixed_depth is not None:
            return take
        if self.mode == "capacity":
            k = torch.ceil(self.capacities[r] * real.sum(1)).long()  # (B,)
            ranked = logits.masked_fill(~candidates, float("-inf"))
            order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
            rank = order.argsort(dim=1)  # (B, T) rank of each token's score in its row
            return take & (rank < k[:, None])
        return take & (torch.sigmoid(logits) > self._threshold(r, logits.device))

    def _threshold(self, r: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        """Threshold of step r as float32 on `device` (a table lookup, so per-token steps need no
        host round trip); steps past the last one (an exiting engine item asks for N_r) read the last."""
        table = self._threshold_tables.get(device)
        if table is None:
            table = self._threshold_tables[device] = torch.tensor(self.thresholds, dtype=torch.float, device=device)
        if isinstance(r, torch.Tensor):
            return table[r.clamp(max=self.num_recursions - 1)]
        return table[min(r, self.num_recursions - 1)]


__all__ = ["DepthPolicy", "TokenChoice", "check_depth_args", "gate_value"]
