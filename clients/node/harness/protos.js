// Loads smsgw's .proto files the way README "For client developers" shows, and decodes the
// google.rpc.Status an error carries in grpc-status-details-bin. Used by the gRPC harness and by
// test/proto-load.test.js, so the documented snippet is the tested one.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

export const PROTO_DIR = fileURLToPath(new URL("../../../proto/", import.meta.url));

// proto/ holds google/rpc/*.proto too; google/protobuf/* (well-known types) ship with proto-loader.
export const LOADER_OPTIONS = Object.freeze({
  keepCase: true, // field names as in the .proto (access_token), not camelCase
  longs: String, // (u)int64 such as Timestamp.seconds and event_id: decimal strings, no precision loss
  enums: String, // "PENDING", not 1
  defaults: true, // unset fields present with their default value
  oneofs: true, // a virtual field names the oneof member that is set (content: "text_message")
  includeDirs: [PROTO_DIR],
});

/** Every .proto under `dir`, relative to it ("smsgw/v1/messages.proto"), sorted. */
export function protoFiles(dir = PROTO_DIR, prefix = "") {
  const found = [];
  for (const entry of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const name = prefix + entry.name;
    if (entry.isDirectory()) found.push(...protoFiles(dir, name + "/"));
    else if (name.endsWith(".proto")) found.push(name);
  }
  return found.sort();
}

/** All of smsgw's services and messages as a grpc-js package object (smsgw.v1.AuthService, …). */
export function loadSmsgw(files = protoFiles()) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(files, LOADER_OPTIONS));
}

let errorTypes;

/** google.rpc.Status and the error-detail types, for decoding (proto-loader builds no decoders for
 * messages outside a service's methods, so this reads the same files with protobufjs). */
function errorRoot() {
  if (errorTypes === undefined) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
    root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
    errorTypes = root;
  }
  return errorTypes;
}

/** A grpc-js error's google.rpc.Status (code, message, details decoded by their type URL), or null
 * when the server sent none. */
export function statusDetails(error) {
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw === undefined) return null;
  const root = errorRoot();
  const status = root.lookupType("google.rpc.Status").decode(raw);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => {
      const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
      const type = root.lookupType(name);
      return { "@type": name, ...type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true }) };
    }),
  };
}
