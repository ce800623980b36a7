"""Batches for in-batch negatives that hold no known false negative.

With in-batch negatives, every other document in a batch is a negative for each query. sentence-transformers'
``NoDuplicatesBatchSampler`` keeps equal texts apart, so a query never meets itself twice in a batch; it
cannot know that a *different* row's document is a judged positive of this query, which is common when
queries have many positives (documents relevant to several queries). This sampler reads the judgements:
a row joins a batch only if

- its query is not in the batch yet (at most one pair per query per batch, whatever its number of positives);
- none of its documents (positive and negatives) is already in the batch;
- none of its documents is a known positive of a query in the batch, and no document in the batch is a
  known positive of its query.

Rows that conflict wait for a later batch, in their shuffled order (as ``NoDuplicatesBatchSampler`` does).

Example::

    factory = QueryAwareSamplerFactory(rows, relevant)     # rows: (query id, document ids) per dataset row
    SentenceTransformerTrainingArguments(..., batch_sampler=factory)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any


def batches_without_false_negatives(
    order: list[int],
    rows: list[tuple[str, tuple[str, ...]]],
    relevant: dict[str, set[str]],
    batch_size: int,
    *,
    drop_last: bool = False,
) -> Iterator[list[int]]:
    """Batches of row indices, taken from ``order`` as described in the module docstring.

    ``rows[i]`` is ``(query id, document ids of row i)``; ``relevant`` maps a query id to its known positives.
    """
    remaining = list(order)
    while remaining:
        batch: list[int] = []
        queries: set[str] = set()
        documents: set[str] = set()
        forbidden: set[str] = set()  # known positives of the batch's queries
        deferred: list[int] = []
        for position, index in enumerate(remaining):
            if len(batch) == batch_size:
                deferred.extend(remaining[position:])
                break
            query, row_documents = rows[index]
            positives = relevant.get(query, set())
            if (
                query in queries
                or not documents.isdisjoint(row_documents)
                or not forbidden.isdisjoint(row_documents)
                or not positives.isdisjoint(documents)
            ):
                deferred.append(index)
                continue
            batch.append(index)
            queries.add(query)
            documents.update(row_documents)
            forbidden.update(positives)
        if not batch:  # pragma: no cover - a lone row never conflicts with an empty batch
            break
        if len(batch) < batch_size and drop_last:
            return
        yield batch
        remaining = deferred


class QueryAwareSamplerFactory:
    """A ``batch_sampler`` for ``SentenceTransformerTrainingArguments``: the dataset whose rows are ``rows``
    gets :func:`batches_without_false_negatives`; any other dataset (e.g. a distillation set) gets
    sentence-transformers' ``NoDuplicatesBatchSampler``. A module-level class, so the training arguments
    that hold it can be pickled into checkpoints."""

    def __init__(self, rows: list[tuple[str, tuple[str, ...]]], relevant: dict[str, set[str]]) -> None:
        self.rows = rows
        self.relevant = relevant

    def __repr__(self) -> str:
        return f"QueryAwareSamplerFactory({len(self.rows)} rows, {len(self.relevant)} queries)"

    def __call__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: Any = None,
        generator: Any = None,
        seed: int = 0,
    ) -> Any:
        from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

        options = {
            "batch_size": batch_size,
            "drop_last": drop_last,
            "valid_label_columns": valid_label_columns,
            "generator": generator,
            "seed": seed,
        }
        if "positive" in dataset.column_names and len(dataset) == len(self.rows):
            sampler = _query_aware_sampler_class()(dataset, **options)
            sampler.rows, sampler.relevant = self.rows, self.relevant
            return sampler
        return NoDuplicatesBatchSampler(dataset, **options)


@functools.cache
def _query_aware_sampler_class() -> type:
    import torch
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class QueryAwareBatchSampler(DefaultBatchSampler):
        rows: list[tuple[str, tuple[str, ...]]]
        relevant: dict[str, set[str]]

        def __iter__(self) -> Iterator[list[int]]:
            if self.generator is not None and self.seed is not None:
                self.generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.rows), generator=self.generator).tolist()
            yield from batches_without_false_negatives(
                order, self.rows, self.relevant, self.batch_size, drop_last=self.drop_last
            )

        def __len__(self) -> int:
            # As NoDuplicatesBatchSampler's: full batches; the trainer takes this many batches per epoch.
            full, rest = divmod(len(self.rows), self.batch_size)
            return full + (1 if rest and not self.drop_last else 0)

    return QueryAwareBatchSampler
