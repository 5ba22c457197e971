// alga-runner iframe bridge, host side (served at /sdk/v1/iframe-bridge.js).
//
// A host page embeds an extension's UI in an iframe and talks to it with postMessage. Every
// message is the envelope {alga: true, version: "1", type, request_id?, payload}. See docs/ui.md.
//
//   import { buildExtUiSrc, bootstrapIframe } from "https://runner.example/sdk/v1/iframe-bridge.js";
//   const bridge = bootstrapIframe({ iframe, extensionId, contentHash, publicBase, tenant,
//                                    session: { token, expiresAt }, themeTokens });
//   bridge.setTheme({ "--alga-primary": "#0a7" });   // later theme changes
//   bridge.destroy();                                 // stop listening

const VERSION = "1";
const HASH = /^sha256:[0-9a-f]{64}$/i;
const PROXY_METHODS = new Set(["GET", "POST", "PUT", "PATCH", "DELETE"]);
export const MIN_HEIGHT = 100;
export const MAX_HEIGHT = 4000;

function envelope(type, payload, requestId) {
  const message = { alga: true, version: VERSION, type, payload: payload ?? {} };
  if (requestId !== undefined && requestId !== null) message.request_id = requestId;
  return message;
}

function isEnvelope(data) {
  return !!data && typeof data === "object" && data.alga === true && data.version === VERSION &&
    typeof data.type === "string";
}

function requireHash(contentHash) {
  if (typeof contentHash !== "string" || !HASH.test(contentHash)) {
    throw new Error(`alga-runner: "${contentHash}" is not a content hash (sha256: and 64 hex digits)`);
  }
}

/// The iframe URL of an extension's UI: `{publicBase}/ext-ui/{extensionId}/{contentHash}/index.html`
/// with `path` (the UI's initial route), `tenant`, `extensionId` and `parentOrigin` (this page's
/// origin, which the UI accepts messages from) in the query string.
export function buildExtUiSrc(extensionId, contentHash, path = "/", options = {}) {
  if (!extensionId) throw new Error("alga-runner: buildExtUiSrc needs an extension id");
  requireHash(contentHash);
  const base = String(options.publicBase ?? "").replace(/\/+$/, "");
  const query = new URLSearchParams();
  query.set("path", path || "/");
  if (options.tenant) query.set("tenant", options.tenant);
  query.set("extensionId", extensionId);
  query.set("parentOrigin", options.parentOrigin ?? window.location.origin);
  return `${base}/ext-ui/${encodeURIComponent(extensionId)}/${encodeURIComponent(contentHash.toLowerCase())}` +
    `/index.html?${query}`;
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 1) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i);
  return out;
}

/// Embeds and drives an extension UI. Options:
/// - iframe (required), extensionId (required), contentHash (required)
/// - publicBase: the runner's public base URL (default: this page's origin)
/// - tenant: sent to the runner as `?tenant=` (strict mode checks the install)
/// - allowedOrigin: the origin messages must come from (default: the iframe URL's origin)
/// - session: {token, expiresAt}; themeTokens: {"--name": "value"}; initialPath (default "/")
/// - proxyBase: where `apiproxy` calls go (default "/api/ext-proxy": the host application's own
///   proxy, which adds its credentials and calls the runner's `/api/ext/...`)
/// - onResize(height), onNavigate(path), onReady(): optional callbacks
export function bootstrapIframe(options) {
  const { iframe, extensionId, contentHash } = options ?? {};
  if (!iframe || typeof iframe.setAttribute !== "function" || iframe.tagName !== "IFRAME") {
    throw new Error("alga-runner: bootstrapIframe needs an <iframe> element");
  }
  requireHash(contentHash);
  if (!iframe.hasAttribute("sandbox")) iframe.setAttribute("sandbox", "allow-scripts");
  const tokens = { ...(options.themeTokens ?? {}) };
  let path = options.initialPath || "/";
  const src = buildExtUiSrc(extensionId, contentHash, path, {
    publicBase: options.publicBase, tenant: options.tenant,
  });
  const srcOrigin = new URL(src, window.location.href).origin;
  const allowedOrigin = options.allowedOrigin ?? srcOrigin;
  const proxyBase = String(options.proxyBase ?? "/api/ext-proxy").replace(/\/+$/, "");

  // A sandbox without allow-same-origin gives the UI an opaque origin: its messages come from
  // "null" and can only be sent to "*". The window identity check below still binds them to
  // this very iframe.
  const sandbox = (iframe.getAttribute("sandbox") ?? "").split(/\s+/);
  const opaque = iframe.hasAttribute("sandbox") && !sandbox.includes("allow-same-origin");
  const targetOrigin = opaque ? "*" : allowedOrigin;

  const post = (type, payload, requestId) => {
    iframe.contentWindow?.postMessage(envelope(type, payload, requestId), targetOrigin);
  };
  const bootstrap = () => post("bootstrap", {
    session: options.session ? { token: options.session.token, expires_at: options.session.expiresAt } : null,
    theme_tokens: tokens,
    navigation: { path },
  });

  async function apiproxy(message) {
    const p = message.payload ?? {};
    const method = String(p.method ?? "POST").toUpperCase();
    const route = String(p.route ?? "");
    if (!PROXY_METHODS.has(method) || !route.startsWith("/") || route.startsWith("//")) {
      post("apiproxy_response", { error: `Proxy error 400: invalid route or method` }, message.request_id);
      return;
    }
    try {
      const init = { method, credentials: "include", headers: {} };
      if (p.body) {
        init.body = fromBase64(p.body);
        init.headers["content-type"] = "application/octet-stream";
      }
      const response = await fetch(`${proxyBase}/${encodeURIComponent(extensionId)}${route}`, init);
      const bytes = new Uint8Array(await response.arrayBuffer());
      if (!response.ok) {
        post("apiproxy_response", { error: `Proxy error ${response.status}: ${response.statusText}` }, message.request_id);
        return;
      }
      post("apiproxy_response", { body: toBase64(bytes) }, message.request_id);
    } catch (e) {
      post("apiproxy_response", { error: `Proxy error 0: ${e && e.message ? e.message : e}` }, message.request_id);
    }
  }

  function onMessage(event) {
    // Only this iframe, only from its origin (or "null" for an opaque sandbox), only envelopes.
    if (event.source !== iframe.contentWindow) return;
    if (event.origin !== allowedOrigin && !(opaque && event.origin === "null")) return;
    if (!isEnvelope(event.data)) return;
    const message = event.data;
    switch (message.type) {
      case "ready":
        bootstrap();
        options.onReady?.();
        break;
      case "resize": {
        const h = Number(message.payload?.height);
        if (!Number.isFinite(h)) return;
        const height = Math.min(MAX_HEIGHT, Math.max(MIN_HEIGHT, Math.round(h)));
        iframe.style.height = `${height}px`;
        options.onResize?.(height);
        break;
      }
      case "navigate": {
        const next = String(message.payload?.path ?? "/");
        if (!next.startsWith("/")) return;
        path = next;
        const url = new URL(iframe.src, window.location.href);
        url.searchParams.set("path", next);
        iframe.src = url.toString();
        options.onNavigate?.(next);
        break;
      }
      case "apiproxy":
        apiproxy(message);
        break;
      default:
        break;
    }
  }

  window.addEventListener("message", onMessage);
  iframe.addEventListener("load", bootstrap);
  iframe.src = src;

  return {
    src,
    allowedOrigin,
    /// Sends new theme tokens (and keeps them for the next bootstrap).
    setTheme(next) {
      Object.assign(tokens, next ?? {});
      post("theme_tokens", { theme_tokens: tokens });
      post("theme", tokens);
    },
    destroy() {
      window.removeEventListener("message", onMessage);
      iframe.removeEventListener("load", bootstrap);
    },
  };
}
