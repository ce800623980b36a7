"""Reading documents to index from disk: a folder of text files, one text file, or a JSON-lines file.

JSON lines: one object per line with ``content`` (or ``text``), and optionally ``id`` and ``meta`` (any
other keys are folded into ``meta``). Text folders: every ``.txt`` and ``.md`` file below the folder, with
its relative path as id and ``meta.path``. One ``.txt`` / ``.md`` file: its file name as id and ``meta.path``.
Text files are read as UTF-8 (a byte-order mark is dropped) with line endings turned into ``\\n``.

Every problem is reported before anything is indexed, with the fix: a missing path, a folder without text
files, files that cannot be read, are binary or are not UTF-8 (all of them named at once), bad JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dual_encoder.documents import DocumentInput
from dual_encoder.errors import InvalidDocumentError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_KINDS = "a folder of .txt/.md files, one .txt/.md file, or a .jsonl file"
_PROBLEMS_SHOWN = 10


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
        return [DocumentInput(id=path.name, content=text, meta={"path": path.name})]
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
            documents.append(DocumentInput(id=relative, content=text, meta={"path": relative}))
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
