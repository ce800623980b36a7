"""The Weaviate collection layout of a dual-encoder store, and the description that records its space.

A collection is created for one encoder: no vectorizer (vectors come from the dual encoder), an HNSW index
whose distance matches the similarity, and declared properties for the document id, the text, a blob,
the fingerprint meta keys and the meta fields you name. Its description records the embedding space of the
first embedded write (:func:`describe_stored_space`), so later writes and queries from another encoder are
refused.

Object layout (the same as weaviate-haystack's, so existing collections keep working): the object UUID is
``generate_uuid5(id)``, the id itself is the ``_original_id`` property, the text ``content``, meta keys are
flattened into properties, a Haystack blob is ``blob_data`` (base64) + ``blob_mime_type``; other extra fields
(a sparse embedding) are kept as JSON in ``_extra``.

Example::

    create_collection(client, "Articles", similarity="cosine", meta_fields={"year": "int"})
    space = parse_stored_space(client.collections.get("Articles").config.get().description)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

from dual_encoder.errors import ConfigurationError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY, StoredSpace
from dual_encoder_weaviate.scores import DISTANCE_METRIC, check_similarity

#: The name of the collection's one vector.
VECTOR_NAME = "default"
ID_PROPERTY = "_original_id"
CONTENT_PROPERTY = "content"
BLOB_DATA_PROPERTY = "blob_data"
BLOB_MIME_PROPERTY = "blob_mime_type"
EXTRA_PROPERTY = "_extra"
#: weaviate-haystack's collections declare a ``score`` property; it is never a document's meta.
LEGACY_SCORE_PROPERTY = "score"
#: Properties that hold the record itself, not its meta.
RECORD_PROPERTIES = (ID_PROPERTY, CONTENT_PROPERTY, BLOB_DATA_PROPERTY, BLOB_MIME_PROPERTY, EXTRA_PROPERTY)
#: Meta keys that cannot be property names as they are: the record's own properties and Weaviate's reserved
#: names. They are stored under :data:`META_ESCAPE` + key (see :func:`meta_property`).
RESERVED_NAMES = frozenset({*RECORD_PROPERTIES, LEGACY_SCORE_PROPERTY, "id", "_id", "_additional", "vector"})
#: Prefix of the property holding a reserved meta key (``id`` -> ``_meta_id``); keys that start with it are
#: prefixed too, so the mapping is reversible.
META_ESCAPE = "_meta_"


def meta_property(key: str) -> str:
    """The property that stores meta key ``key``: the key itself, or the escaped name of a reserved one."""
    return f"{META_ESCAPE}{key}" if key in RESERVED_NAMES or key.startswith(META_ESCAPE) else key


def meta_key(property_name: str) -> str:
    """The meta key stored in property ``property_name`` (the inverse of :func:`meta_property`)."""
    return property_name[len(META_ESCAPE) :] if property_name.startswith(META_ESCAPE) else property_name


#: Weaviate data types accepted in ``meta_fields``.
META_FIELD_TYPES = ("text", "text[]", "int", "int[]", "number", "number[]", "boolean", "boolean[]", "date", "date[]")
_DATA_TYPES = {
    "text": DataType.TEXT,
    "text[]": DataType.TEXT_ARRAY,
    "int": DataType.INT,
    "int[]": DataType.INT_ARRAY,
    "number": DataType.NUMBER,
    "number[]": DataType.NUMBER_ARRAY,
    "boolean": DataType.BOOL,
    "boolean[]": DataType.BOOL_ARRAY,
    "date": DataType.DATE,
    "date[]": DataType.DATE_ARRAY,
}
_VECTOR_DISTANCES = {"cosine": VectorDistances.COSINE, "dot": VectorDistances.DOT}

INITIAL_DESCRIPTION = "dual-encoder collection; the encoder fingerprint is recorded on the first embedded write"


def check_meta_fields(meta_fields: Mapping[str, str] | None) -> dict[str, str]:
    """``meta_fields`` as a dict, after checking every type is one Weaviate declares (a reserved meta key is
    declared under its escaped property name, :func:`meta_property`)."""
    checked = dict(meta_fields or {})
    for name, data_type in checked.items():
        if data_type not in META_FIELD_TYPES:
            raise ConfigurationError(
                f"meta_fields['{name}'] = {data_type!r} is not a Weaviate data type; use one of {META_FIELD_TYPES}."
            )
    return checked


def collection_properties(meta_fields: Mapping[str, str]) -> list[Property]:
    """The declared properties of a new collection."""
    exact = Tokenization.FIELD  # ids and fingerprints compare whole, never word by word
    properties = [
        Property(name=ID_PROPERTY, data_type=DataType.TEXT, tokenization=exact, index_searchable=False),
        Property(name=CONTENT_PROPERTY, data_type=DataType.TEXT),
        Property(name=BLOB_DATA_PROPERTY, data_type=DataType.BLOB),
        Property(name=BLOB_MIME_PROPERTY, data_type=DataType.TEXT, tokenization=exact, index_searchable=False),
        Property(name=EXTRA_PROPERTY, data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
        Property(name=DOCUMENT_SPACE_META_KEY, data_type=DataType.TEXT, tokenization=exact, index_searchable=False),
        Property(name=EMBEDDED_INPUT_META_KEY, data_type=DataType.TEXT, tokenization=exact, index_searchable=False),
    ]
    declared = {p.name for p in properties}
    for key, data_type in meta_fields.items():
        name = meta_property(key)
        if name not in declared:
            properties.append(Property(name=name, data_type=_DATA_TYPES[data_type]))
    return properties


def create_collection(
    client: Any,
    name: str,
    *,
    similarity: str,
    meta_fields: Mapping[str, str],
    settings: CollectionSettings | None = None,
) -> Any:
    """Create collection ``name`` for one encoder and return it (a ``weaviate.collections.Collection``)."""
    check_similarity(similarity)
    settings = settings or CollectionSettings()
    return client.collections.create(
        name=name,
        description=INITIAL_DESCRIPTION,
        # One self-provided vector named "default", the name under which the client returns any single vector.
        vector_config=Configure.Vectors.self_provided(
            name=VECTOR_NAME,
            vector_index_config=settings.vector_index_config(_VECTOR_DISTANCES[similarity]),
        ),
        **settings.create_arguments(),
        inverted_index_config=Configure.inverted_index(index_null_state=True, index_property_length=True),
        properties=collection_properties(check_meta_fields(meta_fields)),
    )


def vector_settings(config: Any) -> tuple[str | None, Any]:
    """``(vectorizer, vector index config)`` of a collection's config: its named vector, or the unnamed one of
    collections created by older clients (weaviate-haystack's among them)."""
    named = getattr(config, "vector_config", None) or {}
    if named:
        settings = named.get(VECTOR_NAME) or next(iter(named.values()))
        vectorizer = settings.vectorizer.vectorizer
        return getattr(vectorizer, "value", vectorizer), settings.vector_index_config
    vectorizer = getattr(config, "vectorizer", None)
    return getattr(vectorizer, "value", vectorizer), getattr(config, "vector_index_config", None)


def distance_metric_of(config: Any) -> str | None:
    """The HNSW distance (``"cosine"``, ``"dot"``...) of a collection's config."""
    index = vector_settings(config)[1]
    metric = getattr(index, "distance_metric", None)
    return getattr(metric, "value", metric)


def check_collection_similarity(config: Any, similarity: str, name: str) -> None:
    """Refuse a collection whose HNSW distance does not score with ``similarity``."""
    metric = distance_metric_of(config)
    if metric is not None and metric != DISTANCE_METRIC[similarity]:
        raise ConfigurationError(
            f"Weaviate collection '{name}' uses the {metric!r} distance, but this store was created with "
            f"similarity={similarity!r}. Use the similarity the collection was created with, or another collection."
        )


def describe_stored_space(space: StoredSpace) -> str:
    """A JSON text recording a stored space, kept as the collection's description."""
    return json.dumps(
        {
            "dual_encoder": {
                "document_space": space.document_space,
                "dimension": space.dimension,
                "similarity": space.similarity,
            }
        }
    )


def parse_stored_space(text: str | None) -> StoredSpace | None:
    """The space recorded by :func:`describe_stored_space`, or ``None`` when ``text`` records none."""
    try:
        record = json.loads(text or "")["dual_encoder"]
    except (ValueError, KeyError, TypeError):
        return None
    return StoredSpace(
        document_space=record.get("document_space"),
        dimension=record.get("dimension"),
        similarity=record.get("similarity"),
    )


#: The vector indexes a collection can use, with the settings each accepts (passed to ``Configure.VectorIndex``).
VECTOR_INDEX_OPTIONS = {
    "hnsw": (
        "ef",
        "ef_construction",
        "max_connections",
        "dynamic_ef_min",
        "dynamic_ef_max",
        "dynamic_ef_factor",
        "flat_search_cutoff",
        "vector_cache_max_objects",
        "cleanup_interval_seconds",
    ),
    "flat": ("vector_cache_max_objects",),
    "dynamic": ("threshold", "ef", "ef_construction", "max_connections", "vector_cache_max_objects"),
}
#: Vector compression methods, with the settings each accepts (passed to ``Configure.VectorIndex.Quantizer``).
COMPRESSION_OPTIONS = {
    "rq": ("bits", "rescore_limit", "cache", "training_limit", "centering"),
    "bq": ("rescore_limit", "cache"),
    "pq": ("segments", "centroids", "training_limit"),
    "sq": ("rescore_limit", "training_limit", "cache"),
}
#: Async replication timings, in milliseconds (the server's minimums: frequency 5000, while propagating 1000).
ASYNC_REPLICATION_OPTIONS = {
    "frequency_ms": "frequency",
    "frequency_while_propagating_ms": "frequency_while_propagating",
    "propagation_delay_ms": "propagation_delay",
}


@dataclass(frozen=True)
class CollectionSettings:
    """How a new collection is laid out across nodes and indexed (used only when the store creates it).

    :param replication_factor: Copies of every object, each on another node (at most the number of nodes).
    :param async_replication: Timing of the background repair that brings a node that was down up to date,
        in milliseconds: ``frequency_ms``, ``frequency_while_propagating_ms``, ``propagation_delay_ms`` (only
        objects older than the delay are repaired). Needs ``replication_factor`` > 1.
    :param shards: Desired number of shards (``None``: one per node); not with ``multi_tenancy``.
    :param multi_tenancy: One shard per tenant; every read and write names its tenant.
    :param auto_create_tenants: With ``multi_tenancy``: a write to a missing tenant creates it (else refused).
    :param vector_index: ``"hnsw"`` (default), ``"flat"`` (brute force, small tenants) or ``"dynamic"`` (flat,
        switching to HNSW past ``threshold`` objects; needs the server's ``ASYNC_INDEXING=true``).
    :param vector_index_options: The index's main settings (:data:`VECTOR_INDEX_OPTIONS`).
    :param compression: ``None``, ``"rq"`` (rotational quantization), ``"bq"``, ``"pq"`` or ``"sq"``.
    :param compression_options: The compression's settings (:data:`COMPRESSION_OPTIONS`), e.g. ``{"bits": 8}``.
    """

    replication_factor: int = 1
    async_replication: Mapping[str, int] | None = None
    shards: int | None = None
    multi_tenancy: bool = False
    auto_create_tenants: bool = True
    vector_index: str = "hnsw"
    vector_index_options: Mapping[str, Any] | None = None
    compression: str | None = None
    compression_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a whole number of at least 1, got {value!r}.")

        positive_int("replication_factor", self.replication_factor)
        if self.async_replication:
            if self.replication_factor < 2:
                raise ConfigurationError(
                    "async_replication needs replication_factor of 2 or more (it repairs copies on other nodes)."
                )
            unknown = sorted(set(self.async_replication) - set(ASYNC_REPLICATION_OPTIONS))
            if unknown:
                raise ConfigurationError(
                    f"Unknown async_replication setting(s) {unknown}; the settings are "
                    f"{list(ASYNC_REPLICATION_OPTIONS)} (milliseconds)."
                )
            for name, value in self.async_replication.items():
                positive_int(f"async_replication['{name}']", value)
        if self.shards is not None:
            positive_int("shards", self.shards)
            if self.multi_tenancy:
                raise ConfigurationError("shards cannot be set with multi_tenancy: every tenant is its own shard.")
        if self.vector_index not in VECTOR_INDEX_OPTIONS:
            raise ConfigurationError(
                f"vector_index must be one of {list(VECTOR_INDEX_OPTIONS)}, got {self.vector_index!r}."
            )
        unknown = sorted(set(self.vector_index_options or {}) - set(VECTOR_INDEX_OPTIONS[self.vector_index]))
        if unknown:
            raise ConfigurationError(
                f"Unknown {self.vector_index} index setting(s) {unknown}; it accepts "
                f"{list(VECTOR_INDEX_OPTIONS[self.vector_index])}."
            )
        if self.compression is not None:
            if self.compression not in COMPRESSION_OPTIONS:
                raise ConfigurationError(
                    f"compression must be None or one of {list(COMPRESSION_OPTIONS)}, got {self.compression!r}."
                )
            if self.vector_index == "flat" and self.compression not in ("rq", "bq"):
                raise ConfigurationError(
                    f"The flat index compresses with 'rq' or 'bq' only, not {self.compression!r}; use hnsw for it."
                )
        elif self.compression_options:
            raise ConfigurationError("compression_options were given without compression; set compression too.")
        unknown = sorted(set(self.compression_options or {}) - set(COMPRESSION_OPTIONS.get(self.compression or "", ())))
        if unknown:
            raise ConfigurationError(
                f"Unknown {self.compression} compression setting(s) {unknown}; it accepts "
                f"{list(COMPRESSION_OPTIONS[self.compression])}."  # type: ignore[index]
            )
        if self.compression == "rq" and (self.compression_options or {}).get("bits", 8) not in (1, 8):
            raise ConfigurationError("RQ compression takes bits=8 (default) or bits=1.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "replication_factor": self.replication_factor,
            "async_replication": dict(self.async_replication) if self.async_replication else None,
            "shards": self.shards,
            "multi_tenancy": self.multi_tenancy,
            "auto_create_tenants": self.auto_create_tenants,
            "vector_index": self.vector_index,
            "vector_index_options": dict(self.vector_index_options) if self.vector_index_options else None,
            "compression": self.compression,
            "compression_options": dict(self.compression_options) if self.compression_options else None,
        }

    def quantizer(self, for_index: str) -> Any:
        if self.compression is None:
            return None
        options = dict(self.compression_options or {})
        if for_index == "flat":
            options.pop("training_limit", None)  # the flat index trains nothing
        return getattr(Configure.VectorIndex.Quantizer, self.compression)(**options)

    def vector_index_config(self, distance: VectorDistances) -> Any:
        options = dict(self.vector_index_options or {})
        if self.vector_index == "flat":
            return Configure.VectorIndex.flat(distance_metric=distance, quantizer=self.quantizer("flat"), **options)
        if self.vector_index == "dynamic":
            threshold = options.pop("threshold", None)
            cache = options.pop("vector_cache_max_objects", None)
            flat_quantizer = self.quantizer("flat") if self.compression in ("rq", "bq") else None
            return Configure.VectorIndex.dynamic(
                distance_metric=distance,
                threshold=threshold,
                hnsw=Configure.VectorIndex.hnsw(
                    distance_metric=distance,
                    quantizer=self.quantizer("hnsw"),
                    vector_cache_max_objects=cache,
                    **options,
                ),
                flat=Configure.VectorIndex.flat(
                    distance_metric=distance, quantizer=flat_quantizer, vector_cache_max_objects=cache
                ),
            )
        return Configure.VectorIndex.hnsw(distance_metric=distance, quantizer=self.quantizer("hnsw"), **options)

    def create_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``client.collections.create`` beside the vector config."""
        arguments: dict[str, Any] = {}
        if self.replication_factor > 1 or self.async_replication:
            timing = {ASYNC_REPLICATION_OPTIONS[k]: v for k, v in (self.async_replication or {}).items()}
            arguments["replication_config"] = Configure.replication(
                factor=self.replication_factor,
                async_config=Configure.Replication.async_config(**timing) if timing else None,
            )
        if self.shards is not None:
            arguments["sharding_config"] = Configure.sharding(desired_count=self.shards)
        if self.multi_tenancy:
            arguments["multi_tenancy_config"] = Configure.multi_tenancy(
                enabled=True, auto_tenant_creation=self.auto_create_tenants, auto_tenant_activation=True
            )
        return arguments
