"""Smoke test of an installed dual-encoder-retrieval wheel: run from a folder with no source tree beside it."""

import json
import os
import sys
import tempfile
import time

import numpy as np

started = time.perf_counter()
import dual_encoder  # noqa: E402  (timed from the start: the import is part of the smoke)
from dual_encoder.documents import DocumentInput  # noqa: E402
from dual_encoder.search import index_documents, search  # noqa: E402

report = {"python": sys.version.split()[0], "version": dual_encoder.__version__, "from": dual_encoder.__file__}
assert "site-packages" in dual_encoder.__file__, dual_encoder.__file__  # the wheel, not a source tree
texts = {
    "tides": "Tides are caused by the Moon's gravity.",
    "bread": "Sourdough bread rises thanks to wild yeast.",
    "heat": "Heat pumps move heat from cold outside air into a house.",
}
encoder = dual_encoder.DualEncoder(dual_encoder.EncoderConfig(model="all-MiniLM-L6-v2"))
vectors = encoder.encode_documents(list(texts.values()))
report["shape"] = list(np.asarray(vectors).shape)
report["norms"] = [round(float(n), 4) for n in np.linalg.norm(vectors, axis=1)]
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "index")
    store = dual_encoder.open_embedded_store(path)
    summary = index_documents(encoder, store, [DocumentInput(id=i, content=t) for i, t in texts.items()])
    store.close()
    reopened = dual_encoder.open_embedded_store(path)  # round trip through the files on disk
    hits = search(encoder, reopened, "What causes tides?", top_k=3).hits
    report["encoded"] = summary.encoded
    report["ranking"] = [hit.record.id for hit in hits]
    report["count_after_reopen"] = reopened.count()
    reopened.close()
assert report["ranking"][0] == "tides" and report["count_after_reopen"] == 3
# The adapters import with the [all] extras, and a missing-extra message is not triggered.
from dual_encoder_weaviate import WeaviateStore  # noqa: E402
from haystack import Document  # noqa: E402
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder  # noqa: E402
from langchain_dual_encoder import DualEncoderEmbeddings  # noqa: E402

docs = DualEncoderDocumentEmbedder(encoder="all-MiniLM-L6-v2", progress_bar=False).run(
    documents=[Document(id="tides", content=texts["tides"])]
)["documents"]
report["haystack_matches_core"] = bool(np.allclose(docs[0].embedding, vectors[0], atol=1e-6))
report["langchain_query_dim"] = len(DualEncoderEmbeddings("all-MiniLM-L6-v2").embed_query("What causes tides?"))
report["weaviate_store_class"] = WeaviateStore.__name__
report["seconds"] = round(time.perf_counter() - started, 1)
print(json.dumps(report))
