"""A static query tower, run without torch: a tokenizer, an embedding table and numpy.

A ``static-query`` model (built by :mod:`dual_encoder.training.static_query`) is an ordinary sentence-transformers
model: a ``Router`` whose ``query`` route is a ``StaticEmbedding`` (the mean of one trained vector per token,
optionally followed by a linear projection) and whose ``document`` route is an unchanged transformer, then a shared
``Normalize``. Every component loads it as-is. Saving it also writes the folder ``static_query/`` beside the
modules, which is all a query needs:

- ``embeddings.npy``: one float32 row per token id, with the projection (if any) folded in;
- ``tokenizer.json``: the query tower's tokenizer (the ``tokenizers`` library), its truncation included;
- ``static_query.json``: the query prompt, normalisation, token limit, which token ids are unknown tokens, the
  fingerprint of the document space the tower was trained against, and digests of the model's own files.

:class:`StaticQueryEncoder` reads only those files. A process that only answers queries with such a model
(:class:`dual_encoder.encoder.DualEncoder` picks this path by itself) therefore imports neither torch,
transformers nor sentence-transformers and never loads the document tower, and the fingerprint check still works:
the document space is read from ``static_query.json``, and the file digests make sure it is the space of the model
folder as it is now (a model changed after its export is refused, never trusted).

Vectors equal sentence-transformers' ``encode_query`` on the same model (tokens without special tokens, their
mean, the projection, L2 normalisation), within float32 rounding.

Bad input:

- a query none of whose tokens the tower knows (every token is the tokenizer's unknown token, or the text has no
  token at all) raises :class:`UnknownTokensError`: its embedding would say nothing about the query;
- a query longer than the tower's token limit is truncated to it, with one warning per loaded tower.

Example::

    write_static_query_export("models/static-query")       # done by training; needs torch
    tower = load_static_query_encoder("models/static-query")  # torch-free from here on
    vectors = tower.encode(["What causes tides?"])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dual_encoder.errors import ConfigurationError, EmptyTextError, NotAModelError
from dual_encoder.fingerprint import EncoderFingerprint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dual_encoder.config import EncoderConfig

logger = logging.getLogger(__name__)

#: Folder, inside a model folder, that holds what the torch-free query path reads.
EXPORT_FOLDER = "static_query"
MANIFEST_FILE = "static_query.json"
TABLE_FILE = "embeddings.npy"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_FORMAT = "dual-encoder-static-query"
EXPORT_VERSION = 1
#: Files a training run writes next to the model that do not change what the model computes.
_NOT_MODEL_FILES = frozenset(
    {"README.md", "training_report.json", "training_curves.png", "dual_encoder.json", "hybrid_fusion.json"}
)
_HASH_CHUNK = 1 << 20
_NORMALIZE_EPSILON = 1e-12  # torch.nn.functional.normalize's, so both paths treat tiny vectors alike


class UnknownTokensError(EmptyTextError):
    """A query has no token the static query tower knows, so it has no meaningful embedding."""


class StaleStaticQueryExportError(ConfigurationError):
    """A model folder's ``static_query/`` export no longer matches the model files next to it."""


@dataclass(frozen=True)
class StaticQueryManifest:
    """What ``static_query.json`` records (see the module docstring)."""

    dimension: int
    normalize: bool
    query_prompt: str
    document_prompt: str
    #: The model's named prompts, so a definition that picks one by name is resolved without the model.
    prompts: dict[str, str]
    similarity: str
    document_max_seq_length: int | None
    max_query_tokens: int | None
    unknown_token_ids: tuple[int, ...]
    fingerprint: EncoderFingerprint
    model_files: dict[str, str]
    table_sha256: str
    tokenizer_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "dimension": self.dimension,
            "normalize": self.normalize,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "prompts": dict(self.prompts),
            "similarity": self.similarity,
            "document_max_seq_length": self.document_max_seq_length,
            "max_query_tokens": self.max_query_tokens,
            "pooling": "mean",
            "unknown_token_ids": list(self.unknown_token_ids),
            "fingerprint": self.fingerprint.to_dict(),
            "model_files": dict(sorted(self.model_files.items())),
            "table": {"file": TABLE_FILE, "sha256": self.table_sha256},
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": self.tokenizer_sha256},
        }

    @classmethod
    def read(cls, folder: Path) -> StaticQueryManifest:
        path = folder / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != EXPORT_FORMAT or data.get("version") != EXPORT_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            return cls(
                dimension=int(data["dimension"]),
                normalize=bool(data["normalize"]),
                query_prompt=str(data["query_prompt"]),
                document_prompt=str(data["document_prompt"]),
                prompts={str(name): str(text or "") for name, text in data["prompts"].items()},
                similarity=str(data["similarity"]),
                document_max_seq_length=data["document_max_seq_length"],
                max_query_tokens=data["max_query_tokens"],
                unknown_token_ids=tuple(int(i) for i in data["unknown_token_ids"]),
                fingerprint=EncoderFingerprint.from_dict(data["fingerprint"]),
                model_files=dict(data["model_files"]),
                table_sha256=str(data["table"]["sha256"]),
                tokenizer_sha256=str(data["tokenizer"]["sha256"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StaleStaticQueryExportError(
                f"'{path}' cannot be read as a static query export ({type(error).__name__}: {error}). Write it "
                f"again with dual_encoder.static_query.write_static_query_export('{folder.parent}')."
            ) from error


class StaticQueryEncoder:
    """Queries to vectors with a token table: tokenise (no special tokens), average the rows, normalise.

    :param tokenizer: A ``tokenizers.Tokenizer``; its truncation setting is the query token limit.
    :param table: ``(vocabulary, dimension)`` float32 rows, the projection already folded in.
    :param prompt: Text put before every query (the model's query prompt).
    :param normalize: L2-normalise the vectors.
    :param unknown_token_ids: Ids that stand for text the vocabulary does not cover.
    :param name: How messages name this tower (its model folder).
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        table: np.ndarray,
        prompt: str,
        normalize: bool,
        unknown_token_ids: Sequence[int],
        name: str,
    ) -> None:
        if table.ndim != 2 or table.dtype != np.float32:
            raise ConfigurationError(f"The static query table of '{name}' must be a 2-d float32 array.")
        # A plain ndarray over the same memory: numpy's memmap subclass makes every row gather slower.
        self.table = table.view(np.ndarray)
        self.prompt = prompt
        self.normalize = normalize
        self.name = name
        self._tokenizer = tokenizer
        self._unknown = frozenset(unknown_token_ids)
        truncation = tokenizer.truncation
        self.max_tokens: int | None = int(truncation["max_length"]) if truncation else None
        self._prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else 0
        self._warned_truncation = False
        self._warning_lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return int(self.table.shape[1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Queries (already checked to be non-empty text) to an ``(n, dimension)`` float32 matrix.

        :raises UnknownTokensError: a query has no token the tower knows.
        """
        prompted = [self.prompt + text for text in texts] if self.prompt else list(texts)
        if len(prompted) == 1:
            encodings = [self._tokenizer.encode(prompted[0], add_special_tokens=False)]
        else:
            encodings = self._tokenizer.encode_batch(prompted, add_special_tokens=False)
        vectors = np.empty((len(prompted), self.dimension), dtype=np.float32)
        truncated = 0
        for position, encoding in enumerate(encodings):
            ids = encoding.ids
            if all(token in self._unknown for token in ids[self._prompt_tokens :]):
                raise self._unknown_tokens_error(position, texts[position], len(ids) - self._prompt_tokens)
            if encoding.overflowing:
                truncated += 1
            vectors[position] = self.table[ids].mean(axis=0, dtype=np.float32)
        if truncated:
            self._warn_truncated_once(truncated, len(prompted))
        if self.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            vectors /= np.maximum(norms, _NORMALIZE_EPSILON)[:, None]
        return vectors

    def _unknown_tokens_error(self, position: int, text: str, tokens: int) -> UnknownTokensError:
        what = f"all {tokens} of its tokens are unknown to the vocabulary" if tokens else "it has no tokens at all"
        return UnknownTokensError(
            f"Query {position} ({text[:80]!r}) has nothing the static query tower of '{self.name}' can read: {what}, "
            f"so its embedding would not depend on the query. Rephrase it with words (this tower reads the "
            f"vocabulary of its tokenizer; emoji and many non-Latin scripts are unknown to an English one)."
        )

    def _warn_truncated_once(self, truncated: int, total: int) -> None:
        with self._warning_lock:
            if self._warned_truncation:
                return
            self._warned_truncation = True
        logger.warning(
            "%d of %d queries are longer than the static query tower's limit of %d tokens and were truncated; only "
            "their first %d tokens are embedded. This warning is shown once per loaded tower.",
            truncated,
            total,
            self.max_tokens,
            self.max_tokens,
        )


# --------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class StaticQueryExport:
    """A model folder's ``static_query/`` export: its manifest, and the encoder once loaded."""

    model_folder: Path
    manifest: StaticQueryManifest
    encoder: StaticQueryEncoder


_lock = threading.Lock()
_loaded: dict[Path, StaticQueryExport] = {}


def has_static_query_export(model_folder: str | Path) -> bool:
    """Whether ``model_folder`` holds a static query export (nothing is read or checked)."""
    return (Path(model_folder) / EXPORT_FOLDER / MANIFEST_FILE).is_file()


def load_static_query_export(model_folder: str | Path, *, verify: bool = True) -> StaticQueryExport:
    """Load (once per process) the export of ``model_folder``; torch-free.

    ``verify`` re-hashes the model's files and the table and refuses an export that no longer matches them
    (:class:`StaleStaticQueryExportError`), so the recorded document space can be trusted.
    """
    folder = Path(model_folder).resolve()
    with _lock:
        loaded = _loaded.get(folder)
        if loaded is None:
            loaded = _load_export(folder, verify=verify)
            _loaded[folder] = loaded
        return loaded


def load_static_query_encoder(model_folder: str | Path) -> StaticQueryEncoder:
    """The torch-free query encoder of ``model_folder`` (see :func:`load_static_query_export`)."""
    return load_static_query_export(model_folder).encoder


def forget_static_query_exports() -> None:
    """Drop every loaded export (the next load reads and checks the files again)."""
    with _lock:
        _loaded.clear()


def static_query_export_for(config: EncoderConfig) -> StaticQueryExport | None:
    """The export that answers ``config``'s queries without torch, or ``None`` when the full model is needed.

    That is the case when the model folder has no export, or when the definition changes something the export
    fixed when it was written (a prompt, normalisation, similarity or truncation other than the model's own):
    those move the document space, which then has to be computed from the model itself.
    """
    from dual_encoder.models import MODEL_ALIASES, resolve_model_location

    if config.model in MODEL_ALIASES:
        return None
    location = Path(config.model).expanduser()
    if not has_static_query_export(location):
        return None
    manifest = StaticQueryManifest.read(Path(resolve_model_location(config.model)) / EXPORT_FOLDER)
    settings = {
        "query_prompt": (_configured_prompt(config, "query", manifest), manifest.query_prompt),
        "document_prompt": (_configured_prompt(config, "document", manifest), manifest.document_prompt),
        "normalize": (config.normalize, manifest.normalize),
        "similarity": (config.similarity, manifest.similarity),
        "max_seq_length": (config.max_seq_length, manifest.document_max_seq_length),
    }
    if any(configured is not None and configured != recorded for configured, recorded in settings.values()):
        return None
    return load_static_query_export(location)


def _configured_prompt(config: EncoderConfig, role: str, manifest: StaticQueryManifest) -> str | None:
    prompt = getattr(config, f"{role}_prompt")
    if prompt is not None:
        return prompt
    name = getattr(config, f"{role}_prompt_name", None)
    if name is None:
        return None
    # A named prompt is resolved against the model's prompts; one the export did not record needs the model.
    return manifest.prompts.get(name, f"\0unknown prompt {name}")


def _load_export(folder: Path, *, verify: bool) -> StaticQueryExport:
    from tokenizers import Tokenizer

    export = folder / EXPORT_FOLDER
    if not (export / MANIFEST_FILE).is_file():
        raise NotAModelError(
            f"'{folder}' has no static query export ({EXPORT_FOLDER}/{MANIFEST_FILE}). Models trained with "
            f"architecture 'static-query' have one; write it with write_static_query_export('{folder}')."
        )
    manifest = StaticQueryManifest.read(export)
    if verify:
        _check_digest(export / TABLE_FILE, manifest.table_sha256, folder)
        _check_digest(export / TOKENIZER_FILE, manifest.tokenizer_sha256, folder)
        current = model_file_digests(folder)
        if current != manifest.model_files:
            changed = sorted(set(current.items()) ^ set(manifest.model_files.items()))
            raise StaleStaticQueryExportError(
                f"The static query export of '{folder}' was written for other model files ({changed[0][0]} differs "
                f"or is missing), so the document space it records may no longer be this model's. Write it again "
                f"with dual_encoder.static_query.write_static_query_export('{folder}')."
            )
    table = np.load(export / TABLE_FILE, mmap_mode="r", allow_pickle=False)
    if table.shape[1] != manifest.dimension:
        raise StaleStaticQueryExportError(
            f"The static query table of '{folder}' has {table.shape[1]} columns, but its manifest says "
            f"{manifest.dimension}. Write the export again with write_static_query_export('{folder}')."
        )
    encoder = StaticQueryEncoder(
        tokenizer=Tokenizer.from_file(str(export / TOKENIZER_FILE)),
        table=table,
        prompt=manifest.query_prompt,
        normalize=manifest.normalize,
        unknown_token_ids=manifest.unknown_token_ids,
        name=str(folder),
    )
    return StaticQueryExport(model_folder=folder, manifest=manifest, encoder=encoder)


def _check_digest(path: Path, expected: str, folder: Path) -> None:
    if not path.is_file() or file_digest(path) != expected:
        raise StaleStaticQueryExportError(
            f"'{path}' is missing or differs from what its manifest recorded; the static query export of '{folder}' "
            f"is damaged. Write it again with write_static_query_export('{folder}')."
        )


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_file_digests(model_folder: Path) -> dict[str, str]:
    """SHA-256 of every file that defines the model: ``modules.json``, the sentence-transformers config and every
    module's folder (from ``modules.json``), by path relative to ``model_folder``."""
    modules_file = model_folder / "modules.json"
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise NotAModelError(f"'{model_folder}' has no readable modules.json ({error}).") from error
    files: set[Path] = {modules_file}
    config = model_folder / "config_sentence_transformers.json"
    if config.is_file():
        files.add(config)
    for module in modules:
        module_folder = model_folder / str(module.get("path", ""))
        if module_folder == model_folder:
            # A module saved at the top level (a Router keeps its routes' folders there): everything but the
            # export itself, training by-products and checkpoints.
            files.update(
                p for p in model_folder.rglob("*") if p.is_file() and not _outside_model(p.relative_to(model_folder))
            )
        elif module_folder.is_dir():
            files.update(p for p in module_folder.rglob("*") if p.is_file())
    return {path.relative_to(model_folder).as_posix(): file_digest(path) for path in sorted(files)}


def _outside_model(relative: Path) -> bool:
    top = relative.parts[0]
    return (
        top in (EXPORT_FOLDER, "checkpoints")
        or top.startswith(".")
        or (len(relative.parts) == 1 and top in _NOT_MODEL_FILES)
    )


# --------------------------------------------------------------------------------------------- writing
def write_static_query_export(model_folder: str | Path, model: SentenceTransformer | None = None) -> Path:
    """Write ``static_query/`` into a saved static-query model folder, and return its path. Needs torch.

    ``model`` is the model as saved there (loaded from the folder when not given). The export records the
    fingerprint the model has with its own settings (prompts, normalisation, similarity, truncation).

    :raises ConfigurationError: the model's query route is not a ``StaticEmbedding`` (plus an optional linear
        ``Dense`` projection), or its dimension differs from the document tower's.
    """
    from dual_encoder.encoder import DualEncoder

    folder = Path(model_folder).resolve()
    export = folder / EXPORT_FOLDER
    with _lock:
        _loaded.pop(folder, None)
    # The fingerprint must come from the model files, never from the export being replaced.
    if export.exists():
        shutil.rmtree(export)
    if model is None:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu")
    tokenizer, table = static_query_table(model)
    encoder = DualEncoder({"model": str(folder), "device": "cpu"})
    fingerprint = encoder.fingerprint
    if table.shape[1] != fingerprint.dimension:
        raise ConfigurationError(
            f"The static query tower of '{folder}' outputs {table.shape[1]} dimensions and the document tower "
            f"{fingerprint.dimension}; add a Dense projection to the query route."
        )
    staging = Path(tempfile.mkdtemp(prefix=".static_query-", dir=folder))
    try:
        np.save(staging / TABLE_FILE, table, allow_pickle=False)
        tokenizer.save(str(staging / TOKENIZER_FILE))
        manifest = StaticQueryManifest(
            dimension=int(table.shape[1]),
            normalize=encoder.normalize,
            query_prompt=encoder.query_prompt,
            document_prompt=encoder.document_prompt,
            prompts={name: text or "" for name, text in (model.prompts or {}).items()},
            similarity=encoder.similarity,
            document_max_seq_length=encoder.max_seq_length,
            max_query_tokens=int(tokenizer.truncation["max_length"]) if tokenizer.truncation else None,
            unknown_token_ids=unknown_token_ids(tokenizer),
            fingerprint=fingerprint,
            model_files=model_file_digests(folder),
            table_sha256=file_digest(staging / TABLE_FILE),
            tokenizer_sha256=file_digest(staging / TOKENIZER_FILE),
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(staging, export)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export


def static_query_table(model: SentenceTransformer) -> tuple[Any, np.ndarray]:
    """The query tower's tokenizer and its token table with any linear projection folded in.

    Folding is exact algebra: the mean of ``e_i W^T + b`` is ``mean(e_i) W^T + b``.
    """
    import torch

    modules = static_query_modules(model)
    if modules is None:
        raise ConfigurationError(
            "This model's query route is not a static tower (a StaticEmbedding, optionally followed by one linear "
            "Dense projection); only such towers have a torch-free query path."
        )
    static, projection = modules
    with torch.no_grad():
        table = static.embedding.weight.detach().to(torch.float64)
        if projection is not None:
            linear = projection.linear
            table = table @ linear.weight.detach().to(torch.float64).T
            if linear.bias is not None:
                table = table + linear.bias.detach().to(torch.float64)
    return static.tokenizer, np.ascontiguousarray(table.cpu().numpy(), dtype=np.float32)


def static_query_encoder_from_model(
    model: SentenceTransformer, *, prompt: str, normalize: bool, name: str
) -> StaticQueryEncoder | None:
    """A numpy encoder for ``model``'s static query tower as loaded (no export needed), or ``None`` when its query
    tower is not static."""
    if static_query_modules(model) is None:
        return None
    tokenizer, table = static_query_table(model)
    return StaticQueryEncoder(
        tokenizer=tokenizer,
        table=table,
        prompt=prompt,
        normalize=normalize,
        unknown_token_ids=unknown_token_ids(tokenizer),
        name=name,
    )


def static_query_modules(model: SentenceTransformer) -> tuple[Any, Any | None] | None:
    """``(StaticEmbedding, Dense or None)`` when ``model``'s query route is a static tower, else ``None``."""
    import torch
    from sentence_transformers.base.modules import Dense, Router
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    first = model[0] if len(model) else None
    if not isinstance(first, Router) or "query" not in first.sub_modules:
        return None
    route: list[Any] = list(first.sub_modules["query"])  # type: ignore[call-overload]  # a route is a Sequential
    if not route or not isinstance(route[0], StaticEmbedding) or len(route) > 2:
        return None
    if len(route) == 1:
        return route[0], None
    projection = route[1]
    if not isinstance(projection, Dense) or not isinstance(projection.activation_function, torch.nn.Identity):
        return None
    return route[0], projection


def unknown_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The id(s) a ``tokenizers.Tokenizer`` gives text its vocabulary does not cover."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    ids = set()
    if isinstance(model.get("unk_id"), int):
        ids.add(model["unk_id"])
    if isinstance(model.get("unk_token"), str):
        token_id = tokenizer.token_to_id(model["unk_token"])
        if token_id is not None:
            ids.add(token_id)
    return tuple(sorted(ids))


# --------------------------------------------------------------------------------------------- token limits
def is_static_module(module: Any) -> bool:
    """Whether ``module`` (a model's input module) is a static token table such as sentence-transformers'
    ``StaticEmbedding``: it reports an infinite ``max_seq_length`` (a mean of token rows has no position limit) and
    reads text with a ``tokenizers.Tokenizer``, whose truncation is what bounds the tokens it embeds."""
    value = getattr(module, "max_seq_length", None)
    tokenizer = getattr(module, "tokenizer", None)
    return isinstance(value, float) and math.isinf(value) and hasattr(tokenizer, "enable_truncation")


def token_limit(module: Any) -> int | None:
    """The most tokens of a text that ``module`` (a model's input module) embeds, or ``None`` for no limit.

    A transformer's limit is its ``max_seq_length``; a static table's is its tokenizer's truncation (``None`` when
    the tokenizer does not truncate), never its infinite ``max_seq_length``.
    """
    if is_static_module(module):
        truncation = module.tokenizer.truncation
        return int(truncation["max_length"]) if truncation else None
    value = getattr(module, "max_seq_length", None)
    return int(value) if value is not None else None


def set_token_limit(model: SentenceTransformer, limit: int) -> None:
    """Make every input module of ``model`` (the first module of each route, for a Router) embed at most ``limit``
    tokens: a transformer through its ``max_seq_length``, a static table through its tokenizer's truncation (a
    ``StaticEmbedding``'s ``max_seq_length`` is read-only, so ``model.max_seq_length = limit`` fails on it)."""
    from sentence_transformers.base.modules import Router

    first = model[0]
    if isinstance(first, Router):
        # As Router's own setter: the first module of each route that has a limit.
        routes: list[list[Any]] = [list(route) for route in first.sub_modules.values()]  # type: ignore[call-overload]
        inputs = [modules[0] for modules in routes if modules and hasattr(modules[0], "max_seq_length")]
    else:
        inputs = [first]
    for module in inputs:
        if is_static_module(module):
            module.tokenizer.enable_truncation(max_length=limit)
        else:
            module.max_seq_length = limit


def count_truncated_by_tokenizer(tokenizer: Any, texts: Sequence[str]) -> int:
    """How many of ``texts`` a ``tokenizers.Tokenizer`` truncates, read as a static table reads them (no special
    tokens); 0 when it does not truncate."""
    if not tokenizer.truncation:
        return 0
    return sum(1 for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False) if encoding.overflowing)
