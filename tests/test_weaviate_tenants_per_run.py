"""A tenant per query and per write, against the real Weaviate node the test session starts (``weaviate_server`` in
conftest.py): the Haystack retrievers' and writer's ``tenant`` (init and run), pipeline YAML with tenants, the
LangChain vector store's ``tenant=``, and the clear errors of stores without tenants and of missing tenants.

Both tenants hold the same texts under different ids, so only the tenant separates them: a query that leaked
across tenants would return the other tenant's ids with the very same scores.
"""

from __future__ import annotations

import pytest
import yaml
from dual_encoder_weaviate.errors import TenantNotFoundError
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import (
    DualEncoderHybridRetriever,
    DualEncoderKeywordRetriever,
    DualEncoderRetriever,
    StoreEmbeddingRetriever,
)
from haystack_integrations.components.writers.dual_encoder import DualEncoderDocumentWriter
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore

from dual_encoder.errors import ConfigurationError
from dual_encoder.stores.contract import TenantsUnsupportedError

TEXTS = {
    "tides": "Tides are caused by the Moon's gravity pulling on the oceans.",
    "bread": "A sourdough starter needs flour and water every day.",
    "stars": "Stars shine because of nuclear fusion in their cores.",
    "mars": "Dry river valleys show that water once flowed on Mars.",
}
QUESTION = "Why does the sea rise and fall with the Moon?"
KEYWORD_QUERY = "water Moon stars"


def ids_of(tenant: str) -> set[str]:
    return {f"{tenant}-{key}" for key in TEXTS}


@pytest.fixture(scope="module")
def embedded_documents():
    """The same four texts for each tenant, embedded once; ids name the tenant."""
    documents = [
        Document(id=f"{tenant}-{key}", content=text, meta={"owner": tenant})
        for tenant in ("alpha", "beta")
        for key, text in TEXTS.items()
    ]
    return DualEncoderDocumentEmbedder(progress_bar=False).run(documents=documents)["documents"]


def tenant_documents(documents: list[Document], tenant: str) -> list[Document]:
    return [document for document in documents if document.id.startswith(f"{tenant}-")]


def multi_tenant_store(name: str, **options) -> DualEncoderWeaviateDocumentStore:
    return DualEncoderWeaviateDocumentStore(collection_name=name, multi_tenancy=True, **options)


def written_store(name: str, documents: list[Document]) -> DualEncoderWeaviateDocumentStore:
    """A multi-tenant collection bound to no tenant, with alpha's and beta's documents written per run."""
    store = multi_tenant_store(name)
    writer = DualEncoderDocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE)
    for tenant in ("alpha", "beta"):
        assert writer.run(documents=tenant_documents(documents, tenant), tenant=tenant)["documents_written"] == 4
    return store


def retrievers(store: DualEncoderWeaviateDocumentStore, **tenant) -> dict[str, tuple[object, dict]]:
    """Every retriever of this package over ``store``, with the run arguments of one query."""
    return {
        "embedding": (
            DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), top_k=10, **tenant),
            {"query": QUESTION},
        ),
        "keyword": (DualEncoderKeywordRetriever(document_store=store, top_k=10, **tenant), {"query": KEYWORD_QUERY}),
        "hybrid": (DualEncoderHybridRetriever(document_store=store, top_k=10, **tenant), {"query": QUESTION}),
    }


# --------------------------------------------------------------------------------------------- isolation
async def test_a_query_in_one_tenant_never_returns_another_tenants_documents(
    weaviate_env, collection_name, embedded_documents
):
    store = written_store(collection_name, embedded_documents)
    for kind, (retriever, arguments) in retrievers(store).items():
        by_tenant = {}
        for tenant in ("alpha", "beta"):
            found = retriever.run(**arguments, tenant=tenant)["documents"]
            found_async = (await retriever.run_async(**arguments, tenant=tenant))["documents"]
            assert [(d.id, d.score) for d in found] == [(d.id, d.score) for d in found_async], kind
            ids = {document.id for document in found}
            assert ids and ids <= ids_of(tenant), (kind, tenant, ids)
            assert all(document.meta["owner"] == tenant for document in found)
            by_tenant[tenant] = found
        if kind != "keyword":  # a vector or hybrid search of four documents returns all four
            assert {d.id for d in by_tenant["alpha"]} == ids_of("alpha")
        # Same texts in both tenants: the same ranking and scores, each under its own tenant's ids.
        assert [d.id.split("-", 1)[1] for d in by_tenant["alpha"]] == [d.id.split("-", 1)[1] for d in by_tenant["beta"]]
        assert [d.score for d in by_tenant["alpha"]] == pytest.approx([d.score for d in by_tenant["beta"]], abs=1e-5)

    embedding = StoreEmbeddingRetriever(document_store=store, top_k=10)
    vector = embedded_documents[0].embedding
    found = embedding.run(query_embedding=vector, tenant="beta")["documents"]
    assert {d.id for d in found} == ids_of("beta")
    assert found[0].id == "beta-tides" and found[0].score == pytest.approx(1.0, abs=1e-5)
    store.close()


async def test_the_run_tenant_overrides_the_init_tenant(weaviate_env, collection_name, embedded_documents):
    store = written_store(collection_name, embedded_documents)
    for kind, (retriever, arguments) in retrievers(store, tenant="alpha").items():
        assert {d.id for d in retriever.run(**arguments)["documents"]} <= ids_of("alpha"), kind
        assert {d.id for d in retriever.run(**arguments, tenant="beta")["documents"]} <= ids_of("beta"), kind
        assert {d.id for d in (await retriever.run_async(**arguments, tenant="beta"))["documents"]} <= ids_of("beta")
        assert retriever.to_dict()["init_parameters"]["tenant"] == "alpha"
    inner = StoreEmbeddingRetriever(document_store=store, tenant="beta")  # the inner retriever's own tenant
    outer = DualEncoderRetriever(retriever=inner, top_k=10)
    assert {d.id for d in outer.run(query=QUESTION)["documents"]} == ids_of("beta")
    assert {d.id for d in outer.run(query=QUESTION, tenant="alpha")["documents"]} == ids_of("alpha")
    store.close()


# ------------------------------------------------------------------------------------------------ writes
async def test_the_writer_writes_into_the_run_tenant(weaviate_env, collection_name, embedded_documents):
    store = multi_tenant_store(collection_name)
    writer = DualEncoderDocumentWriter(document_store=store, tenant="alpha")  # policy NONE: FAIL on duplicates
    alpha_documents = tenant_documents(embedded_documents, "alpha")
    assert writer.run(documents=alpha_documents)["documents_written"] == 4
    assert (await writer.run_async(documents=alpha_documents[:2], tenant="gamma"))["documents_written"] == 2
    assert writer.run(documents=alpha_documents, tenant="beta", policy=DuplicatePolicy.SKIP)["documents_written"] == 4

    core = store.store
    assert sorted(core.tenants()) == ["alpha", "beta", "gamma"]
    assert {r.id for r in core.with_tenant("alpha").list()} == ids_of("alpha")
    assert {r.id for r in core.with_tenant("beta").list()} == ids_of("alpha")  # the same ids, in another tenant
    assert {r.id for r in core.with_tenant("gamma").list()} == {"alpha-tides", "alpha-bread"}
    # The same ids again into one tenant: FAIL refuses them there, SKIP keeps the stored ones.
    with pytest.raises(DuplicateDocumentError, match="already stored"):
        writer.run(documents=alpha_documents, tenant="gamma")
    assert core.with_tenant("gamma").count() == 2
    assert writer.run(documents=alpha_documents, tenant="gamma", policy="SKIP")["documents_written"] == 2
    assert core.with_tenant("gamma").count() == 4
    # A store bound to no tenant cannot touch documents of a multi-tenant collection, and says how to name one.
    with pytest.raises(TenantNotFoundError, match="multi-tenant.*tenant"):
        store.write_documents(alpha_documents, policy=DuplicatePolicy.OVERWRITE)
    with pytest.raises(TenantNotFoundError, match="multi-tenant"):
        store.count_documents()
    with pytest.raises(TenantNotFoundError, match="multi-tenant"):
        store.delete_all_documents()  # would drop every tenant
    assert core.with_tenant("alpha").count() == 4
    store.close()


async def test_a_missing_tenant_is_refused_when_tenants_are_not_created_on_first_use(
    weaviate_env, collection_name, embedded_documents
):
    store = multi_tenant_store(collection_name, auto_create_tenants=False)
    writer = DualEncoderDocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE)
    alpha_documents = tenant_documents(embedded_documents, "alpha")
    with pytest.raises(TenantNotFoundError, match="(?s)no tenant 'ghost'.*create_tenant"):
        writer.run(documents=alpha_documents, tenant="ghost")
    with pytest.raises(TenantNotFoundError, match="no tenant 'ghost'"):
        await writer.run_async(documents=alpha_documents, tenant="ghost")
    assert store.store.tenants() == []

    store.store.create_tenant("alpha")
    store.store.create_tenant("alpha")  # already there: left as it is
    assert writer.run(documents=alpha_documents, tenant="alpha")["documents_written"] == 4
    assert store.store.tenants() == ["alpha"]
    for kind, (retriever, arguments) in retrievers(store).items():
        with pytest.raises(TenantNotFoundError, match="no tenant 'ghost'"):
            retriever.run(**arguments, tenant="ghost")
        with pytest.raises(TenantNotFoundError, match="no tenant 'ghost'"):
            await retriever.run_async(**arguments, tenant="ghost")
        assert {d.id for d in retriever.run(**arguments, tenant="alpha")["documents"]} <= ids_of("alpha"), kind
        with pytest.raises(TenantNotFoundError, match="multi-tenant"):
            retriever.run(**arguments)  # no tenant at all
    assert store.store.tenants() == ["alpha"]  # nothing was created by the refused writes and queries
    with pytest.raises(ConfigurationError, match="letters, digits"):
        store.store.create_tenant("no spaces")
    store.store.delete_tenant("alpha")
    assert store.store.tenants() == []
    store.close()


# -------------------------------------------------------------------------------------------------- YAML
STORE_YAML = """
        type: haystack_integrations.document_stores.dual_encoder.weaviate_store.DualEncoderWeaviateDocumentStore
        init_parameters:
          collection_name: {collection}
          multi_tenancy: true"""
INDEXING_YAML = """
components:
  embedder:
    type: haystack_integrations.components.embedders.dual_encoder.document_embedder.DualEncoderDocumentEmbedder
    init_parameters:
      encoder: all-MiniLM-L6-v2
      progress_bar: false
  writer:
    type: haystack_integrations.components.writers.dual_encoder.document_writer.DualEncoderDocumentWriter
    init_parameters:
      policy: OVERWRITE
      tenant: alpha
      document_store:{store}
connections:
- sender: embedder.documents
  receiver: writer.documents
"""
QUERY_YAML = """
components:
  retriever:
    type: haystack_integrations.components.retrievers.dual_encoder.dual_encoder_retriever.DualEncoderRetriever
    init_parameters:
      encoder: all-MiniLM-L6-v2
      top_k: 10
      tenant: alpha
      retriever:
        type: haystack_integrations.components.retrievers.dual_encoder.store_embedding_retriever.StoreEmbeddingRetriever
        init_parameters:
          document_store:{store}
connections: []
"""


def test_pipeline_yaml_sets_the_tenant_of_the_writer_and_the_retriever(weaviate_env, collection_name):
    store = STORE_YAML.format(collection=collection_name)
    indexing = Pipeline.loads(INDEXING_YAML.format(store=store))
    query = Pipeline.loads(QUERY_YAML.format(store=store.replace("\n  ", "\n      ")))
    writer, retriever = indexing.get_component("writer"), query.get_component("retriever")
    assert isinstance(writer, DualEncoderDocumentWriter) and writer.tenant == "alpha"
    assert writer.policy is DuplicatePolicy.OVERWRITE
    assert isinstance(retriever, DualEncoderRetriever) and retriever.tenant == "alpha"

    texts = [Document(id=f"y-{key}", content=text) for key, text in TEXTS.items()]
    assert indexing.run({"embedder": {"documents": texts}})["writer"]["documents_written"] == 4
    found = query.run({"retriever": {"query": QUESTION}})["retriever"]["documents"]
    assert [d.id for d in found][0] == "y-tides" and {d.id for d in found} == {f"y-{key}" for key in TEXTS}
    # Per-run tenants through the pipelines' inputs: the writer puts two into beta, the retriever reads beta.
    written = indexing.run({"embedder": {"documents": texts[:2]}, "writer": {"tenant": "beta"}})
    assert written["writer"]["documents_written"] == 2
    found = query.run({"retriever": {"query": QUESTION, "tenant": "beta"}})["retriever"]["documents"]
    assert {d.id for d in found} == {"y-tides", "y-bread"}
    assert writer.document_store.store.tenants() == ["alpha", "beta"]

    # The tenant survives a round trip through YAML.
    for pipeline, name in ((indexing, "writer"), (query, "retriever")):
        dumped = yaml.safe_load(pipeline.dumps())["components"][name]["init_parameters"]
        assert dumped["tenant"] == "alpha"
        assert Pipeline.loads(pipeline.dumps()).get_component(name).to_dict() == pipeline.get_component(name).to_dict()
    assert yaml.safe_load(indexing.dumps())["components"]["writer"]["init_parameters"]["policy"] == "OVERWRITE"
    indexing.close(), query.close()


# ------------------------------------------------------------------------------------ stores without tenants
def test_a_store_without_tenants_refuses_a_tenant_and_names_the_fix(embedded_documents):
    store = EmbeddedDocumentStore()
    builders = {
        "StoreEmbeddingRetriever": lambda **t: StoreEmbeddingRetriever(document_store=store, **t),
        "DualEncoderKeywordRetriever": lambda **t: DualEncoderKeywordRetriever(document_store=store, **t),
        "DualEncoderHybridRetriever": lambda **t: DualEncoderHybridRetriever(document_store=store, **t),
        "DualEncoderRetriever": lambda **t: DualEncoderRetriever(StoreEmbeddingRetriever(document_store=store), **t),
        "DualEncoderDocumentWriter": lambda **t: DualEncoderDocumentWriter(document_store=store, **t),
    }
    for build in builders.values():
        with pytest.raises(TenantsUnsupportedError, match="keeps no tenants.*Drop the tenant"):
            build(tenant="alpha")  # at init, when given at init
    DualEncoderDocumentWriter(document_store=store).run(documents=tenant_documents(embedded_documents, "alpha"))
    runs = {
        "embedding": lambda: builders["StoreEmbeddingRetriever"]().run(
            query_embedding=embedded_documents[0].embedding, tenant="alpha"
        ),
        "keyword": lambda: builders["DualEncoderKeywordRetriever"]().run(query=KEYWORD_QUERY, tenant="alpha"),
        "hybrid": lambda: builders["DualEncoderHybridRetriever"]().run(query=QUESTION, tenant="alpha"),
        "text": lambda: builders["DualEncoderRetriever"]().run(query=QUESTION, tenant="alpha"),
        "writer": lambda: builders["DualEncoderDocumentWriter"]().run(documents=embedded_documents, tenant="alpha"),
    }
    for run in runs.values():
        with pytest.raises(TenantsUnsupportedError, match="embedded store.*keeps no tenants"):
            run()  # at run time otherwise
    assert store.count_documents() == 4  # the refused write wrote nothing
    # A tenant needs a retriever of this package inside DualEncoderRetriever.
    in_memory = InMemoryEmbeddingRetriever(document_store=InMemoryDocumentStore())
    with pytest.raises(ConfigurationError, match="needs a StoreEmbeddingRetriever"):
        DualEncoderRetriever(retriever=in_memory, tenant="alpha")
    with pytest.raises(ConfigurationError, match="needs a StoreEmbeddingRetriever"):
        DualEncoderRetriever(retriever=in_memory).run(query=QUESTION, tenant="alpha")
    with pytest.raises(ConfigurationError, match="non-empty name"):
        StoreEmbeddingRetriever(document_store=multi_tenant_store("Unused"), tenant="")
    with pytest.raises(ConfigurationError, match="letters, digits"):
        DualEncoderDocumentWriter(document_store=multi_tenant_store("Unused"), tenant="two words")


def test_tenant_stores_are_reused_and_need_no_server():
    store = multi_tenant_store("NeverConnected").store  # no server is asked: nothing connects until first use
    assert store.supports_tenants
    assert store.with_tenant("alpha") is store.with_tenant("alpha")
    assert store.with_tenant("alpha") is not store.with_tenant("beta")
    assert store.with_tenant("alpha").tenant == "alpha" and store.tenant is None
    bound = store.with_tenant("alpha")
    assert bound.with_tenant("alpha") is bound
    writer = DualEncoderDocumentWriter(document_store=multi_tenant_store("NeverConnected"), tenant="alpha")
    clone = DualEncoderDocumentWriter.from_dict(writer.to_dict())
    assert (clone.tenant, clone.policy) == ("alpha", DuplicatePolicy.NONE)
    with pytest.raises(ValueError, match="policy must be"):
        DualEncoderDocumentWriter(document_store=multi_tenant_store("NeverConnected"), policy="replace")
    with pytest.raises(TypeError, match="DocumentWriter"):
        DualEncoderDocumentWriter(document_store=InMemoryDocumentStore())


# ------------------------------------------------------------------------------------------------ LangChain
async def test_langchain_takes_a_tenant_per_call(weaviate_env, collection_name):
    from langchain_core.documents import Document as LangChainDocument
    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

    vectorstore = DualEncoderVectorStore(DualEncoderEmbeddings(), multi_tenant_store(collection_name))
    keys = list(TEXTS)
    assert vectorstore.add_texts(list(TEXTS.values()), ids=[f"alpha-{k}" for k in keys], tenant="alpha")
    beta = [LangChainDocument(id=f"beta-{k}", page_content=t, metadata={"owner": "beta"}) for k, t in TEXTS.items()]
    await vectorstore.aadd_documents(beta, tenant="beta")

    for tenant in ("alpha", "beta"):
        found = vectorstore.similarity_search_with_score(QUESTION, k=10, tenant=tenant)
        assert {d.id for d, _ in found} == ids_of(tenant)
        assert found[0][0].id == f"{tenant}-tides"
        found_async = await vectorstore.asimilarity_search_with_score(QUESTION, k=10, tenant=tenant)
        assert [(d.id, s) for d, s in found] == [(d.id, s) for d, s in found_async]
        assert {d.id for d in vectorstore.similarity_search(QUESTION, k=10, tenant=tenant)} == ids_of(tenant)
        vector = vectorstore.embeddings.embed_query(QUESTION)
        by_vector = vectorstore.similarity_search_by_vector(vector, k=10, tenant=tenant)
        assert {d.id for d in by_vector} == ids_of(tenant)
        mmr = vectorstore.max_marginal_relevance_search(QUESTION, k=2, fetch_k=10, tenant=tenant)
        assert len(mmr) == 2 and {d.id for d in mmr} <= ids_of(tenant)
        hybrid = vectorstore.similarity_search_with_score(QUESTION, k=10, hybrid_alpha=0.5, tenant=tenant)
        assert {d.id for d, _ in hybrid} == ids_of(tenant)

    assert [d.id for d in vectorstore.get_by_ids(["alpha-mars", "beta-mars"], tenant="beta")] == ["beta-mars"]
    assert [d.id for d in await vectorstore.aget_by_ids(["alpha-mars"], tenant="alpha")] == ["alpha-mars"]
    vectorstore.delete(["alpha-mars", "beta-mars"], tenant="beta")  # only beta's copy goes
    assert vectorstore.get_by_ids(["beta-mars"], tenant="beta") == []
    assert [d.id for d in vectorstore.get_by_ids(["alpha-mars"], tenant="alpha")] == ["alpha-mars"]

    retriever = DualEncoderRetriever(vectorstore=vectorstore, k=10, tenant="alpha")
    assert {d.id for d in retriever.invoke(QUESTION)} == ids_of("alpha")
    assert {d.id for d in retriever.invoke(QUESTION, tenant="beta")} == ids_of("beta") - {"beta-mars"}
    assert {d.id for d in await retriever.ainvoke(QUESTION, tenant="beta")} == ids_of("beta") - {"beta-mars"}

    alpha = vectorstore.with_tenant("alpha")
    assert {d.id for d in alpha.similarity_search(QUESTION, k=10)} == ids_of("alpha")
    with pytest.raises(TenantNotFoundError, match="multi-tenant"):
        vectorstore.similarity_search(QUESTION, k=10)  # no tenant at all
    with pytest.raises(ConfigurationError, match="unknown option"):
        vectorstore.similarity_search(QUESTION, k=10, tenants="alpha")  # a misspelt option is not ignored
    vectorstore.close()


def test_langchain_refuses_a_tenant_on_a_store_without_tenants():
    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings())
    with pytest.raises(TenantsUnsupportedError, match="keeps no tenants"):
        vectorstore.add_texts(["Tides are caused by the Moon."], tenant="alpha")
    with pytest.raises(TenantsUnsupportedError, match="keeps no tenants"):
        vectorstore.similarity_search(QUESTION, tenant="alpha")
    with pytest.raises(TenantsUnsupportedError, match="keeps no tenants"):
        vectorstore.with_tenant("alpha")
    with pytest.raises(ValueError, match="keeps no tenants"):  # pydantic wraps errors of a model's checks
        DualEncoderRetriever(vectorstore=vectorstore, tenant="alpha")
    with pytest.raises(TenantsUnsupportedError, match="keeps no tenants"):
        DualEncoderRetriever(vectorstore=vectorstore).invoke(QUESTION, tenant="alpha")
    assert vectorstore.store.count() == 0
