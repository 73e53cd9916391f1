// The gateway's page: plain JS, no libraries, nothing fetched but this gateway's own API.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(body, status) {
  const e = $("error");
  e.hidden = false;
  e.dataset.status = String(status);
  e.textContent = `${status} ${body.error || "error"}: ${body.cause || JSON.stringify(body)}`;
}

function clearOut() {
  $("error").hidden = true;
  $("error").textContent = "";
  for (const id of ["prediction", "plaintext", "cost-scope", "cost-chart", "cost-table"]) {
    $(id).textContent = "";
  }
}

async function api(path, options) {
  const r = await fetch(path, options);
  let body;
  try { body = await r.json(); } catch (_) { body = { error: "not JSON", cause: r.statusText }; }
  return { ok: r.ok, status: r.status, body };
}

function fmtBytes(b) {
  if (b >= 1e6) return (b / 1e6).toFixed(2) + " MB";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kB";
  return b + " B";
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const n = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

// three bar panels (bytes, rounds, seconds), one bar per layer, drawn as inline SVG
function drawChart(layers) {
  const metrics = [["bytes", fmtBytes], ["rounds", String], ["seconds", (s) => s.toFixed(3) + " s"]];
  const rowH = 16, labelW = 110, panelW = 210, gap = 20;
  const h = 24 + rowH * layers.length;
  const svg = el("svg", { id: "cost-svg", width: labelW + 3 * (panelW + gap), height: h,
                          role: "img", "aria-label": "cost per layer" });
  layers.forEach((l, i) => {
    svg.appendChild(el("text", { x: 0, y: 24 + rowH * i + 11 }, l.name));
  });
  metrics.forEach(([m, fmt], p) => {
    const x0 = labelW + p * (panelW + gap);
    svg.appendChild(el("text", { x: x0, y: 12, "font-weight": "bold" }, m));
    const max = Math.max(1e-12, ...layers.map((l) => l[m]));
    layers.forEach((l, i) => {
      const w = Math.max(1, (panelW - 70) * l[m] / max);
      svg.appendChild(el("rect", { x: x0, y: 24 + rowH * i, width: w, height: rowH - 4,
                                   fill: ["#4a7ab5", "#d08a2e", "#5a9e5a"][p],
                                   class: "bar", "data-layer": l.name, "data-metric": m,
                                   "data-value": l[m] }));
      svg.appendChild(el("text", { x: x0 + w + 3, y: 24 + rowH * i + 10 }, fmt(l[m])));
    });
  });
  $("cost-chart").appendChild(svg);
}

function drawTable(cost) {
  const t = $("cost-table");
  const head = t.insertRow();
  for (const h of ["layer", "bytes (3 servers)", "rounds (P1)", "time (P0)"]) {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  }
  for (const l of [...cost.layers, { name: "TOTAL", ...cost.total }]) {
    const r = t.insertRow();
    for (const v of [l.name, fmtBytes(l.bytes), l.rounds, l.seconds.toFixed(4) + " s"]) {
      r.insertCell().textContent = v;
    }
  }
}

function showText(res) {
  let text;
  if (res.tokens) {
    text = `tokens: ${res.tokens.map((t) => t.join(" ")).join(" | ")}`;
    if (res.text) text += `; text: ${res.text.join(" | ")}`;
  } else {
    const e = res.embeddings;
    text = `${e.length} embedding(s) of ${e[0].length} values (${res.pooling}); first: ` +
      e[0].slice(0, 4).map((v) => v.toFixed(4)).join(", ") + ", ...";
  }
  $("prediction").textContent = text;
}

function showResult(res) {
  if (!res.predictions) { showText(res); showChecks(res); return; }
  const p = res.predictions[0];
  const name = p.name ? ` (${p.name})` : "";
  let text = `label ${p.label}${name}`;
  if (p.top_k) text += `; top ${p.top_k.length}: ${p.top_k.join(", ")}`;
  $("prediction").textContent = text;
  $("prediction").dataset.label = String(p.label);
  showChecks(res);
}

function showChecks(res) {
  const pc = res.plaintext_check;
  if (pc.available) {
    const err = pc.max_abs_logit_error !== undefined
      ? `; max |secure - plaintext| logit ${pc.max_abs_logit_error.toExponential(2)}` : "";
    $("plaintext").textContent = `plaintext model ${pc.model}: label ${pc.labels[0]}, ` +
      (pc.agrees ? "agrees" : "DISAGREES") + err;
    $("plaintext").className = pc.agrees ? "ok" : "bad";
  } else {
    $("plaintext").textContent = `not available: ${pc.reason}`;
    $("plaintext").className = "note";
  }
  const c = res.cost;
  if (c.available) {
    $("cost-scope").textContent = `${c.scope}. ${c.definition}. Total: ${fmtBytes(c.total.bytes)}, ` +
      `${c.total.rounds} rounds, ${c.total.seconds.toFixed(3)} s; ` +
      `${c.wall_seconds.toFixed(3)} s at the gateway.`;
    drawChart(c.layers);
    drawTable(c);
  } else {
    $("cost-scope").textContent = `no per-layer cost: ${c.reason}`;
  }
}

async function submit(path, options) {
  clearOut();
  $("busy").hidden = false;
  try {
    const r = await api(path, options);
    if (!r.ok) showError(r.body, r.status); else showResult(r.body);
  } catch (e) {
    showError({ error: "the gateway is unreachable", cause: String(e) }, 0);
  } finally {
    $("busy").hidden = true;
    document.body.dataset.done = String(Date.now());
  }
}

$("classify-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = $("file").files[0];
  if (!f) { showError({ error: "no file", cause: "choose an image file first" }, 0); return; }
  const form = new FormData();
  form.append("file", f);
  submit("/v1/classify", { method: "POST", body: form });
});

// "5,17,42" is sent as token ids, anything else as text (the gateway's tokenizer, if any)
function textBody(extra) {
  const v = $("text").value.trim();
  const ids = /^\d+(\s*,\s*\d+)*$/.test(v) ? v.split(",").map((t) => parseInt(t, 10)) : null;
  return JSON.stringify({ ...(ids ? { input_ids: ids } : { text: v }), ...extra });
}

function postText(path, extra) {
  submit(path, { method: "POST", headers: { "content-type": "application/json" },
                 body: textBody(extra) });
}

$("text-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  postText("/v1/embed", {});
});
$("generate").addEventListener("click", () => postText("/v1/generate", { max_new_tokens: 16 }));

(async () => {
  const h = await api("/v1/health").catch((e) => ({ ok: false, body: { cause: String(e) } }));
  $("status").textContent = h.ok ? "all three servers are serving"
    : `servers not all serving: ${JSON.stringify(h.body.servers || h.body)}`;
  $("status").className = h.ok ? "ok" : "bad";
  const m = await api("/v1/model");
  if (m.ok) {
    const b = m.body;
    $("model").textContent = `input ${b.input_shape.join("x")}; output ${b.output.mode}` +
      (b.output.k ? ` (k=${b.output.k})` : "") + `; image upload: ${b.image_upload}`;
  } else {
    $("model").textContent = `model unknown: ${m.body.error}: ${m.body.cause}`;
  }
})();
