"""A hybrid query pipeline: BM25 keyword search fused with dual-encoder vector search on the embedded store.

    python examples/hybrid_pipeline.py                 # index the sample corpus, ask a question both ways
    python examples/hybrid_pipeline.py --write-yaml    # refresh examples/hybrid_query_pipeline.yaml

Documents come out with the fused ``score`` and both component scores in ``meta`` (``vector_score``: the
cosine similarity, ``keyword_score``: BM25; ``None`` where that side did not return the document).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

from haystack import Pipeline
from haystack.components.builders import PromptBuilder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("build_pipelines", HERE / "build_pipelines.py")
build_pipelines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_pipelines)


def build_hybrid_query_pipeline(store_path: str = build_pipelines.STORE_PATH) -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_component(
        "retriever",
        DualEncoderHybridRetriever(
            document_store=EmbeddedDocumentStore(path=store_path),
            encoder=build_pipelines.ENCODER,  # the definition the indexing pipeline embedded with
            top_k=3,
            fusion="weighted",
            weight=0.4,
            candidates=100,
            mmr_lambda=None,
        ),
    )
    pipeline.add_component(
        "prompt_builder", PromptBuilder(template=build_pipelines.PROMPT, required_variables=["question"])
    )
    pipeline.connect("retriever.documents", "prompt_builder.documents")
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-yaml", action="store_true", help="regenerate examples/hybrid_query_pipeline.yaml")
    args = parser.parse_args()
    if args.write_yaml:
        (HERE / "hybrid_query_pipeline.yaml").write_text(build_hybrid_query_pipeline().dumps())
        return
    with tempfile.TemporaryDirectory() as folder:
        store_path = str(Path(folder) / "index")
        build_pipelines.build_indexing_pipeline(store_path).run(
            {"embedder": {"documents": build_pipelines.sample_documents()}}
        )
        question = "Why do we have summer and winter?"
        result = build_hybrid_query_pipeline(store_path).run(
            {"retriever": {"query": question}, "prompt_builder": {"question": question}},
            include_outputs_from={"retriever"},
        )
        for document in result["retriever"]["documents"]:
            vector, keyword = document.meta["vector_score"], document.meta["keyword_score"]
            print(f"{document.score:.3f}  vector={vector}  bm25={keyword}  {document.id}")


if __name__ == "__main__":
    main()
