"""Package layout (metadata lives in pyproject.toml).

The repository keeps the orchestration code at the top level (``flows/``, ``tasks/``) and the
YAML profiles in ``conf/``; installed, they live under the project's own namespace as
``aniso.flows``, ``aniso.tasks`` and ``aniso/conf/*.yaml``, so a wheel puts nothing under a
generic top-level name. The library in ``aniso/`` itself never imports them. The data-only
folders (``aniso/demo/weights``, ``aniso/schema``) are listed as packages with their files as
package data.
"""

from setuptools import find_namespace_packages, setup

MAPPED = {"aniso.flows": "flows", "aniso.tasks": "tasks", "aniso.conf": "conf"}

setup(
    # namespace packages too: the data-only folders (aniso/demo/weights, aniso/schema) are packages
    # of their own, or setuptools warns about each on every install
    packages=[*find_namespace_packages(include=["aniso", "aniso.*"], exclude=["*.__pycache__"]), *MAPPED],
    package_dir={"aniso": "aniso", **MAPPED},
)
