// An extension written as Alga's templates write one: the published runtime's helpers for the
// answer, the host APIs imported from the alga:extension world. Bundled by build.mjs (esbuild,
// the host imports left external) and componentized; `alga pack` makes the archive.
//   GET  /hello?name=Ada   a greeting with the caller's tenant and install
//   POST /visits           counts a visit in the install's storage and answers the count
import { jsonResponse } from "@alga-psa/extension-runtime";
import { getContext } from "alga:extension/context";
import { logInfo } from "alga:extension/logging";
import { get as storageGet, put as storagePut } from "alga:extension/storage";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function query(url) {
  const q = url.includes("?") ? url.slice(url.indexOf("?") + 1) : "";
  return Object.fromEntries(q.split("&").filter(Boolean).map((p) => {
    const [k, v = ""] = p.split("=");
    return [decodeURIComponent(k), decodeURIComponent(v.replace(/\+/g, " "))];
  }));
}

function visits() {
  let count = 0;
  let revision;
  try {
    const entry = storageGet("visits", "count");
    count = Number(decoder.decode(entry.value)) || 0;
    revision = entry.revision;
  } catch (e) {
    // A WIT error arrives as an exception whose payload is the error case.
    if (!(e && typeof e === "object" && e.payload === "missing")) throw e;
  }
  storagePut({ namespace: "visits", key: "count", value: encoder.encode(String(count + 1)), revision });
  return count + 1;
}

export function handler(request) {
  const { method, url } = request.http;
  const path = url.split("?")[0];
  const ctx = getContext();
  if (method === "GET" && path === "/hello") {
    const name = (query(url).name || "world").slice(0, 64);
    logInfo(`greeting ${name}`);
    return jsonResponse({ message: `Hello, ${name}!`, tenant: ctx.tenantId, install: ctx.installId ?? null });
  }
  if (method === "POST" && path === "/visits") {
    return jsonResponse({ visits: visits() });
  }
  return jsonResponse({ error: "not_found", path }, { status: 404 });
}
