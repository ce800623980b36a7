"""Indexing a folder again removes the passages of files deleted from it since, and says how many; --keep-missing
keeps them; other folders and sources in the same store are never touched."""

import json
from pathlib import Path

from typer.testing import CliRunner

from dual_encoder.cli import app
from dual_encoder.documents import DocumentInput
from dual_encoder.embedded import open_embedded_store
from dual_encoder.search import index_documents
from dual_encoder.sources import FOLDER_FILES_METADATA_KEY, forget_missing_files, read_documents

runner = CliRunner()

NOTES = {
    "moon.txt": "The Moon's gravity causes ocean tides.",
    "bread.md": "Sourdough bread rises thanks to wild yeast.",
    "trains/steam.md": "Steam locomotives burn coal to boil water.",
}
# Long enough to be cut into several passages of at most 32 tokens.
LONG = "\n\n".join(
    f"Paragraph {n} is about volcanoes, magma chambers and the ash clouds of eruptions." for n in range(8)
)


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def write_folder(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def index(source: Path, store: Path, *extra: str) -> str:
    result = runner.invoke(
        app, ["index", str(source), "--store", str(store), "--no-progress", "--passage-tokens", "32", *extra]
    )
    assert result.exit_code == 0, result.output
    return flat(result.output)


def stored(store: Path) -> dict[str, dict]:
    """Id -> meta of every record in the store at ``store``."""
    opened = open_embedded_store(store)
    try:
        return {record.id: dict(record.meta) for record in opened.list()}
    finally:
        opened.close()


def sources_of(records: dict[str, dict]) -> set[str]:
    return {meta["source_id"] for meta in records.values()}


def test_files_deleted_from_a_folder_lose_their_passages_on_the_next_run(tmp_path):
    notes = write_folder(tmp_path / "notes", {**NOTES, "volcano.md": LONG})
    store = tmp_path / "store"
    first = index(notes, store)
    assert "Removed" not in first
    before = stored(store)
    volcano_passages = [i for i, meta in before.items() if meta["source_id"] == "volcano.md"]
    assert len(volcano_passages) > 1, "the long file must be split for this test"
    assert sources_of(before) == {*NOTES, "volcano.md"}

    (notes / "volcano.md").unlink()
    (notes / "trains" / "steam.md").unlink()
    output = index(notes, store)
    expected = len(volcano_passages) + 1
    assert f"Removed {expected} passages of 2 files no longer in '{notes}': trains/steam.md, volcano.md." in output
    after = stored(store)
    assert sources_of(after) == {"moon.txt", "bread.md"}
    assert after == {i: meta for i, meta in before.items() if meta["source_id"] in ("moon.txt", "bread.md")}
    assert f"The store now holds {len(after)} documents" in output
    # Searching finds nothing of the deleted files.
    found = runner.invoke(app, ["search", "volcano eruption", "--store", str(store), "--json", "-k", "10"])
    assert found.exit_code == 0, found.output
    assert {hit["id"] for hit in json.loads(found.stdout)["results"]} == set(after)

    again = index(notes, store)
    assert "Removed" not in again and "0 encoded" in again


def test_keep_missing_keeps_the_passages_until_a_run_without_it(tmp_path):
    notes = write_folder(tmp_path / "notes", dict(NOTES))
    store = tmp_path / "store"
    index(notes, store)
    (notes / "bread.md").unlink()

    kept = index(notes, store, "--keep-missing")
    assert "1 files indexed from" in kept and "(bread.md); --keep-missing kept their 1 passages" in kept
    assert "Removed" not in kept
    assert sources_of(stored(store)) == set(NOTES)
    # Still remembered as the folder's: the note repeats, and a run without the flag removes the passages.
    assert "--keep-missing kept their 1 passages" in index(notes, store, "--keep-missing")
    assert "Removed 1 passages of 1 files no longer in" in index(notes, store)
    assert sources_of(stored(store)) == set(NOTES) - {"bread.md"}


def test_other_folders_and_sources_in_the_store_are_left_alone(tmp_path):
    notes = write_folder(tmp_path / "notes", dict(NOTES))
    papers = write_folder(tmp_path / "papers", {"physics.md": "Heat pumps move heat from cold air into a house."})
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "j1", "content": "Glaciers carve valleys.", "meta": {"path": "moon.txt"}}))
    store = tmp_path / "store"
    for source in (notes, papers, extra):
        index(source, store)

    # moon.txt moves from notes/ to papers/: papers/ is indexed first, so the stored moon.txt is papers' now.
    (notes / "moon.txt").rename(papers / "moon.txt")
    (notes / "bread.md").unlink()
    assert "Removed" not in index(papers, store)
    output = index(notes, store)
    assert "Removed 1 passages of 1 files no longer in" in output and ": bread.md." in output
    records = stored(store)
    assert sources_of(records) == {"moon.txt", "trains/steam.md", "physics.md", "j1"}
    assert records["j1"]["path"] == "moon.txt"  # a JSON-lines document that only looks like a file is kept

    # A single file or a JSON-lines file records nothing and removes nothing.
    recorded = open_embedded_store(store)
    try:
        folders = recorded.metadata[FOLDER_FILES_METADATA_KEY]
    finally:
        recorded.close()
    assert set(folders) == {str(notes.resolve()), str(papers.resolve())}
    assert folders[str(notes.resolve())] == ["trains/steam.md"]
    assert folders[str(papers.resolve())] == ["moon.txt", "physics.md"]


def test_records_stored_whole_without_passage_meta_are_removed_too(tmp_path, minilm):
    """A folder's document stored under its own id without passage meta (as unsplit indexing once stored it)."""
    notes = write_folder(tmp_path / "notes", {"moon.txt": NOTES["moon.txt"], "old.md": "An old note about kites."})
    store = open_embedded_store(tmp_path / "store")
    try:
        index_documents(minilm, store, read_documents(notes))  # no passage meta: ids are the paths
        assert "source_id" not in store.stored_versions(["old.md"])["old.md"].meta
        assert forget_missing_files(store, notes, read_documents(notes)).files == ()  # the first run records only
        (notes / "old.md").unlink()
        missing = forget_missing_files(store, notes, read_documents(notes))
        assert missing is not None and missing.files == ("old.md",) and missing.passages == 1 and missing.removed
        assert [record.id for record in store.list()] == ["moon.txt"]
        assert forget_missing_files(store, notes / "moon.txt", [DocumentInput(id="moon.txt", content="x")]) is None
    finally:
        store.close()
