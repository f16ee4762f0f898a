// Shared page behaviour: live countdowns, the keyboard help, copy buttons.
// No inline scripts anywhere (strict CSP): pages pass data in data-* attributes or
// <script type="application/json"> blocks, read here.
(function () {
  "use strict";

  function human(seconds) {
    const s = Math.abs(Math.round(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick(root) {
    const now = Date.now();
    (root || document).querySelectorAll("time[data-deadline]").forEach(function (el) {
      const left = (Date.parse(el.dataset.deadline) - now) / 1000;
      el.textContent = left >= 0 ? "in " + human(left) : human(left) + " overdue";
      el.classList.toggle("overdue", left < 0);
      el.classList.toggle("soon", left >= 0 && left < 3600);
    });
    (root || document).querySelectorAll("time[data-since]").forEach(function (el) {
      el.textContent = human((now - Date.parse(el.dataset.since)) / 1000);
    });
  }

  window.NO = {
    tick: tick,
    typing: function (event) {
      const t = event.target;
      return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
    },
    csrf: function () {
      const input = document.querySelector("input[name=csrfmiddlewaretoken]");
      return input ? input.value : "";
    },
    showKeys: function () {
      const dialog = document.getElementById("keys-help");
      if (dialog && !dialog.open) dialog.showModal();
    },
  };

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 15000);
    document.querySelectorAll("[data-show-keys]").forEach(function (b) {
      b.addEventListener("click", window.NO.showKeys);
    });
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        const source = document.querySelector(button.dataset.copy);
        if (!source || !navigator.clipboard) return;
        navigator.clipboard.writeText(source.textContent).then(function () {
          button.textContent = "Copied";
        });
      });
    });
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "?" && !window.NO.typing(event)) {
      event.preventDefault();
      window.NO.showKeys();
    }
  });

  // htmx swaps bring new countdowns.
  document.addEventListener("htmx:afterSwap", function (event) { tick(event.target); });
})();
