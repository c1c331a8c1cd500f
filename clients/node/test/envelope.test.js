// node --test: the shared vectors, every malformed case, round trips, the key ring, the key
// cache, the harness contract, and the SMSGate documentation's own code both ways.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  EnvelopeError, KeyRing, OVERHEAD, checkEnvelope, decrypt, decryptBytes, encrypt, encryptBytes, seal, stats,
} from "../src/envelope.js";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const vectors = JSON.parse(readFileSync(here("../../vectors/smsgw1.json"), "utf8"));
const plain = (c) => ("plaintext" in c ? Buffer.from(c.plaintext, "utf8") : Buffer.from(c.data_hex, "hex"));

// The SMSGate documentation's Node helpers, verbatim in substance (seed file).
const ITER = 100_000;
const MAGIC = Buffer.from("smsgw1");
function referenceEncrypt(passphrase, plaintext) {
  const salt = crypto.randomBytes(16);
  const iv = crypto.randomBytes(12);
  const key = crypto.pbkdf2Sync(passphrase, salt, ITER, 32, "sha256");
  const cipher = crypto.createCipheriv("aes-256-gcm", key, iv);
  const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  const tag = cipher.getAuthTag();
  return Buffer.concat([MAGIC, salt, iv, ct, tag]).toString("base64");
}
function referenceDecrypt(passphrase, envelopeB64) {
  const buf = Buffer.from(envelopeB64, "base64");
  if (!buf.slice(0, 6).equals(MAGIC)) throw new Error("bad magic");
  const salt = buf.slice(6, 22);
  const iv = buf.slice(22, 34);
  const tag = buf.slice(buf.length - 16);
  const ct = buf.slice(34, buf.length - 16);
  const key = crypto.pbkdf2Sync(passphrase, salt, ITER, 32, "sha256");
  const d = crypto.createDecipheriv("aes-256-gcm", key, iv);
  d.setAuthTag(tag);
  return Buffer.concat([d.update(ct), d.final()]).toString("utf8");
}

for (const c of vectors.valid) {
  test(`vector ${c.name}: seal gives its envelope, decrypt its plaintext`, () => {
    const salt = Buffer.from(c.salt, "hex");
    const iv = Buffer.from(c.iv, "hex");
    assert.equal(seal(c.passphrase, plain(c), { salt, iv }), c.envelope);
    assert.deepEqual(decryptBytes(c.passphrase, c.envelope), plain(c));
    assert.equal(checkEnvelope(c.envelope), plain(c).length);
    if ("plaintext" in c) {
      assert.equal(decrypt(c.passphrase, c.envelope), c.plaintext);
      assert.equal(referenceDecrypt(c.passphrase, c.envelope), c.plaintext);
    }
  });
}

for (const c of vectors.invalid) {
  test(`invalid ${c.name}: EnvelopeError ${c.reason}`, () => {
    assert.throws(() => decrypt(c.passphrase, c.envelope), (e) => e instanceof EnvelopeError && e.reason === c.reason);
    assert.throws(() => decryptBytes(c.passphrase, c.envelope), EnvelopeError);
  });
}

test("bytes that are not UTF-8 are refused as text", () => {
  const sealed = encryptBytes("pw", Buffer.from([0xff, 0xfe, 0x00]));
  assert.deepEqual(decryptBytes("pw", sealed), Buffer.from([0xff, 0xfe, 0x00]));
  assert.throws(() => decrypt("pw", sealed), (e) => e.reason === "not_utf8");
});

test("ours and the SMSGate reference open each other", () => {
  for (const t of ["hola mundo", "", "Ж🔐中", "x".repeat(700)]) {
    assert.equal(referenceDecrypt("my passphrase", encrypt("my passphrase", t)), t);
    assert.equal(decrypt("my passphrase", referenceEncrypt("my passphrase", t)), t);
  }
});

test("random round trips, fresh salt and iv each time", () => {
  const salts = new Set();
  for (let i = 0; i < 200; i += 1) {
    const data = crypto.randomBytes(i % 97);
    const sealed = seal("round trip", data, { salt: Buffer.alloc(16, i % 4) });
    assert.deepEqual(decryptBytes("round trip", sealed), data);
    assert.equal(Buffer.from(sealed, "base64").length, OVERHEAD + data.length);
  }
  for (let i = 0; i < 5; i += 1) salts.add(Buffer.from(encrypt("pw", "same"), "base64").subarray(6, 22).toString("hex"));
  assert.equal(salts.size, 5);
});

test("a flipped bit anywhere is refused", () => {
  const buf = Buffer.from(seal("pw", Buffer.from("secret"), { salt: Buffer.alloc(16, 1), iv: Buffer.alloc(12, 2) }), "base64");
  for (let i = 0; i < buf.length; i += 1) {
    const changed = Buffer.from(buf);
    changed[i] ^= 0x01;
    assert.throws(() => decryptBytes("pw", changed.toString("base64")), EnvelopeError);
  }
});

test("junk never throws anything but EnvelopeError", () => {
  for (let i = 0; i < 300; i += 1) {
    const junk = i % 2 ? crypto.randomBytes(i % 120).toString("base64") : crypto.randomBytes(i % 120).toString("latin1");
    try {
      decrypt("pw", junk);
    } catch (e) {
      assert.ok(e instanceof EnvelopeError, String(e));
    }
  }
});

test("key ring: newest first, every passphrase tried, one error", () => {
  const old = encrypt("2025 passphrase", "old message");
  const ring = new KeyRing(["2026 passphrase", "2025 passphrase"]);
  assert.equal(ring.decrypt(old), "old message");
  assert.equal(decrypt("2026 passphrase", ring.encrypt("new")), "new");
  assert.deepEqual(ring.decryptBytes(ring.encryptBytes(Buffer.from([1]))), Buffer.from([1]));
  assert.throws(() => new KeyRing(["other"]).decrypt(old), (e) => e.reason === "wrong_key_or_tampered");
  assert.throws(() => ring.decrypt("not base64!"), (e) => e.reason === "not_base64");
  assert.equal(JSON.stringify(ring), '{"passphrases":2}');
  assert.throws(() => new KeyRing([]), RangeError);
});

test("derived keys are cached per passphrase and salt", () => {
  const salt = crypto.randomBytes(16);
  const batch = Array.from({ length: 20 }, (_, i) => seal("batch", Buffer.from(`m${i}`), { salt }));
  const before = stats.derivations;
  for (const e of batch) decrypt("batch", e);
  assert.equal(stats.derivations, before, "sealing derived the key once; opening the batch derives none");
  decrypt("other", seal("other", Buffer.from("x"), { salt }));
  assert.equal(stats.derivations, before + 1);
});

test("the harness speaks the cross-test contract", () => {
  const batch = [
    { op: "encrypt", passphrase: "pw", input: "héllo" },
    { op: "encrypt_bytes", passphrase: "pw", input: "00ff" },
    { op: "decrypt", passphrase: "pw", input: "nope!" },
  ];
  const done = spawnSync(process.execPath, [here("../bin/envelope-harness.js")], { input: JSON.stringify(batch) });
  assert.equal(done.status, 0, String(done.stderr));
  const out = JSON.parse(String(done.stdout));
  assert.equal(decrypt("pw", out[0].output), "héllo");
  assert.deepEqual(decryptBytes("pw", out[1].output), Buffer.from([0, 255]));
  assert.deepEqual(out[2], { error: "not_base64" });
});
