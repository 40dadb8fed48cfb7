"""The ``aniso`` command line (typer). It lives with the flows because it runs them; the
library in :mod:`aniso` stays orchestrator-free.

Exit codes: 0 success · 1 other aniso error · 2 bad input or settings · 3 a gate failed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Optional

# Prefect's 20 s ephemeral-server start-up timeout is too short on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Usage telemetry off, as in the Makefile (Prefect, Dask and the other libraries honour these).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_CLI_TELEMETRY", "false")
# One BLAS thread per Dask worker thread: the workers already use every core (cluster.n_workers ×
# threads_per_worker), and BLAS threads on top of them oversubscribe it. Set before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Quiet by default (``--verbose`` raises the levels again): Prefect and Dask log every task.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # failures are reported by the CLI itself
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import typer  # noqa: E402

from aniso.errors import AnisoError  # noqa: E402
from aniso.methods.table import METHODS  # noqa: E402

if TYPE_CHECKING:  # settings (pydantic), Prefect and the library load only when a command runs,
    from aniso.config import Settings  # so ``aniso --help`` stays fast


from ._cli_common import (ConfigOpt, DatasetOpt, OutOpt, ProfileOpt, RootArg, SetOpt, VerboseOpt,  # noqa: E402,F401
                          _VERBOSE, _configure_logging, _fail, _root, _setting_default, _settings)
from ._cli_published import export, gc, show, verify  # noqa: E402
from ._console import install_help_style, notice, progress_display  # noqa: E402
from ._output import DIAGNOSE_FORMATS, diagnose_output, result_lines  # noqa: E402
from ._run import announce_settings, announce_start, flow_with_runner, run_produce  # noqa: E402

install_help_style()

#: The exit codes every command keeps (shown under ``aniso --help``).
EXIT_CODES = ("Exit codes: 0 success · 1 other error (e.g. storage: disk full, permission denied) · "
              "2 bad input or settings · 3 a gate failed or a published version is damaged.")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Substitute image embeddings from text.",
                  epilog=EXIT_CODES)


def _version_callback(value: bool) -> None:
    if value:
        from aniso._version import __version__, code_version

        typer.echo(f"aniso {__version__} (code {code_version()})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Substitute image embeddings from text: embed, fit, gate and publish (docs/ explains each step)."""


logger = logging.getLogger("aniso.cli")


def _announce(command: str, what: str) -> None:
    """The first line of a run, before anything slow is loaded: what it is about to do."""
    notice("%s: %s", command, what)


@app.command()
def produce(
    text: Annotated[str, typer.Option(help="Text embeddings: .npy, clip-retrieval folder or Zarr store URL.")],
    image: Annotated[str, typer.Option(help="Image embeddings: .npy, clip-retrieval folder or Zarr store URL.")],
    root: Annotated[Optional[str], typer.Argument(metavar="ROOT", help=f"Storage root URL (local path or s3://...). "
                                                       f"{_setting_default('storage.root')}", show_default=False)] = None,
    out: OutOpt = None,
    dataset: DatasetOpt = None,
    method: Annotated[Optional[str], typer.Option(help=f"{', '.join(METHODS)}. "
                                                      f"{_setting_default('method.name')}")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Apply a frozen model instead of fitting one: 'latest', a published version of the dataset, "
                        "or a model folder URL. No statistics or fit; every gate runs; the text input needs ids.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Embeddings in → substitutes gated and published (the whole job)."""
    _configure_logging(verbose)
    from aniso._fs import redact_url

    try:
        settings = _settings(profile, config, set_, **{"storage.root": _root(root, out, "produce"),
                                                       "storage.dataset": dataset, "method.name": method,
                                                       "method.model": model})
        from aniso.published.guard import refuse_demo_replacement

        # first, before anything else is printed: never replace the demo's LATEST by accident
        refuse_demo_replacement(text, settings.storage.root, settings.storage.dataset, dataset_given=dataset is not None)
        stages = "apply the frozen model " + redact_url(settings.method.model) if settings.method.model else \
            "statistics (or embed), fit, apply"
        _announce("produce", f"text {redact_url(text)} + image {redact_url(image)} -> {stages}, gates, publish into "
                             f"{settings.storage.dataset}")
        announce_settings(settings)
        result = run_produce(text, image, settings, verbose=_VERBOSE[0])
    except (AnisoError, OSError) as exc:
        _fail(exc)
    _print_result(result, settings)


def _print_result(result: dict, settings: Settings) -> None:
    typer.echo("\n".join(result_lines(result, settings.storage.root, settings.storage.dataset)))


@app.command()
def demo(
    root: Annotated[Optional[str], typer.Argument(metavar="ROOT", help="Storage root for the demo. [default: .aniso-demo]",
                                                  show_default=False)] = None,
    out: OutOpt = None,
    items: Annotated[int, typer.Option(help="Captions and images to generate (unpaired: different seeds).")] = 4000,
    method: Annotated[Optional[str], typer.Option(help=f"Alignment method. {_setting_default('method.name')}")] = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The embedded default, offline: a generated captioned corpus → the shipped demo open_clip
    model → AnisoAlign → gates → publish."""
    out = _root(root, out, "demo") or ".aniso-demo"
    _configure_logging(verbose)
    _announce("demo", f"{items} generated captions and {items} rendered images -> embed with the demo model, "
                      "fit, apply, gates, publish")
    try:
        settings = _settings(None, None, set_, **{"storage.root": out, "method.name": method})
        announce_settings(settings)
        from aniso._fs import exists, join_url
        from aniso.demo import write_demo_corpus  # loads torch: after the first line

        corpus = join_url(out, "corpus")
        # Captions and images come from different seeds: like production, the corpora are unpaired.
        paths = {}
        for name, seed in (("text", 1), ("images", 2)):
            folder = join_url(corpus, f"{name}-{items}")
            if not exists(join_url(folder, "captions.jsonl")):
                notice("demo: writing the %s corpus (%d items) to %s", name, items, folder)
                write_demo_corpus(folder, n=items, seed=seed)
            paths[name] = join_url(folder, "captions.jsonl") if name == "text" else join_url(folder, "images")
        notice("demo corpus: %d captions and %d rendered images (unpaired) in %s; model %s (%s)",
               items, items, corpus, settings.embed.model, settings.embed.pretrained)
        result = run_produce(paths["text"], paths["images"], settings, verbose=_VERBOSE[0])
    except (AnisoError, OSError) as exc:
        _fail(exc)
    _print_result(result, settings)


@app.command()
def embed(
    root: RootArg = None,
    out: OutOpt = None,
    text: Annotated[Optional[str], typer.Option(help="Text corpus URL (jsonl, parquet, csv, txt, tars).")] = None,
    images: Annotated[Optional[str], typer.Option(help="Image corpus URL (folder tree or webdataset tars).")] = None,
    dataset: DatasetOpt = None,
    model: Annotated[Optional[str], typer.Option(help=f"open_clip model name, e.g. ViT-B-32. {_setting_default('embed.model')}")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Pretrained tag (e.g. laion2b_s34b_b79k) or checkpoint path. "
                                                       f"{_setting_default('embed.pretrained')}")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Embed a raw corpus into a Zarr embedding store (resumable; per-item failures recorded)."""
    from aniso.flows._server import start_local_server

    out = _root(root, out, "embed", required=True)
    _configure_logging(verbose)
    if (text is None) == (images is None):
        typer.echo("aniso: error: give exactly one of --text or --images", err=True)
        raise typer.Exit(2)
    # the command's own server, as for produce: started before Prefect is imported (which would
    # start Prefect's temporary one), and drained of the run's logs before it stops
    server = start_local_server()
    from aniso.flows.embed import embed as embed_flow

    try:
        settings = _settings(profile, config, set_, **{"storage.root": out, "storage.dataset": dataset,
                                                       "embed.model": model, "embed.pretrained": pretrained})
        notice("embed: %s corpus %s with %s -> %s/%s", "text" if text else "image", text or images,
               settings.embed.model, settings.storage.root, settings.storage.dataset)
        flow = flow_with_runner(embed_flow, settings, verbose=_VERBOSE[0])
        announce_start(settings)
        if server is not None:
            server.wait()
        with progress_display():
            result = flow(url=text or images, modality="text" if text else "image", settings=settings)
    except AnisoError as exc:
        _fail(exc)
    typer.echo(f"embedded {result['rows']} item(s) in {result['shards']} shard(s), failure rate "
               f"{result['failure_rate']:.4f}\n  store:    {result['store']}\n  manifest: {result['manifest']}")


@app.command()
def diagnose(
    text: Annotated[str, typer.Option(help="Text embeddings URL (.npy, clip-retrieval folder, Zarr store).")],
    image: Annotated[str, typer.Option(help="Image embeddings URL.")],
    substitutes: Annotated[Optional[str], typer.Option(
        help="Substitutes for the text (row-aligned): an embedding store URL, a published version's folder "
             "(ROOT/DATASET/published/VERSION), or a storage root with --dataset (and --version).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="With --substitutes ROOT: the published dataset.")] = None,
    version: Annotated[Optional[str], typer.Option(help="With --dataset: the published version (default: LATEST).")] = None,
    pairs: Annotated[bool, typer.Option("--pairs", help="Text and image rows are pairs (adds A_r, R@k, ...).")] = False,
    max_rows: Annotated[int, typer.Option(help="Deterministic row sample per input.")] = 5000,
    format_: Annotated[str, typer.Option("--format", metavar="|".join(DIAGNOSE_FORMATS),
                                         help="table: one line per metric with its meaning (fits 100 columns); "
                                              "markdown: one row per input; json; csv.")] = "table",
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the geometric diagnostics of raw text and, if given, substitutes against the images
    (what each value means: docs/diagnostics.md)."""
    from ._diagnose import diagnose_inputs

    _configure_logging(False)
    if format_ not in DIAGNOSE_FORMATS:
        typer.echo(f"aniso: error: --format {format_!r} is not one of {', '.join(DIAGNOSE_FORMATS)}", err=True)
        raise typer.Exit(2)
    try:
        options = _settings(profile, config, set_).storage.fs_options()
        rows, counts = diagnose_inputs(text, image, substitutes, dataset=dataset, version=version, pairs=pairs,
                                       max_rows=max_rows, options=options)
    except (AnisoError, OSError) as exc:
        _fail(exc)
    if format_ in ("table", "markdown"):
        typer.echo(f"rows sampled: text {counts['text_sampled']}, image {counts['image_sampled']} (of "
                   f"{counts['text']} and {counts['image']})")
    typer.echo(diagnose_output(rows, format_))


for _command in (show, verify, gc, export):
    app.command()(_command)


def main() -> None:  # pragma: no cover - console entry point
    """The ``aniso`` console script: run the command, then leave without tearing down the
    interpreter (see :func:`aniso.flows._console.fast_exit`)."""
    from ._console import fast_exit
    from ._supervise import needs_supervision, supervise

    if needs_supervision(sys.argv[1:]):  # a flow run: stopped as one process tree (see _supervise)
        fast_exit(supervise(sys.argv[1:]))
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        fast_exit(exc.code)
    fast_exit(0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
