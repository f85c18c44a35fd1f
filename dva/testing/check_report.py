"""``make check-report``: a demo report looked at by a real browser (headless Chromium).

Makes a small run with dva's bundled tiny model (three bundled phantoms, one unreadable input so
the failed list shows), then opens its ``report.html`` from the file system in headless Chromium at several
window widths and fails on console errors, uncaught exceptions, broken images (``naturalWidth`` 0), maps the
page could not paint, or horizontal overflow (``scrollWidth`` above ``innerWidth``). Screenshots at 1280 and
1920 px go to the output folder for a person to look at.

How the page is inspected without a driver library: a copy of the report (in a temporary folder, its relative
addresses kept by a ``<base>`` element) gets a first script that records errors as they happen and, once the
page has loaded and its controls have been used (threshold, swipe, blink, sort), writes its findings as JSON
into the DOM; Chromium's ``--dump-dom`` prints that DOM. ``--virtual-time-budget`` lets the page's timers run
before the dump.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHECK_WIDTHS = (800, 1280, 1920)
SCREENSHOT_WIDTHS = (1280, 1920)
WINDOW_HEIGHT = 1000
CHROMIUM_TIMEOUT_S = 120
INSTALL_HINT = ("Chromium is needed for make check-report: install Debian's package (sudo apt-get install -y "
                "chromium) or put a chromium, chromium-browser or google-chrome on PATH.")

# Runs first in the page: collects errors, then exercises the controls and reports what it found.
PROBE = """<script>
"use strict";
window.dvaCheck = {errors: []};
window.addEventListener("error", event => {
  const target = event.target;
  const what = target && target !== window && (target.src || target.href);
  dvaCheck.errors.push(what ? "failed to load " + what : String(event.message));
}, true);
// Every image is checked, not only those near the top: lazy ones load now.
document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("img").forEach(i => { i.loading = "eager"; }));
window.addEventListener("unhandledrejection", event => dvaCheck.errors.push("unhandled rejection: " + event.reason));
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => { dvaCheck.errors.push("console." + level + ": " + args.join(" ")); original(...args); };
}
function dvaCheckUse() {
  const threshold = document.getElementById("threshold");
  if (threshold) { threshold.value = 40; dvaThreshold(); }
  document.querySelectorAll(".swipe input[type=range]").forEach(input => { input.value = 30; dvaSwipe(input); });
  const sort = Array.from(document.querySelectorAll("button")).find(b => b.textContent === "sort by score");
  if (sort) {
    sort.click();
    dvaCheck.sorted = Array.from(document.querySelectorAll("#images [data-order]")).map(card => card.dataset.score);
  }
  document.querySelectorAll("button").forEach(button => { button.click(); button.click(); });
  if (sort) sort.click();
}
function dvaCheckReport() {
  const width = document.documentElement.scrollWidth;
  const canvases = Array.from(document.querySelectorAll("canvas[data-map]"));
  const result = {
    errors: dvaCheck.errors,
    sorted: dvaCheck.sorted || null,
    innerWidth: window.innerWidth,
    scrollWidth: width,
    images: document.images.length,
    broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    canvases: canvases.length,
    unpainted: canvases.filter(c => !c.dvaGrey).length,
    wide: Array.from(document.querySelectorAll("body *")).filter(e => e.getBoundingClientRect().right >
      window.innerWidth + 1).slice(0, 5).map(e => e.tagName + "." + e.className),
  };
  const out = document.createElement("pre");
  out.id = "dva-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
}
window.addEventListener("load", () => setTimeout(() => {
  try { dvaCheckUse(); } catch (error) { dvaCheck.errors.push("using the controls: " + error); }
  setTimeout(dvaCheckReport, 500);
}, 500));
</script>"""


def find_browser() -> str | None:
    """The Chromium executable on PATH, if any."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _chromium(browser: str, width: int, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
               f"--window-size={width},{WINDOW_HEIGHT}", *args]
    try:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s")


def inspect(browser: str, page: Path, width: int) -> dict:
    """What the probe found in ``page`` at ``width`` px. The probed copy goes to a temporary folder (nothing is
    written beside the page); a ``<base>`` element makes its relative addresses the page's own."""
    import tempfile

    base = f'<base href="{page.resolve().parent.as_uri()}/">'
    text = page.read_text(encoding="utf-8").replace("<head>", "<head>" + base + PROBE, 1)
    with tempfile.TemporaryDirectory(prefix="dva-check-report-") as folder:
        probed = Path(folder) / "report.html"
        probed.write_text(text, encoding="utf-8")
        done = _chromium(browser, width, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="dva-check">(.*?)</pre>', done.stdout, re.DOTALL)
    if not found:
        return {"errors": [f"the page never reported (chromium exit {done.returncode}): {done.stderr[-500:]}"]}
    import html

    return json.loads(html.unescape(found.group(1)))


def problems(found: dict, width: int) -> list[str]:
    """The findings at one width as sentences; empty when the page passed."""
    said = [f"{width} px: {error}" for error in found.get("errors", [])]
    if found.get("broken"):
        said.append(f"{width} px: {len(found['broken'])} broken images, e.g. {found['broken'][0]}")
    if found.get("unpainted"):
        said.append(f"{width} px: {found['unpainted']} of {found['canvases']} maps were not painted")
    if found.get("scrollWidth", 0) > found.get("innerWidth", 0):
        said.append(f"{width} px: horizontal overflow ({found['scrollWidth']} px wide content in a "
                    f"{found['innerWidth']} px window; widest: {', '.join(found.get('wide', []))})")
    return said


def check_page(page: Path, screenshots: Path | None = None, browser: str | None = None,
               widths: tuple[int, ...] = CHECK_WIDTHS) -> list[str]:
    """Every problem Chromium finds in ``page`` at ``widths``; screenshots at 1280 and 1920 px into ``screenshots``."""
    browser = browser or find_browser()
    if browser is None:
        return [INSTALL_HINT]
    found = []
    for width in widths:
        found += problems(inspect(browser, page, width), width)
    for width in SCREENSHOT_WIDTHS if screenshots else ():
        screenshots.mkdir(parents=True, exist_ok=True)
        shot = screenshots / f"report-{width}.png"
        _chromium(browser, width, "--hide-scrollbars", f"--screenshot={shot.resolve()}", page.resolve().as_uri())
        if not shot.is_file():
            found.append(f"{width} px: chromium wrote no screenshot")
    return found


def demo_report(out: Path, steps: int | None = None) -> Path:
    """A small run of the bundled model on three bundled phantoms (and one unreadable input); its report.

    At the entry's own steps by default: the bundled calibration belongs to that recipe, so the report then
    shows scores and calibrated maps."""
    from dva.cli import main as dva

    samples = Path(str(resources.files("dva") / "samples" / "phantoms"))
    inputs = [samples / "images" / f"{name}.png" for name in ("Lung Opacity-7", "Cardiomegaly-1", "Normal-1")]
    broken = out / "inputs" / "unreadable.png"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a png")
    try:
        dva(["run", "--entry", "tiny-phantom", *(["--steps", str(steps)] if steps else []), "--mask",
             str(samples / "masks"), "--out", str(out / "run"), *map(str, inputs), str(broken)])
    except SystemExit as exit:
        if exit.code not in (0, 1, None):  # 1: the unreadable input failed, as intended
            raise
    return out / "run" / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/report-check"), help="work and screenshot folder")
    parser.add_argument("--steps", type=int, help="scheduler steps of the demo run (default: the entry's)")
    parser.add_argument("--page", type=Path, help="check this report.html instead of making a demo run")
    args = parser.parse_args(argv)
    if find_browser() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    page = args.page or demo_report(args.out, args.steps)
    found = check_page(page, args.out)
    for problem in found:
        print(f"check-report: {problem}", file=sys.stderr)
    shots = ", ".join(str(args.out / f"report-{width}.png") for width in SCREENSHOT_WIDTHS)
    print(f"check-report: {page} {'FAILED' if found else 'passed'} at {', '.join(map(str, CHECK_WIDTHS))} px; "
          f"screenshots: {shots}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
