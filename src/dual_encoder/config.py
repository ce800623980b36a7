"""The encoder definition: the single source of truth for both towers.

One :class:`EncoderConfig` describes how queries *and* documents are encoded. The query embedder, the
document embedder and the retriever are all built from the same definition, so the two sides cannot drift
apart: the prompts, normalisation, similarity and truncation live here and nowhere else.

Which weights each role uses is a property of the model folder, not of this definition:

- a plain sentence-transformers model is **Siamese** (one set of weights for both roles);
- a model whose first module is a ``Router`` with ``query`` and ``document`` routes is **asymmetric**.

Example::

    config = EncoderConfig(model="all-MiniLM-L6-v2", query_prompt="query: ", document_prompt="passage: ")
    same = EncoderConfig.from_dict(config.to_dict())
    assert same == config

    # A model folder whose config_sentence_transformers.json names its prompts: choose them by name.
    e5_style = EncoderConfig(model="models/e5-small", query_prompt_name="query", document_prompt_name="passage")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from dual_encoder.errors import ConfigurationError

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")
Backend = Literal["auto", "torch", "openvino", "openvino-bf16", "openvino-int8"]
#: How the transformer of each tower runs (see :mod:`dual_encoder.acceleration`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino", "openvino-bf16", "openvino-int8")

_DEFAULT_BATCH_SIZE = 32

#: ``encode`` keyword arguments that change only how the work is done, never where a text lands.
ENCODE_KWARGS: tuple[str, ...] = ("batch_size", "show_progress_bar")
#: ``encode`` keyword arguments that would change the embeddings or their output, and what to use instead.
_REFUSED_ENCODE_KWARGS: dict[str, str] = {
    "prompt": "set query_prompt / document_prompt",
    "prompt_name": "set query_prompt_name / document_prompt_name",
    "normalize_embeddings": "set normalize",
    "device": "set device",
    "precision": "quantised embeddings live in another space; use backend= for faster encoding",
    "truncate_dim": "it changes the dimension of the space; save a model whose output has that dimension",
    "task": "queries always take the query route and documents the document route",
    "output_value": "the encoder always returns sentence embeddings",
    "convert_to_numpy": "the encoder always returns a float32 NumPy matrix",
    "convert_to_tensor": "the encoder always returns a float32 NumPy matrix",
    "pool": "a process pool cannot be part of a serialisable definition; use batch_size",
    "chunk_size": "it only applies to a process pool; use batch_size",
}


@dataclass(frozen=True)
class EncoderConfig:
    """How a dual encoder turns queries and documents into vectors.

    :param model: A local sentence-transformers model folder, a known alias (``all-MiniLM-L6-v2``) or a
        Hugging Face Hub id (only where a network exists).
    :param query_prompt: Text prepended to every query. ``None`` takes the prompt named by
        ``query_prompt_name``, else the model's own ``query`` prompt.
    :param document_prompt: Text prepended to every document. ``None`` takes the prompt named by
        ``document_prompt_name``, else the model's own ``document`` (or ``passage``/``corpus``) prompt.
    :param query_prompt_name: Name of one of the model folder's prompts (``prompts`` in
        ``config_sentence_transformers.json``) to prepend to queries. Not together with ``query_prompt``.
    :param document_prompt_name: The same for documents. The fingerprint records the prompt's text, so choosing
        a prompt by name or writing out the same text gives the same document space.
    :param normalize: L2-normalise embeddings. ``None`` follows the model (normalised when it ends in a
        ``Normalize`` module). ``False`` on a model that normalises itself is refused.
    :param similarity: ``"cosine"`` or ``"dot"``. ``None`` follows the model's ``similarity_fn_name``.
    :param max_seq_length: Maximum tokens per text; longer texts are truncated with a warning.
        ``None`` follows the model.
    :param batch_size: Texts per forward pass.
    :param device: Torch device (``"cpu"``, ``"cuda:0"``...). ``None`` picks the best available.
    :param trust_remote_code: Allow a model folder to run its own Python code. Off by default.
    :param backend: How the transformers run: ``"auto"`` (``"openvino-bf16"`` on a CPU with native bfloat16,
        ``"torch"`` on a GPU or any other CPU; a model OpenVINO cannot convert runs on torch with one warning),
        ``"torch"`` (float32), ``"openvino"`` (OpenVINO on the
        CPU, float32) or ``"openvino-bf16"`` (OpenVINO on the CPU in bfloat16: several times faster on CPUs with
        bfloat16 support, embeddings within cosine 0.9999 of float32) or ``"openvino-int8"`` (bfloat16 with the
        fully connected layers in int8: faster again, embeddings within cosine ~0.999 of float32). All of them
        embed into the same document space, so they share fingerprints and indexes.
    :param encode_kwargs: Keyword arguments of sentence-transformers' ``encode``, as Haystack's and LangChain's
        stock embedders take them. Only those that leave the document space unchanged are accepted:
        ``batch_size`` (the same as the field above; it replaces it) and ``show_progress_bar`` (the default for
        calls that do not choose; a component's own ``progress_bar`` wins). Any other key is refused with what to
        set instead, because it would move the vectors (``normalize_embeddings``, ``prompt``, ``precision``,
        ``truncate_dim``, model-specific keywords) or change the output's type.
    """

    model: str = "all-MiniLM-L6-v2"
    query_prompt: str | None = None
    document_prompt: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    normalize: bool | None = None
    similarity: Similarity | None = None
    max_seq_length: int | None = None
    batch_size: int = _DEFAULT_BATCH_SIZE
    device: str | None = None
    trust_remote_code: bool = False
    backend: Backend = "torch"
    encode_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError(
                f"EncoderConfig.model must be a non-empty string (a model folder or name), got {self.model!r}."
            )
        for name in ("query_prompt", "document_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"EncoderConfig.{name} must be a string or None, got {value!r}.")
        for role in ("query", "document"):
            prompt_name = getattr(self, f"{role}_prompt_name")
            if prompt_name is None:
                continue
            if not isinstance(prompt_name, str) or not prompt_name.strip():
                raise ConfigurationError(
                    f"EncoderConfig.{role}_prompt_name must be the name of one of the model's prompts (a non-empty "
                    f"string) or None, got {prompt_name!r}."
                )
            if getattr(self, f"{role}_prompt") is not None:
                raise ConfigurationError(
                    f"EncoderConfig sets both {role}_prompt={getattr(self, f'{role}_prompt')!r} and "
                    f"{role}_prompt_name={prompt_name!r}. Give the prompt's text or the name of one of the model's "
                    f"prompts, not both."
                )
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise ConfigurationError(
                f"EncoderConfig.similarity must be one of {SIMILARITIES} (or None to follow the model), "
                f"got {self.similarity!r}."
            )
        if self.max_seq_length is not None and (
            isinstance(self.max_seq_length, bool) or not isinstance(self.max_seq_length, int) or self.max_seq_length < 1
        ):
            raise ConfigurationError(
                f"EncoderConfig.max_seq_length must be a positive integer or None, got {self.max_seq_length!r}."
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigurationError(f"EncoderConfig.batch_size must be a positive integer, got {self.batch_size!r}.")
        for name in ("normalize",):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigurationError(f"EncoderConfig.{name} must be true, false or None, got {value!r}.")
        if not isinstance(self.trust_remote_code, bool):
            raise ConfigurationError(
                f"EncoderConfig.trust_remote_code must be true or false, got {self.trust_remote_code!r}."
            )

        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"EncoderConfig.backend must be one of {BACKENDS}, got {self.backend!r}. 'auto' picks "
                f"'openvino-bf16' on CPUs with bfloat16 and 'torch' elsewhere; 'torch' runs float32 PyTorch; "
                f"'openvino', 'openvino-bf16' and 'openvino-int8' run OpenVINO on the CPU in float32, bfloat16 or "
                f"int8."
            )
        if self.backend not in ("torch", "auto") and self.device not in (None, "cpu"):
            raise ConfigurationError(
                f"EncoderConfig.backend={self.backend!r} runs on the CPU, but device={self.device!r} was asked "
                f"for. Use backend='torch' on {self.device!r}, or leave device unset (or 'cpu')."
            )
        if self.encode_kwargs is not None:
            self._absorb_encode_kwargs(self.encode_kwargs)

    def _absorb_encode_kwargs(self, encode_kwargs: Any) -> None:
        """Check ``encode_kwargs`` and fold ``batch_size`` into the field, so one definition has one form."""
        if not isinstance(encode_kwargs, Mapping):
            raise ConfigurationError(
                f"EncoderConfig.encode_kwargs must be a mapping of sentence-transformers encode() keyword arguments, "
                f"got {type(encode_kwargs).__name__}."
            )
        for key in encode_kwargs:
            if key in ENCODE_KWARGS:
                continue
            instead = _REFUSED_ENCODE_KWARGS.get(key)
            reason = (
                f"it would change the embeddings or their output ({instead})"
                if instead
                else "it is not a known option that leaves the document space unchanged (model-specific keywords "
                "reach the model's forward pass and can move the vectors)"
            )
            raise ConfigurationError(
                f"EncoderConfig.encode_kwargs cannot take {key!r}: {reason}. Accepted keys: {list(ENCODE_KWARGS)}."
            )
        remaining = dict(encode_kwargs)
        if "batch_size" in remaining:
            batch_size = remaining.pop("batch_size")
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ConfigurationError(
                    f"EncoderConfig.encode_kwargs['batch_size'] must be a positive integer, got {batch_size!r}."
                )
            if self.batch_size not in (batch_size, _DEFAULT_BATCH_SIZE):
                raise ConfigurationError(
                    f"EncoderConfig sets batch_size={self.batch_size} and encode_kwargs['batch_size']={batch_size}. "
                    f"Give the batch size once."
                )
            object.__setattr__(self, "batch_size", batch_size)
        progress_bar = remaining.get("show_progress_bar")
        if progress_bar is not None and not isinstance(progress_bar, bool):
            raise ConfigurationError(
                f"EncoderConfig.encode_kwargs['show_progress_bar'] must be true or false, got {progress_bar!r}."
            )
        object.__setattr__(self, "encode_kwargs", remaining or None)

    @property
    def show_progress_bar(self) -> bool:
        """Whether encoding calls that do not choose show a progress bar (``encode_kwargs``; off by default)."""
        return bool((self.encode_kwargs or {}).get("show_progress_bar", False))

    def __hash__(self) -> int:
        # The generated hash would fail on the encode_kwargs dict; definitions stay usable as cache keys.
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=repr))

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON/YAML-safe values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Rebuild a definition; unknown keys are refused so that typos in YAML are not silently ignored."""
        if not isinstance(data, dict):
            raise ConfigurationError(f"An encoder definition must be a mapping, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"Unknown encoder parameter(s) {unknown}. Valid parameters are: {sorted(known)}.")
        return cls(**data)

    @classmethod
    def coerce(cls, value: EncoderConfig | dict[str, Any] | str) -> EncoderConfig:
        """Accept a definition, its dict form, or just a model name."""
        if isinstance(value, EncoderConfig):
            return value
        if isinstance(value, str):
            return cls(model=value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise ConfigurationError(
            f"encoder must be an EncoderConfig, a dict of its fields or a model name, got {type(value).__name__}."
        )


def validate_top_k(top_k: Any) -> int:
    """Return ``top_k`` when it is a positive integer; otherwise explain the fix."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise ConfigurationError(f"top_k must be a positive integer, got {top_k!r}. Ask for at least one document.")
    return top_k
