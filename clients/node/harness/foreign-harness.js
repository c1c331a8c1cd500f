#!/usr/bin/env node
// Our Node helpers for the other gateways' formats (src/foreign.js), for the Python cross tests
// (tests/integration/test_foreign_envelopes_node.py).
//
//   stdin:  a JSON array of {"op": "smsgate_encrypt" | "smsgate_decrypt" | "httpsms_encrypt" |
//                            "httpsms_decrypt", "passphrase": string, "input": string,
//                            "iterations"?: number (smsgate_encrypt)}
//   stdout: a JSON array, one per item, in order: {"output": string} or {"error": reason}
import { EnvelopeError } from "../src/envelope.js";
import { httpsmsDecrypt, httpsmsEncrypt, smsgateDecrypt, smsgateEncrypt } from "../src/foreign.js";
import { answerBatch } from "./batch.js";

const OPS = {
  smsgate_encrypt: (item) => smsgateEncrypt(item.passphrase, item.input, { iterations: item.iterations }),
  smsgate_decrypt: (item) => smsgateDecrypt(item.passphrase, item.input),
  httpsms_encrypt: (item) => httpsmsEncrypt(item.passphrase, item.input),
  httpsms_decrypt: (item) => httpsmsDecrypt(item.passphrase, item.input),
};

/** @param {any} item */
function run(item) {
  if (item === null || typeof item !== "object" || !Object.hasOwn(OPS, item.op)) return { error: "bad_request" };
  try {
    return { output: OPS[item.op](item) };
  } catch (e) {
    if (e instanceof EnvelopeError) return { error: e.reason };
    if (e instanceof TypeError || e instanceof RangeError) return { error: "bad_request" };
    throw e;
  }
}

await answerBatch("foreign-harness", "stdin must be a JSON array", run);
