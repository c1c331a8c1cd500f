#!/usr/bin/env node
// What tests/integration/test_smsgate_webhooks.py runs: SMSGate's official TypeScript client
// (android-sms-gateway 3.0.0) against smsgw's SMSGate API for webhooks and settings. Reads
// {"base", "username", "password", "url"} as JSON from stdin; registers a webhook, lists it,
// deletes it, patches, reads and replaces the settings (snake_case keys, as SMSGate's server
// keeps them: the client's own types say camelCase, which the server drops), then registers an
// unknown event; writes what came back as one JSON object to stdout.
import Client from "android-sms-gateway";  // its default export
import { http } from "./fetch-http.js";  // the client takes its HTTP client from the caller

async function main() {
  const input = JSON.parse(await new Response(process.stdin).text());
  const client = new Client(input.username, input.password, http, input.base);
  const registered = await client.registerWebhook({ id: "ts-1", url: input.url, event: "sms:delivered" });
  const listed = await client.getWebhooks();
  await client.deleteWebhook("ts-1");
  const after = await client.getWebhooks();
  const patched = await client.patchSettings({ ping: { interval_seconds: 120 } });
  const got = await client.getSettings();
  const replaced = await client.updateSettings({ logs: { lifetime_days: 3 } });
  let refused = "";
  try {
    await client.registerWebhook({ url: input.url, event: "sms:teleported" });
  } catch (error) {
    refused = String(error.message);
  }
  process.stdout.write(JSON.stringify({ registered, listed, after, patched, got, replaced, refused }) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
});
