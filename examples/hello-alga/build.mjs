// Builds dist/main.wasm the way Alga's `alga build` does: the handler bundled with its npm
// dependencies (esbuild; the alga:extension/* host imports stay imports), then componentized
// with the pinned componentize-js for the alga:extension/runner world (shared/wit). The `http`
// and `fetch-event` features are off: they import wasi:http, which the runner does not provide.
// Then `npx alga pack` (package.json's "pack") writes dist/bundle.tar.zst and dist/bundle.sha256.
import { build } from "esbuild";
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const bundled = join(here, "dist/js/handler.js");
await build({
  entryPoints: [join(here, "src/handler.js")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  outfile: bundled,
  external: ["alga:extension/*"],
  logLevel: "warning",
});
const started = Date.now();
const { component } = await componentize(await readFile(bundled, "utf8"), {
  witPath: join(here, "../../shared/wit"),
  worldName: "runner",
  disableFeatures: ["http", "fetch-event"],
});
const out = join(here, "dist/main.wasm");
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
