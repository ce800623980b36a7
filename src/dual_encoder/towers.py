"""Building asymmetric encoders from towers.

An asymmetric dual encoder is saved as an ordinary sentence-transformers model whose first module is a
``Router`` with a ``query`` and a ``document`` route; modules after the Router (here a ``Normalize``) are
shared by both routes. Any loader of this package then treats it as asymmetric.

Example: a fast query tower cut to the first 3 layers of all-MiniLM-L6-v2, with the full model for
documents::

    document_tower = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"))
    query_tower = keep_first_layers(document_tower, 3)
    model = combine_towers(query_tower=query_tower, document_tower=document_tower)
    model.save("minilm-3l-query")
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from dual_encoder.errors import ConfigurationError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


def combine_towers(*, query_tower: SentenceTransformer, document_tower: SentenceTransformer) -> SentenceTransformer:
    """One asymmetric model from two Siamese ones (deep copies; the inputs are not changed).

    Both towers must produce embeddings of the same dimension and agree on normalisation. The query
    tower's ``query`` prompt and the document tower's document prompt are kept; the similarity function is
    the document tower's.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Router

    for name, tower in (("query_tower", query_tower), ("document_tower", document_tower)):
        if len(tower) and isinstance(tower[0], Router):
            raise ConfigurationError(f"{name} is already asymmetric (it starts with a Router); pass a plain model.")
    query_dimension = query_tower.get_embedding_dimension()
    document_dimension = document_tower.get_embedding_dimension()
    if query_dimension != document_dimension:
        raise ConfigurationError(
            f"The towers produce embeddings of different sizes (query {query_dimension}, document "
            f"{document_dimension}); their vectors could not be compared. Add a Dense projection to one tower "
            f"so both output the same dimension."
        )
    query_modules: list[Any] = list(copy.deepcopy(query_tower))
    document_modules: list[Any] = list(copy.deepcopy(document_tower))
    query_normalizes = isinstance(query_modules[-1], Normalize)
    document_normalizes = isinstance(document_modules[-1], Normalize)
    if query_normalizes != document_normalizes:
        raise ConfigurationError(
            "One tower normalises its embeddings and the other does not; scores would mix two scales. Add or "
            "remove a Normalize module so both towers agree."
        )
    shared = []
    if document_normalizes:
        query_modules, document_modules, shared = query_modules[:-1], document_modules[:-1], [Normalize()]
    router = Router.for_query_document(query_modules=query_modules, document_modules=document_modules)
    prompts = {"query": query_tower.prompts.get("query", "") or ""}
    prompts["document"] = next(
        (document_tower.prompts[name] or "" for name in _DOCUMENT_PROMPT_NAMES if name in document_tower.prompts), ""
    )
    model = SentenceTransformer(modules=[router, *shared], prompts=prompts, device=str(document_tower.device))
    model.similarity_fn_name = document_tower.similarity_fn_name
    return model


def keep_first_layers(model: SentenceTransformer, num_layers: int) -> SentenceTransformer:
    """A deep copy of ``model`` whose transformer keeps only its first ``num_layers`` layers."""
    import torch

    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigurationError(f"num_layers must be a positive integer, got {num_layers!r}.")
    copied = copy.deepcopy(model)
    transformer = copied[0]
    backbone = getattr(transformer, "auto_model", None)
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigurationError(
            f"Cannot cut layers of a {type(backbone).__name__}: only BERT-style encoders (encoder.layer) are supported."
        )
    if num_layers > len(layers):
        raise ConfigurationError(f"The model has {len(layers)} layers; cannot keep {num_layers}.")
    assert encoder is not None and backbone is not None  # both exist: ``layers`` was found through them
    encoder.layer = torch.nn.ModuleList(list(layers)[:num_layers])
    backbone.config.num_hidden_layers = num_layers
    return copied
