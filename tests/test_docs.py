"""The documentation cites only files inside the repository, and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("aniso", "flows", "tasks", "conf", "infra", "docs", "bench") for p in (REPO / d).rglob("*")
           if p.suffix in (".py", ".md", ".yaml", ".yml") and "__pycache__" not in p.parts] + [REPO / "README.md"]


@pytest.mark.parametrize("name", ["architecture.md", "storage.md", "method.md", "diagnostics.md"])
def test_docs_pages_exist_and_link_to_existing_files(name):
    page = (REPO / "docs" / name).read_text()
    assert page.startswith("# ")
    for target in re.findall(r"\]\(([^)#]+)\)", page):
        if "://" not in target:
            assert (REPO / "docs" / target).exists(), f"docs/{name} links to missing {target}"
    for path in re.findall(r"`((?:aniso|flows|tasks|conf|infra|bench|docs)/[\w./-]+\.(?:py|md|yaml))`", page):
        assert (REPO / path).exists(), f"docs/{name} names missing {path}"


def test_nothing_points_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in SOURCES
                 if re.search(r"DESIGN\.md|method-spec|prior-art\.md|\.\./shared/(?!data)", p.read_text(errors="replace"))]
    assert offenders == []


def test_every_reported_metric_has_a_meaning():
    from aniso.quality.diagnostics import METRIC_ORDER
    from aniso.quality.metric_info import METRICS

    missing = [m for m in [*METRIC_ORDER, "gap_before", "knn_overlap_10", "row_count", "unit_norm"] if m not in METRICS]
    assert missing == []
    page = (REPO / "docs" / "diagnostics.md").read_text()
    assert all(f"`{m}`" in page for m in METRIC_ORDER if not m.endswith("_baseline"))


def test_the_readme_make_targets_exist_and_ci_runs_make_test():
    """`make demo`, `make test` and `make check` as the README describes them."""
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"`make (\w+)`", readme):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names make {target}, the Makefile has no such target"
    check = re.search(r"^check:.*\n\t(.+)$", makefile, re.M).group(1)
    assert '-m "not slow and not flow"' in check  # what the README says make check leaves out
    assert re.search(r"^\s*make test\s*$", (REPO / ".ci" / "run").read_text(), re.M)


def test_make_test_installs_chromium_when_it_can_and_never_fails_on_it(tmp_path):
    """`make test` depends on `make browser` (`make check` does not); where Chromium can be neither
    found nor installed (no root, no apt-get: an empty PATH) the target says so and succeeds."""
    import shutil
    import subprocess

    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\bbrowser\b", makefile, re.M)
    assert not re.search(r"^check:.*\bbrowser\b", makefile, re.M)
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on PATH")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    run = subprocess.run([make, "-s", "-C", str(REPO), "browser", f"CHROMIUM={tmp_path / 'absent' / 'chromium'}"],
                         env={"PATH": str(empty)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "chromium not installed: the browser test will skip" in run.stdout
