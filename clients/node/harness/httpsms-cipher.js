#!/usr/bin/env node
// httpSMS's own cipher (the `httpsms` npm package's CipherService, reached as it is documented:
// `new HttpSms(apiKey).cipher`), for scripts/gen-foreign-vectors and the Python cross tests.
//
//   stdin:  a JSON array of {"op": "encrypt" | "decrypt", "passphrase": string, "input": string}
//   stdout: a JSON array, one per item, in order: {"output": string} or {"error": message}
//
// Nothing here is ours: what comes back is exactly what the package returns (its decrypt
// never fails on a wrong passphrase, it answers replacement characters).
import HttpSms from "httpsms";
import { answerBatch } from "./batch.js";

const cipher = new HttpSms("not-used: the cipher makes no request").cipher;

/** @param {unknown} item */
function run(item) {
  if (item === null || typeof item !== "object") return { error: "bad_request" };
  const { op, passphrase, input } = /** @type {Record<string, unknown>} */ (item);
  if (typeof passphrase !== "string" || typeof input !== "string") return { error: "bad_request" };
  try {
    if (op === "encrypt") return { output: cipher.encrypt(passphrase, input) };
    if (op === "decrypt") return { output: cipher.decrypt(passphrase, input) };
  } catch (e) {
    return { error: String(e instanceof Error ? e.message : e) };
  }
  return { error: "bad_request" };
}

await answerBatch("httpsms-cipher", "stdin must be a JSON array of {op, passphrase, input}", run);
