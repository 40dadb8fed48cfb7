"""The pipeline's stages as plain functions (pangeo-forge style), one module per stage.

``flows/<stage>.py`` fans a stage out over shards, ``tasks/<stage>.py`` wraps one call in a
Prefect task, and the work itself is here. Arguments and results are small values (URLs, shard
numbers, stats dicts), never whole arrays; each call is idempotent (its output is complete only
when its marker exists, and a repeated call for a completed unit is a cheap no-op). The modules:
:mod:`~aniso.stages.ingest`, :mod:`~aniso.stages.embed`, :mod:`~aniso.stages.statistics`,
:mod:`~aniso.stages.fit`, :mod:`~aniso.stages.apply`, :mod:`~aniso.stages.gate`, plus
:mod:`~aniso.stages.preflight` (checks before any work). Nothing here imports Prefect.
"""
