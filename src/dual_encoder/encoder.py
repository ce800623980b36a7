"""The dual encoder: one definition, two roles.

:class:`DualEncoder` is the only way this package turns text into vectors. Queries always go through the
query route and documents through the document route of the sentence-transformers model, with the role
prompts from the :class:`~dual_encoder.config.EncoderConfig`, so a prompt or a Router route cannot be
skipped. The vectors are those of sentence-transformers' ``encode_query`` / ``encode_document``; see
:meth:`DualEncoder._encode` for why the batches are run here rather than by ``encode``.

Example::

    encoder = DualEncoder(EncoderConfig(model="all-MiniLM-L6-v2"))
    document_vectors = encoder.encode_documents(["Paris is the capital of France."])
    query_vector = encoder.encode_query("What is the capital of France?")
    scores = document_vectors @ query_vector
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dual_encoder.acceleration import backend_of, runs_on_openvino
from dual_encoder.config import SIMILARITIES, EncoderConfig
from dual_encoder.errors import ConfigurationError, EmptyTextError
from dual_encoder.fingerprint import EncoderFingerprint, document_space_id, modules_digest, query_tower_id
from dual_encoder.models import load_shared_model
from dual_encoder.static_query import (
    StaticQueryEncoder,
    StaticQueryExport,
    StaticQueryManifest,
    count_truncated_by_tokenizer,
    is_static_module,
    static_query_encoder_from_model,
    static_query_export_for,
    token_limit,
)

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

logger = logging.getLogger(__name__)

QUERY_ROUTE = "query"
DOCUMENT_ROUTE = "document"
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


class DualEncoder:
    """Encodes queries with the query tower and documents with the document tower of one model.

    The model is loaded lazily (on :meth:`load` or first use) and shared with every other encoder in the
    process that uses the same model folder and options.

    :param config: The encoder definition, its dict form, or a model name.
    """

    def __init__(self, config: EncoderConfig | dict[str, Any] | str = "all-MiniLM-L6-v2") -> None:
        self.config = EncoderConfig.coerce(config)
        self._model: SentenceTransformer | None = None
        self._fingerprint: EncoderFingerprint | None = None
        self._load_lock = threading.Lock()
        self._warned_truncation = False
        self._model_device: torch.device | None = None
        # See _encode: OpenVINO backends run many batches through our own loop, torch through ST's encode.
        # Set on load, from the loaded model: backend="auto" may run either.
        self._own_batch_loop = False
        # A static query tower's torch-free export (dual_encoder.static_query): when the definition can use it,
        # queries, the fingerprint and the space's facts come from it and the model is loaded only for documents.
        self._static_export: StaticQueryExport | None = None
        self._static_from_model: StaticQueryEncoder | None | bool = False

    # ----------------------------------------------------------------------------------------------- loading
    def load(self) -> DualEncoder:
        """Load (or reuse) the model and check the definition against it. Safe to call repeatedly.

        A model whose query tower is static and that carries its torch-free export (``static_query/``) loads only
        that export here: the full model, and torch with it, is loaded the first time the document tower is
        needed (:attr:`model`, :meth:`encode_documents`).
        """
        if self._model is not None or self._static_export is not None:
            return self
        with self._load_lock:
            if self._model is None and self._static_export is None:
                self._static_export = static_query_export_for(self.config)
                if self._static_export is None:
                    self._load_model()
        return self

    def _load_model(self) -> None:
        """Load the full model (the caller holds ``_load_lock``)."""
        model = load_shared_model(
            self.config.model,
            device=self.config.device,
            trust_remote_code=self.config.trust_remote_code,
            max_seq_length=self.config.max_seq_length,
            backend=self.config.backend,
        )
        self._validate_against(model)
        self._own_batch_loop = runs_on_openvino(model)
        self._model = model

    @property
    def backend(self) -> str:
        """The backend that runs this encoder's model: ``config.backend``, or what ``"auto"`` resolved to
        (``"torch"`` where the model could not be converted)."""
        return backend_of(self.model)

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._load_model()
        return self._model  # type: ignore[return-value]

    @property
    def _static_manifest(self) -> StaticQueryManifest | None:
        """What the static query export records, when this encoder answers queries from it."""
        self.load()
        return self._static_export.manifest if self._static_export is not None else None

    def _validate_against(self, model: SentenceTransformer) -> None:
        router = _router_of(model)
        if router is not None and not {QUERY_ROUTE, DOCUMENT_ROUTE} <= set(router.sub_modules.keys()):
            raise ConfigurationError(
                f"Model '{self.config.model}' starts with a Router whose routes are "
                f"{sorted(router.sub_modules.keys())}; a dual encoder needs 'query' and 'document' routes. "
                f"Build it with Router.for_query_document or dual_encoder.towers.combine_towers."
            )
        if self.config.normalize is False and _ends_with_normalize(model):
            raise ConfigurationError(
                f"normalize=False, but model '{self.config.model}' normalises its embeddings itself (it ends "
                f"with a Normalize module). Leave normalize unset (None) or true for this model."
            )
        for role in ("query", "document"):
            prompt_name = getattr(self.config, f"{role}_prompt_name")
            if prompt_name is not None:
                _named_prompt(model, prompt_name, self.config.model, role=role)
        similarity = self.config.similarity or model.similarity_fn_name
        if similarity not in SIMILARITIES:
            raise ConfigurationError(
                f"Model '{self.config.model}' declares similarity {similarity!r}; this project supports "
                f"{SIMILARITIES}. Set similarity explicitly in the encoder definition."
            )

    # ------------------------------------------------------------------------------------------- properties
    @property
    def is_asymmetric(self) -> bool:
        """True when queries and documents go through different towers (a Router model)."""
        if self._static_manifest is not None:
            return True
        return _router_of(self.model) is not None

    @property
    def dimension(self) -> int:
        if self._static_manifest is not None:
            return self._static_manifest.dimension
        dimension = self.model.get_embedding_dimension()
        if dimension is None:
            raise ConfigurationError(f"Model '{self.config.model}' does not declare its embedding dimension.")
        return int(dimension)

    @property
    def similarity(self) -> str:
        if self._static_manifest is not None:
            return self._static_manifest.similarity
        return self.config.similarity or self.model.similarity_fn_name

    @property
    def normalize(self) -> bool:
        """Whether the produced embeddings are unit length."""
        if self._static_manifest is not None:
            return self._static_manifest.normalize
        return bool(self.config.normalize) or _ends_with_normalize(self.model)

    @property
    def query_prompt(self) -> str:
        """The text prepended to queries: ``query_prompt``, the model prompt ``query_prompt_name`` names, or the
        model's own ``query`` prompt."""
        if self._static_manifest is not None:
            return self._static_manifest.query_prompt
        if self.config.query_prompt is not None:
            return self.config.query_prompt
        if self.config.query_prompt_name is not None:
            return _named_prompt(self.model, self.config.query_prompt_name, self.config.model, role="query")
        return self.model.prompts.get(QUERY_ROUTE, "") or ""

    @property
    def document_prompt(self) -> str:
        """The text prepended to documents: ``document_prompt``, the model prompt ``document_prompt_name``
        names, or the model's own ``document`` (or ``passage``/``corpus``) prompt."""
        if self._static_manifest is not None:
            return self._static_manifest.document_prompt
        if self.config.document_prompt is not None:
            return self.config.document_prompt
        if self.config.document_prompt_name is not None:
            return _named_prompt(self.model, self.config.document_prompt_name, self.config.model, role="document")
        prompts = self.model.prompts
        for name in _DOCUMENT_PROMPT_NAMES:
            if name in prompts:
                return prompts[name] or ""
        return ""

    @property
    def max_seq_length(self) -> int | None:
        """Token limit of the document tower (a static tower's is its tokenizer's truncation; ``None``: no limit)."""
        if self._static_manifest is not None:
            return self._static_manifest.document_max_seq_length
        return token_limit(_input_module(self.model, DOCUMENT_ROUTE))

    @property
    def fingerprint(self) -> EncoderFingerprint:
        """Identity of this encoder's document space and query tower (computed once per encoder).

        The backend (``config.backend``) is deliberately not part of it, although ``"openvino-int8"`` runs
        quantised weights and the bfloat16 backends lower precision: the digest is taken from the reference
        float32 weights, and each backend approximates that one function within a bounded tolerance (see
        :mod:`dual_encoder.fingerprint` for why, and ``benchmarks/README.md`` for the measured tolerance). So
        an index built with ``"torch"`` is queried by an ``"openvino-int8"`` encoder and the other way round,
        and documents are not re-encoded when only the backend changes.

        A static query tower's export records the fingerprint (checked against the model files when it is
        loaded), so a query-only process knows its space without loading the document tower.
        """
        if self._fingerprint is None and self._static_manifest is not None:
            self._fingerprint = self._static_manifest.fingerprint
        if self._fingerprint is None:
            model = self.model
            normalize = self.normalize
            document_digest = modules_digest(tower_modules(model, DOCUMENT_ROUTE))
            query_digest = modules_digest(tower_modules(model, QUERY_ROUTE))
            query_module = _input_module(model, QUERY_ROUTE)
            self._fingerprint = EncoderFingerprint(
                document_space=document_space_id(
                    tower_digest=document_digest,
                    prompt=self.document_prompt,
                    normalize=normalize,
                    dimension=self.dimension,
                    similarity=self.similarity,
                    max_seq_length=self.max_seq_length,
                ),
                query_tower=query_tower_id(
                    tower_digest=query_digest,
                    prompt=self.query_prompt,
                    normalize=normalize,
                    max_seq_length=token_limit(query_module),
                ),
                dimension=self.dimension,
                similarity=self.similarity,
            )
        return self._fingerprint

    # --------------------------------------------------------------------------------------------- encoding
    def encode_query(self, text: str) -> np.ndarray:
        """One query to one float32 vector, through the query tower with the query prompt."""
        return self.encode_queries([text])[0]

    def encode_queries(self, texts: Sequence[str], *, progress_bar: bool | None = None) -> np.ndarray:
        """Queries to an ``(n, dimension)`` float32 matrix. Empty or non-text queries are refused.

        ``progress_bar``: ``None`` follows ``encode_kwargs["show_progress_bar"]`` of the definition (off by default).
        """
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmptyTextError(
                    f"Query {position} is {type(text).__name__}, not text. Pass the question as a string."
                )
            if not text.strip():
                raise EmptyTextError(
                    f"Query {position} is empty or whitespace only ({text!r}). Pass a question with words in it."
                )
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        static = self._static_query_encoder()
        if static is not None:
            return static.encode(texts)
        return self._encode(
            texts, route=QUERY_ROUTE, prompt=self.query_prompt, progress_bar=self._progress(progress_bar)
        )

    def _static_query_encoder(self) -> StaticQueryEncoder | None:
        """The numpy encoder of a static query tower: the export's, or one made from the loaded model (so that
        every static tower refuses queries it cannot read, export or not); ``None`` for any other tower."""
        export = self.load()._static_export
        if export is not None:
            return export.encoder
        if self._static_from_model is False:
            self._static_from_model = static_query_encoder_from_model(
                self.model, prompt=self.query_prompt, normalize=self.normalize, name=self.config.model
            )
        return self._static_from_model  # type: ignore[return-value]

    def _encode(self, texts: Sequence[str], *, route: str, prompt: str, progress_bar: bool) -> np.ndarray:
        """Texts to vectors through ``route``: what sentence-transformers' ``encode_query`` /
        ``encode_document`` compute, with less overhead where it shows.

        ``encode`` spends about as long preparing a call as a 3-layer query tower spends computing one short
        query: it walks every parameter of the model (both towers) to find the device and switches every
        module to eval mode. The model was put on its device and in eval mode when it was loaded, so one
        batch (a search's query, say) goes straight through the same ``preprocess`` and ``forward`` (same
        prompt, Router route, pooling and normalisation; ``tests/test_encoder.py`` checks the vectors match
        ``encode``'s).

        On the OpenVINO backends, more texts than that run through our own loop: sorted by length as
        ``encode`` sorts them, each batch split among OpenVINO's throughput streams, one worker thread per
        stream tokenising, running and pooling its share (see
        :class:`dual_encoder.acceleration._CompiledTransformer`). On torch they go through ``encode``
        itself, since torch's intra-op threads already use every core and the per-call set-up is noise over
        many batches (tokenising ahead in a thread cost torch ~3%). A model someone switched to training
        mode (dropout on) always goes through ``encode``, which switches it back to eval mode.
        """
        model = self.model
        batch_size = self.config.batch_size
        one_batch = len(texts) <= batch_size and not progress_bar
        if model.training or not (one_batch or self._own_batch_loop):
            encode = model.encode_query if route == QUERY_ROUTE else model.encode_document
            vectors = encode(
                list(texts),
                prompt=prompt,
                batch_size=batch_size,
                show_progress_bar=progress_bar,
                convert_to_numpy=True,
                normalize_embeddings=self._normalize_outside_model(),
            )
            return np.ascontiguousarray(vectors, dtype=np.float32)
        if one_batch:
            return self._run_batch(self._preprocess(texts, route=route, prompt=prompt), route=route)

        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        from dual_encoder.acceleration import throughput_requests

        # Each batch is shared among OpenVINO's throughput streams, so batch_size still bounds the texts in
        # flight; the smaller requests also ran faster per document (8 or 16: +8%, against 32 per request).
        streams = throughput_requests(_input_module(model, route))
        request_size = -(-batch_size // streams)
        order = sorted(range(len(texts)), key=lambda position: -len(texts[position]))
        batches = [order[start : start + request_size] for start in range(0, len(order), request_size)]
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        role = "queries" if route == QUERY_ROUTE else "documents"
        with (
            tqdm(
                total=len(texts),
                desc=f"Encoding {role}",
                unit="query" if route == QUERY_ROUTE else "document",
                disable=not progress_bar,
            ) as progress,
            ThreadPoolExecutor(max_workers=streams, thread_name_prefix="dual-encoder-stream") as pool,
        ):
            running = [
                pool.submit(self._run_in_stream, [texts[p] for p in batch], route=route, prompt=prompt)
                for batch in batches
            ]
            try:
                for batch, result in zip(batches, running, strict=True):
                    vectors[batch] = result.result()
                    progress.update(len(batch))
            except BaseException:
                # A failed batch (or Ctrl-C) stops the encoding here rather than after every queued batch ran.
                for result in running:
                    result.cancel()
                raise
        return vectors

    def _run_in_stream(self, texts: list[str], *, route: str, prompt: str) -> np.ndarray:
        from dual_encoder.acceleration import throughput_streams

        with throughput_streams():
            return self._run_batch(self._preprocess(texts, route=route, prompt=prompt), route=route)

    def _preprocess(self, texts: Sequence[str], *, route: str, prompt: str) -> dict[str, Any]:
        import torch

        with torch.inference_mode():  # as in ``encode``; thread-local, so set here for the stream threads too
            return self.model.preprocess(list(texts), prompt=prompt, task=route)

    def _run_batch(self, features: dict[str, Any], *, route: str) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self._device.type != "cpu":
                from sentence_transformers.util import batch_to_device

                features = batch_to_device(features, self._device)
            embeddings = self.model(features, task=route)["sentence_embedding"]
            if self._normalize_outside_model():
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return np.ascontiguousarray(embeddings.float().cpu().numpy(), dtype=np.float32)

    @property
    def _device(self) -> Any:
        if self._model_device is None:
            self._model_device = self.model.device
        return self._model_device

    def encode_documents(self, texts: Sequence[str], *, progress_bar: bool | None = None) -> np.ndarray:
        """Document texts to an ``(n, dimension)`` float32 matrix, through the document tower.

        ``progress_bar``: ``None`` follows ``encode_kwargs["show_progress_bar"]`` of the definition (off by default).

        Texts longer than the document tower's token limit are truncated; the first time that happens the
        encoder logs one warning with the count, instead of one per document.
        """
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise EmptyTextError(
                    f"Document text {position} is empty or not a string ({text!r}); there is nothing to embed."
                )
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self._warn_once_if_truncated(texts)
        return self._encode(
            texts, route=DOCUMENT_ROUTE, prompt=self.document_prompt, progress_bar=self._progress(progress_bar)
        )

    def _progress(self, progress_bar: bool | None) -> bool:
        return self.config.show_progress_bar if progress_bar is None else progress_bar

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many document texts (with the document prompt) exceed the document tower's token limit."""
        limit = self.max_seq_length
        module = _input_module(self.model, DOCUMENT_ROUTE)
        tokenizer = getattr(module, "tokenizer", None)
        if limit is None or tokenizer is None:
            return 0
        prompt = self.document_prompt
        if is_static_module(module):  # its tokenizer (the tokenizers library's) truncates by itself
            return count_truncated_by_tokenizer(tokenizer, [prompt + text for text in texts])
        lengths = tokenizer(
            [prompt + text for text in texts],
            add_special_tokens=True,
            truncation=False,
            return_length=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["length"]
        return sum(1 for length in lengths if length > limit)

    def _warn_once_if_truncated(self, texts: Sequence[str]) -> None:
        if self._warned_truncation:
            return
        truncated = self.count_truncated(texts)
        if truncated:
            self._warned_truncation = True
            logger.warning(
                "%d of %d document texts are longer than the document tower's limit of %d tokens and were "
                "truncated; only their first %d tokens are embedded. Split long documents into passages (for "
                "example with Haystack's DocumentSplitter) to embed all of their text. This warning is shown "
                "once per encoder.",
                truncated,
                len(texts),
                self.max_seq_length,
                self.max_seq_length,
            )

    def _normalize_outside_model(self) -> bool:
        return bool(self.config.normalize) and not _ends_with_normalize(self.model)


# ------------------------------------------------------------------------------------------ model anatomy
def _router_of(model: SentenceTransformer) -> Router | None:
    from sentence_transformers.base.modules import Router

    first = model[0] if len(model) else None
    return first if isinstance(first, Router) else None


def _named_prompt(model: SentenceTransformer, prompt_name: str, model_name: str, *, role: str) -> str:
    """The text of the model's prompt ``prompt_name``, or a clear error listing the prompts it has."""
    prompts = model.prompts or {}
    if prompt_name not in prompts:
        available = sorted(prompts) or "none"
        raise ConfigurationError(
            f"{role}_prompt_name={prompt_name!r}, but model '{model_name}' has no prompt of that name (its prompts: "
            f"{available}; they come from 'prompts' in its config_sentence_transformers.json). Pick one of them, or "
            f"give the text itself as {role}_prompt."
        )
    return prompts[prompt_name] or ""


def _ends_with_normalize(model: SentenceTransformer) -> bool:
    from sentence_transformers.base.modules import Normalize

    return len(model) > 0 and isinstance(model[-1], Normalize)


def tower_modules(model: SentenceTransformer, route: str) -> list[Any]:
    """The modules a text passes through in ``route``: the route's own modules, then the shared ones."""
    import torch

    router = _router_of(model)
    if router is None:
        return list(model)
    route_modules = router.sub_modules[route]
    assert isinstance(route_modules, torch.nn.Sequential)  # a Router keeps each route as an nn.Sequential
    return list(route_modules) + list(model)[1:]


def _input_module(model: SentenceTransformer, route: str) -> Any:
    return tower_modules(model, route)[0]
