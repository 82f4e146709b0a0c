/* The offline UFM explorer of the book (page 06): replays a precomputed grid of runs.
 *
 * guiding_nc.explorer_html.viewer_html() inlines this file, the grid (gzipped JSON, base64) and
 * a small JSON of display settings into one HTML fragment; nothing is fetched. Mount with
 * GNCExplorer.mount(id): reads <script id="<id>-data"> (the grid) and <script id="<id>-meta">.
 *
 * Drawing is plain SVG markup built as strings. Every text is drawn at its CSS pixel size (the
 * SVGs are not scaled), so sizes below hold on the page: nothing under 10 px.
 */
(function () {
  "use strict";
  if (window.GNCExplorer) { return; }

  var CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                       "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var AXES = ["C", "d", "n", "optimizer", "tau", "delta", "seed"];
  var AXIS_LABELS = {C: "classes C", d: "feature dim d", n: "samples per class n",
                     optimizer: "optimiser", tau: "temperature \u03c4",
                     delta: "proximal \u03b4 (implicit)", seed: "seed"};
  var AXIS_SHORT = {C: "C", d: "d", n: "n", optimizer: "optimiser", tau: "\u03c4",
                    delta: "\u03b4", seed: "seed"};
  // Which axis to give up first when a choice is not in the grid with the others.
  var SNAP_WEIGHT = {seed: 1, delta: 2, tau: 3, n: 4, d: 5, optimizer: 6, C: 7};
  var DASH = {"-": "", "--": "6,3", "-.": "7,3,1.5,3", ":": "1.5,3"};

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;");
  }
  // An axis value as key text: numbers as JavaScript prints them, names as they are.
  function num(v) {
    if (v === null || v === undefined) { return "-"; }
    return String(v);
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) { return "\u2013"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) {
      return v.toExponential(Math.max(0, (digits || 3) - 1));
    }
    return String(Number(v.toPrecision(digits || 3)));
  }
  function fmtAxisValue(axis, v) {
    if (axis === "delta" || axis === "tau") {
      var a = Math.abs(v);
      return (a !== 0 && a < 1e-2) ? Number(v).toExponential().replace("e-", "e\u2212") : String(v);
    }
    return String(v);
  }
  var SUP = {"-": "\u207b", "0": "\u2070", "1": "\u00b9", "2": "\u00b2", "3": "\u00b3",
             "4": "\u2074", "5": "\u2075", "6": "\u2076", "7": "\u2077", "8": "\u2078",
             "9": "\u2079"};
  function pow10Label(k) {
    if (k === 0) { return "1"; }
    if (k === 1) { return "10"; }
    return "10" + String(k).split("").map(function (c) { return SUP[c]; }).join("");
  }
  // An optimiser as the viewer names it: its name and its gain or learning rate.
  function optimizerLabel(optimizers, name) {
    var o = (optimizers || {})[name] || {}, base = o.optimizer || name;
    return base + (o.gain !== undefined ? " (gain " + o.gain + ")" :
                   o.lr !== undefined ? " (lr " + o.lr + ")" : "");
  }
  function classColour(c, C) {
    return C <= 10 ? CLASS_COLOURS[c] : "hsl(" + Math.round(360 * c / C) + ",70%,45%)";
  }

  // ------------------------------------------------------------------------------- the grid
  function Grid(data) {
    this.data = data;
    this.steps = data.steps;
    this.scale = data.coord_scale;
    this.methods = data.methods;
    this.deltaMethods = data.delta_methods || [];
    this.axes = {};
    var self = this;
    AXES.forEach(function (a) { self.axes[a] = (data.axes[a] || []).slice(); });
    this.index = {};
    data.runs.forEach(function (r) { self.index[self.key(r, r.method)] = r; });
    // Every combination of axis values some run belongs to (runs that ignore delta belong to
    // every delta of the grid).
    var seen = {};
    this.combos = [];
    data.runs.forEach(function (r) {
      var deltas = r.delta === null && self.axes.delta.length ? self.axes.delta : [r.delta];
      deltas.forEach(function (dl) {
        var c = {};
        AXES.forEach(function (a) { c[a] = r[a]; });
        c.delta = dl;
        var k = self.key(c, "");
        if (!seen[k]) { seen[k] = true; self.combos.push(c); }
      });
    });
  }
  Grid.prototype.key = function (sel, method) {
    var usesDelta = this.deltaMethods.indexOf(method) >= 0 || method === "";
    return [sel.C, sel.d, sel.n, sel.optimizer, num(sel.tau),
            usesDelta ? num(sel.delta) : "-", sel.seed, method].join("|");
  };
  Grid.prototype.run = function (sel, method) { return this.index[this.key(sel, method)] || null; };
  Grid.prototype.count = function (sel) {
    var self = this;
    return this.methods.filter(function (m) { return self.run(sel, m); }).length;
  };
  // The combination nearest to sel that keeps sel[fixed] and has the most methods.
  Grid.prototype.nearest = function (sel, fixed) {
    var self = this, best = null, bestCost = Infinity, M = this.methods.length;
    this.combos.forEach(function (c) {
      if (fixed && num(c[fixed]) !== num(sel[fixed])) { return; }
      var n = self.count(c);
      if (!n) { return; }
      var cost = (M - n) * 1000;
      AXES.forEach(function (a) {
        if (num(c[a]) !== num(sel[a])) {
          var vals = self.axes[a].map(num);
          cost += SNAP_WEIGHT[a] * 10 +
            Math.abs(vals.indexOf(num(c[a])) - vals.indexOf(num(sel[a]))) / 100;
        }
      });
      if (cost < bestCost) { bestCost = cost; best = c; }
    });
    return best;
  };

  // ------------------------------------------------------------------------------- the viewer
  function Viewer(root, data, meta) {
    this.root = root;
    this.grid = new Grid(data);
    this.meta = meta || {};
    this.methodInfo = this.meta.methods || {};
    this.sel = {};
    this.view = "2d";
    this.az = 35;
    this.el = 22;
    this.note = "";
    this.playing = null;
    this.build();
    var init = this.meta.initial || {};
    var g = this.grid, self = this;
    AXES.forEach(function (a) {
      var vals = g.axes[a];
      var want = init[a];
      var hit = vals.filter(function (v) { return num(v) === num(want); });
      self.sel[a] = hit.length ? hit[0] : vals[0];
    });
    if (g.count(this.sel) < g.methods.length) {
      var c = g.nearest(this.sel, null);
      if (c) { AXES.forEach(function (a) { self.sel[a] = c[a]; }); }
    }
    this.stepIndex = g.steps.length - 1;
    this.syncControls();
    this.render();
  }

  Viewer.prototype.build = function () {
    var self = this, g = this.grid;
    var html = ['<div class="gnc-controls">'];
    var hints = this.meta.hints || {};
    AXES.forEach(function (a) {
      var opts = g.axes[a].map(function (v) {
        var text = a === "optimizer" ? optimizerLabel(g.data.optimizers, v) : fmtAxisValue(a, v);
        return '<option value="' + esc(num(v)) + '">' + esc(text) + "</option>";
      }).join("");
      if (!g.axes[a].length) { opts = '<option value="-">\u2013</option>'; }
      html.push('<label class="gnc-control"><span>' + esc(AXIS_LABELS[a]) +
                '</span><select data-axis="' + a + '">' + opts + "</select></label>");
    });
    html.push('<label class="gnc-control"><span>view</span><select data-view>' +
              '<option value="2d">2-D plane</option>' +
              '<option value="3d">3-D (drag to turn)</option></select></label>');
    html.push("</div>");
    Object.keys(hints).forEach(function (a) {
      html.push('<div class="gnc-hint" data-hint="' + esc(a) + '"><b>' + esc(AXIS_SHORT[a] || a) +
                ":</b> " + esc(hints[a]) + "</div>");
    });
    html.push('<div class="gnc-steprow"><button type="button" class="gnc-play">\u25b6 play</button>' +
              '<input type="range" class="gnc-step" min="0" max="' + (g.steps.length - 1) +
              '" step="1" aria-label="snapshot step">' +
              '<span class="gnc-steplabel"></span></div>');
    html.push('<div class="gnc-note" role="status" aria-live="polite"></div>');
    html.push('<div class="gnc-settings"></div>');
    html.push('<div class="gnc-legend">' +
              '<span><b class="gnc-dot">\u25cf</b> class means (line: path so far)</span>' +
              '<span><b>\u2606</b> nearest simplex ETF</span>' +
              '<span><b>\u2715</b> classifier rows</span>' +
              '<span><b class="gnc-dash">- - -</b> ETF of the last step (defines the axes)</span>' +
              "</div>");
    html.push('<div class="gnc-panels"></div>');
    html.push('<div class="gnc-charts"></div>');
    html.push('<div class="gnc-readout"></div>');
    html.push('<div class="gnc-footer"></div>');
    this.root.innerHTML = html.join("");
    this.q = function (s) { return self.root.querySelector(s); };
    this.root.querySelectorAll("select[data-axis]").forEach(function (s) {
      s.addEventListener("change", function () { self.choose(s.getAttribute("data-axis"), s.value); });
    });
    this.q("select[data-view]").addEventListener("change", function (e) {
      self.view = e.target.value;
      self.note = "";
      self.render();
    });
    this.q(".gnc-step").addEventListener("input", function (e) {
      self.stepIndex = parseInt(e.target.value, 10);
      self.render();
    });
    this.q(".gnc-play").addEventListener("click", function () { self.togglePlay(); });
    this.setupDrag();
    this.lastWidth = this.root.clientWidth;
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        if (Math.abs(self.root.clientWidth - self.lastWidth) > 2) {
          self.lastWidth = self.root.clientWidth;
          self.render();
        }
      }).observe(this.root);
    }
  };

  Viewer.prototype.choose = function (axis, value) {
    var g = this.grid, self = this;
    var vals = g.axes[axis].filter(function (v) { return num(v) === value; });
    if (!vals.length) { this.note = "Not in the grid: " + AXIS_SHORT[axis] + " = " + value + "."; this.render(); return; }
    var before = {};
    AXES.forEach(function (a) { before[a] = self.sel[a]; });
    this.sel[axis] = vals[0];
    this.note = "";
    if (g.count(this.sel) < g.methods.length) {
      var c = g.nearest(this.sel, axis);
      if (!c) {
        this.note = "Not in the grid: " + AXIS_SHORT[axis] + " = " + fmtAxisValue(axis, vals[0]) +
                    " with these settings.";
      } else {
        var changed = AXES.filter(function (a) { return num(c[a]) !== num(self.sel[a]); });
        var was = changed.map(function (a) {
          return AXIS_SHORT[a] + " = " + fmtAxisValue(a, self.sel[a]); });
        var now = changed.map(function (a) { return AXIS_SHORT[a] + " = " + fmtAxisValue(a, c[a]); });
        AXES.forEach(function (a) { self.sel[a] = c[a]; });
        if (changed.length) {
          this.note = "Not in the grid: " + AXIS_SHORT[axis] + " = " + fmtAxisValue(axis, vals[0]) +
                      " with " + was.join(", ") + "; showing " + now.join(", ") + " instead.";
        }
      }
    }
    this.syncControls();
    this.render();
  };

  Viewer.prototype.syncControls = function () {
    var self = this;
    this.root.querySelectorAll("select[data-axis]").forEach(function (s) {
      s.value = num(self.sel[s.getAttribute("data-axis")]);
    });
    var three = this.q('select[data-view] option[value="3d"]'), C = Number(this.sel.C);
    var most = this.meta.max_3d || 6;
    three.disabled = C < 4 || C > most;
    three.textContent = C > most ? "3-D (C \u2264 " + most + " only)" : "3-D (drag to turn)";
    if (three.disabled && this.view === "3d") {
      this.view = "2d";
      this.note = (this.note ? this.note + " " : "") + (C < 4 ? "3-D needs C \u2265 4: showing the plane." :
        "3-D is drawn up to C = " + most + ": " + C + " vertices span " + (C - 1) +
        " dimensions, three of them show too little and the vertices crowd; showing the plane.");
    }
    this.q("select[data-view]").value = this.view;
    this.q(".gnc-step").value = String(this.stepIndex);
  };

  Viewer.prototype.togglePlay = function () {
    var self = this, btn = this.q(".gnc-play"), last = this.grid.steps.length - 1;
    if (this.playing) {
      clearInterval(this.playing);
      this.playing = null;
      btn.textContent = "\u25b6 play";
      return;
    }
    if (this.stepIndex >= last) { this.stepIndex = 0; }
    btn.textContent = "\u275a\u275a pause";
    this.playing = setInterval(function () {
      if (self.stepIndex >= last) { self.togglePlay(); return; }
      self.stepIndex += 1;
      self.q(".gnc-step").value = String(self.stepIndex);
      self.render();
    }, 280);
    this.q(".gnc-step").value = String(this.stepIndex);
    this.render();
  };

  Viewer.prototype.setupDrag = function () {
    var self = this, start = null;
    var panels = function () { return self.q(".gnc-panels"); };
    this.root.addEventListener("pointerdown", function (e) {
      if (self.view !== "3d" || !panels().contains(e.target)) { return; }
      start = {x: e.clientX, y: e.clientY, az: self.az, el: self.el};
      e.preventDefault();
    });
    window.addEventListener("pointermove", function (e) {
      if (!start) { return; }
      self.az = start.az + (e.clientX - start.x) * 0.6;
      self.el = Math.max(-89, Math.min(89, start.el + (e.clientY - start.y) * 0.6));
      self.renderPanels();
    });
    window.addEventListener("pointerup", function () { start = null; });
  };

  // ------------------------------------------------------------------------------- layout
  Viewer.prototype.layout = function () {
    var box = this.q(".gnc-panels");
    var W = Math.max(280, (box && box.clientWidth) || this.root.clientWidth || 760);
    var cols = W >= 560 ? 3 : 1, gap = 8;
    var cell = Math.floor((W - (cols - 1) * gap) / cols);
    return {W: W, cols: cols, panel: cell, chartW: cell, chartH: Math.round(cell * 0.66)};
  };

  Viewer.prototype.render = function () {
    var g = this.grid, self = this;
    this.runs = g.methods.map(function (m) { return g.run(self.sel, m); });
    var step = g.steps[this.stepIndex];
    this.q(".gnc-steplabel").textContent = "step " + step + " of " + g.steps[g.steps.length - 1] +
      " (snapshot " + (this.stepIndex + 1) + " of " + g.steps.length + ")";
    var s = this.sel, optText = optimizerLabel(g.data.optimizers, s.optimizer);
    this.q(".gnc-settings").textContent = "C = " + s.C + " classes, d = " + s.d + ", N = " +
      (s.n * s.C) + " features (" + s.n + " per class), " + optText + ", \u03c4 = " + s.tau +
      ", \u03b4 = " + fmtAxisValue("delta", s.delta) + " (implicit only), seed " + s.seed +
      "; full-batch steps.";
    var missing = g.methods.filter(function (m, i) { return !self.runs[i]; });
    var note = this.note;
    if (!note && missing.length === g.methods.length) {
      note = "No run in the grid for these settings.";
    }
    var noteEl = this.q(".gnc-note");
    noteEl.textContent = note;
    noteEl.style.display = note ? "" : "none";
    this.renderPanels();
    this.renderCharts();
    this.renderReadout();
    var p = g.data.provenance || {};
    var commit = ((p.git || {}).commit || "unknown").slice(0, 12) + ((p.git || {}).dirty ? "-dirty" : "");
    this.q(".gnc-footer").textContent = g.data.runs.length + " precomputed runs (" +
      (p.trainer || "guiding_nc.explorer.run_ufm") + "), commit " + commit +
      (p.date ? ", " + p.date.slice(0, 10) : "") + ".";
    this.root.setAttribute("data-state", JSON.stringify({sel: this.sel, step: step, view: this.view}));
  };

  // The frame of run r at the current step: the last snapshot at or before it.
  Viewer.prototype.frameIndex = function (r) {
    var step = this.grid.steps[this.stepIndex], idx = -1;
    for (var i = 0; i < r.steps.length; i++) { if (r.steps[i] <= step) { idx = i; } }
    return idx;
  };

  function point(arr, r, s, c, scale) {
    var k = r.dims, o = (s * r.C + c) * k;
    return [arr[o] / scale, arr[o + 1] / scale, k > 2 ? arr[o + 2] / scale : 0];
  }

  Viewer.prototype.project = function (p) {
    if (this.view !== "3d") { return [p[0], p[1], 0]; }
    var a = this.az * Math.PI / 180, e = this.el * Math.PI / 180;
    var x1 = Math.cos(a) * p[0] - Math.sin(a) * p[1];
    var y1 = Math.sin(a) * p[0] + Math.cos(a) * p[1];
    // screen x, screen y (up), depth (towards the viewer)
    return [x1, Math.cos(e) * p[2] - Math.sin(e) * y1, Math.sin(e) * p[2] + Math.cos(e) * y1];
  };

  Viewer.prototype.renderPanels = function () {
    var g = this.grid, self = this, L = this.layout(), scale = g.scale;
    var three = this.view === "3d";
    // One range for every run of this C: a margin around the reference ETF, whose size depends
    // on C alone, so changing any other setting (or the step) never rescales the panels. The
    // rare point beyond it is clipped at the frame.
    var R = 0;
    this.runs.forEach(function (r) {
      if (!r) { return; }
      var arr = r.reference, k = r.dims;
      for (var i = 0; i + k - 1 < arr.length; i += k) {
        var v = three ? Math.sqrt(arr[i] * arr[i] + arr[i + 1] * arr[i + 1] +
                                  (k > 2 ? arr[i + 2] * arr[i + 2] : 0))
                      : Math.max(Math.abs(arr[i]), Math.abs(arr[i + 1]));
        if (v > R) { R = v; }
      }
    });
    R = (R / scale || 1) * (three ? 1.4 : 1.25);
    var out = g.methods.map(function (m, i) {
      return self.panelSVG(m, self.runs[i], L.panel, R);
    });
    this.q(".gnc-panels").innerHTML = out.join("");
  };

  function niceStep(span, target) {
    var raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var c = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < c.length; i++) { if (c[i] * p >= raw) { return c[i] * p; } }
    return 10 * p;
  }

  function star(cx, cy, r) {
    var pts = [];
    for (var i = 0; i < 10; i++) {
      var a = -Math.PI / 2 + i * Math.PI / 5, rr = i % 2 ? r * 0.45 : r;
      pts.push((cx + rr * Math.cos(a)).toFixed(1) + "," + (cy + rr * Math.sin(a)).toFixed(1));
    }
    return pts.join(" ");
  }

  Viewer.prototype.panelSVG = function (method, r, P, R) {
    var info = this.methodInfo[method] || {}, label = info.label || method;
    var colour = info.colour || "#333";
    var three = this.view === "3d", self = this;
    var left = three ? 12 : 42, right = 10, top = 24, bottom = three ? 22 : 34, foot = 14;
    var side = Math.min(P - left - right, P - top - bottom);
    var PH = P + foot;  // a line under the axes for the share of the means in view
    var cx = left + side / 2, cy = top + side / 2;
    var X = function (x) { return cx + x / R * side / 2; };
    var Y = function (y) { return cy - y / R * side / 2; };
    var s = ['<svg class="gnc-panel" width="' + P + '" height="' + PH + '" viewBox="0 0 ' + P + " " +
             PH + '" role="img" aria-label="' + esc(label) + ' at this step">'];
    s.push('<text x="' + (P / 2) + '" y="15" class="gnc-title" text-anchor="middle" style="fill:' +
           colour + '">' + esc(label) + "</text>");
    s.push('<rect x="' + (cx - side / 2) + '" y="' + (cy - side / 2) + '" width="' + side +
           '" height="' + side + '" class="gnc-frame"/>');
    var clip = this.root.id + "-clip-" + method;
    s.push('<clipPath id="' + esc(clip) + '"><rect x="' + (cx - side / 2) + '" y="' +
           (cy - side / 2) + '" width="' + side + '" height="' + side + '"/></clipPath>');
    if (!three) {
      var st = niceStep(2 * R, 4);
      for (var t = -Math.floor(R / st) * st; t <= R + 1e-9; t += st) {
        var tt = Math.abs(t) < 1e-9 ? 0 : t, lab = String(Number(tt.toPrecision(3))).replace("-", "\u2212");
        s.push('<line x1="' + X(tt) + '" x2="' + X(tt) + '" y1="' + (cy - side / 2) + '" y2="' +
               (cy + side / 2) + '" class="gnc-grid"/>');
        s.push('<line y1="' + Y(tt) + '" y2="' + Y(tt) + '" x1="' + (cx - side / 2) + '" x2="' +
               (cx + side / 2) + '" class="gnc-grid"/>');
        s.push('<text x="' + X(tt) + '" y="' + (cy + side / 2 + 12) + '" class="gnc-tick" ' +
               'text-anchor="middle">' + lab + "</text>");
        s.push('<text x="' + (cx - side / 2 - 3) + '" y="' + (Y(tt) + 3.5) + '" class="gnc-tick" ' +
               'text-anchor="end">' + lab + "</text>");
      }
      s.push('<text x="' + cx + '" y="' + (P - 4) + '" class="gnc-axis" text-anchor="middle">' +
             "basis direction 1</text>");
      s.push('<text transform="translate(11,' + cy + ') rotate(-90)" class="gnc-axis" ' +
             'text-anchor="middle">basis direction 2</text>');
    } else {
      // The axes of the 3-D basis, from the origin.
      [[1, 0, 0], [0, 1, 0], [0, 0, 1]].forEach(function (e, k) {
        var a = self.project([e[0] * R * 0.9, e[1] * R * 0.9, e[2] * R * 0.9]);
        var b = self.project([-e[0] * R * 0.9, -e[1] * R * 0.9, -e[2] * R * 0.9]);
        s.push('<line x1="' + X(b[0]) + '" y1="' + Y(b[1]) + '" x2="' + X(a[0]) + '" y2="' +
               Y(a[1]) + '" class="gnc-axis3"/>');
        s.push('<text x="' + X(a[0] * 1.06) + '" y="' + (Y(a[1] * 1.06) + 4) + '" ' +
               'class="gnc-tick" text-anchor="middle">' + (k + 1) + "</text>");
      });
      s.push('<text x="' + cx + '" y="' + (P - 5) + '" class="gnc-axis" text-anchor="middle">' +
             "basis directions 1, 2, 3 (drag to turn)</text>");
    }
    if (!r) {
      s.push('<text x="' + cx + '" y="' + cy + '" class="gnc-missing" text-anchor="middle">' +
             "not in the grid</text></svg>");
      return s.join("");
    }
    var fi = this.frameIndex(r), C = r.C, sc = this.grid.scale;
    var P3 = function (arr, si, c) { return self.project(point(arr, r, si, c, sc)); };
    s.push('<g clip-path="url(#' + esc(clip) + ')">');
    // The reference ETF: a regular polygon in class order (in 3-D for C = 4, a tetrahedron).
    var ref = [];
    for (var c = 0; c < C; c++) { ref.push(self.project(point(r.reference, r, 0, c, sc))); }
    var edges = [];
    if (three && C === 4) {
      for (var i = 0; i < 4; i++) { for (var j = i + 1; j < 4; j++) { edges.push([i, j]); } }
    } else {
      for (var k2 = 0; k2 < C; k2++) { edges.push([k2, (k2 + 1) % C]); }
    }
    edges.forEach(function (e) {
      s.push('<line x1="' + X(ref[e[0]][0]) + '" y1="' + Y(ref[e[0]][1]) + '" x2="' +
             X(ref[e[1]][0]) + '" y2="' + Y(ref[e[1]][1]) + '" class="gnc-ref"/>');
    });
    if (fi < 0) {
      s.push('</g><text x="' + cx + '" y="' + cy + '" class="gnc-missing" text-anchor="middle">' +
             (r.steps.length ? "no snapshot yet" : "this run failed") + "</text></svg>");
      return s.join("");
    }
    // Trails: every snapshot up to this one.
    for (c = 0; c < C; c++) {
      var pts = [];
      for (var si = 0; si <= fi; si++) {
        var q = P3(r.means, si, c);
        pts.push(X(q[0]).toFixed(1) + "," + Y(q[1]).toFixed(1));
      }
      s.push('<polyline points="' + pts.join(" ") + '" class="gnc-trail" stroke="' +
             classColour(c, C) + '"/>');
    }
    // Markers, far ones first.
    var marks = [];
    for (c = 0; c < C; c++) {
      marks.push({kind: "etf", c: c, p: P3(r.etf, fi, c)});
      marks.push({kind: "mean", c: c, p: P3(r.means, fi, c)});
      marks.push({kind: "cls", c: c, p: P3(r.classifier, fi, c)});
    }
    marks.sort(function (a, b) { return a.p[2] - b.p[2]; });
    marks.forEach(function (m) {
      var x = X(m.p[0]), y = Y(m.p[1]), col = classColour(m.c, C);
      if (m.kind === "mean") {
        s.push('<circle cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) + '" r="4.5" fill="' + col +
               '" class="gnc-mean"/>');
      } else if (m.kind === "etf") {
        s.push('<polygon points="' + star(x, y, 9) + '" stroke="' + col + '" class="gnc-star"/>');
      } else {
        // a dark underlay keeps the cross visible on a dot of its own colour
        var d = "M" + (x - 5).toFixed(1) + "," + (y - 5).toFixed(1) + "L" + (x + 5).toFixed(1) + "," +
                (y + 5).toFixed(1) + "M" + (x - 5).toFixed(1) + "," + (y + 5).toFixed(1) + "L" +
                (x + 5).toFixed(1) + "," + (y - 5).toFixed(1);
        s.push('<path d="' + d + '" class="gnc-crossunder"/>');
        s.push('<path d="' + d + '" stroke="' + col + '" class="gnc-cross"/>');
      }
    });
    s.push("</g>");
    var cap = three ? r.captured3 : r.captured2;
    if (cap && cap.length > fi && cap[fi] !== null) {
      s.push('<text x="' + cx + '" y="' + (PH - 3) + '" class="gnc-small" text-anchor="middle">' +
             (three ? "the view shows " : "the plane shows ") + Math.round(100 * cap[fi]) +
             "% of \u2016H\u0303\u2016\u00b2</text>");
    }
    if (r.status !== "completed") {
      var stopped = r.steps.length ? r.steps[r.steps.length - 1] : 0;
      var how = r.status.indexOf("diverged") === 0 ? "diverged" : "stopped";
      s.push('<text x="' + cx + '" y="' + (cy - side / 2 + 13) + '" class="gnc-warn" ' +
             'text-anchor="middle">' + how + " after step " + stopped + "</text>");
    }
    s.push("</svg>");
    return s.join("");
  };

  // ------------------------------------------------------------------------------- curves
  var CHARTS = [
    {key: "top1", title: "train accuracy (%)", log: false, scale: 100},
    {key: "loss", title: "loss (dashed: lower bound)", log: true},
    {key: "nc1", title: "NC1 (within-class spread)", log: true},
    {key: "nc3", title: "NC3 (classifier vs means)", log: true},
    {key: "cosine_margin_mean", title: "cosine margin (faint: min)", log: false,
     also: "cosine_margin_min"}
  ];

  Viewer.prototype.renderCharts = function () {
    var self = this, L = this.layout();
    var parts = CHARTS.map(function (ch) { return self.chartSVG(ch, L.chartW, L.chartH); });
    parts.push(this.legendSVG(L.chartW, L.chartH));
    this.q(".gnc-charts").innerHTML = parts.join("");
  };

  Viewer.prototype.chartSVG = function (ch, W, H) {
    var g = this.grid, self = this, runs = this.runs;
    var left = 46, right = 10, top = 20, bottom = 30;
    var w = W - left - right, h = H - top - bottom;
    var maxStep = g.steps[g.steps.length - 1];
    var xs = function (step) { return left + w * Math.log1p(step) / Math.log1p(maxStep); };
    var vals = [];
    var series = function (r, key) {
      var ys = (r.metrics[key] || []).map(function (v) {
        return v === null ? null : v * (ch.scale || 1);
      });
      return ys;
    };
    runs.forEach(function (r) {
      if (!r) { return; }
      [ch.key, ch.also].forEach(function (k) {
        if (!k) { return; }
        series(r, k).forEach(function (v) { if (v !== null && (!ch.log || v > 0)) { vals.push(v); } });
      });
    });
    var bound = null;
    if (ch.key === "loss") {
      runs.forEach(function (r) { if (r && r.loss_bound) { bound = r.loss_bound; } });
      if (bound) { vals.push(bound); }
    }
    var top1 = null;
    if (ch.key === "cosine_margin_mean") {
      top1 = self.sel.C / (self.sel.C - 1);  // the largest margin, reached by a simplex ETF
      vals.push(top1);
    }
    var lo, hi, ys, ticks = [];
    if (!vals.length) { vals = [0, 1]; }
    lo = Math.min.apply(null, vals);
    hi = Math.max.apply(null, vals);
    if (ch.log) {
      var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
      if (b - a < 1) { b = a + 1; }
      var stride = Math.max(1, Math.ceil((b - a) / 5));
      for (var k = a; k <= b; k += stride) { ticks.push({v: Math.pow(10, k), t: pow10Label(k)}); }
      lo = Math.pow(10, a);
      hi = Math.pow(10, b);
      ys = function (v) { return top + h - h * (Math.log10(v) - a) / (b - a); };
    } else {
      if (ch.key === "top1") { lo = 0; hi = 100; } else {
        var pad = (hi - lo) * 0.06 || 0.5;
        lo -= pad;
        hi += pad;
      }
      var st = niceStep(hi - lo, 4);
      for (var t = Math.ceil(lo / st) * st; t <= hi + 1e-9; t += st) {
        var tt = Math.abs(t) < 1e-9 ? 0 : t;
        ticks.push({v: tt, t: String(Number(tt.toPrecision(3))).replace("-", "\u2212")});
      }
      ys = function (v) { return top + h - h * (v - lo) / (hi - lo); };
    }
    var s = ['<svg class="gnc-chart" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " +
             H + '" role="img" aria-label="' + esc(ch.title) + '">'];
    s.push('<text x="' + (left + w / 2) + '" y="13" class="gnc-ctitle" text-anchor="middle">' +
           esc(ch.title) + "</text>");
    s.push('<rect x="' + left + '" y="' + top + '" width="' + w + '" height="' + h +
           '" class="gnc-frame"/>');
    ticks.forEach(function (tk) {
      var y = ys(tk.v);
      s.push('<line x1="' + left + '" x2="' + (left + w) + '" y1="' + y + '" y2="' + y +
             '" class="gnc-grid"/>');
      s.push('<text x="' + (left - 3) + '" y="' + (y + 3.5) + '" class="gnc-tick" text-anchor="end">' +
             tk.t + "</text>");
    });
    [0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000].forEach(function (v) {
      if (v > maxStep) { return; }
      var x = xs(v);
      s.push('<line x1="' + x + '" x2="' + x + '" y1="' + top + '" y2="' + (top + h) +
             '" class="gnc-grid"/>');
      s.push('<text x="' + x + '" y="' + (top + h + 12) + '" class="gnc-tick" ' +
             'text-anchor="middle">' + v + "</text>");
    });
    s.push('<text x="' + (left + w / 2) + '" y="' + (H - 3) + '" class="gnc-axis" ' +
           'text-anchor="middle">optimiser step (log scale)</text>');
    if (bound) {
      s.push('<line x1="' + left + '" x2="' + (left + w) + '" y1="' + ys(bound) + '" y2="' +
             ys(bound) + '" class="gnc-bound"/>');
    }
    if (top1 !== null) {
      s.push('<line x1="' + left + '" x2="' + (left + w) + '" y1="' + ys(top1) + '" y2="' +
             ys(top1) + '" class="gnc-bound"/>');
    }
    var clampY = function (v) {
      if (ch.log) { v = Math.max(v, lo); }
      return Math.max(top, Math.min(top + h, ys(v)));
    };
    runs.forEach(function (r, i) {
      if (!r) { return; }
      var info = self.methodInfo[g.methods[i]] || {};
      [[ch.key, 1], [ch.also, 0.4]].forEach(function (pair) {
        if (!pair[0]) { return; }
        var y = series(r, pair[0]), pts = [];
        for (var j = 0; j < r.steps.length; j++) {
          if (y[j] === null || (ch.log && !(y[j] > 0))) { continue; }
          pts.push(xs(r.steps[j]).toFixed(1) + "," + clampY(y[j]).toFixed(1));
        }
        s.push('<polyline points="' + pts.join(" ") + '" fill="none" stroke="' +
               (info.colour || "#333") + '" stroke-width="' + (pair[1] === 1 ? 1.8 : 1.2) +
               '" stroke-opacity="' + pair[1] + '" stroke-dasharray="' +
               (DASH[info.dash] || "") + '"/>');
      });
    });
    // The current step, and each method's value there.
    var step = g.steps[this.stepIndex], xm = xs(step);
    s.push('<line x1="' + xm + '" x2="' + xm + '" y1="' + top + '" y2="' + (top + h) +
           '" class="gnc-now"/>');
    runs.forEach(function (r, i) {
      if (!r) { return; }
      var fi = self.frameIndex(r);
      var v = fi >= 0 ? series(r, ch.key)[fi] : null;
      if (v === null || v === undefined || (ch.log && !(v > 0))) { return; }
      s.push('<circle cx="' + xs(r.steps[fi]) + '" cy="' + clampY(v) + '" r="3.5" fill="' +
             ((self.methodInfo[g.methods[i]] || {}).colour || "#333") + '" class="gnc-nowdot"/>');
    });
    s.push("</svg>");
    return s.join("");
  };

  Viewer.prototype.legendSVG = function (W, H) {
    var g = this.grid, self = this;
    var s = ['<svg class="gnc-chart gnc-legendbox" width="' + W + '" height="' + H + '" viewBox="0 0 ' +
             W + " " + H + '" role="img" aria-label="legend">'];
    s.push('<text x="12" y="20" class="gnc-ctitle">lines: one per method</text>');
    g.methods.forEach(function (m, i) {
      var info = self.methodInfo[m] || {}, y = 38 + i * 18;
      s.push('<line x1="12" x2="48" y1="' + y + '" y2="' + y + '" stroke="' + (info.colour || "#333") +
             '" stroke-width="2" stroke-dasharray="' + (DASH[info.dash] || "") + '"/>');
      s.push('<text x="56" y="' + (y + 4) + '" class="gnc-legendtext">' + esc(info.label || m) +
             "</text>");
    });
    var y0 = 38 + g.methods.length * 18;
    s.push('<line x1="12" x2="48" y1="' + y0 + '" y2="' + y0 + '" class="gnc-bound"/>');
    s.push('<text x="56" y="' + (y0 + 4) + '" class="gnc-legendtext">loss: lower bound</text>');
    s.push('<text x="56" y="' + (y0 + 19) + '" class="gnc-legendtext">margin: at most C/(C\u22121)</text>');
    s.push('<line x1="30" x2="30" y1="' + (y0 + 25) + '" y2="' + (y0 + 39) + '" class="gnc-now"/>');
    s.push('<text x="56" y="' + (y0 + 36) + '" class="gnc-legendtext">the step shown above</text>');
    s.push("</svg>");
    return s.join("");
  };

  // ------------------------------------------------------------------------------- numbers
  var READOUT = ["train acc. (%)", "loss", "loss \u2212 bound", "NC1", "NC3", "cos. margin mean",
                 "cos. margin min", "distance to ETF"];

  // The numbers of every method at this step: ``{label, colour, cells, tail}`` per method.
  Viewer.prototype.readoutRows = function () {
    var g = this.grid, self = this, step = g.steps[this.stepIndex];
    return g.methods.map(function (m, i) {
      var r = self.runs[i], info = self.methodInfo[m] || {}, label = info.label || m;
      var out = {label: label, colour: info.colour || "#333", cells: null, tail: ""};
      if (!r) { return out; }
      var fi = self.frameIndex(r);
      var v = function (k) { return fi >= 0 ? r.metrics[k][fi] : null; };
      var acc = v("top1");
      var gap = v("loss") !== null && r.loss_bound !== null ? v("loss") - r.loss_bound : null;
      out.cells = [acc === null ? null : fmt(100 * acc, 3), fmt(v("loss")), fmt(gap), fmt(v("nc1")),
                   fmt(v("nc3")), fmt(v("cosine_margin_mean")), fmt(v("cosine_margin_min")),
                   fmt(v("etf_distance"))];
      if (r.status !== "completed" && fi === r.steps.length - 1 && step > r.steps[fi]) {
        out.tail = label + ": " + r.status.split(":")[0] + " after step " + r.steps[fi] +
                   "; the row shows that step";
      }
      return out;
    });
  };

  Viewer.prototype.renderReadout = function () {
    var g = this.grid, step = g.steps[this.stepIndex], rows = this.readoutRows();
    var cell = function (c) { return "<td>" + (c === null ? "\u2013" : esc(c)) + "</td>"; };
    var warn = rows.filter(function (r) { return r.tail; }).map(function (r) {
      return '<div class="gnc-warn">' + esc(r.tail) + "</div>";
    }).join("");
    if (this.layout().cols === 1) {
      // A narrow screen: one row per number, one column per method.
      var t = ['<table class="gnc-table gnc-narrow"><thead><tr><th>at step ' + step + "</th>"];
      rows.forEach(function (r) {
        t.push('<th class="gnc-mname" style="color:' + esc(r.colour) + '">' + esc(r.label) + "</th>");
      });
      t.push("</tr></thead><tbody>");
      READOUT.forEach(function (name, j) {
        t.push("<tr><td>" + esc(name) + "</td>" + rows.map(function (r) {
          return r.cells ? cell(r.cells[j]) : (j === 0 ? "<td>not in the grid</td>" : "<td></td>");
        }).join("") + "</tr>");
      });
      t.push("</tbody></table>");
      this.q(".gnc-readout").innerHTML = t.join("") + warn;
      return;
    }
    this.renderReadoutWide(step);
  };

  Viewer.prototype.renderReadoutWide = function (step) {
    var g = this.grid, self = this;
    var rows = ['<table class="gnc-table"><thead><tr><th>at step ' + step + "</th>" +
                "<th>train acc. (%)</th><th>loss</th><th>loss \u2212 bound</th><th>NC1</th>" +
                "<th>NC3</th><th>cos. margin mean / min</th><th>distance to ETF</th></tr></thead><tbody>"];
    g.methods.forEach(function (m, i) {
      var r = self.runs[i], info = self.methodInfo[m] || {}, label = info.label || m;
      var name = '<td class="gnc-mname" style="color:' + esc(info.colour || "#333") + '">' +
                 esc(info.label || m) + "</td>";
      if (!r) {
        rows.push("<tr>" + name + '<td colspan="7">not in the grid</td></tr>');
        return;
      }
      var fi = self.frameIndex(r);
      var v = function (k) { return fi >= 0 ? r.metrics[k][fi] : null; };
      var acc = v("top1");
      var gap = v("loss") !== null && r.loss_bound !== null ? v("loss") - r.loss_bound : null;
      var cells = [acc === null ? null : fmt(100 * acc, 3), fmt(v("loss")), fmt(gap), fmt(v("nc1")),
                   fmt(v("nc3")), fmt(v("cosine_margin_mean")) + " / " + fmt(v("cosine_margin_min")),
                   fmt(v("etf_distance"))];
      var tail = r.status !== "completed" && fi === r.steps.length - 1 && step > r.steps[fi] ?
        '<span class="gnc-warn">' + esc(label) + ": " + esc(r.status.split(":")[0]) +
        " after step " + r.steps[fi] + "; the row shows that step</span>" : "";
      rows.push("<tr>" + name + cells.map(function (c) {
        return "<td>" + (c === null ? "\u2013" : esc(c)) + "</td>";
      }).join("") + "</tr>" + (tail ? '<tr><td></td><td colspan="7">' + tail + "</td></tr>" : ""));
    });
    rows.push("</tbody></table>");
    this.q(".gnc-readout").innerHTML = rows.join("");
  };

  // ------------------------------------------------------------------------------- mounting
  function fail(root, text) {
    root.innerHTML = '<div class="gnc-note">' + esc(text) + "</div>";
  }

  function decode(b64) {
    var bin = atob(b64.replace(/\s+/g, "")), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  window.GNCExplorer = {
    mount: function (id) {
      var root = document.getElementById(id);
      if (!root) { return; }
      var dataEl = document.getElementById(id + "-data");
      var metaEl = document.getElementById(id + "-meta");
      if (!dataEl) { fail(root, "The explorer's data is missing from this page."); return; }
      if (typeof DecompressionStream === "undefined") {
        fail(root, "This browser cannot unpack the explorer's data (no DecompressionStream); " +
                   "a current Chromium, Firefox or Safari can.");
        return;
      }
      var meta = {};
      try { meta = JSON.parse(metaEl ? metaEl.textContent : "{}"); } catch (e) { meta = {}; }
      decode(dataEl.textContent).then(function (data) {
        if (!data || !data.runs || !data.runs.length) {
          fail(root, "The explorer grid holds no runs.");
          return;
        }
        root.gncViewer = new Viewer(root, data, meta);
      }).catch(function (err) {
        fail(root, "The explorer could not start: " + (err && err.message ? err.message : err));
      });
    }
  };
})();
