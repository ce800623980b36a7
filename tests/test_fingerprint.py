import pytest

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import DimensionMismatchError, EncoderMismatchError
from dual_encoder.fingerprint import EncoderFingerprint, StoredSpace, check_space_compatible, check_store_compatible


def test_fingerprint_is_stable_across_encoders_and_loads(minilm):
    assert DualEncoder("all-MiniLM-L6-v2").fingerprint == minilm.fingerprint
    assert minilm.fingerprint.document_space.startswith("ds1-")
    assert minilm.fingerprint.dimension == 384


@pytest.mark.parametrize("change", [{"document_prompt": "passage: "}, {"max_seq_length": 128}])
def test_document_side_changes_give_a_new_document_space(minilm, change):
    other = DualEncoder({"model": "all-MiniLM-L6-v2", **change}).fingerprint
    assert other.document_space != minilm.fingerprint.document_space


def test_query_prompt_changes_only_the_query_tower(minilm):
    other = DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt": "query: "}).fingerprint
    assert other.document_space == minilm.fingerprint.document_space
    assert other.query_tower != minilm.fingerprint.query_tower


def test_light_query_tower_keeps_the_document_space(asymmetric_model_dir, other_space_model_dir, minilm):
    light = DualEncoder(str(asymmetric_model_dir)).fingerprint
    assert light.document_space == minilm.fingerprint.document_space
    assert light.query_tower != minilm.fingerprint.query_tower
    assert DualEncoder(str(other_space_model_dir)).fingerprint.document_space != minilm.fingerprint.document_space


def test_mismatch_error_names_both_sides(minilm):
    with pytest.raises(EncoderMismatchError) as error:
        check_space_compatible(minilm.fingerprint, stored_space="ds1-000000000000000000000000", stored_dimension=384)
    message = str(error.value)
    assert "ds1-000000000000000000000000" in message and minilm.fingerprint.document_space in message
    assert minilm.fingerprint.query_tower in message


def test_dimension_mismatch_is_refused(minilm):
    with pytest.raises(DimensionMismatchError, match=r"holds 768-d embeddings.*produces 384-d"):
        check_store_compatible(minilm.fingerprint, StoredSpace(document_space=None, dimension=768), where="the store")


def test_similarity_mismatch_is_refused(minilm):
    with pytest.raises(EncoderMismatchError, match="scores with 'dot'"):
        check_store_compatible(
            minilm.fingerprint, StoredSpace(document_space=None, dimension=384, similarity="dot"), where="the store"
        )


def test_round_trip():
    fingerprint = EncoderFingerprint(document_space="ds1-a", query_tower="qt1-b", dimension=3, similarity="dot")
    assert EncoderFingerprint.from_dict(fingerprint.to_dict()) == fingerprint
