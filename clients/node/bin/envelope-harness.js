#!/usr/bin/env node
// The cross-language test harness (tests/integration/test_envelope_node.py runs it).
//
//   stdin:  a JSON array of {"op": "encrypt" | "decrypt" | "encrypt_bytes" | "decrypt_bytes",
//                            "passphrase": string, "input": string}
//   stdout: a JSON array, one per item, in order: {"output": string} or {"error": reason}
//   exit 0
//
// encrypt_bytes takes hex (its plaintext); decrypt_bytes answers hex (lowercase). A reason is
// an EnvelopeError's: not_base64, too_short, bad_magic, not_utf8, wrong_key_or_tampered. An
// item the harness cannot run (unknown op, a field not a string, hex that is not hex) gets
// {"error": "bad_request"}, never a guess. Only stdin that is not a JSON array exits 2.
import { EnvelopeError, decrypt, decryptBytes, encrypt, encryptBytes } from "../src/envelope.js";

const HEX = /^(?:[0-9a-fA-F]{2})*$/;

/** @type {Record<string, (passphrase: string, input: string) => string>} */
const OPS = {
  encrypt: (p, input) => encrypt(p, input),
  decrypt: (p, input) => decrypt(p, input),
  encrypt_bytes: (p, input) => {
    if (!HEX.test(input)) throw new TypeError("input is not hex");
    return encryptBytes(p, Buffer.from(input, "hex"));
  },
  decrypt_bytes: (p, input) => decryptBytes(p, input).toString("hex"),
};

/** @param {unknown} item */
function run(item) {
  if (item === null || typeof item !== "object") return { error: "bad_request" };
  const { op, passphrase, input } = /** @type {Record<string, unknown>} */ (item);
  if (typeof op !== "string" || !Object.hasOwn(OPS, op) || typeof passphrase !== "string" || typeof input !== "string") {
    return { error: "bad_request" };
  }
  try {
    return { output: OPS[op](passphrase, input) };
  } catch (e) {
    if (e instanceof EnvelopeError) return { error: e.reason };
    if (e instanceof TypeError || e instanceof RangeError) return { error: "bad_request" };
    throw e;
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let batch;
try {
  batch = JSON.parse(Buffer.concat(chunks).toString("utf8"));
} catch {
  batch = undefined;
}
if (!Array.isArray(batch)) {
  process.stderr.write("envelope-harness: stdin must be a JSON array of {op, passphrase, input}\n");
  process.exit(2);
}
process.stdout.write(JSON.stringify(batch.map(run)) + "\n");
