"""Serve ``produce`` on a cron schedule from this process (no work pool needed).

::

    python -m aniso.flows.deployments --text s3://bucket/in/text/ --image s3://bucket/in/image/ \\
        --profile s3 --cron "0 3 * * *"

The same deployment for a work pool lives in ``infra/prefect.yaml`` (``prefect deploy``).
Schedules are defined here and there only, never in flow modules. Settings are resolved once,
like a CLI run (profiles, ``--config``, ``ANISO_*`` variables, ``--set``), and passed to every
scheduled run as the ``settings`` parameter; storage credentials are *not* part of them (the
settings refuse them): the serving process' environment (``AWS_*``) provides those at run time.
The deployment's entrypoint is the module path ``aniso.flows.produce:produce``, so it runs from
an installed package in any working directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from aniso.config import load_settings

from .produce import produce

__all__ = ["build_deployment", "main"]

DEFAULT_CRON = "0 3 * * *"


def settings_parameter(settings: Any) -> dict[str, Any]:
    """The settings as a JSON-able flow parameter.

    They hold no credentials (:class:`aniso.config.StorageSettings` refuses them), so nothing
    secret enters the Prefect database; a scheduled run takes credentials from its environment.
    """
    return settings.model_dump(mode="json")


def build_deployment(
    text: str, image: str, settings: Any, *, name: str = "produce-serve", cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
) -> Any:
    """A ``RunnerDeployment`` of :func:`aniso.flows.produce.produce` on a cron schedule."""
    return produce.to_deployment(
        name=name,
        entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"text": text, "image": image, "settings": settings_parameter(settings)},
        schedules=[Cron(cron, timezone=timezone)],
        tags=["aniso"],
        description=f"produce {settings.storage.dataset} on cron {cron!r} ({timezone})",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and ``serve`` the deployment until interrupted."""
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--profile")
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--cron", default=DEFAULT_CRON)
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--name", default="produce-serve")
    args = parser.parse_args(argv)
    settings = load_settings(args.profile, args.config, args.overrides)
    serve(build_deployment(args.text, args.image, settings, name=args.name, cron=args.cron, timezone=args.timezone))


if __name__ == "__main__":
    main()
