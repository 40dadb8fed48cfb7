"""The ``aniso`` commands on published data: ``show``, ``verify``, ``gc``, ``export`` (registered
on the app by :mod:`aniso.flows.cli`). Each takes the storage root as its first argument, ROOT."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from aniso.errors import AnisoError

from ._cli_common import ConfigOpt, OutOpt, ProfileOpt, RootArg, SetOpt, _configure_logging, _fail, _root, _settings
from ._output import show_summary

__all__ = ["show", "verify", "gc", "export"]


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


def gc(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="Storage root URL (local path or s3://...).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    keep: Annotated[int, typer.Option(help="Published versions to keep (the newest; LATEST's is always kept).")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would be removed.")] = False,
    min_age_hours: Annotated[float, typer.Option(help="Never remove a version published, or a run touched, more "
                                                      "recently (whatever --keep says).")] = 24.0,
    keep_version: Annotated[Optional[list[str]], typer.Option(
        "--keep-version", help="Also keep this version (repeatable), e.g. one a scheduled --model run names.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remove old published versions and the run data no kept version needs.

    Never removes the version LATEST names, a version younger than --min-age-hours, a
    --keep-version, or one a reader holds a live lease on (a training job reading it); each
    version holds its own model. --dry-run lists what would go and why.
    """
    from aniso.io.layout import DatasetLayout
    from aniso.published.retention import collect_garbage

    try:
        options = _settings(profile, config, set_).storage.fs_options()
        plan = collect_garbage(DatasetLayout(root, dataset), keep, dry_run=dry_run,
                               min_age_s=min_age_hours * 3600, storage_options=options, pinned=keep_version or ())
    except AnisoError as exc:
        _fail(exc)
    from datetime import datetime, timezone

    verb = "would remove" if dry_run else "removed"
    for url, until in plan.leased_versions.items():
        when = datetime.fromtimestamp(until, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        typer.echo(f"kept {url}: a reader holds a lease on it (until {when})")
    if dry_run:
        for url in plan.keep_versions:
            if url not in plan.leased_versions:
                typer.echo(f"{plan.reasons.get(url, 'kept')}: {url}")
    for url in plan.removals:
        gone = url in plan.already_removed
        why = plan.reasons.get(url)
        typer.echo(f"{verb} {url}" + (f" ({why})" if why else "") + (" (already removed by another gc)" if gone else ""))
    linked = (f" ({plan.bytes_still_linked / 2**20:.1f} MiB more stay linked from kept data)"
              if plan.bytes_still_linked else "")
    typer.echo(f"{dataset}: kept {len(plan.keep_versions)} version(s) and {len(plan.keep_runs)} run(s); {verb} "
               f"{len(plan.remove_versions)} version(s), {len(plan.remove_runs)} run(s), "
               f"{len(plan.remove_partial)} unfinished publication(s), {plan.bytes_freed / 2**20:.1f} MiB{linked}")


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
