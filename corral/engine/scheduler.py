"""Continuous batching: many requests share the decode steps of one model.

A background thread repeats one step:
1. drop cancelled sequences (their slot is free at once);
2. admit waiting requests into free KV-cache slots (reusing or copying a cached prompt
   prefix, see corral.engine.slots), in arrival order;
3. prefill: up to `prefill_chunk` prompt tokens of the sequences still reading their prompt
   (long prompts take several steps, so running sequences keep decoding meanwhile);
4. decode: ONE batched forward over every sequence that is generating, each at its own
   position in its own cache row, then each sequence samples with its own Sampler.

Each request's Sampler has its own seeded generator, so a seed gives the same tokens alone
or under load (up to float rounding: a row of a batched matmul can differ from the same
row computed alone in the last bits, which can flip an exact near-tie).
"""

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from corral.engine.generate import ContextOverflowError
from corral.engine.requests import (
    EngineRequest,
    Finished,
    FinishReason,
    RequestHandle,
    TokenEvent,
)
from corral.engine.slots import Slot, SlotTable, common_prefix
from corral.model.llama import Transformer
from corral.sampling import Sampler
from corral.sampling.errors import SamplingError

DEFAULT_PREFILL_CHUNK = 512


class QueueFullError(RuntimeError):
    """The waiting queue is full: try again later."""


class EngineClosedError(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load."""

    n_slots: int
    running: int
    waiting: int
    kv_capacity_tokens: int
    kv_used_tokens: int
    draining: bool


@dataclass(eq=False)
class _Sequence:
    """A request being served: its slot, its place in the prompt, its sampler."""

    handle: RequestHandle
    sampler: Sampler
    slot: Slot
    prompt: tuple[int, ...]
    position: int  # entries already in the slot (prompt tokens read + generated tokens fed)
    cached_tokens: int
    history: list[int] = field(default_factory=list)
    generated: int = 0
    next_token: int | None = None  # sampled, to be fed at the next decode step

    @property
    def prefilling(self) -> bool:
        return self.position < len(self.prompt)


class Engine:
    """Serves many requests at once on one model. Thread-safe: submit from anywhere."""

    def __init__(
        self,
        model: Transformer,
        *,
        n_slots: int = 4,
        n_ctx: int | None = None,
        eos_ids: frozenset[int] = frozenset(),
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        """Take over `model`'s KV cache: `n_ctx` positions in all (default: what the model
        was set up with), split evenly into `n_slots` rows, as llama.cpp's server does."""
        total = n_ctx or model.n_positions
        if n_slots < 1 or total // n_slots < 2:
            raise ValueError(f"{n_slots} slots do not fit a context of {total} tokens")
        self.model = model
        self.slot_context = total // n_slots
        self.eos_ids = frozenset(eos_ids)
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        model.setup_cache(n_slots, self.slot_context)
        self.device = model.tok_embeddings.weight.device
        self._slots = SlotTable(n_slots, self.slot_context)
        self._waiting: deque[tuple[RequestHandle, Sampler]] = deque()
        self._running: list[_Sequence] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="corral-engine", daemon=True)

    # -- the caller's side --------------------------------------------------------------

    def start(self) -> None:
        """Start the engine's thread."""
        self._thread.start()

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Queue a request; its events arrive on the returned handle.

        Raises (before queueing): ValueError for an empty prompt or an id outside the
        vocabulary, ContextOverflowError when prompt + max_tokens exceeds a slot's context,
        SamplingParamsError for a logit_bias id outside the vocabulary, QueueFullError,
        EngineClosedError.
        """
        prompt, params = request.prompt_ids, request.params
        vocab = self.model.config.n_vocab
        if not prompt:
            raise ValueError("the prompt is empty: nothing to continue")
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is out of range [0, {vocab})")
        if len(prompt) + params.max_tokens > self.slot_context:
            raise ContextOverflowError(
                f"the prompt has {len(prompt)} tokens and max_tokens is {params.max_tokens}: "
                f"{len(prompt) + params.max_tokens} tokens do not fit the context window of "
                f"{self.slot_context} tokens per sequence"
            )
        eos = self.eos_ids | request.stop_ids
        sampler = Sampler(params, vocab, eos_ids=eos, constraint=request.constraint)
        handle = RequestHandle.create(request, next(self._ids))
        with self._lock:
            if self._closing:
                raise EngineClosedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append((handle, sampler))
            self._wake.notify()
        return handle

    def stats(self) -> EngineStats:
        """How busy the engine is now."""
        with self._lock:
            return EngineStats(
                n_slots=len(self._slots.slots),
                running=len(self._running),
                waiting=len(self._waiting),
                kv_capacity_tokens=len(self._slots.slots) * self.slot_context,
                kv_used_tokens=self._slots.used_tokens(),
                draining=self._closing,
            )

    @property
    def draining(self) -> bool:
        """True once shutdown has begun."""
        return self._closing

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking requests, let the ones in flight finish for up to `timeout` seconds,
        cancel what is left, and stop the thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = True
            self._wake.notify()
        while time.monotonic() < deadline and self._thread.is_alive():
            with self._lock:
                if not self._running and not self._waiting:
                    break
            time.sleep(0.01)
        with self._lock:
            for handle, _ in self._waiting:
                handle.cancel()
            for sequence in self._running:
                sequence.handle.cancel()
            self._stopped = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))

    # -- the engine's thread ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and not self._running and not self._waiting:
                    self._wake.wait()
                if self._stopped and not self._running and not self._waiting:
                    return
            self._drop_cancelled()
            self._admit()
            self._prefill()
            self._decode()

    def _drop_cancelled(self) -> None:
        with self._lock:
            waiting = [(h, s) for h, s in self._waiting if not h.cancelled]
            dropped = [h for h, _ in self._waiting if h.cancelled]
            self._waiting = deque(waiting)
        for handle in dropped:
            handle.put(Finished("cancelled", len(handle.request.prompt_ids), 0))
        for sequence in [s for s in self._running if s.handle.cancelled]:
            self._finish(sequence, "cancelled")

    def _admit(self) -> None:
        """Move waiting requests into free slots, in order. A request whose prompt shares a
        longer prefix with a sequence still reading its prompt waits for that prefill, so
        the shared part is computed once (n completions of one prompt)."""
        while True:
            with self._lock:
                if not self._waiting or not self._slots.has_free():
                    return
                handle, sampler = self._waiting[0]
                prompt = handle.request.prompt_ids
                placement = self._slots.place(prompt)
                pending = max(
                    (common_prefix(s.prompt, prompt) for s in self._running if s.prefilling),
                    default=0,
                )
                if min(pending, len(prompt) - 1) > placement.reused:
                    return
                self._waiting.popleft()
                self._slots.occupy(placement, prompt)
                self._running.append(
                    _Sequence(
                        handle=handle,
                        sampler=sampler,
                        slot=placement.slot,
                        prompt=prompt,
                        position=placement.reused,
                        cached_tokens=placement.reused,
                        history=list(prompt),
                    )
                )
            if placement.source is not None:
                self.model.copy_prefix(placement.source, placement.slot.row, placement.reused)

    def _prefill(self) -> None:
        """Read up to `prefill_chunk` prompt tokens, oldest sequences first."""
        budget = self.prefill_chunk
        for sequence in [s for s in self._running if s.prefilling]:
            if budget <= 0:
                return
            chunk = sequence.prompt[sequence.position : sequence.position + budget]
            ids = torch.tensor([chunk], dtype=torch.long, device=self.device)  # (1, T)
            try:
                logits = self.model(
                    ids, sequence.position, rows=[sequence.slot.row], last_only=True
                )  # (1, 1, V)
            except Exception as error:  # one request's failure stays its own
                self._finish(sequence, "error", f"prefill failed: {error}")
                continue
            sequence.position += len(chunk)
            sequence.slot.tokens.extend(chunk)
            budget -= len(chunk)
            if not sequence.prefilling:
                self._choose(sequence, logits[0, -1])

    def _decode(self) -> None:
        """One batched forward over every generating sequence, then one token each."""
        batch = [s for s in self._running if s.next_token is not None]
        if not batch:
            return
        tokens = torch.tensor([[s.next_token] for s in batch], device=self.device)  # (B, 1)
        try:
            logits = self.model(
                tokens, [s.position for s in batch], rows=[s.slot.row for s in batch]
            )  # (B, 1, V)
        except Exception as error:  # fail these requests, keep serving the others
            for sequence in batch:
                self._finish(sequence, "error", f"decode failed: {error}")
            return
        for i, sequence in enumerate(batch):
            sequence.slot.tokens.append(sequence.next_token)
            sequence.position += 1
            sequence.next_token = None
            self._choose(sequence, logits[i, -1])

    def _choose(self, sequence: _Sequence, logits: torch.Tensor) -> None:
        """Sample the sequence's next token from `logits` (V,), emit it, and decide whether
        the sequence goes on."""
        request = sequence.handle.request
        try:
            token = sequence.sampler.sample(logits, sequence.history)
        except SamplingError as error:
            self._finish(sequence, "error", str(error))
            return
        if token in request.stop_ids:
            self._finish(sequence, "stop")
            return
        sequence.sampler.accept(token)
        sequence.history.append(token)
        sequence.generated += 1
        sequence.handle.put(TokenEvent(token, sequence.sampler.last_logprobs))
        constraint = request.constraint
        if constraint is not None and constraint.is_done():
            self._finish(sequence, "stop")
        elif sequence.generated >= request.params.max_tokens:
            self._finish(sequence, "length")
        elif sequence.position >= self.slot_context:
            self._finish(sequence, "length")
        else:
            sequence.next_token = token

    def _finish(
        self, sequence: _Sequence, reason: FinishReason, message: str | None = None
    ) -> None:
        """End a sequence: free its slot and send its Finished event."""
        with self._lock:
            self._running.remove(sequence)
            self._slots.release(sequence.slot)
        sequence.handle.put(
            Finished(
                reason,
                prompt_tokens=len(sequence.prompt),
                completion_tokens=sequence.generated,
                cached_tokens=sequence.cached_tokens,
                message=message,
            )
        )
