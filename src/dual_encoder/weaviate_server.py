"""Building and running a local single-node Weaviate server, with no Docker.

The server is built once per machine from Weaviate's Go module (pinned below) with the local Go toolchain
and cached; then one node runs on 127.0.0.1 with REST and gRPC ports, telemetry off, its data in a folder
you choose. ``dual-encoder weaviate start|stop|status`` and the test suite both use this module.

Example::

    server = WeaviateServer(data_dir="weaviate-data")      # free ports are picked for you
    server.start()                                          # builds the binary the first time
    print(server.url, server.grpc_port)
    server.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dual_encoder.errors import DualEncoderError

WEAVIATE_VERSION = "1.39.0"
WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
_STATE_FILE = "dual-encoder-server.json"
_LOG_FILE = "weaviate.log"


class WeaviateServerError(DualEncoderError, RuntimeError):
    """Weaviate could not be built, started, reached or stopped."""


def cache_dir() -> Path:
    base = os.environ.get("DUAL_ENCODER_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "dual-encoder")
    return Path(base) / "weaviate" / f"v{WEAVIATE_VERSION}"


def binary_path() -> Path:
    return cache_dir() / "weaviate-server"


def ensure_binary(*, quiet: bool = False) -> Path:
    """The cached ``weaviate-server`` binary, built from source the first time (a few minutes)."""
    target = binary_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise WeaviateServerError(
            "Building Weaviate needs the Go toolchain (1.26 or newer), and `go` is not on PATH. Install Go "
            "(for example `apt-get install golang` or from go.dev), or put a prebuilt weaviate-server "
            f"v{WEAVIATE_VERSION} at {target}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as build_bin:
        environment = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOBIN": build_bin, "GOFLAGS": "-buildvcs=false"}
        command = [go, "install", f"{WEAVIATE_MODULE}@v{WEAVIATE_VERSION}"]
        if not quiet:
            print(f"Building weaviate-server v{WEAVIATE_VERSION} with {go} (first time only, a few minutes)...", file=sys.stderr)
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode != 0 and "verifying" in result.stderr and "sum.golang.org" in result.stderr:
            # Only the module proxy may be reachable; Weaviate's own go.sum still pins every dependency.
            result = subprocess.run(command, env={**environment, "GOSUMDB": "off"}, capture_output=True, text=True)
        built = Path(build_bin) / "weaviate-server"
        if result.returncode != 0 or not built.is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise WeaviateServerError(f"Building weaviate-server v{WEAVIATE_VERSION} failed (`{' '.join(command)}`):\n{tail}")
        os.replace(built, target)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class ServerPorts:
    http: int
    grpc: int
    gossip: int
    data: int
    raft: int
    raft_rpc: int

    @classmethod
    def pick(cls, http: int | None = None, grpc: int | None = None) -> ServerPorts:
        chosen: set[int] = set()

        def take(preferred: int | None) -> int:
            port = preferred or free_port()
            while port in chosen:
                port = free_port()
            chosen.add(port)
            return port

        def take_pair() -> int:
            # Weaviate derives a node's data port as gossip + 1 and its raft RPC port as raft + 1.
            while True:
                port = take(None)
                if port < 65535 and port + 1 not in chosen and not _port_in_use(port + 1):
                    chosen.add(port + 1)
                    return port

        gossip, raft = take_pair(), take_pair()
        return cls(http=take(http), grpc=take(grpc), gossip=gossip, data=gossip + 1, raft=raft, raft_rpc=raft + 1)


@dataclass
class WeaviateServer:
    """One Weaviate node on 127.0.0.1.

    :param data_dir: Where the node keeps its data, log and state file.
    :param http_port: REST port (``None``: a free one).
    :param grpc_port: gRPC port (``None``: a free one).
    :param api_keys: When given, anonymous access is off and these keys are required.
    """

    data_dir: Path
    http_port: int | None = None
    grpc_port: int | None = None
    api_keys: list[str] = field(default_factory=list)
    pid: int | None = None
    ports: ServerPorts | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._ports().http}"

    def _ports(self) -> ServerPorts:
        if self.ports is None:
            raise WeaviateServerError("The server has not been started.")
        return self.ports

    def environment(self) -> dict[str, str]:
        ports = self._ports()
        environment = {
            "PERSISTENCE_DATA_PATH": str(self.data_dir / "data"),
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            # Telemetry would try to reach outside hosts.
            "DISABLE_TELEMETRY": "true",
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(ports.gossip),
            "CLUSTER_DATA_BIND_PORT": str(ports.data),
            "RAFT_PORT": str(ports.raft),
            "RAFT_INTERNAL_RPC_PORT": str(ports.raft_rpc),
            "RAFT_JOIN": f"node1:{ports.raft_rpc}",
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "GRPC_PORT": str(ports.grpc),
            "GO_PROFILING_DISABLE": "true",
            "DISK_USE_READONLY_PERCENTAGE": "0",
            "LOG_LEVEL": "warning",
        }
        if self.api_keys:
            environment.update(
                AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED="false",
                AUTHENTICATION_APIKEY_ENABLED="true",
                AUTHENTICATION_APIKEY_ALLOWED_KEYS=",".join(self.api_keys),
                AUTHENTICATION_APIKEY_USERS=",".join(f"user{i}" for i, _ in enumerate(self.api_keys)),
                AUTHORIZATION_ADMINLIST_ENABLED="false",
            )
        else:
            environment["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] = "true"
        return environment

    def start(self, *, timeout: float = 120.0, quiet: bool = True) -> WeaviateServer:
        """Start the node and wait until it reports ready; builds the binary first if needed."""
        binary = ensure_binary(quiet=quiet)
        if self.ports is None:
            for name, port in (("REST", self.http_port), ("gRPC", self.grpc_port)):
                if port is not None and _port_in_use(port):
                    raise WeaviateServerError(
                        f"Port {port} ({name}) on 127.0.0.1 is already in use. Stop whatever holds it, or choose "
                        f"another port (--port / --grpc-port)."
                    )
            self.ports = ServerPorts.pick(self.http_port, self.grpc_port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / _LOG_FILE, "ab")
        process = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(self.ports.http), "--scheme", "http"],
            env={**os.environ, **self.environment()},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid = process.pid
        self._process = process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise WeaviateServerError(
                    f"weaviate-server exited with code {process.returncode} while starting. Last log lines "
                    f"({self.data_dir / _LOG_FILE}):\n{self.log_tail()}"
                )
            if self.is_ready():
                self._write_state()
                return self
            time.sleep(0.2)
        self.stop()
        raise WeaviateServerError(f"weaviate-server did not become ready within {timeout:.0f} s. Log:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        """REST reports ready *and* the gRPC port accepts connections: after a restart the REST endpoint can
        be ready a moment before gRPC listens, and the Python client needs both."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/.well-known/ready", timeout=2) as response:
                if response.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.ports.grpc), timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the node (SIGTERM, then SIGKILL after ``timeout``); safe to call when it is not running."""
        if self.pid is None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive():
            time.sleep(0.1)
        if self._alive():
            self._signal(signal.SIGKILL)
            time.sleep(0.2)
        self._reap()
        self.pid = None
        (self.data_dir / _STATE_FILE).unlink(missing_ok=True)

    def kill(self) -> None:
        """Kill the node at once, as a crash would (SIGKILL, no shutdown)."""
        if self.pid is not None:
            self._signal(signal.SIGKILL)
            self._reap()
            self.pid = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / _LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, number: int) -> None:
        try:
            os.killpg(self.pid, number)  # the server runs in its own session
        except ProcessLookupError:
            pass

    def _alive(self) -> bool:
        process = getattr(self, "_process", None)
        if process is not None:
            return process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _reap(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _write_state(self) -> None:
        state = {"pid": self.pid, "ports": asdict(self._ports()), "api_keys_enabled": bool(self.api_keys)}
        (self.data_dir / _STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str]) -> WeaviateServer | None:
        """The server that ``dual-encoder weaviate start`` left running for ``data_dir``, if any."""
        state_file = Path(data_dir).resolve() / _STATE_FILE
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        server = cls(data_dir=Path(data_dir), pid=state["pid"], ports=ServerPorts(**state["ports"]))
        if not server._alive():
            state_file.unlink(missing_ok=True)
            return None
        return server
