"use strict";
// Lucid viewer: plain JavaScript over the public API. The API key lives in sessionStorage; media
// is fetched through short-lived signed links so <video> and hls.js never hold the key.
const $ = (sel) => document.querySelector(sel);
const state = { key: sessionStorage.getItem("lucid-key"), hls: null, current: null, offset: 0 };
const PAGE = 50; // sessions per page of the list (newest first; the API pages by limit/offset)

function show(id) {
  for (const s of ["#signin", "#list", "#session"]) $(s).hidden = s !== id;
  $("#signout").hidden = id === "#signin";
}

function fail(err) {
  $("#error").textContent = err.message || String(err);
  $("#error").hidden = false;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { Authorization: `Bearer ${state.key}`, ...(opts.headers || {}) } });
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (r.status === 401) { signOut(); throw new Error("The API key was refused: sign in again."); }
  if (!r.ok) throw new Error(`${body.error || r.status}: ${body.detail || body}`);
  return body;
}

const bytes = (n) => n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`;
const secs = (ms) => { const s = Math.round(ms / 1000); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
const when = (iso) => iso ? new Date(iso).toLocaleString() : "–";
function cell(tr, text, cls) { const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }

// The last stored verification as the list shows it: a session not sealed (or deleted) yet is
// pending whatever was stored, and a result older than the seal says nothing about what was sealed.
function listedVerification(s) {
  if (!["sealed", "deleted"].includes(s.state)) return { text: "pending (not sealed yet)", cls: "" };
  const v = s.verification;
  const sealed = s.sealed_at ? Math.floor(Date.parse(s.sealed_at) / 1000) * 1000 : 0;
  if (!v || Date.parse(v.at) < sealed) return { text: "not verified since sealing", cls: "" };
  return { text: `${v.status}${v.problems ? ` (${v.problems} problems)` : ""}, ${when(v.at)}`,
    cls: v.status === "failed" ? "bad" : "ok" };
}

async function loadList() {
  $("#error").hidden = true;
  const filter = $("#state-filter").value;
  const page = await api(`/v1/sessions?limit=${PAGE}&offset=${state.offset}${filter ? `&state=${filter}` : ""}`);
  if (page.items.length === 0 && state.offset > 0 && page.total > 0) { // the list shrank under us
    state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
    return loadList();
  }
  $("#page-info").textContent = page.total
    ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` : "no sessions";
  $("#newer").disabled = page.offset === 0;
  $("#older").disabled = page.offset + page.items.length >= page.total;
  const tbody = $("#sessions tbody");
  tbody.replaceChildren();
  for (const s of page.items) {
    const tr = tbody.insertRow();
    tr.dataset.sessionId = s.id;
    cell(tr, s.name);
    cell(tr, s.state);
    cell(tr, Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(" "));
    cell(tr, when(s.started_at));
    cell(tr, secs(s.duration_ms));
    cell(tr, bytes(s.stored_bytes || s.raw_bytes));
    const v = listedVerification(s);
    cell(tr, v.text, v.cls);
    tr.addEventListener("click", () => openSession(s.id).catch(fail));
  }
  show("#list");
}

function play(url) {
  const video = $("#video");
  if (state.hls) { state.hls.destroy(); state.hls = null; }
  if (window.Hls && Hls.isSupported()) {
    state.hls = new Hls({ liveDurationInfinity: false });
    state.hls.loadSource(url);
    state.hls.attachMedia(video);
    state.hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) fail(new Error(`playback: ${d.details}`)); });
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url;
  } else {
    fail(new Error("this browser cannot play HLS"));
  }
}

async function openSession(id) {
  $("#error").hidden = true;
  const s = await api(`/v1/sessions/${id}`);
  state.current = s;
  $("#title").textContent = s.name;
  $("#state").textContent = s.state;
  const facts = { id: s.id, state: s.state, encoder: s.encoder, source: s.source.kind,
    video: `${s.video.width}x${s.video.height}@${s.video.fps}`, chunks: s.chunk_count, duration: secs(s.duration_ms),
    "dropped frames": s.dropped_frames ?? 0,
    "raw / stored": `${bytes(s.raw_bytes)} / ${bytes(s.stored_bytes)}`, "merkle root": s.merkle_root || "–",
    started: when(s.started_at), stopped: when(s.stopped_at), sealed: when(s.sealed_at),
    "ended because": s.end_reason || "–", failure: s.failure_reason || "–" };
  $("#facts").replaceChildren(...Object.entries(facts).flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; return [dt, dd];
  }));
  const links = await api(`/v1/sessions/${id}/links`, { method: "POST" });
  $("#mp4").href = links.mp4;
  $("#ts").href = links.ts;
  show("#session");
  if (s.chunk_count > 0) play(links.hls);
  const [events, checkpoints] = await Promise.all([api(`/v1/sessions/${id}/events`), api(`/v1/sessions/${id}/checkpoints`)]);
  const ev = $("#events tbody"); ev.replaceChildren();
  for (const row of events.items) {
    const e = row.entry, tr = ev.insertRow();
    cell(tr, e.idx); cell(tr, when(e.at)); cell(tr, e.event);
    cell(tr, e.from || e.to ? `${e.from || ""} → ${e.to || ""}` : ""); cell(tr, e.actor);
    cell(tr, JSON.stringify(e.detail || {}));
  }
  const cp = $("#checkpoints tbody"); cp.replaceChildren();
  for (const c of checkpoints.items) {
    const tr = cp.insertRow(); cell(tr, c.body.tree_size); cell(tr, `${c.body.root.slice(0, 16)}…`); cell(tr, when(c.body.time));
  }
  try { $("#manifest").textContent = JSON.stringify(await api(`/v1/sessions/${id}/manifest`), null, 1); }
  catch { $("#manifest").textContent = "not sealed yet"; }
  if (["sealed", "deleted"].includes(s.state)) await verify();
}

async function verify() {
  const id = state.current.id;
  $("#verify-status").textContent = "verifying…";
  const r = await api(`/v1/sessions/${id}/verify`, { method: "POST" });
  $("#verify-status").textContent = r.status === "verified" ? "verified: every check passed"
    : r.status === "shredded" ? "shredded: the data key was destroyed on deletion"
    : r.status === "pending" ? "pending: not sealed yet, nothing final to verify" : `FAILED: ${r.problems.length} problems`;
  $("#verify-status").className = r.status === "failed" ? "bad" : r.status === "pending" ? "" : "ok";
  $("#verify-status").dataset.status = r.status;
  $("#checks").replaceChildren(...r.checks.map((c) => {
    const li = document.createElement("li"); li.className = c.ok ? "ok" : r.status === "pending" ? "" : "bad";
    li.textContent = `${c.ok ? "✓" : "✗"} ${c.name}: ${c.detail}`; return li;
  }), ...r.problems.filter((p) => p.startsWith("chunk")).map((p) => {
    const li = document.createElement("li"); li.className = "bad"; li.textContent = p; return li;
  }));
}

function signOut() {
  sessionStorage.removeItem("lucid-key");
  state.key = null;
  if (state.hls) state.hls.destroy();
  show("#signin");
}

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("#key").value.trim();
  sessionStorage.setItem("lucid-key", state.key);
  start().catch(fail);
});
$("#signout").addEventListener("click", signOut);
$("#refresh").addEventListener("click", () => loadList().catch(fail));
$("#state-filter").addEventListener("change", () => { state.offset = 0; loadList().catch(fail); });
$("#newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadList().catch(fail); });
$("#older").addEventListener("click", () => { state.offset += PAGE; loadList().catch(fail); });
$("#back").addEventListener("click", () => { if (state.hls) state.hls.destroy(); $("#video").removeAttribute("src"); loadList().catch(fail); });
$("#verify").addEventListener("click", () => verify().catch(fail));
// /viewer/#<session id> opens that session (the Dagster UI links here)
const start = () => (location.hash.length > 1 ? openSession(location.hash.slice(1)) : loadList());
window.addEventListener("hashchange", () => { if (state.key && location.hash.length > 1) openSession(location.hash.slice(1)).catch(fail); });
if (state.key) start().catch(fail); else show("#signin");
