"""LangChain: index the sample corpus with a dual encoder, retrieve as the first stage of a RAG chain.

    python examples/langchain_rag.py

No network here, so the "LLM" is LangChain's FakeListLLM; swap in any chat model. The prompt the LLM
receives is printed, with the retrieved passages. Only LangChain and the core are needed (no Haystack):
``pip install dual-encoder-retrieval[langchain]``. Pass ``store_path`` to keep the index on disk; re-running
over the same directory encodes nothing again.
"""

from __future__ import annotations

import json
from importlib import resources

from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderRetriever, DualEncoderVectorStore

PROMPT = PromptTemplate.from_template(
    "Answer the question using only these passages.\n{context}\nQuestion: {question}\nAnswer:"
)


def build_chain(store_path: str | None = None, llm=None):
    """Index the sample corpus and return ``(prompt_stage, chain)``: the question -> prompt part, and the
    whole question -> answer chain."""
    embeddings = DualEncoderEmbeddings("all-MiniLM-L6-v2")
    vectorstore = DualEncoderVectorStore.embedded(embeddings, path=store_path)
    corpus = resources.files("dual_encoder") / "sample_data" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    vectorstore.add_texts([r["content"] for r in rows], [r["meta"] for r in rows], ids=[r["id"] for r in rows])
    retriever = DualEncoderRetriever(vectorstore=vectorstore, k=3)

    def format_passages(documents) -> str:
        return "\n".join(f"[{d.id}] ({d.metadata['score']:.3f}) {d.page_content}" for d in documents)

    llm = llm or FakeListLLM(responses=["(the LLM's answer would appear here)"])
    context = retriever | RunnableLambda(format_passages)
    prompt_stage = {"context": context, "question": RunnablePassthrough()} | PROMPT
    return prompt_stage, prompt_stage | llm | StrOutputParser()


def main() -> None:
    prompt_stage, chain = build_chain()
    question = "How does a heat pump warm a house?"
    print(prompt_stage.invoke(question).to_string())
    print(chain.invoke(question))


if __name__ == "__main__":
    main()
