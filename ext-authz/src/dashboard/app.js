// arbiter audit dashboard: a little behaviour on a server-rendered page.
// - changing the decision filter submits the form;
// - a click anywhere on an event row opens the event;
// - on a live log, "refresh every 5 s" reloads the page (remembered in this tab).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Visible to tests: the page's own script ran under its Content-Security-Policy.
  document.documentElement.setAttribute("data-js", "on");
  var decision = document.getElementById("decision");
  if (decision) {
    decision.addEventListener("change", function () {
      document.getElementById("filter").submit();
    });
  }
  document.querySelectorAll("tr[data-href]").forEach(function (row) {
    row.addEventListener("click", function (e) {
      if (e.target.tagName !== "A") {
        window.location.href = row.getAttribute("data-href");
      }
    });
  });
  var auto = document.getElementById("autorefresh");
  if (auto) {
    auto.checked = sessionStorage.getItem("arbiter-autorefresh") === "1";
    var timer = null;
    var arm = function () {
      if (timer) { clearTimeout(timer); timer = null; }
      if (auto.checked) { timer = setTimeout(function () { window.location.reload(); }, 5000); }
    };
    auto.addEventListener("change", function () {
      sessionStorage.setItem("arbiter-autorefresh", auto.checked ? "1" : "0");
      arm();
    });
    arm();
  }
});
