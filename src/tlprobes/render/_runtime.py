"""The small JavaScript runtime every tlprobes page inlines (once) next to the circuitsvis bundle.

``window.tlp`` mounts circuitsvis views, drives the prompt / layer / head selectors and the token
hover strip (what a token attends to, what attends to it), and draws the head-summary grid.
``tlp.ready`` waits for ``window.CircuitsVis``: in a notebook the bundle is sent with the first view
of a kernel session only (see :func:`tlprobes.render.notebook_bundle`).
Each view's ``<script>`` finds its own element as ``document.currentScript.previousElementSibling``
and gives it a fresh random id at run time, so the same output shown twice in a notebook, or two
pages merged into one report, never render into each other's divs. Text from Python only ever
reaches the DOM through ``textContent`` or circuitsvis (React), never ``innerHTML``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .._errors import InputError
from ._escape import escape_script

__all__ = ["RUNTIME_JS", "circuitsvis_bundle"]

RUNTIME_JS = r"""
(function () {
  var tlp = {};
  tlp.uid = function () {
    return "tlp-" + Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
  };
  tlp.el = function (script, id) {
    var el = (script && script.previousElementSibling) || document.getElementById(id);
    el.id = tlp.uid();
    return el;
  };
  tlp.fail = function (el, err) {
    var msg = document.createElement("pre");
    msg.className = "tlp-error";
    msg.textContent = "tlprobes: could not draw this view: " + err;
    el.appendChild(msg);
    setTimeout(function () { throw err; });
  };
  // In a notebook the circuitsvis bundle travels with the first view only; later outputs wait
  // for it (scripts of saved outputs run in order when the notebook is reopened).
  tlp.ready = function (el, fn) {
    if (window.CircuitsVis) { fn(); return; }
    var t0 = Date.now();
    var iv = setInterval(function () {
      if (window.CircuitsVis) { clearInterval(iv); fn(); }
      else if (Date.now() - t0 > 20000) {
        clearInterval(iv);
        tlp.fail(el, "the circuitsvis bundle is not on this page. In a notebook it is sent with " +
          "the first tlprobes view of the kernel session; re-run the cells from the top, or call " +
          "tlprobes.render.notebook_bundle('always') before displaying.");
      }
    }, 50);
  };
  tlp.mount = function (script, id, component, props) {
    var el = tlp.el(script, id);
    tlp.ready(el, function () {
      try {
        CircuitsVis.render(el.id, CircuitsVis[component], props);
      } catch (err) { tlp.fail(el, err); }
    });
  };
  tlp.decode = function (b64, nHead, nPos, lo, hi) {
    var bin = atob(b64), scale = (hi - lo) / 255, p = 0, out = new Array(nHead);
    for (var h = 0; h < nHead; h++) {
      var rows = new Array(nPos);
      for (var q = 0; q < nPos; q++) {
        var row = new Array(nPos);
        for (var k = 0; k < nPos; k++) {
          row[k] = Math.round((lo + bin.charCodeAt(p++) * scale) * 1000) / 1000;
        }
        rows[q] = row;
      }
      out[h] = rows;
    }
    return out;
  };
  tlp.layers = function (script, id, d) {
    var root = tlp.el(script, id);
    var sel = root.querySelector("select.tlp-layer-select");
    var psel = root.querySelector("select.tlp-prompt-select");
    var hsel = root.querySelector("select.tlp-head-select");
    var host = root.querySelector(".tlp-layer-host");
    var strip = root.querySelector(".tlp-hover");
    var buttons = root.querySelectorAll("button[data-step]");
    var prompts = d.prompts || [{ tokens: d.tokens, data: d.data, lo: d.lo, hi: d.hi }];
    var state = { p: 0, l: 0, att: null };
    function heads() { return d.headNames[state.l]; }
    function drawStrip() {
      if (!strip) return;
      var P = prompts[state.p], att = state.att, hs = heads();
      var h = hsel ? parseInt(hsel.value, 10) : -1;
      var n = P.tokens.length;
      function weight(q, k) {  // the chosen head, or the mean over heads
        if (h >= 0) return att[h][q][k];
        var s = 0;
        for (var i = 0; i < hs.length; i++) s += att[i][q][k];
        return s / hs.length;
      }
      while (strip.firstChild) strip.removeChild(strip.firstChild);
      var info = document.createElement("div");
      info.className = "tlp-hover-info";
      info.style.fontSize = "0.85em";
      info.style.margin = "4px 0";
      info.textContent = "hover a token: red = what it attends to, blue = what attends to it (" +
        (h >= 0 ? hs[h] : "mean of the shown heads") + ")";
      var row = document.createElement("div");
      row.className = "tlp-hover-row";
      row.style.lineHeight = "2";
      var spans = [];
      P.tokens.forEach(function (t, i) {
        var s = document.createElement("span");
        s.className = "tlp-tok";
        s.textContent = t;
        s.style.whiteSpace = "pre";
        s.style.padding = "1px 2px";
        s.style.margin = "0 1px";
        s.style.border = "1px solid #ddd";
        s.style.borderRadius = "3px";
        s.style.fontFamily = "ui-monospace,Menlo,Consolas,monospace";
        s.style.cursor = "default";
        s.setAttribute("data-pos", String(i));
        s.addEventListener("mouseenter", function () {
          var best = [-1, -1], bestBy = [-1, -1];
          for (var j = 0; j < n; j++) {
            var to = weight(i, j), by = weight(j, i);
            if (to > best[1]) best = [j, to];
            if (j !== i && by > bestBy[1]) bestBy = [j, by];
            var out = Math.min(1, to), inn = Math.min(1, by);
            spans[j].style.background = j === i ? "#ffe08a" :
              "linear-gradient(rgba(214,39,40," + out.toFixed(3) + ") 50%, rgba(31,119,180," +
              inn.toFixed(3) + ") 50%)";
            spans[j].title = JSON.stringify(t) + " attends here " + tlp.fmt(to) +
              "; this attends to " + JSON.stringify(t) + " " + tlp.fmt(by);
          }
          info.textContent = JSON.stringify(t) + " (position " + i + ") attends most to " +
            JSON.stringify(P.tokens[best[0]]) + " (" + tlp.fmt(best[1]) + ")" +
            (bestBy[0] >= 0 ? "; attended most by " + JSON.stringify(P.tokens[bestBy[0]]) +
              " (" + tlp.fmt(bestBy[1]) + ")" : "; nothing after it attends to it") +
            " [" + (h >= 0 ? hs[h] : "mean of heads") + "]";
          root.setAttribute("data-hover", String(i));
        });
        spans.push(s);
        row.appendChild(s);
      });
      strip.appendChild(info);
      strip.appendChild(row);
    }
    function fillHeads() {
      if (!hsel) return;
      var keep = hsel.value || "-1", hs = heads();
      while (hsel.firstChild) hsel.removeChild(hsel.firstChild);
      var all = document.createElement("option");
      all.value = "-1"; all.textContent = "mean of heads"; hsel.appendChild(all);
      hs.forEach(function (name, i) {
        var o = document.createElement("option");
        o.value = String(i); o.textContent = name; hsel.appendChild(o);
      });
      hsel.value = parseInt(keep, 10) < hs.length ? keep : "-1";
    }
    function show(i) {
      i = Math.max(0, Math.min(prompts[0].data.length - 1, i));
      state.l = i;
      var P = prompts[state.p];
      var fresh = document.createElement("div");
      fresh.id = tlp.uid();
      fresh.className = "tlp-view";
      while (host.firstChild) host.removeChild(host.firstChild);
      host.appendChild(fresh);
      sel.value = String(i);
      root.setAttribute("data-layer", String(i));
      root.setAttribute("data-prompt", String(state.p));
      state.att = tlp.decode(P.data[i], heads().length, P.tokens.length, P.lo, P.hi);
      fillHeads();
      drawStrip();
      tlp.ready(fresh, function () {
        try {
          var props = Object.assign({}, d.props, {
            attention: state.att,
            tokens: P.tokens,
            attentionHeadNames: heads()
          });
          CircuitsVis.render(fresh.id, CircuitsVis.AttentionHeads, props);
        } catch (err) { tlp.fail(fresh, err); }
      });
    }
    sel.addEventListener("change", function () { show(parseInt(sel.value, 10)); });
    if (psel) psel.addEventListener("change", function () {
      state.p = parseInt(psel.value, 10);
      show(state.l);
    });
    if (hsel) hsel.addEventListener("change", drawStrip);
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        show(parseInt(sel.value, 10) + parseInt(b.getAttribute("data-step"), 10));
      });
    });
    if (psel) { state.p = d.initialPrompt || 0; psel.value = String(state.p); }
    show(d.initial);
  };
  tlp.fmt = function (v) {
    if (v === null || v === undefined) return "n/a";
    var a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? v.toExponential(2) : v.toFixed(3);
  };
  tlp.overview = function (script, id, d) {
    var root = tlp.el(script, id);
    var canvas = root.querySelector("canvas.tlp-grid");
    var bar = root.querySelector("canvas.tlp-cbar");
    var sel = root.querySelector("select.tlp-metric");
    var tip = root.querySelector(".tlp-tip");
    var loEl = root.querySelector(".tlp-lo"), hiEl = root.querySelector(".tlp-hi");
    var L = d.layers.length, H = d.heads.length, c = d.cell, left = d.left, top = d.top;
    canvas.width = left + H * c + 2;
    canvas.height = top + L * c + 2;
    var ctx = canvas.getContext("2d");
    function range(vals) {
      var lo = Infinity, hi = -Infinity;
      vals.forEach(function (row) { row.forEach(function (v) {
        if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }); });
      if (!isFinite(lo)) { lo = 0; hi = 1; }
      if (hi <= lo) hi = lo + 1e-9;
      return [lo, hi];
    }
    function draw(name) {
      var m = d.metrics[name], r = range(m.values);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#333333";
      ctx.font = "10px sans-serif";
      ctx.textBaseline = "middle";
      ctx.textAlign = "center";
      var hStep = Math.max(1, Math.ceil(14 / c));
      for (var h = 0; h < H; h += hStep) ctx.fillText(d.heads[h], left + h * c + c / 2, top - 8);
      ctx.textAlign = "right";
      var lStep = Math.max(1, Math.ceil(12 / c));
      for (var l = 0; l < L; l += lStep) ctx.fillText(d.layers[l], left - 4, top + l * c + c / 2);
      for (l = 0; l < L; l++) {
        for (h = 0; h < H; h++) {
          var v = m.values[l][h];
          if (v === null) { ctx.fillStyle = "#d0d0d0"; }
          else {
            var t = Math.round((v - r[0]) / (r[1] - r[0]) * 255);
            ctx.fillStyle = d.cmap[Math.max(0, Math.min(255, t))];
          }
          ctx.fillRect(left + h * c, top + l * c, c - 1, c - 1);
        }
      }
      var bctx = bar.getContext("2d");
      for (var i = 0; i < bar.width; i++) {
        bctx.fillStyle = d.cmap[Math.round(i / (bar.width - 1) * 255)];
        bctx.fillRect(i, 0, 1, bar.height);
      }
      loEl.textContent = tlp.fmt(r[0]);
      hiEl.textContent = tlp.fmt(r[1]);
      root.setAttribute("data-metric", name);
    }
    canvas.addEventListener("mousemove", function (ev) {
      var box = canvas.getBoundingClientRect();
      var x = (ev.clientX - box.left) * canvas.width / box.width - left;
      var y = (ev.clientY - box.top) * canvas.height / box.height - top;
      var h = Math.floor(x / c), l = Math.floor(y / c);
      if (h < 0 || l < 0 || h >= H || l >= L) { tip.textContent = d.hint; return; }
      var parts = d.names.map(function (n) {
        return d.metrics[n].label + " " + tlp.fmt(d.metrics[n].values[l][h]);
      });
      tip.textContent = "layer " + d.layers[l] + ", head " + d.heads[h] + ": " + parts.join(" \u00b7 ");
      root.setAttribute("data-hover", l + "," + h);
    });
    sel.addEventListener("change", function () { draw(sel.value); });
    tip.textContent = d.hint;
    draw(d.initial);
  };
  window.tlp = tlp;
})();
"""


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis IIFE bundle from the installed wheel, escaped for an inline classic script."""
    try:
        import circuitsvis
    except ImportError as err:  # pragma: no cover - circuitsvis is a dependency
        raise InputError(
            "circuitsvis is not installed; interactive views need it (pip install circuitsvis)"
        ) from err
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return escape_script(path.read_text(encoding="utf-8"))
