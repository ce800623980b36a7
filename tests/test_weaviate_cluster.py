"""A real 3-node Weaviate cluster on loopback: replication, consistency levels, fail-over, tenants, compression.

The cluster (``weaviate_cluster`` in conftest.py) is started once for this file on free ports and always stopped.
Faults are real: nodes are killed with SIGKILL and restarted on their own data directories. Every wait is bounded.
Tests that kill nodes restart them before they end, so the next test finds three healthy nodes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from dual_encoder_weaviate.collection import CollectionSettings
from dual_encoder_weaviate.errors import ReplicaUnavailableError, TenantNotFoundError, WeaviateUnavailableError
from dual_encoder_weaviate.store import WeaviateStore

from dual_encoder.errors import ConfigurationError
from dual_encoder.stores import StoredRecord

DIMENSION = 16
#: Async replication tuned to the server's minimum periods, so a restarted node catches up within seconds.
FAST_REPAIR = {"frequency_ms": 5000, "frequency_while_propagating_ms": 1000, "propagation_delay_ms": 1000}
REPLICATED = CollectionSettings(replication_factor=3, async_replication=FAST_REPAIR)


def records(start: int, stop: int, *, seed: int = 0, prefix: str = "d") -> list[StoredRecord]:
    rng = np.random.default_rng(seed + start)
    return [
        StoredRecord(
            id=f"{prefix}{i}",
            content=f"document {i}",
            meta={"n": i},
            embedding=rng.standard_normal(DIMENSION).astype(np.float32),
        )
        for i in range(start, stop)
    ]


def cluster_store(cluster, collection: str, level: str | None, nodes=(0, 1, 2), **options) -> WeaviateStore:
    """A store that knows the given nodes (by index), in that order."""
    options.setdefault("settings", REPLICATED)
    return WeaviateStore(
        url=",".join(cluster.urls[i] for i in nodes),
        grpc_port=[cluster.grpc_ports[i] for i in nodes],
        collection=collection,
        consistency_level=level,
        timeout=5.0,
        **options,
    )


def node_copy(cluster, index: int, collection: str) -> set[str]:
    """The ids held by node ``index``'s own replica: read through that node alone at consistency ONE (the node
    answers from its local replica), and checked object by object with REST's ``node_name`` for a sample."""
    store = cluster_store(cluster, collection, "ONE", nodes=(index,))
    try:
        return {record.id for record in store.list()}
    finally:
        store.close()


def object_on_node(cluster, collection: str, doc_id: str, node: str) -> bool:
    from weaviate.util import generate_uuid5

    url = f"{cluster.urls[0]}/v1/objects/{collection}/{generate_uuid5(doc_id)}?node_name={node}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read()).get("properties", {}).get("_original_id") == doc_id
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


@contextlib.contextmanager
def nodes_down(cluster, *names: str):
    """Kill ``names`` (SIGKILL) for the block; afterwards restart every killed node on its data and wait until all
    are healthy."""
    try:
        for name in names:
            cluster.kill(name)
        yield
    finally:
        for server in cluster.servers:  # every node killed in the block, named or not
            if server.pid is None:
                cluster.restart(server.node_name, timeout=240)
        cluster.wait_healthy(timeout=180)


def wait_until_gone(cluster, name: str, timeout: float = 60.0) -> None:
    """Wait until the cluster has declared ``name`` dead (it leaves ``/v1/nodes``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = cluster.health()
        if health and name not in health:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} still listed after {timeout} s: {cluster.health()}")


def query(store: WeaviateStore, seed: int, top_k: int = 10):
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return store.vector_search(vector, top_k=top_k)


# ------------------------------------------------------------------------------------------- the cluster
def test_cluster_runs_three_distinct_healthy_nodes(weaviate_cluster):
    assert weaviate_cluster.health() == {"node1": "HEALTHY", "node2": "HEALTHY", "node3": "HEALTHY"}
    ports = [port for server in weaviate_cluster.servers for port in vars(server.ports).values()]
    assert len(ports) == len(set(ports)) == 18
    for server in weaviate_cluster.servers:
        assert server.ports.data == server.ports.gossip + 1 and server.ports.raft_rpc == server.ports.raft + 1
        assert server.data_dir.name == server.node_name and (server.data_dir / "data").is_dir()


def test_replicated_collection_is_created_with_its_settings(weaviate_cluster, collection_name):
    store = cluster_store(weaviate_cluster, collection_name, "QUORUM")
    store.upsert(records(0, 20))
    config = store.collection.config.get()
    assert config.replication_config.factor == 3
    assert config.replication_config.async_config.frequency == 5000
    assert config.replication_config.async_config.propagation_delay == 1000
    for index in range(3):
        assert node_copy(weaviate_cluster, index, collection_name) == {f"d{i}" for i in range(20)}
    store.close()


def free_port_block(size: int, attempts: int = 50) -> int:
    """A base port whose next ``size`` ports are all free on 127.0.0.1."""
    import random

    from dual_encoder_weaviate.server import _port_in_use

    for _ in range(attempts):
        base = random.randrange(20_000, 40_000, 2)
        if not any(_port_in_use(port) for port in range(base, base + size)):
            return base
    raise AssertionError("no block of free ports found")


def test_cli_starts_lists_and_stops_a_cluster_with_one_command(tmp_path):
    from dual_encoder_weaviate.server import WeaviateCluster
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    base = free_port_block(20)  # REST, gRPC, gossip+data, raft+RPC of three nodes
    data = tmp_path / "cluster"
    command = [
        "weaviate",
        "start",
        "--nodes",
        "3",
        "--data",
        str(data),
        "--port",
        str(base),
        "--grpc-port",
        str(base + 3),
        "--gossip-port",
        str(base + 6),
        "--raft-port",
        str(base + 12),
    ]
    try:
        started = CliRunner().invoke(app, command)
        assert started.exit_code == 0, started.output
        cluster = WeaviateCluster.attach(data)
        assert cluster is not None and cluster.urls == [f"http://127.0.0.1:{base + i}" for i in range(3)]
        assert cluster.health() == {"node1": "HEALTHY", "node2": "HEALTHY", "node3": "HEALTHY"}
        assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["node1", "node2", "node3"]
        status = CliRunner().invoke(app, ["weaviate", "status", "--data", str(data)])
        assert status.exit_code == 0 and status.output.count("HEALTHY") == 3, status.output
        assert f"127.0.0.1:{base + 2}" in status.output and str(base + 16) in status.output
        again = CliRunner().invoke(app, command)
        assert again.exit_code != 0 and "already runs" in str(again.exception)
    finally:
        stopped = CliRunner().invoke(app, ["weaviate", "stop", "--data", str(data)])
    assert stopped.exit_code == 0 and "Stopped the 3 nodes" in stopped.output
    assert WeaviateCluster.attach(data) is None


# ------------------------------------------------------------------------------------------------ tenants
def test_tenants_are_isolated_created_on_first_write_and_deleted_alone(weaviate_cluster, collection_name):
    settings = CollectionSettings(replication_factor=3, multi_tenancy=True)
    alice = cluster_store(weaviate_cluster, collection_name, "QUORUM", settings=settings, tenant="alice")
    bob = alice.with_tenant("bob")
    alice.upsert(records(0, 30, prefix="a"))
    bob.upsert(records(0, 40, seed=7, prefix="b"))
    assert alice.count() == 30 and bob.count() == 40
    assert sorted(alice.tenants()) == ["alice", "bob"]
    for seed in range(10):
        assert all(hit.record.id.startswith("a") for hit in query(alice, seed, top_k=50).hits)
        assert all(hit.record.id.startswith("b") for hit in query(bob, seed, top_k=50).hits)
    assert set(alice.stored_versions(["b1", "a1"])) == {"a1"}  # another tenant's id is not found here

    with pytest.raises(TenantNotFoundError, match="carol"):
        query(alice.with_tenant("carol"), 0)
    with pytest.raises(TenantNotFoundError, match="multi-tenant"):
        cluster_store(weaviate_cluster, collection_name, "QUORUM", settings=settings).count()

    alice.delete_tenant("alice")
    assert bob.count() == 40 and {r.id for r in bob.list()} == {f"b{i}" for i in range(40)}
    assert alice.tenants() == ["bob"]
    with pytest.raises(TenantNotFoundError):
        alice.count()
    alice.close(), bob.close()


def test_tenants_are_refused_when_not_created_on_first_use(weaviate_cluster, collection_name):
    settings = CollectionSettings(multi_tenancy=True, auto_create_tenants=False)
    store = cluster_store(weaviate_cluster, collection_name, "QUORUM", settings=settings, tenant="nobody")
    with pytest.raises(TenantNotFoundError, match="nobody"):
        store.upsert(records(0, 3))
    store.close()


def test_settings_are_validated_with_clear_errors():
    with pytest.raises(ConfigurationError, match="consistency_level"):
        WeaviateStore(url="http://127.0.0.1:1", consistency_level="MOST")
    with pytest.raises(ConfigurationError, match="replication_factor"):
        CollectionSettings(replication_factor=0)
    with pytest.raises(ConfigurationError, match="async_replication needs"):
        CollectionSettings(async_replication=FAST_REPAIR)
    with pytest.raises(ConfigurationError, match="every tenant is its own shard"):
        CollectionSettings(multi_tenancy=True, shards=2)
    with pytest.raises(ConfigurationError, match="flat index compresses"):
        CollectionSettings(vector_index="flat", compression="pq")
    with pytest.raises(ConfigurationError, match="Unknown hnsw index setting"):
        CollectionSettings(vector_index_options={"nlist": 4})
    with pytest.raises(ConfigurationError, match="one gRPC port per URL"):
        WeaviateStore(url="http://127.0.0.1:1,http://127.0.0.1:2", grpc_port="1,2,3").endpoints()


# -------------------------------------------------------------------------------------------- node faults
def test_one_node_down_quorum_and_one_read_and_write(weaviate_cluster, collection_name):
    quorum = cluster_store(weaviate_cluster, collection_name, "QUORUM", nodes=(0, 1))
    one = cluster_store(weaviate_cluster, collection_name, "ONE", nodes=(0, 1))
    quorum.upsert(records(0, 100))
    one.count()  # both connected before the fault
    with nodes_down(weaviate_cluster, "node3"):
        for round_ in range(5):  # right after the kill, while node3 is only suspected, and after
            started = time.monotonic()
            assert len(query(quorum, round_).hits) == 10
            assert len(query(one, round_).hits) == 10
            quorum.upsert(records(100 + 20 * round_, 110 + 20 * round_))
            one.upsert(records(110 + 20 * round_, 120 + 20 * round_))
            assert time.monotonic() - started < 20
            time.sleep(1)
        assert quorum.count() == 200
    quorum.close(), one.close()


def test_two_nodes_down_a_quorum_query_fails_fast_and_names_the_node_and_level(weaviate_cluster, collection_name):
    quorum = cluster_store(weaviate_cluster, collection_name, "QUORUM", nodes=(0,))
    quorum.upsert(records(0, 50))
    assert len(query(quorum, 0).hits) == 10
    with nodes_down(weaviate_cluster, "node2", "node3"):
        outcomes = []
        for round_ in range(4):
            started = time.monotonic()
            try:
                hits = query(quorum, round_).hits
                outcomes.append(("ok", len(hits)))
            except (ReplicaUnavailableError, WeaviateUnavailableError) as error:
                outcomes.append(("error", str(error)))
            assert time.monotonic() - started < 20, "a query with two nodes down must fail (or answer) fast"
            time.sleep(1)
        failures = [message for kind, message in outcomes if kind == "error"]
        assert failures, f"a QUORUM query with 2 of 3 nodes down must fail, got {outcomes}"
        assert all("QUORUM" in message and weaviate_cluster.urls[0] in message for message in failures)
        # node1 holds a full copy (RF=3): an answer, if any, is complete, never a partial page passed off as all.
        assert all(count == 10 for kind, count in outcomes if kind == "ok"), outcomes
    quorum.close()


def test_kill_a_node_during_load_loses_no_write_and_the_node_catches_up(weaviate_cluster, collection_name):
    """RF=3 at QUORUM; node1 (the node the store talks to) is killed mid-load: the store fails over to node2,
    every query answers, every write lands; node1 restarted on its data then holds every object itself."""
    store = cluster_store(weaviate_cluster, collection_name, "QUORUM")
    store.upsert(records(0, 200))
    batches, batch_size, kill_at = 24, 50, 6
    failures: list[BaseException] = []
    answered = []
    done = threading.Event()

    def query_load() -> None:
        deadline = time.monotonic() + 300
        seed = 0
        while not done.is_set() and time.monotonic() < deadline:
            seed += 1
            try:
                hits = query(store, seed).hits
                answered.append(len(hits))
            except BaseException as error:
                failures.append(error)

    reader = threading.Thread(target=query_load, daemon=True)
    reader.start()
    written = {f"d{i}" for i in range(200)}
    try:
        with nodes_down(weaviate_cluster):  # restores the cluster whatever happens
            for batch in range(batches):
                if batch == kill_at:
                    weaviate_cluster.kill("node1")
                start = 200 + batch * batch_size
                summary = store.upsert(records(start, start + batch_size))
                assert summary.stored == batch_size
                written.update(f"d{i}" for i in range(start, start + batch_size))
            done.set()
            reader.join(timeout=120)
            assert not failures, f"{len(failures)} queries failed, first: {failures[:1]}"
            assert len(answered) > 10 and all(n == 10 for n in answered)

            wait_until_gone(weaviate_cluster, "node1")
            survivors_at_all = cluster_store(weaviate_cluster, collection_name, "ALL", nodes=(1, 2))
            assert {record.id for record in survivors_at_all.list()} == written
            assert survivors_at_all.count() == len(written)
            survivors_at_all.close()

            weaviate_cluster.restart("node1", timeout=240)
            weaviate_cluster.wait_healthy(timeout=180)
            deadline = time.monotonic() + 180
            held = set()
            while time.monotonic() < deadline:
                held = node_copy(weaviate_cluster, 0, collection_name)
                if held == written:
                    break
                time.sleep(2)
            assert held == written, f"node1 holds {len(held)} of {len(written)} objects after 180 s"
            late = [f"d{i}" for i in range(200 + kill_at * batch_size, 200 + batches * batch_size, 97)]
            assert all(object_on_node(weaviate_cluster, collection_name, doc_id, "node1") for doc_id in late)
            for index in (1, 2):
                assert node_copy(weaviate_cluster, index, collection_name) == written
    finally:
        done.set()
        reader.join(timeout=120)
        store.close()
    at_all = cluster_store(weaviate_cluster, collection_name, "ALL")
    assert at_all.count() == len(written)
    at_all.close()


# -------------------------------------------------------------------------------------------- compression
#: Rotational quantization at 1 bit per dimension (32x smaller vectors in the index), rescoring 1,000 candidates
#: with the full vectors. Weaviate v1.39's 8-bit RQ does not rescore and ranks SciFact poorly (see
#: benchmarks/README.md); 8-bit SQ and PQ train only past their training limit and stay uncompressed at this size.
RQ = {
    "compression": "rq",
    "compression_options": {"bits": 1, "rescore_limit": 1000},
    "vector_index_options": {"ef": 256},
}


@pytest.mark.scifact
def test_rq_compression_keeps_scifact_rankings(weaviate_server, scifact_embedded, collection_name):
    """RQ against the uncompressed HNSW index on the 5,183 SciFact documents and 300 test queries: the index
    really is compressed, top-10 overlap >= 0.98, nDCG@10 within 0.005."""
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderTextEmbedder
    from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore

    from dual_encoder.evaluation import evaluate_run

    data, documents = scifact_embedded
    embedder = DualEncoderTextEmbedder(encoder="all-MiniLM-L6-v2")
    embedder.warm_up()
    queries = {query_id: embedder.run(text=text)["embedding"] for query_id, text in data.queries.items()}
    runs = {}
    for name, options in (("plain", {}), ("rq", RQ)):
        store = DualEncoderWeaviateDocumentStore(
            url=weaviate_server.url,
            grpc_port=weaviate_server.ports.grpc,
            collection_name=f"{collection_name}{name}",
            **options,
        )
        assert store.write_documents(documents) == len(documents)
        with urllib.request.urlopen(f"{weaviate_server.url}/v1/nodes?output=verbose", timeout=10) as response:
            shards = [
                shard
                for node in json.loads(response.read())["nodes"]
                for shard in node.get("shards") or []
                if shard["class"] == store.collection.name
            ]
        assert shards and all(shard.get("compressed", False) == (name == "rq") for shard in shards), shards
        runs[name] = {
            query_id: {doc.id: doc.score for doc in store.embedding_retrieval(vector, top_k=10)}
            for query_id, vector in queries.items()
        }
        store.store.close()
    overlap = [len(set(runs["plain"][q]) & set(runs["rq"][q])) / 10 for q in queries]
    plain, compressed = (evaluate_run(data.qrels, runs[key])["ndcg@10"] for key in ("plain", "rq"))
    assert sum(overlap) / len(overlap) >= 0.98, sum(overlap) / len(overlap)
    assert abs(plain - compressed) <= 0.005, (plain, compressed)
    assert plain == pytest.approx(0.645, abs=0.01)
