"""Reading documents to index from disk: a folder of text files, one text file, or a JSON-lines file.

JSON lines: one object per line with ``content`` (or ``text``), and optionally ``id`` and ``meta`` (any
other keys are folded into ``meta``). Text folders: every ``.txt`` and ``.md`` file below the folder, with
its relative path as id and ``meta.path``. One ``.txt`` / ``.md`` file: its file name as id and ``meta.path``.
Text files are read as UTF-8 (a byte-order mark is dropped) with line endings turned into ``\\n``.

Every problem is reported before anything is indexed, with the fix: a missing path, a folder without text
files, files that cannot be read, are binary or are not UTF-8 (all of them named at once), bad JSON lines.

Files deleted from a folder: :func:`forget_missing_files` records, in the store, which files each indexed folder
held, and on the next run over the same folder removes the passages of the files that are gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dual_encoder.chunking import SOURCE_ID_KEY
from dual_encoder.documents import DocumentInput
from dual_encoder.errors import InvalidDocumentError

if TYPE_CHECKING:
    from dual_encoder.embedded import EmbeddedStore

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_KINDS = "a folder of .txt/.md files, one .txt/.md file, or a .jsonl file"
_PROBLEMS_SHOWN = 10
#: Where :func:`forget_missing_files` records, in a store's metadata, the files (paths relative to the folder)
#: each indexed folder held, by the folder's resolved path.
FOLDER_FILES_METADATA_KEY = "folder_files"
#: The meta key a folder's documents carry their path in (relative to the folder).
PATH_META_KEY = "path"
_IDS_PER_FILTER = 500


def read_documents(source: str | Path) -> list[DocumentInput]:
    """Documents from a ``.jsonl`` file, a ``.txt``/``.md`` file or a folder of them, in a stable order.

    :raises InvalidDocumentError: naming the problem and its fix (nothing is read half-way).
    """
    path = Path(source)
    if not path.exists():
        raise InvalidDocumentError(f"'{source}' does not exist. Pass {_KINDS}.")
    if path.is_dir():
        return _read_folder(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix in TEXT_SUFFIXES:
        text, problem = _read_text_file(path)
        if problem:
            raise InvalidDocumentError(f"'{path}' {problem}")
        return [DocumentInput(id=path.name, content=text, meta={PATH_META_KEY: path.name})]
    raise InvalidDocumentError(
        f"'{source}' is not {_KINDS}; cannot read documents from it. Convert it to text (.txt/.md) or to JSON lines "
        f"with a 'content' field first."
    )


def _read_folder(folder: Path) -> list[DocumentInput]:
    try:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
    except OSError as error:
        raise InvalidDocumentError(
            f"Folder '{folder}' cannot be listed ({error.strerror or error}); check its permissions."
        ) from error
    if not files:
        raise InvalidDocumentError(
            f"Folder '{folder}' holds no {'/'.join(TEXT_SUFFIXES)} files to index. Put text files in it (other "
            f"kinds are not read), or pass a .jsonl file."
        )
    documents = []
    problems = []
    for file in files:
        relative = file.relative_to(folder).as_posix()
        text, problem = _read_text_file(file)
        if problem:
            problems.append(f"'{file}' {problem}")
        else:
            documents.append(DocumentInput(id=relative, content=text, meta={PATH_META_KEY: relative}))
    if problems:
        shown = "\n  ".join(problems[:_PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - _PROBLEMS_SHOWN} more" if len(problems) > _PROBLEMS_SHOWN else ""
        raise InvalidDocumentError(
            f"{len(problems)} of {len(files)} files in '{folder}' cannot be indexed as text; nothing was indexed. Fix "
            f"them, or move them out of the folder, and run again:\n  {shown}{more}"
        )
    return documents


def _read_text_file(file: Path) -> tuple[str, str | None]:
    """``(text, None)``, or ``("", why it cannot be indexed and how to fix it)``."""
    try:
        data = file.read_bytes()
    except OSError as error:
        return "", f"cannot be read ({error.strerror or error}); check its permissions."
    if b"\x00" in data:
        return "", "is a binary file (it holds NUL bytes), not text; convert it to UTF-8 text or remove it."
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return "", (
            f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8 or "
            f"remove it."
        )
    return text.replace("\r\n", "\n").replace("\r", "\n"), None


def json_objects(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; a line that is not a UTF-8 JSON object is refused by
    number."""
    try:
        handle = open(file, "rb")
    except OSError as error:
        raise InvalidDocumentError(
            f"'{file}' cannot be read ({error.strerror or error}); check its permissions."
        ) from error
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InvalidDocumentError(
                    f"{file}:{number} is not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as UTF-8."
                ) from error
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidDocumentError(
                    f"{file}:{number} is not valid JSON ({error.msg}); write one JSON object per line."
                ) from error
            if not isinstance(data, dict):
                raise InvalidDocumentError(
                    f'{file}:{number} must be a JSON object like {{"content": "..."}}, got {type(data).__name__}.'
                )
            yield number, data


def _read_jsonl(file: Path) -> list[DocumentInput]:
    documents = []
    seen: dict[str, int] = {}
    for number, data in json_objects(file):
        # With both keys present, the second stays in meta rather than being dropped.
        content = data.pop("content") if "content" in data else data.pop("text", None)
        doc_id = str(data.pop("id") if "id" in data else data.pop("_id", f"{file.stem}:{number}"))
        meta = data.pop("meta", {}) or {}
        if not isinstance(meta, dict):
            raise InvalidDocumentError(f"{file}:{number}: 'meta' must be an object, got {type(meta).__name__}.")
        meta = {**data, **meta}
        if doc_id in seen:
            raise InvalidDocumentError(
                f"{file}:{number} repeats id '{doc_id}' first used on line {seen[doc_id]}; ids must be unique."
            )
        seen[doc_id] = number
        documents.append(DocumentInput(id=doc_id, content=content, meta=meta))
    if not documents:
        raise InvalidDocumentError(
            f'\'{file}\' holds no documents. Write one JSON object per line, e.g. {{"id": "a", "content": "..."}}.'
        )
    return documents


@dataclass(frozen=True)
class MissingFiles:
    """What :func:`forget_missing_files` found: the ``files`` (relative paths) ``folder`` held when it was last
    indexed and holds no more, and their ``passages`` in the store: deleted (``removed``) or left in place."""

    folder: Path
    files: tuple[str, ...]
    passages: int
    removed: bool

    def describe(self, shown: int = 5) -> str:
        """The files as a short list for a message: the first ``shown`` names, then how many more."""
        names = ", ".join(self.files[:shown])
        return names + (f" and {len(self.files) - shown} more" if len(self.files) > shown else "")


def forget_missing_files(
    store: EmbeddedStore, source: str | Path, documents: Sequence[DocumentInput], *, keep: bool = False
) -> MissingFiles | None:
    """After ``documents`` read from the folder ``source`` were indexed into ``store``: delete the passages of the
    files the folder held when it was last indexed into this store and holds no more, and record its files now.

    A folder is known by its resolved path; a store may hold several folders (and other sources), and only files
    recorded for this folder are considered, so nothing another source wrote is touched. The first run over a
    folder records it and removes nothing. With ``keep``, the passages stay and the gone files stay recorded, so a
    later run without it removes them.

    :returns: ``None`` for a source that is not a folder, else what was found (no files: nothing was missing).
    """
    folder = Path(source)
    if not folder.is_dir():
        return None
    key = str(folder.resolve())
    recorded: Mapping[str, list[str]] = store.metadata.get(FOLDER_FILES_METADATA_KEY) or {}
    current = {document.id for document in documents}
    # Ids are shared by every source of a store: a file another folder holds now is that folder's.
    elsewhere = {name for other, names in recorded.items() if other != key for name in names}
    gone = tuple(sorted(set(recorded.get(key, ())) - current - elsewhere))
    passages = 0
    if gone:
        passages = _passage_count(store, gone) if keep else _delete_passages(store, gone)
    still_recorded = gone if keep else ()
    store.set_metadata(FOLDER_FILES_METADATA_KEY, {**recorded, key: sorted(current.union(still_recorded))})
    return MissingFiles(folder=folder, files=gone, passages=passages, removed=bool(gone) and not keep)


def _file_filters(files: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Filters matching the passages of ``files`` (a folder's documents), a group of files at a time."""
    for begin in range(0, len(files), _IDS_PER_FILTER):
        group = list(files[begin : begin + _IDS_PER_FILTER])
        yield {
            "operator": "AND",
            "conditions": [
                {"field": f"meta.{SOURCE_ID_KEY}", "operator": "in", "value": group},
                {"field": f"meta.{PATH_META_KEY}", "operator": "in", "value": group},
            ],
        }


def _unsplit_records(store: EmbeddedStore, files: Sequence[str]) -> list[str]:
    """Ids of records of ``files`` stored whole, without passage meta (as indexing without splitting once did)."""
    return [
        record_id
        for record_id, record in store.stored_versions(files).items()
        if SOURCE_ID_KEY not in record.meta and record.meta.get(PATH_META_KEY) == record_id
    ]


def _passage_count(store: EmbeddedStore, files: Sequence[str]) -> int:
    return sum(store.count(filters) for filters in _file_filters(files)) + len(_unsplit_records(store, files))


def _delete_passages(store: EmbeddedStore, files: Sequence[str]) -> int:
    deleted = sum(store.delete_where(filters) for filters in _file_filters(files))
    return deleted + store.delete(_unsplit_records(store, files))
