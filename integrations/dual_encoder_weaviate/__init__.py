"""Weaviate for dual encoders, with no Haystack or LangChain: a store, its server tool and its CLI.

- :class:`~dual_encoder_weaviate.store.WeaviateStore`: a Weaviate collection as a ``dual_encoder.stores.Store``
  (the Haystack and LangChain adapters wrap it);
- :class:`~dual_encoder_weaviate.collection.CollectionSettings`: replication, shards, tenants, vector index and
  compression of a collection the store creates;
- :mod:`dual_encoder_weaviate.server`: build and run a local Weaviate node, or a cluster of several
  (:class:`~dual_encoder_weaviate.server.WeaviateCluster`), with no Docker;
- :data:`~dual_encoder_weaviate.keyword.KEYWORD_CONFIG_LIKE_WEAVIATE`: embedded-store keyword settings that score
  like Weaviate's BM25;
- ``dual-encoder weaviate start|stop|status`` (:mod:`dual_encoder_weaviate.cli`) and the ``weaviate`` store
  plug-in (:func:`~dual_encoder_weaviate.store.open_weaviate_store`), found through entry points.

The store needs ``weaviate-client`` (``pip install 'dual-encoder-retrieval[weaviate]'``); the server tool, the
keyword settings and the CLI do not.

Example::

    from dual_encoder_weaviate import WeaviateStore

    store = WeaviateStore(url="http://127.0.0.1:8080", collection="Articles")
    print(store.count())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dual_encoder._optional import requires_extra
from dual_encoder_weaviate.errors import (
    PartialWriteError,
    ReplicaUnavailableError,
    TenantNotFoundError,
    WeaviateUnavailableError,
)
from dual_encoder_weaviate.keyword import KEYWORD_CONFIG_LIKE_WEAVIATE
from dual_encoder_weaviate.server import WeaviateCluster, WeaviateServer

if TYPE_CHECKING:
    from dual_encoder_weaviate.collection import CollectionSettings
    from dual_encoder_weaviate.store import WeaviateStore

__all__ = [
    "KEYWORD_CONFIG_LIKE_WEAVIATE",
    "CollectionSettings",
    "PartialWriteError",
    "ReplicaUnavailableError",
    "TenantNotFoundError",
    "WeaviateCluster",
    "WeaviateServer",
    "WeaviateStore",
    "WeaviateUnavailableError",
]


def __getattr__(name: str) -> type:
    # The Weaviate client is imported only by those who use the store (the server tool and CLI do not need it).
    if name not in ("WeaviateStore", "CollectionSettings"):
        raise AttributeError(name)
    with requires_extra("weaviate", package="weaviate-client", extra="weaviate", needed_by=f"{__name__}.{name}"):
        if name == "WeaviateStore":
            from dual_encoder_weaviate.store import WeaviateStore

            return WeaviateStore
        from dual_encoder_weaviate.collection import CollectionSettings

        return CollectionSettings
