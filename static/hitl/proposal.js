// The proposal page: keys for the decision form, a note when the proposal changes under
// the reviewer (never a reload that would lose a half-written comment), the feature chart.
(function () {
  "use strict";
  const root = document.getElementById("proposal");
  const form = document.getElementById("vote-form");
  let pending = null;

  if (form) {
    form.addEventListener("submit", function () { leaving = true; });
    form.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && pending) {
        event.preventDefault();
        pending.click();
      }
    });
  }

  function choose(decision) {
    if (!form) return;
    const button = form.querySelector("button[value=" + decision + "]");
    form.querySelectorAll("button[name=decision]").forEach(function (b) { b.classList.remove("armed"); });
    button.classList.add("armed");
    pending = button;
    const comment = form.querySelector("textarea[name=comment]");
    comment.focus();
    comment.setAttribute("placeholder", button.textContent.replace(/\s+\S$/, "").trim() + ": Ctrl+Enter confirms");
  }

  document.addEventListener("keydown", function (event) {
    if (window.NO.typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const keys = {a: "approve", r: "reject", c: "request_changes"};
    if (keys[event.key] && form) { event.preventDefault(); choose(keys[event.key]); }
    else if (event.key === "e") {
      const edit = document.getElementById("edit-link");
      if (edit) { event.preventDefault(); location.href = edit.href; }
    } else if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      location.href = "/queue/";
    }
  });

  // Live: tell the reviewer when this proposal changed (decided elsewhere, revised).
  let leaving = false;
  const statusEvents = ["proposal.approved", "proposal.rejected", "proposal.cancelled",
    "proposal.revoked", "proposal.changes_requested", "proposal.revised", "proposal.edited"];
  // After a reconnect the socket's first message (a snapshot of the proposal as it is now)
  // catches up on whatever was missed meanwhile; we compare it like any event.
  let delay = 1000;
  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/proposals/" + root.dataset.proposal + "/");
    ws.onopen = function () { delay = 1000; };
    ws.onmessage = function (e) {
      const m = JSON.parse(e.data);
      if (leaving || !(m.type === "snapshot" || statusEvents.includes(m.type))) return;
      if (m.status !== root.dataset.status || String(m.revision) !== root.dataset.revision) {
        document.getElementById("live-note").hidden = false;
      }
    };
    ws.onclose = function (e) {
      if (leaving || e.code === 4401 || e.code === 4403 || e.code === 4404) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();

  // Feature importances as horizontal bars.
  const data = document.getElementById("features-data");
  const canvas = document.getElementById("features-chart");
  if (data && canvas && window.Chart) {
    const d = JSON.parse(data.textContent);
    canvas.parentElement.classList.add("rows-" + Math.min(d.labels.length, 20));
    new window.Chart(canvas, {
      type: "bar",
      data: {labels: d.labels, datasets: [{label: "importance", data: d.values,
        backgroundColor: d.values.map(function (v) { return v < 0 ? "#b42318" : "#3538cd"; })}]},
      options: {indexAxis: "y", maintainAspectRatio: false, animation: false,
        plugins: {legend: {display: false}}},
    });
  }
})();
