"""Build the indexing and query pipelines in Python, run them on the bundled sample corpus, and (with
--write-yaml) regenerate the YAML files next to this script.

    python examples/build_pipelines.py                  # embedded store: index the sample corpus, ask two questions
    python examples/build_pipelines.py --weaviate       # the same on Weaviate (WEAVIATE_URL, WEAVIATE_GRPC_PORT,
                                                        # optional WEAVIATE_API_KEY; see `dual-encoder weaviate start`)
    python examples/build_pipelines.py --write-yaml     # refresh the YAML files (and examples/hayhooks/query.yml)

The same encoder definition feeds both pipelines; that is what ties the query side to the document side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from importlib import resources
from pathlib import Path

import yaml
from haystack import Document, Pipeline
from haystack.components.builders import PromptBuilder
from haystack.components.writers import DocumentWriter
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore

HERE = Path(__file__).parent
STORE_PATH = "dual-encoder-index"
#: One definition for both sides. Change the model or prompts here and both pipelines follow.
ENCODER = {"model": "all-MiniLM-L6-v2", "query_prompt": None, "document_prompt": None}

PROMPT = """Answer the question using only these passages.
{% for document in documents %}
[{{ loop.index }}] {{ document.meta.title }}: {{ document.content }}
{% endfor %}
Question: {{ question }}
Answer:"""


def weaviate_store() -> DualEncoderWeaviateDocumentStore:
    """URL and API key come from WEAVIATE_URL / WEAVIATE_API_KEY: never written into the YAML."""
    return DualEncoderWeaviateDocumentStore(
        collection_name="SamplePassages", meta_fields={"title": "text", "topic": "text"}
    )


def build_indexing_pipeline(store_path: str = STORE_PATH, *, weaviate: bool = False) -> Pipeline:
    store = weaviate_store() if weaviate else EmbeddedDocumentStore(path=store_path)
    pipeline = Pipeline()
    # The embedder reads the store (never writes it) to reuse the embeddings of unchanged documents, so
    # running this pipeline again over the same corpus encodes nothing.
    pipeline.add_component(
        "embedder",
        DualEncoderDocumentEmbedder(
            encoder=ENCODER, meta_fields_to_embed=["title"], progress_bar=True, document_store=store
        ),
    )
    # OVERWRITE keeps re-indexing idempotent, and on Weaviate it is the policy that uses the batch API.
    pipeline.add_component("writer", DocumentWriter(document_store=store, policy=DuplicatePolicy.OVERWRITE))
    pipeline.connect("embedder.documents", "writer.documents")
    return pipeline


def build_query_pipeline(store_path: str = STORE_PATH, *, weaviate: bool = False) -> Pipeline:
    store = weaviate_store() if weaviate else EmbeddedDocumentStore(path=store_path)
    pipeline = Pipeline()
    pipeline.add_component(
        "retriever",
        DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), encoder=ENCODER, top_k=3),
    )
    # First stage of a RAG pipeline: the prompt is ready for any chat or generator component.
    pipeline.add_component("prompt_builder", PromptBuilder(template=PROMPT, required_variables=["question"]))
    pipeline.connect("retriever.documents", "prompt_builder.documents")
    return pipeline


#: What Hayhooks exposes of the query pipeline: one ``query`` field feeds the retriever and the prompt, and the
#: response carries the retrieved documents and the prompt.
HAYHOOKS_IO = {
    "inputs": {"query": ["retriever.query", "prompt_builder.question"]},
    "outputs": {"documents": "retriever.documents", "prompt": "prompt_builder.prompt"},
}


def hayhooks_query_yaml(store_path: str = STORE_PATH) -> str:
    """The query pipeline's YAML with the ``inputs``/``outputs`` Hayhooks needs to serve it over HTTP."""
    return build_query_pipeline(store_path).dumps() + yaml.safe_dump(HAYHOOKS_IO, sort_keys=False)


def sample_documents() -> list[Document]:
    corpus = resources.files("dual_encoder") / "sample_data" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Document(id=row["id"], content=row["content"], meta=row["meta"]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-yaml", action="store_true", help="regenerate the YAML files in examples/")
    parser.add_argument("--weaviate", action="store_true", help="use Weaviate instead of the embedded store")
    args = parser.parse_args()
    if args.write_yaml:
        for prefix, weaviate in (("", False), ("weaviate_", True)):
            (HERE / f"{prefix}indexing_pipeline.yaml").write_text(build_indexing_pipeline(weaviate=weaviate).dumps())
            (HERE / f"{prefix}query_pipeline.yaml").write_text(build_query_pipeline(weaviate=weaviate).dumps())
        (HERE / "hayhooks").mkdir(exist_ok=True)
        (HERE / "hayhooks" / "query.yml").write_text(hayhooks_query_yaml())
        print("wrote examples/{,weaviate_}{indexing,query}_pipeline.yaml and examples/hayhooks/query.yml")
        return
    with tempfile.TemporaryDirectory() as directory:
        store_path = str(Path(directory) / "index")
        indexing = build_indexing_pipeline(store_path, weaviate=args.weaviate)
        written = indexing.run({"embedder": {"documents": sample_documents()}})
        print(f"indexed {written['writer']['documents_written']} documents")
        query = build_query_pipeline(store_path, weaviate=args.weaviate)
        for question in ["Why do we have seasons?", "How do vaccines work?"]:
            result = query.run(
                {"retriever": {"query": question}, "prompt_builder": {"question": question}},
                include_outputs_from={"retriever"},
            )
            print(f"\n{question}")
            for document in result["retriever"]["documents"]:
                print(f"  {document.score:.3f}  {document.id}")


if __name__ == "__main__":
    main()
