// pksync admin page: one small single-page app over the JSON API in api/.
// No framework, no build step, no external resources. Every text from the
// server goes into the page through textContent, never as HTML.
"use strict";

(function () {
  const state = { csrf: null, connections: [], poll: null };
  const $ = (sel) => document.querySelector(sel);
  const page = $("#page");

  // ---- DOM helpers ---------------------------------------------------------

  /** h("tag.class", {attr: value, onclick: fn}, child...) */
  function h(spec, attrs, ...children) {
    const [tag, ...classes] = spec.split(".");
    const el = document.createElement(tag);
    if (classes.length) el.className = classes.join(" ");
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function field(id, label, input, hint) {
    input.id = id;
    return h("div", {}, h("label", { for: id }, label, hint ? h("span.hint", {}, " ", hint) : null), input);
  }

  function select(name, options, value) {
    const s = h("select", { name });
    for (const [v, label] of options) {
      const o = h("option", { value: v }, label);
      if (v === value) o.selected = true;
      s.append(o);
    }
    return s;
  }

  function badge(word) { return h("span.status." + String(word).replace(/[^a-z_]/g, ""), {}, word); }

  function num(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US");
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0, v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : v) + " " + units[i];
  }

  function when(ts) {
    if (!ts) return "–";
    const d = new Date(ts);
    return isNaN(d) ? String(ts) : d.toLocaleString("en-GB", { hour12: false });
  }

  function notice(message, kind) {
    const n = $("#notice");
    n.className = kind || "info";
    n.textContent = message || "";
  }

  function setPage(title, ...children) {
    page.replaceChildren(h("h2", { id: "page-title", tabindex: "-1" }, title),
      ...children.filter((c) => c !== null && c !== undefined && c !== false));
    const t = $("#page-title");
    if (t) t.focus();
  }

  // ---- the API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, doc) {
      super((doc && doc.message) || ("The site answered " + status + "."));
      this.status = status;
      this.code = doc && doc.error;
    }
  }

  async function api(method, path, body) {
    const headers = { "accept": "application/json" };
    if (method !== "GET") {
      headers["content-type"] = "application/json";
      if (state.csrf) headers["x-csrf-token"] = state.csrf;
    }
    let res;
    try {
      res = await fetch("api/" + path, { method, headers, credentials: "same-origin",
        body: method === "GET" ? undefined : JSON.stringify(body || {}) });
    } catch (e) {
      throw new ApiError(0, { message: "This site could not be reached: " + e.message });
    }
    let doc = null;
    try { doc = await res.json(); } catch (e) { doc = null; }
    if (res.status === 401 && path !== "login") {
      // a first visit is just "not logged in"; a lost session says why
      showLogin(state.csrf ? doc && doc.message : null);
      throw new ApiError(401, doc);
    }
    if (!res.ok) throw new ApiError(res.status, doc);
    return doc;
  }

  /** Run an async action; errors become the notice, in words. */
  async function guarded(fn) {
    try { return await fn(); } catch (e) {
      if (e.status !== 401) notice(e.message, "error");
      return undefined;
    }
  }

  // ---- login ---------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    state.csrf = null;
    $("#nav").hidden = true;
    page.replaceChildren();
    $("#login").hidden = false;
    if (message) notice(message, "error");
    $("#login-password").focus();
  }

  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const password = $("#login-password").value;
    try {
      const doc = await api("POST", "login", { password });
      state.csrf = doc.csrf;
      $("#login-password").value = "";
      $("#login").hidden = true;
      $("#nav").hidden = false;
      notice("");
      route();
    } catch (e) {
      notice(e.message, "error");
    }
  });

  $("#logout").addEventListener("click", async () => {
    await guarded(() => api("POST", "logout"));
    showLogin();
    notice("Logged out.", "info");
  });

  // ---- confirmation dialog -------------------------------------------------

  /** Ask before an action; resolves to null (cancelled) or the extra inputs' values. */
  function confirmAction(title, text, okLabel, extras) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    const box = $("#confirm-extra");
    box.replaceChildren(...(extras || []).map(([id, label, type]) =>
      field("confirm-" + id, label, h("input", { type: type || "text", name: id }))));
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => {
        if (dlg.returnValue !== "ok") return resolve(null);
        const values = {};
        for (const [id] of extras || []) values[id] = $("#confirm-" + id).value;
        resolve(values);
      }, { once: true });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }

  // ---- overview ------------------------------------------------------------

  async function overviewPage() {
    const doc = await api("GET", "overview");
    $("#site").textContent = doc.site_url || "";
    const s = doc.settings;
    const statuses = ["pending", "active", "suspended", "revoked", "expired"];
    const counts = h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Direction"), statuses.map((st) => h("th.num", {}, st)))),
      h("tbody", {}, ["sender", "receiver"].map((dir) => h("tr", {}, h("td", {}, dir),
        statuses.map((st) => h("td.num", {}, num(doc.counts[dir][st] || 0)))))));
    const form = h("form.grid", { id: "settings-form" },
      field("set-enabled", "Sync API", select("enabled", [["true", "enabled"], ["false", "disabled"]],
        String(s.enabled))),
      field("set-mode", "Incoming connections", select("incoming_mode", [
        ["auto_accept", "accept automatically"], ["require_approval", "require approval"],
        ["require_password", "require the incoming password"], ["deny_all", "deny all"]], s.incoming_mode)),
      field("set-password", "New incoming password", h("input", { type: "password", name: "incoming_password",
        autocomplete: "new-password" }), "(empty: keep)"),
      h("div.wide.buttons", {}, h("button.primary", { type: "submit" }, "Save settings"),
        s.password_set ? h("button", { type: "button", id: "clear-password", onclick: () => saveSettings({ incoming_password: "" }) },
          "Clear the incoming password") : null));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const change = { enabled: form.enabled.value === "true", incoming_mode: form.incoming_mode.value };
      if (form.incoming_password.value) change.incoming_password = form.incoming_password.value;
      saveSettings(change);
    });
    setPage("Overview",
      h("section.card", {}, h("dl.facts", {},
        h("dt", {}, "Sync API"), h("dd", {}, s.enabled ? "enabled" : "disabled"),
        h("dt", {}, "Incoming mode"), h("dd", {}, s.incoming_mode),
        h("dt", {}, "Incoming password"), h("dd", { id: "password-state" }, s.password_set ? "set" : "not set"),
        h("dt", {}, "Connections"), h("dd", {}, num(doc.total)))),
      h("h3", {}, "Connections by status"), h("div.table-wrap", {}, counts),
      h("h3", {}, "Settings"), h("section.card", {}, form));
  }

  async function saveSettings(change) {
    await guarded(async () => {
      await api("POST", "settings", change);
      await overviewPage();
      notice("Settings saved.", "info");
    });
  }

  // ---- connections ---------------------------------------------------------

  const STATUSES = [["", "any status"], ["pending", "pending"], ["active", "active"], ["suspended", "suspended"],
    ["revoked", "revoked"], ["expired", "expired"]];
  const filters = { direction: "", status: "" };

  async function connectionsPage() {
    const q = new URLSearchParams();
    if (filters.direction) q.set("direction", filters.direction);
    if (filters.status) q.set("status", filters.status);
    const doc = await api("GET", "connections?" + q);
    state.connections = doc.connections;
    const dirSel = select("direction", [["", "both directions"], ["sender", "we send"], ["receiver", "we receive"]],
      filters.direction);
    const stSel = select("status", STATUSES, filters.status);
    const onFilter = () => { filters.direction = dirSel.value; filters.status = stSel.value; guarded(connectionsPage); };
    dirSel.addEventListener("change", onFilter);
    stSel.addEventListener("change", onFilter);
    const rows = doc.connections.map(connectionRow);
    setPage("Connections",
      h("div.filters", {}, field("filter-direction", "Direction", dirSel), field("filter-status", "Status", stSel)),
      h("div.table-wrap", {}, h("table.stack", { id: "connections" },
        h("thead", {}, h("tr", {}, ["Name", "Direction", "Other site", "Status", "Token", "Last contact", "Actions"]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, "No connections."))))),
      h("div", { id: "answer" }),
      createForm());
  }

  function connectionRow(c) {
    const act = (label, action, opts) => h("button", { type: "button", "data-action": action,
      "aria-label": label + " " + c.name, onclick: () => lifecycle(c, action, label, opts || {}) }, label);
    const actions = [];
    if (c.status === "pending") actions.push(act("Approve", "approve"));
    if (c.status === "active") actions.push(act("Suspend", "suspend", { reason: true }));
    if (c.status === "suspended") actions.push(act("Reactivate", "reactivate"));
    if (c.status !== "revoked") actions.push(act("Revoke", "revoke", { reason: true }));
    if (c.direction === "sender") actions.push(act("New token", "regenerate", { password: true }));
    actions.push(act("Delete", "delete"));
    actions.push(h("button", { type: "button", "data-action": "check", "aria-label": "Check " + c.name,
      onclick: () => check(c) }, "Check"));
    if (c.direction === "receiver") {
      actions.push(h("a.button", { href: "#/sync/" + c.uuid, "data-action": "sync" }, "Sync…"));
    }
    return h("tr", { "data-uuid": c.uuid },
      h("td", { "data-label": "Name" }, c.name),
      h("td", { "data-label": "Direction" }, c.direction === "sender" ? "we send" : "we receive"),
      h("td", { "data-label": "Other site" }, c.site_url),
      h("td", { "data-label": "Status" }, badge(c.status)),
      h("td", { "data-label": "Token" }, h("code", {}, (c.token_hash_prefix || "") + "…")),
      h("td", { "data-label": "Last contact" }, when(c.last_connected_at)),
      h("td", { "data-label": "Actions" }, h("div.actions", {}, actions)));
  }

  const ACTION_TEXT = {
    approve: "The connection becomes active.",
    suspend: "No data flows until it is reactivated. The other site is told.",
    reactivate: "The connection becomes active again. The other site is told.",
    revoke: "The connection ends for good. The other site is told.",
    regenerate: "The old token stops working at once; the other site gets the new one.",
    delete: "The connection is removed here, and the other site is asked to remove its side.",
  };

  async function lifecycle(c, action, label, opts) {
    const extras = [];
    if (opts.reason) extras.push(["reason", "Reason (optional)"]);
    if (opts.password) extras.push(["password", "The other site's incoming password, if it asks for one", "password"]);
    const values = await confirmAction(label + ": " + c.name, ACTION_TEXT[action], label, extras);
    if (!values) return;
    const doc = await guarded(() => api("POST", "connections/" + c.uuid + "/" + action, values));
    if (!doc) return;
    await guarded(connectionsPage);
    showAnswer(label + " " + c.name, doc);
  }

  function peerWords(remote) {
    return {
      updated: "the other site updated its side", deleted: "the other site deleted its side",
      not_found: "the other site does not know this connection", offline: "the other site could not be reached",
      skipped: "nothing to tell the other site", exists: "the other site has this connection",
    }[remote] || remote;
  }

  function registrationWords(reg) {
    if (!reg) return null;
    return (reg.notification_success ? "Registered on the other site: " : "Not registered on the other site: ") +
      (reg.notification_message || reg.notification_status || reg.notification_error || "no answer");
  }

  function showAnswer(title, doc) {
    const box = h("section.card.answer", { id: "answer-card", role: "region", "aria-label": "Result" },
      h("h3", {}, title), doc.remote ? h("p", { id: "peer-answer" }, "Peer's answer: " + peerWords(doc.remote)) : null,
      doc.registration ? h("p", { id: "peer-answer" }, registrationWords(doc.registration)) : null);
    if (doc.token) box.append(tokenBox(doc.token));
    const slot = $("#answer");
    if (slot) slot.replaceChildren(box);
    box.scrollIntoView({ block: "nearest" });
  }

  function tokenBox(token) {
    const code = h("code.token", { id: "raw-token" }, token);
    const copy = h("button", { type: "button", id: "copy-token", onclick: async () => {
      try {
        await navigator.clipboard.writeText(token);
        copy.textContent = "Copied";
      } catch (e) {
        const r = document.createRange();
        r.selectNodeContents(code);
        const sel = getSelection(); sel.removeAllRanges(); sel.addRange(r);
        copy.textContent = "Selected: press Ctrl+C";
      }
    } }, "Copy token");
    return h("div", {}, h("p", {}, h("strong", {}, "The token, shown this once: "),
      "give it to the receiving site if it did not get it itself."), code, copy);
  }

  async function check(c) {
    const doc = await guarded(() => api("POST", "connections/" + c.uuid + "/check"));
    if (!doc) return;
    const site = doc.site.error ? "not reachable (" + doc.site.message + ")" :
      (doc.site.enabled ? "sync enabled" : "sync disabled") + ", incoming mode " + (doc.site.incoming_mode || "unknown");
    const box = h("section.card.answer" + (doc.reachable ? "" : ".error"), { id: "answer-card" },
      h("h3", {}, "Check of " + c.name),
      h("dl.facts", { id: "check-result" }, h("dt", {}, "Other site"), h("dd", {}, site),
        h("dt", {}, "This connection there"), h("dd", {}, peerWords(doc.connection))));
    $("#answer").replaceChildren(box);
  }

  function createForm() {
    const text = (name, label, hint, type) => field("new-" + name, label,
      h("input", { type: type || "text", name }), hint);
    const number = (name, label, hint) => field("new-" + name, label, h("input", { type: "number", name, min: 0 }), hint);
    const form = h("form.grid", { id: "create-form" },
      text("name", "Name"), text("site_url", "Receiving site's URL", "https://…", "url"),
      text("password", "Its incoming password", "(if it asks for one)", "password"),
      text("allowed_tables", "Allowed tables", "comma separated; empty: all"),
      text("excluded_tables", "Excluded tables", "comma separated"),
      field("new-expires_at", "Expires", h("input", { type: "datetime-local", name: "expires_at" }), "(empty: never)"),
      number("max_downloads", "Max downloads"), number("max_records_total", "Max records in total"),
      number("max_records_per_request", "Max records per request"),
      number("rate_limit_requests_per_minute", "Requests per minute", "0: no limit"),
      text("ip_whitelist", "IP whitelist", "addresses or CIDRs, comma separated"),
      field("new-allowed_hours_start", "Allowed from hour (UTC)", h("input", { type: "number", name: "allowed_hours_start", min: 0, max: 23 })),
      field("new-allowed_hours_end", "Allowed until hour (UTC)", h("input", { type: "number", name: "allowed_hours_end", min: 0, max: 23 })),
      text("download_password", "Download password", "(optional)", "password"),
      field("new-default_conflict_strategy", "Default strategy", select("default_conflict_strategy",
        [["", "(site default: skip)"], ["skip", "skip"], ["overwrite", "overwrite"], ["merge", "merge"], ["append", "append"]], "")),
      h("div", {}, h("label.inline", { for: "new-auto_sync_enabled" },
        h("input", { type: "checkbox", id: "new-auto_sync_enabled", name: "auto_sync_enabled" }), "Auto-sync")),
      text("auto_sync_tables", "Auto-sync tables", "comma separated"),
      number("auto_sync_interval_minutes", "Auto-sync every (minutes)"),
      h("div.wide.buttons", {}, h("button.primary", { type: "submit" }, "Create sender connection")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);
      for (const el of form.elements) {
        if (!el.name) continue;
        if (el.type === "checkbox") { if (el.checked) body[el.name] = true; continue; }
        if (el.value === "") continue;
        if (["allowed_tables", "excluded_tables", "ip_whitelist", "auto_sync_tables"].includes(el.name)) body[el.name] = list(el.value);
        else if (el.type === "number") body[el.name] = Number(el.value);
        else if (el.type === "datetime-local") body[el.name] = new Date(el.value).toISOString();
        else body[el.name] = el.value;
      }
      const doc = await guarded(() => api("POST", "connections", body));
      if (!doc) return;
      form.reset();
      await guarded(connectionsPage);
      showAnswer("Created " + doc.connection.name, doc);
    });
    return h("section.card", {}, h("h3", {}, "New sender connection"),
      h("p.muted", {}, "This site sends; the other site receives and is told about the connection."), form);
  }

  // ---- sync (receiver) -----------------------------------------------------

  async function syncPage(uuid) {
    const conns = await api("GET", "connections?direction=receiver");
    const conn = conns.connections.find((c) => c.uuid === uuid);
    if (!conn) throw new ApiError(404, { message: "No receiving connection with this id." });
    setPage("Sync: " + conn.name, h("p", { id: "sync-loading" }, "Asking " + conn.site_url + " for its tables…"));
    const doc = await api("GET", "connections/" + uuid + "/tables");
    const byName = Object.fromEntries(doc.tables.map((t) => [t.name, t]));
    const strategies = [["skip", "skip"], ["overwrite", "overwrite"], ["merge", "merge"], ["append", "append"]];
    const note = h("p", { id: "parents-note", "aria-live": "polite", class: "muted" });
    const rows = doc.tables.map((t) => {
      const box = h("input", { type: "checkbox", name: "table", value: t.name, id: "pick-" + t.name });
      box.addEventListener("change", () => { if (box.checked) addParents(t.name); });
      const loc = t.local;
      return h("tr", { "data-table": t.name },
        h("td", { "data-label": "Pull" }, box),
        h("td", { "data-label": "Table" }, h("label.inline", { for: "pick-" + t.name }, t.name),
          t.parents.length ? h("div.hint", {}, "needs " + t.parents.join(", ")) : null),
        h("td.num", { "data-label": "Their rows" }, num(t.remote.row_count)),
        h("td.num", { "data-label": "Their size" }, bytes(t.remote.size_bytes)),
        h("td.num", { "data-label": "Our rows" }, loc ? num(loc.row_count) : "–"),
        h("td", { "data-label": "State" }, badge(t.state === "missing" ? "missing locally" : t.state)),
        h("td", { "data-label": "Strategy" }, (() => {
          const s = select("strategy-" + t.name, strategies, doc.default_strategy || "skip");
          s.setAttribute("aria-label", "Strategy for " + t.name);
          s.id = "strategy-" + t.name;
          return s;
        })()));
    });
    // parents, grandparents...: a child's rows need them (foreign keys)
    function ancestors(name, seen) {
      for (const p of (byName[name] && byName[name].parents) || []) {
        if (!seen.has(p) && byName[p]) { seen.add(p); ancestors(p, seen); }
      }
      return seen;
    }
    function addParents(name) {
      const added = [];
      for (const p of ancestors(name, new Set())) {
        const pbox = document.getElementById("pick-" + p);
        if (pbox && !pbox.checked) { pbox.checked = true; added.push(p); }
      }
      if (added.length) note.textContent = "Added " + added.join(", ") + ": " + name + " refers to them.";
    }
    const chosen = () => [...page.querySelectorAll("input[name=table]:checked")].map((b) => b.value);
    const start = (dryRun) => async () => {
      const tables = chosen();
      if (!tables.length) { notice("Choose at least one table.", "error"); return; }
      const strat = {};
      for (const t of tables) strat[t] = document.getElementById("strategy-" + t).value;
      const res = await guarded(() => api("POST", "connections/" + uuid + "/sync",
        { tables, strategies: strat, dry_run: dryRun }));
      if (res) { notice(""); watchJob(res.job.uuid, byName, dryRun); }
    };
    setPage("Sync: " + conn.name,
      h("p.muted", {}, "Tables of " + conn.site_url + " beside ours. Choosing a table adds the tables it refers to."),
      h("div.table-wrap", {}, h("table.stack", { id: "sync-tables" },
        h("thead", {}, h("tr", {}, ["Pull", "Table", "Their rows", "Their size", "Our rows", "State", "Strategy"]
          .map((x, i) => h(i >= 2 && i <= 4 ? "th.num" : "th", {}, x)))),
        h("tbody", {}, rows))),
      note,
      h("div.buttons", {}, h("button", { type: "button", id: "dry-run", onclick: start(true) }, "Dry run"),
        h("button.primary", { type: "button", id: "run-sync", onclick: start(false) }, "Run sync")),
      h("div", { id: "job" }));
  }

  function stopPolling() { if (state.poll) { clearTimeout(state.poll); state.poll = null; } }

  function watchJob(uuid, byName, dryRun) {
    stopPolling();
    const box = $("#job");
    const tick = async () => {
      const doc = await guarded(() => api("GET", "jobs/" + uuid));
      if (!doc || !document.body.contains(box)) return;
      renderJob(box, doc.job, byName, dryRun);
      if (doc.job.status === "queued" || doc.job.status === "running") state.poll = setTimeout(tick, 400);
      else if (doc.job.status === "done" && !dryRun) refreshStates(uuidOf(doc.job));
    };
    tick();
  }

  function uuidOf(job) { return job.connection_uuid; }

  /** After a sync, the tables' states again (unchanged now, most likely). */
  async function refreshStates(connUuid) {
    const doc = await guarded(() => api("GET", "connections/" + connUuid + "/tables"));
    if (!doc) return;
    for (const t of doc.tables) {
      const row = page.querySelector('#sync-tables tr[data-table="' + t.name + '"]');
      if (!row) continue;
      row.querySelector(".status").replaceWith(badge(t.state === "missing" ? "missing locally" : t.state));
      row.querySelector('td[data-label="Our rows"]').textContent = t.local ? num(t.local.row_count) : "–";
    }
  }

  function renderJob(box, job, byName, dryRun) {
    const rows = job.params.tables.map((name) => {
      const p = job.progress[name] || { rows: 0 };
      const total = p.row_count || (byName[name] && byName[name].remote.row_count) || 0;
      const rate = p.seconds > 0 ? p.rows / p.seconds : 0;
      const eta = p.done ? "done" : rate > 0 && total > p.rows ? Math.ceil((total - p.rows) / rate) + " s" : "–";
      const pct = p.done ? 100 : total ? Math.min(100, Math.floor(100 * p.rows / total)) : 0;
      return h("tr", { "data-table": name, "data-done": p.done ? "true" : "false" },
        h("td", { "data-label": "Table" }, name),
        h("td", { "data-label": "Progress" }, h("progress", { max: 100, value: pct, "aria-label": name + " progress" }),
          " " + pct + "%"),
        h("td.num", { "data-label": "Rows" }, num(p.rows) + (total ? " / " + num(total) : "")),
        h("td.num", { "data-label": "Rows/s" }, rate ? num(Math.round(rate)) : "–"),
        h("td.num", { "data-label": "ETA" }, eta));
    });
    const parts = [h("h3", {}, (dryRun ? "Dry run " : "Sync ") + "– ", badge(job.status)),
      h("div.table-wrap", {}, h("table.stack", { id: "progress" },
        h("thead", {}, h("tr", {}, ["Table", "Progress", "Rows", "Rows/s", "ETA"].map((x, i) => h(i >= 2 ? "th.num" : "th", {}, x)))),
        h("tbody", {}, rows)))];
    if (job.status === "failed") parts.push(h("p.card.answer.error", { id: "job-error" }, "The sync failed: " + job.error));
    if (job.report) parts.push(reportView(job.report));
    box.replaceChildren(...parts);
  }

  function reportView(r) {
    const cols = ["transferred", "imported", "updated", "unchanged", "skipped", "failed"];
    return h("section.card", { id: "report", role: "region", "aria-label": "Report" },
      h("h3", {}, r.dry_run ? "What the sync would do (nothing was written)" : "Report"),
      h("div.table-wrap", {}, h("table.stack", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Table"), h("th", {}, "Result"), h("th", {}, "Strategy"),
          cols.map((c) => h("th.num", {}, c)), h("th.num", {}, "Seconds"))),
        h("tbody", {}, r.tables.map((t) => h("tr", {},
          h("td", { "data-label": "Table" }, t.name),
          h("td", { "data-label": "Result" }, badge(t.action), t.message ? h("div.hint", {}, t.message) : null),
          h("td", { "data-label": "Strategy" }, t.strategy || "–"),
          cols.map((c) => h("td.num", { "data-label": c }, num(t[c] || 0))),
          h("td.num", { "data-label": "Seconds" }, t.seconds !== undefined ? Number(t.seconds).toFixed(2) : "–"))),
        h("tr", {}, h("td", {}, h("strong", {}, "Total")), h("td", {}), h("td", {}),
          cols.map((c) => h("td.num", { "data-label": c }, h("strong", {}, num(r.totals[c] || 0)))),
          h("td.num", {}, Number(r.seconds || 0).toFixed(2)))))));
  }

  // ---- history -------------------------------------------------------------

  const hist = { direction: "", status: "", connection: "", page: 1 };

  async function historyPage() {
    const q = new URLSearchParams({ page: hist.page });
    for (const k of ["direction", "status", "connection"]) if (hist[k]) q.set(k, hist[k]);
    const [doc, conns] = await Promise.all([api("GET", "transfers?" + q), api("GET", "connections")]);
    const names = Object.fromEntries(conns.connections.map((c) => [c.uuid, c.name]));
    const dir = select("direction", [["", "both"], ["receive", "received"], ["send", "sent"]], hist.direction);
    const st = select("status", [["", "any status"], ["completed", "completed"], ["failed", "failed"],
      ["in_progress", "in progress"], ["pending", "pending"], ["cancelled", "cancelled"]], hist.status);
    const cn = select("connection", [["", "any connection"], ...conns.connections.map((c) => [c.uuid, c.name])],
      hist.connection);
    for (const s of [dir, st, cn]) {
      s.addEventListener("change", () => {
        hist.direction = dir.value; hist.status = st.value; hist.connection = cn.value; hist.page = 1;
        guarded(historyPage);
      });
    }
    const rows = doc.transfers.map((t) => h("tr", { "data-uuid": t.uuid },
      h("td", { "data-label": "When" }, when(t.started_at || t.inserted_at)),
      h("td", { "data-label": "Table" }, h("a", { href: "#/transfer/" + t.uuid }, t.table_name)),
      h("td", { "data-label": "Direction" }, t.direction === "receive" ? "received" : "sent"),
      h("td", { "data-label": "Connection" }, names[t.connection_uuid] || t.remote_site_url || "–"),
      h("td", { "data-label": "Status" }, badge(t.status)),
      h("td.num", { "data-label": "Rows" }, num(t.records_transferred)),
      h("td.num", { "data-label": "Failed" }, num(t.records_failed))));
    const go = (delta) => () => { hist.page += delta; guarded(historyPage); };
    setPage("History",
      h("div.filters", {}, field("hist-direction", "Direction", dir), field("hist-status", "Status", st),
        field("hist-connection", "Connection", cn)),
      h("div.table-wrap", {}, h("table.stack", { id: "transfers" },
        h("thead", {}, h("tr", {}, ["When", "Table", "Direction", "Connection", "Status", "Rows", "Failed"]
          .map((x, i) => h(i >= 5 ? "th.num" : "th", {}, x)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, "No transfers."))))),
      h("div.buttons", {}, h("button", { type: "button", id: "prev-page", disabled: doc.page <= 1, onclick: go(-1) }, "Previous"),
        h("span", { id: "page-number" }, "Page " + doc.page),
        h("button", { type: "button", id: "next-page", disabled: !doc.has_more, onclick: go(1) }, "Next")));
  }

  // ---- schedule --------------------------------------------------------------

  async function schedulePage() {
    const doc = await api("GET", "schedule");
    const rows = doc.connections.map((c) => h("tr", { "data-uuid": c.uuid },
      h("td", { "data-label": "Connection" }, c.name),
      h("td", { "data-label": "Auto-sync" }, c.auto_sync_enabled ? "every " + c.auto_sync_interval_minutes + " min" : "off"),
      h("td", { "data-label": "Next due" }, c.next_due_at ? (c.due ? "now" : when(c.next_due_at)) : "–"),
      h("td", { "data-label": "Last result" }, c.last_auto_sync_status
        ? [badge(c.last_auto_sync_status), " ", when(c.last_auto_sync_at)] : "never run"),
      h("td.num", { "data-label": "Failures" }, num(c.auto_sync_failures || 0)),
      h("td.num", { "data-label": "Rows pulled" }, num(c.rows_pulled || 0)),
      h("td", { "data-label": "Error" }, c.last_auto_sync_error || "")));
    setPage("Schedule",
      h("p", {}, "Receiver connections with auto-sync run by themselves (pksync sync --due from cron, or " +
        "pksync.nginx.schedule in nginx)."),
      h("div.table-wrap", {}, h("table.stack", { id: "schedule" },
        h("thead", {}, h("tr", {}, ["Connection", "Auto-sync", "Next due", "Last result", "Failures", "Rows pulled", "Error"]
          .map((x, i) => h(i === 4 || i === 5 ? "th.num" : "th", {}, x)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, "No receiver connections."))))));
  }

  async function transferPage(uuid) {
    const doc = await api("GET", "transfers/" + uuid);
    const t = doc.transfer;
    const m = t.metadata || {};
    const facts = [["Table", t.table_name], ["Direction", t.direction === "receive" ? "received" : "sent"],
      ["Other site", t.remote_site_url], ["Status", t.status], ["Strategy", t.conflict_strategy],
      ["Started", when(t.started_at)], ["Completed", when(t.completed_at)],
      ["Rows transferred", num(t.records_transferred)], ["Created", num(t.records_created)],
      ["Updated", num(t.records_updated)], ["Skipped or unchanged", num(t.records_skipped)],
      ["Failed", num(t.records_failed)], ["Bytes", bytes(t.bytes_transferred)], ["Path", m.path],
      ["Pages", m.pages], ["Requester", t.requester_ip]];
    setPage("Transfer of " + t.table_name,
      h("p", {}, h("a", { href: "#/history" }, "← Back to the history")),
      h("section.card", {}, h("dl.facts", { id: "transfer-facts" },
        facts.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))),
      t.error_message ? h("section.card.answer.error", {}, h("h3", {}, "Error"), h("p", {}, t.error_message)) : null,
      m.error_sample ? h("section.card", {}, h("h3", {}, "Sample of the failed rows"),
        h("pre.sample", {}, typeof m.error_sample === "string" ? m.error_sample : JSON.stringify(m.error_sample, null, 2))) : null);
  }

  // ---- routing -------------------------------------------------------------

  const ROUTES = [
    [/^#\/overview$/, overviewPage, "overview"],
    [/^#\/connections$/, connectionsPage, "connections"],
    [/^#\/sync\/([0-9a-f-]+)$/, syncPage, "connections"],
    [/^#\/schedule$/, schedulePage, "schedule"],
    [/^#\/history$/, historyPage, "history"],
    [/^#\/transfer\/([0-9a-f-]+)$/, transferPage, "history"],
  ];

  async function route() {
    if (!state.csrf) return;
    stopPolling();
    notice("");
    const hash = location.hash || "#/overview";
    const r = ROUTES.find(([re]) => re.test(hash)) || ROUTES[0];
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.page === r[2]) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const m = hash.match(r[0]);
    await guarded(() => r[1](m && m[1]));
  }

  window.addEventListener("hashchange", route);

  (async function start() {
    try {
      const doc = await api("GET", "session");
      state.csrf = doc.csrf;
      $("#nav").hidden = false;
      $("#login").hidden = true;
      route();
    } catch (e) {
      if (e.status !== 401) notice(e.message, "error");
    }
  })();
})();
