"""Evaluation spread over processes (issue 26): the box (or mask) search of each batch of CAMs in
`--workers` processes of a rank, while the rank computes the next batch's CAMs; under torchrun the ranks
split the images first (data.sampler.ShardSampler) and evaluation.evaluate_model gathers them.

    scorer = BatchScorer(score_batch, new_evaluators, ctx, workers)
    for batch in ...: scorer.submit(batch)          # numpy arrays and ids: cheap to send
    evaluators, records, samples = scorer.result()

The results equal one process's bit for bit: every evaluator's state is a sum of counts per threshold
(integers), which merge adds up in any order (metrics.BoxEvaluator.merge / MaskEvaluator.merge), and
each image's record is computed by the same code from the same map; the batches come back in the order
they were submitted. workers=1 scores inline into one set of evaluators (no process, no copy).
"""
from __future__ import annotations

from collections import deque

_CONTEXT = None   # a worker's (score_batch, new_evaluators, ctx), inherited through fork


def _init(context) -> None:
    global _CONTEXT
    _CONTEXT = context


def _score(job):
    """One batch in a worker: a fresh set of evaluators, merged by the parent."""
    batch, first = job
    score_batch, new_evaluators, ctx = _CONTEXT
    evaluators = new_evaluators(ctx)
    records, samples = score_batch(ctx, batch, evaluators, first)
    return evaluators, records, samples


class BatchScorer:
    """score_batch(ctx, batch, evaluators, first) -> (records, samples) and new_evaluators(ctx) -> list
    (None entries allowed): evaluation.py's. At most 2 x workers batches wait at a time (bounded memory)."""

    def __init__(self, score_batch, new_evaluators, ctx: dict, workers: int = 1):
        self.score_batch, self.new_evaluators, self.ctx = score_batch, new_evaluators, ctx
        self.workers, self.seen = max(1, int(workers)), 0
        self.records, self.samples, self.parts = [], [], []
        self.pending: deque = deque()
        if self.workers == 1:
            self.evaluators, self.pool = new_evaluators(ctx), None
        else:
            from concurrent.futures import ProcessPoolExecutor

            from .scoremaps import _pool_context

            self.evaluators = None
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_pool_context(), initializer=_init,
                                            initargs=((score_batch, new_evaluators, ctx),))

    def submit(self, batch) -> None:
        """batch: (ids, labels, predictions, GT-class CAMs, predicted-class CAMs or None), in pass order."""
        first, self.seen = self.seen, self.seen + len(batch[0])
        if self.pool is None:
            records, samples = self.score_batch(self.ctx, batch, self.evaluators, first)
            self.records += records
            self.samples += samples
            return
        self.pending.append(self.pool.submit(_score, (batch, first)))
        while len(self.pending) > 2 * self.workers:
            self._collect(self.pending.popleft())

    def _collect(self, future) -> None:
        evaluators, records, samples = future.result()
        self.parts.append(evaluators)
        self.records += records
        self.samples += samples

    def result(self) -> tuple[list, list, list]:
        """(evaluators, per-image records, overlay samples), all batches in submission order."""
        if self.pool is not None:
            try:
                while self.pending:
                    self._collect(self.pending.popleft())
            finally:
                self.pool.shutdown(cancel_futures=True)
            empty = self.new_evaluators(self.ctx)
            self.evaluators = [None if e is None else type(e).merge([e] + [p[k] for p in self.parts])
                               for k, e in enumerate(empty)]
        return self.evaluators, self.records, self.samples
