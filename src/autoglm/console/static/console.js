// The console's only script: the playground's token stream, and copying a new key's
// secret. No framework, no build step; loaded from this origin (CSP: script-src 'self').
"use strict";

function readSse(buffer, onData) {
  // Hands each complete "data: ..." line to onData; returns what is left (a partial line).
  let rest = buffer;
  let cut = rest.indexOf("\n");
  while (cut >= 0) {
    const line = rest.slice(0, cut).trim();
    rest = rest.slice(cut + 1);
    if (line.startsWith("data:")) onData(line.slice(5).trim());
    cut = rest.indexOf("\n");
  }
  return rest;
}

function playground(form) {
  const answer = document.getElementById("p-answer");
  const error = document.getElementById("p-error");
  const send = document.getElementById("p-send");
  const stop = document.getElementById("p-stop");
  let controller = null;

  function done() {
    controller = null;
    send.disabled = false;
    stop.disabled = true;
    answer.setAttribute("aria-busy", "false");
  }

  stop.addEventListener("click", () => { if (controller) controller.abort(); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    answer.textContent = "";
    error.hidden = true;
    send.disabled = true;
    stop.disabled = false;
    answer.setAttribute("aria-busy", "true");
    controller = new AbortController();
    const data = new FormData(form);
    const headers = {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf};
    if (data.get("project")) headers["OpenAI-Project"] = data.get("project");
    const body = {
      model: data.get("model"),
      messages: [{role: "user", content: data.get("prompt")}],
      max_tokens: Number(data.get("max_tokens")) || 64,
      stream: true,
    };
    try {
      const response = await fetch(form.dataset.endpoint, {
        method: "POST", headers, body: JSON.stringify(body), signal: controller.signal,
        credentials: "same-origin",
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        throw new Error((problem.error && problem.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done: finished} = await reader.read();
        if (finished) break;
        buffer = readSse(buffer + decoder.decode(value, {stream: true}), (payload) => {
          if (payload === "[DONE]") return;
          const chunk = JSON.parse(payload);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) answer.append(document.createTextNode(delta.content));
        });
      }
    } catch (err) {
      if (err.name !== "AbortError") {
        error.textContent = err.message;
        error.hidden = false;
      }
    } finally {
      done();
    }
  });
}

function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = button.dataset.done;
      } catch (_) {
        // no clipboard access (plain HTTP): the text stays selected for Ctrl+C
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("playground");
  if (form) playground(form);
  copyButtons();
});
