"""What the ``aniso`` commands share: the option types, settings loading, one-line failures.

Kept apart from :mod:`aniso.flows.cli` (the flow-running commands) and
:mod:`aniso.flows._cli_published` (the commands on published data) so each stays short.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from aniso.errors import AnisoError, ConfigError, FailureRateExceeded, GateFailed, InputError

from ._console import configure_logging

if TYPE_CHECKING:
    from aniso.config import Settings

__all__ = ["ConfigOpt", "ProfileOpt", "SetOpt", "RootArg", "OutOpt", "DatasetOpt", "VerboseOpt", "_fail", "_root",
           "_settings", "_configure_logging", "_setting_default", "_VERBOSE"]


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
