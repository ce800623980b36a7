"""Importing a framework adapter without its extra fails with a message that names the package and the pip fix.

Each check runs in a fresh interpreter whose ``sitecustomize`` makes the framework uninstalled: importing it
raises the same ``ModuleNotFoundError`` (``name`` set to the top-level module) that Python raises for a package
that is not installed.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dual_encoder._optional import missing_extra_message, requires_extra

HIDE_MODULES = textwrap.dedent(
    """
    import importlib.abc, os, sys

    HIDDEN = set(os.environ["HIDDEN_MODULES"].split(","))

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    """
)


def run_without(hidden: list[str], code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which the top-level modules ``hidden`` are not installed."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_MODULES)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HIDDEN_MODULES": ",".join(hidden),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


IMPORT_ERROR_REPORT = """
    import json
    try:
        {statement}
    except ImportError as error:
        print(json.dumps({{"type": type(error).__name__, "message": str(error), "name": error.name,
                           "cause": str(error.__cause__)}}))
    else:
        print(json.dumps(None))
"""


def import_error(hidden: list[str], statement: str, tmp_path) -> dict | None:
    """The ImportError ``statement`` raises without ``hidden`` (its type, message, name and cause), or None."""
    done = run_without(hidden, IMPORT_ERROR_REPORT.format(statement=statement), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("hidden", "statement", "package", "extra"),
    [
        (
            "haystack",
            "from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder",
            "haystack-ai",
            "haystack",
        ),
        (
            "haystack",
            "import haystack_integrations.components.retrievers.dual_encoder",
            "haystack-ai",
            "haystack",
        ),
        (
            "haystack",
            "from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore",
            "haystack-ai",
            "haystack",
        ),
        ("langchain_core", "from langchain_dual_encoder import DualEncoderVectorStore", "langchain-core", "langchain"),
        ("weaviate", "from dual_encoder_weaviate import WeaviateStore", "weaviate-client", "weaviate"),
        ("weaviate", "from dual_encoder_weaviate import CollectionSettings", "weaviate-client", "weaviate"),
        (
            "weaviate",
            "from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore",
            "weaviate-client",
            "weaviate",
        ),
    ],
)
def test_a_missing_extra_names_the_package_and_the_install_command(hidden, statement, package, extra, tmp_path):
    error = import_error([hidden], statement, tmp_path)
    assert error is not None, f"{statement} imported although {hidden} is hidden"
    # Still a ModuleNotFoundError, so code that catches that (pytest.importorskip, optional imports) keeps working.
    assert error["type"] == "ModuleNotFoundError" and error["name"] == hidden
    assert f"needs {package}, which is not installed" in error["message"]
    assert f'pip install "dual-encoder-retrieval[{extra}]"' in error["message"]
    assert error["cause"] == f"No module named {hidden!r}"  # the original error stays attached


def test_the_core_and_the_other_adapters_import_without_the_frameworks(tmp_path):
    """Hiding every framework leaves the core, the Weaviate server tool and the command line importable."""
    done = run_without(
        ["haystack", "langchain_core", "weaviate"],
        """
        import json
        import dual_encoder, dual_encoder_weaviate
        from dual_encoder.cli import app
        from dual_encoder.plugins import open_store
        from dual_encoder.errors import ConfigurationError

        try:
            open_store("weaviate", url="http://127.0.0.1:9")
        except ConfigurationError as error:
            plugin_error = str(error)
        print(json.dumps({"config": dual_encoder.EncoderConfig(model="m").model, "plugin_error": plugin_error,
                          "server": dual_encoder_weaviate.WeaviateServer.__name__}))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["config"] == "m" and report["server"] == "WeaviateServer"
    # The store plug-in entry point names the extra too (through the core's plug-in loader).
    assert "pip install 'dual-encoder-retrieval[weaviate]'" in report["plugin_error"]


def test_the_adapters_import_when_their_framework_is_installed(tmp_path):
    """The sitecustomize hides only what it is told to: with nothing hidden every adapter imports."""
    error = import_error(
        [],
        "import haystack_integrations.components.embedders.dual_encoder, langchain_dual_encoder; "
        "from dual_encoder_weaviate import WeaviateStore",
        tmp_path,
    )
    assert error is None


def test_other_import_errors_pass_through_unchanged():
    """Only the named top-level module being missing is rewritten: a missing submodule of an installed library,
    or another missing module, keeps its own error."""
    with (
        pytest.raises(ModuleNotFoundError) as raised,
        requires_extra("json", package="json", extra="none", needed_by="here"),
    ):
        import json.no_such_submodule  # noqa: F401
    assert raised.value.name == "json.no_such_submodule" and "pip install" not in str(raised.value)
    with (
        pytest.raises(ModuleNotFoundError) as raised,
        requires_extra("yaml", package="PyYAML", extra="yaml", needed_by="here"),
    ):
        import no_such_module_anywhere  # noqa: F401
    assert raised.value.name == "no_such_module_anywhere" and "pip install" not in str(raised.value)


def test_the_missing_module_is_rewritten_with_the_fix():
    with (
        pytest.raises(ModuleNotFoundError, match=r'pip install "dual-encoder-retrieval\[yaml\]"') as raised,
        requires_extra("no_such_module_anywhere", package="PyYAML", extra="yaml", needed_by="my_package"),
    ):
        import no_such_module_anywhere  # noqa: F401
    assert str(raised.value) == missing_extra_message(
        "no_such_module_anywhere", package="PyYAML", extra="yaml", needed_by="my_package"
    )
    assert str(raised.value).startswith("my_package needs PyYAML, which is not installed")
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)
