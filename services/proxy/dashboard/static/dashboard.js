// The dashboard works without this file; with it, a job page follows the job live over server-sent events.
"use strict";

function followJob(panel) {
  const state = document.getElementById("job-state");
  const step = document.getElementById("job-step");
  const versions = document.getElementById("job-versions");
  const error = document.getElementById("job-error");
  const live = document.getElementById("job-live");
  const log = document.getElementById("job-events");
  const source = new EventSource(panel.dataset.events);
  live.textContent = "Following the job live…";

  source.addEventListener("job", (event) => {
    const job = JSON.parse(event.data);
    const name = job.state.replace(/^JOB_STATE_/, "");
    // textContent only: nothing from the server is ever parsed as HTML.
    state.textContent = name;
    state.className = "state " + name.toLowerCase();
    step.textContent = job.step + " / " + job.total_steps;
    versions.textContent = "v" + job.base_version + (job.new_version ? " → v" + job.new_version : "");
    error.textContent = job.error || "-";
    const item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + " " + name;
    log.appendChild(item);
  });
  source.addEventListener("failure", (event) => {
    live.textContent = "Lost the job: " + JSON.parse(event.data).message;
    source.close();
  });
  source.addEventListener("end", () => {
    live.textContent = "The job has ended.";
    source.close(); // else EventSource would reconnect and replay the job's last state
  });
  source.onerror = () => {
    live.textContent = "Connection lost: reload to see the latest state.";
    source.close();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("job");
  if (panel && panel.dataset.terminal === "no") {
    followJob(panel);
  }
});
