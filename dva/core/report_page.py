"""The style and script of ``report.html``, inlined into the page (no server, no network, no external files).

Plain CSS and JavaScript, written by hand: the page must open from the file system in any browser, so it
cannot load a framework. Two things shape the script:

- The threshold slider repaints each map on a canvas from the map's own grey values. Chromium taints a
  canvas that draws a ``file://`` image, so the grey maps are embedded as small ``data:`` PNGs (which do not
  taint) and coloured in the page with the same colour map the PNGs on disk were written with.
- The input and counterfactual images are the files in the output folder, referenced by relative paths;
  they are only stacked and clipped (swipe) or shown in turn (blink), never read back.
"""

from __future__ import annotations

STYLE = """
:root{color-scheme:dark;--bg:#101214;--card:#1a1d21;--line:#2c3138;--fg:#e8eaed;--muted:#a4abb4;--accent:#8cc8ff;
--threshold:0%}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:var(--bg);color:var(--fg);
line-height:1.4;overflow-wrap:anywhere}
header.top{padding:1rem 1.5rem .4rem}
h1{font-size:1.35rem;margin:0 0 .4rem}
h2{font-size:1.1rem}
.settings{display:flex;flex-wrap:wrap;gap:.25rem 1.4rem;margin:.4rem 0;padding:0;list-style:none;color:var(--muted);
font-size:.9rem}
.settings b{color:var(--fg);font-weight:600}
.settings .why{font-size:.8rem}
.controls{position:sticky;top:0;z-index:2;background:rgba(16,18,20,.96);display:flex;flex-wrap:wrap;align-items:center;
gap:.5rem 1.6rem;padding:.55rem 1.5rem;border-bottom:1px solid var(--line);font-size:.9rem}
.controls label{display:flex;align-items:center;gap:.5rem}
.controls input[type=range]{width:min(16rem,40vw)}
button{font:inherit;background:#2a3038;color:var(--fg);border:1px solid #3c444e;border-radius:4px;padding:.2rem .7rem;
cursor:pointer}
button:hover{background:#343b45}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,44rem),1fr));gap:1rem;padding:1rem 1.5rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8rem;min-width:0}
.card>header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.2rem .8rem}
.card h2{margin:0;font-size:1.05rem}
.score{color:var(--accent);font-weight:600;font-size:1rem}
.numbers{display:flex;flex-wrap:wrap;gap:.1rem 1.1rem;margin:.3rem 0 .6rem;padding:0;list-style:none;font-size:.82rem;
color:var(--muted)}
.numbers b{color:var(--fg);font-weight:600}
.panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(10.5rem,1fr));gap:.7rem}
.panels>figure{max-width:22rem}
figure{margin:0;min-width:0}
figcaption{font-size:.78rem;color:var(--muted);margin-top:.25rem}
figcaption>span{display:block}
figcaption a{color:var(--muted)}
.what{color:var(--fg)}
.stack{position:relative;line-height:0;background:#000}
figure img,figure canvas{width:100%;height:auto;display:block}
.stack>.top{position:absolute;inset:0;width:100%;height:100%}
.swipe .top{clip-path:inset(0 0 0 var(--cut,50%))}
.swipe .line{position:absolute;top:0;bottom:0;left:var(--cut,50%);width:2px;margin-left:-1px;background:#fff;opacity:.75}
.blink .swipe .top{clip-path:none}
.blink .swipe .line{display:none}
.blink.showing-input .swipe .top{visibility:hidden}
.swipe input[type=range]{width:100%;margin:.3rem 0 0}
.bar{position:relative;height:.6rem;border-radius:2px;margin-top:.35rem}
.bar.thresholded::after{content:"";position:absolute;top:-2px;bottom:-2px;left:var(--threshold);width:2px;
margin-left:-1px;background:#fff}
.ticks{display:flex;justify-content:space-between;font-size:.72rem;color:var(--muted);line-height:1.2}
.unit{font-size:.72rem;color:var(--muted)}
.hidden-below{display:block}
.hidden-below:empty{display:none}
.note{color:#fb4;font-weight:600;font-size:.85rem;margin:.2rem 0}
.banner{background:#a00;color:#fff;font-weight:bold;padding:1em;border:3px solid #f44}
section{padding:0 1.5rem 1rem}
.failed li{margin:.2rem 0}
pre{background:#1a1d21;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.8rem}
"""

# Paints each thresholded map, moves the swipe line, blinks, and (in pages with scores) sorts the cards.
SCRIPT = """
"use strict";
function dvaLevel() {
  // the lowest level whose bin (floor(f * 256), as dva.core.attribution.levels) lies wholly at or above the threshold
  return Math.min(255, Math.ceil(parseFloat(document.getElementById("threshold").value) * 256 / 100));
}
function dvaPaint(canvas, level) {
  const grey = canvas.dvaGrey;
  if (!grey) return;
  const lut = DVA_COLOUR_MAPS[canvas.dataset.colours];
  const context = canvas.getContext("2d");
  const painted = context.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < grey.length; i += 4) {
    const value = grey[i], colour = lut[value];
    painted.data[i] = colour[0];
    painted.data[i + 1] = colour[1];
    painted.data[i + 2] = colour[2];
    painted.data[i + 3] = value >= level ? 255 : 0;
  }
  context.putImageData(painted, 0, 0);
}
function dvaLoadMaps() {
  document.querySelectorAll("canvas[data-map]").forEach(canvas => {
    const source = new Image();
    source.onload = () => {
      const context = canvas.getContext("2d", {willReadFrequently: true});
      context.drawImage(source, 0, 0, canvas.width, canvas.height);
      canvas.dvaGrey = context.getImageData(0, 0, canvas.width, canvas.height).data;
      dvaPaint(canvas, dvaLevel());
    };
    source.src = canvas.dataset.map;
  });
}
function dvaThreshold() {
  const percent = parseFloat(document.getElementById("threshold").value);
  const level = dvaLevel();
  document.documentElement.style.setProperty("--threshold", percent + "%");
  document.getElementById("threshold-value").textContent = percent + "% of full colour";
  document.querySelectorAll("canvas[data-map]").forEach(canvas => dvaPaint(canvas, level));
  document.querySelectorAll("[data-full]").forEach(shown => {
    const value = parseFloat(shown.dataset.full) * percent / 100;
    shown.textContent = percent > 0 ? "hidden below " + value.toPrecision(2) : "";
  });
}
function dvaSwipe(input) {
  input.closest("figure").style.setProperty("--cut", input.value + "%");
}
let dvaBlinkTimer = null;
function dvaBlink(button) {
  const body = document.body;
  if (dvaBlinkTimer === null) {
    body.classList.add("blink");
    dvaBlinkTimer = setInterval(() => body.classList.toggle("showing-input"), 700);
    button.textContent = "stop blinking";
  } else {
    clearInterval(dvaBlinkTimer);
    dvaBlinkTimer = null;
    body.classList.remove("blink", "showing-input");
    button.textContent = "blink input / counterfactual";
  }
}
// A reloaded page keeps its sliders' positions: start from them.
document.addEventListener("DOMContentLoaded", () => {
  dvaLoadMaps();
  dvaThreshold();
  document.querySelectorAll(".swipe input[type=range]").forEach(dvaSwipe);
});
"""

SORT_SCRIPT = """
function dvaSort(button) {
  const cards = document.getElementById("images");
  const rows = Array.from(cards.querySelectorAll("[data-order]"));
  const byScore = button.dataset.sorted !== "score";
  const score = row => row.dataset.score === "" ? -Infinity : parseFloat(row.dataset.score);
  rows.sort((a, b) => byScore ? score(b) - score(a) : a.dataset.order - b.dataset.order);
  rows.forEach(row => cards.appendChild(row));
  button.dataset.sorted = byScore ? "score" : "input";
  button.textContent = byScore ? "input order" : "sort by score";
}
"""
