"""The embedded store's keyword settings: chosen per store, saved with it, a change rebuilds its keyword index."""

from __future__ import annotations

import pytest

from dual_encoder.embedded import EmbeddedStore, open_embedded_store
from dual_encoder.errors import ConfigurationError
from dual_encoder.keyword import KeywordConfig, keyword_config_of
from dual_encoder.stores.contract import StoredRecord

NO_STEMMING = KeywordConfig(stemmer=None)
RECORDS = [
    StoredRecord(id="runs", content="She runs every morning before work."),
    StoredRecord(id="swim", content="He swims in the lake on Sundays."),
]


def _found(store, text: str) -> list[str]:
    return [hit.record.id for hit in store.keyword_search(text, top_k=5).hits]


def test_a_store_without_stemming_matches_only_the_same_word_form(tmp_path):
    stemmed = open_embedded_store(None)
    plain = open_embedded_store(None, keyword=NO_STEMMING)
    for store in (stemmed, plain):
        store.upsert(RECORDS)
    assert _found(stemmed, "running") == ["runs"]  # the English stemmer makes both "run"
    assert _found(plain, "running") == []
    assert _found(plain, "runs") == ["runs"]
    assert plain.keyword_config == NO_STEMMING and stemmed.keyword_config == KeywordConfig()


def test_the_settings_are_saved_with_the_store_and_a_change_rebuilds_the_index(tmp_path, caplog):
    path = tmp_path / "store"
    store = EmbeddedStore(path, keyword={"stemmer": None})
    store.upsert(RECORDS)
    assert _found(store, "running") == []
    store.close()

    reopened = EmbeddedStore(path)  # no settings given: the saved ones hold, and the saved index is used
    assert reopened.keyword_config == NO_STEMMING
    assert _found(reopened, "running") == []
    reopened.close()

    with caplog.at_level("INFO", logger="dual_encoder.embedded.keyword_search"):
        changed = EmbeddedStore(path, keyword=KeywordConfig())
        assert _found(changed, "running") == ["runs"]
    assert "new keyword settings" in caplog.text
    changed.close()
    assert EmbeddedStore(path).keyword_config == KeywordConfig()


def test_one_directory_in_one_process_has_one_keyword_setting(tmp_path):
    path = tmp_path / "shared"
    first = open_embedded_store(path, keyword=NO_STEMMING)
    assert open_embedded_store(path) is first
    assert open_embedded_store(path, keyword={"stemmer": None}) is first
    with pytest.raises(ConfigurationError, match="keyword settings"):
        open_embedded_store(path, keyword=KeywordConfig())
    first.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stemer": None}, "Unknown keyword settings \\['stemer'\\]"),
        ({"stemmer": "klingon"}, "No Snowball stemmer for 'klingon'"),
        ({"pattern": "("}, "not a valid regular expression"),
        ({"k1": -1}, "k1 must be"),
        ("english", "must be a KeywordConfig or a dict"),
    ],
)
def test_bad_settings_are_refused_when_the_store_opens(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        open_embedded_store(None, keyword=settings)
    with pytest.raises(ConfigurationError, match=message):
        keyword_config_of(settings)


def test_the_haystack_store_keeps_the_settings_in_yaml(tmp_path):
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    store = EmbeddedDocumentStore(path=str(tmp_path / "haystack"), keyword={"stemmer": None, "k1": 1.2})
    data = store.to_dict()
    assert data["init_parameters"]["keyword"] == KeywordConfig(stemmer=None, k1=1.2).to_dict()
    assert EmbeddedDocumentStore.from_dict(data).store is store.store
    assert EmbeddedDocumentStore(path=None).to_dict()["init_parameters"]["keyword"] is None


def test_haystack_keyword_retrieval_follows_the_settings_sync_and_async(tmp_path):
    import asyncio

    from haystack import Document
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderKeywordRetriever
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    documents = [Document(id=record.id, content=record.content) for record in RECORDS]
    stemmed = EmbeddedDocumentStore(path=str(tmp_path / "stemmed"))
    plain = EmbeddedDocumentStore(path=str(tmp_path / "plain"), keyword=NO_STEMMING)
    found = {}
    for name, store in (("stemmed", stemmed), ("plain", plain)):
        store.write_documents(documents)
        retriever = DualEncoderKeywordRetriever(document_store=store, top_k=5)
        sync = retriever.run(query="running")["documents"]
        assert asyncio.run(retriever.run_async(query="running"))["documents"] == sync
        found[name] = [document.id for document in sync]
    assert found == {"stemmed": ["runs"], "plain": []}
