"""Streaming early exit: an engine that serves many small requests with continuous batching per stage.

:class:`EarlyExitEngine` takes requests of any number of samples from any number of threads
(:meth:`~EarlyExitEngine.submit` returns a ``concurrent.futures.Future``) and answers each with
the :class:`~eexit.runner.EarlyExitOutput` that ``model.infer`` would give on that request alone.
Inside, every stage has a queue of active samples (their features, as chunks of rows, with the
slots their answers go to). One worker thread runs a stage, its exit, the gate and the compaction
(the model's ``gate_ops``) on a batch of up to ``max_batch`` queued samples; the samples that exit
are written to their request's answer, the others join the next stage's queue. A deep stage thus
runs on samples gathered from many requests: a stream of single samples still gets full batches
where it matters.

Scheduling policy (one worker, run in a loop):

* A stage is *ready* when its queue holds ``max_batch`` samples, or its oldest sample (the queue is
  FIFO: the front chunk) was submitted ``max_wait_ms`` ago or more. The wait counts from the
  request's submission, not from the arrival at the stage: a sample that has spent its
  ``max_wait_ms`` is not held back again at a deeper stage, so at low load a request's latency is
  about ``max_wait_ms`` plus one pass through the network.
* Of the ready stages the deepest runs first (samples in flight finish before new ones start:
  bounded latency, bounded memory). Its batch is its oldest samples, up to ``max_batch`` (a chunk
  is split when it does not fit), of the same per-sample shape and dtype as the oldest one (requests
  of different sizes, for models that take any size, are never concatenated).
* While nothing is ready the worker sleeps until the earliest deadline or a new request.
* After ``close(drain=True)`` every non-empty stage is ready (nobody waits any more).

Faults stay local: a request whose input the model refuses (:meth:`~eexit.nn.EarlyExitModel.check_input`:
type, shape, dtype) gets a future that already holds that TypeError / ValueError; an exception inside
a stage, exit or gate fails the requests with samples in that batch (:class:`StageFailed`, the
original exception as its ``__cause__``), their other samples are dropped at their next batch, and
the engine goes on serving the others. Admission is bounded: ``submit`` admits a request while fewer
than ``max_pending`` samples are in flight (a request larger than that is admitted alone), so at
most ``max_pending`` samples plus one request are ever held; otherwise it waits for room up to its
``timeout`` and raises :class:`EngineOverloaded`. Every admitted request's future is resolved exactly
once: with its answer, with :class:`StageFailed`, or with :class:`EngineClosed` when the engine is
closed without draining. A future cancelled by its client (``future.cancel()`` while pending) drops
its samples at their next batch.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import torch

from eexit import ops, reference
from eexit.nn.early_exit import EarlyExitModel, _first_parameter
from eexit.nn.execution import check_gate_ops
from eexit.runner import EarlyExitOutput, Thresholds, check_thresholds

__all__ = ["EarlyExitEngine", "EngineClosed", "EngineOverloaded", "EngineStats", "StageFailed"]

Features = Union[torch.Tensor, Sequence[torch.Tensor]]

#: the clock of the engine's deadlines and statistics (seconds)
clock: Callable[[], float] = time.perf_counter
#: how many of each stage's latest batch durations :meth:`EarlyExitEngine.stats` takes the median of
RECENT_BATCHES = 1024


class EngineClosed(RuntimeError):
    """The engine is closed: ``submit`` after :meth:`EarlyExitEngine.close`, a request cancelled by
    ``close(drain=False)``, or every request in flight when the engine's worker stopped on an
    error of its own (then the ``__cause__``)."""


class EngineOverloaded(RuntimeError):
    """``submit`` found ``max_pending`` samples in flight and no room came within its timeout."""


class StageFailed(RuntimeError):
    """A stage, exit or gate raised on a batch holding samples of this request; ``stage`` is its
    index and ``__cause__`` the original exception. Other requests were not affected."""

    def __init__(self, message: str, stage: int) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class EngineStats:
    """Counts since the engine started (or :meth:`EarlyExitEngine.reset_stats`).

    requests, samples: admitted; completed / failed / cancelled: requests answered, failed by a stage
    (:class:`StageFailed`) and cancelled (by their client or by ``close(drain=False)``); rejected:
    requests whose input the model refused (their future holds the error); overloaded: ``submit``
    calls that raised :class:`EngineOverloaded`; pending: samples admitted and not yet answered now,
    peak_pending: the most at any time. Per stage: batches run, samples in them, seconds the worker
    spent on them (stage, exit, gate, compaction and writing the answers into the output buffer, not
    handing them to the futures), the median duration of the latest batches (0 before any), and
    exits: samples that left at each exit. A batch is counted before its requests' futures resolve,
    so stats read once a result is in include the batch that produced it.
    """

    requests: int
    samples: int
    completed: int
    failed: int
    cancelled: int
    rejected: int
    overloaded: int
    pending: int
    peak_pending: int
    stage_batches: Tuple[int, ...]
    stage_samples: Tuple[int, ...]
    stage_seconds: Tuple[float, ...]
    median_batch_seconds: Tuple[float, ...]
    exits: Tuple[int, ...]

    @property
    def mean_batch(self) -> Tuple[float, ...]:
        """Mean batch size per stage (0 for a stage that never ran)."""
        return tuple(s / b if b else 0.0 for s, b in zip(self.stage_samples, self.stage_batches))


class _EngineFuture(Future):
    """A Future whose ``cancel()`` (while the request is pending) also tells the engine to drop the
    request's samples."""

    _cancelled_by: Optional[tuple] = None  # (engine, request id), set at submit

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._cancelled_by is not None:
            engine, rid = self._cancelled_by
            engine._on_cancel(rid)
        return cancelled


class _Request:
    __slots__ = ("future", "n", "slots", "remaining", "dead", "rid")

    def __init__(self, future: Future, n: int, slots: List[int], rid: int) -> None:
        self.future, self.n, self.slots, self.rid = future, n, slots, rid
        self.remaining = n  # rows not yet left
        self.dead = False  # failed or cancelled: its rows are dropped, its future is already resolved


class _Chunk:
    """Rows of a stage's queue: features h (batch on dim 0), their answer slots (a list of ints for a
    request's input, else int64 on the engine's device), how many, the submission time of the oldest,
    and their per-sample signature."""

    __slots__ = ("h", "slots", "n", "t0", "sig")

    def __init__(self, h: Features, slots: torch.Tensor, n: int, t0: float, sig: tuple) -> None:
        self.h, self.slots, self.n, self.t0, self.sig = h, slots, n, t0, sig


def _signature(h: Features) -> tuple:
    """What rows must share to be concatenated: per-sample shape and dtype (of each tensor of a list)."""
    if isinstance(h, torch.Tensor):
        return (tuple(h.shape[1:]), h.dtype)
    if not isinstance(h, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in h):
        raise TypeError(f"a stage must return a tensor or a list/tuple of tensors, got {type(h).__name__}")
    return ("list",) + tuple((tuple(t.shape[1:]), t.dtype) for t in h)


def _rows(h: Features) -> int:
    return h.shape[0] if isinstance(h, torch.Tensor) else h[0].shape[0]


def _slice(h: Features, lo: int, hi: Optional[int]) -> Features:
    return h[lo:hi] if isinstance(h, torch.Tensor) else [t[lo:hi] for t in h]


def _select(h: Features, idx: torch.Tensor) -> Features:
    return h.index_select(0, idx) if isinstance(h, torch.Tensor) else [t.index_select(0, idx) for t in h]


def _concat(parts: List[Features]) -> Features:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class EarlyExitEngine:
    """Serves ``model.infer(x, thresholds, criterion)`` to concurrent requests, batching each stage
    across requests (see the module docstring for the policy and the fault handling).

    Args:
        model: an :class:`~eexit.nn.EarlyExitModel` in eval mode (RuntimeError otherwise, as
            ``infer``); its :meth:`~eexit.nn.EarlyExitModel.running_stages` (the compiled ones after
            :func:`eexit.compile`) and ``gate_ops`` are read once, here. Do not train, move or
            recompile it while the engine serves it (a batch run in train mode fails).
        thresholds, criterion: as for ``infer``, checked here (:func:`eexit.runner.check_thresholds`).
        max_batch: the most samples a stage runs at once. Larger: fuller batches and more throughput
            where a stage's per-call overhead dominates, longer batches to wait behind.
        max_wait_ms: the longest a sample waits, from its submission, for its batch to fill before
            a stage runs anyway. Larger: fuller first-stage batches at low load, higher latency.
        max_pending: the most samples in flight (admitted, not yet answered); default
            ``16 * max_batch``. It bounds memory and queueing delay; ``submit`` blocks or refuses
            beyond it.
        device: where the model runs; default the device of its parameters (CPU without any). The
            model must be there already (ValueError otherwise). Inputs on another device are
            copied to it at ``submit``; answers are on it.

    The worker runs under ``torch.inference_mode()``: answers are inference tensors (read them
    freely; an in-place update needs ``torch.inference_mode()`` too). A submitted tensor is used
    as it is, not copied: do not modify it before its future is done. Use the engine as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, model: EarlyExitModel, thresholds: Thresholds, criterion: str = "confidence",
                 max_batch: int = 256, max_wait_ms: float = 5.0, max_pending: Optional[int] = None,
                 device: Union[None, str, torch.device] = None) -> None:
        if not isinstance(model, EarlyExitModel):
            raise TypeError(f"model must be an eexit EarlyExitModel (e.g. an EarlyExitNetwork), got "
                            f"{type(model).__name__}")
        if model.training:
            raise RuntimeError("EarlyExitEngine needs eval mode: call model.eval() first; in train mode BatchNorm "
                               "would mix samples and update its statistics")
        self.max_batch = _positive_int("max_batch", max_batch)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or \
                not 0 <= max_wait_ms < math.inf:
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        self.max_wait_ms = float(max_wait_ms)
        self.max_pending = 16 * self.max_batch if max_pending is None else _positive_int("max_pending", max_pending)
        param = _first_parameter(model)
        here = param.device if param is not None else torch.device("cpu")
        self.device = here if device is None else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        if param is not None and param.device != self.device:
            raise ValueError(f"device is {self.device} but the model's parameters are on {param.device}: move the "
                             f"model first (model.to({str(self.device)!r}))")
        self.model = model
        self.stages, self.exits = (list(p) for p in model.running_stages())
        if len(self.stages) != len(self.exits) or not self.stages:
            raise ValueError(f"the model must have as many stages as exits, at least one; got {len(self.stages)} "
                             f"and {len(self.exits)}")
        self.criterion = criterion
        self.thresholds = check_thresholds(thresholds, len(self.exits), criterion)
        self._gate = {"fused": ops, "reference": reference}[check_gate_ops(model.gate_ops)]
        self._wait_s = self.max_wait_ms / 1e3
        n_stages = len(self.stages)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here
        self._room = threading.Condition(self._lock)  # submitters wait here for max_pending room
        self._queues: List[Deque[_Chunk]] = [deque() for _ in range(n_stages)]
        self._queued = [0] * n_stages
        self._requests: Dict[int, _Request] = {}
        self._next_rid = 0
        self._pending = 0
        self._n_dead = 0  # dead requests with rows still somewhere
        self._room_waiters = 0
        self._worker_idle = False
        self._closing = False
        self._drain = True
        self._stop_error: Optional[BaseException] = None
        # answer slots: a stack of free slot numbers, which request owns each slot, dead slots
        self._capacity = 0
        self._free: List[int] = []
        self._owner: List[int] = []
        self._slot_dead = torch.empty(0, dtype=torch.bool)
        # the answers, indexed by slot (worker-owned; allocated at the first exit, grown with _capacity)
        self._buf: Optional[EarlyExitOutput] = None
        self._classes: Optional[int] = None
        self._zero_stats()

        self._worker = threading.Thread(target=self._serve, name="eexit-engine", daemon=True)
        self._worker.start()

    # -- client side -------------------------------------------------------------------------

    def submit(self, x: Features, timeout: Optional[float] = None):
        """Queues request x (n >= 1 samples, the model's input, batch on dim 0; on any device: it is
        copied to the engine's) and returns a ``concurrent.futures.Future`` of its
        :class:`~eexit.runner.EarlyExitOutput` (rows in x's order). Thread-safe. Cancelling the future
        while it is pending drops the request's samples.

        Input the model refuses (its ``check_input``: TypeError / ValueError, or ValueError for no
        sample) does not raise: the future returned already holds that error. When ``max_pending``
        samples are in flight, waits for room: ``timeout`` None waits as long as it takes, a number
        of seconds (0: not at all) then raises :class:`EngineOverloaded`. Raises
        :class:`EngineClosed` after :meth:`close` (also while waiting)."""
        if self._closing:
            raise self._closed_error()
        fut = _EngineFuture()
        try:
            x = self._to_device(x)
            self.model.check_input(x)
            n = _rows(x)
            if n < 1:
                raise ValueError("a request needs at least one sample (x has 0 rows on dim 0)")
            sig = _signature(x)
        except (TypeError, ValueError) as err:
            with self._lock:
                self._rejected += 1
            fut.set_exception(err)
            return fut
        deadline = None if timeout is None else clock() + max(float(timeout), 0.0)
        with self._lock:
            while True:
                if self._closing:
                    raise self._closed_error()
                if self._pending == 0 or self._pending + n <= self.max_pending:
                    break
                left = None if deadline is None else deadline - clock()
                if (left is not None and left <= 0) or threading.current_thread() is self._worker:
                    self._overloaded += 1
                    raise EngineOverloaded(f"{self._pending} samples in flight and max_pending={self.max_pending}: "
                                           f"no room for {n} more" + ("" if timeout is None else
                                                                      f" within {timeout} s"))
                self._room_waiters += 1
                try:
                    self._room.wait(left)
                finally:
                    self._room_waiters -= 1
            now = clock()
            rid = self._next_rid
            self._next_rid += 1
            slots = self._allocate(n, rid)
            req = _Request(fut, n, slots, rid)
            self._requests[rid] = req
            self._pending += n
            self._peak_pending = max(self._peak_pending, self._pending)
            self._n_requests += 1
            self._n_samples += n
            was_empty = not self._queues[0]
            self._queues[0].append(_Chunk(x, slots, n, now, sig))
            self._queued[0] += n
            if self._worker_idle and (was_empty or self._queued[0] >= self.max_batch):
                self._work.notify()
        fut._cancelled_by = (self, rid)
        return fut

    def close(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Stops taking requests (``submit`` raises :class:`EngineClosed`, also to callers waiting for
        room). drain=True answers every request admitted so far (no stage waits any more);
        drain=False resolves those not yet answered with :class:`EngineClosed` after the batch
        running now. Waits up to ``timeout`` seconds (None: as long as it takes) for the worker to
        stop. Calling it again is harmless (drain=False after drain=True cancels what is left)."""
        with self._lock:
            self._closing = True
            self._drain = self._drain and drain
            self._work.notify_all()
            self._room.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the worker stopped on an error)."""
        return self._closing

    def __enter__(self) -> "EarlyExitEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close(drain=True)

    def stats(self) -> EngineStats:
        """A snapshot of the counts (:class:`EngineStats`)."""
        with self._lock:
            return EngineStats(
                self._n_requests, self._n_samples, self._completed, self._failed, self._cancelled, self._rejected,
                self._overloaded, self._pending, self._peak_pending, tuple(self._stage_batches),
                tuple(self._stage_samples), tuple(self._stage_seconds),
                tuple(_median(d) for d in self._recent), tuple(self._exits))

    def reset_stats(self) -> None:
        """Zeroes the counts (peak_pending restarts from the samples in flight now)."""
        with self._lock:
            self._zero_stats()

    def _zero_stats(self) -> None:
        n_stages = len(self.stages)
        self._n_requests = self._n_samples = self._completed = self._failed = self._cancelled = 0
        self._rejected = self._overloaded = 0
        self._peak_pending = self._pending
        self._stage_batches = [0] * n_stages
        self._stage_samples = [0] * n_stages
        self._stage_seconds = [0.0] * n_stages
        self._exits = [0] * n_stages
        self._recent: List[Deque[float]] = [deque(maxlen=RECENT_BATCHES) for _ in range(n_stages)]

    def _to_device(self, x: Features) -> Features:
        if isinstance(x, torch.Tensor):
            return x if x.device == self.device else x.to(self.device)
        if isinstance(x, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in x) and \
                any(t.device != self.device for t in x):
            return [t.to(self.device) for t in x]
        return x

    def _closed_error(self) -> EngineClosed:
        if self._stop_error is not None:
            err = EngineClosed(f"the engine's worker stopped on an error: {self._stop_error!r}")
            err.__cause__ = self._stop_error
            return err
        return EngineClosed("the engine is closed")

    def _on_cancel(self, rid: int) -> None:
        with self._lock:
            req = self._requests.get(rid)
            if req is not None and not req.dead:
                self._kill(req)
                self._cancelled += 1

    # -- slots and bookkeeping (under the lock) ----------------------------------------------

    def _allocate(self, n: int, rid: int) -> List[int]:
        free = self._free
        if len(free) < n:
            old = self._capacity
            cap = max(2 * old, old + n - len(free), 64)
            free[:0] = range(cap - 1, old - 1, -1)  # the lowest slot numbers are taken first
            self._owner.extend([-1] * (cap - old))
            self._slot_dead = torch.cat([self._slot_dead, torch.zeros(cap - old, dtype=torch.bool)])
            self._capacity = cap
        slots = free[-n:]
        del free[-n:]
        owner = self._owner
        for s in slots:
            owner[s] = rid
        return slots

    def _release(self, req: _Request) -> None:
        del self._requests[req.rid]
        self._pending -= req.n
        self._free.extend(req.slots)
        if req.dead:
            self._slot_dead[req.slots] = False
            self._n_dead -= 1

    def _kill(self, req: _Request) -> None:
        req.dead = True
        self._slot_dead[req.slots] = True
        self._n_dead += 1

    def _leave(self, slots: torch.Tensor) -> List[_Request]:
        """Rows ``slots`` (CPU) left; frees the requests that are now complete and returns the live ones."""
        done = []
        for rid, c in Counter(map(self._owner.__getitem__, slots.tolist())).items():
            req = self._requests[rid]
            req.remaining -= c
            if req.remaining == 0:
                if not req.dead:
                    done.append(req)
                self._release(req)
        self._completed += len(done)
        if self._room_waiters and self._pending < self.max_pending:
            self._room.notify_all()
        return done

    def _cpu(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device.type == "cpu" else t.cpu()

    def _slots(self, slots: Union[List[int], torch.Tensor]) -> torch.Tensor:
        """int64 slots on the engine's device."""
        if isinstance(slots, torch.Tensor):
            return slots
        t = torch.tensor(slots, dtype=torch.long)
        return t if self.device.type == "cpu" else t.to(self.device)

    def _drop_dead(self, chunks: List[_Chunk]) -> List[_Chunk]:
        kept = []
        for c in chunks:
            slots = self._slots(c.slots)
            slots_cpu = self._cpu(slots)
            dead = self._slot_dead[slots_cpu]
            if not bool(dead.any()):
                kept.append(c)
                continue
            self._leave(slots_cpu[dead])
            alive = torch.nonzero(~dead).squeeze(1)
            if alive.numel():
                alive = alive.to(slots.device)
                kept.append(_Chunk(_select(c.h, alive), slots.index_select(0, alive), alive.numel(), c.t0, c.sig))
        return kept

    def _take(self, k: int) -> List[_Chunk]:
        """Up to max_batch of stage k's oldest rows with the front chunk's signature."""
        q = self._queues[k]
        sig = q[0].sig
        taken: List[_Chunk] = []
        skipped: List[_Chunk] = []
        total = 0
        while q and total < self.max_batch:
            c = q.popleft()
            if c.sig != sig:
                skipped.append(c)
                continue
            room = self.max_batch - total
            if c.n > room:
                q.appendleft(_Chunk(_slice(c.h, room, None), c.slots[room:], c.n - room, c.t0, c.sig))
                c = _Chunk(_slice(c.h, 0, room), c.slots[:room], room, c.t0, c.sig)
            taken.append(c)
            total += c.n
        q.extendleft(reversed(skipped))
        self._queued[k] -= total
        return self._drop_dead(taken) if self._n_dead else taken

    def _ready(self, now: float) -> Optional[int]:
        for k in range(len(self._queues) - 1, -1, -1):
            q = self._queues[k]
            if q and (self._closing or self._queued[k] >= self.max_batch or now - q[0].t0 >= self._wait_s):
                return k
        return None

    # -- the worker --------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    job = self._next_job()
                    if job is None:
                        break
                    self._run(*job)
        except BaseException as err:  # a bug of the engine's own: answer everyone, refuse new requests
            with self._lock:
                self._stop_error = err
                self._closing = True
                self._drain = False
        self._cancel_all()

    def _next_job(self) -> Optional[Tuple[int, List[_Chunk]]]:
        with self._lock:
            while True:
                if self._closing and not self._drain:
                    return None
                now = clock()
                k = self._ready(now)
                if k is not None:
                    chunks = self._take(k)
                    if chunks:
                        return k, chunks
                    continue
                if self._closing:
                    return None  # drained: every queue is empty
                heads = [q[0].t0 for q in self._queues if q]
                self._worker_idle = True
                try:
                    self._work.wait(None if not heads else max(min(heads) + self._wait_s - now, 0.0))
                finally:
                    self._worker_idle = False

    def _run(self, k: int, chunks: List[_Chunk]) -> None:
        """Stage k, exit k and the gate on a batch; writes the rows that leave, queues the others."""
        start = clock()
        if all(isinstance(c.slots, list) for c in chunks):
            slots = self._slots(list(chain.from_iterable(c.slots for c in chunks)))
        else:
            slots = torch.cat([self._slots(c.slots) for c in chunks])
        n = slots.shape[0]
        last = k == len(self.stages) - 1
        left: Optional[torch.Tensor] = None  # slots of the rows that left (CPU)
        stay: Optional[torch.Tensor] = None  # slots of the rows that go on, with their features
        try:
            if self.model.training:
                raise RuntimeError("the model was put in train mode while the engine serves it; call model.eval()")
            h = self.stages[k](_concat([c.h for c in chunks]))
            logits = self.exits[k](h)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"exits[{k}] must return logits [{n}, C], got {got}")
            if self._classes is not None and logits.shape[1] != self._classes:
                raise ValueError(f"exits[{k}] returned {logits.shape[1]} classes, an earlier exit {self._classes}")
            if not last and self.thresholds[k] == math.inf:
                stay = slots  # nobody can leave here: no gate
            else:
                dec = self._gate.exit_gate(logits, 0.0 if last else self.thresholds[k], self.criterion)
                leave = n if last else dec.exit_idx.numel()
                if leave == n:
                    self._write(slots, logits, dec.pred, dec.score, k)
                    left = self._cpu(slots)
                elif leave == 0:
                    stay = slots
                else:
                    gone, keep = dec.exit_idx, dec.keep_idx
                    out = slots.index_select(0, gone)
                    self._write(out, logits.index_select(0, gone), dec.pred.index_select(0, gone),
                                dec.score.index_select(0, gone), k)
                    left = self._cpu(out)
                    stay = slots.index_select(0, keep)
                    h = self._gate.compact([h], keep)[0] if isinstance(h, torch.Tensor) else \
                        self._gate.compact(list(h), keep)
            sig = None if stay is None else _signature(h)
        except Exception as err:
            self._fail(k, slots, n, err, start)
            return
        done: List[_Request] = []
        with self._lock:
            if left is not None:
                done = self._leave(left)
                self._exits[k] += left.numel()
            if stay is not None:
                m = stay.shape[0]
                self._queues[k + 1].append(_Chunk(h, stay, m, min(c.t0 for c in chunks), sig))
                self._queued[k + 1] += m
        self._record(k, n, clock() - start)  # before the futures resolve: their callers see this batch counted
        self._deliver(done)

    def _write(self, slots: torch.Tensor, logits: torch.Tensor, pred: torch.Tensor, score: torch.Tensor,
               k: int) -> None:
        buf = self._buf
        if buf is None or buf.pred.shape[0] < self._capacity:
            cap = self._capacity  # read without the lock: it only grows, and these slots are below it
            if self._classes is None:
                self._classes = logits.shape[1]
            dtype = logits.dtype if buf is None else buf.logits.dtype
            new = EarlyExitOutput(torch.empty((cap, self._classes), dtype=dtype, device=self.device),
                                  torch.empty(cap, dtype=torch.long, device=self.device),
                                  torch.empty(cap, dtype=torch.long, device=self.device),
                                  torch.empty(cap, dtype=torch.float32, device=self.device))
            if buf is not None:
                for a, b in zip(new, buf):
                    a[: b.shape[0]].copy_(b)
            self._buf = buf = new
        buf.logits.index_copy_(0, slots, logits.to(buf.logits.dtype))
        buf.pred.index_copy_(0, slots, pred)
        buf.score.index_copy_(0, slots, score)
        buf.exit_index.index_fill_(0, slots, k)

    def _deliver(self, done: List[_Request]) -> None:
        """Resolves the futures of complete requests (their slots are free already, but only this
        thread writes the answers, after this)."""
        if not done:
            return
        buf = self._buf
        idx = self._slots(done[0].slots if len(done) == 1 else list(chain.from_iterable(r.slots for r in done)))
        parts = [t.index_select(0, idx) for t in buf]
        if len(done) == 1:
            answers = [EarlyExitOutput(*parts)]
        else:
            sizes = [r.n for r in done]
            answers = [EarlyExitOutput(*a) for a in zip(*(t.split(sizes) for t in parts))]
        for req, answer in zip(done, answers):
            try:
                req.future.set_result(answer)
            except InvalidStateError:  # cancelled by its client meanwhile
                with self._lock:
                    self._completed -= 1
                    self._cancelled += 1

    def _fail(self, k: int, slots: torch.Tensor, n: int, err: Exception, start: float) -> None:
        slots_cpu = self._cpu(slots)
        with self._lock:
            victims = []
            for rid in set(map(self._owner.__getitem__, slots_cpu.tolist())):
                req = self._requests[rid]
                if not req.dead:
                    self._kill(req)
                    victims.append(req)
            self._leave(slots_cpu)
            self._failed += len(victims)
        self._record(k, n, clock() - start)
        what = f"stage {k} (or its exit / gate) raised on a batch of {n} samples from {len(victims)} requests: {err!r}"
        for req in victims:
            e = StageFailed(what, k)
            e.__cause__ = err
            try:
                req.future.set_exception(e)
            except InvalidStateError:
                pass

    def _record(self, k: int, n: int, seconds: float) -> None:
        with self._lock:
            self._stage_batches[k] += 1
            self._stage_samples[k] += n
            self._stage_seconds[k] += seconds
            self._recent[k].append(seconds)

    def _cancel_all(self) -> None:
        with self._lock:
            victims = [r for r in self._requests.values() if not r.dead]
            self._requests.clear()
            for q in self._queues:
                q.clear()
            self._queued = [0] * len(self._queues)
            self._pending = 0
            self._n_dead = 0
            self._cancelled += len(victims)
            self._closing = True
            self._room.notify_all()
            err = self._closed_error()
        for req in victims:
            e = EngineClosed(f"the engine was closed before this request was answered ({err})")
            e.__cause__ = err.__cause__
            try:
                req.future.set_exception(e)
            except InvalidStateError:
                pass


def _median(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[len(v) // 2]
