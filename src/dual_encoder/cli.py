"""The ``dual-encoder`` command line: index, search, demo, combine, evaluate, train, and plug-in sub-apps.

dual-encoder index notes/ --store my-index
dual-encoder search "How do heat pumps work?" --store my-index
dual-encoder demo
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dual_encoder.chunking import PassageSplitter, whole_documents
from dual_encoder.config import EncoderConfig
from dual_encoder.documents import build_document_text
from dual_encoder.embedded import open_embedded_store
from dual_encoder.embedded.legacy import is_legacy_store
from dual_encoder.embedded.storage import DATABASE_FILE
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import DualEncoderError
from dual_encoder.search import ENCODER_METADATA_KEY, index_documents, search
from dual_encoder.sources import forget_missing_files, read_documents
from dual_encoder.stores import SearchResult, Store
from dual_encoder.training.config import TrainingConfig

#: Where the index command records, in an embedded store's metadata, how it split documents into passages.
PASSAGES_METADATA_KEY = "passages"

# The train command's defaults are TrainingConfig's own (chosen on a dev slice), so the two never drift apart.
_TRAINING_DEFAULTS = TrainingConfig.defaults()

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dual-encoder retrieval: index and search text.")
console = Console()
error_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from dual_encoder import __version__

        typer.echo(f"dual-encoder {__version__}")
        raise typer.Exit()


@app.callback()
def _common_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Dual-encoder retrieval: index and search text."""


StoreOption = Annotated[Path, typer.Option("--store", "-s", help="Embedded store directory.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder or name (default: all-MiniLM-L6-v2).")
]


BackendOption = Annotated[
    str | None,
    typer.Option(
        help="torch (float32, default) | auto (openvino-bf16 on CPUs with bf16, else torch) | openvino | "
        "openvino-bf16 | openvino-int8; every backend embeds into the same space."
    ),
]


def _encoder_config(
    model: str | None,
    query_prompt: str | None,
    document_prompt: str | None,
    batch_size: int | None,
    recorded: dict | None = None,
    backend: str | None = None,
) -> EncoderConfig:
    base = dict(recorded or {})
    overrides = {
        "model": model,
        "query_prompt": query_prompt,
        "document_prompt": document_prompt,
        "batch_size": batch_size,
        "backend": backend,
    }
    base.update({key: value for key, value in overrides.items() if value is not None})
    return EncoderConfig.from_dict(base)


@app.command("index")
def index_command(
    source: Annotated[Path, typer.Argument(help="A folder of .txt/.md files, one .txt/.md file, or a .jsonl file.")],
    store: StoreOption = Path("dual-encoder-index"),
    model: ModelOption = None,
    query_prompt: Annotated[str | None, typer.Option(help="Prompt prepended to queries.")] = None,
    document_prompt: Annotated[str | None, typer.Option(help="Prompt prepended to documents.")] = None,
    meta_field: Annotated[
        list[str] | None,
        typer.Option("--meta-field", help="Meta field to embed with the text of every passage (repeatable)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Texts per forward pass.")] = None,
    backend: BackendOption = None,
    split: Annotated[
        bool | None,
        typer.Option(
            "--split/--no-split",
            help="Split documents longer than the model's limit into passages (default). --no-split embeds each "
            "document whole: the model then ignores everything past its limit (one warning says how many).",
        ),
    ] = None,
    passage_tokens: Annotated[
        int | None,
        typer.Option(
            help="Longest passage, in tokens of the model's tokenizer (an English word is 1-2 tokens). Default (or 0): "
            "as many as fit the model's max_seq_length with the document prompt.",
            min=0,
        ),
    ] = None,
    passage_overlap: Annotated[
        int | None,
        typer.Option(
            help="Tokens consecutive passages share, so a sentence cut at a boundary is whole in one of them. "
            "Default: an eighth of the passage size.",
            min=0,
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    keep_missing: Annotated[
        bool,
        typer.Option(
            "--keep-missing",
            help="Keep the passages of files deleted from the folder since it was last indexed (by default they "
            "are removed from the store).",
        ),
    ] = False,
) -> None:
    """Split documents into passages, embed them with the document tower and add them to an embedded store.

    The model and passage settings are recorded in the store and used again on the next run unless given.
    Unchanged passages are not encoded again; a changed document replaces all of its old passages. Indexing a
    folder again removes the passages of files deleted from it since (unless --keep-missing).
    """
    documents = read_documents(source)
    if not any(build_document_text(document, meta_field or (), "\n").strip() for document in documents):
        raise DualEncoderError(
            f"None of the {len(documents)} document(s) in '{source}' has any text; nothing was indexed. "
            f"Add text to them, or index another source."
        )
    _check_store_folder(store, must_exist=False)
    index = open_embedded_store(store)
    config = _encoder_config(
        model, query_prompt, document_prompt, batch_size, index.metadata.get(ENCODER_METADATA_KEY), backend=backend
    )
    passage_settings = _passage_settings(
        index.metadata.get(PASSAGES_METADATA_KEY), split, passage_tokens, passage_overlap
    )
    encoder = DualEncoder(config)
    started = time.perf_counter()
    if passage_settings["split"]:
        splitter = PassageSplitter.for_encoder(
            encoder,
            max_tokens=passage_settings["max_tokens"],
            overlap_tokens=passage_settings["overlap_tokens"],
            meta_fields_to_embed=meta_field or (),
        )
        passages = splitter.split_documents(documents)
    else:
        passages = whole_documents(documents)
    summary = index_documents(
        encoder, index, passages, meta_fields_to_embed=meta_field or (), progress_bar=progress, replace_sources=True
    )
    missing = forget_missing_files(index, source, documents, keep=keep_missing)
    index.set_metadata(ENCODER_METADATA_KEY, config.to_dict())
    index.set_metadata(PASSAGES_METADATA_KEY, passage_settings)
    split_note = f" as {len(passages)} passages" if passage_settings["split"] else ""
    removed_note = f", {summary.removed} stale passages removed" if summary.removed else ""
    console.print(
        f"Indexed {len(documents)} documents{split_note} into [bold]{store}[/bold] in "
        f"{time.perf_counter() - started:.1f} s: {summary.encoded} encoded, {summary.unchanged} unchanged, "
        f"{summary.without_text} without text{removed_note}. The store now holds {index.count()} documents."
    )
    if missing and missing.removed:
        console.print(
            f"Removed {missing.passages} passages of {len(missing.files)} files no longer in '{source}': "
            f"{missing.describe()}."
        )
    elif missing and missing.files:
        console.print(
            f"[yellow]note:[/yellow] {len(missing.files)} files indexed from '{source}' before are gone from it "
            f"({missing.describe()}); --keep-missing kept their {missing.passages} passages. Index the folder "
            f"again without it to remove them."
        )
    if summary.without_text:
        console.print(
            f"[yellow]note:[/yellow] {summary.without_text} document(s) have no text (named in the warning above); "
            f"they are stored without an embedding, so search cannot find them. Give them text and index again."
        )


def _check_store_folder(store: Path, *, must_exist: bool) -> None:
    """Refuse a --store that is not an embedded store, before anything is written into it."""
    holds_store = store.is_dir() and ((store / DATABASE_FILE).is_file() or is_legacy_store(store))
    if holds_store:
        return
    if must_exist:
        raise DualEncoderError(
            f"No embedded store at '{store}'. Create one with: dual-encoder index <source> --store {store}"
        )
    if store.exists() and not store.is_dir():
        raise DualEncoderError(f"--store '{store}' is a file; an embedded store is a folder. Pass a folder path.")
    if store.is_dir() and any(store.iterdir()):
        raise DualEncoderError(
            f"--store '{store}' is a folder of other files, not an embedded store; the store's files would be mixed "
            f"with them. Pass a new or empty folder, or an existing store."
        )


def _passage_settings(
    recorded: dict | None, split: bool | None, max_tokens: int | None, overlap_tokens: int | None
) -> dict:
    """The passage settings of this run: the options given, else those recorded in the store, else the defaults."""
    settings = {"split": True, "max_tokens": None, "overlap_tokens": None, **(recorded or {})}
    if split is not None:
        settings["split"] = split
    if max_tokens is not None:
        settings["max_tokens"] = max_tokens or None
        if overlap_tokens is None:
            settings["overlap_tokens"] = None  # the default overlap follows the new passage size
    if overlap_tokens is not None:
        settings["overlap_tokens"] = overlap_tokens
    return settings


@app.command("search")
def search_command(
    question: Annotated[str, typer.Argument(help="The question to search for.")],
    store: StoreOption = Path("dual-encoder-index"),
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Number of results.")] = 5,
    filters: Annotated[str | None, typer.Option("--filters", help="Haystack-syntax filter as JSON.")] = None,
    model: ModelOption = None,
    backend: BackendOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the results as one JSON document (query, method, results with id, score, content and "
            "meta) and nothing else on stdout.",
        ),
    ] = False,
) -> None:
    """Search an embedded store; the encoder recorded at indexing time is used unless --model is given."""
    _check_store_folder(store, must_exist=True)
    if not question.strip():
        raise DualEncoderError(
            'The question is empty; pass the text to search for, e.g. dual-encoder search "How do heat pumps work?"'
        )
    try:
        parsed_filters = json.loads(filters) if filters else None
    except json.JSONDecodeError as error:
        raise DualEncoderError(f"--filters is not valid JSON ({error.msg}).") from error
    index = open_embedded_store(store)
    config = _encoder_config(model, None, None, None, index.metadata.get(ENCODER_METADATA_KEY), backend=backend)
    result = search(DualEncoder(config), index, question, top_k=top_k, filters=parsed_filters)
    if as_json:
        typer.echo(
            json.dumps(
                _results_as_json(question, result, top_k, parsed_filters), ensure_ascii=False, indent=2, default=str
            )
        )
    else:
        _print_hits(question, result)


def _results_as_json(question: str, result: SearchResult, top_k: int, filters: Any) -> dict[str, Any]:
    return {
        "query": question,
        "method": result.method,
        "top_k": top_k,
        "filters": filters,
        "results": [
            {
                "rank": rank,
                "id": hit.record.id,
                "score": float(hit.score),
                "content": hit.record.content,
                "meta": hit.record.meta,
            }
            for rank, hit in enumerate(result.hits, start=1)
        ],
    }


@app.command("demo")
def demo_command(
    store: Annotated[
        Path | None, typer.Option("--store", "-s", help="Keep the demo store here (default: a temporary directory).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Results per question.")] = 3,
) -> None:
    """Index the bundled sample corpus into the embedded store and answer a few questions."""
    if store is not None:
        _check_store_folder(store, must_exist=False)
    sample = resources.files("dual_encoder") / "sample_data"
    questions = [
        line.strip() for line in (sample / "questions.txt").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    with tempfile.TemporaryDirectory(prefix="dual-encoder-demo-") as temporary:
        directory = store or Path(temporary) / "index"
        with resources.as_file(sample / "corpus.jsonl") as corpus:
            documents = read_documents(corpus)
        encoder = DualEncoder(EncoderConfig(model="all-MiniLM-L6-v2"))
        index = open_embedded_store(directory)
        started = time.perf_counter()
        summary = index_documents(encoder, index, documents, meta_fields_to_embed=["title"], progress_bar=False)
        console.print(
            f"[bold]Indexed {len(documents)} sample passages[/bold] ({summary.encoded} encoded) into the embedded "
            f"store at {directory} in {time.perf_counter() - started:.1f} s with all-MiniLM-L6-v2 "
            f"({encoder.dimension}-d, {encoder.similarity}; fingerprint {encoder.fingerprint.document_space})."
        )
        for question in questions:
            _print_hits(question, search(encoder, index, question, top_k=top_k))


@app.command("combine")
def combine_command(
    output: Annotated[Path, typer.Argument(help="Folder to save the asymmetric model to.")],
    document_model: Annotated[str, typer.Option(help="Model for the document tower.")] = "all-MiniLM-L6-v2",
    query_model: Annotated[
        str | None, typer.Option(help="Model for the query tower (default: the document model).")
    ] = None,
    query_layers: Annotated[
        int | None, typer.Option(help="Keep only the first N transformer layers of the query tower.")
    ] = None,
) -> None:
    """Build an asymmetric encoder (a Router model) from two towers and save it."""
    from dual_encoder.models import load_shared_model
    from dual_encoder.towers import combine_towers, keep_first_layers

    document_tower = load_shared_model(document_model)
    query_tower = load_shared_model(query_model) if query_model else document_tower
    if query_layers is not None:
        query_tower = keep_first_layers(query_tower, query_layers)
    combine_towers(query_tower=query_tower, document_tower=document_tower).save(str(output))
    encoder = DualEncoder(str(output))
    console.print(f"Saved an asymmetric encoder to [bold]{output}[/bold]: {encoder.fingerprint.describe()}.")


@app.command("evaluate")
def evaluate_command(
    folder: Annotated[
        Path, typer.Argument(help="A BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
    ],
    split: Annotated[str, typer.Option(help="Which qrels split to evaluate.")] = "test",
    model: ModelOption = None,
    query_prompt: Annotated[str | None, typer.Option(help="Prompt prepended to queries.")] = None,
    document_prompt: Annotated[str | None, typer.Option(help="Prompt prepended to documents.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Texts per forward pass.")] = None,
    backend: BackendOption = None,
    store: Annotated[
        Path | None,
        typer.Option("--store", "-s", help="Keep the embedded index here (re-runs skip unchanged documents)."),
    ] = None,
    store_type: Annotated[
        str, typer.Option(help="embedded, or the name of a store plug-in (configured with --store-option).")
    ] = "embedded",
    store_option: Annotated[
        list[str] | None,
        typer.Option(
            "--store-option",
            help="key=value for a plug-in store (repeatable), e.g. url=http://127.0.0.1:8080 collection=SciFact.",
        ),
    ] = None,
    exact: Annotated[
        bool | None,
        typer.Option("--exact/--approximate", help="Force exact or approximate search (default: the store chooses)."),
    ] = None,
    retrieval: Annotated[
        str, typer.Option(help="vector (the dual encoder), keyword (the store's BM25) or hybrid (both, fused).")
    ] = "vector",
    fusion: Annotated[
        str | None,
        typer.Option(
            help="Hybrid only: weighted (normalised scores) or rrf (reciprocal ranks); default: the model's recorded "
            "fusion (hybrid_fusion.json), else weighted."
        ),
    ] = None,
    weight: Annotated[
        float | None,
        typer.Option(
            help="Hybrid only: the vector side's share, 0 (keyword only) to 1 (vector only); default: the weight "
            "recorded in the model folder (hybrid_fusion.json, see tune-fusion), else 0.4."
        ),
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(help="Hybrid only: documents per side before fusing, also the ranking depth; default 100."),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of recall@k here.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Embed a BEIR corpus into a store and report nDCG@10, Recall@10/100, MRR@10 and MAP@100."""
    from dual_encoder.evaluation import evaluate_store, plot_recall_curve, resolve_retrieval
    from dual_encoder.plugins import open_store, parse_options

    retrieval = resolve_retrieval(retrieval)
    encoder = DualEncoder(_encoder_config(model, query_prompt, document_prompt, batch_size, backend=backend))
    if store_type == "embedded":
        if store_option:
            raise typer.BadParameter("--store-option is for plug-in stores; the embedded store takes --store DIR.")
        if store is not None:
            _check_store_folder(store, must_exist=False)
        target: Store = open_embedded_store(store, similarity=encoder.similarity)
    else:
        if store is not None:
            raise typer.BadParameter(
                f"--store is the embedded store's folder; with --store-type {store_type} use --store-option."
            )
        # Evaluation corpora go to their own collection unless one is named, never into the users' default one.
        target = open_store(store_type, **{"collection": "DualEncoderEvaluation", **parse_options(store_option)})
    started = time.perf_counter()
    report = evaluate_store(
        folder,
        split=split,
        encoder=encoder,
        store=target,
        progress_bar=progress,
        exact=exact,
        retrieval=retrieval,
        fusion=fusion,
        weight=weight,
        candidates=candidates,
    )
    method = (
        retrieval
        if report.fusion is None
        else (
            f"hybrid ({report.fusion['fusion']}, weight {report.fusion['weight']}, "
            f"{report.fusion['candidates']} candidates)"
        )
    )
    table = Table(
        title=f"{folder.name} ({split}): {report.queries} queries, {report.documents} documents, "
        f"model {encoder.config.model}, {store_type} store, {method} retrieval",
        title_justify="left",
    )
    for name in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"):
        table.add_column(name, justify="right")
    table.add_row(
        *(f"{report.metrics[name]:.4f}" for name in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"))
    )
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"Evaluated to depth {report.depth} in {time.perf_counter() - started:.0f} s.")
    if output is not None:
        output.write_text(json.dumps(asdict(report), indent=2))
        console.print(f"Metrics written to {output}")
    if plot is not None:
        plot_recall_curve(report.metrics, plot, title=f"recall@k: {folder.name} {split}, {encoder.config.model}")
        console.print(f"Recall@k plot written to {plot}")


@app.command("train")
def train_command(
    data: Annotated[
        Path,
        typer.Argument(help="A BEIR-layout folder (qrels/train.tsv) or a .jsonl of {query, positive[, negative]}."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the trained model and its report.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Base model to start from.")] = "all-MiniLM-L6-v2",
    architecture: Annotated[
        str,
        typer.Option(
            help="siamese | asymmetric | asymmetric-shared-projection | asymmetric-frozen-embeddings | light-query | "
            "static-query"
        ),
    ] = "siamese",
    query_model: Annotated[
        str | None, typer.Option(help="Asymmetric architectures: start the query tower from this model.")
    ] = None,
    loss: Annotated[
        str, typer.Option(help="mnrl | cached-mnrl | gist | cached-gist | triplet")
    ] = _TRAINING_DEFAULTS.loss,
    epochs: Annotated[float, typer.Option(help="Passes over the training pairs.")] = _TRAINING_DEFAULTS.epochs,
    learning_rate: Annotated[
        float, typer.Option(help="Peak learning rate (linear warm-up, then linear decay).")
    ] = _TRAINING_DEFAULTS.learning_rate,
    batch_size: Annotated[
        int, typer.Option(help="Pairs per step (each query's in-batch negatives).")
    ] = _TRAINING_DEFAULTS.batch_size,
    mini_batch_size: Annotated[
        int, typer.Option(help="Texts per forward pass for cached-mnrl (memory, not results).")
    ] = _TRAINING_DEFAULTS.mini_batch_size,
    hard_negatives: Annotated[
        int, typer.Option(help="Hard negatives mined per pair with the base model (0: none).")
    ] = 1,
    negative_ranks: Annotated[
        str, typer.Option(help="Rank window FIRST:LAST the hard negatives are drawn from.")
    ] = "10:50",
    negative_margin: Annotated[
        float, typer.Option(help="Mined negatives score at most (1 - margin) x the positive's score (0: no margin).")
    ] = (_TRAINING_DEFAULTS.negative_relative_margin),
    query_layers: Annotated[int, typer.Option(help="light-query: layers the query tower keeps.")] = 3,
    light_query_objective: Annotated[
        str, typer.Option(help="light-query and static-query: distill | contrastive | both.")
    ] = "both",
    static_query_init: Annotated[
        str | None,
        typer.Option(
            help="static-query: how the token table starts: token-outputs (the document tower's output for each "
            "vocabulary token) | token-embeddings (its input token embeddings). "
            f"Default: {_TRAINING_DEFAULTS.static_query_init}."
        ),
    ] = None,
    static_query_epochs: Annotated[
        int | None,
        typer.Option(
            help="static-query: passes over the training texts; the transformer settings --epochs, --learning-rate, "
            f"--batch-size and --max-steps do not apply to it. Default: {_TRAINING_DEFAULTS.static_query_epochs}.",
            min=1,
        ),
    ] = None,
    static_query_learning_rate: Annotated[
        float | None,
        typer.Option(
            help="static-query: learning rate of the token table (above 0, below 10). "
            f"Default: {_TRAINING_DEFAULTS.static_query_learning_rate:g}."
        ),
    ] = None,
    static_query_batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"static-query: texts per step. Default: {_TRAINING_DEFAULTS.static_query_batch_size}.", min=1
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="BEIR split to train on.")] = "train",
    dev_split: Annotated[
        str | None,
        typer.Option(help="BEIR split to evaluate on during training (default: hold out --dev-fraction of train)."),
    ] = None,
    dev_fraction: Annotated[float, typer.Option(help="Share of training queries held out for evaluation.")] = 0.1,
    eval_corpus_size: Annotated[
        int, typer.Option(help="Documents the dev evaluation searches (0: the whole corpus).")
    ] = _TRAINING_DEFAULTS.eval_corpus_size,
    max_steps: Annotated[
        int,
        typer.Option(
            help="Step budget: stop after the epochs or this many steps, whichever comes first (0: no budget)."
        ),
    ] = (_TRAINING_DEFAULTS.max_steps),
    min_improvement: Annotated[
        float,
        typer.Option(
            help="Guard: a checkpoint replaces the base model only if its dev nDCG@10 gain exceeds this many standard "
            "errors."
        ),
    ] = _TRAINING_DEFAULTS.min_improvement_standard_errors,
    max_seq_length: Annotated[
        int | None, typer.Option(help="Token limit while training and for the saved model.")
    ] = None,
    train_document_tokens: Annotated[
        int,
        typer.Option(
            help="Train on only the first N tokens of each document (faster steps; 0: all of them); the saved model "
            "keeps its full limit."
        ),
    ] = _TRAINING_DEFAULTS.train_document_tokens,
    query_prompt: Annotated[str | None, typer.Option(help="Prompt for queries, saved with the model.")] = None,
    document_prompt: Annotated[str | None, typer.Option(help="Prompt for documents, saved with the model.")] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 where the CPU has native bfloat16 and it measures faster, else fp32) | fp32 | bf16."
        ),
    ] = _TRAINING_DEFAULTS.precision,
    seed: Annotated[int, typer.Option(help="Seed for the dev split, negatives, shuffling and initialisation.")] = 42,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Fine-tune a dual encoder (Siamese or asymmetric, or a static query tower) and save it with a model card and a
    training report.

    The saved model is the best of the base model and every checkpoint on the dev slice. Exit status 0: a
    checkpoint beat the base and was saved; 3: none did, so the output folder holds the base model
    (status no_improvement in training_report.json).
    """
    from dual_encoder.training import NO_IMPROVEMENT, NO_IMPROVEMENT_EXIT_CODE, train

    try:
        first, last = (int(part) for part in negative_ranks.split(":"))
    except ValueError:
        raise typer.BadParameter(f"--negative-ranks must look like 10:50, got {negative_ranks!r}.") from None
    static_query_options = _static_query_options(
        architecture,
        static_query_init=static_query_init,
        static_query_epochs=static_query_epochs,
        static_query_learning_rate=static_query_learning_rate,
        static_query_batch_size=static_query_batch_size,
    )
    config = TrainingConfig(
        data=data,
        output=output,
        base_model=model,
        architecture=architecture,
        query_model=query_model,
        loss=loss,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        hard_negatives=hard_negatives,
        negative_rank_range=(first, last),
        query_layers=query_layers,
        light_query_objective=light_query_objective,
        **static_query_options,
        split=split,
        dev_split=dev_split,
        dev_fraction=dev_fraction,
        eval_corpus_size=eval_corpus_size or None,
        max_steps=max_steps or None,
        max_seq_length=max_seq_length,
        negative_relative_margin=negative_margin,
        min_improvement_standard_errors=min_improvement,
        train_document_tokens=train_document_tokens or None,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        precision=precision,
        seed=seed,
        progress_bar=progress,
    )
    result = train(config, announce=console.print)
    report = result.report
    if report["dev_before"] is not None:
        guard = report["guard"]
        table = Table(
            title=(
                f"dev slice: {report['dev_corpus']['dev_queries']} queries over {report['dev_corpus']['description']}"
            ),
            title_justify="left",
        )
        for column in ("model", "step", *report["dev_before"], "gain (nDCG@10)", "std. error", "beats base"):
            table.add_column(column, justify="left" if column == "model" else "right")
        table.add_row("base", "0", *(f"{value:.4f}" for value in report["dev_before"].values()), "", "", "")
        for row in guard["checkpoints"]:
            table.add_row(
                "checkpoint" + (" (saved)" if row["step"] == guard["chosen_step"] else ""),
                str(row["step"]),
                *(f"{row[name]:.4f}" for name in report["dev_before"]),
                f"{row['gain']:+.4f}",
                f"{row['standard_error']:.4f}",
                "yes" if row["beats_base"] else "no",
            )
        console.print(table)
    for note in report["data"]["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    if report["interrupted"]:
        console.print(
            "[yellow]Training was interrupted; the model as it was then was compared with the base model.[/yellow]"
        )
    if report["document_index_still_valid"]:
        console.print(f"Documents keep the base model's fingerprint: an index built with {model} stays valid.")
    console.print(
        f"Trained {report['steps']} steps in {report['timings']['training_seconds']:.0f} s. "
        f"Model: [bold]{result.model_path}[/bold]; report: {result.report_path}; curves: {result.plot_path}"
    )
    if result.status == NO_IMPROVEMENT:
        console.print(f"[bold yellow]{report['message']}[/bold yellow]")
        raise typer.Exit(NO_IMPROVEMENT_EXIT_CODE)


@app.command("tune-fusion")
def tune_fusion_command(
    model: Annotated[str, typer.Option("--model", "-m", help="The model folder to choose the fusion weight for.")],
    data: Annotated[
        Path,
        typer.Option(help="The training data: a BEIR-layout folder (qrels/train.tsv) or a .jsonl of pairs."),
    ],
    split: Annotated[str, typer.Option(help="BEIR split the dev slice is held out of, as in train.")] = "train",
    dev_split: Annotated[
        str | None, typer.Option(help="BEIR split to use as the dev slice instead (as train's --dev-split).")
    ] = None,
    dev_fraction: Annotated[float, typer.Option(help="Share of the queries held out, as in train.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the dev slice, as in train.")] = 42,
    write: Annotated[
        bool, typer.Option("--write/--no-write", help="Record the choice in the model folder (hybrid_fusion.json).")
    ] = True,
    backend: BackendOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Choose the hybrid fusion weight for a model on the dev slice train holds out, and record it in the model
    folder, where hybrid search, the retrievers and evaluate --retrieval hybrid find it when no weight is given.

    Dense and BM25 rank the whole corpus once; every weight from 0 to 1 (step 0.05) of weighted and RRF fusion is
    scored by dev nDCG@10. A fusion that does not beat the stronger of dense and BM25 on dev is not chosen: the
    recorded weight then returns that input's ranking (1: dense only).
    """
    from dual_encoder.fusion_tuning import model_folder
    from dual_encoder.training.fusion_dev import tune_model_fusion

    if not 0 < dev_fraction < 1 and dev_split is None:
        raise typer.BadParameter(f"--dev-fraction must be between 0 and 1, got {dev_fraction}.")
    folder = model_folder(model)
    choice, path = tune_model_fusion(
        model,
        data,
        split=split,
        dev_split=dev_split,
        dev_fraction=dev_fraction,
        seed=seed,
        encoder_options={"backend": backend} if backend else None,
        write=write,
        progress_bar=progress,
    )
    table = Table(title=f"{model}: dev nDCG@10 by fusion weight (the vector side's share)", title_justify="left")
    table.add_column("weight", justify="right")
    for method in choice.curve:
        table.add_column(method, justify="right")
    for weight in next(iter(choice.curve.values())):
        table.add_row(weight, *(f"{points[weight]:.4f}" for points in choice.curve.values()))
    console.print(table)
    console.print(choice.message())
    if path is not None:
        console.print(f"Recorded in [bold]{path}[/bold]; hybrid search with this model uses it unless given a weight.")
    elif folder is None:
        console.print(
            f"[yellow]note:[/yellow] '{model}' is not a model folder, so nothing was recorded; pass --weight "
            f"{choice.weight:g} (fusion {choice.fusion}) to hybrid search yourself."
        )
    else:
        console.print("Not recorded (--no-write).")


def _static_query_options(architecture: str, **given: Any) -> dict[str, Any]:
    """The ``static_query_*`` options given on the command line (``None``: not given, so TrainingConfig's default
    applies); refused with another architecture, which would ignore them."""
    options = {name: value for name, value in given.items() if value is not None}
    if options and architecture != "static-query":
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        several = len(options) > 1
        raise typer.BadParameter(
            f"{flags} {'apply' if several else 'applies'} to --architecture static-query only, but --architecture is "
            f"{architecture!r}, which would ignore {'them' if several else 'it'}. Add --architecture static-query, or "
            f"leave {'them' if several else 'it'} out."
        )
    return options


def _add_plugin_commands() -> None:
    """Sub-apps other packages register (``dual_encoder.cli`` entry points)."""
    from dual_encoder.plugins import cli_apps

    for name, sub_app in cli_apps().items():
        app.add_typer(sub_app, name=name)


_add_plugin_commands()


def _print_hits(question: str, result: SearchResult) -> None:
    table = Table(title=f"[bold]{question}[/bold] ({result.method} search)", title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id")
    table.add_column("text", overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        text = (hit.record.content or "").replace("\n", " ")
        title = hit.record.meta.get("title")
        snippet = (f"{title}: " if title else "") + (text[:160] + ("…" if len(text) > 160 else ""))
        table.add_row(str(rank), f"{hit.score:.3f}", hit.record.id, snippet)
    console.print(table)


def main() -> None:
    """The ``dual-encoder`` entry point: errors this package raises on purpose go to stderr, without a traceback,
    and exit with status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except DualEncoderError as error:
        # Printed as text, not markup: messages quote paths and JSON, whose brackets rich would eat.
        error_console.print("[red]error:[/red] ", end="")
        error_console.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
