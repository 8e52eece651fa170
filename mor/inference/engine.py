"""Continuous depth-wise batching: many MoR generation requests decoded together, every weight pass
as wide as the queue allows.

Run example::

    import mor
    from mor.inference.engine import Engine
    model, tok = mor.load("mor-ec-r3", device="cpu")
    engine = Engine(model, max_batch=64)            # 64 decode rows per pass, up to 256 requests in flight
    prompts = [tok(t).input_ids for t in ["The king", "Once upon a time", "In 1990 the"]]
    for ids, depths in engine.generate(prompts, max_new_tokens=32):  # the new tokens only
        print(tok.decode(ids), depths)
    for event in engine.stream(prompts, max_new_tokens=[8, 16, 32]):   # live progress, one event per pass
        print(event.stage, event.rows, event.queued, f"{event.tokens_per_second:.0f} tok/s")

How it works. The model is cut into stages, each with its own queue of waiting work:

- "prelude + step 1" (the entry): the embedding, the unique first layers, the entry routing
  (expert-choice: step 1's gate; token-choice: each token's depth) and the shared block's first
  recursion step, in one pass: every token takes step 1, so there is nothing to wait for between
  them, and a separate prelude pass would cost a weight pass and its host work per token;
- the shared block, for steps 2 and later: "block" when every recursion step applies the same
  unique layers (sharing "cycle"/"middle_cycle"), so items at any step share one pass; one stage
  per step's layer list under "sequence"/"middle_sequence" ("block 2", "block 3", ...). After
  each recursion step (in the entry pass too) each item asks the model's depth policy
  (`mor.model.policy.DepthPolicy`, the rule the model's own forward uses) whether it takes
  another step; if so it queues for the block, else it exits. A model of one recursion has no
  block stage;
- "coda + head" (the exit): the unique last layers over every token that left the block, then the
  final norm and the LM head over one token per request (a new token, or a prompt's last one);
  the next token is picked with `mor.model.sampling.pick_next` and queues for the entry. (The LM
  head is the largest matrix; it runs on the exit's full batches, not once per prompt chunk.) A
  prompt chunk with more of its prompt to come needs no logits: without coda layers it skips the
  exit.

An engine step runs ONE stage's pass over its queue, a unit never split: up to `max_batch` decode
rows and up to `max_tokens` rows in all (default max(max_batch, prefill_chunk, PASS_TOKENS)), so
prompt chunks ride beside a full batch of decode items (as vLLM's max_num_batched_tokens bounds a
step's tokens apart from its sequences). The oldest unit always rides; the rest come first from the
oldest unit's cohort (the `max_batch` request slots its slot falls in), then first come first
served: requests admitted together then keep travelling together, their K/V rows sit side by side,
and attention reads them in place instead of copying them (mor/inference/plan.py). A stage whose
queue holds a full batch runs first (the one furthest down the model when several do, so tokens
finish and requests move on), otherwise the stage with the most rows (nothing else can run). More
requests are in flight than a pass carries (`max_inflight`, default 4 x `max_batch`), so the queues
fill and every stage runs on full batches instead of every iteration paying every stage for the
items that happen to be there: early exits turn into throughput because an exited token simply stops
queueing for the block.

Chunked prefill: a prompt enters as chunks of up to `prefill_chunk` tokens (default
`max(max_batch, PREFILL_TOKENS)`: a narrow engine still reads a prompt in a few wide passes, not
one pass per token) that ride the same passes as decode items (docs/architecture.md, "The engine"). Each request has one unit in flight
at a time, a chunk or its decode token (mor/inference/requests.py), which keeps its K/V rows in
position order: the chunk's tokens take their recursion steps together (each decides its own depth,
as in the model's forward), the chunk runs the coda once all of them have exited, and then the
next chunk enters; the last prompt token's logits pick the first new token. The K/V layout and the cache rules
(recursion-wise: a step's rows hold the tokens that took it; shared: steps > 1 read step 1's rows)
are the model's own (mor/inference/plan.py); the runner computes the passes (mor/inference/runner.py).

Work counters: `passes` counts the weight passes of the last stream (one per decoder-layer call and
per LM-head call, prefill included) and `pass_rows` the rows they carried; `stage_stats` the runs
and rows of each stage. docs/performance.md shows that passes per decoded token, not FLOPs, predict
decode speed on a CPU at these batch sizes.

Correctness: greedy outputs (tokens and per-token depths) equal `model.generate(prompt,
max_new_tokens=n, return_dict_in_generate=True)` (`.sequences`, `.depths`) run alone for every
request; sampling with `seed=s` draws for request i what `torch.manual_seed(s + i);
model.generate(..., do_sample=True)` draws (each request owns its generator, so results do not
depend on batching). Matmuls run at other widths than a lone `generate`, so logits agree to float
rounding (~1e-6), not bit for bit: a token whose two best logits, or a router score and its
threshold, are closer than that could in principle differ; tests/test_engine.py checks identity.

Devices: the scheduler computes every index, write position and mask length on the host and sends
a pass's inputs in one copy (mor/inference/plan.py), so a pass waits for the device only where the
host needs its result: the routing decisions after a block pass (none without routers or at a fixed
depth) and the picked tokens after an exit pass. Nothing in the passes assumes a CPU.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..model.modeling import MoRForCausalLM
from ..model.sampling import pick_next, sampling_warpers
from .plan import Items, PassInput, build_pass
from .requests import Request, Unit, eos_ids, parse_prompts, per_request
from .runner import Runner

# Default prompt tokens per chunk for a narrow engine (max_batch below it). On a CPU a layer call
# costs about the same from 1 to ~64 rows (docs/performance.md), so a 64-token prompt read in one
# pass instead of 64 one-row passes is the cheapest prefill a small max_batch can have.
PREFILL_TOKENS = 64
# Default rows a pass may carry in all, decode rows and prompt chunks together, when max_batch is
# below it. Prefill is most of a short-answer workload's tokens; a 512-row pass runs its matmuls
# near this CPU's peak where 64-row passes pay per-call costs eight times (measured on the serving
# workload of `mor bench`, docs/performance.md).
PASS_TOKENS = 512
# The stages around the shared block (their names in events and stage_stats)
ENTRY = "prelude + step 1"
EXIT = "coda + head"


@dataclass
class EngineEvent:
    """Progress after one engine step (one stage's pass).

    iteration: 1-based count of passes so far (0: an event without a pass, e.g. only budgets of 0).
    stage / rows / prefill_rows: the stage that ran (ENTRY "prelude + step 1", "block" or
        "block <steps>", EXIT "coda + head"), the rows its pass carried and how many of them were
        prompt tokens.
    queued: rows waiting in each stage's queue after the pass (what a view of the queues filling
        and draining plots).
    new_tokens: (request index, token id) picked in this pass (exit passes only).
    new_depths: (request index, depth) of new tokens whose recursion ended in this pass.
    finished: request indices that completed in this pass.
    tokens_generated: tokens picked so far over all requests.
    elapsed: seconds spent inside the engine since the stream started (prefill included; the
        caller's time between events is not counted, so a slow UI does not make it look slow).
    prefill_seconds: the part of `elapsed` attributed to prompt tokens (each pass's time split by
        its share of prompt rows).
    tokens_per_second: tokens_generated / elapsed.
    in_flight / waiting: requests holding a K/V slot / not yet admitted.
    block_items: rows of this pass if it ran a recursion step (an entry or block pass), else 0.
    block_steps: with `stream(..., trace_steps=True)`, (request index, recursion step, 1-based) of
        every new token (decode item, not prompt token) this entry or block pass ran; else empty.
    """

    iteration: int
    new_tokens: list[tuple[int, int]]
    new_depths: list[tuple[int, int]]
    finished: list[int]
    tokens_generated: int
    elapsed: float
    prefill_seconds: float
    tokens_per_second: float
    in_flight: int
    waiting: int
    block_items: int
    block_steps: list[tuple[int, int]] = field(default_factory=list)
    stage: str = ""
    rows: int = 0
    prefill_rows: int = 0
    queued: dict[str, int] = field(default_factory=dict)


@dataclass
class _Stage:
    """A stage and its queue. cost: weight passes one run makes (0: it runs at once, on every row
    queued); group: the block group a block stage runs."""

    name: str
    kind: str
    cost: int
    group: int = -1
    queue: list[Unit] = field(default_factory=list)
    rows: int = 0


class Engine:
    """Continuous depth-wise batching for `MoRForCausalLM` (any routing, sharing and KV mode).

    model: the model (float32 or other; its weights are snapshotted into fused matrices at
        construction: call `refresh()` after changing them).
    max_batch: decode rows one pass carries at most: a full batch. A stage whose queue holds a
        full batch runs first (otherwise the one holding the most, when nothing else can run).
        Default 64: on a CPU a pass costs about the same whatever its row count up to ~64 rows
        (docs/performance.md), so wider passes are nearly free; a GPU's flat region is much wider.
    max_inflight: requests holding a K/V slot at once (default 4 x max_batch: with about one unit
        per request spread over the stage queues, some queue then holds a full batch). K/V memory
        grows with it: max_inflight x cache slots x the longest request. Requests beyond it queue.
    prefill_chunk: prompt tokens a request sends through together (default
        max(max_batch, PREFILL_TOKENS)).
    max_tokens: rows a pass carries at most, prompt chunks included (default
        max(max_batch, prefill_chunk, PASS_TOKENS); at least max(max_batch, prefill_chunk)).
    depth_cap / fixed_depth: as in `model.generate` (the model's depth policy decides every step).
    """

    def __init__(self, model: MoRForCausalLM, max_batch: int = 64, max_inflight: int | None = None,
                 prefill_chunk: int | None = None, max_tokens: int | None = None, depth_cap: int | None = None,
                 fixed_depth: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1.")
        max_inflight = 4 * max_batch if max_inflight is None else max_inflight
        prefill_chunk = max(max_batch, PREFILL_TOKENS) if prefill_chunk is None else prefill_chunk
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1.")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}.")
        least = max(max_batch, prefill_chunk)
        max_tokens = max(least, PASS_TOKENS) if max_tokens is None else max_tokens
        if max_tokens < least:
            raise ValueError(f"max_tokens must be >= max(max_batch, prefill_chunk) = {least}, got {max_tokens}.")
        self.runner = Runner(model, depth_cap, fixed_depth)
        self.model, self.config = model, model.config
        self.max_batch, self.max_inflight, self.prefill_chunk = max_batch, max_inflight, prefill_chunk
        self.max_tokens = max_tokens
        self.depth_cap, self.fixed_depth, self.max_depth = depth_cap, fixed_depth, self.runner.max_depth

    def refresh(self) -> None:
        """Rebuild the fused weights and the depth policy from the model (after changing either)."""
        self.runner.refresh()

    @property
    def passes(self) -> dict[str, int]:
        """Weight passes of the last stream by kind: "prelude", "block", "coda", "head"."""
        return dict(self.runner.passes)

    @property
    def pass_rows(self) -> int:
        """Rows the last stream's weight passes carried, summed over passes."""
        return sum(self.runner.rows.values())

    def kv_bytes(self) -> dict[str, int]:
        """K/V bytes: 'allocated' (the preallocated buffer of the last stream)."""
        kv = getattr(self.runner, "kv", None)
        return {"allocated": 0 if kv is None else kv.numel() * kv.element_size()}

    def generate(self, prompts: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                 max_new_tokens: int | Sequence[int] = 32, **kwargs) -> list[tuple[list[int], list[int]]]:
        """Decode every prompt; returns, in prompt order, (new token ids, their depths).

        `max_new_tokens`: one int, or one per prompt. Keyword arguments as in `stream`."""
        for _ in self.stream(prompts, max_new_tokens, **kwargs):
            pass
        return self.results

    @torch.inference_mode()
    def stream(self, prompts, max_new_tokens: int | Sequence[int] = 32, do_sample: bool = False,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int = 0, eos_token_id: int | Sequence[int] | None = None, stop_at_eos: bool = True,
               trace_steps: bool = False) -> Iterator[EngineEvent]:
        """Decode every prompt (any number: they queue for `max_inflight` slots), yielding an
        `EngineEvent` after every pass.

        trace_steps: report which request's new token ran at which recursion step in each block
        pass (`EngineEvent.block_steps`; host bookkeeping only, no device read).

        Sampling: request i uses `torch.Generator().manual_seed(seed + i)` and transformers'
        warpers for temperature / top-k / top-p (`mor.model.sampling`). End-of-text:
        `eos_token_id` (one id or several; default the model's generation config's); a request
        stops after emitting it (its depth is still measured), as `model.generate` does, unless
        `stop_at_eos=False`. When the stream ends, `self.results` holds (tokens, depths) per
        request, `self.request_kv_bytes` the K/V bytes each held at the end (in finishing order)
        and `self.token_times` per request the engine-clock second at which each token was picked."""
        plist = parse_prompts(prompts)
        news = per_request(max_new_tokens, len(plist))
        eos = eos_ids(self.model.generation_config, eos_token_id, stop_at_eos)
        warpers = sampling_warpers(temperature, top_k, top_p) if do_sample else None
        device = self.runner.device
        reqs = [Request(i, p, n, torch.Generator(device=device).manual_seed(seed + i) if do_sample else None)
                for i, (p, n) in enumerate(zip(plist, news))]
        self.results = [([], []) for _ in reqs]
        self.request_kv_bytes: list[int] = []
        self.token_times = [r.times for r in reqs]
        self.runner.reset_counters()
        slots = max(1, min(self.max_inflight, sum(n > 0 for n in news)))
        schedule = _Schedule(self, reqs, eos, warpers, slots)
        # pool rows: one per request slot (its decode token), and prompt chunks for every stage to
        # hold a full pass of them (so prefill alone can keep the passes busy)
        self.runner.allocate(slots, slots + (len(schedule.order) + 1) * self.max_tokens,
                             max((len(p) + n for p, n in zip(plist, news)), default=0) + 1)
        schedule.free_rows = list(range(self.runner.h.shape[0]))[::-1]
        self.stage_stats = schedule.stats
        yield from schedule.run(trace_steps)


@dataclass
class _Outcome:
    """What one pass did, for its event."""

    new_tokens: list[tuple[int, int]] = field(default_factory=list)
    new_depths: list[tuple[int, int]] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    picked: list[Request] = field(default_factory=list)
    block_steps: list[tuple[int, int]] = field(default_factory=list)


class _Schedule:
    """One stream's scheduler: admission, the stage queues, which stage runs next, what happens to
    each unit after its pass, retirement and sampling."""

    def __init__(self, engine: Engine, reqs: list[Request], eos: set[int], warpers, slots: int):
        self.engine, self.runner = engine, engine.runner
        self.W, self.T, self.chunk = engine.max_batch, engine.max_tokens, engine.prefill_chunk
        self.eos, self.warpers = eos, warpers
        r = self.runner
        self.waiting = deque(reqs)
        self.ready: deque[Request] = deque()  # admitted, next prompt chunk waiting for pool rows
        self.free_slots = list(range(slots))  # a heap: the lowest free slot first keeps rows compact
        self.free_rows: list[int] = []  # pool rows, set once the pool is allocated
        self.inflight = 0
        self.entry = _Stage(ENTRY, "entry", len(r.prelude_layers) + len(r.groups[r.entry_group][0]))
        # the block stages run the steps after the first (step 1 rides in the entry pass)
        later = [(g, layers, [s for s in steps if s > 0]) for g, (layers, steps) in enumerate(r.groups)]
        later = [(g, layers, steps) for g, layers, steps in later if steps]
        self.blocks = {g: _Stage("block" if len(later) == 1 else "block " + "+".join(str(s + 1) for s in steps),
                                 "block", len(layers), g) for g, layers, steps in later}
        self.exit = _Stage(EXIT, "exit", len(r.coda_layers) + 1)
        # downstream first: when several stages hold a full batch, finishing tokens comes first
        self.order = [self.exit, *list(self.blocks.values())[::-1], self.entry]
        self.stats = {s.name: {"runs": 0, "rows": 0} for s in reversed(self.order)}

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, trace: bool) -> Iterator[EngineEvent]:
        busy = prefill = 0.0
        produced = iteration = 0
        while True:
            t0 = time.perf_counter()
            out = _Outcome(finished=self.admit())
            stage = self.choose()
            if stage is None:
                if out.finished:
                    busy += time.perf_counter() - t0
                    yield self.event(iteration, out, produced, busy, prefill, None, 0, 0)
                return
            units = self.take(stage)
            rows = sum(u.size for u in units)
            prompt_rows = sum(u.size for u in units if u.prompt)
            if trace and stage.kind != "exit":
                out.block_steps = [(u.req.index, u.step + 1) for u in units if not u.prompt]
            getattr(self, "run_" + stage.kind)(stage, units, out)
            iteration += 1
            self.stats[stage.name]["runs"] += 1
            self.stats[stage.name]["rows"] += rows
            dt = time.perf_counter() - t0
            busy += dt
            prefill += dt * prompt_rows / rows
            produced += len(out.new_tokens)
            for req in out.picked:
                req.times.append(busy)
            yield self.event(iteration, out, produced, busy, prefill, stage, rows, prompt_rows)

    def event(self, iteration, out: _Outcome, produced, busy, prefill, stage, rows, prompt_rows) -> EngineEvent:
        return EngineEvent(iteration, out.new_tokens, out.new_depths, out.finished, produced, busy, prefill,
                           produced / max(busy, 1e-9), self.inflight, len(self.waiting),
                           rows if stage is not None and stage.kind != "exit" else 0, out.block_steps,
                           "" if stage is None else stage.name, rows, prompt_rows,
                           {s.name: s.rows for s in reversed(self.order)})

    # ---- admission and the queues ---------------------------------------------------------------
    def admit(self) -> list[int]:
        """Give waiting requests free slots and admitted ones pool rows for their next prompt chunk,
        in arrival order; a request with a budget of 0 finishes at once. Returns those finished."""
        finished = []
        while self.ready and self.send_chunk(self.ready[0]):
            self.ready.popleft()
        while self.waiting and not self.ready:
            req = self.waiting[0]
            if req.max_new == 0:
                self.waiting.popleft()
                finished.append(req.index)
                continue
            if not self.free_slots:
                break
            self.waiting.popleft()
            req.slot = heapq.heappop(self.free_slots)
            req.steplen = [0] * self.runner.R
            self.inflight += 1
            if not self.send_chunk(req):
                self.ready.append(req)
        return finished

    def send_chunk(self, req: Request) -> bool:
        """Queue the request's next prompt chunk for the entry; False when the pool lacks rows."""
        start = req.prompt_sent
        n = min(self.chunk, len(req.prompt) - start)
        if len(self.free_rows) < n:
            return False
        rows = [self.free_rows.pop() for _ in range(n)]
        req.prompt_sent += n
        self.enqueue(self.entry, Unit(req, rows, list(range(start, start + n)), req.prompt[start:start + n],
                                      prompt=True, last=start + n == len(req.prompt)))
        return True

    @staticmethod
    def enqueue(stage: _Stage, unit: Unit) -> None:
        stage.queue.append(unit)
        stage.rows += unit.size

    def choose(self) -> _Stage | None:
        """The stage to run next: the first (downstream first) holding a full batch, else the one
        holding the most rows; None when all are empty."""
        best = None
        for stage in self.order:
            if stage.rows >= self.W:
                return stage
            if stage.rows and (best is None or stage.rows > best.rows):
                best = stage
        return best

    def take(self, stage: _Stage) -> list[Unit]:
        """Units for one pass: up to max_batch decode rows and max_tokens rows in all. The oldest unit first, then the other units of its cohort
        (slots in the same aligned range of max_batch), then the rest, each in queue order; a unit
        that does not fit the room left waits for the next pass, keeping its place in the queue. The
        pass runs its units in slot order."""
        queue, W = stage.queue, self.W
        cohort = queue[0].req.slot // W
        room, decode_room = self.T, W
        taken, chosen = [], set()
        for mates in (True, False):  # the oldest unit's cohort first, then the rest
            for i, unit in enumerate(queue):
                if (unit.req.slot // W == cohort) != mates:
                    continue
                n = len(unit.rows)
                if n <= room and (unit.prompt or n <= decode_room):
                    taken.append(unit)
                    chosen.add(i)
                    room -= n
                    if not unit.prompt:
                        decode_room -= n
                    if room == 0:
                        break
            if room == 0:
                break
        stage.queue = [u for i, u in enumerate(queue) if i not in chosen]
        stage.rows -= self.T - room
        return sorted(taken, key=lambda u: u.req.slot)  # slot order: in-place reads need no reordering

    # ---- the passes ------------------------------------------------------------------------------
    def _pass(self, units: list[Unit], table, **extra) -> PassInput:
        """An entry or exit pass: every token writes its entry at its position (the prelude's and
        coda's rows hold every token, and so do step 1's) and sees the entries up to it."""
        it = Items()
        for u in units:
            n = len(u.rows)
            it.units.append((len(it.rows), n))
            it.rows += u.rows
            it.pos += u.positions
            it.slots += [u.req.slot] * n
            it.keys += [0] * n
            it.widx += u.positions
            it.vis += [p + 1 for p in u.positions]
        r = self.runner
        return build_pass(it, table, r.M, r.device, r.arange, extra)

    def run_entry(self, stage: _Stage, units: list[Unit], out: _Outcome) -> None:
        """The embedding, the prelude and recursion step 1 of every token of the units (every token
        takes step 1, whose rows then hold every token fed, at its position); then each token's
        routing decision, as after a block pass."""
        r = self.runner
        for u in units:
            req = u.req
            assert req.steplen[0] == u.positions[0], "step 1's rows hold every token fed, in position order"
            req.steplen[0] += len(u.rows)
            req.fed = u.positions[-1] + 1
            u.step = 0
        n = sum(len(u.rows) for u in units)
        cont = r.entry(self._pass(units, r.entry_table, tokens=[t for u in units for t in u.token_ids],
                                  next_step=[1] * n))
        self.advance(units, cont.tolist() if cont is not None else [r.max_depth > 1] * n, out)

    def run_block(self, stage: _Stage, units: list[Unit], out: _Outcome) -> None:
        """One block pass (steps 2 and later). A unit's items all sit at its step r: under recursion-wise caching they
        append to step r's rows (entry index = entries held + rank) and see up to their own entry;
        under recursive sharing only step 1 writes, and deeper steps read step 1's rows up to their
        position."""
        r, shared = self.runner, self.runner.shared_kv
        it, next_step = Items(), []
        for u in units:
            req, step, n = u.req, u.step, len(u.rows)
            it.units.append((len(it.rows), n))
            it.rows += u.rows
            it.pos += u.positions
            it.slots += [req.slot] * n
            it.keys += [0 if shared else step] * n
            if not shared or step == 0:  # writes: appended to step r's rows, in rank order
                first = req.steplen[step]
                it.widx += range(first, first + n)
                it.vis += range(first + 1, first + n + 1)
                req.steplen[step] += n
            else:  # reads step 1's rows up to its position
                it.widx += [-1] * n
                it.vis += [p + 1 for p in u.positions]
            next_step += [step + 1] * n
        cont = r.block(build_pass(it, r.group_tables[stage.group], r.M, r.device, r.arange, {"next_step": next_step}),
                       stage.group)
        self.advance(units, cont.tolist() if cont is not None else [s < r.max_depth for s in next_step], out)

    def advance(self, units: list[Unit], takes: list[bool], out: _Outcome) -> None:
        """After a recursion step: `takes` (the pass's one device read) says which items take their
        next step; each unit moves on (`after_step`)."""
        start = 0
        for u in units:
            n = len(u.rows)  # after_step may shrink the unit to its recursing items
            self.after_step(u, takes[start:start + n], out)
            start += n

    def after_step(self, u: Unit, takes: list[bool], out: _Outcome) -> None:
        """Move a unit on after its block pass: the items taking another step queue for it; a new
        token that exits records its depth and goes on to the coda, or retires its finished request;
        a prompt chunk goes on, whole, once none of its items recurses any more."""
        req = u.req
        if any(takes):
            if not all(takes):
                keep = [k for k, t in enumerate(takes) if t]
                u.rows, u.positions = [u.rows[k] for k in keep], [u.positions[k] for k in keep]
            u.step += 1
            self.enqueue(self.blocks[self.runner.group_of_step[u.step]], u)
            return
        if not u.prompt:
            req.depths.append(u.step + 1)
            out.new_depths.append((req.index, u.step + 1))
            if len(req.tokens) >= req.max_new or req.tokens[-1] in self.eos:
                self.retire(u, out)
                return
        if self.runner.coda_layers:  # the coda runs over the whole chunk
            u.rows, u.positions = list(u.chunk_rows), list(u.chunk_positions)
        elif not u.last:  # no coda, no logits needed: the chunk is done
            self.chunk_done(u)
            return
        else:  # no coda: only the last token goes on, for its logits
            u.rows, u.positions = u.chunk_rows[-1:], u.chunk_positions[-1:]
        self.enqueue(self.exit, u)

    def run_exit(self, stage: _Stage, units: list[Unit], out: _Outcome) -> None:
        """The coda over every token of the units, then the final norm, the LM head and the pick for
        the last token of each decode item and final prompt chunk; the picked token queues for the
        entry as its request's next unit (a decode item, in the pool row of the token before it).
        A chunk with more of its prompt to come frees its rows and sends the next chunk."""
        want, heads, start = [], [], 0
        for u in units:
            start += len(u.rows)
            if u.last:
                want.append(start - 1)
                heads.append(u)
        r = self.runner
        logits = r.exit(self._pass(units, r.coda_table, want=want))
        for u in units:
            if not u.last:
                self.chunk_done(u)
        if not heads:
            return
        for u, token in zip(heads, self.pick(logits, heads)):
            req = u.req
            self.free_rows += u.chunk_rows[:-1]  # a prompt chunk's other tokens are done
            req.tokens.append(token)
            out.new_tokens.append((req.index, token))
            out.picked.append(req)
            self.enqueue(self.entry, Unit(req, u.chunk_rows[-1:], [u.chunk_positions[-1] + 1], [token],
                                          prompt=False, last=True))

    def pick(self, logits: torch.Tensor, units: list[Unit]) -> list[int]:
        if self.warpers is None:
            return pick_next(logits).tolist()  # the one device read of an exit pass
        # one draw per request, from its own generator
        return [int(pick_next(logits[i:i + 1], self.warpers, u.req.generator)) for i, u in enumerate(units)]

    # ---- leaving -----------------------------------------------------------------------------------
    def chunk_done(self, u: Unit) -> None:
        """A non-final prompt chunk is done (it left the coda, or the block of a model without one):
        free its rows and send the next one."""
        self.free_rows += u.chunk_rows
        if not self.send_chunk(u.req):
            self.ready.append(u.req)

    def retire(self, u: Unit, out: _Outcome) -> None:
        req, r = u.req, self.runner
        self.engine.results[req.index] = (req.tokens, req.depths)
        entries = req.kv_entries(len(r.prelude_layers), len(r.coda_layers), [len(s) for s in r.steps], r.shared_kv)
        self.engine.request_kv_bytes.append(entries * r.kv_entry_bytes())
        out.finished.append(req.index)
        self.free_rows += u.chunk_rows
        heapq.heappush(self.free_slots, req.slot)
        self.inflight -= 1


__all__ = ["Engine", "EngineEvent"]
