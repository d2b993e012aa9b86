"""The style sheet and the one small script of ``report.html``, inline (the page fetches nothing).

The script only adds to a page that reads whole without it: it sorts tables by a click on a
header, shows a bar's value under the pointer, opens a figure large on click, and fills the
per-prompt drill-down (search by uid or text, a prompt's rows) from the JSON embedded in the page.
"""

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 64px; overflow-wrap: anywhere; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: var(--muted); margin: 0 0 20px; font-size: 14px; }
.summary { background: #eef6ff; border-left: 4px solid var(--accent); padding: 14px 18px; border-radius: 6px; }
.summary p { margin: 6px 0; }
.tablewrap { overflow-x: auto; max-width: 100%; }
.tablewrap.tall { max-height: 460px; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; font-variant-numeric: tabular-nums;
  overflow-wrap: normal; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; position: sticky; top: 0; }
th[aria-sort] { cursor: pointer; user-select: none; }
th[aria-sort]::after { content: " ↕"; color: var(--muted); font-weight: 400; }
th[aria-sort="ascending"]::after { content: " ↑"; }
th[aria-sort="descending"]::after { content: " ↓"; }
td:first-child { white-space: nowrap; }
td.left, th.left { text-align: left; }
td.message { text-align: left; min-width: 320px; }
tr.picked td { background: #fff8c5; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 7px; vertical-align: -1px; }
details { margin: 6px 0; border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; }
details > summary { cursor: pointer; font-weight: 600; font-size: 14px; }
figure { margin: 18px 0 30px; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; cursor: zoom-in; }
figure.zoomed { position: fixed; inset: 0; margin: 0; padding: 12px; background: rgba(255,255,255,.97); z-index: 10;
  overflow: auto; cursor: zoom-out; }
figure.zoomed img { width: auto; max-width: none; cursor: zoom-out; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
svg.chart { width: 100%; max-width: 760px; height: auto; display: block; margin: 4px 0 14px; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--ink); }
svg.chart rect.bar:hover { opacity: .75; }
#tip { position: fixed; pointer-events: none; background: var(--ink); color: #fff; font-size: 12.5px; padding: 3px 7px;
  border-radius: 4px; z-index: 20; display: none; max-width: 90vw; }
.note { color: var(--muted); font-size: 13.5px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  background: var(--soft); padding: 1px 4px; border-radius: 4px; }
nav { font-size: 14px; margin: 12px 0 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
nav a { color: var(--accent); text-decoration: none; }
a.prompt-link { color: var(--accent); }
input[type=search] { width: 100%; max-width: 480px; font: inherit; padding: 6px 10px; border: 1px solid var(--line);
  border-radius: 6px; margin: 6px 0; }
#prompt-detail { border: 2px solid var(--accent); border-radius: 6px; padding: 6px 12px; margin: 10px 0; }
footer { margin-top: 48px; color: var(--muted); font-size: 13px; }
@media (max-width: 600px) {
  main { padding: 16px 12px 48px; }
  h1 { font-size: 21px; }
  td.message { min-width: 220px; }
}
"""

SCRIPT = r"""
(function () {
  "use strict";
  function value(cell) {
    var raw = cell.getAttribute("data-value");
    var text = raw !== null ? raw : cell.textContent.replace(/[,\s%]/g, "").replace(/\u2212/g, "-");
    var number = parseFloat(text);
    return isNaN(number) ? cell.textContent.toLowerCase() : number;
  }
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, column) {
      th.setAttribute("aria-sort", "none");
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var down = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = value(a.cells[column]), y = value(b.cells[column]);
          var order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
          return down ? -order : order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table"), sortable);

  var tip = document.getElementById("tip");
  document.addEventListener("mouseover", function (event) {
    var bar = event.target.closest ? event.target.closest("[data-tip]") : null;
    if (!bar) { tip.style.display = "none"; return; }
    tip.textContent = bar.getAttribute("data-tip");
    tip.style.display = "block";
  });
  document.addEventListener("mousemove", function (event) {
    tip.style.left = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = (event.clientY + 14) + "px";
  });

  Array.prototype.forEach.call(document.querySelectorAll("figure"), function (figure) {
    figure.addEventListener("click", function () { figure.classList.toggle("zoomed"); });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    Array.prototype.forEach.call(document.querySelectorAll("figure.zoomed"), function (f) { f.classList.remove("zoomed"); });
  });

  var data = document.getElementById("aggscope-drilldown");
  if (!data) return;
  var drill = JSON.parse(data.textContent);
  var byKey = {};
  drill.prompts.forEach(function (p) { byKey[p.step + ":" + p.uid] = p; });
  var detail = document.getElementById("prompt-detail");
  function number(x) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2013";
    if (Number.isInteger(x)) return x.toLocaleString("en-US");
    return Math.abs(x) >= 1e5 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(3) : String(Number(x.toPrecision(4)));
  }
  function cell(tag, text, raw) {
    var c = document.createElement(tag);
    c.textContent = text;
    if (raw !== undefined) c.setAttribute("data-value", raw === null ? "" : String(raw));
    return c;
  }
  function open(key) {
    var prompt = byKey[key];
    if (!prompt) return false;
    detail.innerHTML = "";
    var title = document.createElement("h3");
    title.textContent = "Prompt " + prompt.uid + " (step " + prompt.step + ")";
    detail.appendChild(title);
    if (prompt.text) detail.appendChild(cell("p", prompt.text));
    var table = document.createElement("table");
    var head = table.createTHead().insertRow();
    var names = ["response", "reward", "mean advantage", "loss tokens"];
    drill.labels.forEach(function (l) { names.push(l + ": weight", l + ": \u03a3|w\u00b7A|"); });
    names.forEach(function (n) { head.appendChild(cell("th", n)); });
    var body = table.createTBody();
    prompt.rows.forEach(function (row, i) {
      var tr = body.insertRow();
      tr.appendChild(cell("td", String(i + 1)));
      tr.appendChild(cell("td", number(row.reward), row.reward));
      tr.appendChild(cell("td", number(row.mean_advantage), row.mean_advantage));
      tr.appendChild(cell("td", number(row.loss_tokens), row.loss_tokens));
      drill.labels.forEach(function (l) {
        tr.appendChild(cell("td", number(row.weight[l]), row.weight[l]));
        tr.appendChild(cell("td", number(row.grad_mass[l]), row.grad_mass[l]));
      });
    });
    var wrap = document.createElement("div");
    wrap.className = "tablewrap";
    wrap.appendChild(table);
    detail.appendChild(wrap);
    sortable(table);
    detail.hidden = false;
    detail.setAttribute("data-key", key);
    Array.prototype.forEach.call(document.querySelectorAll("#prompt-table tr.picked"), function (r) { r.classList.remove("picked"); });
    var row = document.querySelector('#prompt-table tr[data-key="' + CSS.escape(key) + '"]');
    if (row) row.classList.add("picked");
    detail.scrollIntoView({block: "nearest"});
    return true;
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("[data-prompt]") : null;
    if (!link) return;
    if (open(link.getAttribute("data-prompt"))) event.preventDefault();
  });
  var search = document.getElementById("prompt-search");
  search.addEventListener("input", function () {
    var words = search.value.toLowerCase();
    var rows = document.querySelectorAll("#prompt-table tbody tr");
    Array.prototype.forEach.call(rows, function (row) {
      var p = byKey[row.getAttribute("data-key")];
      var hay = (p.uid + " " + (p.text || "")).toLowerCase();
      row.hidden = words !== "" && hay.indexOf(words) < 0;
    });
  });
  function fromHash() {
    var match = /^#prompt=(.*)$/.exec(location.hash);
    if (match) open(decodeURIComponent(match[1]));
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""
