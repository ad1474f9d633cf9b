// The boomerang playground: one prompt, several members of the family, their completions streamed side by side.
// It uses the server's own OpenAI-compatible endpoints (GET v1/models, POST v1/chat/completions or
// v1/completions with "stream": true) and loads nothing from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { members: [], chosen: [], controllers: [] };

function count(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "K";
  return String(n);
}

function label(m) {
  const alias = m.aliases && m.aliases.length ? ` (${m.aliases.join(", ")})` : "";
  return `${m.id}${alias} · ${m.layers} layers · ${count(m.parameters)} parameters`;
}

function say(text) {
  $("message").textContent = text;
}

async function loadMembers() {
  let data;
  try {
    const response = await fetch("v1/models");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    data = (await response.json()).data;
  } catch (e) {
    $("family").textContent = "no members";
    say(`Cannot load the members from v1/models (${e.message}): is boomerang serve running? Reload to retry.`);
    return;
  }
  state.members = data.filter((m) => typeof m.k === "number").sort((a, b) => a.k - b.k);
  const first = state.members[0];
  const last = state.members[state.members.length - 1];
  const slider = $("size");
  slider.max = String(state.members.length - 1);
  slider.value = String(state.members.length - 1);
  slider.disabled = false;
  $("add").disabled = false;
  $("size-ticks").replaceChildren(
    ...state.members.map((m, i) => Object.assign(document.createElement("option"), { value: String(i) }))
  );
  $("size-min").textContent = `${first.id} ${count(first.parameters)}`;
  $("size-max").textContent = `${last.id} ${count(last.parameters)}`;
  const params = state.members.map((m) => m.parameters);
  $("family").textContent =
    `${state.members.length} members, ${first.layers} to ${last.layers} layers, ` +
    `${count(Math.min(...params))} to ${count(Math.max(...params))} parameters · order ${first.order}` +
    (first.context_length ? ` · context ${first.context_length} tokens` : "");
  state.chosen = state.members.length > 1 ? [first.id, last.id] : [first.id];
  showSlider();
  showChosen();
}

function sliderMember() {
  return state.members[Number($("size").value)];
}

function showSlider() {
  const m = sliderMember();
  $("size-info").textContent = m ? label(m) : "";
}

function showChosen() {
  const items = state.chosen.map((id) => {
    const m = state.members.find((x) => x.id === id);
    const li = document.createElement("li");
    li.dataset.model = id;
    li.append(label(m));
    const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "×" });
    remove.setAttribute("aria-label", `remove ${id}`);
    remove.addEventListener("click", () => {
      state.chosen = state.chosen.filter((x) => x !== id);
      showChosen();
    });
    li.append(remove);
    return li;
  });
  $("chosen").replaceChildren(...items);
}

function addMember() {
  const m = sliderMember();
  if (m && !state.chosen.includes(m.id)) {
    state.chosen.push(m.id);
    state.chosen.sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    showChosen();
  }
}

function settings() {
  const maxTokens = Number($("max-tokens").value);
  const temperature = Number($("temperature").value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) return "max tokens must be a whole number of at least 1.";
  if ($("temperature").value === "" || !(temperature >= 0 && temperature <= 2)) return "temperature must be 0 to 2.";
  return { max_tokens: maxTokens, temperature };
}

function makePane(m) {
  const pane = document.createElement("article");
  pane.className = "pane";
  pane.dataset.model = m.id;
  const title = document.createElement("h2");
  const small = document.createElement("small");
  small.textContent = `${m.layers} layers · ${count(m.parameters)}`;
  title.append(m.id + (m.aliases && m.aliases.length ? ` (${m.aliases.join(", ")})` : ""), small);
  const text = Object.assign(document.createElement("pre"), { className: "text" });
  const error = Object.assign(document.createElement("p"), { className: "error" });
  error.setAttribute("role", "alert");
  const stats = Object.assign(document.createElement("div"), { className: "stats", textContent: "sending…" });
  pane.append(title, text, error, stats);
  return pane;
}

// Server-sent events from a fetch response: calls onEvent(parsed JSON) per event; resolves true after [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return true;
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function run(m, pane, mode, prompt, options, signal) {
  const text = pane.querySelector(".text");
  const stats = pane.querySelector(".stats");
  const fail = (message) => {
    pane.classList.add("failed");
    pane.querySelector(".error").textContent = message;
  };
  const body = { model: m.id, stream: true, stream_options: { include_usage: true }, ...options };
  if (mode === "chat") body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  const t0 = performance.now();
  let first = null;
  let pieces = 0;
  let tokens = null;
  let finish = null;
  const show = () => {
    const now = performance.now();
    const n = tokens === null ? pieces : tokens;
    const rate = n / Math.max((now - t0) / 1000, 1e-3);
    const ttft = first === null ? "" : ` · first token ${Math.round(first - t0)} ms`;
    const end = finish ? ` · ${finish}` : "";
    stats.textContent = `${n} tokens · ${rate.toFixed(1)} tokens/s${ttft}${end}`;
  };
  try {
    const url = mode === "chat" ? "v1/chat/completions" : "v1/completions";
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        message = (await response.json()).error.message || message;
      } catch (e) {
        // not an OpenAI error body: keep the status
      }
      stats.textContent = "refused";
      fail(message);
      return;
    }
    const complete = await readEvents(response, (event) => {
      if (event.error) {
        fail(event.error.message);
        return;
      }
      if (event.usage) tokens = event.usage.completion_tokens;
      for (const choice of event.choices || []) {
        const piece = mode === "chat" ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (piece) {
          if (first === null) first = performance.now();
          pieces += 1;
          text.textContent += piece;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      show();
    });
    if (!complete) fail("The stream ended early: the server went away.");
    show();
  } catch (e) {
    if (signal.aborted) {
      stats.textContent += " · stopped";
    } else if (e instanceof TypeError) {
      stats.textContent = "no answer";
      fail("Cannot reach the server: is boomerang serve still running?");
    } else {
      fail(`Something went wrong: ${e.message}`);
    }
  } finally {
    pane.classList.add("done");
  }
}

async function send() {
  say("");
  const prompt = $("prompt").value;
  const options = settings();
  if (!state.members.length) return say("No members loaded: is boomerang serve running? Reload the page.");
  if (!prompt.trim()) return say("Type a prompt or chat message first.");
  if (!state.chosen.length) return say("Choose at least one member: move the size slider and press Add.");
  if (typeof options === "string") return say(options);
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const members = state.chosen.map((id) => state.members.find((m) => m.id === id));
  const panes = members.map(makePane);
  $("panes").replaceChildren(...panes);
  const controller = new AbortController();
  state.controllers.push(controller);
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    await Promise.all(members.map((m, i) => run(m, panes[i], mode, prompt, options, controller.signal)));
  } finally {
    state.controllers = state.controllers.filter((c) => c !== controller);
    $("send").disabled = false;
    $("stop").disabled = state.controllers.length === 0;
  }
}

function stop() {
  for (const c of state.controllers) c.abort();
}

document.addEventListener("DOMContentLoaded", () => {
  $("size").addEventListener("input", showSlider);
  $("add").addEventListener("click", addMember);
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send();
  });
  loadMembers();
});
