"""The model a training run starts from, for each architecture.

Every architecture is an ordinary sentence-transformers model, so the saved folder loads anywhere; the
asymmetric ones start with a ``Router`` (``query`` and ``document`` routes) and share what follows it.

- ``siamese``: the base model itself; both roles share every weight.
- ``asymmetric``: two untied copies of the base model.
- ``asymmetric-shared-projection`` (ADE-SPL, Dong et al. 2022): two copies, then one shared linear
  projection, initialised to the identity so training starts from the base model's embeddings.
- ``asymmetric-frozen-embeddings`` (ADE-FTE): two copies whose token embeddings are frozen, so both
  towers keep reading tokens the same way.
- ``light-query`` (KALE 2023): the document tower is the base model, frozen; the query tower keeps only
  its first ``query_layers`` layers. Documents keep the base model's fingerprint, so an existing index
  stays valid.

Example::

    built = build_training_model(TrainingConfig(data=..., output=..., architecture="light-query"))
    built.model.encode_query(["fast"])      # 3-layer query tower
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dual_encoder.errors import ConfigurationError
from dual_encoder.models import load_shared_model
from dual_encoder.towers import keep_first_layers

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dual_encoder.training.config import TrainingConfig


@dataclass
class TrainingModel:
    model: SentenceTransformer
    #: The untouched base model: the distillation teacher and the reference for fingerprints.
    base: SentenceTransformer
    asymmetric: bool
    frozen: list[str] = field(default_factory=list)


def build_training_model(config: TrainingConfig) -> TrainingModel:
    """A fresh, trainable model for ``config.architecture`` (the shared base model is never modified)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Router

    base = load_shared_model(config.base_model, trust_remote_code=config.trust_remote_code)
    if len(base) and isinstance(base[0], Router):
        raise ConfigurationError(
            f"Base model '{config.base_model}' is already asymmetric (it starts with a Router). Training starts "
            f"from a Siamese model; pass the model the towers were made from."
        )
    if config.max_seq_length is not None:
        base = copy.deepcopy(base)
        base.max_seq_length = config.max_seq_length
    if config.architecture == "siamese":
        model = copy.deepcopy(base)
        model.train()
        _set_prompts(model, config)
        return TrainingModel(model=model, base=base, asymmetric=False)

    query_base = base
    if config.query_model is not None:
        query_base = load_shared_model(config.query_model, trust_remote_code=config.trust_remote_code)
        if len(query_base) and isinstance(query_base[0], Router):
            raise ConfigurationError(f"query_model '{config.query_model}' is already asymmetric; pass a plain model.")
    query_modules, query_tail = _tower_and_tail(copy.deepcopy(query_base))
    document_modules, shared_after = _tower_and_tail(copy.deepcopy(base))
    if bool(query_tail) != bool(shared_after):
        raise ConfigurationError(
            "One tower normalises its embeddings and the other does not; their scores would not compare. Start both "
            "towers from models that agree on normalisation."
        )
    if config.architecture != "asymmetric-shared-projection":
        query_dimension, document_dimension = _output_dimension(query_modules), _output_dimension(document_modules)
        if query_dimension != document_dimension:
            raise ConfigurationError(
                f"The query tower outputs {query_dimension} dimensions and the document tower {document_dimension}; "
                f"their vectors could not be compared. Start the query tower from a model with {document_dimension} "
                f"dimensions, or add a Dense layer to it first."
            )
    frozen: list[str] = []
    if config.architecture == "light-query":
        query_modules, _ = _tower_and_tail(keep_first_layers(base, _checked_layers(base, config.query_layers)))
        for module in document_modules:
            module.requires_grad_(False)
        frozen.append("document tower")
    elif config.architecture == "asymmetric-frozen-embeddings":
        for tower in (query_modules, document_modules):
            _token_embeddings(tower[0]).requires_grad_(False)
        frozen.append("token embeddings of both towers")
    if config.architecture == "asymmetric-shared-projection":
        shared_after = [_identity_projection(query_modules, document_modules, Dense), *shared_after]

    router = Router.for_query_document(query_modules=query_modules, document_modules=document_modules)
    model = SentenceTransformer(modules=[router, *shared_after], device=str(base.device))
    model.similarity_fn_name = base.similarity_fn_name
    _set_prompts(model, config)
    if not isinstance(model[-1], Normalize) and isinstance(base[-1], Normalize):  # pragma: no cover - guard
        raise ConfigurationError("Internal error: the combined model lost its Normalize module.")
    model.train()
    return TrainingModel(model=model, base=base, asymmetric=True, frozen=frozen)


def _tower_and_tail(model: SentenceTransformer) -> tuple[list, list]:
    """Split a Siamese model into its tower and a trailing Normalize, which both routes then share."""
    from sentence_transformers.base.modules import Normalize

    modules = list(model)
    if modules and isinstance(modules[-1], Normalize):
        return modules[:-1], [Normalize()]
    return modules, []


def _checked_layers(base: SentenceTransformer, query_layers: int) -> int:
    layers = getattr(getattr(getattr(base[0], "auto_model", None), "encoder", None), "layer", None)
    if layers is not None and query_layers >= len(layers):
        raise ConfigurationError(
            f"light-query keeps the first query_layers layers of a {len(layers)}-layer model; {query_layers} would "
            f"not make the query tower lighter. Choose 1 to {len(layers) - 1}."
        )
    return query_layers


def _output_dimension(modules: list) -> int | None:
    for module in reversed(modules):
        for getter in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            if hasattr(module, getter):
                value = getattr(module, getter)()
                if value:
                    return int(value)
    return None


def _identity_projection(query_modules: list, document_modules: list, dense_class: Any) -> Any:
    import torch

    query_dimension, document_dimension = _output_dimension(query_modules), _output_dimension(document_modules)
    if query_dimension is None or query_dimension != document_dimension:
        raise ConfigurationError(
            f"asymmetric-shared-projection needs both towers to output the same dimension so one projection can "
            f"follow both; the query tower outputs {query_dimension} and the document tower {document_dimension}. "
            f"Use 'asymmetric' for towers of different sizes, or add a Dense layer to one of them first."
        )
    return dense_class(
        query_dimension,
        query_dimension,
        bias=True,
        activation_function=torch.nn.Identity(),
        init_weight=torch.eye(query_dimension),
        init_bias=torch.zeros(query_dimension),
    )


def _token_embeddings(transformer_module: Any) -> Any:
    backbone = getattr(transformer_module, "auto_model", None)
    embeddings = getattr(backbone, "embeddings", None) if backbone is not None else None
    if embeddings is None:
        raise ConfigurationError(
            f"asymmetric-frozen-embeddings needs a transformer with an 'embeddings' block; "
            f"{type(backbone).__name__} has none. Use 'asymmetric' instead."
        )
    return embeddings


def _set_prompts(model: SentenceTransformer, config: TrainingConfig) -> None:
    # Prompts are saved with the model, so the encoder that loads it applies them without being told.
    prompts = dict(model.prompts or {})
    if config.query_prompt is not None:
        prompts["query"] = config.query_prompt
    if config.document_prompt is not None:
        prompts["document"] = config.document_prompt
    model.prompts = prompts
