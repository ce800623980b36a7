"""The vector file's two maps: the scan map and the map for scattered rows see the same rows, through writes and
growth, and a store answers the same through either."""

from __future__ import annotations

import numpy as np

from dual_encoder.embedded import EmbeddedStore
from dual_encoder.embedded.storage import VectorFile
from dual_encoder.stores import StoredRecord


def test_both_maps_see_every_write_and_growth(tmp_path):
    vectors = VectorFile(tmp_path / "vectors.f32", 8)
    rng = np.random.default_rng(0)
    first = rng.standard_normal((5, 8)).astype(np.float32)
    vectors.ensure_capacity(5)
    vectors.write_rows(np.arange(5), first)
    np.testing.assert_array_equal(vectors.scattered_rows[:5], first)
    # Growing remaps the file; rows written after it are visible through both new maps.
    vectors.ensure_capacity(5_000)
    later = rng.standard_normal((3, 8)).astype(np.float32)
    vectors.write_rows(np.array([4_000, 4_001, 4_002]), later)
    for view in (vectors.matrix, vectors.scattered_rows):
        np.testing.assert_array_equal(view[:5], first)
        np.testing.assert_array_equal(view[4_000:4_003], later)
    vectors.close()


def test_a_store_with_codes_answers_as_the_float32_scan(tmp_path):
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((3_000, 16)).astype(np.float32)
    records = [StoredRecord(id=f"d{i}", content=f"text {i}", embedding=row) for i, row in enumerate(matrix)]
    for name, threshold in (("coded", 1_000), ("plain", 10**9)):
        store = EmbeddedStore(tmp_path / name, quantised_threshold=threshold)
        store.upsert(records)
        store.close()
    # Reopened, so the rows the codes leave are read back through the file's map for scattered rows.
    coded = EmbeddedStore(tmp_path / "coded", quantised_threshold=1_000)
    plain = EmbeddedStore(tmp_path / "plain", quantised_threshold=10**9)
    try:
        for query in rng.standard_normal((10, 16)).astype(np.float32):
            a = coded.vector_search(query, top_k=10, exact=True)
            b = plain.vector_search(query, top_k=10, exact=True)
            assert [h.record.id for h in a.hits] == [h.record.id for h in b.hits]
            np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-6)
        assert coded._quantised_index() is not None and plain._quantised_index() is None
    finally:
        coded.close()
        plain.close()
