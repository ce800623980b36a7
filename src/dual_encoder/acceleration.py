"""Faster CPU encoding: run the transformer of each tower through OpenVINO.

``EncoderConfig(backend=...)`` picks how the transformer of each tower runs:

- ``"auto"``: ``"openvino-bf16"`` on a CPU that computes bfloat16 natively, ``"torch"`` everywhere else (a GPU,
  a CPU without bfloat16, OpenVINO not installed). A model OpenVINO cannot convert runs on torch, with one
  warning (:func:`resolve_backend`, :func:`accelerate`).
- ``"torch"``: sentence-transformers on PyTorch in float32, as loaded.
- ``"openvino"``: the same weights compiled by OpenVINO's CPU plugin in float32 (same numbers as torch
  up to rounding).
- ``"openvino-bf16"``: OpenVINO computing in bfloat16 on CPUs that support it (AVX-512 BF16 or AMX);
  embeddings stay very close to float32 and retrieval quality is unchanged (``benchmarks/README.md``). On a
  CPU without bfloat16 it runs in float32, with a warning.
- ``"openvino-int8"``: ``"openvino-bf16"`` with the weights of every fully connected layer stored as int8 (one
  scale per output channel) and OpenVINO quantizing their inputs on the fly, per group of
  :data:`INT8_ACTIVATION_GROUP` values, so those layers, most of the work, run as int8 dot products
  (AVX512-VNNI or AMX). Embeddings stay close to float32; quantizing each group of a token's values
  separately is what keeps them close (one scale per tensor, as onnxruntime's dynamic quantization does,
  lost far more; ``benchmarks/README.md``).

How many CPUs OpenVINO uses is decided here, not left to its defaults (see :func:`cpu_layout`): OpenVINO
leaves out every logical CPU it takes for the second thread of a core (judged from which CPUs share a cache),
and torch's thread count counts cores only too, so following either would run OpenVINO on half the CPUs of a
virtual machine whose vCPUs look like threads of shared cores.

Only the transformer's forward pass moves to OpenVINO. Tokenisation, prompts, Router routes, pooling and
normalisation stay sentence-transformers' own code, and the torch weights stay loaded: the encoder
fingerprint is computed from them, so an OpenVINO encoder reports the same document space as the torch
encoder of the same model (see :attr:`dual_encoder.encoder.DualEncoder.fingerprint`).

Nothing here may phone home, and OpenVINO's Python package reports usage to Intel unless the user opted
out: ``import openvino`` sends an "import" event and ``openvino.convert_model`` a conversion report. So
:func:`import_openvino` imports it with its telemetry package hidden, which makes OpenVINO fall back to its
own built-in no-op stub (the path it takes when ``openvino-telemetry`` is not installed), and the model is
converted with OpenVINO's PyTorch frontend directly rather than through ``convert_model``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dual_encoder import cpus
from dual_encoder.errors import ConfigurationError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: Backends and the OpenVINO inference precision each asks for (``None``: plain torch).
BACKEND_PRECISIONS: dict[str, str | None] = {
    "torch": None,
    "openvino": "f32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
}
#: The backend that picks one of :data:`BACKEND_PRECISIONS` for this machine (:func:`resolve_backend`).
AUTO_BACKEND = "auto"
#: What ``"auto"`` runs on a CPU with native bfloat16 (measured equal to float32 in retrieval quality).
AUTO_CPU_BACKEND = "openvino-bf16"

#: Values per dynamic-quantization group of a fully connected layer's input under ``"openvino-int8"``: the
#: fastest of the sizes tried on all-MiniLM-L6-v2 (``benchmarks/README.md``, ``openvino-int8``).
INT8_ACTIVATION_GROUP = 64

_TEXT_SAMPLE = "An example sentence to trace the model with, long enough to have a few tokens."


def resolve_backend(backend: str, device: str | None) -> str:
    """The backend that will run: ``backend`` itself, or for ``"auto"`` the one this machine suits.

    ``"auto"`` gives ``"torch"`` when a device other than the CPU is asked for, when ``device`` is unset and
    sentence-transformers would pick an accelerator (CUDA, MPS, ...), and on a CPU without native bfloat16
    (or without OpenVINO installed); otherwise :data:`AUTO_CPU_BACKEND`.
    """
    if backend != AUTO_BACKEND:
        return backend
    if device not in (None, "cpu"):
        return "torch"
    if device is None and default_device() != "cpu":
        return "torch"
    return AUTO_CPU_BACKEND if cpu_has_bf16() else "torch"


def default_device() -> str:
    """The device sentence-transformers loads a model on when none is asked for (``"cpu"``, ``"cuda"``, ...)."""
    from sentence_transformers.util import get_device_name

    return str(get_device_name())


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as OpenVINO's CPU plugin reports
    it. ``False`` when OpenVINO is not installed."""
    try:
        core = import_openvino().Core()
    except ImportError:
        return False
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_backend_device(backend: str, device: str | None) -> None:
    """OpenVINO backends run on the CPU only."""
    if BACKEND_PRECISIONS.get(backend) is not None and device not in (None, "cpu"):
        raise ConfigurationError(
            f"backend={backend!r} runs on the CPU, but device={device!r} was asked for. Use backend='torch' "
            f"for {device!r}, or leave device unset (or 'cpu') with an OpenVINO backend."
        )


@dataclass(frozen=True)
class CpuLayout:
    """The CPUs this process may run on, as the operating system presents them.

    :param logical_cpus: CPUs in the process's affinity mask, capped by its cgroup CPU quota.
    :param physical_cores: Distinct cores among them: logical CPUs the topology shows as threads of one core
        (hyper-threading, SMT, or a virtual machine presenting its vCPUs that way) count once.
    :param inference_threads: Threads each OpenVINO compile runs on in all: torch's intra-op thread count
        (``torch.set_num_threads``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) or, when torch's default counted
        only ``physical_cores`` of more ``logical_cpus`` (and no thread count is set in the environment),
        ``logical_cpus``.
    """

    logical_cpus: int
    physical_cores: int
    inference_threads: int

    def openvino_properties(self, *, throughput: bool) -> dict[str, Any]:
        """OpenVINO CPU properties that run a compile on ``inference_threads`` threads, whatever the topology.

        OpenVINO's own default leaves out every logical CPU it takes for the second thread of a core, and it
        decides that from the caches (logical CPUs sharing an L1/L2), not from the core topology torch and
        ``lscpu`` read, so on some virtual machines it runs on half the CPUs torch uses. Hyper-threading is
        therefore always allowed: the thread count alone decides. OpenVINO's hints still choose the streams
        within those threads (``throughput``: one single-thread stream per thread on small machines).
        """
        return {
            "INFERENCE_NUM_THREADS": self.inference_threads,
            "ENABLE_HYPER_THREADING": True,
            "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
        }

    def describe(self) -> dict[str, Any]:
        """The layout and how it was found, as JSON-safe values (for benchmarks and bug reports)."""
        return {**asdict(self), "cpu_quota": cpus.cgroup_cpu_quota(), "affinity": len(cpus.affinity())}


def cpu_layout(topology_root: Path = Path("/sys/devices/system/cpu")) -> CpuLayout:
    """The CPUs this process may use: its affinity mask, its cgroup quota, and which of them share a core
    (read from ``topology_root``, Linux's sysfs)."""
    import torch

    allowed = cpus.affinity()
    cores = set()
    for cpu in allowed:
        topology = topology_root / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
        except OSError:  # no sysfs topology: every logical CPU is its own core
            cores.add(("cpu", str(cpu)))
    logical = cpus.usable_cpus()
    physical = max(1, min(len(cores), logical))
    threads = max(1, torch.get_num_threads())
    if threads == physical < logical and not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        # torch's default counts cores, not logical CPUs; a thread count set in the environment is the user's.
        threads = logical
    return CpuLayout(logical_cpus=logical, physical_cores=physical, inference_threads=min(threads, logical))


def import_openvino() -> Any:
    """``import openvino`` without OpenVINO's usage telemetry (see the module docstring)."""
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        # ``None`` in sys.modules makes ``import openvino_telemetry`` raise ImportError, so OpenVINO's tools bind
        # their no-op telemetry stub at import time; the entry is removed again right after.
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
        try:
            return importlib.import_module("openvino")
        finally:
            del sys.modules["openvino_telemetry"]
    return importlib.import_module("openvino")


def accelerate(model: SentenceTransformer, backend: str, *, name: str, fall_back_to_torch: bool = False) -> str:
    """Route the forward pass of every transformer in ``model`` (both Router routes) through ``backend``.

    ``model`` is changed in place, all towers or none; its weights and state dict are not. ``name`` is the
    model's name for messages. A model OpenVINO cannot take raises :class:`ConfigurationError` (or OpenVINO's
    own error), unless ``fall_back_to_torch``: then it stays on torch and one warning says why. Returns the
    backend that now runs the model (``"torch"`` after a fall-back).
    """
    if BACKEND_PRECISIONS[backend] is None:
        return "torch"
    try:
        forwards = _converted_forwards(model, backend, name=name)
    except Exception as error:
        if not fall_back_to_torch:
            raise
        logger.warning(
            "backend='auto': model '%s' cannot run on %s (%s: %s), so it runs on torch in float32. Set "
            "backend='torch' to skip the attempt (and this warning).",
            name,
            backend,
            type(error).__name__,
            (str(error).splitlines() or [""])[0],
        )
        return "torch"
    for module, forward in forwards:
        module.forward = forward
    return backend


def _converted_forwards(model: SentenceTransformer, backend: str, *, name: str) -> list[tuple[Any, _OpenVINOForward]]:
    """Every tower's first module with the OpenVINO forward that replaces its own (nothing is replaced yet)."""
    precision = BACKEND_PRECISIONS[backend]
    assert precision is not None
    core = import_openvino().Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        logger.warning(
            "backend='openvino-bf16': this CPU has no bfloat16 support, so OpenVINO computes in float32 (the "
            "results are those of backend='openvino')."
        )
        precision = "f32"
    if precision == "int8" and "INT8" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        logger.warning(
            "backend='openvino-int8': this CPU has no int8 dot-product support, so OpenVINO computes the int8 "
            "layers in floating point (same results, without the speed-up)."
        )
    return [
        (module, _compile_transformer(core, module, precision, name=name)) for module in _input_modules(model, name)
    ]


def backend_of(model: SentenceTransformer) -> str:
    """The backend that runs ``model``'s transformers: ``"torch"``, or the OpenVINO backend :func:`accelerate`
    compiled them for (``"openvino"`` where ``"openvino-bf16"`` met a CPU without bfloat16)."""
    from sentence_transformers.base.modules import Router

    first = model[0] if len(model) else None
    towers = _route_heads(first) if isinstance(first, Router) else [first]
    for module in towers:
        forward = getattr(module, "forward", None)
        if isinstance(forward, _OpenVINOForward):
            return forward.backend
    return "torch"


def _route_heads(router: Any) -> list[Any]:
    """The first module of each route of a sentence-transformers ``Router`` (it keeps each route as an
    ``nn.Sequential``)."""
    import torch

    heads = []
    for route in router.sub_modules.values():
        assert isinstance(route, torch.nn.Sequential)
        heads.append(route[0])
    return heads


def runs_on_openvino(model: SentenceTransformer) -> bool:
    """Whether ``model``'s transformers run through OpenVINO (:func:`accelerate` converted them)."""
    return backend_of(model) != "torch"


def _input_modules(model: SentenceTransformer, name: str) -> list[Any]:
    """The first module of every tower, each checked to be a text transformer OpenVINO can take."""
    from sentence_transformers.base.modules import Router, Transformer

    first = model[0] if len(model) else None
    towers = _route_heads(first) if isinstance(first, Router) else [first]
    checked: list[Any] = []
    for module in towers:
        if type(module).__name__ == "StaticEmbedding" and isinstance(first, Router):
            continue  # a static query tower is a table lookup: nothing for OpenVINO to accelerate
        if not isinstance(module, Transformer):
            raise ConfigurationError(
                f"The OpenVINO backends need towers that start with a sentence-transformers Transformer module; "
                f"model '{name}' has {type(module).__name__}. Use backend='torch' for this model."
            )
        modality = module.modality_config.get("text", {})
        if (
            set(module.modality_config) != {"text"}
            or modality.get("method") != "forward"
            or modality.get("method_output_name")
            not in ("last_hidden_state", ["last_hidden_state"], ("last_hidden_state",))
        ):
            raise ConfigurationError(
                f"The OpenVINO backends support text transformers whose output is last_hidden_state; model "
                f"'{name}' is configured with {module.modality_config}. Use backend='torch' for this model."
            )
        if getattr(getattr(module.model, "config", None), "output_hidden_states", False):
            raise ConfigurationError(
                f"Model '{name}' passes every layer's hidden states on (output_hidden_states); the OpenVINO "
                f"backends compute only the last one. Use backend='torch' for this model."
            )
        if any(module is seen for seen in checked):
            continue
        checked.append(module)
    return checked


def _last_hidden_state(transformer: Any, input_names: list[str]) -> Any:
    """A torch module returning the transformer's last hidden state from positional tensors (for tracing)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: Any) -> Any:
            return self.transformer(**dict(zip(input_names, tensors)), return_dict=True).last_hidden_state

    return LastHiddenState().eval()


def _compile_transformer(core: Any, module: Any, precision: str, *, name: str) -> _OpenVINOForward:
    import torch
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    from transformers.utils import logging as transformers_logging

    transformer = module.model
    sample = module.preprocess([_TEXT_SAMPLE, _TEXT_SAMPLE + " And a second, longer one."])
    parameters = inspect.signature(transformer.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    input_names = [
        key for key, value in sample.items() if isinstance(value, torch.Tensor) and (key in parameters or takes_any)
    ]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise ConfigurationError(
            f"The OpenVINO backends need a tokenizer that gives input_ids and an attention_mask; model '{name}' "
            f"gives {sorted(sample)}. Use backend='torch' for this model."
        )
    example = tuple(sample[key] for key in input_names)
    traced = _last_hidden_state(transformer, input_names)
    # Tracing warns that a few shape checks in transformers' masking and attention code are frozen into the
    # graph; for an encoder they are constant (the mask always matches the inputs, attention is not causal),
    # and the tests check the converted model against torch at other lengths. Tracing also touches
    # deprecated attributes of the transformers model. None of it is the user's to act on.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder = TorchScriptPythonDecoder(traced, example_input=example, shared_memory=False)
            frontend = FrontEndManager().load_by_framework("pytorch")
            ov_model = frontend.convert(frontend.load(decoder))
    finally:
        transformers_logging.set_verbosity(verbosity)
    for port, key in zip(ov_model.inputs, input_names):
        port.get_tensor().set_names({key})
    properties: dict[str, Any] = {}
    if precision == "int8":
        _store_linear_weights_as_int8(ov_model)
        bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        properties.update(
            INFERENCE_PRECISION_HINT="bf16" if bf16 else "f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=INT8_ACTIVATION_GROUP
        )
    else:
        properties["INFERENCE_PRECISION_HINT"] = precision
    backend = next(name for name, value in BACKEND_PRECISIONS.items() if value == precision)
    return _OpenVINOForward(
        _CompiledTransformer(core, ov_model, properties), input_names, module.module_output_name, backend=backend
    )


def _store_linear_weights_as_int8(ov_model: Any) -> int:
    """Replace every constant MatMul weight with int8 values times one float scale per output channel.

    ``int8 -> Convert -> Multiply(scale) -> MatMul`` is the compressed-weight pattern OpenVINO's CPU plugin
    recognises: it keeps the weights in int8 and, with ``DYNAMIC_QUANTIZATION_GROUP_SIZE``, quantizes the
    layer's input at run time so the product is computed in int8. Returns how many weights were replaced.
    """
    import numpy as np
    from openvino import Type
    from openvino import opset13 as ops

    replaced = 0
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight_node = node.input_value(1).get_node()
        if weight_node.get_type_name() != "Constant":
            continue
        weight = weight_node.get_data().astype(np.float32)
        if weight.ndim != 2:
            continue
        transpose_b = node.get_attributes()["transpose_b"]
        # One scale per output channel: rows of [out, in] when transpose_b, columns of [in, out] otherwise.
        axis = 1 if transpose_b else 0
        scale = np.abs(weight).max(axis=axis, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        dequantized = ops.multiply(
            ops.convert(ops.constant(quantized), Type.f32), ops.constant(scale.astype(np.float32))
        )
        node.input(1).replace_source_output(dequantized.output(0))
        replaced += 1
    return replaced


class _CompiledTransformer:
    """One converted transformer, compiled for each way it is called, on the CPUs of :func:`cpu_layout`.

    - ``latency``: one request uses every inference thread. A search's query or a small batch is one call
      at a time, so this is what a single call runs on (compiled at load).
    - ``throughput``: OpenVINO's throughput streams over the same threads (one per thread on a small
      machine), with one request per stream in flight. It
      encodes more documents per second than ``latency`` one batch after another (``benchmarks/README.md``),
      but needs requests in flight on every stream (see :func:`throughput_requests`), so it is compiled the
      first time a caller asks for it, and a process that only answers queries never pays its memory.

    :param properties: Precision properties of the compile; the thread layout comes from ``layout``.
    """

    def __init__(self, core: Any, ov_model: Any, properties: dict[str, Any], layout: CpuLayout | None = None) -> None:
        self.layout = layout or cpu_layout()
        self._core = core
        self._ov_model = ov_model
        self._properties = properties
        self.latency = core.compile_model(
            ov_model, "CPU", {**properties, **self.layout.openvino_properties(throughput=False)}
        )
        self._throughput: Any = None
        self._lock = threading.Lock()

    @property
    def throughput(self) -> Any:
        if self._throughput is None:
            with self._lock:
                if self._throughput is None:
                    self._throughput = self._core.compile_model(
                        self._ov_model, "CPU", {**self._properties, **self.layout.openvino_properties(throughput=True)}
                    )
        return self._throughput

    @functools.cached_property
    def throughput_requests(self) -> int:
        return int(self.throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


_calling_thread = threading.local()


@contextmanager
def throughput_streams() -> Iterator[None]:
    """Inside this block, the calling thread's forward passes run on the throughput-compiled transformers.

    For callers that keep :func:`throughput_requests` batches in flight from as many threads; one batch at
    a time runs faster on the default latency compile.
    """
    before = getattr(_calling_thread, "throughput", False)
    _calling_thread.throughput = True
    try:
        yield
    finally:
        _calling_thread.throughput = before


def throughput_requests(transformer: Any) -> int:
    """How many batches to keep in flight through a tower's first module, each from its own thread inside
    :func:`throughput_streams`, for the most texts per second: one per OpenVINO throughput stream (the
    first call compiles the throughput model). 1 for a transformer that runs on torch."""
    forward = getattr(transformer, "forward", None)
    return forward.compiled.throughput_requests if isinstance(forward, _OpenVINOForward) else 1


class _OpenVINOForward:
    """Replaces ``Transformer.forward``: same features in, same ``token_embeddings`` out, computed by OpenVINO.

    One inference request per thread (and compile): OpenVINO requests must not be shared between concurrent
    calls.
    """

    def __init__(
        self, compiled: _CompiledTransformer, input_names: list[str], output_name: str, *, backend: str
    ) -> None:
        self.compiled = compiled
        self.input_names = input_names
        self.output_name = output_name
        self.backend = backend
        self._local = threading.local()

    def __call__(self, features: dict[str, Any], **_: Any) -> dict[str, Any]:
        import torch

        throughput = getattr(_calling_thread, "throughput", False)
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(throughput)
        if request is None:
            compiled = self.compiled.throughput if throughput else self.compiled.latency
            request = requests[throughput] = compiled.create_infer_request()
        inputs = {key: features[key].detach().cpu().numpy() for key in self.input_names}
        result = request.infer(inputs)
        features[self.output_name] = torch.from_numpy(result[0])
        return features

    def __deepcopy__(self, memo: dict) -> _OpenVINOForward:
        # A compiled model is immutable: copies of the module share it (each thread still gets its own request).
        return _OpenVINOForward(self.compiled, self.input_names, self.output_name, backend=self.backend)
