"""The pages people open, after a mini Snakemake run (qata 10 %, Semi-MedRef, tiny params; ~1.5 min on 2 cores):

- `snakemake --report report.html` holds the study (tables and verdicts page, figure), the learning curves, the
  overlays and histogram, and the Dice vs fraction figure, each with its caption;
- in a real browser (Debian's headless chromium, over the DevTools protocol): reports/index.html and report.html
  from file://, every <img> loaded (naturalWidth > 0), no broken relative link or anchor, every verdict of the
  study present; full-page screenshots at a phone (390 px) and a desktop (1366 px) width go to reports/screenshots/
  (``MEDREF_SCREENSHOTS`` to put them elsewhere), the CI artefact. Without chromium the browser test skips.

    .venv/bin/python -m pytest -q tests/test_report_pages.py
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.browser import Browser, find_chromium
from tests.pipeline_utils import REPO, make_scratch_repo, run, tool

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("MEDREF_SCREENSHOTS") or REPO / "reports" / "screenshots")
WIDTHS = {"phone": 390, "desktop": 1366}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    repo = make_scratch_repo(tmp_path_factory.mktemp("pages") / "repo", regimes=["qata_10pct"])
    run([tool("snakemake"), "--cores", "2", "all"], repo)
    run([tool("snakemake"), "--cores", "1", "--report", "report.html"], repo)
    return repo


def _verdicts(repo: Path) -> list[str]:
    v = [t["verdict"] for t in json.loads((repo / "studies" / "qata.json").read_text())["verdicts"].values()]
    assert v, "the mini study has no falsification tests"
    return v


def _report_data(page: str, name: str) -> dict:
    """The JSON object a Snakemake report assigns to ``var <name> = {...};``."""
    start = page.index(f"var {name} = {{") + len(f"var {name} = ")  # not the vendored libraries' own `var results`
    obj, _ = json.JSONDecoder().raw_decode(page[start:])
    return obj


def test_snakemake_report_holds_studies_curves_and_overlays(mini):
    page = (mini / "report.html").read_text()
    results, categories = _report_data(page, "results"), _report_data(page, "categories")
    assert set(categories) == {"Studies", "Learning curves", "Samples", "Summary"}, categories
    assert set(categories["Studies"]["qata"]) == {"reports/studies/qata.html", "studies/qata/dice_vs_fraction.png"}
    assert categories["Learning curves"] == {"qata_10pct": ["reports/curves/qata_10pct.png"]}
    assert {"eval/qata_10pct/overlays/best_0.png", "eval/qata_10pct/dice_hist.png"} <= set(
        categories["Samples"]["qata_10pct"])
    assert all(r["caption"].strip() for r in results.values()), "every result has a caption"
    assert "DVCLive" in results["reports/curves/qata_10pct.png"]["caption"]
    # the study page: its tables and every verdict, images inlined (the report embeds it alone)
    study = base64.b64decode(results["reports/studies/qata.html"]["data_uri"].split(",", 1)[1]).decode()
    assert "Paired deltas" in study and 'src="data:image/png;base64,' in study
    for v in _verdicts(mini):
        assert v in study


def _check_page(b: Browser, url: str) -> dict:
    """Every image loaded, every link resolves, and the page's text; at both widths, with a screenshot each."""
    out = {}
    for label, width in WIDTHS.items():
        b.open(url, width=width)
        imgs = b.eval("Array.from(document.images).map(i => [i.currentSrc.slice(0, 120), i.complete, i.naturalWidth])")
        bad = [i for i in imgs if not (i[1] and i[2] > 0)]
        assert imgs and not bad, f"{url} at {width}px: images not loaded: {bad}"
        links = b.eval("Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href])")
        for raw, resolved in links:
            if raw.startswith("#"):
                assert b.eval(f"document.getElementById({json.dumps(unquote(raw[1:]))}) !== null"), f"anchor {raw}"
            elif resolved.startswith("file://"):
                target = Path(unquote(urlparse(resolved).path))
                assert target.exists(), f"{url}: link {raw} -> {target} does not exist"
        wide = b.eval("document.documentElement.scrollWidth")
        assert wide <= width + 1, f"{url} at {width}px is {wide}px wide: something does not scroll in its own box"
        out[label] = b.eval("document.body.innerText")
        name = Path(urlparse(url).path).stem
        b.screenshot(SHOTS / f"{name}-{label}-{width}px.png")
    assert not b.exceptions(), b.exceptions()
    return out


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on this machine (.ci/run installs it: "
                    "apt-get install chromium chromium-driver); the pages are still checked without a browser")
def test_pages_in_a_real_browser(mini):
    verdicts = _verdicts(mini)
    with Browser() as b:
        text = _check_page(b, (mini / "reports" / "index.html").as_uri())
        for v in verdicts:
            assert v in text["desktop"] and v in text["phone"], v
        assert "Learning curves" in text["desktop"] and "Provenance of each row" in text["desktop"]

        # Snakemake's report is one app: each result is shown by the app itself; every one must display
        b.open((mini / "report.html").as_uri(), width=WIDTHS["desktop"])
        assert b.eval("Object.keys(categories).sort()") == ["Learning curves", "Samples", "Studies", "Summary"]
        results = b.eval("Object.fromEntries(Object.entries(results).map(([k, r]) => [k, r.mime_type]))")
        for path, mime in results.items():
            kind = "img" if mime.startswith("image/") else "html"
            b.eval(f"app.setView({{content: '{kind}', contentPath: results[{json.dumps(path)}].data_uri, "
                   f"resultPath: {json.dumps(path)}}})")
            if kind == "img":
                ok = b.eval("new Promise(r => setTimeout(() => r(Array.from(document.images).filter(i => "
                            "i.src.startsWith('data:')).map(i => i.complete && i.naturalWidth > 0)), 300))")
                assert ok and all(ok), f"report.html: {path} not displayed"
        b.eval("app.showCategory('Studies')")
        b.eval("app.setView({content: 'html', contentPath: results['reports/studies/qata.html'].data_uri, "
               "resultPath: 'reports/studies/qata.html'})")
        b.eval("new Promise(r => setTimeout(r, 500))")
        b.screenshot(SHOTS / f"snakemake-report-desktop-{WIDTHS['desktop']}px.png")
        assert not b.exceptions(), b.exceptions()
    assert sorted(p.name for p in SHOTS.glob("index-*.png")) == ["index-desktop-1366px.png", "index-phone-390px.png"]
