"""Building and running local Weaviate servers (one node, or a replicated cluster), with no Docker.

The server is built once per machine from Weaviate's Go module (pinned below) with the local Go toolchain
and cached; then nodes run on 127.0.0.1 with REST and gRPC ports, telemetry off, their data in a folder
you choose. ``dual-encoder weaviate start|stop|status`` and the test suite both use this module.
:class:`WeaviateServer` is one node; :class:`WeaviateCluster` starts several nodes together (gossip and Raft
on loopback, one data directory per node) and can kill and restart single nodes for fault tests.

Example::

    server = WeaviateServer(data_dir="weaviate-data")      # free ports are picked for you
    server.start()                                          # builds the binary the first time
    print(server.url, server.grpc_port)
    server.stop()

    cluster = WeaviateCluster(data_dir="weaviate-cluster", nodes=3).start()
    print(cluster.urls)                                     # node1 first
    cluster.stop()
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
from typing import Any

from dual_encoder.errors import DualEncoderError

WEAVIATE_VERSION = "1.39.0"
WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
_STATE_FILE = "dual-encoder-server.json"
_LOG_FILE = "weaviate.log"


class WeaviateServerError(DualEncoderError, RuntimeError):
    """Weaviate could not be built, started, reached or stopped."""


def cache_dir() -> Path:
    base = os.environ.get("DUAL_ENCODER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "dual-encoder"
    )
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
        environment = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
            "GOBIN": build_bin,
            "GOFLAGS": "-buildvcs=false",
        }
        command = [go, "install", f"{WEAVIATE_MODULE}@v{WEAVIATE_VERSION}"]
        if not quiet:
            print(
                f"Building weaviate-server v{WEAVIATE_VERSION} with {go} (first time only, a few minutes)...",
                file=sys.stderr,
            )
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode != 0 and "verifying" in result.stderr and "sum.golang.org" in result.stderr:
            # Only the module proxy may be reachable; Weaviate's own go.sum still pins every dependency.
            result = subprocess.run(command, env={**environment, "GOSUMDB": "off"}, capture_output=True, text=True)
        built = Path(build_bin) / "weaviate-server"
        if result.returncode != 0 or not built.is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise WeaviateServerError(
                f"Building weaviate-server v{WEAVIATE_VERSION} failed (`{' '.join(command)}`):\n{tail}"
            )
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
    def pick(cls, http: int | None = None, grpc: int | None = None, *, taken: set[int] | None = None) -> ServerPorts:
        """Free loopback ports (``http``/``grpc`` when given); ``taken`` holds ports other nodes already use and
        receives the ones chosen here."""
        chosen: set[int] = taken if taken is not None else set()

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
    node_name: str = "node1"
    #: Environment set on top of the single-node one (a cluster's gossip and Raft peers).
    extra_environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.started_ports().http}"

    def started_ports(self) -> ServerPorts:
        """The ports this node listens on; they are chosen when it starts."""
        if self.ports is None:
            raise WeaviateServerError("The server has not been started.")
        return self.ports

    def environment(self) -> dict[str, str]:
        ports = self.started_ports()
        environment = {
            "PERSISTENCE_DATA_PATH": str(self.data_dir / "data"),
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            # Telemetry would try to reach outside hosts.
            "DISABLE_TELEMETRY": "true",
            "CLUSTER_HOSTNAME": self.node_name,
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(ports.gossip),
            "CLUSTER_DATA_BIND_PORT": str(ports.data),
            "RAFT_PORT": str(ports.raft),
            "RAFT_INTERNAL_RPC_PORT": str(ports.raft_rpc),
            "RAFT_JOIN": f"{self.node_name}:{ports.raft_rpc}",
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
        environment.update(self.extra_environment)
        return environment

    def start(self, *, timeout: float = 120.0, quiet: bool = True) -> WeaviateServer:
        """Start the node and wait until it reports ready; builds the binary first if needed."""
        self.launch(quiet=quiet)
        return self.wait_ready(timeout=timeout)

    def launch(self, *, quiet: bool = True) -> WeaviateServer:
        """Start the node's process without waiting (a cluster's nodes must all start before any is ready)."""
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
        # A clean environment: go-swagger also reads HOST/PORT, and a user's WEAVIATE_* or CLUSTER_* must not leak.
        inherited = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "LANG") if key in os.environ}
        process = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(self.ports.http), "--scheme", "http"],
            env={**inherited, **self.environment()},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid = process.pid
        self._process = process
        return self

    def wait_ready(self, *, timeout: float = 120.0) -> WeaviateServer:
        """Wait until the launched node reports ready; stops it and raises with its log tail otherwise."""
        process = self._process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise WeaviateServerError(
                    f"weaviate-server {self.node_name} exited with code {process.returncode} while starting. Last "
                    f"log lines ({self.data_dir / _LOG_FILE}):\n{self.log_tail()}"
                )
            if self.is_ready():
                self._write_state()
                return self
            time.sleep(0.2)
        self.stop()
        raise WeaviateServerError(
            f"weaviate-server {self.node_name} did not become ready within {timeout:.0f} s. Log:\n{self.log_tail()}"
        )

    def is_ready(self) -> bool:
        """REST reports ready *and* the gRPC port accepts connections: after a restart the REST endpoint can
        be ready a moment before gRPC listens, and the Python client needs both."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/.well-known/ready", timeout=2) as response:
                if response.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.started_ports().grpc), timeout=2):
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
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, number)  # the server runs in its own session
        except ProcessLookupError:
            pass

    def _alive(self) -> bool:
        process = getattr(self, "_process", None)
        if process is not None:
            return process.poll() is None
        if self.pid is None:
            return False
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
        state = {
            "pid": self.pid,
            "ports": asdict(self.started_ports()),
            "api_keys_enabled": bool(self.api_keys),
            "node_name": self.node_name,
        }
        (self.data_dir / _STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str]) -> WeaviateServer | None:
        """The server that ``dual-encoder weaviate start`` left running for ``data_dir``, if any."""
        state_file = Path(data_dir).resolve() / _STATE_FILE
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        server = cls(
            data_dir=Path(data_dir),
            pid=state["pid"],
            ports=ServerPorts(**state["ports"]),
            node_name=state.get("node_name", "node1"),
        )
        if not server._alive():
            state_file.unlink(missing_ok=True)
            return None
        return server


_CLUSTER_STATE_FILE = "dual-encoder-cluster.json"


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class WeaviateCluster:
    """Several Weaviate nodes on 127.0.0.1 forming one cluster (memberlist gossip and Raft on loopback).

    Node names are stable (``node1``, ``node2``...), each node keeps its data in ``data_dir/<name>``, and all
    nodes start together (Raft bootstraps only once every voter is up). With ``http_port``/``grpc_port``
    given, node *i* (from 0) takes ``http_port + i`` and ``grpc_port + i``; otherwise every port is a free one.

    :param data_dir: The cluster's folder (one sub-folder per node, and the cluster's state file).
    :param nodes: Number of nodes (at least 2; use :class:`WeaviateServer` for one).
    :param http_port: REST port of the first node (``None``: free ports).
    :param grpc_port: gRPC port of the first node (``None``: free ports).
    :param gossip_port: Gossip port of the first node (node *i* takes ``gossip_port + 2i``, its data port the
        next one); ``None``: free ports. Fixed ports let a stopped cluster start again on its data.
    :param raft_port: Raft port of the first node (node *i* takes ``raft_port + 2i``, its Raft RPC port the next
        one); ``None``: free ports.
    :param fast_failure_detection: Declare a killed node dead within seconds rather than tens of seconds
        (memberlist's fast probe settings; right for loopback).
    :param environment: Extra server settings for every node (``ASYNC_REPLICATION_FREQUENCY=5s``, say).
    """

    data_dir: Path
    nodes: int = 3
    http_port: int | None = None
    grpc_port: int | None = None
    gossip_port: int | None = None
    raft_port: int | None = None
    fast_failure_detection: bool = True
    environment: dict[str, str] = field(default_factory=dict)
    servers: list[WeaviateServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.nodes < 2:
            raise WeaviateServerError(
                f"A cluster needs at least 2 nodes, got {self.nodes}; use WeaviateServer for one."
            )

    # ------------------------------------------------------------------------------------------ layout
    @property
    def names(self) -> list[str]:
        return [f"node{i + 1}" for i in range(self.nodes)]

    @property
    def urls(self) -> list[str]:
        """REST URLs of the nodes, the first node's first."""
        return [server.url for server in self.servers]

    @property
    def grpc_ports(self) -> list[int]:
        return [server.started_ports().grpc for server in self.servers]

    def node(self, name: str) -> WeaviateServer:
        for server in self.servers:
            if server.node_name == name:
                return server
        raise WeaviateServerError(f"No node named {name!r} in this cluster; its nodes are {self.names}.")

    def _plan(self) -> list[WeaviateServer]:
        if self.nodes > 9:
            # Raft finds its voters by substring match on the join list: node1 would also match node10.
            raise WeaviateServerError(f"At most 9 local nodes are supported, got {self.nodes}.")
        taken: set[int] = set()
        ports = []
        for index in range(self.nodes):
            http = self.http_port + index if self.http_port else None
            grpc = self.grpc_port + index if self.grpc_port else None
            for name, port in (("REST", http), ("gRPC", grpc)):
                if port is not None and _port_in_use(port):
                    raise WeaviateServerError(
                        f"Port {port} ({name} of node{index + 1}) on 127.0.0.1 is already in use. Stop whatever holds "
                        f"it, or choose other ports (--port / --grpc-port; node i takes port + i)."
                    )
            if self.gossip_port and self.raft_port:
                gossip, raft = self.gossip_port + 2 * index, self.raft_port + 2 * index
                fixed = ServerPorts(
                    http=http or free_port(),
                    grpc=grpc or free_port(),
                    gossip=gossip,
                    data=gossip + 1,
                    raft=raft,
                    raft_rpc=raft + 1,
                )
                for name, port in (("gossip", gossip), ("data", gossip + 1), ("raft", raft), ("raft RPC", raft + 1)):
                    if _port_in_use(port):
                        raise WeaviateServerError(
                            f"Port {port} ({name} of node{index + 1}) on 127.0.0.1 is already in use. Stop whatever "
                            f"holds it, or choose other ports (--gossip-port / --raft-port; node i takes port + 2i)."
                        )
                ports.append(fixed)
            else:
                ports.append(ServerPorts.pick(http, grpc, taken=taken))
        raft_join = ",".join(f"{name}:{p.raft}" for name, p in zip(self.names, ports))
        servers = []
        for name, own in zip(self.names, ports):
            environment = {
                "CLUSTER_JOIN": ",".join(f"127.0.0.1:{p.gossip}" for p in ports if p is not own),
                "RAFT_JOIN": raft_join,
                "RAFT_BOOTSTRAP_EXPECT": str(self.nodes),
                # A restarted node re-joins within this bound, or exits with the reason in its log.
                "RAFT_BOOTSTRAP_TIMEOUT": "300",
                **({"MEMBERLIST_FAST_FAILURE_DETECTION": "true"} if self.fast_failure_detection else {}),
                **self.environment,
            }
            servers.append(
                WeaviateServer(data_dir=self.data_dir / name, ports=own, node_name=name, extra_environment=environment)
            )
        return servers

    # --------------------------------------------------------------------------------------- lifecycle
    def start(self, *, timeout: float = 240.0, quiet: bool = True) -> WeaviateCluster:
        """Start every node at once and wait until each is ready and ``/v1/nodes`` shows all of them healthy."""
        if self.servers:
            raise WeaviateServerError("This cluster object has already been started; stop() it first.")
        ensure_binary(quiet=quiet)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.servers = self._plan()
        try:
            for server in self.servers:
                server.launch(quiet=True)
            deadline = time.monotonic() + timeout
            for server in self.servers:
                server.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_healthy(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def wait_healthy(self, *, expected: int | None = None, timeout: float = 120.0, via: int | None = None) -> None:
        """Wait until ``/v1/nodes`` (asked of a live node) lists ``expected`` (default: all) nodes as HEALTHY."""
        expected = self.nodes if expected is None else expected
        deadline = time.monotonic() + timeout
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            health = self.health(via=via)
            if sum(state == "HEALTHY" for state in health.values()) >= expected:
                return
            time.sleep(0.5)
        raise WeaviateServerError(
            f"The cluster in {self.data_dir} did not show {expected} healthy node(s) within {timeout:.0f} s: "
            f"/v1/nodes says {health or 'nothing (no node answered)'}."
        )

    def health(self, *, via: int | None = None) -> dict[str, str]:
        """Node name to status (``HEALTHY``, ``UNHEALTHY``, ``UNAVAILABLE``...) from ``/v1/nodes`` of the first
        node that answers (or of node ``via``, an index); nodes the cluster no longer sees are missing."""
        candidates = [self.servers[via]] if via is not None else self.servers
        for server in candidates:
            if server.pid is None:
                continue
            try:
                answer = _get_json(f"{server.url}/v1/nodes", timeout=5)
            except (urllib.error.URLError, OSError, ValueError):
                continue
            return {node["name"]: node.get("status", "UNKNOWN") for node in answer.get("nodes", [])}
        return {}

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop every node (safe to call twice, or after a failed start)."""
        for server in self.servers:
            server._signal(signal.SIGTERM) if server.pid is not None else None
        for server in self.servers:
            server.stop(timeout=timeout)
        (self.data_dir / _CLUSTER_STATE_FILE).unlink(missing_ok=True)

    def kill(self, name: str) -> WeaviateServer:
        """Kill one node at once (SIGKILL, as a crash would); its ports and data directory are kept."""
        server = self.node(name)
        server.kill()
        return server

    def restart(self, name: str, *, timeout: float = 240.0) -> WeaviateServer:
        """Start a stopped or killed node again with its own name, ports and data directory, and wait until it
        is ready (it re-joins Raft from its stored state)."""
        server = self.node(name)
        if server.pid is not None and server._alive():
            raise WeaviateServerError(f"Node {name} is still running; kill or stop it before restarting it.")
        server.launch(quiet=True)
        server.wait_ready(timeout=timeout)
        self._write_state()
        return server

    # ----------------------------------------------------------------------------- state for the CLI
    def _write_state(self) -> None:
        state = {
            "nodes": self.nodes,
            "servers": [
                {"name": s.node_name, "data_dir": s.data_dir.name, "pid": s.pid, "ports": asdict(s.started_ports())}
                for s in self.servers
            ],
        }
        (self.data_dir / _CLUSTER_STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str]) -> WeaviateCluster | None:
        """The cluster that ``dual-encoder weaviate start --nodes N`` left running in ``data_dir``, if any node of
        it still runs."""
        root = Path(data_dir).resolve()
        state_file = root / _CLUSTER_STATE_FILE
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        cluster = cls(data_dir=root, nodes=state["nodes"])
        cluster.servers = [
            WeaviateServer(
                data_dir=root / entry["data_dir"],
                pid=entry["pid"],
                ports=ServerPorts(**entry["ports"]),
                node_name=entry["name"],
            )
            for entry in state["servers"]
        ]
        for server in cluster.servers:
            if server.pid is not None and not server._alive():
                server.pid = None
        if all(server.pid is None for server in cluster.servers):
            state_file.unlink(missing_ok=True)
            return None
        return cluster
