// diffusion-queue web console: plain JavaScript, no build step, no dependencies.
// Every request goes to this server's /v1 API with the signed-in key (Authorization: Bearer).
// User text is only ever set as text nodes or attributes, never parsed as HTML.
"use strict";

const KEY_STORAGE = "dq.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const POLL_MS = 1000;
const ADMIN_REFRESH_MS = 2000;

const state = { key: null, signedIn: false, admin: false, models: [], leave: null };

// ---- DOM helpers -------------------------------------------------------------------------

/** An element: h("a", {href: "#/", class: "x", onclick: fn}, "text", child, …). */
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && name !== "list" && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function flash(message, kind = "error") {
  const box = $("flash");
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.hidden = !message;
}

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function fmtSeconds(s) {
  return s === null || s === undefined ? "—" : `${Number(s).toFixed(2)} s`;
}

function fmtBytes(n) {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${(n / 1024).toFixed(1)} kB`;
}

// ---- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && (problem.detail || problem.title);
    super(detail ? `${detail} (HTTP ${status})` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function authHeaders(extra) {
  return { Authorization: `Bearer ${state.key}`, ...(extra || {}) };
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { detail: text.slice(0, 200) };
  }
  if (res.status === 401 && state.signedIn) signOut("The API key was refused (unknown, revoked or malformed). Sign in again.");
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function problemText(err) {
  const lines = [err.message];
  for (const e of (err.problem && err.problem.errors) || []) lines.push(`${e.field}: ${e.message}`);
  return lines.join(" · ");
}

// ---- sign in -----------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  await api("GET", "v1/models"); // any valid key may read the models
  const probe = await fetch("v1/workers", { headers: authHeaders() }); // 403: not an admin's key
  await probe.text();
  state.admin = probe.ok;
  state.signedIn = true;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("who").textContent = `${key.split("_").slice(0, 2).join("_")}…${state.admin ? " (admin)" : ""}`;
  $("nav").hidden = false;
  $("nav-admin").hidden = !state.admin;
  $("sign-out").hidden = false;
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.signedIn = false;
  state.admin = false;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  flash(message);
  route();
}

// ---- the submit form ---------------------------------------------------------------------

function option(value, label, selected) {
  return h("option", { value: String(value), selected: Boolean(selected) }, label ?? String(value));
}

/** A select for a static side (the compiled values), a number input for a dynamic one. */
function sideField(id, spec, fallback) {
  if (Array.isArray(spec)) return h("select", { id, name: id }, spec.map((v) => option(v, null, v === fallback)));
  return h("input", {
    id, name: id, type: "number", min: spec.min, max: spec.max, step: spec.multiple_of, value: fallback, required: true,
  });
}

function showModel() {
  const model = state.models.find((m) => m.name === $("model").value);
  if (!model) return;
  $("width-field").replaceChildren(sideField("width", model.shapes.widths, model.default_width));
  $("height-field").replaceChildren(sideField("height", model.shapes.heights, model.default_height));
  $("num-images").replaceChildren(...model.shapes.num_images.map((n, i) => option(n, null, i === 0)));
  const w = model.workers;
  const parts = [
    `${model.backend}${model.static ? ", static shapes" : ""}`,
    `workers: ${w.ready} ready, ${w.busy} busy, ${w.loading} loading`,
    `${model.queue_depth} queued`,
  ];
  if (model.paused) parts.push("paused");
  $("model-info").textContent = parts.join(" · ");
}

async function loadModels() {
  const page = await api("GET", "v1/models");
  state.models = page.data;
  const current = $("model").value;
  const chosen = state.models.some((m) => m.name === current) ? current : (state.models.find((m) => m.default) || {}).name;
  $("model").replaceChildren(...state.models.map((m) => option(m.name, m.default ? `${m.name} (default)` : m.name, m.name === chosen)));
  showModel();
}

function jobBody(form) {
  const value = (name) => form.elements[name].value.trim();
  const body = {
    prompt: form.elements.prompt.value,
    model: value("model"),
    width: Number(value("width")),
    height: Number(value("height")),
    num_images: Number(value("num_images")),
    num_inference_steps: Number(value("steps")),
    output_format: value("format"),
  };
  if (value("guidance") !== "") body.guidance_scale = Number(value("guidance"));
  if (value("seed") !== "") body.seed = Number(value("seed"));
  if (value("negative_prompt") !== "") body.negative_prompt = value("negative_prompt");
  if (value("webhook") !== "") body.webhook = value("webhook");
  return body;
}

async function submitJob(event) {
  event.preventDefault();
  const button = $("submit-button");
  button.disabled = true;
  flash("");
  try {
    const job = await api("POST", "v1/jobs", jobBody(event.target));
    location.hash = `#/jobs/${job.id}`;
  } catch (err) {
    flash(`Not submitted: ${problemText(err)}`);
  } finally {
    button.disabled = false;
  }
}

// ---- the gallery -------------------------------------------------------------------------

async function loadGallery() {
  const page = await api("GET", "v1/jobs?status=succeeded&limit=24");
  const tiles = page.data
    .filter((job) => job.outputs.length && job.outputs[0].url)
    .map((job) =>
      h("figure", { class: "tile" },
        h("a", { href: `#/jobs/${job.id}` },
          h("img", { src: job.outputs[0].url, alt: job.input.prompt, loading: "lazy" })),
        h("figcaption", {}, job.input.prompt)));
  $("gallery-title").textContent = state.admin ? "Recent images (every tenant's)" : "Recent images";
  $("gallery").replaceChildren(...(tiles.length ? tiles : [h("p", { class: "hint" }, "No images yet.")]));
}

// ---- following a job: the SSE stream read with fetch (EventSource cannot send a key) --------

/** Calls onJob with each state of the job until it is terminal or signal aborts. */
async function followJob(id, onJob, signal) {
  try {
    await streamEvents(id, onJob, signal);
  } catch (err) {
    if (signal.aborted) return;
    console.info(`event stream unavailable (${err.message}); polling`);
  }
  let job = await api("GET", `v1/jobs/${id}`);
  onJob(job);
  while (!TERMINAL.has(job.status) && !signal.aborted) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (signal.aborted) return;
    job = await api("GET", `v1/jobs/${id}`);
    onJob(job);
  }
}

async function streamEvents(id, onJob, signal) {
  const res = await fetch(`v1/jobs/${id}/events`, { headers: authHeaders({ Accept: "text/event-stream" }), signal });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = parseSse(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (message.data) onJob(JSON.parse(message.data).data);
    }
  }
}

function parseSse(block) {
  const message = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") message.data += (message.data ? "\n" : "") + value;
    else message[field] = value;
  }
  return message;
}

// ---- the job page ------------------------------------------------------------------------

function keyValueTable(rows) {
  return h("table", { class: "kv" },
    rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v === null || v === undefined || v === "" ? "—" : v))));
}

function progressBlock(job) {
  const total = job.progress.total || job.input.num_inference_steps;
  const step = job.status === "succeeded" ? total : job.progress.step;
  const where = job.status === "queued" && job.queue_position !== null ? ` · queue position ${job.queue_position}` : "";
  const cancel = job.cancel_requested && !TERMINAL.has(job.status) ? " · cancel requested" : "";
  const data = { "data-status": job.status, "data-step": step, "data-total": total };
  return h("div", { class: "progress", id: "job-progress", ...data },
    h("progress", { max: total, value: step }),
    h("span", {}, `${job.status} · step ${step}/${total}${where}${cancel}`));
}

function outputsBlock(job) {
  if (!job.outputs.length) return h("p", { class: "hint" }, TERMINAL.has(job.status) ? "No outputs." : "Images appear here when the job succeeds.");
  return h("div", { class: "outputs" }, job.outputs.map((out) =>
    h("figure", { class: "output" },
      h("a", { href: out.url, target: "_blank", rel: "noopener" }, h("img", { src: out.url, alt: job.input.prompt, class: "output-image" })),
      h("figcaption", {}, `${out.width}×${out.height} ${out.format} · seed ${out.seed} · ${fmtBytes(out.bytes)}`))));
}

function actionsBlock(job, refresh) {
  const act = async (path, label) => {
    try {
      const answer = await api("POST", path);
      if (answer.id && answer.id !== job.id) location.hash = `#/jobs/${answer.id}`;
      else refresh();
    } catch (err) {
      flash(`${label}: ${problemText(err)}`);
    }
  };
  const buttons = [];
  if (!TERMINAL.has(job.status)) buttons.push(h("button", { type: "button", onclick: () => act(`v1/jobs/${job.id}/cancel`, "Cancel") }, "Cancel"));
  if (job.status === "failed" || job.status === "canceled") buttons.push(h("button", { type: "button", onclick: () => act(`v1/jobs/${job.id}/retry`, "Retry") }, "Retry"));
  return h("div", { class: "actions" }, buttons);
}

function jobLink(id) {
  return id ? h("a", { href: `#/jobs/${id}` }, id) : null;
}

function renderJob(job, refresh) {
  const input = job.input;
  const inputs = keyValueTable([
    ["prompt", input.prompt],
    ["negative prompt", input.negative_prompt],
    ["model", job.model],
    ["size", `${input.width}×${input.height}, ${input.num_images} image(s)`],
    ["steps", input.num_inference_steps],
    ["guidance", input.guidance_scale],
    ["seed", input.seed],
    ["format", input.output_format],
    ["scheduler", input.scheduler],
    ["priority", job.priority],
    ["tenant", job.tenant],
    ["webhook", job.webhook],
  ]);
  const timings = keyValueTable([
    ["created", fmtTime(job.created_at)],
    ["started", fmtTime(job.started_at)],
    ["completed", fmtTime(job.completed_at)],
    ["queued for", fmtSeconds(job.metrics.queue_seconds)],
    ["generation", fmtSeconds(job.metrics.generation_seconds)],
    ["end to end", fmtSeconds(job.metrics.total_seconds)],
    ["worker", job.worker],
    ["attempts", job.attempts],
    ["retry of", jobLink(job.retry_of)],
    ["retried by", jobLink(job.retried_by)],
  ]);
  const error = job.error ? h("p", { class: "flash error" }, `${job.error.type}: ${job.error.message}`) : null;
  return [
    h("h1", {}, "Job ", h("code", {}, job.id), " ", h("span", { class: `badge ${job.status}`, id: "job-status" }, job.status)),
    progressBlock(job),
    actionsBlock(job, refresh),
    error,
    h("h2", {}, "Outputs"),
    outputsBlock(job),
    h("div", { class: "columns" },
      h("div", {}, h("h2", {}, "Inputs"), inputs),
      h("div", {}, h("h2", {}, "Timings"), timings)),
  ];
}

function deliveriesTable(jobId, deliveries, reload) {
  if (!deliveries.length) return h("p", { class: "hint", id: "no-deliveries" }, "No webhook deliveries (yet).");
  const lastAttempt = new Map(deliveries.map((d) => [d.delivery_id, d.attempt]));
  const redeliver = async (d) => {
    try {
      await api("POST", `v1/jobs/${jobId}/deliveries/${encodeURIComponent(d.delivery_id)}/redeliver`);
      flash(`Queued ${d.event} (${d.delivery_id}) again.`, "ok");
      setTimeout(reload, 1000);
    } catch (err) {
      flash(`Redeliver: ${problemText(err)}`);
    }
  };
  const head = h("tr", {}, ["event", "attempt", "at", "status", "latency", "outcome", "error", ""].map((t) => h("th", {}, t)));
  const rows = deliveries.map((d) =>
    h("tr", { class: "delivery" },
      h("td", {}, d.event), h("td", {}, d.attempt), h("td", {}, fmtTime(d.at)),
      h("td", {}, d.status_code ?? "—"), h("td", {}, `${Math.round(d.latency_ms)} ms`),
      h("td", {}, h("span", { class: `badge ${d.outcome}` }, d.outcome)), h("td", {}, d.error ?? ""),
      h("td", {}, lastAttempt.get(d.delivery_id) === d.attempt
        ? h("button", { type: "button", class: "small redeliver", onclick: () => redeliver(d) }, "Redeliver") : "")));
  return h("table", { class: "grid", id: "deliveries" }, h("thead", {}, head), h("tbody", {}, rows));
}

function showJob(id) {
  const view = $("view-job");
  const body = h("div", {}, h("p", { class: "hint" }, "Loading…"));
  const deliveries = h("div", {});
  view.replaceChildren(body, h("h2", {}, "Webhook deliveries ",
    h("button", { type: "button", class: "small", id: "refresh-deliveries", onclick: () => loadDeliveries() }, "Refresh")), deliveries);
  const controller = new AbortController();
  let last = null;
  const loadDeliveries = async () => {
    try {
      const page = await api("GET", `v1/jobs/${id}/deliveries`);
      deliveries.replaceChildren(deliveriesTable(id, page.data, loadDeliveries));
    } catch (err) {
      deliveries.replaceChildren(h("p", { class: "flash error" }, problemText(err)));
    }
  };
  const refresh = async () => {
    try {
      show(await api("GET", `v1/jobs/${id}`));
    } catch (err) {
      flash(problemText(err));
    }
  };
  const show = (job) => {
    const justNow = job.completed_at && Date.now() - Date.parse(job.completed_at) < 10000; // not a replay
    const ended = last && !TERMINAL.has(last.status) && TERMINAL.has(job.status) && justNow;
    last = job;
    body.replaceChildren(...renderJob(job, refresh).filter(Boolean));
    if (!ended) return;
    for (const ms of [500, 3000]) { // the terminal webhook goes out after the state is saved
      setTimeout(() => controller.signal.aborted || loadDeliveries(), ms);
    }
  };
  followJob(id, show, controller.signal).catch((err) => {
    if (!controller.signal.aborted) body.replaceChildren(h("p", { class: "flash error" }, problemText(err)));
  });
  loadDeliveries();
  return () => controller.abort();
}

// ---- admin: queues and workers -----------------------------------------------------------

async function loadAdmin() {
  const [models, workers] = await Promise.all([api("GET", "v1/models"), api("GET", "v1/workers")]);
  const toggle = async (m) => {
    try {
      await api("POST", `v1/models/${encodeURIComponent(m.name)}/${m.paused ? "resume" : "pause"}`);
      await loadAdmin();
    } catch (err) {
      flash(problemText(err));
    }
  };
  $("queues").replaceChildren(
    h("thead", {}, h("tr", {}, ["model", "backend", "queued", "ready", "busy", "loading", "paused", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, models.data.map((m) =>
      h("tr", { class: "queue" },
        h("td", {}, m.name), h("td", {}, m.backend + (m.static ? " (static)" : "")), h("td", {}, m.queue_depth),
        h("td", {}, m.workers.ready), h("td", {}, m.workers.busy), h("td", {}, m.workers.loading),
        h("td", {}, m.paused ? "yes" : "no"),
        h("td", {}, h("button", { type: "button", class: "small", onclick: () => toggle(m) }, m.paused ? "Resume" : "Pause"))))));
  const now = Date.now() / 1000;
  $("workers").replaceChildren(
    h("thead", {}, h("tr", {}, ["worker", "model", "state", "current job", "jobs done", "last generation", "heartbeat", "host / pid", "cores"].map((t) => h("th", {}, t)))),
    h("tbody", {}, workers.data.length ? workers.data.map((w) =>
      h("tr", { class: "worker" },
        h("td", {}, w.name), h("td", {}, w.model), h("td", {}, h("span", { class: `badge ${w.state}` }, w.state)),
        h("td", {}, w.current_job ? jobLink(w.current_job) : "—"), h("td", {}, w.jobs_done),
        h("td", {}, fmtSeconds(w.last_pipeline_seconds)), h("td", {}, `${Math.max(0, now - w.heartbeat_at).toFixed(1)} s ago`),
        h("td", {}, `${w.host} / ${w.pid}`), h("td", {}, w.cores || "—")))
      : [h("tr", {}, h("td", { colspan: 9, class: "hint" }, "No live workers."))]));
}

function showAdmin() {
  const refresh = () => loadAdmin().catch((err) => flash(problemText(err)));
  refresh();
  const timer = setInterval(refresh, ADMIN_REFRESH_MS);
  return () => clearInterval(timer);
}

// ---- routing -----------------------------------------------------------------------------

function showView(name) {
  for (const section of document.querySelectorAll("main > .view")) section.hidden = section.id !== `view-${name}`;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.view === name);
}

function route() {
  if (state.leave) state.leave();
  state.leave = null;
  const path = location.hash.replace(/^#/, "") || "/";
  if (!state.key) {
    showView("signin");
    $("signin-key").focus();
    return;
  }
  const job = path.match(/^\/jobs\/([0-9a-f]{32})$/);
  if (job) {
    showView("job");
    state.leave = showJob(job[1]);
  } else if (path === "/admin" && state.admin) {
    showView("admin");
    state.leave = showAdmin();
  } else {
    showView("home");
    loadModels().catch((err) => flash(problemText(err)));
    loadGallery().catch((err) => flash(problemText(err)));
  }
}

async function start() {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    flash("");
    try {
      await signIn($("signin-key").value.trim());
      $("signin-key").value = "";
      route(); // the page the hash names (a job's link works after signing in)
    } catch (err) {
      state.key = null;
      flash(`Sign-in failed: ${problemText(err)}`);
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("model").addEventListener("change", showModel);
  $("submit-form").addEventListener("submit", submitJob);
  window.addEventListener("hashchange", () => {
    flash("");
    route();
  });
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    try {
      await signIn(saved);
    } catch (err) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORAGE);
    }
  }
  route();
}

start();
