"""A Weaviate collection as a :class:`~dual_encoder.stores.Store`, through weaviate-client v4's typed API.

:class:`WeaviateStore` implements the store contract's primitives (the fingerprint guard, the unchanged-
document skip and validation are the contract's): writes go out in fixed batches with ``insert_many`` (a
refused object is named with Weaviate's reason, a lost server fails within seconds and names the documents
that may not be stored); reads use ``fetch_objects`` by id, searches ``near_vector`` with the distance
converted to the similarity (:mod:`dual_encoder_weaviate.scores`), Weaviate's BM25 for keyword search and
its native hybrid search for :meth:`WeaviateStore.hybrid_search`.

The connection opens on first use (so a store can be built where the server is not reachable yet), once,
from any thread; an unreachable server fails within ``timeout`` seconds with a message naming the URL.

Example::

    store = WeaviateStore(url="http://127.0.0.1:8080", collection="Articles", meta_fields={"year": "int"})
    store.upsert([StoredRecord(id="a", content="Paris is in France.", meta=meta, embedding=vector)])
    for hit in store.vector_search(query_vector, top_k=5, filters={"field": "meta.year", "operator": ">=",
                                                                   "value": 2020}).hits:
        print(hit.record.id, hit.score)
    store.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import numpy as np

from dual_encoder.errors import ConfigurationError, DualEncoderError, InvalidDocumentError
from dual_encoder.filters import compile_filter
from dual_encoder.fingerprint import EMBEDDED_INPUT_META_KEY, StoredSpace
from dual_encoder.stores import DuplicatePolicy, SearchHit, SearchResult, Store, StoredRecord, WriteSummary
from dual_encoder_weaviate.collection import (
    BLOB_DATA_PROPERTY,
    BLOB_MIME_PROPERTY,
    CONTENT_PROPERTY,
    EXTRA_PROPERTY,
    ID_PROPERTY,
    INITIAL_DESCRIPTION,
    LEGACY_SCORE_PROPERTY,
    CollectionSettings,
    check_collection_similarity,
    check_meta_fields,
    create_collection,
    describe_stored_space,
    meta_key,
    meta_property,
    parse_stored_space,
)
from dual_encoder_weaviate.errors import (
    PartialWriteError,
    ReplicaUnavailableError,
    TenantNotFoundError,
    WeaviateUnavailableError,
)
from dual_encoder_weaviate.filters import property_name, to_weaviate_filter
from dual_encoder_weaviate.scores import check_similarity, score_from_distance

#: Objects per lookup or delete by id: below Weaviate's default cap on one query's results (10,000).
ID_CHUNK = 1000
#: Objects per page when listing a whole collection (cursor API).
PAGE_SIZE = 1000
#: Weaviate's default ``QUERY_MAXIMUM_RESULTS``: one filtered query returns at most this many objects.
QUERY_MAXIMUM_RESULTS = 10_000
DEFAULT_GRPC_PORT = 50051
#: Weaviate property names (GraphQL names).
_PROPERTY_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
#: Messages of client errors that mean the server could not be reached or went away.
_TRANSPORT_MARKERS = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "Connection refused",
    "Socket closed",
    "failed to connect",
    "Channel closed",
    "RST_STREAM",
    "Connection reset",
    "timed out",
    "ConnectError",
    "Server disconnected",
)


CONSISTENCY_LEVELS = ("ONE", "QUORUM", "ALL")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Server messages that mean too few replicas answered for the consistency level.
_REPLICA_MARKERS = ("consistency level", "enough replicas", "cannot achieve", "not enough", "no replica")
#: Server messages that mean the node knows the collection from the cluster's schema but has not opened its
#: own copy yet (just after the collection was created, or while the node loads it): this passes in moments.
_INDEX_NOT_LOADED_MARKERS = ("non-existing index", "local index")
#: How long a call waits, in all, for a node to open a collection it already knows.
INDEX_LOAD_WAIT_SECONDS = 15.0
#: Server messages that mean the tenant is missing (or the request named none).
_TENANT_MARKERS = ("not found", "does not exist", "without tenant", "no tenant")
#: Set while this store runs a client call: the client then does not retry an unavailable node with backoff
#: (about a minute in all), so the store can fail over to the next node, or fail, within seconds.
_FAIL_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("dual_encoder_weaviate_fail_fast", default=False)


def _install_fail_fast_retry() -> None:
    """Make weaviate-client's gRPC retry-with-backoff give up at once inside this store's calls (only there:
    other users of the client in the process keep its behaviour)."""
    import weaviate.connect.v4 as connection
    from weaviate.exceptions import WeaviateRetryError
    from weaviate.retry import _Retry

    if getattr(connection._Retry, "_dual_encoder_fail_fast", False):
        return

    class _FailFastRetry(_Retry):
        _dual_encoder_fail_fast = True

        def with_exponential_backoff(  # type: ignore[override]
            self, count: int, error: str, f: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if not _FAIL_FAST.get():
                return super().with_exponential_backoff(count, error, f, *args, **kwargs)
            from grpc import RpcError, StatusCode

            try:
                return f(*args, **kwargs)
            except RpcError as rpc_error:
                if rpc_error.code() != StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise
                raise WeaviateRetryError(f"{error}: node unavailable ({rpc_error})", count) from rpc_error

    connection._Retry = _FailFastRetry  # type: ignore[misc]


class WeaviateRequestError(DualEncoderError, RuntimeError):
    """Weaviate answered but refused a request (a filter on a property of another type, a bad option...)."""


class WeaviateStore(Store):
    """A Weaviate collection created for one dual encoder.

    Vector search uses the collection's HNSW index (``method="approximate"``); ``exact=True`` reads every
    matching vector and scores it here (``method="exact"``, for reference runs on small collections).

    :param url: REST URL (``http://host:port``), or a function returning it (called on first use); ``None``
        reads ``WEAVIATE_URL`` on first use.
    :param collection: The collection (created when missing; Weaviate capitalises the first letter).
    :param similarity: ``"cosine"`` or ``"dot"``; must match the encoder (and an existing collection's distance).
    :param meta_fields: Meta fields to declare when the collection is created, name to Weaviate data type
        (``text``, ``int``, ``number``, ``boolean``, ``date`` or a ``[]`` list of one). Declared types make
        range filters reliable; undeclared meta is typed by Weaviate's auto-schema on first write.
    :param api_key: API key, or a function returning it (``None``/empty: none) called on first use.
    :param api_key_env: Without ``api_key``: the environment variable holding the key, if set.
    :param grpc_port: gRPC port; ``None`` reads ``WEAVIATE_GRPC_PORT``, else 50051.
    :param timeout: Seconds to wait for Weaviate to answer a connection attempt (queries may take 3x, inserts
        6x); an unreachable server fails within that bound.
    :param batch_size: Objects per ``insert_many`` request.
    :param consistency_level: ``"ONE"``, ``"QUORUM"`` or ``"ALL"``: how many replicas must answer a read or
        acknowledge a write (``None``: the server's default, QUORUM). Only matters with replication.
    :param tenant: With a multi-tenant collection, the tenant every read and write of this store uses
        (:meth:`with_tenant` gives a store bound to another one).
    :param settings: How the collection is created when missing (replication, shards, multi-tenancy, vector
        index, compression): a :class:`~dual_encoder_weaviate.collection.CollectionSettings` or its ``to_dict()``.

    ``url`` may name several nodes of one cluster, comma-separated (``http://127.0.0.1:8080,http://127.0.0.1:8081``)
    with their gRPC ports in ``grpc_port`` (a list, or comma-separated, in the same order; one port for all).
    When the node in use goes away, the call is sent again to the next node (reads and writes are idempotent); a
    call fails only when no node answers, and within seconds (the client's own retry-with-backoff on an unavailable
    node is bypassed for this store's calls).
    """

    supports_keyword_search = True
    supports_tenants = True
    supports_native_hybrid_search = True

    def __init__(
        self,
        *,
        url: str | Callable[[], str | None] | None = None,
        collection: str = "DualEncoderDocuments",
        similarity: str = "cosine",
        meta_fields: Mapping[str, str] | None = None,
        api_key: str | Callable[[], str | None] | None = None,
        api_key_env: str | None = "WEAVIATE_API_KEY",
        grpc_port: int | str | Sequence[int] | None = None,
        timeout: float = 10.0,
        batch_size: int = 500,
        consistency_level: str | None = None,
        tenant: str | None = None,
        settings: CollectionSettings | Mapping[str, Any] | None = None,
    ) -> None:
        if not collection or not isinstance(collection, str):
            raise ConfigurationError(f"collection must be a non-empty name, got {collection!r}.")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}.")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout}.")
        if consistency_level is not None and str(consistency_level).upper() not in CONSISTENCY_LEVELS:
            raise ConfigurationError(
                f"consistency_level must be one of {list(CONSISTENCY_LEVELS)} (or None for the server's default), got "
                f"{consistency_level!r}."
            )
        if isinstance(settings, Mapping):
            settings = CollectionSettings(**{k: v for k, v in settings.items() if v is not None})
        self.settings = settings or CollectionSettings()
        if tenant is not None and (not isinstance(tenant, str) or not _TENANT_NAME.match(tenant)):
            raise ConfigurationError(
                f"tenant must be a name of letters, digits, '_' and '-' (at most 64), got {tenant!r}."
            )
        self.consistency_level = str(consistency_level).upper() if consistency_level is not None else None
        self.tenant = tenant
        self.similarity = check_similarity(similarity)
        self.collection_name = collection
        self.meta_fields = check_meta_fields(meta_fields)
        self.url = url
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.grpc_port = grpc_port
        self.timeout = timeout
        self.batch_size = batch_size
        self._client: Any = None
        self._collection: Any = None
        self._connect_lock = threading.Lock()
        self._space: StoredSpace | None = None
        self._property_types: dict[str, str] | None = None
        self._resolved_url: str | None = None
        self._resolved_grpc_port: int | None = None
        self._node = 0  # index of the endpoint in use; advances when a node goes away
        self._config: Any = None  # the collection's config once read: reconnecting then needs no schema read
        self._tenant_views: dict[str, WeaviateStore] = {}  # with_tenant's stores, kept so each connects once
        # A multi-tenant collection opened without a tenant: its configuration and tenants can be managed, but
        # every read and write of documents is refused (they would need a tenant).
        self._tenant_required = False

    @property
    def location(self) -> str:  # type: ignore[override]
        tenant = f" (tenant '{self.tenant}')" if self.tenant else ""
        return f"Weaviate collection '{self.collection_name}'{tenant}"

    def with_tenant(self, tenant: str) -> WeaviateStore:
        """A store with the same settings bound to ``tenant`` of the same (multi-tenant) collection; it opens its
        own connection on first use. Asking again for the same tenant returns the same store (so a tenant given
        per query or per write connects once); this store itself for its own tenant. :meth:`close` closes them.

        :raises ConfigurationError: a tenant name Weaviate would refuse (letters, digits, ``_`` and ``-``).
        """
        if tenant == self.tenant:
            return self
        with self._connect_lock:
            view = self._tenant_views.get(tenant)
            if view is None:
                view = self._tenant_views[tenant] = self._bound_to(tenant)
            return view

    def _bound_to(self, tenant: str) -> WeaviateStore:
        return WeaviateStore(
            url=self.url,
            collection=self.collection_name,
            similarity=self.similarity,
            meta_fields=self.meta_fields,
            api_key=self.api_key,
            api_key_env=self.api_key_env,
            grpc_port=self.grpc_port,
            timeout=self.timeout,
            batch_size=self.batch_size,
            consistency_level=self.consistency_level,
            tenant=tenant,
            settings=self.settings,
        )

    def tenants(self) -> list[str]:
        """The names of the collection's tenants (empty when it is not multi-tenant). Works on a store bound to no
        tenant too."""
        base = self._call("read the configuration", "config.get")
        if not base.multi_tenancy_config.enabled:
            return []
        return sorted(self._call("list tenants", self._base_collection().tenants.get))

    def create_tenant(self, tenant: str) -> None:
        """Create ``tenant`` (an existing one is left as it is): the way to add tenants to a collection created with
        ``auto_create_tenants=False``, whose writes to a missing tenant are refused. Works on a store bound to no
        tenant too.

        :raises ConfigurationError: a name Weaviate would refuse (letters, digits, ``_`` and ``-``).
        """
        if not isinstance(tenant, str) or not _TENANT_NAME.match(tenant):
            raise ConfigurationError(
                f"tenant must be a name of letters, digits, '_' and '-' (at most 64), got {tenant!r}."
            )
        if tenant not in self.tenants():
            self._call(f"create tenant '{tenant}'", self._base_collection().tenants.create, [tenant])

    def delete_tenant(self, tenant: str) -> None:
        """Delete ``tenant`` and every document it holds (other tenants are untouched). Works on a store bound to
        no tenant too."""
        self._call(f"delete tenant '{tenant}'", self._base_collection().tenants.remove, [tenant])

    def _base_collection(self) -> Any:
        self.collection  # noqa: B018 - connects
        return self._client.collections.get(self.collection_name)

    # ------------------------------------------------------------------------------------ connection
    def endpoints(self) -> list[tuple[str, int]]:
        """``(REST URL, gRPC port)`` of every node this store may use, in order of preference."""
        urls = [part.strip() for part in self.resolve_url().split(",") if part.strip()]
        ports = self.resolve_grpc_ports()
        if len(ports) == 1:
            ports = ports * len(urls)
        if len(ports) != len(urls):
            raise ConfigurationError(
                f"{len(urls)} Weaviate URL(s) but {len(ports)} gRPC port(s): give one gRPC port per URL, in the same "
                f"order (or one port for all)."
            )
        return list(zip(urls, ports))

    def resolve_url(self) -> str:
        """The REST URL(s) (``url``, or ``WEAVIATE_URL``); a ``ConfigurationError`` says how to set it."""
        url = self.url() if callable(self.url) else self.url
        url = url or (os.environ.get("WEAVIATE_URL") if self.url is None else None)
        if not url:
            raise ConfigurationError(
                "No Weaviate URL: set WEAVIATE_URL (for example http://127.0.0.1:8080) or pass url=..."
            )
        return url

    def resolve_grpc_port(self) -> int:
        """The gRPC port of the first node."""
        return self.resolve_grpc_ports()[0]

    def resolve_grpc_ports(self) -> list[int]:
        given: Any = self.grpc_port
        if given is None:
            given = os.environ.get("WEAVIATE_GRPC_PORT") or DEFAULT_GRPC_PORT
        if isinstance(given, str):
            given = [part for part in given.split(",") if part.strip()]
        elif isinstance(given, int):
            given = [given]
        try:
            return [int(port) for port in given]
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"The gRPC port must be a port number or a comma-separated list of them, got {given!r} (grpc_port or "
                f"WEAVIATE_GRPC_PORT)."
            ) from None

    def _resolve_api_key(self) -> str | None:
        if self.api_key is not None:
            return (self.api_key() if callable(self.api_key) else self.api_key) or None
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

    @property
    def client(self) -> Any:
        """The connected ``weaviate.WeaviateClient`` (connects on first use)."""
        self.collection  # noqa: B018 - connecting also makes sure the collection exists
        return self._client

    @property
    def collection(self) -> Any:
        """The ``weaviate.collections.Collection`` (created on first use when missing)."""
        collection = self._collection
        if collection is not None:
            return collection
        with self._connect_lock:
            if self._collection is None:  # another thread may have connected while this one waited
                self._connect()
            return self._collection

    def _connect(self) -> None:
        _install_fail_fast_retry()
        endpoints = self.endpoints()
        failures = []
        for attempt in range(len(endpoints)):
            index = (self._node + attempt) % len(endpoints)
            try:
                self._connect_to(*endpoints[index])
            except WeaviateUnavailableError as error:
                failures.append(str(error))
                continue
            self._node = index
            return
        if len(failures) == 1:
            raise WeaviateUnavailableError(failures[0])
        raise WeaviateUnavailableError(
            f"No node of the Weaviate cluster answered ({len(endpoints)} tried):\n" + "\n".join(failures)
        )

    def _connect_to(self, url: str, grpc_port: int) -> None:
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        self._resolved_url, self._resolved_grpc_port = url, grpc_port
        parts = urlsplit(url if "://" in url else f"http://{url}")
        secure = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        key = self._resolve_api_key()
        client = None
        try:
            client = weaviate.connect_to_custom(
                http_host=host,
                http_port=parts.port or (443 if secure else 80),
                http_secure=secure,
                grpc_host=host,
                grpc_port=grpc_port,
                grpc_secure=secure,
                auth_credentials=Auth.api_key(key) if key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(init=self.timeout, query=3 * self.timeout, insert=6 * self.timeout)
                ),
                # Failing over: the startup checks ask /ready, which a live node denies while it still suspects a
                # dead peer; the next call shows soon enough whether this node answers.
                skip_init_checks=self._config is not None,
            )
            if self._config is not None:
                # Schema reads wait for a Raft leader (seconds after a node dies, forever without a quorum), while
                # reads and writes of objects do not: a known collection is opened without asking the schema.
                base, config = client.collections.get(self.collection_name), self._config
            else:
                base = self._open_collection(client)
                config = base.config.get()
        except ConfigurationError:
            if client is not None:
                client.close()
            raise
        except Exception as error:  # the client raises several unrelated types for one cause
            if client is not None:
                client.close()
            raise WeaviateUnavailableError(
                f"Cannot use Weaviate at {url} (gRPC port {grpc_port}) for collection '{self.collection_name}': "
                f"{type(error).__name__}: {error}. Check that the server runs (for a local one: `dual-encoder "
                f"weaviate start`), that WEAVIATE_URL / WEAVIATE_GRPC_PORT point to it, that WEAVIATE_API_KEY "
                f"is set if it requires a key, and, for a cluster, that a majority of its nodes is up (reading the "
                f"schema needs a Raft leader)."
            ) from error
        check_collection_similarity(config, self.similarity, self.collection_name)
        multi_tenant = bool(getattr(config.multi_tenancy_config, "enabled", False))
        self._tenant_required = multi_tenant and not self.tenant
        if self.tenant and not multi_tenant:
            client.close()
            raise TenantNotFoundError(
                f"Weaviate collection '{self.collection_name}' is not multi-tenant, so it has no tenant "
                f"'{self.tenant}'. Drop tenant=..., or use a collection created with multi_tenancy=True."
            )
        self._remember_config(config)
        self._config = config
        collection = base.with_tenant(self.tenant) if self.tenant else base
        if self.consistency_level:
            from weaviate.classes.config import ConsistencyLevel

            collection = collection.with_consistency_level(ConsistencyLevel[self.consistency_level])
        self._client, self._collection = client, collection

    def _open_collection(self, client: Any) -> Any:
        if not client.collections.exists(self.collection_name):
            try:
                return create_collection(
                    client,
                    self.collection_name,
                    similarity=self.similarity,
                    meta_fields=self.meta_fields,
                    settings=self.settings,
                )
            except Exception:
                # Another client may have created it between the check and the create.
                if not client.collections.exists(self.collection_name):
                    raise
        return client.collections.get(self.collection_name)

    def _remember_config(self, config: Any) -> None:
        self._property_types = {p.name: _data_type_name(p.data_type) for p in config.properties}
        recorded = parse_stored_space(config.description)
        if recorded is not None and recorded.dimension is not None:
            self._space = recorded  # a recorded space never changes; only known ones are cached

    def _properties(self) -> dict[str, str]:
        if self._property_types is None:
            self._remember_config(self._call("read the collection's configuration", "config.get"))
        return self._property_types or {}

    def close(self) -> None:
        """Close the connection, and those of the stores :meth:`with_tenant` gave; the next call connects again."""
        with self._connect_lock:
            client, self._client, self._collection = self._client, None, None
            views = list(self._tenant_views.values())
        for view in views:
            view.close()
        if client is not None:
            client.close()

    async def close_async(self) -> None:
        await asyncio.to_thread(self.close)

    def _call(
        self,
        what: str,
        function: Callable[..., Any] | str,
        *args: Any,
        unconfirmed: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one client call, turning transport failures into :class:`WeaviateUnavailableError`.

        ``function`` given as a path on the collection (``"query.near_vector"``) is sent again to the next node
        when the node in use goes away, until every node was tried.
        """
        attempts = len(self.endpoints()) if isinstance(function, str) else 1
        for attempt in range(attempts):
            target: Any = function
            used = self._client
            if isinstance(function, str):
                target = self.collection
                if self._tenant_required and not function.startswith("config."):
                    raise self._tenant_required_error()
                for part in function.split("."):
                    target = getattr(target, part)
                used = self._client
            token = _FAIL_FAST.set(True)
            try:
                return _waiting_for_index_load(target, args, kwargs)
            except DualEncoderError:
                raise
            except Exception as error:
                if not _is_transport_error(error):
                    raise self._request_error(what, error) from error
                lost_url = self._resolved_url
                self._fail_over(used)
                if attempt + 1 < attempts:
                    continue
                written = (
                    ""
                    if unconfirmed is None
                    else (
                        f" {len(unconfirmed)} document(s) may not have been stored. Writes are idempotent: once the "
                        f"server is back, write the same documents again (`unconfirmed_ids` on this error lists them)."
                    )
                )
                tried = f" (after trying all {attempts} nodes)" if attempts > 1 else ""
                raise WeaviateUnavailableError(
                    f"Lost Weaviate at {lost_url}{tried} while trying to {what}, consistency level "
                    f"{self.consistency_level or 'QUORUM (server default)'}: {type(error).__name__}: {error}.{written}",
                    unconfirmed_ids=unconfirmed,
                ) from error
            finally:
                _FAIL_FAST.reset(token)
        raise AssertionError("unreachable")

    def _tenant_required_error(self) -> TenantNotFoundError:
        return TenantNotFoundError(
            f"Weaviate collection '{self.collection_name}' is multi-tenant: every read and write of documents names "
            f"a tenant. Pass tenant=... to the store, or per query and per write (the retrievers' and "
            f"DualEncoderDocumentWriter's tenant, the LangChain methods' tenant=), or use store.with_tenant(name)."
        )

    def _request_error(self, what: str, error: BaseException) -> DualEncoderError:
        text = str(error)
        lowered = text.lower()
        level = self.consistency_level or "QUORUM (server default)"
        if any(marker in lowered for marker in _REPLICA_MARKERS):
            return ReplicaUnavailableError(
                f"Weaviate node {self._resolved_url} could not {what} in {self.location} at consistency level {level}: "
                f"too few replicas answered ({type(error).__name__}: {text}). No partial result is returned; bring the "
                f"missing nodes back, or use a lower consistency level (ONE) if stale or partial reads are acceptable."
            )
        if "tenant" in lowered and any(marker in lowered for marker in _TENANT_MARKERS):
            return TenantNotFoundError(
                f"{self.location} has no tenant '{self.tenant}' (Weaviate: {text}). Write to it first (tenants are "
                f"created on first write when auto_create_tenants is on), or create it (store.create_tenant(name)), "
                f"or check the name."
            )
        return WeaviateRequestError(f"Weaviate refused to {what} in {self.location}: {type(error).__name__}: {text}")

    def _fail_over(self, failed_client: Any) -> None:
        """Drop the connection a call failed on and move to the next node, unless another thread already did
        (several threads failing on one dead node move on once, not once each)."""
        with self._connect_lock:
            if failed_client is not None and self._client is not failed_client:
                return
            client, self._client, self._collection = self._client, None, None
            self._node += 1
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection may fail too; nothing is left to release
                pass

    def _forget_client(self) -> None:
        # The next call reconnects, so a restarted server is picked up without a new store object.
        with self._connect_lock:
            client, self._client, self._collection = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection may fail too; nothing is left to release
                pass

    # ----------------------------------------------------------------------------- the store contract
    def upsert(
        self,
        records: Sequence[StoredRecord],
        policy: DuplicatePolicy | str = DuplicatePolicy.OVERWRITE,
        *,
        stored: Mapping[str, StoredRecord] | None = None,
    ) -> WriteSummary:
        """:meth:`Store.upsert`; a lost server raises :class:`WeaviateUnavailableError` whose ``unconfirmed_ids``
        list every document of the call that may not be stored (all of them when it went before any write)."""
        try:
            return super().upsert(records, policy, stored=stored)
        except WeaviateUnavailableError as error:
            if error.unconfirmed_ids:
                raise
            unconfirmed = list(dict.fromkeys(r.id for r in records if isinstance(r, StoredRecord)))
            raise WeaviateUnavailableError(
                f"{error} None of the {len(unconfirmed)} document(s) of this write is confirmed; write them again once "
                f"the server is back (`unconfirmed_ids` lists them).",
                unconfirmed_ids=unconfirmed,
            ) from error.__cause__

    def _recorded_space(self) -> StoredSpace:
        if self._space is None:
            config = self._call("read the collection's configuration", "config.get")
            self._remember_config(config)
        if self._space is None:
            # A collection that records no space (written by weaviate-haystack, say) is known by what it holds.
            inferred = self._space_of_stored_objects()
            if inferred is not None:
                self._space = inferred
        return self._space or StoredSpace(document_space=None, dimension=None)

    def _space_of_stored_objects(self) -> StoredSpace | None:
        # No filter: collections from other tools may not index null state, which an "is set" filter needs.
        try:
            result = self._call("read stored vectors", "query.fetch_objects", limit=20, include_vector=True)
        except TenantNotFoundError:
            if self._tenant_required:
                raise
            return None  # a tenant not created yet holds nothing
        for item in result.objects:
            record = self._to_record(item)
            if record.embedding is not None:
                return StoredSpace(document_space=record.document_space, dimension=int(record.embedding.shape[0]))
        return None

    def _record_space(self, space: StoredSpace) -> None:
        description = describe_stored_space(space)
        self._call("record the embedding space", "config.update", description=description)
        self._space = space

    def _check_record(self, record: StoredRecord) -> None:
        for key in record.meta:
            if not isinstance(key, str) or not _PROPERTY_NAME.match(meta_property(key)):
                raise InvalidDocumentError(
                    f"Document '{record.id}' has a meta key {key!r}, which Weaviate cannot store as a property: names "
                    f"start with a letter or _ and hold only letters, digits and _. Rename it."
                )
        try:
            json.dumps(record.extra, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidDocumentError(
                f"Document '{record.id}' has extra fields that are not JSON-serialisable ({error})."
            ) from error

    def _fetch(self, ids: Sequence[str]) -> dict[str, StoredRecord]:
        from weaviate.classes.query import Filter
        from weaviate.util import generate_uuid5

        found: dict[str, StoredRecord] = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            try:
                items = self._read_objects(
                    "read documents by id",
                    filters=Filter.by_id().contains_any([generate_uuid5(i) for i in chunk]),
                    limit=len(chunk),
                )
            except TenantNotFoundError:
                if self.settings.auto_create_tenants and not self._tenant_required:
                    return found  # the write creates the tenant; until then it holds nothing
                raise
            for item in items:
                record = self._to_record(item)
                found[record.id] = record
        return found

    def _write(self, records: Sequence[StoredRecord], policy: DuplicatePolicy) -> None:
        from weaviate.classes.data import DataObject
        from weaviate.exceptions import WeaviateInsertManyAllFailedError
        from weaviate.util import generate_uuid5

        types = self._properties()
        failed: dict[str, str] = {}
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            objects = [
                DataObject(
                    properties=self._to_properties(record, types),
                    uuid=generate_uuid5(record.id),
                    vector=None if record.embedding is None else record.embedding.tolist(),
                )
                for record in chunk
            ]
            if any(name not in types for data in objects for name in data.properties):
                self._property_types = None  # auto-schema adds these properties: read the schema again next time
            unconfirmed = [record.id for record in records[start:]]
            try:
                result = self._call(
                    f"write {len(records)} document(s) (the first {start} were written)",
                    "data.insert_many",
                    objects,
                    unconfirmed=unconfirmed,
                )
            except WeaviateRequestError as error:
                cause = error.__cause__
                if not isinstance(cause, WeaviateInsertManyAllFailedError):
                    raise
                # Every object of the batch was refused: the client reports the reasons only together.
                reason = str(getattr(cause, "message", cause))
                failed.update((record.id, reason) for record in chunk)
                continue
            for position, problem in result.errors.items():
                failed[chunk[position].id] = problem.message
        if failed:
            raise PartialWriteError(failed)

    def _delete(self, ids: Sequence[str]) -> int:
        from weaviate.classes.query import Filter
        from weaviate.util import generate_uuid5

        deleted = 0
        for start in range(0, len(ids), ID_CHUNK):
            uuids = [generate_uuid5(i) for i in ids[start : start + ID_CHUNK]]
            result = self._call("delete documents", "data.delete_many", where=Filter.by_id().contains_any(uuids))
            deleted += result.successful
        return deleted

    def _delete_all(self) -> None:
        from dataclasses import replace as replaced

        # Deleting the objects alone would leave the HNSW index fixed to the old dimension: the collection is
        # recreated with its own settings (the description, which records the space, back to the initial one).
        if self.tenant:
            # A tenant is its own shard: dropping it removes exactly its documents, and it is created again on the
            # next write (when auto_create_tenants is on).
            self.delete_tenant(self.tenant)
            return
        self.collection  # noqa: B018 - connects, so a multi-tenant collection is known before anything is dropped
        if self._tenant_required:
            raise self._tenant_required_error()  # dropping the collection would drop every tenant
        config = self._call("read the collection's configuration", "config.get")
        client = self.client
        self._space = None
        self._property_types = None
        self._config = None
        self._call("delete the collection", client.collections.delete, self.collection_name)
        self._collection = self._call(
            "recreate the collection",
            client.collections.create_from_config,
            replaced(config, description=INITIAL_DESCRIPTION),
        )
        if self.consistency_level:
            self._forget_client()  # the next call reconnects with the consistency level set

    def _count(self, filters: Mapping[str, Any] | None) -> int:
        where = self._where(filters)
        result = self._call("count documents", "aggregate.over_all", total_count=True, filters=where)
        return int(result.total_count or 0)

    def _list(self, filters: Mapping[str, Any] | None) -> list[StoredRecord]:
        if filters:
            total = self._count(filters)
            if total == 0:
                return []
            if total <= QUERY_MAXIMUM_RESULTS:
                items = self._read_objects("list documents", filters=self._where(filters), limit=total)
                return [self._to_record(item) for item in items]
            # Weaviate returns at most QUERY_MAXIMUM_RESULTS per filtered query and its cursor takes no filter:
            # page through everything and apply the same filter semantics here.
            matches = compile_filter(filters)
            assert matches is not None  # a non-empty filter always compiles to a predicate
            return [r for r in self._all_records() if matches({"id": r.id, "content": r.content, "meta": r.meta})]
        return self._all_records()

    def _all_records(self) -> list[StoredRecord]:
        records: list[StoredRecord] = []
        after = None
        while True:
            page = self._read_objects("list documents", limit=PAGE_SIZE, after=after)
            records.extend(self._to_record(item) for item in page)
            if len(page) < PAGE_SIZE:
                return records
            after = page[-1].uuid

    def _read_objects(self, what: str, **options: Any) -> list[Any]:
        """The stored objects ``query.fetch_objects`` returns for ``options`` (a filter, a limit, a cursor), with
        their vectors and every property (the client leaves blob properties out unless they are named)."""
        return self._call(
            what, "query.fetch_objects", include_vector=True, return_properties=self._return_properties(), **options
        ).objects

    def _vector_search(
        self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, exact: bool | None
    ) -> SearchResult:
        from weaviate.classes.query import MetadataQuery

        if exact:
            return self._exact_search(vector, top_k, filters)
        result = self._call(
            "search by vector",
            "query.near_vector",
            near_vector=vector.tolist(),
            limit=top_k,
            include_vector=True,
            filters=self._where(filters),
            return_metadata=MetadataQuery(distance=True),
            return_properties=self._return_properties(),
        )
        hits = [
            SearchHit(record=self._to_record(item), score=score_from_distance(item.metadata.distance, self.similarity))
            for item in result.objects
        ]
        return SearchResult(hits=hits, method="approximate")

    def _exact_search(self, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None) -> SearchResult:
        """Every matching stored vector scored here (``exact=True``): the reference for the HNSW results, at the
        cost of reading the whole (filtered) collection once per query."""
        records = [record for record in self._list(filters) if record.embedding is not None]
        if not records:
            return SearchResult(hits=[], method="exact")
        matrix = np.stack([record.embedding for record in records if record.embedding is not None])
        scores = matrix @ vector
        if self.similarity == "cosine":
            norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(vector))
            scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return SearchResult(hits=[SearchHit(record=records[i], score=float(scores[i])) for i in order], method="exact")

    def _keyword_search(self, text: str, top_k: int, filters: Mapping[str, Any] | None) -> SearchResult:
        return SearchResult(
            hits=self._text_search("search by keyword", "query.bm25", text, top_k, filters), method="keyword"
        )

    def _text_search(
        self, what: str, path: str, text: str, top_k: int, filters: Mapping[str, Any] | None, **options: Any
    ) -> list[SearchHit]:
        """One search of ``content`` for ``text`` through the query method at ``path`` (``query.bm25``, or
        ``query.hybrid`` with its vector, alpha and fusion in ``options``): the hits best first, each scored by
        Weaviate itself (BM25 or fused score, not a similarity)."""
        from weaviate.classes.query import MetadataQuery

        result = self._call(
            what,
            path,
            query=text,
            query_properties=[CONTENT_PROPERTY],
            limit=top_k,
            include_vector=True,
            filters=self._where(filters),
            return_metadata=MetadataQuery(score=True),
            return_properties=self._return_properties(),
            **options,
        )
        return [
            SearchHit(record=self._to_record(item), score=float(item.metadata.score or 0.0)) for item in result.objects
        ]

    # ------------------------------------------------------------------------------------ hybrid search
    def hybrid_search(
        self,
        text: str,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        alpha: float = 0.7,
    ) -> SearchResult:
        """Weaviate's hybrid search: BM25 on ``content`` fused with vector search (``alpha`` 1.0 = vector only,
        0.0 = BM25 only) by relativeScoreFusion. Scores are Weaviate's fused scores, not similarities; ``method`` is
        ``"approximate"``. :meth:`native_hybrid_search` (the store contract's) also chooses the fusion.
        """
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ConfigurationError(f"alpha must be between 0.0 (BM25 only) and 1.0 (vector only), got {alpha}.")
        result = self.native_hybrid_search(text, vector, top_k=top_k, filters=filters, weight=alpha, fusion="weighted")
        return SearchResult(hits=result.hits, method="approximate")

    def _native_hybrid_search(
        self, text: str, vector: np.ndarray, top_k: int, filters: Mapping[str, Any] | None, weight: float, fusion: str
    ) -> SearchResult:
        """One ``query.hybrid`` request: ``"weighted"`` is Weaviate's relativeScoreFusion, ``"rrf"`` its
        rankedFusion (reciprocal ranks with Weaviate's own constant)."""
        from weaviate.classes.query import HybridFusion

        hits = self._text_search(
            "run a hybrid search",
            "query.hybrid",
            text,
            top_k,
            filters,
            vector=vector.tolist(),
            alpha=weight,
            fusion_type=HybridFusion.RELATIVE_SCORE if fusion == "weighted" else HybridFusion.RANKED,
        )
        return SearchResult(hits=hits, method="hybrid")

    async def hybrid_search_async(
        self,
        text: str,
        vector: np.ndarray | Sequence[float],
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
        alpha: float = 0.7,
    ) -> SearchResult:
        return await asyncio.to_thread(self.hybrid_search, text, vector, top_k=top_k, filters=filters, alpha=alpha)

    # ---------------------------------------------------------------------------------- object layout
    def _where(self, filters: Mapping[str, Any] | None) -> Any:
        if not filters:
            return None
        types = self._properties()
        if not _field_names(filters) <= set(types):
            # Another writer (or auto-schema) may have added the property since the schema was read.
            self._property_types = None
            types = self._properties()
        return to_weaviate_filter(filters, types)

    def _return_properties(self) -> list[str]:
        # Without an explicit list the client leaves blob properties out.
        return list(self._properties())

    def _to_properties(self, record: StoredRecord, types: Mapping[str, str]) -> dict[str, Any]:
        properties: dict[str, Any] = {ID_PROPERTY: record.id, CONTENT_PROPERTY: record.content}
        for key, value in record.meta.items():
            name = meta_property(key)
            properties[name] = _to_weaviate_value(value, types.get(name))
        extra = dict(record.extra)
        blob = extra.get("blob")
        if isinstance(blob, dict) and isinstance(blob.get("data"), list):
            # A Haystack ByteStream's dict holds its bytes as a list of ints; Weaviate's blob type is base64.
            properties[BLOB_DATA_PROPERTY] = base64.b64encode(bytes(blob["data"])).decode("ascii")
            properties[BLOB_MIME_PROPERTY] = blob.get("mime_type")
            rest = {key: value for key, value in blob.items() if key not in ("data", "mime_type")}
            if rest:
                extra["blob"] = rest
            else:
                del extra["blob"]
        if extra:
            properties[EXTRA_PROPERTY] = json.dumps(extra, sort_keys=True)
        return properties

    def _to_record(self, item: Any) -> StoredRecord:
        properties = dict(item.properties)
        doc_id = properties.pop(ID_PROPERTY, None)
        if doc_id is None:
            doc_id = str(item.uuid)  # an object written by another tool, without the original id
        content = properties.pop(CONTENT_PROPERTY, None)
        blob_data = properties.pop(BLOB_DATA_PROPERTY, None)
        blob_mime = properties.pop(BLOB_MIME_PROPERTY, None)
        extra_text = properties.pop(EXTRA_PROPERTY, None)
        properties.pop(LEGACY_SCORE_PROPERTY, None)
        extra: dict[str, Any] = json.loads(extra_text) if extra_text else {}
        if blob_data is not None:
            extra["blob"] = {"data": list(base64.b64decode(blob_data)), "mime_type": blob_mime, **extra.get("blob", {})}
        meta = {meta_key(name): _from_weaviate_value(value) for name, value in properties.items() if value is not None}
        digest = meta.get(EMBEDDED_INPUT_META_KEY)
        if isinstance(properties.get(EMBEDDED_INPUT_META_KEY), UUID):
            # Auto-schema (a collection this package did not create) takes the 32-hex digest for a uuid.
            meta[EMBEDDED_INPUT_META_KEY] = UUID(digest).hex
        vector = item.vector.get("default") if isinstance(item.vector, dict) else item.vector
        embedding = np.asarray(vector, dtype=np.float32) if vector else None
        return StoredRecord(id=doc_id, content=content, meta=meta, embedding=embedding, extra=extra)


def open_weaviate_store(**options: str) -> WeaviateStore:
    """The ``weaviate`` store plug-in (``--store-type weaviate --store-option key=value``).

    Options (all strings): ``url`` (default ``$WEAVIATE_URL``; several nodes comma-separated), ``grpc_port``
    (default ``$WEAVIATE_GRPC_PORT`` or 50051; one per URL, comma-separated), ``collection`` (default
    ``DualEncoderDocuments``), ``api_key_env`` (the variable holding an API key, default ``WEAVIATE_API_KEY``),
    ``similarity``, ``timeout``, ``batch_size``, ``meta_fields`` (``year:int,topic:text``), ``consistency_level``
    (``ONE``/``QUORUM``/``ALL``), ``tenant``; and for a new collection ``replication_factor``, ``async_replication``
    (``frequency_ms:5000,propagation_delay_ms:1000``), ``shards``, ``multi_tenancy`` and ``auto_create_tenants``
    (``true``/``false``), ``vector_index`` (``hnsw``/``flat``/``dynamic``), ``vector_index_options``
    (``ef:128,max_connections:32``), ``compression`` (``rq``/``bq``/``pq``/``sq``), ``compression_options``
    (``bits:8``).
    """
    known = (
        "url",
        "grpc_port",
        "collection",
        "api_key_env",
        "similarity",
        "timeout",
        "batch_size",
        "meta_fields",
        "consistency_level",
        "tenant",
        "replication_factor",
        "async_replication",
        "shards",
        "multi_tenancy",
        "auto_create_tenants",
        "vector_index",
        "vector_index_options",
        "compression",
        "compression_options",
    )
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(f"Unknown Weaviate store option(s) {unknown}; the options are {list(known)}.")

    def pairs(name: str) -> dict[str, str] | None:
        if not options.get(name):
            return None
        parsed = {}
        for pair in options[name].split(","):
            key, separator, value = pair.partition(":")
            if not separator or not key.strip():
                raise ConfigurationError(
                    f"Store option {name} takes key:value pairs separated by commas, got {options[name]!r}."
                )
            parsed[key.strip()] = value.strip()
        return parsed

    def flag(name: str, default: bool) -> bool:
        value = (options.get(name) or "").strip().lower()
        if not value:
            return default
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigurationError(f"Store option {name} is true or false, got {options[name]!r}.")
        return value in ("true", "1", "yes")

    def numbers(values: dict[str, str] | None) -> dict[str, Any] | None:
        if values is None:
            return None
        return {
            key: (float(value) if "." in value else int(value))
            if value.lower() not in ("true", "false")
            else value.lower() == "true"
            for key, value in values.items()
        }

    try:
        settings = CollectionSettings(
            replication_factor=int(options.get("replication_factor") or 1),
            async_replication=numbers(pairs("async_replication")),
            shards=int(options["shards"]) if options.get("shards") else None,
            multi_tenancy=flag("multi_tenancy", False),
            auto_create_tenants=flag("auto_create_tenants", True),
            vector_index=options.get("vector_index") or "hnsw",
            vector_index_options=numbers(pairs("vector_index_options")),
            compression=options.get("compression") or None,
            compression_options=numbers(pairs("compression_options")),
        )
        return WeaviateStore(
            url=options.get("url") or None,
            collection=options.get("collection") or "DualEncoderDocuments",
            similarity=options.get("similarity") or "cosine",
            meta_fields=pairs("meta_fields"),
            api_key_env=options.get("api_key_env") or "WEAVIATE_API_KEY",
            grpc_port=options.get("grpc_port") or None,
            timeout=float(options.get("timeout") or 10.0),
            batch_size=int(options.get("batch_size") or 500),
            consistency_level=options.get("consistency_level") or None,
            tenant=options.get("tenant") or None,
            settings=settings,
        )
    except ValueError as error:
        if isinstance(error, DualEncoderError):
            raise
        raise ConfigurationError(f"Invalid Weaviate store option: {error}.") from error


# ------------------------------------------------------------------------------------------ helpers
def _field_names(filters: Mapping[str, Any]) -> set[str]:
    if "field" in filters:
        return {property_name(filters["field"])}
    return set().union(*(_field_names(child) for child in filters.get("conditions", [])))


def _data_type_name(data_type: Any) -> str:
    return str(getattr(data_type, "value", data_type))


def _to_weaviate_value(value: Any, data_type: str | None) -> Any:
    """Dates as RFC 3339 (naive ISO strings count as UTC) where the property is a date; the rest as given."""
    if data_type in ("date", "date[]"):
        if isinstance(value, list):
            return [_as_rfc3339(element) for element in value]
        return _as_rfc3339(value)
    return value


def _as_rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value  # Weaviate names the problem per object
    else:
        return value
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _from_weaviate_value(value: Any) -> Any:
    """A property value as JSON-like meta: dates as ISO strings in UTC with a ``Z``, uuids as strings."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list):
        return [_from_weaviate_value(element) for element in value]
    return value


def _iso(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _waiting_for_index_load(target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``target``; while the node answers that it has not opened its copy of the collection yet, call it
    again with a growing pause, for at most :data:`INDEX_LOAD_WAIT_SECONDS`. The node refused the request
    before doing anything, so sending it again is safe for reads and writes alike."""
    deadline = time.monotonic() + INDEX_LOAD_WAIT_SECONDS
    pause = 0.05
    while True:
        try:
            return target(*args, **kwargs)
        except Exception as error:
            lowered = str(error).lower()
            not_loaded = any(marker in lowered for marker in _INDEX_NOT_LOADED_MARKERS) and (
                "non-existing" in lowered or "not found" in lowered
            )
            if not not_loaded or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def _is_transport_error(error: BaseException) -> bool:
    import httpx
    from weaviate.exceptions import (
        WeaviateClosedClientError,
        WeaviateConnectionError,
        WeaviateGRPCUnavailableError,
        WeaviateTimeoutError,
    )

    transport = (
        WeaviateClosedClientError,
        WeaviateConnectionError,
        WeaviateGRPCUnavailableError,
        WeaviateTimeoutError,
        httpx.TransportError,
        ConnectionError,
        TimeoutError,
    )
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, transport) or any(marker in str(current) for marker in _TRANSPORT_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False
