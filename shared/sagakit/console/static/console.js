// sagakit console: live refresh of the saga list, and a confirmation before destructive
// actions. No framework, no network but the console's own origin.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.classList && form.classList.contains("confirm")) {
      if (!window.confirm(form.getAttribute("data-confirm") || "Sure?")) {
        event.preventDefault();
      }
    }
  });
  var results = document.getElementById("results");
  var live = document.getElementById("live");
  if (!results || !live) {
    return;
  }
  var base = results.getAttribute("data-refresh");
  function refresh() {
    if (!live.checked || document.hidden || base.indexOf("after=") !== -1) {
      return;
    }
    var url = base + (base.indexOf("?") === -1 ? "?" : "&") + "partial=1";
    fetch(url, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) { if (html !== null) { results.innerHTML = html; } })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, 3000);
})();
