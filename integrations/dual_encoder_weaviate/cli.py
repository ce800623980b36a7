"""``dual-encoder weaviate start|stop|status``: a local Weaviate node, or a local cluster, from the command line.

Registered under the ``dual_encoder.cli`` entry point, so the core ``dual-encoder`` command adds it without
importing anything Weaviate. It needs only :mod:`dual_encoder_weaviate.server` (not the Weaviate client).

Example::

    dual-encoder weaviate start --data weaviate-data     # builds weaviate-server the first time
    dual-encoder weaviate status --data weaviate-data
    dual-encoder weaviate stop --data weaviate-data
    dual-encoder weaviate start --nodes 3 --data weaviate-cluster   # node1 on 8080/50051, node2 8081/50052...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dual_encoder_weaviate.server import (
    WEAVIATE_VERSION,
    WeaviateCluster,
    WeaviateServer,
    WeaviateServerError,
    binary_path,
)

app = typer.Typer(no_args_is_help=True, help="Run a local Weaviate node or cluster (built from source, no Docker).")
console = Console()
DataOption = Annotated[
    Path, typer.Option("--data", "-d", help="Directory for the node's (or the cluster's) data, logs and state.")
]


@app.command("start")
def start(
    data: DataOption = Path("weaviate-data"),
    port: Annotated[int, typer.Option(help="REST port on 127.0.0.1 (of node1; node i takes port + i).")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC port on 127.0.0.1 (of node1; node i takes + i).")] = 50051,
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Number of nodes; 2 or more form a cluster.")] = 1,
    gossip_port: Annotated[int, typer.Option(help="Cluster: gossip port of node1 (node i: + 2i; data: + 1).")] = 7100,
    raft_port: Annotated[int, typer.Option(help="Cluster: Raft port of node1 (node i: + 2i; RPC: + 1).")] = 8300,
    api_key_env: Annotated[
        str | None, typer.Option(help="Require the API key held in this environment variable.")
    ] = None,
) -> None:
    """Start a node (or --nodes N of a cluster) on 127.0.0.1 and wait until it is ready (builds weaviate-server the
    first time)."""
    cluster = WeaviateCluster.attach(data)
    if cluster is not None:
        raise WeaviateServerError(f"A cluster already runs for {data} (first node {cluster.urls[0]}); stop it first.")
    running = WeaviateServer.attach(data)
    if running is not None:
        raise WeaviateServerError(
            f"A node already runs for {data} at {running.url} (pid {running.pid}); stop it first."
        )
    api_keys = []
    if api_key_env:
        if not os.environ.get(api_key_env):
            raise WeaviateServerError(f"--api-key-env names {api_key_env}, but that environment variable is empty.")
        api_keys = [os.environ[api_key_env]]
    if nodes > 1:
        if api_keys:
            raise WeaviateServerError("--api-key-env is supported for a single node only; start the cluster without.")
        cluster = WeaviateCluster(
            data_dir=data,
            nodes=nodes,
            http_port=port,
            grpc_port=grpc_port,
            gossip_port=gossip_port,
            raft_port=raft_port,
        ).start(quiet=False)
        console.print(f"Weaviate {WEAVIATE_VERSION} cluster of {nodes} nodes is ready, data in {cluster.data_dir}:")
        _print_cluster(cluster)
        console.print(
            f"Connect to any node (the first: WEAVIATE_URL={cluster.urls[0]} WEAVIATE_GRPC_PORT="
            f"{cluster.grpc_ports[0]}). Stop it with: dual-encoder weaviate stop --data {data}"
        )
        return
    server = WeaviateServer(data_dir=data, http_port=port, grpc_port=grpc_port, api_keys=api_keys).start(quiet=False)
    console.print(
        f"Weaviate {WEAVIATE_VERSION} is ready at [bold]{server.url}[/bold] (gRPC port {server.started_ports().grpc}), "
        f"data in {server.data_dir}, pid {server.pid}. Stop it with: dual-encoder weaviate stop --data {data}"
    )


@app.command("stop")
def stop(data: DataOption = Path("weaviate-data")) -> None:
    """Stop the node (or every node of the cluster) started for this data directory."""
    cluster = WeaviateCluster.attach(data)
    if cluster is not None:
        cluster.stop()
        console.print(f"Stopped the {cluster.nodes} nodes of the cluster in {data}.")
        return
    server = WeaviateServer.attach(data)
    if server is None:
        console.print(f"No node is running for {data}.")
        return
    server.stop()
    console.print(f"Stopped the node for {data} that ran at {server.url}.")


@app.command("status")
def status(data: DataOption = Path("weaviate-data")) -> None:
    """Show whether a node (or a cluster) runs for this data directory, where, and each node's health."""
    cluster = WeaviateCluster.attach(data)
    if cluster is not None:
        console.print(f"Cluster of {cluster.nodes} nodes in {data}:")
        _print_cluster(cluster)
        return
    server = WeaviateServer.attach(data)
    built = "built" if binary_path().is_file() else "not built yet"
    if server is None:
        console.print(f"No node is running for {data}. Binary: {binary_path()} ({built}).")
        raise typer.Exit(code=1)
    state = "ready" if server.is_ready() else "running but not ready"
    console.print(f"Node for {data}: {state} at {server.url} (gRPC {server.started_ports().grpc}), pid {server.pid}.")


def _print_cluster(cluster: WeaviateCluster) -> None:
    health = cluster.health()
    for server in cluster.servers:
        ports = server.started_ports()
        running = f"pid {server.pid}" if server.pid is not None else "not running"
        console.print(
            f"  {server.node_name}: {server.url} gRPC {ports.grpc}, gossip {ports.gossip}, data {ports.data}, raft "
            f"{ports.raft}, raft RPC {ports.raft_rpc}; {health.get(server.node_name, 'not in /v1/nodes')}; {running}"
        )
