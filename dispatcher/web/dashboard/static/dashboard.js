// Live progress bars: every 2 seconds, ask the dashboard for the numbers of the campaigns on
// the page that are still moving, and redraw their bars and status badges. The cookie carries
// the key; a 401 means it is gone, so reloading shows the login form.
(function () {
  "use strict";

  var INTERVAL_MS = 2000;
  var container = document.querySelector("[data-poll]");
  if (!container) return;
  var endpoint = container.getAttribute("data-poll");

  function format(n) {
    return Number(n).toLocaleString("vi-VN");
  }

  function moving() {
    var ids = [];
    container.querySelectorAll("[data-campaign-id]:not([data-settled])").forEach(function (el) {
      ids.push(el.getAttribute("data-campaign-id"));
    });
    return ids;
  }

  function setText(root, field, value) {
    root.querySelectorAll('[data-field="' + field + '"]').forEach(function (el) {
      el.textContent = value;
    });
  }

  function draw(item) {
    var root = container.querySelector('[data-campaign-id="' + item.id + '"]');
    if (!root) return;
    // A transactional stream has counts but no percent (item.percent is null): it never ends.
    if (item.percent !== null) setText(root, "percent", item.percent + "%");
    setText(root, "sent", format(item.sent));
    setText(root, "failed", format(item.failed));
    setText(root, "pending", format(item.pending));
    setText(root, "planned", format(item.planned));
    ["sent", "failed", "other"].forEach(function (name) {
      var seg = root.querySelector('[data-seg="' + name + '"]');
      if (seg) seg.style.width = item.shares[name] + "%";
    });
    var bar = root.querySelector('[role="progressbar"]');
    if (bar && item.percent !== null) {
      bar.setAttribute("aria-valuenow", String(item.percent));
      bar.setAttribute(
        "aria-valuetext",
        item.percent + "%: " + format(item.sent) + " đã gửi, " + format(item.failed) +
          " thất bại, " + format(item.pending) + " đang chờ trên " + format(item.planned) + " tin"
      );
    }
    var badge = root.querySelector('[data-field="status"] .badge');
    if (badge && badge.getAttribute("data-status") !== item.status) {
      badge.className =
        "badge status-" + (item.stream && item.status === "running" ? "stream" : item.status);
      badge.setAttribute("data-status", item.status);
      badge.textContent = item.status_label;
    }
    if (item.settled) root.setAttribute("data-settled", "");
  }

  function poll() {
    var ids = moving();
    if (ids.length === 0) return; // nothing on the page can change any more
    if (document.hidden) {
      window.setTimeout(poll, INTERVAL_MS);
      return;
    }
    fetch(endpoint + "?ids=" + ids.join(","), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (body) body.campaigns.forEach(draw);
      })
      .catch(function () {
        // The server is briefly unreachable: keep the last numbers and try again.
      })
      .then(function () {
        window.setTimeout(poll, INTERVAL_MS);
      });
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
