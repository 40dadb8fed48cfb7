"""Package layout (metadata lives in pyproject.toml).

The repository keeps the orchestration code at the top level (``flows/``, ``tasks/``) and the
YAML profiles in ``conf/``; installed, they live under the project's own namespace as
``aniso.flows``, ``aniso.tasks`` and ``aniso/conf/*.yaml``, so a wheel puts nothing under a
generic top-level name. The library in ``aniso/`` itself never imports them.
"""

from setuptools import find_packages, setup

MAPPED = {"aniso.flows": "flows", "aniso.tasks": "tasks", "aniso.conf": "conf"}

setup(
    packages=[*find_packages(include=["aniso", "aniso.*"]), *MAPPED],
    package_dir={"aniso": "aniso", **MAPPED},
)
