"use strict";
// Lucid viewer: plain JavaScript over the public API. The API key lives in sessionStorage; media
// is fetched through short-lived signed links so <video> and hls.js never hold the key.
const $ = (sel) => document.querySelector(sel);
const state = { key: sessionStorage.getItem("lucid-key"), hls: null, current: null, offset: 0,
  share: null, mediaToken: null, refresh: null, replayed: false };
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
  if (!r.ok) throw Object.assign(new Error(`${body.error || r.status}: ${body.detail || body}`), { status: r.status });
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

// Media links in share mode are refreshed before they expire: every playlist and segment request
// then carries the newest token (state.mediaToken), whatever token the playlist was loaded with.
const freshLink = (u) => (state.mediaToken ? u.replace(/([?&]token=)[^&#]*/, `$1${state.mediaToken}`) : u);

function stopPlayer(video) {
  if (state.hls) { state.hls.destroy(); state.hls = null; }
  video.pause();
  video.removeAttribute("src");
  video.load();
}

function play(url, { video = $("#video"), onFatal = (d) => fail(new Error(`playback: ${d.details}`)), start = -1 } = {}) {
  if (state.hls) { state.hls.destroy(); state.hls = null; }
  if (window.Hls && Hls.isSupported()) {
    const xhrSetup = state.share ? (xhr, u) => xhr.open("GET", freshLink(u), true) : undefined;
    state.hls = new Hls({ liveDurationInfinity: false, startPosition: start, xhrSetup });
    state.hls.loadSource(url);
    state.hls.attachMedia(video);
    state.hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) onFatal(d); });
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url;
  } else {
    fail(new Error("this browser cannot play HLS"));
  }
}

async function openSession(id, startAt = -1) {
  $("#error").hidden = true;
  const s = await api(`/v1/sessions/${id}`);
  state.current = s;
  closeSharePanel();
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
  showLive(s);
  show("#session");
  if (s.chunk_count > 0) play(links.hls, { start: startAt });
  loadInsight(id).catch((e) => { $("#insight-hint").textContent = `insight: ${e.message}`; });
  const [events, checkpoints] = await Promise.all([api(`/v1/sessions/${id}/events`), api(`/v1/sessions/${id}/checkpoints`)]);
  const ev = $("#events tbody"); ev.replaceChildren();
  for (const row of events.items) {
    const e = row.entry, tr = ev.insertRow();
    cell(tr, e.idx); cell(tr, when(e.at)); cell(tr, e.event);
    cell(tr, e.from || e.to ? `${e.from || ""} → ${e.to || ""}` : ""); cell(tr, e.actor);
    cell(tr, JSON.stringify(e.detail || {}));
  }
  showGaps(events.items);
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

// ---- Sharing (operators): POST/GET/DELETE /v1/sessions/{id}/shares. A new link is shown once.
const clock = (ms) => `${Math.floor(ms / 60000)}:${((ms % 60000) / 1000).toFixed(1).padStart(4, "0")}`;
const windowText = (w) => (w ? `${clock(w.from_ms)}–${clock(w.to_ms)}` : "whole recording");

function closeSharePanel() {
  $("#share-panel").hidden = true;
  $("#share-toggle").setAttribute("aria-expanded", "false");
  $("#share-made").hidden = true;
  $("#share-url").value = "";
}

async function loadShares() {
  let list;
  try {
    list = await api(`/v1/sessions/${state.current.id}/shares`);
  } catch (err) {
    if (err.status !== 403) throw err;
    list = null; // a viewer key: no sharing
  }
  $("#share-denied").hidden = list !== null;
  $("#share-form").hidden = $("#shares").hidden = list === null;
  const tbody = $("#shares tbody");
  tbody.replaceChildren();
  for (const sh of list?.items || []) {
    const tr = tbody.insertRow();
    tr.dataset.shareId = sh.id;
    cell(tr, when(sh.created_at)); cell(tr, when(sh.expires_at)); cell(tr, windowText(sh.window));
    cell(tr, sh.may_download ? "yes" : "no"); cell(tr, sh.note || ""); cell(tr, sh.status, sh.status === "active" ? "ok" : "");
    const td = tr.insertCell();
    if (sh.status === "active") {
      const b = document.createElement("button");
      b.textContent = "Revoke";
      b.addEventListener("click", () => revokeShare(sh.id).catch(fail));
      td.append(b);
    }
  }
}

async function createShare() {
  $("#error").hidden = true;
  const from = $("#share-from").value, to = $("#share-to").value;
  if ((from === "") !== (to === "")) throw new Error("a window needs both its start and its end (seconds)");
  const body = {
    expires_in: Math.round(Number($("#share-days").value) * 86400),
    window: from === "" ? null : { from_ms: Math.round(Number(from) * 1000), to_ms: Math.round(Number(to) * 1000) },
    may_download: $("#share-download").checked,
    note: $("#share-note").value.trim() || null,
  };
  const sh = await api(`/v1/sessions/${state.current.id}/shares`,
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  $("#share-url").value = new URL(sh.url, location.origin).href;
  $("#share-made").hidden = false;
  $("#share-form").reset();
  await loadShares();
}

async function revokeShare(shareId) {
  await api(`/v1/sessions/${state.current.id}/shares/${shareId}`, { method: "DELETE" });
  await loadShares();
}

async function copyShareLink() {
  const input = $("#share-url");
  try { await navigator.clipboard.writeText(input.value); } catch { input.select(); document.execCommand("copy"); }
  $("#share-copy").textContent = "Copied";
  setTimeout(() => { $("#share-copy").textContent = "Copy"; }, 1500);
}

// ---- Share mode: /viewer/#share=<token>. The token stays in the URL fragment (never in a server
// log or a Referer) and is the only credential: sent to /v1/share* alone; media go through the
// short-lived links POST /v1/share/links returns, refreshed before they expire.
const SHARE = "#share=";
const shareToken = () => (location.hash.startsWith(SHARE) ? decodeURIComponent(location.hash.slice(SHARE.length)) : null);

class ShareInvalid extends Error {}

async function shareApi(path, opts = {}) {
  const r = await fetch(path, { ...opts, cache: "no-store", headers: { Authorization: `Bearer ${state.share}` } });
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (r.status === 401) throw new ShareInvalid("this share link is invalid, expired or revoked");
  if (!r.ok) throw Object.assign(new Error(`${body.error || r.status}: ${body.detail || body}`), { status: r.status });
  return body;
}

function shareDead() {
  clearTimeout(state.refresh);
  stopPlayer($("#shared-video"));
  $("#shared").hidden = $("#error").hidden = true;
  $("#shared-invalid").hidden = false;
}

const shareFail = (err) => (err instanceof ShareInvalid ? shareDead() : fail(err));

function facts(dl, entries) {
  dl.replaceChildren(...Object.entries(entries).flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v ?? "–"; return [dt, dd];
  }));
}

function setLink(sel, href) {
  $(sel).hidden = !href;
  if (href) $(sel).href = href; else $(sel).removeAttribute("href");
}

async function refreshShareLinks() {
  clearTimeout(state.refresh);
  const links = await shareApi("/v1/share/links", { method: "POST" });
  state.mediaToken = links.token;
  setLink("#shared-evidence", links.evidence);
  setLink("#shared-mp4", links.mp4);
  const wait = Math.max(10_000, links.expires_at * 1000 - Date.now() - 60_000); // a minute before expiry
  state.refresh = setTimeout(() => refreshShareLinks().catch(shareFail), wait);
  return links;
}

// A fatal player error: the share may be gone (401 on the media) or a media link expired while the
// tab slept; new links tell which. An expired link restarts the player where it was, once.
async function shareFatal(d) {
  const video = $("#shared-video"), at = video.currentTime;
  let links;
  try { links = await refreshShareLinks(); } catch (err) { return shareFail(err); }
  if (d.response?.code === 401 && !state.replayed) {
    state.replayed = true;
    play(links.hls, { video, onFatal: shareFatal, start: at });
  } else {
    fail(new Error(`playback: ${d.details}`));
  }
}

async function openShare() {
  state.share = shareToken();
  for (const id of ["#signin", "#list", "#session"]) $(id).hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "shared recording · read-only";
  const { share, session: s, chunks } = await shareApi("/v1/share");
  $("#shared-title").textContent = s.name;
  $("#shared-state").textContent = s.state;
  $("#shared-expiry").textContent = `This link expires ${when(share.expires_at)}.`;
  facts($("#shared-facts"), { session: s.id, state: s.state, started: when(s.started_at), stopped: when(s.stopped_at),
    "shared until": when(share.expires_at), window: windowText(share.window),
    chunks: chunks ? `${chunks.first_seq}–${chunks.last_seq}` : "none yet", note: share.note || "–",
    downloads: share.may_download ? "allowed" : "not allowed" });
  const v = listedVerification(s);
  $("#shared-verification").textContent = v.text;
  $("#shared-verification").className = v.cls;
  $("#shared-verification").dataset.status = s.verification?.status || "none";
  $("#shared").hidden = false;
  $("#shared-empty").hidden = chunks !== null;
  const links = await refreshShareLinks();
  if (chunks) play(links.hls, { video: $("#shared-video"), onFatal: (d) => shareFatal(d).catch(shareFail) });
  const checkpoints = await shareApi("/v1/share/checkpoints");
  const cp = $("#shared-checkpoints tbody");
  cp.replaceChildren();
  for (const c of checkpoints.items) {
    const tr = cp.insertRow(); cell(tr, c.body.tree_size); cell(tr, c.body.root); cell(tr, when(c.body.time));
  }
  let m = null;
  try { m = await shareApi("/v1/share/manifest"); } catch (err) { if (err instanceof ShareInvalid) throw err; }
  facts($("#shared-manifest"), m ? { format: m.body.format, chunks: m.body.chunk_count, duration: secs(m.body.duration_ms),
    "merkle root": m.body.merkle.root, "signing key": m.signature.key_id, sealed: when(m.body.sealed_at) }
    : { manifest: "not sealed yet" });
}

// --- recording: a new session from the viewer, and the live controls --------------------------
function newSource() {
  const kind = $("#new-kind").value;
  if (kind === "testsrc") return { kind };
  const source = { kind, host: $("#new-host").value.trim(), reconnect_seconds: Number($("#new-reconnect").value || 60) };
  if ($("#new-port").value) source.port = Number($("#new-port").value);
  if ($("#new-credential").value.trim()) source.credential = $("#new-credential").value.trim();
  return source;
}

async function record() {
  $("#error").hidden = true;
  const [width, height] = $("#new-size").value.split("x").map(Number);
  const body = { name: $("#new-name").value.trim(), source: newSource(),
    video: { width, height, fps: Number($("#new-fps").value || 15) }, labels: { via: "viewer" } };
  const s = await api("/v1/sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let refused = null; // a 422 with the server's reason: the session stays created, the error says why
  try { await api(`/v1/sessions/${s.id}/start`, { method: "POST" }); } catch (err) { refused = err; }
  $("#new-panel").hidden = true;
  $("#new-toggle").setAttribute("aria-expanded", "false");
  history.pushState(null, "", `#${s.id}`);
  await openSession(s.id);
  if (refused) throw refused;
}

async function openNewPanel() {
  $("#new-panel").hidden = false;
  $("#new-toggle").setAttribute("aria-expanded", "true");
  $("#new-remote").hidden = $("#new-kind").value === "testsrc";
  $("#new-port").placeholder = $("#new-kind").value === "rdp" ? "3389" : "5900";
  try { // admins see the stored credentials' names (never a password); others type the name
    const list = await api("/v1/credentials");
    $("#credential-names").replaceChildren(...list.items.filter((c) => c.kind === $("#new-kind").value).map((c) => {
      const o = document.createElement("option"); o.value = c.name; o.label = c.username || c.kind; return o;
    }));
  } catch { $("#credential-names").replaceChildren(); }
}

function showLive(s) {
  const live = ["created", "recording", "paused"].includes(s.state);
  $("#live").hidden = !live;
  $("#pause").hidden = s.state !== "recording";
  $("#resume").hidden = s.state !== "paused";
  $("#stop").hidden = s.state === "created";
  $("#live-hint").textContent = s.state === "created" ? "not recording (see the audit log and error above)" : "";
}

async function control(action) {
  const s = await api(`/v1/sessions/${state.current.id}/${action}`, { method: "POST" });
  await openSession(s.id);
}

// a remote desktop's connection that dropped and came back: a gap in the recording, not invented frames
function showGaps(entries) {
  const items = entries.map((r) => r.entry).filter((e) => e.event === "source_lost" || e.event === "source_back");
  $("#gaps").replaceChildren(...items.map((e) => {
    const li = document.createElement("li");
    li.textContent = e.event === "source_lost" ? `${when(e.at)}: connection lost (${e.detail.reason}), nothing recorded until it is back`
      : `${when(e.at)}: connection back after ${(e.detail.gap_ms / 1000).toFixed(1)} s`;
    return li;
  }));
  $("#gaps").hidden = items.length === 0;
}

// --- insight (issue 15): search across sessions, seek previews, activity, skip idle, speed, markers ---
const insight = { id: null, cues: [], sheets: new Map(), activity: null, markers: [], duration: 0 };

async function blobUrl(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
  return r.ok ? URL.createObjectURL(await r.blob()) : null;
}

// the snippet with the query's words marked: whole words, and words starting with a `prefix*`
function highlight(el, text, query) {
  const exact = new Set(), prefixes = [];
  for (const term of query.toLowerCase().replaceAll('"', " ").split(/\s+/)) {
    const toks = term.match(/[\p{L}\p{N}]+/gu) || [];
    toks.forEach((t, i) => (term.endsWith("*") && i === toks.length - 1 ? prefixes.push(t) : exact.add(t)));
  }
  el.replaceChildren(...text.split(/([\p{L}\p{N}]+)/u).map((part) => {
    const p = part.toLowerCase();
    if (!exact.has(p) && !prefixes.some((w) => p.startsWith(w))) return document.createTextNode(part);
    const m = document.createElement("mark"); m.textContent = part; return m;
  }));
}

async function search() {
  const q = $("#search-q").value.trim();
  const params = new URLSearchParams({ q, limit: "20" });
  const label = $("#search-label").value.trim();
  if (label) params.append("label", label);
  const res = await api(`/v1/search?${params}`);
  $("#search-summary").textContent = `${res.items.length} hit${res.items.length === 1 ? "" : "s"} in ${res.sessions_searched} sessions searched (this search is logged)`;
  $("#search-results").replaceChildren(...res.items.map((h) => {
    const li = document.createElement("li");
    li.className = "hit"; li.dataset.sessionId = h.session_id; li.dataset.t = h.t_ms;
    const img = document.createElement("img"); img.alt = "";
    blobUrl(h.thumbnail).then((u) => { if (u) img.src = u; });
    const name = document.createElement("strong"); name.textContent = `${h.session_name} · ${secs(h.t_ms)}`;
    const snip = document.createElement("span"); snip.className = "snippet"; highlight(snip, h.text, q);
    li.append(img, name, snip);
    li.addEventListener("click", () => { location.hash = `${h.session_id}?t=${(h.t_ms / 1000).toFixed(1)}`; });
    return li;
  }));
  $("#search-panel").hidden = false;
}

const vttTime = (t) => { const [h, m, s] = t.split(":"); return (+h * 3600 + +m * 60 + parseFloat(s)) * 1000; };

function parseVtt(text, base) {
  const cues = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const m = lines[i].match(/^(\S+) --> (\S+)/);
    if (!m) continue;
    const [url, frag] = lines[i + 1].split("#xywh=");
    const [x, y, w, h] = frag.split(",").map(Number);
    cues.push({ start: vttTime(m[1]), end: vttTime(m[2]), url: new URL(url, base).pathname, x, y, w, h });
  }
  return cues;
}

async function loadInsight(id) {
  Object.assign(insight, { id, cues: [], sheets: new Map(), activity: null, markers: [] });
  $("#timeline").hidden = true; $("#insight-hint").textContent = "";
  const base = new URL(`/v1/sessions/${id}/thumbnails.vtt`, location.href);
  const [activity, vtt, text, markers] = await Promise.all([
    api(`/v1/sessions/${id}/activity`).catch(() => null),
    api(`/v1/sessions/${id}/thumbnails.vtt`).catch(() => ""),
    api(`/v1/sessions/${id}/text`).catch(() => null),
    api(`/v1/sessions/${id}/markers`),
  ]);
  if (insight.id !== id) return; // another session was opened meanwhile
  insight.activity = activity; insight.cues = vtt ? parseVtt(vtt, base) : []; insight.markers = markers.items;
  insight.duration = Math.max(activity ? activity.seconds.length * 1000 : 0, state.current.duration_ms || 0);
  $("#timeline").hidden = !insight.duration;
  if (!activity) $("#insight-hint").textContent = "activity and previews are not derived yet (they follow the recording)";
  showMarkers();
  showText(text);
  drawTimeline();
}

function showText(text) {
  const ol = $("#screen-text");
  if (!text || !text.items.length) { ol.replaceChildren(Object.assign(document.createElement("li"), { textContent: text ? "no text found yet" : "not derived yet" })); return; }
  ol.replaceChildren(...text.items.map((ln) => {
    const li = document.createElement("li"); li.textContent = `${secs(ln.t_ms)}  ${ln.text}`;
    li.addEventListener("click", () => seek(ln.t_ms));
    return li;
  }));
}

function showMarkers() {
  $("#markers").replaceChildren(...insight.markers.map((m) => {
    const li = document.createElement("li");
    li.textContent = `⚑ ${secs(m.t_ms)} ${m.note}`; li.title = `${m.actor}, ${when(m.at)}`;
    li.addEventListener("click", () => seek(m.t_ms));
    return li;
  }));
}

function seek(ms) { const v = $("#video"); v.currentTime = ms / 1000; }

function drawTimeline() {
  const c = $("#activity"), v = $("#video"), dur = insight.duration;
  if (!dur || $("#timeline").hidden) return;
  const w = (c.width = c.clientWidth * devicePixelRatio), h = (c.height = 40 * devicePixelRatio);
  const g = c.getContext("2d"), x = (ms) => (ms / dur) * w;
  g.clearRect(0, 0, w, h);
  const a = insight.activity;
  if (a) {
    g.fillStyle = "#e3e6ea";
    for (const [s, e] of a.idle) g.fillRect(x(s), 0, Math.max(1, x(e) - x(s)), h);
    g.fillStyle = "#3b82c4";
    a.seconds.forEach((score, i) => { if (score > 0) { const bh = Math.max(2, Math.sqrt(score) * h); g.fillRect(x(i * 1000), h - bh, Math.max(1, x(1000)), bh); } });
  }
  g.fillStyle = "#e07b00";
  for (const m of insight.markers) g.fillRect(x(m.t_ms) - devicePixelRatio, 0, 2 * devicePixelRatio, h);
  g.fillStyle = "#b42318";
  g.fillRect(x(v.currentTime * 1000), 0, devicePixelRatio, h);
}

async function preview(ev) {
  const c = $("#activity"), r = c.getBoundingClientRect(), t = ((ev.clientX - r.left) / r.width) * insight.duration;
  const cue = insight.cues.find((q) => q.start <= t && t < q.end);
  $("#preview").style.left = `${ev.clientX - r.left}px`;
  $("#preview-time").textContent = secs(t);
  $("#preview").hidden = false;
  if (!cue) return;
  if (!insight.sheets.has(cue.url)) insight.sheets.set(cue.url, blobUrl(cue.url));
  const url = await insight.sheets.get(cue.url);
  Object.assign($("#preview-img").style, { backgroundImage: `url(${url})`, backgroundPosition: `-${cue.x}px -${cue.y}px`,
    width: `${cue.w}px`, height: `${cue.h}px` });
}

// skip idle: playing into a stretch where nothing changed jumps to its end
function skipIdle() {
  const v = $("#video"), a = insight.activity;
  if (!$("#skip-idle").checked || !a || v.paused) return;
  const now = v.currentTime * 1000;
  const span = a.idle.find(([s, e]) => s <= now && now < e - 500);
  if (span) v.currentTime = span[1] / 1000;
}

async function addMarker() {
  const t = Math.round($("#video").currentTime * 1000);
  await api(`/v1/sessions/${insight.id}/markers`, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ t_ms: t, note: $("#marker-note").value.trim() }) });
  $("#marker-note").value = "";
  insight.markers = (await api(`/v1/sessions/${insight.id}/markers`)).items;
  showMarkers(); drawTimeline();
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
$("#share-toggle").addEventListener("click", () => {
  if (!$("#share-panel").hidden) return closeSharePanel();
  $("#share-panel").hidden = false;
  $("#share-toggle").setAttribute("aria-expanded", "true");
  loadShares().catch(fail);
});
$("#share-form").addEventListener("submit", (e) => { e.preventDefault(); createShare().catch(fail); });
$("#share-copy").addEventListener("click", () => copyShareLink().catch(fail));
$("#new-toggle").addEventListener("click", () => {
  if (!$("#new-panel").hidden) { $("#new-panel").hidden = true; $("#new-toggle").setAttribute("aria-expanded", "false"); return; }
  openNewPanel().catch(fail);
});
$("#new-kind").addEventListener("change", () => openNewPanel().catch(fail));
$("#new-form").addEventListener("submit", (e) => { e.preventDefault(); record().catch(fail); });
for (const action of ["pause", "resume", "stop"]) $(`#${action}`).addEventListener("click", () => control(action).catch(fail));
$("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search().catch(fail); });
$("#activity").addEventListener("mousemove", (e) => preview(e).catch(() => {}));
$("#activity").addEventListener("mouseleave", () => { $("#preview").hidden = true; });
$("#activity").addEventListener("click", (e) => {
  const r = $("#activity").getBoundingClientRect(); seek(((e.clientX - r.left) / r.width) * insight.duration);
});
$("#video").addEventListener("timeupdate", () => { skipIdle(); drawTimeline(); });
$("#speed").addEventListener("change", () => { $("#video").playbackRate = Number($("#speed").value); });
$("#video").addEventListener("loadedmetadata", () => { $("#video").playbackRate = Number($("#speed").value); });
$("#marker-form").addEventListener("submit", (e) => { e.preventDefault(); addMarker().catch(fail); });
window.addEventListener("resize", drawTimeline);
// /viewer/#<session id>[?t=<seconds>] opens that session (at that second: a search hit; the Dagster UI
// links here); /viewer/#share=<token> is share mode
function route() {
  const [id, query] = location.hash.slice(1).split("?");
  const t = Number(new URLSearchParams(query || "").get("t"));
  return openSession(id, Number.isFinite(t) && t > 0 ? t : -1);
}
const start = () => (location.hash.length > 1 ? route() : loadList());
window.addEventListener("hashchange", () => {
  if (state.share || shareToken()) location.reload(); // into or out of share mode: a clean page
  else if (state.key && location.hash.length > 1) route().catch(fail);
});
if (shareToken()) openShare().catch(shareFail);
else if (state.key) start().catch(fail);
else show("#signin");
