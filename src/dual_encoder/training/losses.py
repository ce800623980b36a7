"""The contrastive losses a run can use, built from their sentence-transformers implementations.

- ``mnrl``: MultipleNegativesRankingLoss. Each query is scored against its positive, every other document
  in the batch, and its hard negatives; a softmax over those scores is pushed towards the positive.
- ``cached-mnrl``: the same loss with GradCache, so a batch of 64 or more fits in the memory of 16.
- ``gist`` / ``cached-gist``: GISTEmbedLoss / CachedGISTEmbedLoss. The same in-batch softmax, but a guide
  model (the base model, frozen) scores every candidate first, and an in-batch or hard negative the guide
  scores above the query's positive is masked out: with many relevant documents per query, those are
  mostly unlabelled positives.
- ``triplet``: a margin between the cosine distance to the positive and to the negative; needs negatives.

Example::

    loss = build_loss("cached-mnrl", model, scale=20.0, mini_batch_size=16, margin=0.25)
    loss = build_loss("gist", model, scale=20.0, mini_batch_size=16, margin=0.25, guide=base_model)
"""

from __future__ import annotations

from typing import Any

from dual_encoder.errors import ConfigurationError


def build_loss(name: str, model: Any, *, scale: float, mini_batch_size: int, margin: float, guide: Any = None) -> Any:
    """The loss ``name`` for ``model``; ``guide`` is the frozen model the GIST losses filter negatives with."""
    from sentence_transformers.sentence_transformer import losses

    if name in ("gist", "cached-gist"):
        if guide is None:
            raise ConfigurationError(f"The {name} loss needs a guide model (the base model).")
        # The guide scores with the model's temperature, so its filter and the loss agree on one scale.
        if name == "gist":
            return losses.GISTEmbedLoss(model, guide, temperature=1.0 / scale)
        return losses.CachedGISTEmbedLoss(model, guide, temperature=1.0 / scale, mini_batch_size=mini_batch_size)

    if name == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, scale=scale)
    if name == "cached-mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=mini_batch_size)
    if name == "triplet":
        return losses.TripletLoss(model, distance_metric=losses.TripletDistanceMetric.COSINE, triplet_margin=margin)
    raise ConfigurationError(f"Unknown loss {name!r}; choose mnrl, cached-mnrl, gist, cached-gist or triplet.")


def uses_in_batch_negatives(name: str) -> bool:
    """In-batch negatives turn a duplicate text in a batch into a false negative: such losses need the
    no-duplicates batch sampler."""
    return name in ("mnrl", "cached-mnrl", "gist", "cached-gist")


def build_distillation_loss(model: Any) -> Any:
    """Mean squared error between the student's query embeddings and the teacher's (KALE-style)."""
    from sentence_transformers.sentence_transformer import losses

    return losses.MSELoss(model)
