import json

import pytest
from typer.testing import CliRunner

from dual_encoder.cli import app

runner = CliRunner()


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_demo_indexes_the_sample_corpus_and_answers(tmp_path):
    result = runner.invoke(app, ["demo", "--store", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "Indexed 30 sample passages" in flat(result.output)
    assert "tides" in result.output and "sourdough" in result.output and "heat-pumps" in result.output


def test_index_a_folder_then_search(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "moon.txt").write_text("The Moon's gravity causes ocean tides.")
    (notes / "bread.md").write_text("Sourdough bread rises thanks to wild yeast.")
    store = tmp_path / "store"
    result = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 encoded" in flat(result.output)
    again = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert "0 encoded, 2 unchanged" in flat(again.output) and "holds 2 documents" in flat(again.output)
    found = runner.invoke(app, ["search", "what causes tides", "--store", str(store), "-k", "1"])
    assert found.exit_code == 0, found.output
    assert "moon.txt" in found.output and "bread.md" not in found.output


def test_index_jsonl_with_meta_and_filters(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "\n".join(json.dumps(row) for row in [
            {"id": "a", "content": "Volcanoes erupt when magma rises.", "meta": {"lang": "en"}},
            {"id": "b", "text": "Vulkane brechen aus, wenn Magma aufsteigt.", "lang": "de"},
        ])
    )
    store = tmp_path / "store"
    assert runner.invoke(app, ["index", str(source), "--store", str(store), "--no-progress"]).exit_code == 0
    found = runner.invoke(app, ["search", "volcano eruption", "--store", str(store),
                                "--filters", '{"field": "meta.lang", "operator": "==", "value": "de"}'])
    assert found.exit_code == 0, found.output
    assert "│ b " in found.output and "│ a " not in found.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["search", "x", "--store", "{tmp}/missing"], "No embedded store"),
        (["index", "{tmp}/nothing-here", "--store", "{tmp}/s"], "does not exist"),
    ],
)
def test_errors_are_reported_without_tracebacks(tmp_path, capsys, arguments, message):
    from dual_encoder.cli import main

    import sys

    argv = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    old = sys.argv
    sys.argv = ["dual-encoder", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    assert exit_info.value.code == 2
    output = flat(capsys.readouterr().out)
    assert message in output and "Traceback" not in output


def test_combine_builds_an_asymmetric_model_with_the_same_document_space(tmp_path, minilm):
    from dual_encoder.encoder import DualEncoder

    result = runner.invoke(app, ["combine", str(tmp_path / "light"), "--query-layers", "3"])
    assert result.exit_code == 0, result.output
    combined = DualEncoder(str(tmp_path / "light"))
    assert combined.is_asymmetric
    assert combined.fingerprint.document_space == minilm.fingerprint.document_space
    assert (tmp_path / "light" / "router_config.json").exists()
