// The sample UI: handshake with the host, follow its theme, ask for a height, and call the
// extension's own `GET /hello` through the host's proxy and the runner's gateway.
import { callProxy, onBootstrap, ready, resize } from "../../../sdk/v1/extension.js";

const status = document.getElementById("status");
const greeting = document.getElementById("greeting");
let started = false;

onBootstrap(async ({ navigation }) => {
  status.textContent = `connected (route ${navigation?.path ?? "/"})`;
  document.body.dataset.bootstrapped = "true";
  if (started) return;
  started = true;
  resize(640);
  try {
    const bytes = await callProxy("/hello?name=iframe", null, { method: "GET" });
    const answer = JSON.parse(new TextDecoder().decode(bytes));
    greeting.textContent = answer.greeting;
  } catch (e) {
    greeting.textContent = `error: ${e.message}`;
  }
});

ready();
