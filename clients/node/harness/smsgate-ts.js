#!/usr/bin/env node
// What tests/integration/test_smsgate_thirdparty.py runs: SMSGate's official TypeScript client
// (android-sms-gateway 3.0.0, the version on npm) against smsgw's SMSGate API. Reads {"base",
// "username", "password", "phone"} as JSON from stdin, calls getHealth, getDevices, send (its
// legacy `message` body on POST /message), getState (GET /message/{id}) until the message is
// Delivered (at most 30 s), and writes what came back as one JSON object to stdout.
import Client from "android-sms-gateway";  // its default export
import { http } from "./fetch-http.js";  // the client takes its HTTP client from the caller

const TIMEOUT_MS = 30_000;

async function main() {
  const input = JSON.parse(await new Response(process.stdin).text());
  const client = new Client(input.username, input.password, http, input.base);
  const health = await client.getHealth();
  const devices = await client.getDevices();
  const sent = await client.send({ message: "from the TypeScript client", phoneNumbers: [input.phone] });
  const deadline = Date.now() + TIMEOUT_MS;
  let state = sent;
  while (state.state !== "Delivered" && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    state = await client.getState(sent.id);
  }
  let refused = "";
  try {
    await client.send({ message: "", phoneNumbers: [input.phone] });
  } catch (error) {
    refused = String(error.message);
  }
  process.stdout.write(JSON.stringify({ health, devices, sent, state, refused }) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
});
