// The manager's dashboard: draws the charts from the numbers the page embedded
// (<script type="application/json" id="dashboard-data">), the same as /api/v1/metrics/summary/.
(function () {
  "use strict";
  const source = document.getElementById("dashboard-data");
  if (!source || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  const colours = {approved: ["#067647", "#32d583", "#a6f4c5", "#d1fadf"],
    rejected: ["#b42318", "#f97066", "#fecdca", "#fee4e2"], cancelled: ["#667085"],
    changes_requested: ["#b54708"], pending: ["#3538cd"]};
  const used = {};
  function colour(status) {
    const list = colours[status] || ["#98a2b3"];
    used[status] = (used[status] || 0) + 1;
    return list[(used[status] - 1) % list.length];
  }
  const fmt = data.volumes.bucket === "hour"
    ? function (iso) { return iso.slice(5, 13).replace("T", " ") + "h"; }
    : function (iso) { return iso.slice(0, 10); };
  const volumes = document.getElementById("volumes-chart");
  window.NO_CHARTS = [];
  window.NO_CHARTS.push(new window.Chart(volumes, {
    type: "bar",
    data: {labels: data.volumes.labels.map(fmt), datasets: data.volumes.series.map(function (s) {
      return {label: s.name, data: s.values, backgroundColor: colour(s.status), stack: "all"};
    })},
    options: {animation: false, maintainAspectRatio: false, responsive: true,
      scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}}},
  }));
  document.querySelectorAll("canvas.calibration-chart").forEach(function (canvas) {
    const item = data.calibration[Number(canvas.dataset.index)];
    const mids = item.labels.map(function (l) { return Number(l) + 0.05; });
    window.NO_CHARTS.push(new window.Chart(canvas, {
      type: "line",
      data: {labels: item.labels, datasets: [
        {label: "human approval rate", data: item.rates, borderColor: "#3538cd", backgroundColor: "#3538cd", spanGaps: true},
        {label: "perfect calibration", data: mids, borderColor: "#98a2b3", borderDash: [4, 4], pointRadius: 0},
      ]},
      options: {animation: false, maintainAspectRatio: false,
        scales: {y: {min: 0, max: 1}, x: {title: {display: true, text: "AI confidence (bucket start)"}}}},
    }));
  });
})();
