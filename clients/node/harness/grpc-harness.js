#!/usr/bin/env node
// What tests/integration/test_node_grpc.py runs against a real `smsgw serve`: reads
// {"target", "username", "password", "bad_phone"} as JSON from stdin, then from Node (grpc-js with
// the protos loaded as README "For client developers" shows) calls grpc.health.v1 Check,
// AuthService.IssueToken (Basic), MessageService.ListMessages (Bearer) and a SendMessage that
// must fail, and writes what came back as one JSON object to stdout. Every call has a 10 s deadline.
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { protoPath as healthProto } from "grpc-health-check";
import { LOADER_OPTIONS, loadSmsgw, statusDetails } from "./protos.js";

const DEADLINE_MS = 10_000;

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

function withAuthorization(value) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", value);
  return metadata;
}

async function main() {
  const input = JSON.parse(await new Response(process.stdin).text());
  const smsgw = loadSmsgw().smsgw.v1;
  const health = grpc.loadPackageDefinition(protoLoader.loadSync(healthProto, LOADER_OPTIONS)).grpc.health.v1;
  const insecure = grpc.credentials.createInsecure();
  const out = {};

  const healthClient = new health.Health(input.target, insecure);
  out.health = await unary(healthClient, "Check", { service: "" });

  const auth = new smsgw.AuthService(input.target, insecure);
  const basic = Buffer.from(`${input.username}:${input.password}`).toString("base64");
  out.token = await unary(auth, "IssueToken", { access_ttl_seconds: 600 }, withAuthorization(`Basic ${basic}`));

  const messages = new smsgw.MessageService(input.target, insecure);
  const bearer = withAuthorization(`Bearer ${out.token.access_token}`);
  out.list = await unary(messages, "ListMessages", { page_size: 10 }, bearer);

  try {
    await unary(messages, "SendMessage", { phone_numbers: [input.bad_phone], text_message: { text: "hi" } }, bearer);
    out.error = null;
  } catch (error) {
    out.error = { code: grpc.status[error.code], details: error.details, status: statusDetails(error) };
  }

  for (const client of [healthClient, auth, messages]) client.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
});
