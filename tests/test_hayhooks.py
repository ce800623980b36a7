"""The query pipeline served over HTTP by Hayhooks (``examples/hayhooks/query.yml``), as the README shows: a real
``hayhooks run`` on 127.0.0.1 over an embedded store, answering like ``Pipeline.run`` and refusing bad requests."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from haystack import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SERVED_YAML = EXAMPLES / "hayhooks" / "query.yml"
QUESTION = "Why do we have summer and winter?"
#: Bounds: the server's start (it loads Haystack and the pipeline), one request (the first loads the model) and
#: its stop. Generous, since the machine running the tests may be busy.
START_TIMEOUT = 300.0
REQUEST_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0

if importlib.util.find_spec("hayhooks") is None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must run the Hayhooks tests: pip install 'hayhooks==2.1.*'", pytrace=False)
    pytest.skip("Hayhooks is not installed (pip install 'hayhooks==2.1.*')", allow_module_level=True)


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, builders, index_sample_corpus) -> Path:
    """A working directory with the sample corpus indexed at ``dual-encoder-index`` (the path the YAML names)."""
    folder = tmp_path_factory.mktemp("served")
    index_sample_corpus(folder / builders.STORE_PATH).close()
    (folder / "pipelines").mkdir()
    shutil.copy(SERVED_YAML, folder / "pipelines" / "query.yml")
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HayhooksServer:
    """``hayhooks run`` in a subprocess; :meth:`stop` ends it (SIGTERM, then SIGKILL) and returns its exit code."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "hayhooks.log"
        command = [
            sys.executable,
            "-c",
            "from hayhooks.cli import hayhooks_cli; hayhooks_cli()",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--pipelines-dir",
            str(folder / "pipelines"),
            "--without-tracing",
        ]
        with self.log.open("wb") as log:
            # The working directory is where the YAML's relative store path resolves, as for a user.
            self.process = subprocess.Popen(
                command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
            )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_until_serving(self, pipeline: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"hayhooks exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                status = httpx.get(f"{self.url}/status", timeout=5)
                if status.status_code == 200 and pipeline in status.json().get("pipelines", []):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"hayhooks did not serve '{pipeline}' within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        return self.process.returncode


@pytest.fixture(scope="module")
def server(served_folder):
    server = HayhooksServer(served_folder)
    try:
        server.wait_until_serving("query")
        yield server
    finally:
        server.stop()


def test_served_yaml_is_the_query_pipeline_with_its_http_inputs_and_outputs(builders, tmp_path, monkeypatch):
    from hayhooks.server.utils.yaml_utils import get_inputs_outputs_from_yaml

    monkeypatch.chdir(tmp_path)  # loading the pipeline opens its store directory
    served = yaml.safe_load(SERVED_YAML.read_text())
    assert served == {**builders.build_query_pipeline().to_dict(), **builders.HAYHOOKS_IO}, (
        "regenerate with python examples/build_pipelines.py --write-yaml"
    )
    io = get_inputs_outputs_from_yaml(SERVED_YAML.read_text())
    assert io["inputs"]["query"].type is str
    assert io["inputs"]["query"].targets == ["retriever.query", "prompt_builder.question"]
    assert {name: output.path for name, output in io["outputs"].items()} == builders.HAYHOOKS_IO["outputs"]


def test_a_question_over_http_gets_the_documents_and_scores_of_pipeline_run(server, served_folder, monkeypatch):
    monkeypatch.chdir(served_folder)
    pipeline = Pipeline.loads(SERVED_YAML.read_text())
    expected = pipeline.run(
        {"retriever": {"query": QUESTION}, "prompt_builder": {"question": QUESTION}}, include_outputs_from={"retriever"}
    )
    pipeline.close()

    response = httpx.post(f"{server.url}/query/run", json={"query": QUESTION}, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    served = result["retriever"]["documents"]
    assert [d["id"] for d in served] == [d.id for d in expected["retriever"]["documents"]]
    assert served[0]["id"] == "seasons" and len(served) == 3
    assert [d["score"] for d in served] == pytest.approx(
        [d.score for d in expected["retriever"]["documents"]], abs=1e-6
    )
    assert [d["meta"] for d in served] == [d.meta for d in expected["retriever"]["documents"]]
    assert result["prompt_builder"]["prompt"] == expected["prompt_builder"]["prompt"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "Field required"),
        ({"question": QUESTION}, "Field required"),
        ({"query": 12}, "Input should be a valid string"),
        ({"query": [QUESTION]}, "Input should be a valid string"),
    ],
)
def test_a_missing_or_wrongly_typed_input_gets_a_422_naming_it(server, body, problem):
    response = httpx.post(f"{server.url}/query/run", json=body, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"] == ["body", "query"] and error["msg"] == problem for error in detail), detail


def test_a_body_that_is_not_json_and_an_unknown_pipeline_get_4xx(server):
    response = httpx.post(
        f"{server.url}/query/run", content=b"query=seasons", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert httpx.post(f"{server.url}/nonexistent/run", json={"query": QUESTION}, timeout=30).status_code == 404


def test_the_server_stops_by_itself_within_a_bounded_time(server):
    started = time.monotonic()
    code = server.stop()
    assert time.monotonic() - started < STOP_TIMEOUT, server.log_tail()
    # Uvicorn shuts down gracefully on SIGTERM, then exits by that signal again (or with 0 on older versions).
    assert code in (0, -signal.SIGTERM), f"hayhooks exited with {code}:\n{server.log_tail()}"
    assert "Application shutdown complete" in server.log_tail()
