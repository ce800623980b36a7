import logging

import numpy as np
import pytest

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError, EmptyTextError

TEXT = "Tides are caused by the gravity of the Moon."


def test_siamese_without_prompts_gives_the_same_vector_for_both_roles(minilm):
    assert not minilm.is_asymmetric
    np.testing.assert_allclose(minilm.encode_query(TEXT), minilm.encode_documents([TEXT])[0], atol=1e-6)


def test_role_prompts_are_always_applied(minilm):
    prompted = DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt": "query: ", "document_prompt": "passage: "})
    query = prompted.encode_query(TEXT)
    document = prompted.encode_documents([TEXT])[0]
    np.testing.assert_allclose(query, minilm.encode_query("query: " + TEXT), atol=1e-5)
    np.testing.assert_allclose(document, minilm.encode_documents(["passage: " + TEXT])[0], atol=1e-5)
    assert not np.allclose(query, document, atol=1e-3)


def test_asymmetric_model_uses_different_towers(asymmetric_model_dir, minilm):
    encoder = DualEncoder(str(asymmetric_model_dir))
    assert encoder.is_asymmetric
    query, document = encoder.encode_query(TEXT), encoder.encode_documents([TEXT])[0]
    assert not np.allclose(query, document, atol=1e-3)
    # The document tower is the full model, so documents land exactly where the Siamese model puts them.
    np.testing.assert_allclose(document, minilm.encode_documents([TEXT])[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["siamese-with-prompts", "asymmetric"])
def test_batches_run_here_match_sentence_transformers_encode(kind, asymmetric_model_dir):
    """Our batch loop skips ST's encode set-up; the vectors must be the ones encode_query/encode_document give."""
    if kind == "asymmetric":
        encoder = DualEncoder(str(asymmetric_model_dir))
    else:
        encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt": "query: ", "normalize": True})
    queries = [TEXT, "Why is the sky blue?", "tides"]
    expected = encoder.model.encode_query(
        queries, prompt=encoder.query_prompt, convert_to_numpy=True, normalize_embeddings=True
    )
    direct = encoder.encode_queries(queries)
    assert direct.dtype == np.float32 and direct.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(direct, expected, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_query(queries[1]), expected[1], atol=1e-6)
    np.testing.assert_allclose(encoder.encode_queries(queries, progress_bar=True), expected, atol=1e-6)
    documents = [TEXT * (1 + i % 4) + f" Document {i}." for i in range(23)]
    expected_documents = encoder.model.encode_document(
        documents, prompt=encoder.document_prompt, convert_to_numpy=True, normalize_embeddings=True
    )
    small_batches = DualEncoder({**encoder.config.to_dict(), "batch_size": 4})
    for own_loop in (False, True):  # ST's encode (torch's default) and our loop (the OpenVINO default)
        small_batches._own_batch_loop = own_loop
        np.testing.assert_allclose(small_batches.encode_documents(documents), expected_documents, atol=1e-5)
        np.testing.assert_allclose(small_batches.encode_queries(queries * 3), np.tile(expected, (3, 1)), atol=1e-5)
    # A model someone switched to training mode (dropout on) goes through ST's encode, which restores eval.
    encoder.model.train()
    try:
        np.testing.assert_allclose(encoder.encode_queries(queries), expected, atol=1e-6)
    finally:
        encoder.model.eval()


def test_vectors_are_float32_unit_length(minilm):
    vectors = minilm.encode_documents([TEXT, "Another document."])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("query", ["", "   \n\t", None, 42])
def test_empty_or_non_text_queries_are_refused(minilm, query):
    with pytest.raises(EmptyTextError, match="Query 0"):
        minilm.encode_query(query)


def test_long_documents_are_truncated_with_one_warning(caplog):
    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 32})
    long_text = "word " * 200
    with caplog.at_level(logging.WARNING, logger="dual_encoder"):
        first = encoder.encode_documents([long_text, "short"])
        encoder.encode_documents([long_text])
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 of 2 document texts" in warnings[0].getMessage() and "32 tokens" in warnings[0].getMessage()
    # Truncation means only the first 32 tokens count: more words after that change nothing.
    np.testing.assert_allclose(first[0], encoder.encode_documents([long_text + "extra " * 50])[0], atol=1e-5)


def test_normalize_false_on_a_self_normalising_model_is_refused():
    with pytest.raises(ConfigurationError, match="normalises its embeddings itself"):
        DualEncoder({"model": "all-MiniLM-L6-v2", "normalize": False}).load()
