// tunnelacct web UI: the one script. Everything but the live refresh works without it.
"use strict";
(function () {
  document.documentElement.classList.add("js");

  // Row disclosures: a button per row shows or hides the row's details below it.
  function wireDisclosures(root) {
    root.querySelectorAll("button.disclose").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var open = button.getAttribute("aria-expanded") === "true";
        var panel = document.getElementById(button.getAttribute("aria-controls"));
        button.setAttribute("aria-expanded", open ? "false" : "true");
        if (panel) panel.hidden = open;
      });
    });
  }

  // Live: with status:ongoing the results are fetched again every 5 s while the tab is visible.
  function startLive(results) {
    var url = results.getAttribute("data-live-url");
    var status = document.getElementById("live-status");
    var timer = null;
    var stopped = false;
    var lastCount = null;
    function countOf(root) {
      var marked = root.querySelector("[data-count]");
      return marked ? marked.getAttribute("data-count") : "";
    }
    function refresh() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected) {  // to the sign-in page: the login ended
            pause();
            stopped = true;
            if (status) status.textContent = "Live refresh stopped: signed out. Reload to sign in.";
            return null;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          results.replaceChildren.apply(results, Array.from(doc.body.childNodes));
          wireDisclosures(results);
          var count = countOf(results);
          if (count !== lastCount && status) {
            status.textContent = (count || "0") + " ongoing sessions";
          }
          lastCount = count;
        })
        .catch(function () {
          if (status) status.textContent = "Live refresh failed; retrying.";
        });
    }
    function schedule() {
      if (timer === null && !stopped && !document.hidden) timer = setInterval(refresh, 5000);
    }
    function pause() {
      if (timer !== null) { clearInterval(timer); timer = null; }
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { pause(); } else if (!stopped) { refresh(); schedule(); }
    });
    lastCount = countOf(results);
    schedule();
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireDisclosures(document);
    var results = document.getElementById("results");
    if (results && results.hasAttribute("data-live-url")) startLive(results);
  });
})();
