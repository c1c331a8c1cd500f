// Every .proto under proto/ loads with @grpc/proto-loader and includeDirs [proto] alone (no
// googleapis checkout), and an error's grpc-status-details-bin decodes to google.rpc.Status.
import assert from "node:assert/strict";
import test from "node:test";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { LOADER_OPTIONS, PROTO_DIR, loadSmsgw, protoFiles, statusDetails } from "../harness/protos.js";

test("proto/ holds ours and the google/rpc files they need", () => {
  const files = protoFiles();
  assert.ok(files.includes("smsgw/v1/messages.proto"));
  assert.ok(files.includes("smsgw/device/v1/device.proto"));
  assert.ok(files.includes("google/rpc/status.proto"));
});

test("each .proto loads on its own with includeDirs [proto]", () => {
  for (const file of protoFiles()) {
    assert.doesNotThrow(() => protoLoader.loadSync(file, LOADER_OPTIONS), file);
  }
});

test("all of them load together into grpc-js services", () => {
  const v1 = loadSmsgw().smsgw.v1;
  for (const name of ["AuthService", "MessageService", "DeviceService", "InboundService", "WebhookService", "AuditService"]) {
    assert.equal(typeof v1[name], "function", name);
    assert.ok(Object.keys(v1[name].service).length > 0, name);
  }
  const send = v1.MessageService.service.SendMessages;
  const result = send.responseDeserialize(send.responseSerialize({
    results: [{ error: { code: 3, message: "bad", details: [] } }],
  }));
  assert.equal(result.results[0].error.code, 3); // google.rpc.Status inside our own message
  assert.equal(result.results[0].result, "error"); // oneofs: true
});

test("statusDetails decodes a BadRequest from grpc-status-details-bin", () => {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => `${PROTO_DIR}${target}`;
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  const BadRequest = root.lookupType("google.rpc.BadRequest");
  const Status = root.lookupType("google.rpc.Status");
  const detail = BadRequest.encode({ field_violations: [{ field: "phone_numbers[0]", description: "not E.164" }] }).finish();
  const raw = Status.encode({
    code: 3, message: "bad", details: [{ type_url: "type.googleapis.com/google.rpc.BadRequest", value: detail }],
  }).finish();
  const metadata = new grpc.Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(raw));
  const status = statusDetails({ metadata });
  assert.equal(status.code, 3);
  assert.equal(status.details[0]["@type"], "google.rpc.BadRequest");
  assert.equal(status.details[0].field_violations[0].field, "phone_numbers[0]");
  assert.equal(statusDetails({ metadata: new grpc.Metadata() }), null);
});
