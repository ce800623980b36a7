"""The YAML pipelines in examples/ load with Pipeline.loads and run end to end on the embedded store."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from haystack import Pipeline
from haystack.core.errors import DeserializationError, PipelineError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def builders():
    spec = importlib.util.spec_from_file_location("build_pipelines", EXAMPLES / "build_pipelines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_yaml_pipelines_index_and_answer_with_default_settings(tmp_path, monkeypatch, builders):
    monkeypatch.chdir(tmp_path)
    indexing = Pipeline.loads((EXAMPLES / "indexing_pipeline.yaml").read_text())
    written = indexing.run({"embedder": {"documents": builders.sample_documents()}})
    assert written["writer"]["documents_written"] == 30
    assert any((tmp_path / "dual-encoder-index").iterdir())
    # A second run over the unchanged corpus, as a fresh process would load it: nothing is encoded again.
    again = Pipeline.loads((EXAMPLES / "indexing_pipeline.yaml").read_text())
    encoded = []
    monkeypatch.setattr(
        again.get_component("embedder").encoder, "encode_documents", lambda texts, **kw: encoded.extend(texts)
    )
    assert again.run({"embedder": {"documents": builders.sample_documents()}})["writer"]["documents_written"] == 30
    assert encoded == []

    query = Pipeline.loads((EXAMPLES / "query_pipeline.yaml").read_text())
    question = "Why do we have summer and winter?"
    result = query.run(
        {"retriever": {"query": question}, "prompt_builder": {"question": question}},
        include_outputs_from={"retriever"},
    )
    documents = result["retriever"]["documents"]
    assert [d.id for d in documents][0] == "seasons" and len(documents) == 3
    assert "Why there are seasons" in result["prompt_builder"]["prompt"]


def test_yaml_files_match_the_python_builders(builders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # building the pipelines opens their stores, which creates the store directory
    for name, build in (
        ("indexing_pipeline.yaml", builders.build_indexing_pipeline),
        ("query_pipeline.yaml", builders.build_query_pipeline),
    ):
        assert yaml.safe_load((EXAMPLES / name).read_text()) == build().to_dict(), f"regenerate {name}"


def _query_yaml_with(edit):
    data = yaml.safe_load((EXAMPLES / "query_pipeline.yaml").read_text())
    edit(data["components"]["retriever"]["init_parameters"])
    return yaml.safe_dump(data)


def test_unknown_parameter_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _query_yaml_with(lambda params: params.update(topk=3))
    with pytest.raises(DeserializationError) as error:
        Pipeline.loads(text)
    assert "unexpected keyword argument 'topk'" in str(error.value)


def test_unknown_encoder_parameter_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _query_yaml_with(lambda params: params["encoder"].update(modle="x"))
    with pytest.raises(DeserializationError) as error:
        Pipeline.loads(text)
    assert "Unknown encoder parameter(s) ['modle']" in str(error.value)


def test_missing_parameter_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _query_yaml_with(lambda params: params.pop("retriever"))
    with pytest.raises(DeserializationError) as error:
        Pipeline.loads(text)
    assert "missing 1 required positional argument: 'retriever'" in str(error.value)


def test_invalid_yaml_is_refused():
    with pytest.raises((DeserializationError, PipelineError)):
        Pipeline.loads("components: [unclosed")


@pytest.mark.asyncio
async def test_yaml_pipelines_run_async_like_run(tmp_path, monkeypatch, builders):
    """Pipeline.run_async indexes (DocumentWriter on the embedded store) and answers with the same documents and
    scores as Pipeline.run."""
    monkeypatch.chdir(tmp_path)
    indexing = Pipeline.loads((EXAMPLES / "indexing_pipeline.yaml").read_text())
    written = await indexing.run_async({"embedder": {"documents": builders.sample_documents()}})
    assert written["writer"]["documents_written"] == 30

    query = Pipeline.loads((EXAMPLES / "query_pipeline.yaml").read_text())
    question = "Why do we have summer and winter?"
    inputs = {"retriever": {"query": question}, "prompt_builder": {"question": question}}
    from_async = (await query.run_async(inputs, include_outputs_from={"retriever"}))["retriever"]["documents"]
    from_sync = query.run(inputs, include_outputs_from={"retriever"})["retriever"]["documents"]
    assert [(d.id, d.score) for d in from_async] == [(d.id, d.score) for d in from_sync]
    assert from_async[0].id == "seasons"
