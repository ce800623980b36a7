"""Named prompts from the model folder, chosen per role, and encode() keyword arguments that pass through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dual_encoder.config import EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError

TEXTS = ["Tides are caused by the gravity of the Moon.", "Heat pumps move heat instead of making it."]
QUESTION = "What causes tides?"

# Prompts as e5/bge/jina-style folders name them. "retrieval.*" are only ever used when chosen by name.
FOLDER_PROMPTS = {
    "query": "query: ",
    "passage": "passage: ",
    "retrieval.query": "Represent the question for retrieving supporting passages: ",
    "retrieval.passage": "Represent the passage for retrieval: ",
    "classification": "Classify the topic: ",
}


@pytest.fixture(scope="module")
def prompts_model_dir(tmp_path_factory) -> Path:
    """The bundled all-MiniLM-L6-v2 folder, copied, with named prompts in config_sentence_transformers.json."""
    from dual_encoder.models import resolve_model_location

    folder = tmp_path_factory.mktemp("models") / "minilm-with-prompts"
    shutil.copytree(resolve_model_location("all-MiniLM-L6-v2"), folder)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["prompts"] = FOLDER_PROMPTS
    config["default_prompt_name"] = None
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def _encoder(folder: Path, **options) -> DualEncoder:
    return DualEncoder({"model": str(folder), **options})


def test_prompts_chosen_by_name_are_the_folders_and_match_sentence_transformers(prompts_model_dir):
    encoder = _encoder(prompts_model_dir, query_prompt_name="retrieval.query", document_prompt_name="retrieval.passage")
    assert encoder.query_prompt == FOLDER_PROMPTS["retrieval.query"]
    assert encoder.document_prompt == FOLDER_PROMPTS["retrieval.passage"]
    model = encoder.model
    expected_queries = model.encode_query([QUESTION], prompt_name="retrieval.query", convert_to_numpy=True)
    expected_documents = model.encode_document(TEXTS, prompt_name="retrieval.passage", convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode_queries([QUESTION]), expected_queries, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_documents(TEXTS), expected_documents, atol=1e-5)
    # The prompt really is applied: without it the vectors differ.
    plain = model.encode_document(TEXTS, prompt="", convert_to_numpy=True)
    assert not np.allclose(encoder.encode_documents(TEXTS), plain, atol=1e-3)


def test_without_a_name_each_role_takes_what_encode_query_and_encode_document_take(prompts_model_dir):
    encoder = _encoder(prompts_model_dir)
    model = encoder.model
    # sentence-transformers gives every model a "document" prompt ("" unless the folder sets one), and
    # encode_document prefers it to "passage": an e5-style folder's "passage: " is only used when named.
    assert encoder.query_prompt == "query: " and encoder.document_prompt == model.prompts["document"] == ""
    np.testing.assert_allclose(encoder.encode_documents(TEXTS), model.encode_document(TEXTS), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_queries([QUESTION]), model.encode_query([QUESTION]), atol=1e-5)
    named = _encoder(prompts_model_dir, document_prompt_name="passage")
    assert named.document_prompt == "passage: "
    np.testing.assert_allclose(
        named.encode_documents(TEXTS), model.encode_document(TEXTS, prompt_name="passage"), atol=1e-5
    )


def test_the_fingerprint_records_the_resolved_prompt_text(prompts_model_dir):
    by_name = _encoder(prompts_model_dir, document_prompt_name="retrieval.passage").fingerprint
    by_text = _encoder(prompts_model_dir, document_prompt=FOLDER_PROMPTS["retrieval.passage"]).fingerprint
    assert by_name == by_text  # a name and its text are the same space, the same query tower
    default = _encoder(prompts_model_dir).fingerprint  # the empty "document" prompt
    other_name = _encoder(prompts_model_dir, document_prompt_name="classification").fingerprint
    assert len({by_name.document_space, default.document_space, other_name.document_space}) == 3
    # A query prompt name changes the query tower only: the index stays valid.
    query_named = _encoder(prompts_model_dir, query_prompt_name="retrieval.query").fingerprint
    assert query_named.document_space == default.document_space
    assert query_named.query_tower != default.query_tower


def test_an_unknown_prompt_name_is_refused_with_the_folders_prompts(prompts_model_dir):
    encoder = _encoder(prompts_model_dir, document_prompt_name="retrieval.document")
    with pytest.raises(ConfigurationError) as error:
        encoder.load()
    message = str(error.value)
    assert "document_prompt_name='retrieval.document'" in message
    assert "'retrieval.passage'" in message and "'classification'" in message and "document_prompt" in message


def test_a_prompt_name_on_a_model_without_named_prompts_lists_what_it_has():
    # all-MiniLM-L6-v2 saves no prompts; sentence-transformers gives it empty "query" and "document" ones.
    with pytest.raises(ConfigurationError, match=r"its prompts: \['document', 'query'\].*give the text itself"):
        DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt_name": "instruction"}).load()


def test_text_and_name_for_the_same_role_are_refused():
    with pytest.raises(ConfigurationError, match="both query_prompt='q: ' and query_prompt_name='query'"):
        EncoderConfig(query_prompt="q: ", query_prompt_name="query")


# ------------------------------------------------------------------------------------- encode() keywords
def test_encode_kwargs_that_keep_the_space_pass_through(minilm):
    config = EncoderConfig(encode_kwargs={"batch_size": 3, "show_progress_bar": True})
    assert config.batch_size == 3 and config.encode_kwargs == {"show_progress_bar": True}
    assert config.show_progress_bar is True
    assert EncoderConfig.from_dict(config.to_dict()) == config
    assert EncoderConfig(encode_kwargs={"batch_size": 3}) == EncoderConfig(batch_size=3)
    encoder = DualEncoder(config)
    documents = [f"{TEXTS[0]} Variant {i}." for i in range(7)]
    np.testing.assert_allclose(encoder.encode_documents(documents), minilm.encode_documents(documents), atol=1e-5)
    assert encoder.fingerprint == minilm.fingerprint


def test_show_progress_bar_is_the_default_for_calls_that_do_not_choose(capsys):
    documents = [f"{TEXTS[1]} Variant {i}." for i in range(5)]
    with_bar = DualEncoder({"encode_kwargs": {"show_progress_bar": True}}).load()
    without_bar = DualEncoder({}).load()
    _ = with_bar.fingerprint, without_bar.fingerprint
    capsys.readouterr()  # anything loading printed
    with_bar.encode_documents(documents)
    assert "100%" in capsys.readouterr().err  # the bar ran to the end
    with_bar.encode_documents(documents, progress_bar=False)
    without_bar.encode_documents(documents)
    assert "100%" not in capsys.readouterr().err
    without_bar.encode_documents(documents, progress_bar=True)
    assert "100%" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, value, fix",
    [
        ("normalize_embeddings", True, "set normalize"),
        ("prompt_name", "query", "query_prompt_name"),
        ("prompt", "query: ", "set query_prompt"),
        ("precision", "int8", "backend="),
        ("truncate_dim", 128, "dimension"),
        ("convert_to_tensor", True, "NumPy"),
        ("task", "query", "route"),
        ("pooling_mode", "cls", "model-specific"),
    ],
)
def test_encode_kwargs_that_would_change_the_space_are_refused(key, value, fix):
    with pytest.raises(ConfigurationError) as error:
        EncoderConfig(encode_kwargs={key: value})
    message = str(error.value)
    assert repr(key) in message and fix in message and "Accepted keys: ['batch_size', 'show_progress_bar']" in message


@pytest.mark.parametrize(
    "encode_kwargs, match",
    [
        ("batch_size=8", "must be a mapping"),
        ({"batch_size": 0}, r"encode_kwargs\['batch_size'\] must be a positive integer"),
        ({"show_progress_bar": "yes"}, "must be true or false"),
    ],
)
def test_malformed_encode_kwargs_are_refused(encode_kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        EncoderConfig(encode_kwargs=encode_kwargs)


def test_a_batch_size_given_twice_must_agree():
    with pytest.raises(ConfigurationError, match="batch_size=8 and encode_kwargs\\['batch_size'\\]=16"):
        EncoderConfig(batch_size=8, encode_kwargs={"batch_size": 16})
    assert EncoderConfig(batch_size=16, encode_kwargs={"batch_size": 16}).batch_size == 16


# ------------------------------------------------------------------------------------------- adapters
def test_haystack_components_serialise_prompt_names_and_encode_kwargs(prompts_model_dir):
    from haystack import Document, Pipeline
    from haystack_integrations.components.embedders.dual_encoder import (
        DualEncoderDocumentEmbedder,
        DualEncoderTextEmbedder,
    )

    encoder = {
        "model": str(prompts_model_dir),
        "query_prompt_name": "retrieval.query",
        "document_prompt_name": "retrieval.passage",
        "encode_kwargs": {"show_progress_bar": False},
    }
    pipeline = Pipeline()
    pipeline.add_component("query", DualEncoderTextEmbedder(encoder=encoder))
    pipeline.add_component("documents", DualEncoderDocumentEmbedder(encoder=encoder, progress_bar=False))
    reloaded = Pipeline.loads(pipeline.dumps())
    for name in ("query", "documents"):
        config = reloaded.get_component(name).encoder_config
        assert config.query_prompt_name == "retrieval.query" and config.document_prompt_name == "retrieval.passage"
        assert config.encode_kwargs == {"show_progress_bar": False}
        assert config == EncoderConfig.coerce(encoder)

    reference = DualEncoder(encoder)
    embedding = reloaded.get_component("query").run(text=QUESTION)["embedding"]
    np.testing.assert_allclose(embedding, reference.encode_query(QUESTION), atol=1e-6)
    documents = reloaded.get_component("documents").run(documents=[Document(content=TEXTS[0])])["documents"]
    np.testing.assert_allclose(documents[0].embedding, reference.encode_documents(TEXTS[:1])[0], atol=1e-6)
    assert documents[0].meta["encoder_fingerprint"] == reference.fingerprint.document_space


def test_langchain_embeddings_take_prompt_names(prompts_model_dir):
    from langchain_dual_encoder import DualEncoderEmbeddings

    encoder = {
        "model": str(prompts_model_dir),
        "query_prompt_name": "retrieval.query",
        "document_prompt_name": "retrieval.passage",
    }
    embeddings = DualEncoderEmbeddings(encoder)
    reference = DualEncoder(encoder)
    np.testing.assert_allclose(embeddings.embed_query(QUESTION), reference.encode_query(QUESTION), atol=1e-6)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), reference.encode_documents(TEXTS), atol=1e-6)
    assert embeddings.fingerprint == reference.fingerprint
    assert embeddings.encoder.config.document_prompt_name == "retrieval.passage"
