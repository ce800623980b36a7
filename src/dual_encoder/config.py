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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from dual_encoder.errors import ConfigurationError

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")
Backend = Literal["torch", "openvino", "openvino-bf16", "openvino-int8"]
#: How the transformer of each tower runs (see :mod:`dual_encoder.acceleration`).
BACKENDS: tuple[str, ...] = ("torch", "openvino", "openvino-bf16", "openvino-int8")


@dataclass(frozen=True)
class EncoderConfig:
    """How a dual encoder turns queries and documents into vectors.

    :param model: A local sentence-transformers model folder, a known alias (``all-MiniLM-L6-v2``) or a
        Hugging Face Hub id (only where a network exists).
    :param query_prompt: Text prepended to every query. ``None`` takes the model's own ``query`` prompt.
    :param document_prompt: Text prepended to every document. ``None`` takes the model's own ``document``
        (or ``passage``/``corpus``) prompt.
    :param normalize: L2-normalise embeddings. ``None`` follows the model (normalised when it ends in a
        ``Normalize`` module). ``False`` on a model that normalises itself is refused.
    :param similarity: ``"cosine"`` or ``"dot"``. ``None`` follows the model's ``similarity_fn_name``.
    :param max_seq_length: Maximum tokens per text; longer texts are truncated with a warning.
        ``None`` follows the model.
    :param batch_size: Texts per forward pass.
    :param device: Torch device (``"cpu"``, ``"cuda:0"``...). ``None`` picks the best available.
    :param trust_remote_code: Allow a model folder to run its own Python code. Off by default.
    :param backend: How the transformers run: ``"torch"`` (default, float32), ``"openvino"`` (OpenVINO on the
        CPU, float32) or ``"openvino-bf16"`` (OpenVINO on the CPU in bfloat16: several times faster on CPUs with
        bfloat16 support, embeddings within cosine 0.9999 of float32) or ``"openvino-int8"`` (bfloat16 with the
        fully connected layers in int8: faster again, embeddings within cosine ~0.999 of float32). All of them
        embed into the same document space, so they share fingerprints and indexes.
    """

    model: str = "all-MiniLM-L6-v2"
    query_prompt: str | None = None
    document_prompt: str | None = None
    normalize: bool | None = None
    similarity: Similarity | None = None
    max_seq_length: int | None = None
    batch_size: int = 32
    device: str | None = None
    trust_remote_code: bool = False
    backend: Backend = "torch"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError(
                f"EncoderConfig.model must be a non-empty string (a model folder or name), got {self.model!r}."
            )
        for name in ("query_prompt", "document_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"EncoderConfig.{name} must be a string or None, got {value!r}.")
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
                f"EncoderConfig.backend must be one of {BACKENDS}, got {self.backend!r}. 'torch' runs float32 "
                f"PyTorch; 'openvino', 'openvino-bf16' and 'openvino-int8' run OpenVINO on the CPU in float32, bfloat16 or "
                f"int8."
            )
        if self.backend != "torch" and self.device not in (None, "cpu"):
            raise ConfigurationError(
                f"EncoderConfig.backend={self.backend!r} runs on the CPU, but device={self.device!r} was asked "
                f"for. Use backend='torch' on {self.device!r}, or leave device unset (or 'cpu')."
            )

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
            raise ConfigurationError(
                f"Unknown encoder parameter(s) {unknown}. Valid parameters are: {sorted(known)}."
            )
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
