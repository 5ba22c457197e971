// Builds bundle/dist/main.wasm from src/app.js with the pinned componentize-js (package-lock.json):
// the alga:extension/runner world from shared/wit, and no WASI at all (`disableFeatures: all`),
// so the component imports only the host API.
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "bundle/dist/main.wasm");
const source = await readFile(join(here, "src/app.js"), "utf8");
const started = Date.now();
const { component } = await componentize(source, {
  witPath: join(here, "../../shared/wit"),
  worldName: "runner",
  disableFeatures: ["http", "fetch-event"],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
