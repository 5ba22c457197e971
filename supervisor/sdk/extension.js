// alga-runner iframe SDK, extension side (served at /sdk/v1/extension.js).
//
// Inside an extension UI loaded by the host bridge (iframe-bridge.js):
//
//   import { ready, onTheme, resize, navigate, callProxy } from "../../../sdk/v1/extension.js";
//   onTheme((tokens) => { ... });          // theme tokens are also applied as CSS custom properties
//   ready();                               // the host answers with bootstrap
//   const bytes = await callProxy("/hello?name=Ada", null, { method: "GET" });
//
// Messages are accepted only from the parent window and its origin: `?parentOrigin=` (set by
// buildExtUiSrc), else the referrer's origin. See docs/ui.md for the protocol.

const VERSION = "1";
const DEFAULT_TIMEOUT_MS = 15000;

function expectedParentOrigin() {
  const fromQuery = new URLSearchParams(window.location.search).get("parentOrigin");
  if (fromQuery) return fromQuery;
  try {
    return document.referrer ? new URL(document.referrer).origin : "";
  } catch {
    return "";
  }
}

const parentOrigin = expectedParentOrigin();
const themeListeners = new Set();
const bootstrapListeners = new Set();
const pending = new Map();
let session = null;
let navigation = null;
let themeTokens = {};

function send(type, payload, requestId) {
  if (!parentOrigin || window.parent === window) return;
  const message = { alga: true, version: VERSION, type, payload: payload ?? {} };
  if (requestId !== undefined) message.request_id = requestId;
  window.parent.postMessage(message, parentOrigin);
}

function applyTheme(tokens) {
  if (!tokens || typeof tokens !== "object") return;
  themeTokens = { ...themeTokens, ...tokens };
  const root = document.documentElement;
  for (const [name, value] of Object.entries(tokens)) {
    if (typeof name === "string" && name.startsWith("--")) root.style.setProperty(name, String(value));
  }
  for (const listener of themeListeners) listener({ ...themeTokens });
}

window.addEventListener("message", (event) => {
  if (event.source !== window.parent || event.origin !== parentOrigin) return;
  const data = event.data;
  if (!data || typeof data !== "object" || data.alga !== true || data.version !== VERSION) return;
  const payload = data.payload ?? {};
  switch (data.type) {
    case "bootstrap":
      session = payload.session ?? null;
      navigation = payload.navigation ?? null;
      applyTheme(payload.theme_tokens);
      for (const listener of bootstrapListeners) listener({ session, navigation, themeTokens: { ...themeTokens } });
      break;
    case "theme_tokens":
      applyTheme(payload.theme_tokens);
      break;
    case "theme":
      applyTheme(payload);
      break;
    case "apiproxy_response": {
      const waiter = pending.get(data.request_id);
      if (!waiter) return;
      pending.delete(data.request_id);
      clearTimeout(waiter.timer);
      if (payload.error) {
        waiter.reject(new Error(payload.error));
      } else {
        const s = atob(payload.body ?? "");
        const bytes = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i += 1) bytes[i] = s.charCodeAt(i);
        waiter.resolve(bytes);
      }
      break;
    }
    default:
      break;
  }
});

/// Tells the host the UI is ready; the host answers with `bootstrap`.
export function ready() {
  send("ready", {});
}

/// Asks the host to set the iframe's height (clamped there to 100..4000 px); default: the
/// document's height.
export function resize(height) {
  const h = height ?? document.documentElement.scrollHeight;
  send("resize", { height: h });
}

/// Asks the host to show another route of this UI.
export function navigate(path) {
  send("navigate", { path });
}

/// Calls one of the extension's own endpoints through the host (which adds its credentials and
/// goes through the runner's gateway). `body`: a Uint8Array, a string, or null. Resolves with the
/// answer's bytes; rejects with the host's error or on timeout.
export function callProxy(route, body = null, options = {}) {
  const method = String(options.method ?? "POST").toUpperCase();
  if (method === "GET" && body) return Promise.reject(new Error("GET requests cannot carry a body"));
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  let encoded;
  if (bytes && bytes.length) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 1) s += String.fromCharCode(bytes[i]);
    encoded = btoa(s);
  }
  const requestId = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(requestId);
      reject(new Error("Proxy request timed out"));
    }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    pending.set(requestId, { resolve, reject, timer });
    send("apiproxy", { route, body: encoded, method }, requestId);
  });
}

/// Calls `callback(tokens)` on every theme change (bootstrap included); returns an unsubscribe.
export function onTheme(callback) {
  themeListeners.add(callback);
  return () => themeListeners.delete(callback);
}

/// Calls `callback({session, navigation, themeTokens})` on every bootstrap; returns an unsubscribe.
export function onBootstrap(callback) {
  bootstrapListeners.add(callback);
  return () => bootstrapListeners.delete(callback);
}

/// The session the host passed (`{token, expires_at}`), once bootstrapped.
export function getSession() {
  return session;
}

/// The origin this UI accepts messages from.
export function getParentOrigin() {
  return parentOrigin;
}
