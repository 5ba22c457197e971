// The sample UI's logic written on the published @alga-psa/extension-iframe-sdk (its
// IframeBridge), the SDK Alga extension UIs use today: the browser test checks that such a UI
// completes the handshake with alga-runner's host bridge unchanged. The package itself is fetched
// with npm by the test (vendor/alga-sdk/bridge.js), never committed.
import { IframeBridge } from "./vendor/alga-sdk/bridge.js";

const bridge = new IframeBridge();
const status = document.getElementById("status");
const greeting = document.getElementById("greeting");
let started = false;

bridge.on(async (message) => {
  if (message.type !== "bootstrap") return;
  status.textContent = "connected (published SDK)";
  document.body.dataset.bootstrapped = "true";
  if (started) return;
  started = true;
  bridge.emitToHost("resize", { height: 640 });
  try {
    const bytes = await bridge.callProxy("/hello?name=iframe", undefined, { method: "GET" });
    greeting.textContent = JSON.parse(new TextDecoder().decode(bytes)).greeting;
  } catch (e) {
    greeting.textContent = `error: ${e.message}`;
  }
});

bridge.ready();
