// captionlab serve: the page's script. Plain JavaScript, no libraries, talks only to /api.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const state = {
  image: null,        // the Blob being analysed
  run: 0,             // increases with every new image: late answers for older ones are dropped
  models: [],
  classes: [],        // [{index, name, synonyms}]
  top: null,          // the top class of the current image
  salTarget: null,    // the class the saliency maps explain (null: the top class)
  dreamTimer: null,
  explainSeq: 0,      // the latest explain request: answers to earlier ones are dropped
};

// ----------------------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server cannot be reached");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function form(fields) {
  const data = new FormData();
  for (const [key, value] of Object.entries(fields)) {
    if (value === null || value === undefined || value === "") continue;
    if (value instanceof Blob) data.append(key, value, value.name || "image.png");
    else data.append(key, String(value));
  }
  return { method: "POST", body: data };
}

function dataUrlToBlob(url) {
  const [head, b64] = url.split(",");
  const type = head.slice(5).split(";")[0];
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

const pct = (p) => (p >= 0.995 ? "99+" : p < 0.001 ? "<0.1" : (100 * p).toFixed(p < 0.1 ? 1 : 0)) + "%";

function errorNode(message, tag = "p") {
  return el(tag, { class: "error", role: "alert", text: message });
}

function setFrame(frame, src, alt) {
  frame.classList.remove("loading");
  frame.replaceChildren();
  if (src) frame.append(el("img", { src, alt, decoding: "async" }));
}

function loading(frame) {
  frame.replaceChildren();
  frame.classList.add("loading");
}

// ----------------------------------------------------------------------------- status
async function refreshStatus() {
  const status = $("#status");
  try {
    const h = await api("/api/health");
    const busy = h.queue.pending > 0;
    status.className = "status " + (busy ? "busy" : "ok");
    const n = h.models.length;
    status.textContent = `${n} model${n === 1 ? "" : "s"} · ${h.device}` +
      (busy ? ` · ${h.queue.pending} working` : " · ready");
  } catch (err) {
    status.className = "status down";
    status.textContent = "server unreachable";
  }
}

// ----------------------------------------------------------------------------- the image
function chooseImage(blob, label) {
  if (!blob || !blob.type.startsWith("image/")) {
    $("#image-meta").replaceChildren(errorNode("That is not an image file."));
    return;
  }
  state.image = blob;
  state.run += 1;
  state.salTarget = null;
  const preview = $("#preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("#drop").classList.add("has-image");
  const kb = blob.size > 0 ? ` · ${(blob.size / 1024).toFixed(0)} KB` : "";
  $("#image-meta").textContent = `${label}${kb}`;
  analyse();
}

function setReferences(references) {
  const box = $("#references");
  if (!references) { box.hidden = true; return; }
  $("#reference-list").replaceChildren(...references.map((r) => el("li", { text: r })));
  box.hidden = false;
}

async function loadExamples() {
  const list = $("#examples");
  let ex;
  try { ex = await api("/api/examples"); } catch (err) { return; }
  for (const photo of ex.photos) {
    const button = el("button", { class: "thumb", type: "button", title: `example photo: ${photo.name}` },
      el("span", { class: "pic" }, el("img", { src: photo.url, alt: "", loading: "lazy" })),
      photo.name);
    button.addEventListener("click", async () => {
      markActive(button);
      const response = await fetch(photo.url);
      const blob = await response.blob();
      setReferences(null);
      chooseImage(new File([blob], `${photo.name}.png`, { type: "image/png" }), `example: ${photo.name}`);
    });
    list.append(button);
  }
  const shapes = el("button", { class: "thumb shapes", type: "button", title: "a random shapes scene like the captioners' training data" },
    el("span", { class: "pic" }), "shapes");
  shapes.querySelector(".pic").innerHTML =
    '<svg viewBox="0 0 56 56" aria-hidden="true"><circle cx="17" cy="18" r="9" fill="#d92b2b"/>' +
    '<rect x="30" y="30" width="18" height="18" rx="1" fill="#2346d6"/>' +
    '<polygon points="14,48 24,30 34,48" fill="#f0c419"/></svg>';
  shapes.addEventListener("click", async () => {
    markActive(shapes);
    try {
      const scene = await api(ex.shapes_url);
      setReferences(scene.references);
      chooseImage(new File([dataUrlToBlob(scene.image)], `shapes-${scene.seed}.png`, { type: "image/png" }),
        `shapes scene, seed ${scene.seed}`);
    } catch (err) {
      $("#image-meta").replaceChildren(errorNode(err.message));
    }
  });
  list.append(shapes);
}

function markActive(button) {
  $$(".thumb").forEach((b) => b.classList.toggle("active", b === button));
}

function setupPicking() {
  const drop = $("#drop");
  const file = $("#file");
  drop.addEventListener("click", (e) => { if (e.target.tagName !== "INPUT") file.click(); });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
  });
  file.addEventListener("change", () => {
    if (file.files[0]) { markActive(null); setReferences(null); chooseImage(file.files[0], file.files[0].name); }
    file.value = "";
  });
  const overlay = $("#overlay");
  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth += 1; overlay.hidden = false; });
  window.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) { depth = 0; overlay.hidden = true; } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const f = e.dataTransfer.files[0];
    if (f) { markActive(null); setReferences(null); chooseImage(f, f.name); }
  });
  window.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) { markActive(null); setReferences(null); chooseImage(item.getAsFile(), "pasted image"); }
  });
}

// ----------------------------------------------------------------------------- analysis
function analyse() {
  const run = state.run;
  captions(run).then(() => explain(run));
  classify(run).then(() => saliencyAll(run));
}

async function captions(run) {
  const box = $("#captions");
  if (!state.models.length) {
    box.replaceChildren(el("p", { class: "empty" },
      "No trained captioning models on this server. Train one (", el("code", { text: "make demo" }),
      ") and start it with ", el("code", { text: "--models demo_out/runs" }), "."));
    return;
  }
  box.classList.add("busy");
  box.replaceChildren(...state.models.map((m) => modelBlock(m.name, m.cell, [el("p", { class: "empty", text: "writing…" })])));
  try {
    const out = await api("/api/caption", form({ image: state.image, beam: $("#beam").value }));
    if (run !== state.run) return;
    box.replaceChildren(...out.results.map((r) => {
      const info = state.models.find((m) => m.name === r.model) || { cell: "" };
      // a caption's attention strip goes under the last line with its words (greedy and beam
      // search often agree: then one strip, under the beam line)
      const last = new Map(r.captions.map((c, i) => [c.text, i]));
      const lines = r.captions.flatMap((c, i) => {
        const words = c.words.map((w) => el("span", { class: "word", text: w }));
        const text = el("span", { class: "text" }, ...words.flatMap((w, k) => [k ? " " : null, w]));
        const line = el("div", { class: "caption" + (i === r.captions.length - 1 ? " best" : "") },
          el("span", { class: "how", text: c.decoding === "greedy" ? "greedy" : `beam ${c.beam_size}` }), text);
        if (!c.attention || !c.words.length || last.get(c.text) !== i) return [line];
        return [line, attentionStrip(c, words)];
      });
      return modelBlock(r.model, info.cell, lines);
    }));
  } catch (err) {
    if (run === state.run) box.replaceChildren(errorNode(err.message));
  }
}

// One small picture per word: the crop seen through that word's attention. Pointing at a
// word or at its picture lights up both.
function attentionStrip(caption, wordNodes) {
  const [gh, gw] = caption.attention.grid;
  const strip = el("ol", { class: "strip", "aria-label": `where the model looked for each word (${gh}×${gw} cells)` });
  caption.words.forEach((w, k) => {
    const peak = Math.max(...caption.attention.maps[k]);
    const tile = el("li", { title: `“${w}”: ${pct(peak)} of its attention on the strongest of ${gh * gw} cells` },
      el("img", { src: caption.attention.images[k], alt: `attention for “${w}”`, decoding: "async" }),
      el("span", { text: w }));
    const on = (hot) => { tile.classList.toggle("hot", hot); wordNodes[k].classList.toggle("hot", hot); };
    for (const node of [tile, wordNodes[k]]) {
      node.addEventListener("mouseenter", () => on(true));
      node.addEventListener("mouseleave", () => on(false));
    }
    strip.append(tile);
  });
  return strip;
}

function modelBlock(name, cell, lines) {
  return el("div", { class: "model" },
    el("div", { class: "model-name" }, el("span", { class: "chip", text: cell || "model" }), name),
    ...lines);
}

async function classify(run) {
  const list = $("#classes");
  list.replaceChildren(el("li", { class: "empty", text: "looking…" }));
  try {
    const out = await api("/api/classify", form({ image: state.image, top: 5 }));
    if (run !== state.run) return;
    state.top = out.classes[0];
    list.replaceChildren(...out.classes.map((c, i) => {
      const fill = el("span", { class: "fill" });
      const li = el("li", { class: "bar" + (i === 0 ? " selected" : ""), tabindex: "0", role: "button",
        title: `explain '${c.name}' in the saliency maps`, "data-index": c.index },
        fill,
        el("span", { class: "name" }, c.name, el("small", { text: `#${c.index}` })),
        el("span", { class: "pct", text: pct(c.probability) }));
      const pick = () => {
        $$("#classes li.bar").forEach((b) => b.classList.toggle("selected", b === li));
        state.salTarget = c;
        saliencyAll(state.run);
      };
      li.addEventListener("click", pick);
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
      requestAnimationFrame(() => requestAnimationFrame(() => { fill.style.width = `${Math.max(1, 100 * c.probability)}%`; }));
      return li;
    }));
  } catch (err) {
    if (run === state.run) list.replaceChildren(errorNode(err.message, "li"));
  }
}

async function saliencyAll(run) {
  const target = state.salTarget || state.top;
  $("#saliency-target").textContent = target ? target.name : "the top class";
  for (const fig of $$("#saliency figure")) loading($(".frame", fig));
  // one request per method: vanilla is back in a blink, the other two take a second or two
  for (const fig of $$("#saliency figure")) {
    const method = fig.dataset.method;
    try {
      const out = await api("/api/saliency", form({ image: state.image, method, target: state.salTarget ? state.salTarget.index : "" }));
      if (run !== state.run || (state.salTarget || state.top) !== target) return;
      fig.dataset.overlay = out.overlay;
      fig.dataset.map = out.map;
      showSaliency(fig);
    } catch (err) {
      if (run !== state.run) return;
      $(".frame", fig).classList.remove("loading");
      $(".frame", fig).replaceChildren(errorNode(err.message));
    }
  }
}

function showSaliency(fig) {
  const raw = $("#saliency-raw").checked;
  const src = raw ? fig.dataset.map : fig.dataset.overlay;
  if (src) setFrame($(".frame", fig), src, `${fig.dataset.method} saliency map`);
}

// ----------------------------------------------------------------------------- explaining
const METHOD_NAMES = {
  vanilla: "vanilla gradient", smoothgrad: "SmoothGrad", ig: "Integrated Gradients",
  layercam: "LayerCAM", gradcam: "Grad-CAM", "guided-gradcam": "Guided Grad-CAM",
};
// what the top row of an explanation shows, by method
const METHOD_NOTES = {
  layercam: "where the backbone's block-10 features raise the word's probability (LayerCAM, averaged over noisy copies of the image; the dot marks the peak)",
  gradcam: "how much each grid cell's features raise the word's probability (Grad-CAM at the captioner's input grid; the dot marks the most relevant cell)",
  "guided-gradcam": "SmoothGrad's pixels, weighted by the Grad-CAM relevance of their grid cell (the dot marks the peak)",
};

async function explain(run) {
  const box = $("#explain");
  const select = $("#explain-model");
  if (!state.image) return;
  if (!select.value) {
    box.replaceChildren(el("p", { class: "empty", text: state.models.length
      ? "None of this server's models can be explained." : "No trained captioning models on this server." }));
    return;
  }
  const method = $("#explain-method").value;
  const hold = $("#explain-hold");
  const holdAttention = !hold.disabled && hold.checked;
  const seq = ++state.explainSeq;
  const current = () => run === state.run && seq === state.explainSeq;
  const button = $("#explain-go");
  button.disabled = true;
  box.classList.add("busy");
  box.replaceChildren(el("div", { class: "working" }, el("span", { class: "spinner" }),
    `explaining each word of ${select.value}'s caption by ${METHOD_NAMES[method]}${holdAttention ? ", attention held" : ""}…`));
  try {
    const out = await api("/api/explain", form({ image: state.image, model: select.value, method,
      beam: $("#explain-beam").value, hold_attention: holdAttention ? "true" : null }));
    if (current()) box.replaceChildren(explanation(out));
  } catch (err) {
    if (current()) box.replaceChildren(errorNode(err.message));
  } finally {
    if (current()) { button.disabled = false; box.classList.remove("busy"); }
  }
}

function explanation(out) {
  const S = out.image_size;
  const how = [METHOD_NAMES[out.method]];
  if (out.hold_attention) how.push("attention held");
  if (out.samples) how.push(`${out.samples} samples`);
  if (out.steps) how.push(`${out.steps} steps`);
  how.push(out.beam > 1 ? `beam ${out.beam}` : "greedy", `${out.seconds.toFixed(1)} s`);
  const head = el("div", { class: "explain-head" },
    el("p", { class: "explain-caption", text: out.words.length ? `“${out.caption}”` : "(an empty caption: nothing to explain)" }),
    el("span", { class: "meta", text: how.join(" · ") }));
  const rows = out.grid ? ["saliency", "attention"] : ["saliency"];
  const legend = el("figure", { class: "explain-word legend" },
    el("div", { class: "frame" }, el("img", { src: out.image, alt: `the ${S}×${S} crop ${out.model} saw` })),
    out.grid ? el("div", { class: "frame label" }, el("span", { text: `attention over ${out.grid[0]}×${out.grid[1]} cells` })) : null,
    el("figcaption", { title: `the ${S}×${S} centre crop the model saw` }, el("b", { text: "image" })));
  const figures = out.words.map((w) => {
    let mark = null;  // no dot on a flat map (a word no cell raises): it points nowhere
    if (w.peak) {
      mark = el("span", { class: "peak", title: `peak at (${w.peak[0]}, ${w.peak[1]})` });
      mark.style.left = `${(100 * (w.peak[0] + 0.5)) / S}%`;
      mark.style.top = `${(100 * (w.peak[1] + 0.5)) / S}%`;
    }
    const frames = [el("div", { class: "frame" },
      el("img", { src: w.saliency, alt: `${METHOD_NAMES[out.method]} map of “${w.word}”`, decoding: "async" }), mark)];
    if (rows.length === 2 && w.attention) {
      frames.push(el("div", { class: "frame att" },
        el("img", { src: w.attention, alt: `attention for “${w.word}”`, decoding: "async" })));
    }
    const flat = w.peak ? {} : { title: `a flat map: nothing in the image raises “${w.word}” by this method` };
    return el("figure", { class: w.peak ? "explain-word" : "explain-word flat", "data-position": w.position, ...flat },
      ...frames,
      el("figcaption", { title: `the probability of “${w.word}” given the image and the words before it` },
        el("b", { text: w.word }), el("span", { text: `p ${w.prob.toFixed(2)}` })));
  });
  const top = METHOD_NOTES[out.method] || "which pixels raise the word's probability (the dot marks the peak)";
  const note = el("p", { class: "meta" }, rows.length === 2
    ? `Top: ${top}. Bottom: where the model's attention was when it chose the word.`
    : `${top[0].toUpperCase()}${top.slice(1)}. This model has no attention to show.`);
  return el("div", {}, head, el("div", { class: "explain-grid" }, legend, ...figures), note);
}

function setupExplaining() {
  $("#explain-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!state.image) { $("#explain").replaceChildren(errorNode("Choose an image first.")); return; }
    explain(state.run);
  });
  $("#explain-model").addEventListener("change", offerMethods);
  for (const id of ["#explain-model", "#explain-method", "#explain-beam", "#explain-hold"]) {
    $(id).addEventListener("change", () => { if (state.image) explain(state.run); });
  }
}

// Offer the methods the chosen model can be explained by (the server lists them per model:
// Grad-CAM and Guided Grad-CAM only for a model over a grid of cells).
function offerMethods() {
  const select = $("#explain-method");
  const model = state.models.find((m) => m.name === $("#explain-model").value);
  const offered = model ? model.explain_methods : [];
  const missing = [];
  for (const option of select.options) {
    const ok = offered.includes(option.value);
    option.hidden = !ok;
    option.disabled = !ok;
    if (!ok) missing.push(METHOD_NAMES[option.value]);
  }
  if (!offered.includes(select.value)) select.value = offered.includes("smoothgrad") ? "smoothgrad" : (offered[0] || "");
  select.title = model && missing.length
    ? `${missing.join(" and ")}: only for a model over a grid of cells; ${model.name} (${model.cell}) reads one pooled feature vector`
    : "";
  // holding the attention: only for a model that can (the attention captioner)
  const hold = $("#explain-hold");
  hold.disabled = !(model && model.hold_attention);
  if (hold.disabled) hold.checked = false;
  $("#explain-hold-label").hidden = hold.disabled;
}

function fillExplainModels() {
  const select = $("#explain-model");
  const able = state.models.filter((m) => m.explain);
  select.replaceChildren(...able.map((m) => el("option", { value: m.name, text: m.name })));
  const first = able.find((m) => m.attention) || able[0];
  if (first) select.value = first.name;
  select.disabled = !able.length;
  $("#explain-go").disabled = !able.length;
  offerMethods();
}

// ----------------------------------------------------------------------------- completion
function classMatches(query, limit = 8) {
  const q = query.trim().toLowerCase();
  if (!q) return [];
  if (/^\d+$/.test(q)) {
    const c = state.classes[Number(q)];
    return c ? [c] : [];
  }
  const scored = [];
  for (const c of state.classes) {
    const names = [c.name, ...c.synonyms].map((s) => s.toLowerCase());
    let score = -1;
    names.forEach((n, k) => {
      const at = n.indexOf(q);
      if (at < 0) return;
      const s = (at === 0 ? 0 : n.includes(" " + q) ? 1 : 2) * 10 + (k === 0 ? 0 : 5) + n.length / 100;
      if (score < 0 || s < score) score = s;
    });
    if (score >= 0) scored.push([score, c]);
  }
  scored.sort((a, b) => a[0] - b[0]);
  return scored.slice(0, limit).map((x) => x[1]);
}

function setupCombo(input) {
  const list = document.getElementById(input.getAttribute("aria-controls"));
  let items = [];
  let active = -1;
  const close = () => { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; };
  const choose = (c) => { input.value = c.name; input.dataset.index = c.index; close(); };
  const render = () => {
    items = classMatches(input.value);
    if (!items.length) { close(); return; }
    list.replaceChildren(...items.map((c, i) => {
      const syn = c.synonyms.length ? c.synonyms.slice(0, 2).join(", ") : "";
      const li = el("li", { role: "option", id: `${list.id}-${i}`, "aria-selected": String(i === active) },
        el("span", { text: c.name }), syn ? el("span", { class: "syn", text: syn }) : null,
        el("small", { text: `#${c.index}` }));
      li.addEventListener("mousedown", (e) => { e.preventDefault(); choose(c); });
      return li;
    }));
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
  };
  input.addEventListener("input", () => { delete input.dataset.index; active = -1; render(); });
  input.addEventListener("focus", render);
  input.addEventListener("blur", () => setTimeout(close, 100));
  input.addEventListener("keydown", (e) => {
    if (list.hidden && e.key !== "ArrowDown") return;
    if (e.key === "ArrowDown") { e.preventDefault(); if (list.hidden) render(); active = Math.min(active + 1, items.length - 1); render(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); active = Math.max(active - 1, 0); render(); }
    else if (e.key === "Enter" && active >= 0) { e.preventDefault(); choose(items[active]); }
    else if (e.key === "Escape") close();
  });
}

const targetOf = (input) => input.dataset.index || input.value.trim();

// ----------------------------------------------------------------------------- fooling
function setupFooling() {
  $("#fool-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const verdict = $("#fool-verdict");
    if (!state.image) { verdict.replaceChildren(errorNode("Choose an image first.")); return; }
    const target = targetOf($("#fool-target"));
    const run = state.run;
    const button = $("#fool-go");
    button.disabled = true;
    for (const f of $$("#fool .frame")) loading(f);
    verdict.replaceChildren(el("p", { class: "empty", text: "attacking…" }));
    try {
      const out = await api("/api/fool", form({ image: state.image, target, epsilon: $("#fool-budget").value }));
      if (run !== state.run) return;
      for (const fig of $$("#fool figure")) setFrame($(".frame", fig), out.images[fig.dataset.part], fig.dataset.part);
      $("#fool figure[data-part=original] figcaption").replaceChildren("original: ", el("b", { text: out.original_class.name }), ` ${pct(out.original_class.probability)}`);
      $("#fool figure[data-part=fooled] figcaption").replaceChildren("fooled: ", el("b", { text: out.fooled_class.name }), ` ${pct(out.fooled_class.probability)}`);
      $("#fool figure[data-part=difference] figcaption").textContent = `difference ×${Math.round(out.magnify)}`;
      verdict.replaceChildren(
        el("div", { class: "empty", text: "the network now sees" }),
        el("div", { class: "big " + (out.success ? "yes" : "no"), text: out.fooled_class.name }),
        el("div", { text: out.success ? `fooled, ${pct(out.fooled_class.probability)} sure` : `not fooled into '${out.target.name}'` }),
        el("dl", {},
          el("dt", { text: "attack" }), el("dd", { text: out.attack === "pgd" ? `PGD, ε = ${$("#fool-budget").value}` : "cs231n, unbounded" }),
          el("dt", { text: "steps" }), el("dd", { text: String(out.iterations) }),
          el("dt", { text: "max change" }), el("dd", { text: `${out.max_change.toFixed(0)} / 255 per channel` }),
          el("dt", { text: "time" }), el("dd", { text: `${out.seconds.toFixed(1)} s` })));
    } catch (err) {
      for (const f of $$("#fool .frame")) setFrame(f, null);
      verdict.replaceChildren(errorNode(err.message));
    } finally {
      button.disabled = false;
    }
  });
}

// ----------------------------------------------------------------------------- dreaming
function setupDreaming() {
  $("#dream-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const frame = $("#dream-frame");
    const meta = $("#dream-meta");
    const bar = $("#dream-progress");
    const button = $("#dream-go");
    clearTimeout(state.dreamTimer);
    button.disabled = true;
    loading(frame);
    bar.firstElementChild.style.width = "0%";
    try {
      let job = await api("/api/dream", form({ target: targetOf($("#dream-target")), iterations: $("#dream-steps").value }));
      meta.textContent = "queued…";
      const poll = async () => {
        try {
          job = await api(`/api/jobs/${encodeURIComponent(job.id)}`);
        } catch (err) {
          meta.replaceChildren(errorNode(err.message)); button.disabled = false; return;
        }
        const done = job.state === "done";
        const share = job.total ? (100 * job.step) / job.total : 0;
        bar.firstElementChild.style.width = `${done ? 100 : share}%`;
        bar.setAttribute("aria-valuenow", String(Math.round(share)));
        const src = done ? job.result.image : job.preview;
        if (src) setFrame(frame, src, "class visualization");
        if (job.state === "error") {
          setFrame(frame, null);
          meta.replaceChildren(errorNode(job.error)); button.disabled = false;
        } else if (done) {
          const t = job.result.target;
          meta.replaceChildren(el("b", { text: t.name }), ` · ${pct(t.probability)} after ${job.result.iterations} steps`);
          button.disabled = false;
        } else {
          meta.textContent = job.state === "queued" ? "queued…" : `step ${job.step} of ${job.total}`;
          state.dreamTimer = setTimeout(poll, 400);
        }
      };
      poll();
    } catch (err) {
      setFrame(frame, null);
      meta.replaceChildren(errorNode(err.message));
      button.disabled = false;
    }
  });
}

// ----------------------------------------------------------------------------- start
async function start() {
  setupPicking();
  setupFooling();
  setupDreaming();
  setupExplaining();
  $("#saliency-raw").addEventListener("change", () => $$("#saliency figure").forEach(showSaliency));
  const beam = $("#beam");
  refreshStatus();
  setInterval(refreshStatus, 4000);
  try {
    const m = await api("/api/models");
    state.models = m.models;
    for (let b = 1; b <= m.beam_max; b += 1) beam.append(el("option", { value: b, text: b === 1 ? "1 (greedy)" : String(b) }));
    beam.value = "3";
    fillExplainModels();
  } catch (err) {
    $("#captions").replaceChildren(errorNode(err.message));
  }
  beam.addEventListener("change", () => { if (state.image) captions(state.run); });
  loadExamples();
  try {
    state.classes = (await api("/api/classes")).classes;
  } catch (err) { /* completion stays empty; typed names still work */ }
  $$(".combo input").forEach(setupCombo);
}

document.addEventListener("DOMContentLoaded", start);
