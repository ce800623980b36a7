import json
import sys
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dual_encoder.cli import app, main

runner = CliRunner()


def long_text() -> str:
    """About 2,000 words of prose in paragraphs: several passages of all-MiniLM-L6-v2."""
    corpus = resources.files("dual_encoder") / "sample_data" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    return "\n\n".join(f"## {row['meta']['title']}\n\n{row['content']}" for row in rows * 2)


def search_json(store: Path, question: str, *extra: str) -> dict:
    result = runner.invoke(app, ["search", question, "--store", str(store), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout holds the JSON document and nothing else


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
    assert "as 2 passages" in flat(result.output) and "2 encoded" in flat(result.output)
    again = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert "0 encoded, 2 unchanged" in flat(again.output) and "holds 2 documents" in flat(again.output)
    found = runner.invoke(app, ["search", "what causes tides", "--store", str(store), "-k", "1"])
    assert found.exit_code == 0, found.output
    assert "moon.txt" in found.output and "bread.md" not in found.output


def test_index_jsonl_with_meta_and_filters(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": "a", "content": "Volcanoes erupt when magma rises.", "meta": {"lang": "en"}},
                {"id": "b", "text": "Vulkane brechen aus, wenn Magma aufsteigt.", "lang": "de"},
            ]
        )
    )
    store = tmp_path / "store"
    assert runner.invoke(app, ["index", str(source), "--store", str(store), "--no-progress"]).exit_code == 0
    found = runner.invoke(
        app,
        [
            "search",
            "volcano eruption",
            "--store",
            str(store),
            "--filters",
            '{"field": "meta.lang", "operator": "==", "value": "de"}',
        ],
    )
    assert found.exit_code == 0, found.output
    assert "│ b " in found.output and "│ a " not in found.output


def test_combine_builds_an_asymmetric_model_with_the_same_document_space(tmp_path, minilm):
    from dual_encoder.encoder import DualEncoder

    result = runner.invoke(app, ["combine", str(tmp_path / "light"), "--query-layers", "3"])
    assert result.exit_code == 0, result.output
    combined = DualEncoder(str(tmp_path / "light"))
    assert combined.is_asymmetric
    assert combined.fingerprint.document_space == minilm.fingerprint.document_space
    assert (tmp_path / "light" / "router_config.json").exists()


def test_a_long_file_is_indexed_as_passages_with_their_position(tmp_path, caplog):
    notes = tmp_path / "notes"
    notes.mkdir()
    text = long_text()
    (notes / "long.md").write_text(text, encoding="utf-8")
    (notes / "short.txt").write_text("Sourdough bread rises thanks to wild yeast.", encoding="utf-8")
    store = tmp_path / "store"
    result = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    count = int(flat(result.output).split(" as ")[1].split()[0])
    assert count > 6 and f"{count} encoded" in flat(result.output)
    assert "truncated" not in caplog.text  # every passage fits the model

    found = search_json(store, "What makes corals turn white?", "-k", "100")
    assert found["query"] == "What makes corals turn white?" and found["method"] == "exact"
    assert len(found["results"]) == count
    assert [hit["rank"] for hit in found["results"]] == list(range(1, count + 1))
    scores = [hit["score"] for hit in found["results"]]
    assert scores == sorted(scores, reverse=True)
    # Passages of this file mix several short sections, so the answer is near, not always at, the top.
    assert any("coral" in hit["content"] for hit in found["results"][:3])
    for hit in found["results"]:
        meta = hit["meta"]
        if hit["id"] == "short.txt":
            assert meta["passage_count"] == 1 and meta["source_id"] == "short.txt"
            continue
        assert meta["source_id"] == "long.md" and meta["path"] == "long.md" and meta["passage_count"] == count - 1
        assert hit["id"] == f"long.md#{meta['passage_index']}"
        assert text[meta["char_start"] : meta["char_end"]] == hit["content"]

    again = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert f"0 encoded, {count} unchanged" in flat(again.output)

    # The file gets shorter: its surplus passages leave the store with it.
    (notes / "long.md").write_text(text[: len(text) // 3], encoding="utf-8")
    shorter = runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"])
    assert shorter.exit_code == 0, shorter.output
    now = int(flat(shorter.output).split(" as ")[1].split()[0])
    assert f"{count - now} stale passages removed" in flat(shorter.output)
    assert f"holds {now} documents" in flat(shorter.output)
    left = search_json(store, "bread", "-k", "100")["results"]
    assert sorted(hit["meta"]["passage_index"] for hit in left if hit["id"] != "short.txt") == list(range(now - 1))


def test_passage_settings_are_recorded_and_can_be_changed(tmp_path, caplog):
    source = tmp_path / "long.md"
    source.write_text(long_text(), encoding="utf-8")
    store = tmp_path / "store"
    small = runner.invoke(
        app,
        ["index", str(source), "-s", str(store), "--passage-tokens", "64", "--passage-overlap", "0", "--no-progress"],
    )
    assert small.exit_code == 0, small.output
    small_count = int(flat(small.output).split(" as ")[1].split()[0])
    again = runner.invoke(app, ["index", str(source), "-s", str(store), "--no-progress"])  # recorded: 64, 0
    assert f"0 encoded, {small_count} unchanged" in flat(again.output)
    default = runner.invoke(app, ["index", str(source), "-s", str(store), "--passage-tokens", "0", "--no-progress"])
    default_count = int(flat(default.output).split(" as ")[1].split()[0])
    assert default_count < small_count / 2
    assert f"holds {default_count} documents" in flat(default.output)

    # Whole documents replace the passages too; the model embeds only the beginning, and says so.
    whole = runner.invoke(app, ["index", str(source), "-s", str(store), "--no-split", "--no-progress"])
    assert whole.exit_code == 0, whole.output
    assert "Indexed 1 documents into" in flat(whole.output) and "holds 1 documents" in flat(whole.output)
    assert "longer than the document tower's limit" in caplog.text


def test_search_json_is_the_only_output_on_stdout(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "a", "content": "Volcanoes erupt when magma rises.", "meta": {"n": 1}}))
    store = tmp_path / "store"
    assert runner.invoke(app, ["index", str(source), "--store", str(store), "--no-progress"]).exit_code == 0
    found = search_json(store, "volcano", "--filters", '{"field": "meta.n", "operator": "==", "value": 1}')
    assert found["filters"] == {"field": "meta.n", "operator": "==", "value": 1} and found["top_k"] == 5
    (hit,) = found["results"]
    assert (hit["id"], hit["content"], hit["meta"]["n"], hit["meta"]["source_id"]) == (
        "a",
        "Volcanoes erupt when magma rises.",
        1,
        "a",
    )
    assert 0.3 < hit["score"] <= 1.0 and "encoder_fingerprint" in hit["meta"]


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"dual-encoder {version('dual-encoder-retrieval')}\n"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    notes = tmp_path_factory.mktemp("notes")
    (notes / "moon.txt").write_text("The Moon's gravity causes ocean tides.")
    store = tmp_path_factory.mktemp("stores") / "store"
    assert runner.invoke(app, ["index", str(notes), "--store", str(store), "--no-progress"]).exit_code == 0
    return store


def make_inputs(tmp: Path) -> None:
    (tmp / "empty-folder").mkdir()
    (tmp / "binary").mkdir()
    (tmp / "binary" / "ok.txt").write_text("fine")
    (tmp / "binary" / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp / "latin1").mkdir()
    (tmp / "latin1" / "café.txt").write_bytes("Un café, s'il vous plaît.".encode("latin-1"))
    (tmp / "blank").mkdir()
    (tmp / "blank" / "a.txt").write_text("")
    (tmp / "blank" / "b.md").write_text("  \n\n ")
    (tmp / "report.pdf").write_bytes(b"%PDF-1.7")
    (tmp / "bad.jsonl").write_text('{"id": "a", "content": "x"}\n{"id": "b", content: y}\n')
    (tmp / "notes").mkdir()
    (tmp / "notes" / "a.txt").write_text("Some text.")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["index", "{tmp}/nothing-here"], "'{tmp}/nothing-here' does not exist. Pass a folder of .txt/.md files"),
        (["index", "{tmp}/empty-folder"], "holds no .txt/.md files to index. Put text files in it"),
        (["index", "{tmp}/binary"], "image.md' is a binary file (it holds NUL bytes), not text; convert it"),
        (["index", "{tmp}/latin1"], "café.txt' is not UTF-8 text (byte 0xe9 at offset 6); save it as UTF-8"),
        (["index", "{tmp}/blank"], "None of the 2 document(s) in '{tmp}/blank' has any text; nothing was indexed"),
        (["index", "{tmp}/report.pdf"], "is not a folder of .txt/.md files, one .txt/.md file, or a .jsonl file"),
        (["index", "{tmp}/bad.jsonl"], "bad.jsonl:2 is not valid JSON"),
        (["index", "{tmp}/notes", "--passage-tokens", "1000"], "Use a passage size of at most 254 tokens"),
        (["index", "{tmp}/notes", "--passage-overlap", "200"], "Use an overlap of at most 127 tokens"),
        (["index", "{tmp}/notes", "--store", "{tmp}/report.pdf"], "is a file; an embedded store is a folder"),
        (["index", "{tmp}/notes/a.txt", "--store", "{tmp}/notes"], "'{tmp}/notes' is a folder of other files, not an"),
        (["search", "x", "--store", "{tmp}/missing"], "No embedded store at '{tmp}/missing'. Create one with"),
        (["search", "x", "--store", "{tmp}/notes"], "No embedded store at '{tmp}/notes'. Create one with"),
        (["search", "  ", "--store", "{store}"], "The question is empty"),
        (["search", "x", "--store", "{store}", "--filters", "{bad"], "--filters is not valid JSON"),
        (["search", "x", "--store", "{store}", "-k", "0"], "top_k must be a positive integer, got 0"),
    ],
)
def test_errors_name_the_fix_on_stderr_without_a_traceback(tmp_path, small_store, capsys, arguments, message):
    make_inputs(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{store}", str(small_store)) for a in arguments]
    if arguments[0] == "index" and "--store" not in arguments:
        argv += ["--store", str(tmp_path / "store"), "--no-progress"]
    code, out, err = run_main(argv, capsys)
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]  # nothing written among a user's files
    assert code == 2
    assert message.replace("{tmp}", str(tmp_path)) in flat(err) and "Traceback" not in err + out
    assert out == ""
    if arguments[0] == "index" and not any(a.startswith("--passage") for a in arguments):
        assert not (tmp_path / "store").exists()  # input problems are found before a store is created


def test_unreadable_files_are_all_named(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text("text")
    original = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name != "b.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, out, err = run_main(["index", str(folder), "--store", str(tmp_path / "store")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "2 of 3 files in" in flat(err) and "nothing was indexed" in flat(err)
    assert "a.txt' cannot be read (Permission denied); check its permissions" in flat(err)
    assert "c.txt' cannot be read" in flat(err) and "b.txt" not in err


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the installed entry point in this process: exit code, stdout, stderr."""
    old = sys.argv
    sys.argv = ["dual-encoder", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
