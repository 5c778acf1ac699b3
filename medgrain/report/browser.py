"""Opening a report in headless Chromium: a screenshot for the README, and a check that the page loads
without console messages, that every image decodes and that every section, figure and table is there.

Nothing is installed here; Debian's ``chromium`` package (or Google Chrome) is looked up on PATH.
The report itself carries no script: the check opens a copy with a small probe added.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")

# Records errors (script errors, resources that fail to load, console.error/warn) from the start...
PROBE_HEAD = """<script>window.__problems=[];
window.addEventListener('error',function(e){window.__problems.push(e.message?String(e.message):
 'failed to load '+((e.target&&(e.target.id||e.target.tagName))||'?'))},true);
['error','warn'].forEach(function(k){var f=console[k];console[k]=function(){
 window.__problems.push(k+': '+Array.prototype.join.call(arguments,' '));f.apply(console,arguments)}});</script>"""
# ...and after load writes what the page holds into an element the dumped DOM shows.
PROBE_BODY = """<script>window.addEventListener('load',function(){
var imgs=Array.prototype.slice.call(document.images);
var out={images:imgs.length,
 broken:imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.id||i.alt}),
 sizes:imgs.map(function(i){return [i.id,i.naturalWidth,i.naturalHeight]}),
 sections:Array.prototype.map.call(document.querySelectorAll('section'),function(s){return s.id}),
 figures:Array.prototype.map.call(document.querySelectorAll('figure img'),function(i){return i.id}),
 tables:Array.prototype.map.call(document.querySelectorAll('table'),function(t){return t.id}),
 problems:window.__problems};
var p=document.createElement('pre');p.id='medgrain-probe';p.textContent=JSON.stringify(out);
document.body.appendChild(p);});</script>"""


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The path of a Chromium-family browser, or None. ``MEDGRAIN_CHROMIUM`` names one explicitly."""
    explicit = os.environ.get("MEDGRAIN_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise BrowserError("no Chromium found on PATH (install Debian's `chromium` package, or set MEDGRAIN_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="medgrain-chromium-") as profile:
        try:
            return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"{browser} did not finish within {timeout:.0f} s") from None


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of the page, as headless Chromium renders it."""
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = _run([f"--screenshot={png}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
                 html.as_uri()], timeout)
    if not png.is_file():
        raise BrowserError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return png


def check_in_browser(html: str | Path, timeout: float = 120) -> dict[str, Any]:
    """Load ``html`` in headless Chromium and return what the page holds after ``load``: ``images``,
    ``broken`` (ids of images that did not decode), ``sizes``, ``sections``, ``figures``, ``tables`` (ids),
    ``problems`` (script errors, failed resources, console errors) and ``console`` (every console line
    Chromium logged)."""
    text = Path(html).read_text(encoding="utf-8")
    if "</head>" not in text or "</body>" not in text:
        raise BrowserError(f"{html} has no </head> or </body>: not a full HTML document")
    probed = text.replace("</head>", PROBE_HEAD + "</head>", 1).replace("</body>", PROBE_BODY + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="medgrain-check-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(probed, encoding="utf-8")
        done = _run(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                     page.as_uri()], timeout)
    found = re.search(r'<pre id="medgrain-probe">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        raise BrowserError(f"the page did not finish loading (exit {done.returncode}): {done.stderr[-2000:]}")
    import html as html_lib

    result = json.loads(html_lib.unescape(found.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result
