"""The ``aniso`` command line (typer). It lives with the flows because it runs them; the
library in :mod:`aniso` stays orchestrator-free.

Exit codes: 0 success · 1 other aniso error · 2 bad input or settings · 3 a gate failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

# Prefect's 20 s ephemeral-server start-up timeout is too short on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Quiet by default (``--verbose`` raises the levels again): Prefect and Dask log every task.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # failures are reported by the CLI itself
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import typer  # noqa: E402

from aniso.errors import AnisoError, ConfigError, GateFailed, InputError  # noqa: E402

if TYPE_CHECKING:  # settings (pydantic), Prefect and the library load only when a command runs,
    from aniso.config import Settings  # so ``aniso --help`` stays fast


app = typer.Typer(no_args_is_help=True, add_completion=False, help="Substitute image embeddings from text.")
logger = logging.getLogger("aniso.cli")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML settings file layered over the profile.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="conf/<profile>.yaml (default, local, s3, ci).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.field=value (repeatable).")]
OutOpt = Annotated[Optional[str], typer.Option(help="Storage root URL (local path or s3://...).")]
DatasetOpt = Annotated[Optional[str], typer.Option(help="Dataset name under the root.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v")]


def _fail(exc: BaseException) -> None:
    """Print a one-line reason and exit with the code of its error class."""
    code = 3 if isinstance(exc, GateFailed) else 2 if isinstance(exc, (InputError, ConfigError)) else 1
    typer.echo(f"aniso: error: {exc}", err=True)
    raise typer.Exit(code)


def _settings(profile: str | None, config: Path | None, overrides: list[str] | None, **fields: str | None) -> Settings:
    from aniso.config import load_settings

    extra = [f"{k}={v}" for k, v in fields.items() if v is not None]
    return load_settings(profile=profile, config_file=config, overrides=[*(overrides or []), *extra])


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Prefect's and Dask's own INFO chatter would drown the progress bar.
    for name in ("prefect", "distributed", "httpx", "great_expectations",
                 "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def _progress_bar() -> Iterator[None]:
    """A rich progress bar fed by :mod:`aniso.progress` while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aniso.progress import set_callback

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done if total else 1)

        previous = set_callback(on_progress)
        try:
            yield
        finally:
            set_callback(previous)


def run_produce(text: str, image: str, settings: Settings) -> dict:
    """Run the ``produce`` flow with the settings' Dask cluster and a progress bar."""
    from aniso.flows._common import make_task_runner
    from aniso.flows.produce import produce

    flow = produce.with_options(task_runner=make_task_runner(settings.cluster))
    with _progress_bar():
        return flow(text=text, image=image, settings=settings)


@app.command()
def produce(
    text: Annotated[str, typer.Option(help="Text embeddings: .npy, clip-retrieval folder or Zarr store URL.")],
    image: Annotated[str, typer.Option(help="Image embeddings: .npy, clip-retrieval folder or Zarr store URL.")],
    out: OutOpt = None,
    dataset: DatasetOpt = None,
    method: Annotated[Optional[str], typer.Option(help="identity, centroid, realign, c3, moment, anisoalign.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Embeddings in → substitutes gated and published (the whole job)."""
    _configure_logging(verbose)
    try:
        settings = _settings(profile, config, set_, **{"storage.root": out, "storage.dataset": dataset, "method.name": method})
        result = run_produce(text, image, settings)
    except AnisoError as exc:
        _fail(exc)
    _print_result(result, settings)


def _print_result(result: dict, settings: Settings) -> None:
    pointer = result["published"]
    typer.echo(f"published {settings.storage.dataset} version {pointer['version']} (run {result['run_key']})")
    typer.echo(f"  root:     {settings.storage.root}")
    typer.echo(f"  manifest: {settings.storage.root}/{settings.storage.dataset}/{pointer['manifest']}")
    for gate in result["gates"]["results"]:
        typer.echo(f"  gate {gate['name']:<20} {'PASS' if gate['passed'] else 'FAIL'}  observed {gate['observed']}  ({gate['bound']})")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Storage root for the demo.")] = ".aniso-demo",
    items: Annotated[int, typer.Option(help="Captions and images to generate (unpaired: different seeds).")] = 4000,
    method: Annotated[Optional[str], typer.Option(help="Alignment method (default: the profile's, anisoalign).")] = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The embedded default, offline: a generated captioned corpus → the shipped demo open_clip
    model → AnisoAlign → gates → publish."""
    from aniso._fs import exists, join_url
    from aniso.demo import write_demo_corpus

    _configure_logging(verbose)
    try:
        settings = _settings(None, None, set_, **{"storage.root": out, "method.name": method})
        corpus = join_url(out, "corpus")
        # Captions and images come from different seeds: like production, the corpora are unpaired.
        paths = {}
        for name, seed in (("text", 1), ("images", 2)):
            folder = join_url(corpus, f"{name}-{items}")
            if not exists(join_url(folder, "captions.jsonl")):
                write_demo_corpus(folder, n=items, seed=seed)
            paths[name] = join_url(folder, "captions.jsonl") if name == "text" else join_url(folder, "images")
        typer.echo(f"demo corpus: {items} captions and {items} rendered images (unpaired) in {corpus}; "
                   f"model {settings.embed.model} ({settings.embed.pretrained})")
        result = run_produce(paths["text"], paths["images"], settings)
    except AnisoError as exc:
        _fail(exc)
    _print_result(result, settings)


@app.command()
def embed(
    out: Annotated[str, typer.Option(help="Storage root URL (local path or s3://...).")],
    text: Annotated[Optional[str], typer.Option(help="Text corpus URL (jsonl, parquet, csv, txt, tars).")] = None,
    images: Annotated[Optional[str], typer.Option(help="Image corpus URL (folder tree or webdataset tars).")] = None,
    dataset: DatasetOpt = None,
    model: Annotated[Optional[str], typer.Option(help="open_clip model name, e.g. ViT-B-32.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Pretrained tag (e.g. laion2b_s34b_b79k) or checkpoint path.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Embed a raw corpus into a Zarr embedding store (resumable; per-item failures recorded)."""
    from aniso.flows._common import make_task_runner
    from aniso.flows.embed import embed as embed_flow

    _configure_logging(verbose)
    if (text is None) == (images is None):
        typer.echo("aniso: error: give exactly one of --text or --images", err=True)
        raise typer.Exit(2)
    try:
        settings = _settings(profile, config, set_, **{"storage.root": out, "storage.dataset": dataset,
                                                       "embed.model": model, "embed.pretrained": pretrained})
        flow = embed_flow.with_options(task_runner=make_task_runner(settings.cluster))
        with _progress_bar():
            result = flow(url=text or images, modality="text" if text else "image", settings=settings)
    except AnisoError as exc:
        _fail(exc)
    typer.echo(f"embedded {result['rows']} item(s) in {result['shards']} shard(s), failure rate "
               f"{result['failure_rate']:.4f}\n  store:    {result['store']}\n  manifest: {result['manifest']}")


@app.command()
def diagnose(
    text: Annotated[str, typer.Option(help="Text embeddings URL (.npy, clip-retrieval folder, Zarr store).")],
    image: Annotated[str, typer.Option(help="Image embeddings URL.")],
    substitutes: Annotated[Optional[str], typer.Option(help="Substitutes for the text (row-aligned).")] = None,
    pairs: Annotated[bool, typer.Option("--pairs", help="Text and image rows are pairs (adds A_r, R@k, ...).")] = False,
    max_rows: Annotated[int, typer.Option(help="Deterministic row sample per input.")] = 5000,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the geometric diagnostics (DESIGN.md §4) as one table: raw text and, if given, substitutes."""
    from aniso.diagnostics import diagnose as run_diagnostics
    from aniso.diagnostics import format_table
    from aniso.inputs import open_embedding_source
    from aniso.sampling import collect_rows, sample_indices

    _configure_logging(False)
    try:
        options = _settings(profile, config, set_).storage.fs_options()
        sources = {"text": open_embedding_source(text, options, what="text"),
                   "image": open_embedding_source(image, options, what="image")}
        if substitutes:
            sources["substitutes"] = open_embedding_source(substitutes, options, what="substitutes")
        if pairs and sources["text"].n_rows != sources["image"].n_rows:
            raise InputError(f"--pairs needs as many image rows as text rows: {sources['text'].n_rows} vs {sources['image'].n_rows}")
        text_rows = sample_indices(sources["text"].n_rows, max_rows, seed=0)
        arrays = {
            name: collect_rows(src, text_rows if name != "image" or pairs else sample_indices(src.n_rows, max_rows, seed=1), what=name)
            for name, src in sources.items()
        }
        rows = {"raw text": run_diagnostics(arrays["text"], arrays["image"], paired=pairs)}
        if substitutes:
            rows["substitutes"] = run_diagnostics(arrays["text"], arrays["image"], arrays["substitutes"], paired=pairs)
    except AnisoError as exc:
        _fail(exc)
    typer.echo(f"rows sampled: text {len(arrays['text'])}, image {len(arrays['image'])} (of "
               f"{sources['text'].n_rows} and {sources['image'].n_rows})")
    typer.echo(format_table(rows))


@app.command()
def show(
    out: Annotated[str, typer.Option(help="Storage root URL.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "demo",
) -> None:
    """Print the manifest of the published version (what a training team reads)."""
    from aniso.publish import open_published

    try:
        published = open_published(out, dataset)
    except AnisoError as exc:
        _fail(exc)
    manifest = {k: v for k, v in published.manifest.items() if k != "shards"}
    typer.echo(json.dumps(manifest, indent=2, sort_keys=True, default=str))


@app.command()
def verify(
    root: Annotated[str, typer.Argument(help="Storage root URL (local path or s3://...).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    version: Annotated[Optional[str], typer.Option(help="Published version (default: LATEST).")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check every shard of a published version against its manifest checksums.

    Exit 0 when intact; 3 naming each damaged shard and its rows (or a corrupt manifest/LATEST).
    """
    from aniso.errors import StoreCorrupt
    from aniso.publish import open_published

    try:
        options = _settings(profile, config, set_).storage.fs_options()
        published = open_published(root, dataset, version=version, storage_options=options)
        problems = published.problems()
    except StoreCorrupt as exc:
        typer.echo(f"aniso: damaged: {exc}", err=True)
        raise typer.Exit(3) from None
    except AnisoError as exc:
        _fail(exc)
    manifest = published.manifest
    if problems:
        for line in problems:
            typer.echo(f"aniso: damaged: {line}", err=True)
        typer.echo(f"{dataset} version {manifest['version']}: {len(problems)} of {len(manifest['shards'])} "
                   "shard(s) damaged", err=True)
        raise typer.Exit(3)
    typer.echo(f"{dataset} version {manifest['version']}: {len(manifest['shards'])} shard(s), "
               f"{manifest['n_rows']} rows verified against the manifest checksums")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
