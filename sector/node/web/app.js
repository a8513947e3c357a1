// Sector's web page: one page, four tabs, polling the node's JSON API (no build step).
"use strict";
(function () {
  const POLL_MS = 1500;
  const $ = (sel) => document.querySelector(sel);
  const esc = (v) => String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    let i = 0; n = Number(n);
    while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + UNITS[i];
  }
  const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
  const pill = (s) => `<span class="pill ${esc(s)}">${esc(s)}</span>`;
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
  function ago(t) {
    if (!t) return "–";
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago`
      : `${(s / 3600).toFixed(1)} h ago`;
  }

  async function api(route) {
    const r = await fetch(route, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  }

  // ------------------------------------------------------------------ routing
  function route() {
    const h = location.hash.replace(/^#/, "") || "overview";
    const q = h.indexOf("?");
    const tab = q < 0 ? h : h.slice(0, q);
    const params = new URLSearchParams(q < 0 ? "" : h.slice(q + 1));
    return { tab: ["overview", "files", "jobs", "workers"].includes(tab) ? tab : "overview", params };
  }
  function show() {
    const { tab } = route();
    document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== tab; });
    document.querySelectorAll("#tabs a").forEach((a) => {
      a.classList.toggle("active", a.dataset.tab === tab);
    });
    refresh();
  }

  // ------------------------------------------------------------------ overview
  function renderOverview(st) {
    const nodes = st.nodes || [];
    const up = nodes.filter((n) => n.state === "up").length;
    const used = nodes.reduce((a, n) => a + (n.bytes_used || 0), 0);
    const free = nodes.reduce((a, n) => a + (n.bytes_free || 0), 0);
    const cards = [
      ["Nodes up", `${up} / ${nodes.length}`, up < nodes.length],
      ["Files", num(st.files)],
      ["Bytes", bytes(st.bytes)],
      ["Under-replicated", num(st.under_replicated), st.under_replicated > 0],
      ["Repair queue", num(st.repair_queue), st.repair_queue > 0],
      ["Space used", bytes(used)],
      ["Space free", bytes(free)],
      ["Cluster", st.split ? "split" : "whole", !!st.split],
    ];
    $("#cards").innerHTML = cards.map(([k, v, bad]) =>
      `<div class="card${bad ? " bad" : ""}"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`
    ).join("");
    $("#nodes tbody").innerHTML = nodes.map((n) => {
      const sph = (n.workers || []).find((w) => w.name === "sphere") || {};
      const eng = sph.engines ? `${sph.engines_busy || 0} / ${sph.engines} busy` : "–";
      const page = (n.http ? `<a href="${esc(n.http)}">open</a>` : "–") + (credential() && ["up", "draining"].includes(n.state)
        ? ` <button class="drain" data-drain="${esc(n.address)}" data-cancel="${n.state === "draining" ? 1 : ""}">${n.state === "draining" ? "undrain" : "drain"}</button>` : "");
      return `<tr data-address="${esc(n.address)}" data-state="${esc(n.state)}">` +
        `<td class="mono">${esc(n.address)}</td><td>${pill(n.state)}</td>` +
        `<td>${esc(n.topology || "–")}</td><td>${bytes(n.bytes_used)}</td><td>${bytes(n.bytes_free)}</td>` +
        `<td>${num(n.files)}</td><td>${n.load === null || n.load === undefined ? "–" : Number(n.load).toFixed(2)}</td>` +
        `<td>${esc(eng)}</td><td>${num(n.repair_queue)}</td><td>${page}</td></tr>`;
    }).join("");
    // The ring: the nodes in the order of their ids on the Chord ring.
    const ring = nodes.slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
    $("#ring").innerHTML = ring.map((n) =>
      `<span class="hop${n.state === "up" ? "" : " down"}" title="${esc(n.id)}">${esc(String(n.id).slice(0, 8))} · ${esc(n.address)}</span>`
    ).join('<span class="muted">→</span>') + (ring.length ? '<span class="muted">↺</span>' : "");
  }

  // ------------------------------------------------------------------ actions
  let notice = ""; // the outcome of the last action, shown for a while
  const credential = () => sessionStorage.getItem("sector-credential") || "";
  async function drain(address, cancel) {
    if (!confirm(`${cancel ? "Stop draining" : "Drain"} ${address}?`)) return;
    const r = await fetch("/api/drain", {
      method: "POST",
      headers: { "Authorization": `Bearer ${credential()}`, "Content-Type": "application/json" },
      body: JSON.stringify({ address, cancel }),
    });
    done("drain", r);
  }
  async function cancelJob(job) {
    if (!confirm(`Cancel Sphere job ${job}?`)) return;
    const r = await fetch(`/api/jobs/${encodeURIComponent(job)}/cancel`, {
      method: "POST",
      headers: { "Authorization": `Bearer ${credential()}` },
    });
    done("cancel", r);
  }
  async function done(what, r) {
    const body = await r.json().catch(() => ({}));
    notice = r.ok ? "" : `${what}: ${body.error || "HTTP " + r.status}`;
    setTimeout(() => { notice = ""; }, 8000);
    refresh();
  }

  // ------------------------------------------------------------------ files
  const verified = { key: null, st: null };
  function fileHref(path) { return `#files?path=${encodeURIComponent(path)}`; }
  function parent(path) { const i = path.lastIndexOf("/"); return i <= 0 ? "/" : path.slice(0, i); }
  async function renderFiles(params) {
    // a path that names a file: list its directory and describe the file
    const path = params.get("path") || "/";
    const top = path === "/" ? { type: "dir" } : await api(`/api/stat?path=${encodeURIComponent(path)}`);
    const dir = top.type === "dir" ? path : parent(path);
    const file = top.type === "dir" ? params.get("file") : path;
    const listing = await api(`/api/ls?path=${encodeURIComponent(dir)}`);
    const parts = dir.split("/").filter(Boolean);
    let acc = "";
    $("#crumbs").innerHTML = `<a href="${fileHref("/")}">/</a>` + parts.map((p) => {
      acc += "/" + p;
      return ` <a href="${fileHref(acc)}">${esc(p)}</a> /`;
    }).join("");
    const entries = (listing.entries || []).slice().sort((a, b) =>
      (a.type === "dir" ? 0 : 1) - (b.type === "dir" ? 0 : 1) || String(a.name).localeCompare(String(b.name)));
    const full = (e) => (dir === "/" ? "" : dir) + "/" + e.name;
    $("#listing tbody").innerHTML = entries.length ? entries.map((e) => {
      const p = full(e);
      const href = e.type === "dir" ? fileHref(p)
        : `#files?path=${encodeURIComponent(dir)}&file=${encodeURIComponent(p)}`;
      const reps = e.type === "dir" ? "" : `${num(e.replicas)}${e.rf ? " / " + num(e.rf) : ""}`;
      return `<tr data-name="${esc(e.name)}"><td><a href="${href}">${e.type === "dir" ? "📁 " : ""}${esc(e.name)}${e.type === "dir" ? "/" : ""}</a></td>` +
        `<td>${e.type === "dir" ? "" : bytes(e.size)}</td><td>${esc(reps)}</td><td>${esc(when(e.mtime))}</td></tr>`;
    }).join("") : `<tr><td colspan="4" class="empty">empty directory</td></tr>`;
    if (!file) { $("#stat").hidden = true; return; }
    // A verify re-hashes every copy: once per click, not at every poll.
    const verify = params.get("verify") === "1";
    const key = location.hash;
    const st = verify && verified.key === key ? verified.st
      : await api(`/api/stat?path=${encodeURIComponent(file)}${verify ? "&verify=1" : ""}`);
    if (verify) Object.assign(verified, { key, st });
    const reps = (st.replicas || []).map((r) => {
      const node = typeof r === "object" ? r : { address: r };
      const health = node.health || node.state || "listed";
      return `<tr data-replica="${esc(node.address || node.id)}"><td class="mono">${esc(node.address || node.id || "")}</td><td>${pill(health)}</td><td>${esc(node.topology || "")}</td></tr>`;
    }).join("");
    $("#stat").hidden = false;
    $("#stat").innerHTML = `<h3>${esc(st.path)}</h3><dl class="kv">` +
      `<dt>Size</dt><dd>${bytes(st.size)} (${num(st.size)} bytes)</dd>` +
      `<dt>Checksum</dt><dd class="mono">${esc(st.checksum || st.sha256 || "–")}</dd>` +
      `<dt>Replicas</dt><dd>${num((st.replicas || []).length)}${st.rf ? " of " + num(st.rf) + " wanted" : ""}</dd>` +
      `<dt>Modified</dt><dd>${esc(when(st.mtime))}</dd>` +
      (st.owner ? `<dt>Owner</dt><dd>${esc(st.owner)}</dd>` : "") +
      `</dl><div class="scroll"><table class="grid" id="replicas"><thead><tr><th>Replica</th><th>Health</th><th>Topology</th></tr></thead><tbody>${reps}</tbody></table></div>` +
      `<p><a class="btn" id="download" href="/api/file?path=${encodeURIComponent(st.path)}">Download</a> ` +
      (verify ? `<span class="muted">replicas re-hashed on their nodes</span>`
        : `<a class="btn" id="verify" href="#files?path=${encodeURIComponent(dir)}&file=${encodeURIComponent(st.path)}&verify=1">Verify replicas</a>`) + `</p>`;
  }

  // ------------------------------------------------------------------ jobs
  const rates = {}; // job id -> [time, done] of the previous poll: live segments/s
  function renderJobs(j) {
    const sphere = j.sphere || [];
    $("#sphere-jobs").innerHTML = sphere.length ? sphere.map((job) => {
      // The job's segments, as its driver told the nodes (else those started so far).
      const total = Math.max(job.segments || 0, job.done + job.running + job.failed);
      const pct = (k) => (total ? (100 * job[k] / total).toFixed(1) : 0);
      const now = Date.now() / 1000;
      const prev = rates[job.id];
      let live = job.segments_per_s;
      if (prev && now > prev[0] && job.done >= prev[1] && job.running) live = (job.done - prev[1]) / (now - prev[0]) || live;
      rates[job.id] = [now, job.done];
      const nodes = job.nodes.map((n) =>
        `<tr><td class="mono">${esc(n.address)}</td><td>${num(n.done)}</td><td>${num(n.running)}</td><td>${num(n.failed)}</td><td>${num(n.cancelled)}</td></tr>`).join("");
      const errs = (job.errors || []).map((e) =>
        `<div><b>segment ${esc(e.seg)}</b> on <span class="mono">${esc(e.node)}</span>: ${esc(e.error)}` +
        (e.traceback ? `<pre>${esc(e.traceback)}</pre>` : "") + `</div>`).join("") +
        (job.errors_hidden ? `<p class="muted">${num(job.errors_hidden)} failures (their errors are shown to the job's user)</p>` : "");
      const cancel = credential() && job.state === "running"
        ? ` <button class="drain" data-cancel-job="${esc(job.id)}">cancel</button>` : "";
      return `<div class="job" data-job="${esc(job.id)}" data-state="${esc(job.state)}" data-segments="${esc(total)}" data-done="${esc(job.done)}" data-running="${esc(job.running)}" data-failed="${esc(job.failed)}">` +
        `<h3>${esc(job.id)} ${pill(job.state)}${cancel}</h3>` +
        (job.stopped ? `<p class="muted">${esc(job.stopped)}</p>` : "") +
        `<div class="bar" title="${num(job.done)} of ${num(total)} segments done"><span style="width:${pct("done")}%"></span><span class="failed" style="left:${pct("done")}%;width:${pct("failed")}%"></span></div>` +
        `<dl class="kv" style="margin-top:10px"><dt>Segments</dt><dd><span class="seg-done">${num(job.done)}</span> of ${num(total)} done · ${num(job.running)} running · ${num(job.failed)} failed · ${num(job.cancelled)} cancelled</dd>` +
        `<dt>Throughput</dt><dd>${live ? live.toFixed(2) + " segments/s" : "–"}${job.bytes_per_s ? " · " + bytes(job.bytes_per_s) + "/s in" : ""}</dd>` +
        `<dt>Read · written</dt><dd>${bytes(job.bytes_in)} · ${num(job.records_out)} records</dd>` +
        `<dt>Started</dt><dd>${esc(ago(job.started))}${job.owner ? " by " + esc(job.owner) : ""}</dd></dl>` +
        `<div class="scroll"><table class="grid"><thead><tr><th>Node</th><th>Done</th><th>Running</th><th>Failed</th><th>Cancelled</th></tr></thead><tbody>${nodes}</tbody></table></div>` +
        (errs ? `<h2>Errors</h2>${errs}` : "") + `</div>`;
    }).join("") : `<p class="empty">No Sphere job on any node right now.</p>`;
    const disco = j.disco || [];
    $("#disco-jobs").innerHTML = disco.length ? `<div class="scroll"><table class="grid"><thead><tr><th>Job</th><th>Status</th><th>Started</th><th>Map tasks</th><th>Results / error</th></tr></thead><tbody>` +
      disco.map((d) => {
        const st = d.active || "unknown";
        const out = d.error ? `${esc(d.error)}${d.traceback ? `<pre>${esc(d.traceback)}</pre>` : ""}`
          : `${num((d.results || []).length)} result files`;
        const m = d.mapi || [];
        const tasks = m.length ? `${num(m[2])} done · ${num(m[1])} running · ${num(m[0])} pending · ${num(m[3])} failed attempts` : "–";
        return `<tr data-disco="${esc(d.name)}"><td class="mono">${esc(d.name)}</td><td>${pill(st)}</td><td>${esc(d.timestamp || "–")}</td>` +
          `<td>${esc(tasks)}</td><td style="white-space:normal">${out}</td></tr>`;
      }).join("") + `</tbody></table></div>` : `<p class="empty">No Disco job records under /disco.</p>`;
    if ((j.unanswered || []).length) {
      $("#sphere-jobs").insertAdjacentHTML("afterbegin", `<p class="muted">No answer from ${j.unanswered.map(esc).join(", ")}</p>`);
    }
  }

  // ------------------------------------------------------------------ workers
  const SKIP = new Set(["name", "state", "last_error"]);
  function renderWorkers(st) {
    $("#worker-list").innerHTML = (st.nodes || []).map((n) => {
      const ws = (n.workers || []).map((w) => {
        const facts = Object.entries(w).filter(([k, v]) => !SKIP.has(k) && (typeof v !== "object" || v === null))
          .slice(0, 8).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v)}</dd>`).join("");
        return `<div class="panel"><h3>${esc(w.name)} ${pill(w.state || "?")}</h3><dl class="kv">${facts}</dl></div>`;
      }).join("");
      return `<h2>${esc(n.address)} ${pill(n.state)}</h2>` +
        (ws ? `<div class="workers">${ws}</div>` : `<p class="empty">no report from this node</p>`);
    }).join("");
  }

  // ------------------------------------------------------------------ polling
  let busy = false;
  let again = false; // a refresh asked for while one ran (a click): run it right after
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    again = false;
    const { tab, params } = route();
    try {
      if (tab === "overview") renderOverview(await api("/api/status"));
      else if (tab === "files") await renderFiles(params);
      else if (tab === "jobs") renderJobs(await api("/api/jobs"));
      else renderWorkers(await api("/api/status"));
      $("#error").hidden = !notice;
      $("#error").textContent = notice;
      $("#live").classList.remove("stale");
    } catch (e) {
      $("#error").hidden = false;
      $("#error").textContent = String(e.message || e);
      $("#live").classList.add("stale");
    } finally {
      busy = false;
      if (again) refresh();
    }
  }

  window.addEventListener("hashchange", show);
  $("#credential").value = credential();
  $("#credential").addEventListener("input", (e) => {
    sessionStorage.setItem("sector-credential", e.target.value.trim());
    refresh();
  });
  $("#nodes").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-drain]");
    if (b) drain(b.dataset.drain, !!b.dataset.cancel);
  });
  $("#sphere-jobs").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-cancel-job]");
    if (b) cancelJob(b.dataset.cancelJob);
  });
  api("/api/node").then((n) => {
    $("#me").textContent = n.address;
    document.title = `Sector · ${n.address}`;
  }).catch(() => {});
  show();
  setInterval(refresh, POLL_MS);
})();
