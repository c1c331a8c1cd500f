#!/usr/bin/env node
// The cross-language test harness: reads a JSON array of {op, passphrase, input} from stdin,
// writes a JSON array of {output} or {error: reason} (one per item). Ops: encrypt, decrypt,
// encrypt_bytes (input hex), decrypt_bytes (output hex). Used by the Python test suite.
import { EnvelopeError, decrypt, decryptBytes, encrypt, encryptBytes } from "../src/envelope.js";

const OPS = {
  encrypt: (p, input) => encrypt(p, input),
  decrypt: (p, input) => decrypt(p, input),
  encrypt_bytes: (p, input) => encryptBytes(p, Buffer.from(input, "hex")),
  decrypt_bytes: (p, input) => decryptBytes(p, input).toString("hex"),
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const batch = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const results = batch.map(({ op, passphrase, input }) => {
  const run = OPS[op];
  if (!run) return { error: `unknown op ${op}` };
  try {
    return { output: run(passphrase, input) };
  } catch (e) {
    if (e instanceof EnvelopeError) return { error: e.reason };
    throw e;
  }
});
process.stdout.write(JSON.stringify(results));
