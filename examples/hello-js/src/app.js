// The JavaScript sample extension: one component of the alga:extension/runner world, built with
// componentize-js (build.mjs). Routes by path:
//   GET  /hello?name=Ada   a greeting, and how often this tenant greeted that name (storage, CAS)
//   GET  /whoami           context and user
//   POST /fetch            http.fetch of the URL in the body (allowed only by the egress lists)
//   GET  /secret?key=k     whether the install has that secret (never its value)
//   GET  /console          console.log and console.error (captured into the execution record)
//   GET  /later            a timer and a promise callback scheduled, then the answer
//   GET  /random           Math.random() and crypto.getRandomValues (different every execution)
//   GET  /throw            an uncaught exception (what the execution record shows)
//   GET  /spin             an infinite loop (stopped at the deadline)
//   GET  /bomb             allocates until the memory limit
import { getContext } from "alga:extension/context";
import { logInfo, logWarn } from "alga:extension/logging";
import { get as storageGet, put as storagePut } from "alga:extension/storage";
import { fetch } from "alga:extension/http";
import { get as secretGet } from "alga:extension/secrets";
import { getUser } from "alga:extension/user-v2";

// Module-level code runs once, when componentize-js builds the component (it snapshots the
// initialized module): this is the build's time, the same in every execution.
const moduleEvaluatedAt = Date.now();

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(status, value) {
  return {
    status,
    headers: [{ name: "content-type", value: "application/json" }],
    body: encoder.encode(JSON.stringify(value)),
  };
}

function query(url) {
  const q = url.includes("?") ? url.slice(url.indexOf("?") + 1) : "";
  return Object.fromEntries(q.split("&").filter(Boolean).map((p) => {
    const [k, v = ""] = p.split("=");
    return [decodeURIComponent(k), decodeURIComponent(v.replace(/\+/g, " "))];
  }));
}

/// Error payloads of result-returning imports arrive as thrown values with a `payload`.
function errorCase(e) {
  return e && typeof e === "object" && "payload" in e ? e.payload : String(e);
}

function countVisit(name) {
  for (let attempt = 0; attempt < 5; attempt += 1) {
    let count = 0;
    let revision;
    try {
      const entry = storageGet("visits", name);
      count = Number(decoder.decode(entry.value)) || 0;
      revision = entry.revision;
    } catch (e) {
      if (errorCase(e) !== "missing") throw e;
    }
    try {
      storagePut({ namespace: "visits", key: name, value: encoder.encode(String(count + 1)), revision });
      return count + 1;
    } catch (e) {
      if (errorCase(e) !== "conflict") throw e;
    }
  }
  throw new Error("too many concurrent updates");
}

export function handler(request) {
  const { method, url } = request.http;
  const path = url.split("?")[0];
  const q = query(url);
  switch (`${method} ${path}`) {
    case "GET /hello": {
      const name = (q.name || "world").replace(/[^A-Za-z0-9-]/g, "").slice(0, 64) || "world";
      try {
        const visits = countVisit(name);
        logInfo(`greeted ${name} (${visits})`);
        return json(200, { greeting: `Hello, ${name}!`, visits });
      } catch (e) {
        logWarn(`storage: ${errorCase(e)}`);
        return json(503, { error: "storage unavailable", detail: errorCase(e) });
      }
    }
    case "GET /whoami": {
      const c = getContext();
      let user = null;
      try {
        user = getUser().userId;
      } catch (e) {
        user = `(${errorCase(e)})`;
      }
      return json(200, { tenant: c.tenantId, extension: c.extensionId, install: c.installId ?? null, user });
    }
    case "POST /fetch": {
      const target = decoder.decode(request.http.body ?? new Uint8Array());
      try {
        const r = fetch({ method: "GET", url: target, headers: [], body: undefined });
        return json(200, { status: r.status, body: decoder.decode(r.body ?? new Uint8Array()).slice(0, 200) });
      } catch (e) {
        return json(200, { error: errorCase(e) });
      }
    }
    case "GET /secret": {
      try {
        secretGet(q.key || "api_key");
        return json(200, { present: true });
      } catch (e) {
        return json(200, { present: false, error: errorCase(e) });
      }
    }
    case "GET /time":
      return json(200, { now: Date.now(), iso: new Date().toISOString() });
    case "GET /console":
      console.log("to stdout from console.log");
      console.error("to stderr from console.error");
      return json(200, { logged: true });
    case "GET /later": {
      setTimeout(() => console.log("the timer ran"), 0);
      Promise.resolve().then(() => console.log("the promise callback ran"));
      return json(200, { scheduled: true });
    }
    case "GET /random": {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      return json(200, { math: Math.random(), bytes: Array.from(bytes), moduleEvaluatedAt });
    }
    case "GET /throw":
      throw new Error("the sample threw on purpose");
    case "GET /spin": {
      let x = 0;
      for (;;) x = (x + 1) % 1000003;
    }
    case "GET /bomb": {
      const hoard = [];
      for (;;) hoard.push(new Array(1 << 20).fill(hoard.length));
    }
    default:
      return json(404, { error: `no route ${method} ${path}` });
  }
}
