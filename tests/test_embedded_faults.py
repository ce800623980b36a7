"""Faults and bad input for the embedded store: a killed writer, damaged files, two writers, threads
searching during writes, filters on fields some documents lack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dual_encoder.embedded import EmbeddedStore, StoreLockedError
from dual_encoder.embedded.storage import DATABASE_FILE, LOCK_FILE
from dual_encoder.errors import StoreFormatError
from dual_encoder.filters import compile_filter
from dual_encoder.stores.contract import StoredRecord

DIM = 8
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _vector(key: str, version: int = 0) -> np.ndarray:
    """A vector determined by (id, version), so any stored record can be checked against its content."""
    seed = [int.from_bytes(key.encode()[:16].ljust(16, b"\0"), "little") % 2**63, version]
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def _run_child(code: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True, **popen)


_WRITER = """
    import sys
    import numpy as np
    from dual_encoder.embedded import EmbeddedStore
    from dual_encoder.stores.contract import StoredRecord

    def vector(key, version=0):
        seed = [int.from_bytes(key.encode()[:16].ljust(16, b"\\0"), "little") % 2**63, version]
        return np.random.default_rng(seed).standard_normal(8).astype(np.float32)

    path, prefix, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # An optional fifth argument: the size from which exact search keeps 8-bit codes (then built at once,
    # kept current by every write and saved on every fifth batch's close()).
    codes_from = int(sys.argv[5]) if len(sys.argv) > 5 else None
    store = EmbeddedStore(path, lock_timeout=60, quantised_threshold=codes_from)
    for batch in range(start, stop):
        records = [StoredRecord(id=f"{prefix}{batch}-{j}", content=f"{prefix}{batch}-{j}@0",
                                embedding=vector(f"{prefix}{batch}-{j}")) for j in range(20)]
        # The same id rewritten with a new vector every batch: exercises slot reuse.
        hot = f"{prefix}hot"
        records.append(StoredRecord(id=hot, content=f"{hot}@{batch}", embedding=vector(hot, batch)))
        store.upsert(records)
        if batch % 3 == 2:
            store.delete([f"{prefix}{batch - 1}-0"])
        if codes_from is not None:
            store.vector_search(vector(hot, batch), top_k=1, exact=True)
            if batch % 5 == 4:
                store.close()
        print(batch, flush=True)
"""


def _check_consistent(store: EmbeddedStore) -> list[StoredRecord]:
    """Every record's vector is the one its content names (nothing torn or half-written)."""
    records = store.list()
    for record in records:
        key, version = record.content.rsplit("@", 1)
        assert key == record.id
        np.testing.assert_array_equal(record.embedding, _vector(key, int(version)))
    return records


@pytest.mark.parametrize("codes_from", [None, 50], ids=["float32-scan", "with-exact-search-codes"])
def test_kill_9_during_writes_loses_no_returned_write(tmp_path, codes_from):
    path = tmp_path / "store"
    returned: list[int] = []
    start = 0
    extra = [] if codes_from is None else [str(codes_from)]
    for round_ in range(3):
        child = _run_child(_WRITER, str(path), "w", str(start), str(start + 10_000), *extra, stdout=subprocess.PIPE)
        deadline = time.monotonic() + 60
        wanted = 4 + 3 * round_
        seen = 0
        while seen < wanted and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            returned.append(int(line))
            seen += 1
        time.sleep(0.005 * round_)  # land the kill at different points of the next write
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        returned.extend(int(line) for line in rest.split())
        assert seen == wanted, "the writer did not start"

        store = EmbeddedStore(path, quantised_threshold=codes_from)
        records = _check_consistent(store)
        ids = {r.id for r in records}
        batches = {int(i[1:].split("-")[0]) for i in ids if i != "whot"}
        for batch in returned:
            expected = {f"w{batch}-{j}" for j in range(1, 20)}
            assert expected <= ids, f"batch {batch} returned but is not stored whole"
            # Batch b+1 deletes b's first document when (b+1) % 3 == 2; it may have run without returning.
            if (batch + 1) % 3 != 2:
                assert f"w{batch}-0" in ids
            elif batch + 1 in returned:
                assert f"w{batch}-0" not in ids
        # Every stored batch is whole: a write is all or nothing.
        for batch in batches:
            present = {f"w{batch}-{j}" for j in range(20)} & ids
            assert len(present) >= 19, f"batch {batch} is half-written: {sorted(present)}"
        assert store.count() == len(records) == len(ids)
        assert "whot" in ids
        hot = store.stored_versions(["whot"])["whot"]
        assert int(hot.content.split("@")[1]) >= max(returned)
        hit = store.vector_search(hot.embedding, top_k=1).hits[0]
        assert hit.record.id == "whot" and hit.score == pytest.approx(1.0, abs=1e-5)
        if codes_from is not None:
            # The codes (saved before the kill plus the change log, or rebuilt) rank exactly like the float32 scan.
            assert store._quantised is not None and len(store._quantised) == store.count()
            rng = np.random.default_rng(round_)
            for _ in range(10):
                query = rng.standard_normal(DIM).astype(np.float32)
                with_codes = store.vector_search(query, top_k=10, exact=True)
                store.quantised_threshold = 10**12
                plain = store.vector_search(query, top_k=10, exact=True)
                store.quantised_threshold = codes_from
                assert [h.record.id for h in with_codes.hits] == [h.record.id for h in plain.hits]
        store.close()
        start = max(batches | set(returned)) + 1


def _store_with(path: Path, count: int = 200) -> None:
    store = EmbeddedStore(path)
    store.upsert([StoredRecord(id=f"d{i}", content=f"d{i}@0", embedding=_vector(f"d{i}")) for i in range(count)])
    store.close()


def test_truncated_vector_file_is_named(tmp_path):
    path = tmp_path / "store"
    _store_with(path)
    (vectors,) = path.glob("vectors-*.f32")
    with open(vectors, "r+b") as handle:
        handle.truncate(50 * DIM * 4)
    with pytest.raises(StoreFormatError, match=vectors.name):
        EmbeddedStore(path).count()


def test_corrupt_vector_rows_are_named_not_returned(tmp_path):
    path = tmp_path / "store"
    _store_with(path)
    (vectors,) = path.glob("vectors-*.f32")
    with open(vectors, "r+b") as handle:
        handle.seek(7 * DIM * 4)
        handle.write(b"\xff" * 8)
    store = EmbeddedStore(path)
    with pytest.raises(StoreFormatError, match=vectors.name):
        store.list()
    with pytest.raises(StoreFormatError, match="d7"):
        store.stored_versions(["d7"])
    assert store.stored_versions(["d8"])["d8"].content == "d8@0"  # undamaged rows still read


@pytest.mark.parametrize("damage", ["overwrite-header", "truncate", "garbage"])
def test_damaged_database_is_named(tmp_path, damage):
    path = tmp_path / "store"
    _store_with(path, count=3000)
    database = path / DATABASE_FILE
    size = database.stat().st_size
    with open(database, "r+b") as handle:
        if damage == "overwrite-header":
            handle.write(b"this is not sqlite" * 4)
        elif damage == "truncate":
            handle.truncate(size // 3)
        else:
            handle.seek(size // 2)
            handle.write(os.urandom(8192))
    with pytest.raises(StoreFormatError, match=DATABASE_FILE):
        store = EmbeddedStore(path)
        store.list()
        store.count({"field": "meta.x", "operator": "==", "value": 1})


_LOCK_HOLDER = """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_second_writer_gets_a_clear_error_then_succeeds(tmp_path):
    path = tmp_path / "store"
    _store_with(path, count=10)
    holder = _run_child(_LOCK_HOLDER, str(path / LOCK_FILE), "1.5", stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    store = EmbeddedStore(path, lock_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(StoreLockedError, match=str(path)) as raised:
        store.upsert([StoredRecord(id="late", content="late@0", embedding=_vector("late"))])
    assert 0.25 <= time.monotonic() - started < 1.4
    assert "lock_timeout" in str(raised.value)
    assert store.count() == 10, "reads never wait for the writer"
    holder.wait(timeout=10)
    store.upsert([StoredRecord(id="late", content="late@0", embedding=_vector("late"))])
    assert store.count() == 11


def test_two_writer_processes_interleave_without_corruption(tmp_path):
    path = tmp_path / "store"
    EmbeddedStore(path).close()
    children = [_run_child(_WRITER, str(path), prefix, "0", "25", stdout=subprocess.PIPE) for prefix in ("a", "b")]
    reader = EmbeddedStore(path)
    rng = np.random.default_rng(5)
    while any(child.poll() is None for child in children):
        _check_consistent(reader)  # a reader in another process sees only whole writes meanwhile
        query = rng.standard_normal(DIM).astype(np.float32)
        for hit in reader.vector_search(query, top_k=10).hits:  # ... and searches score what they return
            key, version = hit.record.content.rsplit("@", 1)
            np.testing.assert_array_equal(hit.record.embedding, _vector(key, int(version)))
            vector = hit.record.embedding
            assert hit.score == pytest.approx(
                float(vector @ query / np.linalg.norm(vector) / np.linalg.norm(query)), abs=1e-5
            )
        time.sleep(0.005)
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        assert out.split()[-1] == "24"
    records = _check_consistent(reader)
    per_prefix = 25 * 20 + 1 - 8  # 25 batches of 20, the hot id, 8 deletes
    assert len(records) == reader.count() == 2 * per_prefix


@pytest.mark.parametrize("codes_from", [None, 50], ids=["float32-scan", "with-exact-search-codes"])
def test_threads_searching_during_writes_see_no_torn_records(tmp_path, codes_from):
    store = EmbeddedStore(tmp_path / "store", quantised_threshold=codes_from)
    ids = [f"t{i}" for i in range(300)]
    store.upsert([StoredRecord(id=i, content=f"{i}@0", embedding=_vector(i)) for i in ids])
    stop = threading.Event()
    problems: list[str] = []
    searches = [0]

    def write() -> None:
        version = 1
        rng = np.random.default_rng(0)
        while not stop.is_set():
            chosen = [ids[j] for j in rng.choice(len(ids), 20, replace=False)]
            store.upsert([StoredRecord(id=i, content=f"{i}@{version}", embedding=_vector(i, version)) for i in chosen])
            store.delete(chosen[:3])
            store.upsert(
                [StoredRecord(id=i, content=f"{i}@{version}", embedding=_vector(i, version)) for i in chosen[:3]]
            )
            version += 1

    def search(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            query = rng.standard_normal(DIM).astype(np.float32)
            filters = None if seed % 2 else {"field": "content", "operator": "!=", "value": "x"}
            for hit in store.vector_search(query, top_k=10, filters=filters).hits:
                key, version = hit.record.content.rsplit("@", 1)
                expected_vector = _vector(key, int(version))
                if key != hit.record.id or not np.array_equal(hit.record.embedding, expected_vector):
                    problems.append(f"torn record {hit.record.id}: {hit.record.content}")
                expected = float(expected_vector @ query / np.linalg.norm(expected_vector) / np.linalg.norm(query))
                if abs(expected - hit.score) > 1e-5:
                    problems.append(f"wrong score for {hit.record.id}: {hit.score} != {expected}")
            searches[0] += 1

    threads = [threading.Thread(target=write)] + [threading.Thread(target=search, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not problems, problems[:5]
    assert searches[0] > 20
    assert store.count() == 300
    _check_consistent(store)
    if codes_from is not None:
        assert store._quantised is not None and len(store._quantised) == 300


def test_filters_on_fields_some_documents_lack_follow_haystack(tmp_path):
    store = EmbeddedStore(tmp_path / "store")
    metas = [{"rating": 5}, {"rating": 2}, {}, {"rating": None}, {"other": 1}, {"rating": 3.5}]
    store.upsert([StoredRecord(id=f"m{i}", meta=meta, embedding=_vector(f"m{i}")) for i, meta in enumerate(metas)])
    cases = [
        ("rating", ">", 3, {"m0", "m5"}),  # a missing value never orders
        ("rating", "<=", 3, {"m1"}),
        ("rating", "!=", 2, {"m0", "m2", "m3", "m4", "m5"}),  # missing counts as "not equal"
        ("rating", "==", None, {"m2", "m3", "m4"}),  # missing reads as None
        ("rating", "not in", [5, 2], {"m2", "m3", "m4", "m5"}),
        ("rating", "in", [5, 2], {"m0", "m1"}),
    ]
    for field, operator, value, expected in cases:
        filters = {"field": f"meta.{field}", "operator": operator, "value": value}
        reference = compile_filter(filters)
        by_reference = {f"m{i}" for i, meta in enumerate(metas) if reference({"id": f"m{i}", "meta": meta})}
        assert by_reference == expected, (filters, by_reference)
        assert {r.id for r in store.list(filters)} == expected, filters
        assert store.count(filters) == len(expected)
        hits = store.vector_search(np.ones(DIM, np.float32), top_k=10, filters=filters).hits
        assert {h.record.id for h in hits} == expected, filters
