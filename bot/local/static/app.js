// LLM4Sweat local console: three views on the same service. Plain JS, no build step,
// nothing loaded from elsewhere. Every text from the server is set with textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const VIEWS = ["patient", "reviewer", "moderator"];
  let current = "patient";
  let me = { signed_in: false }; // who is signed in (GET /api/me); the server checks every request anyway

  // ------------------------------------------------------------------ helpers

  async function api(method, path, body) {
    const options = { method, headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      return { ok: false, status: 0, data: { error: "The console server cannot be reached. Is llm4sweat still running?" } };
    }
    let data = {};
    try {
      data = await response.json();
    } catch (e) {
      data = { error: `Unexpected answer from the server (HTTP ${response.status}).` };
    }
    return { ok: response.ok, status: response.status, data };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "testid") node.dataset.testid = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Text with its web addresses as links (https only, opened in a new tab); everything else
  // stays text (textContent), so nothing from the server is ever parsed as HTML.
  const URL_RE = /https?:\/\/[^\s<>"')\]]+[^\s<>"')\].,;:!?]/g;
  function linked(text) {
    const frag = document.createDocumentFragment();
    let last = 0;
    for (const match of String(text || "").matchAll(URL_RE)) {
      frag.append(document.createTextNode(text.slice(last, match.index)));
      frag.append(el("a", { href: match[0], target: "_blank", rel: "noopener noreferrer", text: match[0] }));
      last = match.index + match[0].length;
    }
    frag.append(document.createTextNode(String(text || "").slice(last)));
    return frag;
  }

  // A report's tables (bot/reports.py) as HTML tables: never ASCII grids in prose.
  function reportNode(report) {
    if (!report || !report.tables || !report.tables.length) return null;
    return el("div", { class: "report", testid: "report" },
      ...report.tables.map((t) => el("table", { class: "report-table", testid: "report-table" },
        el("caption", { text: t.title }),
        el("thead", {}, el("tr", {}, ...t.columns.map((c) => el("th", { scope: "col", text: c })))),
        el("tbody", {}, ...t.rows.map((r) => el("tr", {},
          el("th", { scope: "row", text: r[0] }), ...r.slice(1).map((c) => el("td", { text: c }))))))));
  }

  function setStatus(node, text, isError) {
    node.textContent = text || "";
    node.classList.toggle("error", Boolean(isError));
  }

  function can(role) {
    return Boolean(me.signed_in && me.roles && me.roles.includes(role));
  }

  const SIGN_IN_TEXT = "Your sign-in has ended. Sign in again (Staff sign-in, top right).";

  // ------------------------------------------------------------------ sign-in state

  async function refreshMe() {
    const result = await api("GET", "/api/me");
    me = result.ok ? result.data : { signed_in: false };
    $("who-text").textContent = me.signed_in ? `Signed in as ${me.name} (${me.role})` : "";
    $("sign-in").hidden = me.signed_in;
    $("sign-out").hidden = !me.signed_in;
    $("reviewer-signin").hidden = can("reviewer");
    $("moderator-signin").hidden = can("moderator");
    $("charts").hidden = !can("moderator");
    if (!can("moderator")) $("job-progress").hidden = true;
    connectEvents();
  }

  $("sign-out").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    await refreshMe();
    show(current);
  });

  // In the reader's own time zone and language: the time today, the date and time before today.
  function timeOf(seconds) {
    if (!seconds) return "";
    const when = new Date(seconds * 1000);
    if (when.toDateString() === new Date().toDateString()) {
      return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  // ------------------------------------------------------------------ views / routing

  function show(view) {
    if (!VIEWS.includes(view)) view = "patient";
    current = view;
    for (const name of VIEWS) $("view-" + name).hidden = name !== view;
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (view === "patient") refreshThread();
    if (view === "reviewer") refreshQueue();
    if (view === "moderator") { refreshAlerts(); refreshCharts(); }
  }

  // A crisis alert links to #case-N: the case is in the reviewer view.
  const route = (hash) => (hash.startsWith("case-") ? "reviewer" : hash);
  window.addEventListener("hashchange", () => show(route(location.hash.slice(1))));

  // ------------------------------------------------------------------ patient

  const patientText = $("patient-text");
  const patientStatus = $("patient-status");
  const thread = $("thread");
  let lastThread = "";
  let sending = 0;

  // dir="auto": each text is laid out in its own direction (Arabic right to left, English left to right).
  function renderEntry(entry) {
    if (entry.type === "message") {
      return el("div", { class: "message", testid: "patient-message", "data-status": entry.status },
        el("span", { class: "text", dir: "auto", text: entry.text }),
        el("span", { class: "meta", text: [timeOf(entry.at), entry.status_text].filter(Boolean).join(" · ") }));
    }
    if (entry.type === "notice") {
      const node = el("li", { class: "notice " + entry.kind, testid: "notice", "data-kind": entry.kind, dir: "auto" },
        entry.label ? el("span", { class: "label", testid: "notice-label", text: entry.label }) : null,
        linked(entry.text));
      if (entry.kind === "consent") node.append(consentChoice());
      return node;
    }
    const reviewed = entry.kind === "reviewed";
    return el("li", { class: "reply " + entry.kind.replace("_", "-") + (reviewed ? " reviewed" : ""),
                      testid: "reply", "data-kind": entry.kind, "data-state": entry.state || "",
                      "data-message-id": String(entry.message_id || "") },
      entry.label ? el("span", { class: "label", testid: "reply-label", text: entry.label }) : null,
      el("span", { class: "text", testid: "reply-text", dir: "auto" }, linked(entry.text)),
      entry.disclaimer ? el("span", { class: "disclaimer", testid: "reply-disclaimer", dir: "auto",
                                      text: entry.disclaimer }) : null);
  }

  // Each question with what answered it underneath (its reply, and notices sent for it).
  function exchanges(entries) {
    const out = [];
    let current = null;
    for (const entry of entries) {
      if (entry.type === "message") {
        const answers = el("ol", { class: "answers", testid: "answers", "aria-label": "Answers" });
        current = el("li", { class: "exchange", testid: "exchange", "data-message-id": String(entry.id) },
          renderEntry(entry), answers);
        current.answers = answers;
        out.push(current);
      } else if (current && (entry.type === "notice" || entry.message_id === Number(current.dataset.messageId))) {
        current.answers.append(renderEntry(entry));
      } else {
        out.push(el("li", { class: "exchange" }, el("ol", { class: "answers" }, renderEntry(entry))));
      }
    }
    return out;
  }

  // The answer to the consent question: two buttons until it is given, then what was chosen
  // and a button to change it (the server records it for this browser's own id).
  let consentState = "not_asked";

  function consentChoice() {
    const box = el("div", { class: "consent-choice", testid: "consent-choice", "data-consent": consentState });
    const choose = async (choice) => {
      const result = await api("POST", "/api/patient/consent", { choice });
      setStatus(patientStatus, result.ok ? result.data.text : result.data.error, !result.ok);
      lastThread = null;
      refreshThread();
    };
    const agree = el("button", { type: "button", testid: "consent-agree", text: "I agree" });
    const decline = el("button", { type: "button", class: "secondary", testid: "consent-decline", text: "No, not for training" });
    agree.addEventListener("click", () => choose("agree"));
    decline.addEventListener("click", () => choose("decline"));
    if (consentState === "agreed") box.append(el("span", { text: "You agreed to training use. " }), decline);
    else if (consentState === "declined") box.append(el("span", { text: "Not used for training. " }), agree);
    else box.append(agree, decline);
    return box;
  }

  async function refreshThread() {
    const result = await api("GET", "/api/patient/conversation");
    if (!result.ok) return;
    consentState = result.data.consent || "not_asked";
    const key = JSON.stringify([result.data.entries, consentState]);
    if (key === lastThread) return;
    lastThread = key;
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    thread.replaceChildren(...exchanges(result.data.entries));
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  const sendButton = $("patient-send");
  $("patient-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    // One message at a time: a second click (or Ctrl+Enter) while one is on its way is ignored,
    // so it cannot send the emptied box and draw a false "empty message" error.
    if (sending > 0) return;
    const text = patientText.value;
    patientText.value = "";
    sending += 1;
    sendButton.disabled = true;
    sendButton.setAttribute("aria-busy", "true");
    setStatus(patientStatus, "Sent. The assistant is writing an answer…");
    setTimeout(refreshThread, 150);
    const result = await api("POST", "/api/patient/messages", { text });
    sending -= 1;
    sendButton.disabled = false;
    sendButton.removeAttribute("aria-busy");
    if (!result.ok) {
      patientText.value = text;
      setStatus(patientStatus, result.data.error, true);
      return;
    }
    if (result.data.message_id === null && result.data.views.length) {
      // Nothing was added to the thread (empty message, /forget-me …): show the answer here.
      setStatus(patientStatus, result.data.views.map((v) => v.text).join(" "), result.data.status === "empty");
    } else if (sending === 0) {
      setStatus(patientStatus, "");
    }
    refreshThread();
  });

  patientText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("patient-form").requestSubmit();
  });

  $("patient-forget").addEventListener("click", async () => {
    if (!window.confirm("Delete everything you wrote in this browser? This cannot be undone.")) return;
    const result = await api("POST", "/api/patient/forget", {});
    setStatus(patientStatus, result.ok ? result.data.text : result.data.error, !result.ok);
    lastThread = null;
    refreshThread();
  });

  // ------------------------------------------------------------------ reviewer

  const reviewerStatus = $("reviewer-status");
  const queue = $("review-queue");
  const cards = new Map(); // item id -> card element (kept while a reviewer works on it)

  function scoreSelect(itemId, criterion, title) {
    const id = `score-${itemId}-${criterion}`;
    const select = el("select", { id, name: criterion, testid: "rubric-" + criterion },
      el("option", { value: "", text: "–" }),
      ...[1, 2, 3, 4, 5].map((n) => el("option", { value: String(n), text: String(n) })));
    return el("label", { for: id }, title, select);
  }

  function renderCard(item) {
    const id = item.item_id;
    const result = el("p", { class: "result", testid: "review-result", role: "status" });
    const editorId = `edit-${id}`;
    const editText = el("textarea", { id: editorId, rows: "5", testid: "edit-text", dir: "auto" });
    editText.value = item.reply_text;
    const editor = el("div", { class: "editor", hidden: true },
      el("label", { for: editorId, text: "Corrected reply" }), editText,
      el("div", { class: "buttons" },
        el("button", { type: "button", testid: "save-edit", "data-action": "edit", text: "Save edit" }),
        el("button", { type: "button", class: "quiet", testid: "cancel-edit", text: "Cancel" })));
    const flags = (item.risk_flags || []).map((f) => el("span", { class: "tag flag", text: f }));
    const card = el("article", { class: "card" + (item.priority === "high" ? " high" : ""), testid: "review-card",
                                 "data-item-id": String(id), "aria-label": `Review item ${id}` },
      el("div", { class: "head" },
        el("span", { class: "tag", text: `#${id}` }),
        el("span", { class: "tag", testid: "review-task", text: `task: ${item.task}` }),
        item.priority === "high" ? el("span", { class: "tag flag", text: "high priority" }) : null,
        ...flags,
        el("span", { text: `adapter: ${item.adapter_version || "base model"} · ${item.model || ""}` })),
      item.hold_reason ? el("p", { class: "hold", testid: "review-hold-reason",
                                   text: `Held from the patient because ${item.hold_reason}` }) : null,
      el("h4", { text: "Patient wrote" }),
      el("p", { class: "quote", testid: "review-patient-text", dir: "auto", text: item.patient_text }),
      el("h4", { text: "AI reply" }),
      el("p", { class: "quote", testid: "review-reply-text", dir: "auto" }, linked(item.reply_text)),
      el("p", { class: "judge", testid: "review-judge", text: item.judge || "", hidden: !item.judge }),
      el("div", { class: "rubric", role: "group", "aria-label": "Rubric scores, 1 to 5" },
        scoreSelect(id, "accuracy", "Accuracy"),
        scoreSelect(id, "appropriateness", "Appropriateness"),
        scoreSelect(id, "empathy", "Empathy")),
      el("div", { class: "buttons" },
        el("button", { type: "button", testid: "approve", "data-action": "approve", text: "Approve" }),
        el("button", { type: "button", class: "quiet", testid: "edit", text: "Edit" }),
        el("button", { type: "button", class: "danger", testid: "reject", "data-action": "reject", text: "Reject" })),
      editor, result);

    card.querySelector('[data-testid="edit"]').addEventListener("click", () => {
      editor.hidden = false;
      editText.focus();
    });
    card.querySelector('[data-testid="cancel-edit"]').addEventListener("click", () => {
      editor.hidden = true;
      editText.value = item.reply_text;
    });
    for (const button of card.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => decide(card, id, button.dataset.action, editText.value, result));
    }
    return card;
  }

  async function decide(card, id, action, text, resultNode) {
    const body = { action };
    if (action === "edit") body.text = text;
    for (const select of card.querySelectorAll("select")) body[select.name] = select.value ? Number(select.value) : null;
    const buttons = card.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    const result = await api("POST", `/api/reviews/${id}/decision`, body);
    if (!result.ok) {
      buttons.forEach((b) => (b.disabled = false));
      setStatus(resultNode, result.status === 401 ? SIGN_IN_TEXT : result.data.error, true);
      if (result.status === 401) refreshMe();
      return;
    }
    setStatus(resultNode, result.data.message);
    if (result.data.state !== "pending" || !result.data.recorded) {
      card.classList.add("done");
      card.dataset.state = result.data.state;
      setTimeout(() => { card.remove(); cards.delete(id); updateEmpty(); }, 4000);
    } else {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  function updateEmpty() {
    $("queue-empty").hidden = cards.size > 0;
  }

  // ------------------------------------------------------------------ crisis cases

  // The outcome of the last action on each case, kept across the refresh that redraws the case
  // (a reply that seemed to vanish without a word would be sent twice).
  const caseOutcome = new Map();
  const CASE_DONE = { take: "You have taken the case over.", reply: "Sent to the patient.", resolve: "Resolved." };

  async function caseAction(id, action, body, status) {
    setStatus(status, "…");
    const result = await api("POST", `/api/cases/${id}/${action}`, body || {});
    setStatus(status, result.ok ? CASE_DONE[action] : result.data.error, !result.ok);
    if (result.ok) {
      caseOutcome.set(id, CASE_DONE[action]);
      refreshCases();
    }
  }

  async function refreshCases() {
    const box = $("cases");
    if (!can("reviewer")) { box.hidden = true; return; }
    const result = await api("GET", "/api/cases");
    if (!result.ok) return;
    const cases = result.data.cases;
    box.hidden = cases.length === 0;
    $("case-list").replaceChildren(...cases.map((c) => {
      const status = el("p", { class: "status", role: "status", testid: `case-status-${c.id}`,
                               text: caseOutcome.get(c.id) || "" });
      const reply = el("textarea", { rows: 2, testid: `case-reply-text-${c.id}`,
        "aria-label": "Your message to the patient (signed with your name, as a person)",
        placeholder: "Your message to the patient (signed with your name, as a person)" });
      const note = el("input", { testid: `case-note-${c.id}`, "aria-label": "Outcome note", maxlength: 2000,
        placeholder: "Outcome note, to resolve" });
      const button = (label, testid, handler) => {
        const b = el("button", { type: "button", testid, text: label });
        b.addEventListener("click", handler);
        return b;
      };
      return el("article", { class: "case", id: `case-${c.id}`, testid: `case-${c.id}` },
        el("pre", { class: "output", text: c.text }),
        c.taken_by ? null : button("Take over", `case-take-${c.id}`, () => caseAction(c.id, "take", {}, status)),
        reply, button("Send to the patient", `case-reply-${c.id}`,
          () => caseAction(c.id, "reply", { text: reply.value }, status)),
        note, button("Resolve", `case-resolve-${c.id}`, () => caseAction(c.id, "resolve", { note: note.value }, status)),
        status);
    }));
  }

  async function refreshQueue() {
    if (!can("reviewer")) {
      for (const card of cards.values()) card.remove();
      cards.clear();
      $("queue-empty").hidden = true;
      return;
    }
    refreshCases();
    const result = await api("GET", "/api/reviews");
    if (!result.ok) {
      setStatus(reviewerStatus, result.status === 401 ? SIGN_IN_TEXT : result.data.error, true);
      if (result.status === 401) refreshMe();
      return;
    }
    setStatus(reviewerStatus, "");
    const items = result.data.items;
    const ids = new Set(items.map((i) => i.item_id));
    for (const [id, card] of cards) {
      if (!ids.has(id) && !card.classList.contains("done")) { card.remove(); cards.delete(id); }
    }
    for (const item of items) {
      if (!cards.has(item.item_id)) cards.set(item.item_id, renderCard(item));
      const judge = cards.get(item.item_id).querySelector('[data-testid="review-judge"]');
      judge.textContent = item.judge || "";
      judge.hidden = !item.judge;  // the judge's first reading arrives after the card
    }
    // Keep the server's order (high priority first), moving only cards that are out of place.
    let previous = null;
    for (const item of items) {
      const card = cards.get(item.item_id);
      const expected = previous ? previous.nextElementSibling : queue.firstElementChild;
      if (card !== expected) queue.insertBefore(card, expected);
      previous = card;
    }
    updateEmpty();
  }

  $("reviews-refresh").addEventListener("click", refreshQueue);

  $("agreement-button").addEventListener("click", async () => {
    const out = $("agreement-output");
    const result = await api("GET", "/api/reviews/agreement");
    out.hidden = false;
    if (!result.ok) { setStatus(out, result.data.error, true); return; }
    const fmt = (v) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(2));
    const pct = (v) => (v === null || v === undefined ? "n/a" : `${Math.round(v * 100)}%`);
    const ci = (r) => (r.ci95 ? ` (95% CI ${fmt(r.ci95[0])} to ${fmt(r.ci95[1])})` : "");
    const { reviewers, judge } = result.data.agreement;
    const lines = ["Reviewers with each other (items with two or more reviewers)"];
    for (const [field, r] of Object.entries(reviewers)) {
      lines.push(`${field.padEnd(16)} n ${String(r.n).padStart(3)}   exact ${pct(r.exact)}   Cohen's κ ${fmt(r.kappa)}${ci(r)}   Fleiss' κ ${fmt(r.fleiss_kappa)}`);
    }
    lines.push("", "The LLM judge with the reviewers (judge vs the reviewers' median score)");
    for (const [field, r] of Object.entries(judge)) {
      lines.push(`${field.padEnd(16)} n ${String(r.n).padStart(3)}   exact ${pct(r.exact)}   weighted κ ${fmt(r.kappa)}${ci(r)}`);
    }
    setStatus(out, lines.join("\n"));
  });

  // ------------------------------------------------------------------ moderator

  const moderatorOutput = $("moderator-output");

  async function runCommand(command) {
    const body = { command };
    if (command === "rollback" || command === "promote") body.argument = $("moderator-argument").value.trim();
    setStatus(moderatorOutput, `Running ${command}…`);
    const buttons = document.querySelectorAll(".commands button");
    buttons.forEach((b) => (b.disabled = true));
    const result = await api("POST", "/api/moderator/command", body);
    buttons.forEach((b) => (b.disabled = false));
    if (!result.ok) {
      setStatus(moderatorOutput, result.status === 401 ? SIGN_IN_TEXT : result.data.error, true);
      if (result.status === 401) refreshMe();
      return;
    }
    setStatus(moderatorOutput, result.data.text, !result.data.ok);
    $("moderator-report").replaceChildren(...[reportNode(result.data.report)].filter(Boolean));
    refreshAlerts();
  }

  for (const button of document.querySelectorAll(".commands button")) {
    button.addEventListener("click", () => runCommand(button.dataset.command));
  }

  async function refreshAlerts() {
    if (!can("moderator")) return;
    const result = await api("GET", "/api/moderator/alerts");
    if (!result.ok) return;
    $("alerts").replaceChildren(...result.data.alerts.map((a) =>
      el("li", { class: a.urgent ? "urgent" : "", testid: "alert", dir: "auto" },
        `${timeOf(a.at)} · `, linked(a.text), reportNode(a.report))));
    $("alerts-empty").hidden = result.data.alerts.length > 0;
    $("incidents").replaceChildren(...result.data.incidents.map((i) =>
      el("li", { testid: "incident" }, `${timeOf(i.created_at)} · ${i.kind}: ${i.detail}`)));
    $("incidents-empty").hidden = result.data.incidents.length > 0;
  }

  // ------------------------------------------------------------------ charts

  const CHARTS = ["evaluation", "versions", "reviews"];
  function refreshCharts() {
    if (!can("moderator")) return;
    $("charts").hidden = false;
    const stamp = Date.now();
    for (const name of CHARTS) $("chart-" + name).src = `/api/moderator/charts/${name}.svg?t=${stamp}`;
  }
  $("charts-refresh").addEventListener("click", refreshCharts);

  // ------------------------------------------------------------------ live updates (Server-Sent Events)

  const jobBox = $("job-progress");
  function showJob(job) {
    const running = job.status === "running" || job.status === "queued";
    const name = job.kind === "retrain" ? "Retraining job" : "Job";
    jobBox.hidden = false;
    jobBox.dataset.status = job.status;
    $("job-title").textContent = `${name} #${job.id}: ${job.status}`;
    const bar = $("job-bar");
    const fraction = typeof job.fraction === "number" ? job.fraction : null;
    if (running && fraction !== null) {
      bar.value = fraction;
      bar.textContent = `${Math.round(fraction * 100)}%`;
      $("job-phase").textContent = `${job.phase || "progress"}: ${Math.round(fraction * 100)}%`;
    } else if (running) {
      bar.removeAttribute("value");  // indeterminate until the job reports how far it is
      $("job-phase").textContent = job.status === "queued" ? "waiting to start" : "working";
    } else {
      bar.value = job.status === "succeeded" ? 1 : 0;
      $("job-phase").textContent = "";
      refreshCharts();  // a finished job may have a new evaluation
    }
    $("job-text").textContent = job.error ? `${job.progress || ""}\nError: ${job.error}` : (job.progress || "");
  }

  let stream = null;
  function connectEvents() {
    const wanted = can("reviewer");
    if (!wanted) {
      if (stream) { stream.close(); stream = null; }
      document.body.dataset.live = "";
      return;
    }
    if (stream) return;
    stream = new EventSource("/api/events");
    stream.addEventListener("open", () => { document.body.dataset.live = "1"; });
    stream.addEventListener("error", () => { document.body.dataset.live = ""; });
    stream.addEventListener("review", () => { if (current === "reviewer") refreshQueue(); });
    stream.addEventListener("alert", () => { if (current === "moderator") refreshAlerts(); });
    stream.addEventListener("job", (event) => showJob(JSON.parse(event.data)));
  }

  // ------------------------------------------------------------------ start

  // Names typed by earlier versions of this page are no longer used by anything.
  for (const key of ["llm4sweat.patient", "llm4sweat.reviewer", "llm4sweat.moderator"]) localStorage.removeItem(key);

  Promise.all([api("GET", "/api/info"), refreshMe()]).then(([result]) => {
    if (result.ok) {
      $("demo-banner").hidden = !result.data.demo;
      if (result.data.title) $("condition-title").textContent = `local console · ${result.data.title}`;
    }
    show(route(location.hash.slice(1)) || "patient");
    document.body.dataset.ready = "1";
  });
  setInterval(() => {
    if (document.hidden) return;
    if (current === "patient") refreshThread();
    else if (current === "reviewer") refreshQueue();
  }, 1000);
  setInterval(() => { if (!document.hidden && current === "moderator") refreshAlerts(); }, 5000);
})();
