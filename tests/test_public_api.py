"""The package's public API: what `import dual_encoder` offers, what it costs, and that the README's names exist."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dual_encoder

README = Path(__file__).resolve().parents[1] / "README.md"
OUR_PACKAGES = ("dual_encoder", "haystack_integrations", "langchain_dual_encoder", "dual_encoder_weaviate")
HEAVY = ("torch", "sentence_transformers", "transformers", "openvino")


def _modules_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter and report which heavy modules it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=environment, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_importing_the_package_loads_no_torch_or_sentence_transformers():
    loaded = _modules_after("import dual_encoder\nassert dual_encoder.EncoderConfig().model")
    assert loaded == dict.fromkeys(HEAVY, False)
    # Nor NumPy: the definition and the errors are plain Python (the child process fails on the assert).
    _modules_after("import dual_encoder, sys\nassert 'numpy' not in sys.modules, 'importing dual_encoder loaded numpy'")


def test_the_store_contract_and_the_embedded_store_need_no_torch(tmp_path):
    code = (
        "import numpy as np, dual_encoder\n"
        f"store = dual_encoder.open_embedded_store({str(tmp_path / 'index')!r})\n"
        "store.upsert([dual_encoder.StoredRecord(id='a', content='x', meta={}, embedding=np.ones(4, 'float32'))],\n"
        "             policy=dual_encoder.DuplicatePolicy.OVERWRITE)\n"
        "assert store.vector_search(np.ones(4, 'float32'), top_k=1).hits[0].record.id == 'a'\n"
        "assert issubclass(type(store), dual_encoder.Store)\n"
        "store.close()\n"
    )
    assert _modules_after(code) == dict.fromkeys(HEAVY, False)


def test_the_encoder_class_imports_without_torch_until_a_model_loads():
    loaded = _modules_after("import dual_encoder\nencoder = dual_encoder.DualEncoder('all-MiniLM-L6-v2')")
    assert loaded["torch"] is False and loaded["sentence_transformers"] is False


def test_version_is_the_installed_distributions():
    assert dual_encoder.__version__ == importlib.metadata.version("dual-encoder-retrieval")
    assert re.fullmatch(r"\d+\.\d+.*", dual_encoder.__version__)


def test_every_exported_name_resolves_to_its_definition():
    from dual_encoder.config import EncoderConfig
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.stores import DuplicatePolicy, SearchResult, Store, StoredRecord

    assert set(dual_encoder._LAZY) <= set(dual_encoder.__all__)
    for name in dual_encoder.__all__:
        assert getattr(dual_encoder, name) is not None, name
        assert name in dir(dual_encoder)
    assert dual_encoder.EncoderConfig is EncoderConfig
    assert dual_encoder.DualEncoder is DualEncoder
    assert dual_encoder.Store is Store and dual_encoder.StoredRecord is StoredRecord
    assert dual_encoder.SearchResult is SearchResult and dual_encoder.DuplicatePolicy is DuplicatePolicy
    assert dual_encoder.open_embedded_store is open_embedded_store
    for error in ("EncoderMismatchError", "FilterError", "StoreFormatError", "StoreLockedError", "ConfigurationError"):
        assert issubclass(getattr(dual_encoder, error), dual_encoder.DualEncoderError), error


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'EncoderConfg'"):
        dual_encoder.EncoderConfg  # noqa: B018


def _resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted`` and follow the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def _readme_dotted_names() -> set[str]:
    text = README.read_text()
    names = set()
    packages = "|".join(OUR_PACKAGES)
    for match in re.finditer(rf"\b((?:{packages})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
        name = match.group(1)
        if not re.search(r"\.(py|yaml|json|md)$", name) and "/" not in text[match.start() - 1 : match.start()]:
            names.add(name)
    return names


def _readme_imports() -> set[tuple[str, str]]:
    imports = set()
    for module, names in re.findall(r"^\s*from ([\w.]+) import ([^\n#(]+)", README.read_text(), flags=re.MULTILINE):
        if module.split(".")[0] in OUR_PACKAGES:
            imports.update((module, name.strip()) for name in names.split(","))
    return imports


def _readme_component_table() -> set[tuple[str, str]]:
    """``| `Class` | `module` | ...`` rows of the README's component table."""
    rows = re.findall(r"^\| `(\w+)` \| `([\w.]+)` \|", README.read_text(), flags=re.MULTILINE)
    return {(module, name) for name, module in rows if module.split(".")[0] in OUR_PACKAGES}


def _readme_error_and_config_names() -> set[str]:
    return set(re.findall(r"`([A-Z]\w+(?:Error|Config))`", README.read_text())) - {"ValueError"}


def test_the_readme_names_only_symbols_that_exist():
    names = _readme_dotted_names()
    imports = _readme_imports() | _readme_component_table()
    # The README's anchors: if these stop being found, the scan itself is broken.
    assert {"dual_encoder.EncoderConfig", "dual_encoder.embedded.open_embedded_store"} <= names
    assert ("haystack_integrations.components.retrievers.dual_encoder", "DualEncoderRetriever") in imports
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
    for module, name in sorted(imports):
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            missing.append(f"from {module} import {name}: {error}")
    # Errors and settings the README names bare: exported by the core (or its keyword module) or the Weaviate package.
    bare = _readme_error_and_config_names()
    assert {"EncoderMismatchError", "StoreLockedError", "KeywordConfig"} <= bare
    modules = ("dual_encoder.keyword", "dual_encoder.static_query", "dual_encoder.training", "dual_encoder_weaviate")
    homes = [dual_encoder, *map(importlib.import_module, modules)]
    missing += [f"{name}: not exported" for name in sorted(bare) if not any(hasattr(home, name) for home in homes)]
    assert not missing, "README names symbols that do not exist:\n" + "\n".join(missing)
