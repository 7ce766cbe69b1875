/* Potluck live updates (progressive enhancement: every page works without this).
 *
 * The server sends `change` on /events with the log's arrival counter whenever the
 * log grows (node/web/feed.py). The page's data sits in <div id="live"
 * data-log-id="N">; when the counter differs from N, this re-fetches the same address
 * and swaps that part in with htmx. It waits while someone is typing in a field inside
 * that part, so a live update never eats what they typed.
 *
 * After a form saved something, the flash holds <span id="shared" data-seq="N"
 * data-peers="n">: the stream is then /events?seq=N, whose `shared` events say how many
 * connected peers have that event; the text only ever moves up.
 */
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var announcer = document.getElementById("live-announce");
  if (!document.getElementById("live") || !window.EventSource) {
    return;
  }
  var wanted = null;
  var busy = false;
  var waiting = false;

  function say(key) {
    if (status) {
      status.textContent = status.getAttribute("data-" + key) || "";
      status.className = "live-status " + key;
    }
  }

  function typing() {
    var region = document.getElementById("live");
    var el = document.activeElement;
    return !!(el && region && region.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName));
  }

  function fetchLive(url) {
    if (window.htmx) {
      return window.htmx.ajax("GET", url, {target: "#live", select: "#live", swap: "outerHTML"});
    }
    return fetch(url, {headers: {"HX-Request": "true"}, credentials: "same-origin"})
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var old = document.getElementById("live");
        if (fresh && old) { old.replaceWith(document.adoptNode(fresh)); }
      });
  }

  function liveUrl() {
    var region = document.getElementById("live");
    return (region && region.getAttribute("data-url")) ||
      window.location.pathname + window.location.search;
  }

  function done() {
    busy = false;
    if (announcer && status) {
      announcer.textContent = status.getAttribute("data-updated") || "";
    }
    refresh();
  }

  function refresh() {
    var region = document.getElementById("live");
    if (!region || wanted === null || region.getAttribute("data-log-id") === wanted) {
      return;
    }
    if (busy) {
      return;  // done() looks again when the swap in flight lands
    }
    if (typing()) {
      waiting = true;
      return;
    }
    busy = true;
    fetchLive(liveUrl()).then(done, done);
  }

  document.addEventListener("focusout", function () {
    if (waiting) {
      waiting = false;
      window.setTimeout(refresh, 50);
    }
  });

  // A page whose data changes outside the log (the Sync page: peers come and go) asks
  // to be looked at again every data-poll milliseconds.
  var poll = parseInt(document.getElementById("live").getAttribute("data-poll") || "0", 10);
  if (poll > 0) {
    window.setInterval(function () {
      if (!busy && !typing()) {
        busy = true;
        fetchLive(liveUrl()).then(done, done);
      }
    }, poll);
  }

  var shared = document.getElementById("shared");
  var seq = shared ? shared.getAttribute("data-seq") || "" : "";
  say("connecting");
  var source = new EventSource(/^[0-9]+$/.test(seq) ? "/events?seq=" + seq : "/events");
  var offline = false;
  source.addEventListener("open", function () {
    say("connected");
    offline = false;
  });
  source.addEventListener("error", function () {
    say("offline");
    if (!offline && announcer && status) {  // announce the change once, not every retry
      announcer.textContent = status.getAttribute("data-offline") || "";
    }
    offline = true;
  });
  source.addEventListener("change", function (event) {
    wanted = String(event.data);
    refresh();
  });
  source.addEventListener("shared", function (event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (!shared) {
      return;
    }
    var known = parseInt(shared.getAttribute("data-peers") || "0", 10);
    if (typeof data.peers === "number" && data.peers > known) {
      shared.setAttribute("data-peers", String(data.peers));
      shared.textContent = String(data.text);  // in the status region: read out once
    }
  });
})();
