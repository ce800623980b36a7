import pytest

from dual_encoder.config import EncoderConfig, validate_top_k
from dual_encoder.errors import ConfigurationError


def test_round_trips_every_field():
    config = EncoderConfig(
        model="some/folder",
        query_prompt="query: ",
        document_prompt="passage: ",
        normalize=True,
        similarity="dot",
        max_seq_length=128,
        batch_size=8,
        device="cpu",
        trust_remote_code=True,
        backend="openvino-bf16",
        encode_kwargs={"show_progress_bar": True},
    )
    assert EncoderConfig.from_dict(config.to_dict()) == config
    named = EncoderConfig(model="some/folder", query_prompt_name="query", document_prompt_name="passage")
    assert EncoderConfig.from_dict(named.to_dict()) == named
    assert named.to_dict()["document_prompt_name"] == "passage"


def test_definitions_are_hashable_and_equal_ones_hash_alike():
    first = EncoderConfig(query_prompt_name="query", encode_kwargs={"show_progress_bar": True})
    same = EncoderConfig.from_dict(first.to_dict())
    assert {first: "cached"}[same] == "cached"
    assert len({first, same, EncoderConfig(encode_kwargs={"show_progress_bar": False})}) == 2


def test_to_dict_is_plain_json():
    import json

    config = EncoderConfig(query_prompt_name="query", encode_kwargs={"batch_size": 8, "show_progress_bar": False})
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_key_is_refused_with_the_valid_ones_listed():
    with pytest.raises(ConfigurationError, match=r"Unknown encoder parameter\(s\) \['modle'\].*'model'"):
        EncoderConfig.from_dict({"modle": "x"})


@pytest.mark.parametrize(
    "field, value",
    [
        ("similarity", "euclidean"),
        ("batch_size", 0),
        ("max_seq_length", -1),
        ("model", "  "),
        ("normalize", "yes"),
        ("query_prompt_name", ""),
        ("document_prompt_name", 3),
        ("encode_kwargs", ["batch_size"]),
    ],
)
def test_invalid_values_are_refused(field, value):
    with pytest.raises(ConfigurationError, match=field):
        EncoderConfig(**{field: value})


def test_coerce_accepts_a_model_name_or_a_dict():
    assert EncoderConfig.coerce("x/y").model == "x/y"
    assert EncoderConfig.coerce({"model": "x/y", "batch_size": 4}).batch_size == 4
    with pytest.raises(ConfigurationError):
        EncoderConfig.coerce(42)


@pytest.mark.parametrize("top_k", [0, -3, 1.5, True, None])
def test_top_k_must_be_positive(top_k):
    with pytest.raises(ConfigurationError, match="top_k must be a positive integer"):
        validate_top_k(top_k)
