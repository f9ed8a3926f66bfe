"""Participant reports: readable without network access, and ``--reports-only`` after a
run in which an image crashed lists that crash.

One small real run (Nipype, pybids, torch; identity experts of ``test_experts_dir``, no TTA)
of participant 02, whose ses-1 T1w is replaced by a NaN-only image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import nibabel as nb
import numpy as np
import pytest

from bids_auton2n.cli.run import main

BROKEN = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
GOOD_FIGURE = "sub-02/figures/sub-02_ses-2_desc-denoising_T2w.svg"
#: The only network resources nireports' template loads (Bootstrap, jQuery); the reports
#: must not add others, and must be readable without them.
CDN_HOSTS = ("code.jquery.com", "cdn.jsdelivr.net")


@pytest.fixture(scope="module")
def failed_run(tiny_bids, test_experts_dir, tmp_path_factory):
    """Participant level with one crashing image, then ``--reports-only`` afterwards."""
    base = tmp_path_factory.mktemp("reports")
    bids = shutil.copytree(tiny_bids, base / "bids")
    img = nb.load(bids / BROKEN)
    nb.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine).to_filename(bids / BROKEN)
    out, work = base / "out", base / "work"
    args = [str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
            "--omp-nthreads", "1", "--no-tta", "--experts-dir", str(test_experts_dir),
            "--participant-label", "02"]
    code = main(args)
    report = out / "sub-02.html"
    first_report = report.read_text()
    report.unlink()
    reports_only_code = main(args + ["--reports-only"])
    return {"out": out, "code": code, "first_report": first_report,
            "reports_only_code": reports_only_code, "report": report}


def test_reports_only_lists_the_earlier_runs_crash(failed_run):
    assert failed_run["code"] == 1
    assert failed_run["reports_only_code"] == 0
    out = failed_run["out"]
    status = json.loads(next((out / "logs").glob("status_*.json")).read_text())
    (earlier_run,) = {r["run_uuid"] for r in status}
    crash_files = list((out / "sub-02" / "log" / earlier_run).glob("crash-*"))
    assert len(crash_files) == 1
    html = failed_run["report"].read_text()
    # the errors section reads the earlier run's crash file, whose traceback names the image
    errors = html[html.index('id="errors"'):]
    assert "One or more execution steps failed (1)" in errors
    assert "sub-02_ses-1_T1w.nii.gz: image has no finite voxel" in errors
    assert crash_files[0].name in errors
    # the summary names the failed image and the run that processed it, as the first report did
    summary = html[:html.index('id="errors"')]
    assert re.search(r"Failed images</td><td>sub-02_ses-1_T1w\.nii\.gz<", summary)
    assert earlier_run in summary
    assert "No errors to report" not in html
    assert "One or more execution steps failed (1)" in failed_run["first_report"]


class _Resources(HTMLParser):
    """External scripts and stylesheets, and inline ``<style>`` ids, of an HTML page."""

    def __init__(self):
        super().__init__()
        self.external, self.style_ids = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = attrs.get("src") if tag == "script" else (
            attrs.get("href") if tag == "link" and attrs.get("rel") == "stylesheet" else None)
        if url and re.match(r"(https?:)?//", url):
            self.external.append(url)
        if tag == "style":
            self.style_ids.append(attrs.get("id"))


def test_report_html_carries_its_own_layout(failed_run):
    parser = _Resources()
    parser.feed(failed_run["report"].read_text())
    assert "auton2n-offline-style" in parser.style_ids
    assert parser.external, "nireports' template changed: revisit the offline layout"
    assert all(re.match(rf"https://({'|'.join(CDN_HOSTS)})/", url) for url in parser.external)
    # the before/after flicker is CSS inside the figure, not a script of the page
    figure = (failed_run["out"] / GOOD_FIGURE).read_text()
    assert "@keyframes flickerAnimation" in figure and "<script" not in figure
    # the participant page shows the image's quality measures, as the group page does
    assert failed_run["report"].read_text().count("Quality measures") == 1  # 1 good image


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Appended to a copy of the report: records what the offline browser computed.
_PROBE = """<script>
window.addEventListener("load", function () {
  var style = function (selector, property) {
    var element = document.querySelector(selector);
    return element ? getComputedStyle(element).getPropertyValue(property) : null;
  };
  var figure = document.querySelector("object.svg-reportlet").contentDocument;
  var foreground = figure && figure.querySelector(".flicker");
  var tiles = figure ? Array.from(figure.querySelectorAll("image")) : [];
  var residual = document.querySelector("img.svg-reportlet[src*='desc-residual']");
  document.body.setAttribute("data-probe", JSON.stringify({
    bootstrap: document.documentElement.classList.contains("bootstrap-loaded"),
    navDisplay: style(".navbar-nav", "display"),
    navPosition: style(".navbar", "position"),
    dropdownDisplay: style(".dropdown-menu", "display"),
    alertBackground: style(".alert-danger", "background-color"),
    figureWidth: document.querySelector("object.svg-reportlet").getBoundingClientRect().width,
    flicker: foreground ? getComputedStyle(foreground).animationName : null,
    tiles: tiles.length,
    smallestTile: Math.min.apply(null, tiles.map(function (t) {
      return t.getBoundingClientRect().width; })),
    tileRows: new Set(tiles.map(function (t) { return t.getAttribute("y"); })).size,
    residualLoaded: residual ? residual.naturalWidth > 0 : null
  }));
});
</script>
</body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_layout_in_offline_headless_chromium(failed_run, tmp_path):
    """Chromium with every host unresolvable: our layout applies and the flicker runs."""
    out = failed_run["out"]
    probe = tmp_path / "sub-02.html"
    probe.write_text(failed_run["report"].read_text().replace("</body>", _PROBE))
    (tmp_path / "sub-02").symlink_to(out / "sub-02")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files",
             "--window-size=1200,1600", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    probed = json.loads(found.group(1).replace("&quot;", '"'))
    assert probed["bootstrap"] is False
    assert probed["navDisplay"] == "flex"  # menu in one bar, not a bulleted list
    assert probed["navPosition"] == "sticky"
    assert probed["dropdownDisplay"] == "none"  # session/run menu opens on hover
    assert probed["alertBackground"] == "rgb(248, 215, 218)"
    assert probed["figureWidth"] > 1000
    assert probed["flicker"].startswith("flickerAnimation")
    # The static view: noisy and denoised rows of each view (2 x 3 rows of 4 cuts), then the
    # flicker row (2 layers of 3 cuts), every tile drawn at its size, not collapsed.
    assert probed["tiles"] == 2 * 3 * 4 + 2 * 3
    assert probed["tileRows"] == 2 * 3 + 1
    assert probed["smallestTile"] > 50
    assert probed["residualLoaded"] is True
