"""Quality gates of a run, validated with great-expectations 1.x.

The gates read two small tables, never the raw embeddings:

* ``shard_stats``: one row per substitutes shard, computed while apply had the shard in memory
  (:func:`aniso.stages.apply.shard_quality`): row counts, non-finite rows, norm extremes, id checks;
* ``run_metrics``: one row for the run: the centroid residual (from the shards' vector sums),
  and semantic preservation (kNN overlap@10, pairwise-cosine Spearman) on a deterministic sample
  of text rows versus their substitutes, plus distribution compatibility against a sample of
  image rows (reported, not gated).

The expectation suites are data (``conf/gates.yaml``); bounds written ``"{field}"`` there come
from :class:`aniso.config.GateSettings`. Each run builds an *ephemeral* GX context (nothing is
persisted, so reruns never hit "already exists"), a pandas datasource with one dataframe asset
per table, one suite per table and a checkpoint over both. Every expectation yields a
:class:`GateResult` with its observed value and bound; publication happens only when all pass.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aniso.config import CONF_DIR, GateSettings, read_yaml
from aniso.errors import ConfigError
from aniso.quality.gate_metrics import (  # noqa: F401 - public here too
    SHARD_COLUMNS,
    centroid_metrics,
    sample_metrics,
    shard_table,
)

__all__ = [
    "GateResult",
    "GateReport",
    "GateSuites",
    "load_suites",
    "shard_table",
    "centroid_metrics",
    "sample_metrics",
    "evaluate_gates",
    "TABLES",
]

logger = logging.getLogger(__name__)

#: The tables a suite may validate, in evaluation order.
TABLES = ("shard_stats", "run_metrics")



@dataclass(frozen=True)
class GateResult:
    """One expectation's outcome.

    Attributes
    ----------
    name
        The expectation's name in the suite (what a failure reports).
    observed
        The observed value (a number, or the count of offending rows for per-row checks).
    bound
        The bound as text, e.g. ``"<= 0.001"`` or ``"== 3000"``.
    passed
        Whether the expectation held.
    table, expectation
        The validated table and the GX expectation type.
    """

    name: str
    observed: Any
    bound: str
    passed: bool
    table: str = ""
    expectation: str = ""


@dataclass
class GateReport:
    """All gate results of a run, with the metrics they were computed from."""

    results: list[GateResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.results)} gates passed"
        return "; ".join(f"{r.name}: observed {r.observed}, required {r.bound}" for r in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "results": [{k: _json_safe(v) for k, v in asdict(r).items()} for r in self.results],
            "metrics": {k: _json_safe(v) for k, v in self.metrics.items()},
            "seconds": self.seconds,
        }


# -- suites as data -------------------------------------------------------------------------
@dataclass(frozen=True)
class GateSuites:
    """The expectation suites read from YAML: ``{table: [{name, type, kwargs}, ...]}``."""

    suites: dict[str, list[dict[str, Any]]]
    reported: tuple[str, ...] = ()
    source: str = ""

    def summary_metrics(self) -> list[str]:
        """The run metrics a run's summary shows: those the ``run_metrics`` suite gates, then the
        ``reported`` ones (distribution metrics and sample sizes, shown but never gated)."""
        gated = [item["kwargs"]["column"] for item in self.suites.get("run_metrics", [])
                 if isinstance(item.get("kwargs"), dict) and "column" in item["kwargs"]]
        return list(dict.fromkeys([*gated, *self.reported]))

    def resolved(self, values: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """The suites with every ``"{field}"`` kwarg replaced by ``values[field]``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for table, items in self.suites.items():
            out[table] = []
            for item in items:
                kwargs = {k: _fill(v, values, f"{self.source}: {item['name']}.{k}") for k, v in item["kwargs"].items()}
                out[table].append({**item, "kwargs": kwargs})
        return out


def _fill(value: Any, values: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        key = value[1:-1].strip()
        if key not in values:
            raise ConfigError(f"{where}: unknown bound {value!r} (known: {', '.join(sorted(values))})")
        return values[key]
    return value


def preload_in_background() -> threading.Thread:
    """Start importing great-expectations in a daemon thread.

    The import takes seconds; a pipeline calls this when it starts so that the gate stage, which
    needs it last, does not pay for it on the critical path. Started once per process (a second
    call returns the running thread).
    """
    global _PRELOAD
    _quiet_gx_imports()
    with _PRELOAD_LOCK:  # once per process: the CLI starts it first, the flow finds it running
        if _PRELOAD is None:
            _PRELOAD = threading.Thread(target=importlib.import_module, args=("great_expectations",),
                                        daemon=True, name="aniso-preload-gates")
            _PRELOAD.start()
        return _PRELOAD


_PRELOAD: threading.Thread | None = None
_PRELOAD_LOCK = threading.Lock()


def _quiet_gx_imports() -> None:
    """great-expectations logs dozens of "Skipping registering function" lines at INFO while its
    modules import; a verbose run's log is for the run, not for them."""
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    logging.getLogger("great_expectations.expectations.registry").setLevel(logging.WARNING)


def load_suites(path: str | Path | None = None) -> GateSuites:
    """Read and check a suites file (default ``conf/gates.yaml``).

    Raises
    ------
    ConfigError
        When the file is missing or malformed, or names an unknown table or expectation type.
    """
    import great_expectations as gx

    path = Path(path) if path else CONF_DIR / "gates.yaml"
    data = read_yaml(path, what="gate suites file")
    suites = data.get("suites")
    if not isinstance(suites, dict) or not suites:
        raise ConfigError(f"{path}: expected a non-empty 'suites' mapping of table -> expectations")
    seen: set[str] = set()
    for table, items in suites.items():
        if table not in TABLES:
            raise ConfigError(f"{path}: unknown table {table!r} (tables: {', '.join(TABLES)})")
        if not isinstance(items, list):
            raise ConfigError(f"{path}: suite {table!r} must be a list of expectations")
        for item in items:
            if not isinstance(item, dict) or not {"name", "type"} <= set(item):
                raise ConfigError(f"{path}: every expectation of {table!r} needs 'name' and 'type': {item!r}")
            item.setdefault("kwargs", {})
            if item["name"] in seen:
                raise ConfigError(f"{path}: expectation name {item['name']!r} is used twice")
            seen.add(item["name"])
            if _expectation_class(gx, item["type"]) is None:
                raise ConfigError(f"{path}: {item['name']!r} has unknown expectation type {item['type']!r}")
    return GateSuites(suites, tuple(data.get("reported") or ()), str(path))


def _expectation_class(gx: Any, type_name: str) -> type | None:
    camel = "".join(part.capitalize() for part in str(type_name).split("_"))
    return getattr(gx.expectations, camel, None)


# -- evaluation -----------------------------------------------------------------------------
def evaluate_gates(
    shards: pd.DataFrame,
    metrics: Mapping[str, Any],
    *,
    expected_rows: int,
    settings: GateSettings,
    suites: GateSuites | None = None,
    validator: GateValidator | None = None,
) -> GateReport:
    """Validate the shard table and the one-row run-metrics table with great-expectations.

    Parameters
    ----------
    shards
        :func:`shard_table` of the run.
    metrics
        The run's metrics (:func:`centroid_metrics` and :func:`sample_metrics` merged); the
        columns a suite names must be present.
    expected_rows
        Valid text rows in the input: the substitutes must have exactly as many.
    settings
        Bounds (``"{field}"`` in the suites) and the suites file.
    suites
        Pre-loaded suites (default: ``settings.suite_file`` or ``conf/gates.yaml``).
    validator
        A :class:`GateValidator` built ahead for the same settings and ``expected_rows``
        (built here otherwise).

    Returns
    -------
    GateReport
        One result per expectation, in suite order. An expectation whose observed value is
        missing or NaN fails (a metric that could not be computed never passes a gate).
    """
    started = time.perf_counter()
    if validator is None or not validator.serves(settings, expected_rows, suites):
        validator = GateValidator(settings, expected_rows=expected_rows, suites=suites)
    resolved = validator.resolved
    frames = {
        "shard_stats": shards,
        "run_metrics": pd.DataFrame([{k: _cell(v) for k, v in metrics.items()}]),
    }
    for table, items in resolved.items():
        missing = sorted({i["kwargs"]["column"] for i in items if "column" in i["kwargs"]} - set(frames[table].columns))
        if missing:
            raise ConfigError(f"{validator.source}: table {table!r} has no column(s) {', '.join(missing)}")
    gx_results = validator.run(frames)
    results = []
    for table, items in resolved.items():
        for item, res in zip(items, gx_results[table]):
            observed = _observed(res.result)
            passed = bool(res.success) and _is_number_or_bool(observed)
            results.append(GateResult(item["name"], observed, _bound(item["kwargs"]), passed, table, item["type"]))
    report = GateReport(results, dict(metrics), time.perf_counter() - started)
    for r in report.failures:
        logger.warning("gate %s failed: observed %s, required %s", r.name, r.observed, r.bound)
    logger.info("gates: %s (%.2f s)", report.summary(), report.seconds)
    return report


class GateValidator:
    """The great-expectations side of the gates, built before there is anything to validate.

    Building the ephemeral context, its data assets, suites and validation definitions depends
    only on the suites, the settings and the expected row count; ``produce`` builds it while the
    substitutes are still being written, and :meth:`run` validates the tables afterwards.
    """

    def __init__(self, settings: GateSettings, *, expected_rows: int, suites: GateSuites | None = None) -> None:
        _quiet_gx_imports()
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        suites = suites or load_suites(settings.suite_file)
        self.source = suites.source
        self.expected_rows = int(expected_rows)
        self.values = {**settings.model_dump(), "expected_rows": self.expected_rows}
        self.resolved = suites.resolved(self.values)
        # An ephemeral context announces its temporary docs folder at INFO on every validation.
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        data = context.data_sources.add_pandas("aniso")
        self._definitions = []
        for table, items in self.resolved.items():
            batch = data.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(table)
            suite = context.suites.add(gx.ExpectationSuite(name=f"aniso-{table}"))
            for item in items:
                cls = _expectation_class(gx, item["type"])
                suite.add_expectation(cls(**item["kwargs"], meta={"name": item["name"]}))
            self._definitions.append(
                (table, context.validation_definitions.add(gx.ValidationDefinition(name=f"aniso-{table}", data=batch,
                                                                                  suite=suite))))

    def serves(self, settings: GateSettings, expected_rows: int, suites: GateSuites | None = None) -> bool:
        """Was this validator built for these settings, row count and suites?"""
        same_suites = suites is None or suites.source == self.source
        return same_suites and self.values == {**settings.model_dump(), "expected_rows": int(expected_rows)}

    def run(self, frames: dict[str, pd.DataFrame]) -> dict[str, list[Any]]:
        """Each suite's results on its table, in suite order."""
        out: dict[str, list[Any]] = {}
        for table, definition in self._definitions:
            result = definition.run(batch_parameters={"dataframe": frames[table]}, result_format="SUMMARY")
            by_name = {r.expectation_config.meta.get("name"): r for r in result.results}
            out[table] = [by_name[item["name"]] for item in self.resolved[table]]
        return out


def _observed(result: Mapping[str, Any]) -> Any:
    if "observed_value" in result:
        return _plain(result["observed_value"])
    if "unexpected_count" in result:  # per-row expectations: how many rows offend
        return int(result["unexpected_count"])
    return None


def _is_number_or_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (int, float)) and math.isfinite(value)


def _bound(kwargs: Mapping[str, Any]) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None and hi is not None:
        return f"== {_fmt(lo)}" if lo == hi else f"in [{_fmt(lo)}, {_fmt(hi)}]"
    if lo is not None:
        return f">= {_fmt(lo)}"
    if hi is not None:
        return f"<= {_fmt(hi)}"
    if "value_set" in kwargs:
        return f"in {list(kwargs['value_set'])}"
    if "value" in kwargs:
        return f"== {_fmt(kwargs['value'])}"
    return "holds"


def _fmt(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) >= 1 else str(value)


def _cell(value: Any) -> Any:
    value = _plain(value)
    return float("nan") if value is None else value


def _json_safe(value: Any) -> Any:
    """Like :func:`_plain`, with NaN/Inf as the strings ``"nan"``/``"inf"`` (strict JSON)."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars (JSON-able)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
