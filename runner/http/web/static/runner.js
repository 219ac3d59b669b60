// runner's web page: live updates on top of server-rendered HTML that works without this file.
// No library, no build step. Loaded with `defer` from the daemon itself (the CSP allows
// nothing else): times in the viewer's zone, the health corner and reload banner by long
// polling /-/status, regions marked data-refresh re-read from the page's own URL, a running
// run's output over the API's event stream, the trigger form and the cancel button.
"use strict";

(function () {
  const pad = (n) => String(n).padStart(2, "0");

  function localTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      if (el.dataset.local) continue;
      const at = new Date(el.getAttribute("datetime"));
      if (isNaN(at)) continue;
      const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" })
        .formatToParts(at).find((part) => part.type === "timeZoneName");
      el.textContent = `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
        `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}` + (zone ? ` ${zone.value}` : "");
      el.dataset.local = "1";
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function readPage() {
    const answer = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    return new DOMParser().parseFromString(await answer.text(), "text/html");
  }

  function swap(id, fresh) {
    const here = document.getElementById(id);
    const there = fresh.getElementById(id);
    if (!here || !there || here.innerHTML === there.innerHTML) return;
    here.innerHTML = there.innerHTML;
    localTimes(here);
  }

  async function followStatus() {
    // The page says what its corner shows: the first poll waits for a change like the others.
    const meta = document.querySelector('meta[name="runner-status"]');
    let have = meta ? meta.content : "";
    for (;;) {
      try {
        const answer = await fetch(`/-/status?have=${have}`, { cache: "no-store" });
        if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
        const data = await answer.json();
        for (const [id, html] of [["health", data.health], ["sync", data.sync]]) {
          const el = document.getElementById(id);
          if (el && el.outerHTML !== html) {
            el.outerHTML = html;
            localTimes(document.getElementById(id) || document);
          }
        }
        have = data.digest;
      } catch (err) {
        await sleep(2000);
      }
    }
  }

  function refreshRegions() {
    const regions = [...document.querySelectorAll("[data-refresh][id]")];
    if (!regions.length) return;
    const every = Math.min(...regions.map((el) => Number(el.dataset.refresh) || 5)) * 1000;
    const tick = async () => {
      const busy = regions.some((el) => el.contains(document.activeElement) && document.activeElement !== document.body);
      if (!document.hidden && !busy) {
        try {
          const fresh = await readPage();
          for (const el of regions) swap(el.id, fresh);
        } catch (err) { /* the next tick tries again */ }
      }
      setTimeout(tick, every);
    };
    setTimeout(tick, every);
  }

  function setStatus(status) {
    for (const el of document.querySelectorAll("[data-live=status]")) {
      el.textContent = status.replace("_", " ");
      el.dataset.status = status;
      el.className = `badge s-${{ queued: "queued", running: "running", succeeded: "ok", failed: "bad", timed_out: "bad",
        cancelled: "warn", interrupted: "warn", skipped: "muted" }[status] || "muted"}`;
    }
  }

  function append(pre, text) {
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
    pre.append(document.createTextNode(text));
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  function followRun(section) {
    const streams = { stdout: document.getElementById("stdout"), stderr: document.getElementById("stderr") };
    const log = document.getElementById("log");
    let fresh = true; // the first stream replays everything: what the page showed is replaced
    const source = new EventSource(section.dataset.events);
    source.addEventListener("status", (event) => {
      if (fresh) {
        for (const pre of [streams.stdout, streams.stderr, log]) pre.textContent = "";
        fresh = false;
      }
      setStatus(JSON.parse(event.data).status);
    });
    source.addEventListener("output", (event) => {
      const data = JSON.parse(event.data);
      append(streams[data.stream], data.text);
    });
    source.addEventListener("log", (event) => {
      const data = JSON.parse(event.data);
      const level = document.createElement("span");
      level.className = `lvl-${String(data.level).toLowerCase()}`;
      level.textContent = data.level;
      log.append(level, ` ${data.message}\n`);
    });
    source.addEventListener("end", async (event) => {
      source.close();
      setStatus(JSON.parse(event.data).status);
      try {
        swap("run", await readPage()); // timings, result, error: as the finished run's page has them
      } catch (err) { /* the page still shows the final status */ }
    });
    source.addEventListener("error", (event) => {
      if (event.data) source.close(); // the server's own error event: the run is gone, or the store is down
    });
  }

  let token = ""; // the trigger token lives here only: never in a cookie, storage or the URL

  function triggerForm(form) {
    const result = document.getElementById("trigger-result");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const field = document.getElementById("token");
      token = field.value || token;
      const parameters = {};
      for (const input of form.querySelectorAll("input[name]")) {
        if (input.value === "") continue;
        const kinds = (input.dataset.json || "").split(",").filter(Boolean);
        if (kinds.length === 1 && kinds[0] === "string") {
          parameters[input.name] = input.value;
          continue;
        }
        try {
          parameters[input.name] = JSON.parse(input.value);
        } catch (err) {
          parameters[input.name] = input.value;
        }
      }
      result.textContent = "starting…";
      try {
        const answer = await fetch(form.getAttribute("action"), {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
          body: JSON.stringify({ parameters }),
        });
        const body = await answer.json();
        if (answer.status === 202) {
          location.assign(`/runs/${body.id}`);
          return;
        }
        if (answer.status === 401) token = "";
        result.textContent = body.detail || `HTTP ${answer.status}`;
      } catch (err) {
        result.textContent = `the daemon did not answer: ${err.message}`;
      }
    });
  }

  function cancelForm(form) {
    form.hidden = false;
    const result = document.getElementById("cancel-result");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      token = document.getElementById("cancel-token").value || token;
      result.textContent = "asking…";
      try {
        const answer = await fetch(form.getAttribute("action"), {
          method: "POST",
          headers: { Authorization: `Bearer ${token}` },
        });
        const body = await answer.json();
        if (answer.status === 202) {
          result.textContent = "cancel asked for: the run stops within a second";
          return;
        }
        if (answer.status === 401) token = "";
        if (answer.status === 405) form.hidden = true;
        result.textContent = answer.status === 409 ? `it had already finished: ${body.run_status}` : body.detail || `HTTP ${answer.status}`;
      } catch (err) {
        result.textContent = `the daemon did not answer: ${err.message}`;
      }
    });
  }

  function start() {
    localTimes(document);
    followStatus();
    refreshRegions();
    const output = document.querySelector("#output[data-events]");
    if (output) followRun(output);
    const form = document.getElementById("trigger");
    if (form) triggerForm(form);
    const cancel = document.getElementById("cancel");
    if (cancel) cancelForm(cancel);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
