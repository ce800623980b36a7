"""Reading documents to index from disk: a folder of text files, or a JSON-lines file.

JSON lines: one object per line with ``content`` (or ``text``), and optionally ``id`` and ``meta`` (any
other keys are folded into ``meta``). Text folders: every ``.txt`` and ``.md`` file below the folder, with
its relative path as id and ``meta.path``.
"""

from __future__ import annotations

import json
from pathlib import Path

from dual_encoder.documents import DocumentInput
from dual_encoder.errors import InvalidDocumentError

TEXT_SUFFIXES = (".txt", ".md")


def read_documents(source: str | Path) -> list[DocumentInput]:
    """Documents from a ``.jsonl`` file or a folder of text files, in a stable order."""
    path = Path(source)
    if not path.exists():
        raise InvalidDocumentError(f"'{source}' does not exist. Pass a folder of .txt/.md files or a .jsonl file.")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    raise InvalidDocumentError(f"'{source}' is neither a folder nor a .jsonl file; cannot read documents from it.")


def _read_folder(folder: Path) -> list[DocumentInput]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise InvalidDocumentError(f"Folder '{folder}' holds no {'/'.join(TEXT_SUFFIXES)} files to index.")
    documents = []
    for file in files:
        relative = file.relative_to(folder).as_posix()
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise InvalidDocumentError(f"'{file}' is not UTF-8 text ({error}); convert it or remove it.") from error
        documents.append(DocumentInput(id=relative, content=text, meta={"path": relative}))
    return documents


def json_objects(file: Path):
    """``(line number, object)`` for each non-blank line; a line that is not a JSON object is refused by number."""
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidDocumentError(f"{file}:{number} is not valid JSON ({error.msg}).") from error
            if not isinstance(data, dict):
                raise InvalidDocumentError(f"{file}:{number} must be a JSON object, got {type(data).__name__}.")
            yield number, data


def _read_jsonl(file: Path) -> list[DocumentInput]:
    documents = []
    seen: dict[str, int] = {}
    for number, data in json_objects(file):
        content = data.pop("content", data.pop("text", None))
        doc_id = str(data.pop("id", data.pop("_id", f"{file.stem}:{number}")))
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
        raise InvalidDocumentError(f"'{file}' holds no documents.")
    return documents
