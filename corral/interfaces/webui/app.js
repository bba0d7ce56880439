// corral's web chat: conversations kept in localStorage, replies streamed from
// /v1/chat/completions (Server-Sent Events read from fetch), a stop button that aborts the
// request (the server then cancels the sequence). No dependencies, no build step.
"use strict";

const STORE_KEY = "corral.conversations";
const SETTINGS_KEY = "corral.settings";
const SETTING_IDS = ["system", "temperature", "top_p", "top_k", "max_tokens", "seed", "api_key"];

const $ = (id) => document.getElementById(id);
const state = { conversations: load(STORE_KEY, []), current: null, model: null, controller: null };

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function save() {
  localStorage.setItem(STORE_KEY, JSON.stringify(state.conversations));
}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

// -- settings ---------------------------------------------------------------------------

function restoreSettings() {
  const saved = load(SETTINGS_KEY, {});
  for (const id of SETTING_IDS) {
    if (saved[id] !== undefined) $(id).value = saved[id];
    $(id).addEventListener("change", storeSettings);
  }
}

function storeSettings() {
  const values = {};
  for (const id of SETTING_IDS) values[id] = $(id).value;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
  if (!state.model) fetchModel();
}

function number(id, integer) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  const value = integer ? parseInt(text, 10) : parseFloat(text);
  return Number.isFinite(value) ? value : undefined;
}

// -- model info -------------------------------------------------------------------------

async function fetchModel() {
  try {
    const response = await fetch("v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message ?? response.statusText);
    const model = body.data[0];
    state.model = model.id;
    const meta = model.meta ?? {};
    $("model-info").textContent =
      `Model: ${model.id}\nChat format: ${meta.chat_format ?? "?"}\n` +
      `Context: ${meta.slot_context ?? "?"} tokens per reply, ${meta.n_slots ?? "?"} slots\n` +
      `Device: ${meta.device ?? "?"} (${meta.dtype ?? "?"})`;
  } catch (error) {
    state.model = null;
    $("model-info").textContent = `Model unavailable: ${error.message}`;
  }
}

// -- conversations ----------------------------------------------------------------------

function newConversation() {
  const conversation = { id: Date.now().toString(36), title: "New chat", messages: [] };
  state.conversations.unshift(conversation);
  state.current = conversation;
  save();
  render();
}

function render() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = document.createElement("li");
    item.classList.toggle("active", conversation === state.current);
    const title = document.createElement("span");
    title.textContent = conversation.title;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.title = "Delete";
    remove.textContent = "✕";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      deleteConversation(conversation);
    });
    item.append(title, remove);
    item.addEventListener("click", () => {
      if (state.controller) return;
      state.current = conversation;
      render();
    });
    list.append(item);
  }
  const messages = $("messages");
  messages.replaceChildren();
  for (const message of state.current?.messages ?? []) messages.append(bubble(message));
  messages.scrollTop = messages.scrollHeight;
}

function deleteConversation(conversation) {
  if (state.controller && conversation === state.current) return;
  state.conversations = state.conversations.filter((c) => c !== conversation);
  if (state.current === conversation) state.current = state.conversations[0] ?? null;
  if (!state.current) newConversation();
  save();
  render();
}

function bubble(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.textContent = message.content;
  if (message.meta) {
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = message.meta;
    element.append(meta);
  }
  return element;
}

// -- sending and streaming --------------------------------------------------------------

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function requestBody(conversation) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation.messages) {
    if (m.content) messages.push({ role: m.role, content: m.content });
  }
  const body = {
    model: state.model ?? undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature", false),
    top_p: number("top_p", false),
    top_k: number("top_k", true),
    max_tokens: number("max_tokens", true),
    seed: number("seed", true),
  };
  return JSON.stringify(body);
}

// Yields the JSON objects of the "data:" lines of an SSE response body.
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  const conversation = state.current;
  conversation.messages.push({ role: "user", content: text });
  if (conversation.title === "New chat") conversation.title = text.slice(0, 40);
  const reply = { role: "assistant", content: "" };
  conversation.messages.push(reply);
  save();
  render();
  const element = $("messages").lastElementChild;
  element.classList.add("streaming");
  showError("");
  setBusy(new AbortController());
  const started = performance.now();
  let tokens = 0;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: requestBody({ messages: conversation.messages.slice(0, -1) }),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error?.message ?? `HTTP ${response.status}`);
    }
    let finish = null;
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        reply.content += choice.delta.content;
        element.textContent = reply.content;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      finish = choice.finish_reason ?? finish;
    }
    const seconds = (performance.now() - started) / 1000;
    reply.meta = `${tokens} tokens, ${(tokens / seconds).toFixed(1)} tokens/s` +
      (finish === "length" ? " (max tokens reached)" : "");
  } catch (error) {
    if (error.name === "AbortError") {
      reply.meta = "stopped";
    } else {
      showError(error.message);
      reply.meta = "error";
    }
  } finally {
    setBusy(null);
    save();
    render();
  }
}

function setBusy(controller) {
  state.controller = controller;
  $("send").disabled = controller !== null;
  $("stop").disabled = controller === null;
}

// -- wiring -----------------------------------------------------------------------------

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => state.controller?.abort());
$("new-chat").addEventListener("click", () => {
  if (!state.controller) newConversation();
});

restoreSettings();
state.current = state.conversations[0] ?? null;
if (!state.current) newConversation();
render();
fetchModel();
