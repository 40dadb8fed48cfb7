"""The run report in a real headless browser (Chromium from Debian's packages): a screenshot of
the page has the window's size and real content, and the rendered DOM holds the opening verdicts,
the four plots and their captions.

Skipped where ``/usr/bin/chromium`` is absent (``make test`` installs it when it can: root and
apt-get). Chromium runs with its own profile, home and caches under the test's ``tmp_path`` and
with background networking off; on a timeout only the process group it started is killed.
"""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from aniso.quality.report import write_report
from aniso.quality.report_verdict import PLOT_CAPTIONS, verdicts

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 2000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no /usr/bin/chromium (apt-get install chromium; make test does when it can)")


def _chromium(tmp: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium once with a fresh profile under ``tmp``; returns its stdout.

    The flags keep it off the network (no background networking, component updates, sync or
    QUIC) so a closed network is not flooded with retries.
    """
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    home = profile / "home"
    home.mkdir(parents=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile / 'data'}", f"--window-size={WIDTH},{HEIGHT}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group: ours to kill, and nothing else
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {timeout} s: {' '.join(cmd)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


@pytest.fixture
def report(gap, tmp_path) -> tuple[Path, dict]:
    """A real report (small samples, one failed gate, the raw-text and baseline references)."""
    from test_report import _gates, _shards

    text, image = gap.text[:300], gap.image[:300]
    gates = _gates(passed=False)
    gates["metrics"].update({"domain_acc": 0.709, "mmd2": 0.05, "knn_overlap@10": 0.8})
    references = {"raw text": {"domain_acc": 0.99, "mmd2": 0.9},
                  "baseline (centroid shift)": {"domain_acc": 0.759, "mmd2": 0.02, "centroid_residual": 1e-5}}
    write_report(str(tmp_path / "quality"), gates, _shards(), text=text, subs=0.5 * text + image, image=image,
                 title="aniso browser check", references=references)
    import json

    content = json.loads((tmp_path / "quality" / "report.json").read_text())
    return tmp_path / "quality" / "report.html", content


def test_report_screenshot_has_the_window_size_and_real_content(report, tmp_path):
    from PIL import Image

    page, _ = report
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (WIDTH, HEIGHT)
        rgb = img.convert("RGB")
    colours = rgb.getcolors(maxcolors=WIDTH * HEIGHT)
    counts = {c: n for n, c in colours}
    white = counts.get((255, 255, 255), 0)
    assert len(counts) >= 50, f"{len(counts)} distinct colours: a blank page"
    assert 1 - white / (WIDTH * HEIGHT) > 0.05, f"{white / (WIDTH * HEIGHT):.1%} of the page is white"
    # the plots were drawn: the gap plot's bars are solid runs of the before/after colours
    for name, hex_colour in (("before", "#1f77b4"), ("after", "#2ca02c")):
        rgb_colour = tuple(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))
        assert counts.get(rgb_colour, 0) > 500, f"the {name} bar ({hex_colour}) is not on the screenshot"


def test_rendered_dom_holds_the_verdicts_plots_and_captions(report, tmp_path):
    page, content = report
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert "FAILED" in dom and dom.count("<svg") == 4
    opening = re.search(r'<ul class="verdict">(.*?)</ul>', dom, re.S).group(1)
    items = [html.unescape(i) for i in re.findall(r"<li>(.*?)</li>", opening, re.S)]
    assert items == verdicts(content) and any("for the centroid shift" in i for i in items)
    captions = [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", dom, re.S)]
    assert captions == list(PLOT_CAPTIONS)
