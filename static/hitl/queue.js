// The reviewer's desk: live rows over /ws/queue/, keyboard-first decisions, bulk selection.
(function () {
  "use strict";
  const rowsEl = document.getElementById("queue-rows");
  const live = document.getElementById("live");
  const dialog = document.getElementById("decide");
  const form = document.getElementById("decide-form");
  let current = null; // the selected proposal id
  const checked = new Set();

  function rows() { return Array.from(rowsEl.querySelectorAll("tr[data-proposal]")); }

  function select(row, focus) {
    rows().forEach(function (r) { r.classList.remove("selected"); r.removeAttribute("aria-selected"); });
    if (!row) { current = null; return; }
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
    current = row.dataset.proposal;
    if (focus) {
      const link = row.querySelector("a");
      if (link) link.focus({preventScroll: true});
      row.scrollIntoView({block: "nearest"});
    }
  }

  function selected() {
    return current ? rowsEl.querySelector("tr[data-proposal='" + current + "']") : null;
  }

  function move(step) {
    const all = rows();
    if (!all.length) return;
    const index = all.indexOf(selected());
    const next = index < 0 ? 0 : Math.min(Math.max(index + step, 0), all.length - 1);
    select(all[next], true);
  }

  function updateCount() {
    const n = rowsEl.querySelectorAll("input[name=items]:checked").length;
    document.getElementById("bulk-count").textContent = n ? "(" + n + " selected)" : "(none selected)";
  }

  // Replace the rows, keeping the selection and the checked boxes where the items remain.
  let refreshing = null;
  function refresh() {
    if (refreshing) { refreshing.again = true; return; }
    refreshing = {again: false};
    const position = rows().indexOf(selected());
    fetch(rowsEl.dataset.partialUrl, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        rowsEl.innerHTML = html;
        rowsEl.querySelectorAll("input[name=items]").forEach(function (box) {
          box.checked = checked.has(box.value.split("@")[0]);
        });
        const keep = selected();
        if (keep) select(keep, false);
        else if (position >= 0) select(rows()[Math.min(position, rows().length - 1)], false);
        window.NO.tick(rowsEl);
        updateCount();
      })
      .catch(function () {})
      .finally(function () {
        const again = refreshing.again;
        refreshing = null;
        if (again) refresh();
      });
  }

  // Live: the socket says "something changed"; the server re-applies the permission rules
  // when we refetch. Every message carries `seq`; after a reconnect we open with ?after=<the
  // last seq heard> and the server replays what we missed (any replayed event refetches).
  // Without a seq yet, or on "resync" (the server's history no longer reaches back), refetch.
  let delay = 500, timer = null, everConnected = false, socket = null, lastSeq = null;
  function setLive(state) {
    live.textContent = state;
    live.classList.toggle("on", state === "live");
    live.classList.toggle("off", state !== "live");
  }
  function changed() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 50);
  }
  function connect() {
    const after = lastSeq ? "?after=" + encodeURIComponent(lastSeq) : "";
    socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/queue/" + after);
    socket.onopen = function () {
      setLive("live");
      delay = 500;
      if (everConnected && !lastSeq) refresh();
      everConnected = true;
    };
    socket.onmessage = function (e) {
      const msg = JSON.parse(e.data);
      if (msg.type === "hello") {
        if (!lastSeq) lastSeq = msg.seq || null; // a resumed socket keeps its own place
        return;
      }
      if (msg.type === "pong") return;
      if (msg.type === "resumed") { if (msg.seq) lastSeq = msg.seq; return; }
      if (msg.seq) lastSeq = msg.seq;
      changed(); // an event, or "resync"
    };
    socket.onclose = function () {
      setLive("reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
  // Keep idle sockets alive through proxies.
  setInterval(function () {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "ping"}));
  }, 25000);

  // --- deciding from the desk ---------------------------------------------------------------
  const labels = {approve: "Approve", reject: "Reject", request_changes: "Request changes"};
  function openDecide(decision) {
    const row = selected();
    if (!row) return;
    if (row.dataset.hasOptions && decision === "approve") {
      // Approving means picking an option: that happens on the proposal page.
      location.href = row.dataset.url + "#decide-panel";
      return;
    }
    form.action = row.dataset.decideUrl;
    form.elements.decision.value = decision;
    form.elements.revision.value = row.dataset.revision;
    form.elements.comment.value = "";
    document.getElementById("decide-title").textContent = labels[decision];
    document.getElementById("decide-what").textContent = row.dataset.title + " (r" + row.dataset.revision + ", " + row.dataset.checkpoint + ")";
    const needs = (row.dataset.reasonOn || "").split(",").includes(decision);
    document.getElementById("decide-required").textContent = needs ? "(required here)" : "(optional)";
    const error = document.getElementById("decide-error");
    error.hidden = true;
    error.textContent = "";
    document.getElementById("decide-submit").textContent = "Confirm: " + labels[decision].toLowerCase();
    dialog.showModal();
    form.elements.comment.focus();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const row = selected();
    const data = new FormData(form);
    fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: {"Accept": "application/json", "X-CSRFToken": window.NO.csrf()},
    })
      .then(function (r) { return r.json().then(function (body) { return {status: r.status, body: body}; }); })
      .then(function (res) {
        if (!res.body.ok) {
          const error = document.getElementById("decide-error");
          error.hidden = false;
          error.textContent = res.body.message;
          if (res.body.code === "stale_revision" && res.body.url) {
            const link = document.createElement("a");
            link.href = res.body.url;
            link.textContent = " Review the new revision";
            error.appendChild(link);
          }
          return;
        }
        dialog.close();
        showMessage(res.body.message, "success");
        // Advance: the next row takes the selection, the decided one leaves.
        if (row) {
          const all = rows();
          const next = all[all.indexOf(row) + 1] || all[all.indexOf(row) - 1];
          checked.delete(row.dataset.proposal);
          row.remove();
          select(next || null, true);
          if (!rows().length) refresh();
          updateCount();
        }
      })
      .catch(function () {
        const error = document.getElementById("decide-error");
        error.hidden = false;
        error.textContent = "The server could not be reached; nothing was recorded.";
      });
  });
  dialog.querySelector("[data-close]").addEventListener("click", function () { dialog.close(); });
  form.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  function showMessage(text, kind) {
    const box = document.getElementById("messages");
    box.innerHTML = "";
    const list = document.createElement("ul");
    list.className = "messages";
    const item = document.createElement("li");
    item.className = kind;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    item.textContent = text;
    list.appendChild(item);
    box.appendChild(list);
  }

  // --- keyboard ------------------------------------------------------------------------------
  document.addEventListener("keydown", function (event) {
    if (window.NO.typing(event) || event.ctrlKey || event.metaKey || event.altKey || dialog.open) return;
    const row = selected();
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "Enter": if (row) location.href = row.dataset.url; else return; break;
      case "a": openDecide("approve"); break;
      case "r": openDecide("reject"); break;
      case "c": openDecide("request_changes"); break;
      case "e": if (row && !row.dataset.hasOptions) location.href = row.dataset.editUrl; break;
      case "x":
        if (row) {
          const box = row.querySelector("input[name=items]");
          box.checked = !box.checked;
          box.dispatchEvent(new Event("change", {bubbles: true}));
        }
        break;
      default: return;
    }
    event.preventDefault();
  });

  rowsEl.addEventListener("change", function (event) {
    const box = event.target;
    if (box.name !== "items") return;
    const id = box.value.split("@")[0];
    if (box.checked) checked.add(id); else checked.delete(id);
    updateCount();
  });
  rowsEl.addEventListener("click", function (event) {
    const row = event.target.closest("tr[data-proposal]");
    if (row && event.target.tagName !== "A" && event.target.tagName !== "INPUT") select(row, false);
  });
  // After a bulk decision the rows change: refetch (the socket will say so too).
  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt && event.detail.elt.id === "bulk-form") {
      checked.clear();
      refresh();
    }
  });

  select(rows()[0] || null, false);
})();
