// Builds bundle/dist/main.wasm (or the path given) from src/app.js with the pinned
// componentize-js (package-lock.json) for the alga:extension/runner world of shared/wit. Its
// `http` and `fetch-event` features are off (they import wasi:http, which the runner does not
// provide: extensions reach the network through the host API's http.fetch); stdio, clocks and
// random stay, so an uncaught exception's message reaches the execution record through stderr.
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "bundle/dist/main.wasm");
// `--with-wasi-http`: keep componentize-js's default `http` and `fetch-event` features, which
// import wasi:http — the runner refuses such a component at publish (docs/extensions-js.md).
const withWasiHttp = process.argv.includes("--with-wasi-http");
const source = await readFile(join(here, "src/app.js"), "utf8");
const started = Date.now();
const { component } = await componentize(source, {
  witPath: join(here, "../../shared/wit"),
  worldName: "runner",
  disableFeatures: withWasiHttp ? [] : ["http", "fetch-event"],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
