"""The ``aniso`` command line (typer). It lives with the flows because it runs them; the
library in :mod:`aniso` stays orchestrator-free.

Exit codes: 0 success · 1 other aniso error · 2 bad input or settings · 3 a gate failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
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

from aniso.errors import AnisoError, ConfigError, FailureRateExceeded, GateFailed, InputError  # noqa: E402
from aniso.methods.table import METHODS  # noqa: E402

if TYPE_CHECKING:  # settings (pydantic), Prefect and the library load only when a command runs,
    from aniso.config import Settings  # so ``aniso --help`` stays fast


from ._console import configure_logging, install_help_style, notice, progress_display  # noqa: E402
from ._output import DIAGNOSE_FORMATS, diagnose_output, result_lines, show_summary  # noqa: E402
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


def _setting_default(path: str) -> str:
    """What a setting is when its option is not given, as ``conf/default.yaml`` sets it (read
    with PyYAML only, so ``--help`` stays fast; a profile or environment variable may differ)."""
    try:
        if _DEFAULTS[0] is None:
            import yaml

            import aniso

            package = Path(aniso.__file__).resolve().parent
            conf = package / "conf" if (package / "conf" / "default.yaml").exists() else package.parent / "conf"
            _DEFAULTS[0] = yaml.safe_load((conf / "default.yaml").read_text()) or {}
        value: object = _DEFAULTS[0]
        for part in path.split("."):
            value = value[part]  # type: ignore[index]
        return f"(default: {value}, from {path} in the profile)"
    except Exception:  # noqa: BLE001 - help must print whatever the files hold
        return f"(default: the profile's {path})"


_DEFAULTS: list = [None]

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML settings file layered over the profile.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="conf/<profile>.yaml (default, local, s3, ci). "
                                                                    "(default: $ANISO_PROFILE, else default)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.field=value (repeatable).")]
RootArg = Annotated[Optional[str], typer.Argument(metavar="ROOT", help="Storage root URL (local path or s3://...).", show_default=False)]
OutOpt = Annotated[Optional[str], typer.Option(help="The storage root, as ROOT (kept for compatibility).")]
DatasetOpt = Annotated[Optional[str], typer.Option(help=f"Dataset name under the root. {_setting_default('storage.dataset')}")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also log each step (aniso, Prefect, Dask) at INFO.")]


def _fail(exc: BaseException) -> None:
    """Print a one-line reason and exit with the code of its error class.

    An ``OSError`` (disk full, permission denied, ...) from storage is not bad input: exit 1,
    with its reason and file; a rerun resumes once it is fixed.
    """
    code = 3 if isinstance(exc, GateFailed) else 2 if isinstance(exc, (InputError, ConfigError, FailureRateExceeded)) else 1
    reason = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, AnisoError):
        where = f": {exc.filename}" if exc.filename else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        errno = f" (errno {exc.errno})" if exc.errno is not None else ""
        reason = f"{what}{where}{errno}; fix it and rerun: the run resumes"
    typer.echo(f"aniso: error: {' '.join(reason.split())}", err=True)
    raise typer.Exit(code)


def _root(root: str | None, out: str | None, command: str, *, required: bool = False) -> str | None:
    """The storage root of a command: its ROOT argument, or ``--out`` (the earlier spelling)."""
    if root is not None and out is not None and root != out:
        typer.echo(f"aniso: error: ROOT {root} and --out {out} name two storage roots; give one", err=True)
        raise typer.Exit(2)
    given = root if root is not None else out
    if given is None and required:
        typer.echo(f"aniso: error: aniso {command} needs the storage root: aniso {command} ROOT ...", err=True)
        raise typer.Exit(2)
    return given


def _settings(profile: str | None, config: Path | None, overrides: list[str] | None, **fields: str | None) -> Settings:
    """The settings, with each given option (``{"storage.root": out, ...}``) as a typed value."""
    from aniso.config import load_settings

    options: dict[str, dict[str, str]] = {}
    for dotted, value in fields.items():
        if value is not None:
            section, name = dotted.split(".")
            options.setdefault(section, {})[name] = value
    return load_settings(profile=profile, config_file=config, overrides=overrides or [], options=options)


def _configure_logging(verbose: bool) -> None:
    configure_logging(verbose)
    _VERBOSE[0] = verbose


_VERBOSE = [False]


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
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Embeddings in → substitutes gated and published (the whole job)."""
    _configure_logging(verbose)
    from aniso._fs import redact_url

    _announce("produce", f"text {redact_url(text)} + image {redact_url(image)} -> statistics (or embed), fit, apply, "
                         "gates, publish")
    try:
        settings = _settings(profile, config, set_, **{"storage.root": _root(root, out, "produce"),
                                                       "storage.dataset": dataset, "method.name": method})
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
    from aniso.flows.embed import embed as embed_flow

    out = _root(root, out, "embed", required=True)
    _configure_logging(verbose)
    if (text is None) == (images is None):
        typer.echo("aniso: error: give exactly one of --text or --images", err=True)
        raise typer.Exit(2)
    try:
        settings = _settings(profile, config, set_, **{"storage.root": out, "storage.dataset": dataset,
                                                       "embed.model": model, "embed.pretrained": pretrained})
        notice("embed: %s corpus %s with %s -> %s/%s", "text" if text else "image", text or images,
               settings.embed.model, settings.storage.root, settings.storage.dataset)
        flow = flow_with_runner(embed_flow, settings, verbose=_VERBOSE[0])
        announce_start(settings)
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


@app.command()
def show(
    root: RootArg = None,
    out: OutOpt = None,
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "demo",
    version: Annotated[Optional[str], typer.Option(help="Published version (default: LATEST).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full manifest as JSON (what a training team reads).")] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Summarise a published version: rows, method, gates, where the data and the report are."""
    from aniso.published.dataset import open_published

    root = _root(root, out, "show", required=True)
    _configure_logging(False)
    try:
        options = _settings(profile, config, set_).storage.fs_options()
        # reads the manifest only: no lease
        published = open_published(root, dataset, version=version, storage_options=options, lease_s=None)
    except AnisoError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(published.manifest, indent=2, sort_keys=True, default=str))
        return
    from aniso._fs import exists, join_url

    version_dir = join_url(root, dataset, "published", str(published.manifest.get("version", "")))
    report = join_url(version_dir, "report.html")
    typer.echo("\n".join(show_summary(published.manifest, root, dataset, report if exists(report, options) else None)))


@app.command()
def verify(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="Storage root URL (local path or s3://...).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    version: Annotated[Optional[str], typer.Option(help="Published version (default: LATEST).")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check every shard of a published version against its manifest checksums.

    Exit 0 when intact; 3 when damaged: each damaged shard named with its rows, a manifest that
    does not describe its arrays (shards not tiling the rows, wrong counts, dtype or geometry), or
    a corrupt LATEST (also one naming a version that does not exist); 2 when nothing is published
    or --version names no published version, or for bad settings; 1 otherwise.
    """
    from aniso.errors import StoreCorrupt, StoreNotFound
    from aniso.published.dataset import open_published

    published = None
    try:
        options = _settings(profile, config, set_).storage.fs_options()
        published = open_published(root, dataset, version=version, storage_options=options)
        problems = published.problems()
    except StoreCorrupt as exc:
        typer.echo(f"aniso: damaged: {exc}", err=True)
        raise typer.Exit(3) from None
    except StoreNotFound as exc:  # what the command was asked to check does not exist
        typer.echo(f"aniso: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except AnisoError as exc:
        _fail(exc)
    finally:
        if published is not None:
            published.close()
    manifest = published.manifest
    if problems:
        for line in problems:
            typer.echo(f"aniso: damaged: {line}", err=True)
        typer.echo(f"{dataset} version {manifest['version']}: {len(problems)} of {len(manifest['shards'])} "
                   "shard(s) damaged", err=True)
        raise typer.Exit(3)
    typer.echo(f"{dataset} version {manifest['version']}: {len(manifest['shards'])} shard(s), "
               f"{manifest['n_rows']} rows verified against the manifest checksums")


@app.command()
def gc(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="Storage root URL (local path or s3://...).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    keep: Annotated[int, typer.Option(help="Published versions to keep (the newest; LATEST's is always kept).")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would be removed.")] = False,
    min_age_hours: Annotated[float, typer.Option(help="Never remove runs touched more recently (runs in progress).")] = 24.0,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remove old published versions and the run data no kept version needs.

    Versions a reader holds a live lease on (a training job reading them) are kept, and named.
    """
    from aniso.io.layout import DatasetLayout
    from aniso.published.retention import collect_garbage

    try:
        options = _settings(profile, config, set_).storage.fs_options()
        plan = collect_garbage(DatasetLayout(root, dataset), keep, dry_run=dry_run,
                               min_age_s=min_age_hours * 3600, storage_options=options)
    except AnisoError as exc:
        _fail(exc)
    from datetime import datetime, timezone

    verb = "would remove" if dry_run else "removed"
    for url, until in plan.leased_versions.items():
        when = datetime.fromtimestamp(until, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        typer.echo(f"kept {url}: a reader holds a lease on it (until {when})")
    for url in plan.removals:
        gone = url in plan.already_removed
        typer.echo(f"{verb} {url}" + (" (already removed by another gc)" if gone else ""))
    linked = (f" ({plan.bytes_still_linked / 2**20:.1f} MiB more stay linked from kept data)"
              if plan.bytes_still_linked else "")
    typer.echo(f"{dataset}: kept {len(plan.keep_versions)} version(s) and {len(plan.keep_runs)} run(s); {verb} "
               f"{len(plan.remove_versions)} version(s), {len(plan.remove_runs)} run(s), "
               f"{len(plan.remove_partial)} unfinished publication(s), {plan.bytes_freed / 2**20:.1f} MiB{linked}")


@app.command()
def export(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="Storage root URL (local path or s3://...).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    out: Annotated[str, typer.Option(help="Where to write the export (local path or s3://...).")],
    format_: Annotated[str, typer.Option("--format", help="clip-retrieval (float16 .npy + metadata parquet) or webdataset (tars).")],
    version: Annotated[Optional[str], typer.Option(help="Published version (default: LATEST).")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export a published version (streaming, resumable, each part verified after writing).

    An --out folder holds one export: a folder that holds another version's, dataset's or format's
    export, or that overlaps the dataset folder, is refused (exit 2) before anything is written.
    A damaged export, or one beside part files it does not list, exits 3.
    """
    from aniso.published.export import export_published, verify_export

    try:
        options = _settings(profile, config, set_).storage.fs_options()
        manifest = export_published(root, dataset, out, format_, version=version, storage_options=options)  # type: ignore[arg-type]
        problems = verify_export(out, options)
    except AnisoError as exc:
        _fail(exc)
    if problems:
        for line in problems:
            typer.echo(f"aniso: damaged: {line}", err=True)
        raise typer.Exit(3)
    typer.echo(f"exported {dataset} version {manifest['version']} as {format_}: {manifest['rows']} rows in "
               f"{len(manifest['parts'])} part(s) ({manifest['skipped_invalid_rows']} invalid rows skipped), "
               f"verified\n  {out}")


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
