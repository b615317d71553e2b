// Reload the cache-statistics page every data-refresh seconds, unless the operator
// is typing into one of its forms (a reload would lose what was typed).
(function () {
  "use strict";
  var root = document.getElementById("cp-stats");
  if (!root) { return; }
  var seconds = parseInt(root.getAttribute("data-refresh"), 10);
  if (!(seconds > 0)) { return; }
  var busy = false;
  root.addEventListener("input", function () { busy = true; });
  root.addEventListener("focusin", function (e) {
    if (e.target.matches("input[type=text], textarea, select")) { busy = true; }
  });
  var left = seconds;
  var shown = document.getElementById("cp-refresh-left");
  window.setInterval(function () {
    if (busy) {
      if (shown) { shown.textContent = "paused while you type"; }
      return;
    }
    left -= 1;
    if (shown) { shown.textContent = "in " + left + " s"; }
    if (left <= 0) { window.location.reload(); }
  }, 1000);
})();
