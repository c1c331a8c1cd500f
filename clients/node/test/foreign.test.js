// node --test: the other gateways' formats (src/foreign.js) against the vectors their own
// clients made (../vectors/smsgate.json, httpsms.json), and against httpSMS's own cipher (the
// httpsms npm package, a devDependency) in both directions.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import HttpSms from "httpsms";

import { EnvelopeError, KeyRing, encrypt, encryptBytes } from "../src/envelope.js";
import * as foreign from "../src/foreign.js";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const smsgate = JSON.parse(readFileSync(here("../../vectors/smsgate.json"), "utf8"));
const httpsms = JSON.parse(readFileSync(here("../../vectors/httpsms.json"), "utf8"));
const reason = (r) => (e) => e instanceof EnvelopeError && e.reason === r;
const library = new HttpSms("not-used").cipher; // httpSMS's own CipherService
const PASSPHRASE = "correct horse battery staple";
const TEXTS = ["This is a sample text message", "", "Ваш код 🔐 ✅", "你好，世界", "x".repeat(1600), "+15551234567"];

test("the vectors were made by the other gateways' clients", () => {
  assert.match(smsgate.generated_by, /^android-sms-gateway 4\.3\.3/);
  assert.match(httpsms.generated_by, /^httpsms 0\.0\.4/);
});

for (const c of smsgate.valid) {
  test(`smsgate vector ${c.name}: opens, and seals byte for byte`, () => {
    assert.equal(foreign.recognise(c.ciphertext), "smsgate");
    assert.equal(foreign.smsgateDecrypt(c.passphrase, c.ciphertext), c.plaintext);
    const sealed = foreign.smsgateSeal(c.passphrase, Buffer.from(c.plaintext, "utf8"), {
      iterations: c.iterations,
      salt: Buffer.from(c.salt, "hex"),
    });
    assert.equal(sealed, c.ciphertext);
    assert.ok(foreign.smsgateCheck(c.ciphertext) >= Buffer.byteLength(c.plaintext));
    assert.equal(foreign.openText(["an older one", c.passphrase], c.ciphertext), c.plaintext);
    if (c.data_hex !== undefined) assert.deepEqual(foreign.openData([c.passphrase], c.ciphertext), Buffer.from(c.data_hex, "hex"));
  });
}

for (const c of smsgate.invalid) {
  test(`smsgate invalid vector ${c.name}: ${c.reason}`, () => {
    assert.throws(() => foreign.smsgateDecrypt(c.passphrase, c.ciphertext), reason(c.reason));
  });
}

for (const c of httpsms.valid) {
  test(`httpsms vector ${c.name}: opens, and seals byte for byte`, () => {
    assert.equal(foreign.recognise(c.ciphertext), "unmarked");
    assert.equal(foreign.httpsmsDecrypt(c.passphrase, c.ciphertext), c.plaintext);
    assert.equal(foreign.httpsmsSeal(c.passphrase, Buffer.from(c.plaintext, "utf8"), { iv: Buffer.from(c.iv, "hex") }), c.ciphertext);
    assert.equal(foreign.httpsmsCheck(c.ciphertext), Buffer.byteLength(c.plaintext));
    assert.equal(foreign.openText([c.passphrase], c.ciphertext, { unmarked: "httpsms" }), c.plaintext);
  });
}

for (const c of httpsms.invalid) {
  test(`httpsms invalid vector ${c.name}: ${c.reason}`, () => {
    assert.throws(() => foreign.httpsmsDecrypt(c.passphrase, c.ciphertext), reason(c.reason));
  });
}

test("the httpsms package seals and we open", () => {
  for (const t of TEXTS) assert.equal(foreign.httpsmsDecrypt("Password123", library.encrypt("Password123", t)), t);
  assert.equal(foreign.httpsmsDecrypt("пароль ✓", library.encrypt("пароль ✓", "non-ASCII key")), "non-ASCII key");
});

test("we seal and the httpsms package opens", () => {
  for (const t of TEXTS) assert.equal(library.decrypt("Password123", foreign.httpsmsEncrypt("Password123", t)), t);
  assert.equal(library.decrypt("пароль ✓", foreign.httpsmsEncrypt("пароль ✓", "non-ASCII key")), "non-ASCII key");
});

test("a wrong passphrase: the package answers replacement characters, we refuse", () => {
  const c = httpsms.invalid[0];
  assert.match(library.decrypt(c.passphrase, c.ciphertext), /\uFFFD/);
  assert.throws(() => foreign.httpsmsDecrypt(c.passphrase, c.ciphertext), reason("wrong_key_or_tampered"));
});

test("recognise tells the formats apart", () => {
  assert.equal(foreign.recognise(encrypt(PASSPHRASE, "hi")), "smsgw1");
  assert.equal(foreign.recognise(Buffer.from(encrypt(PASSPHRASE, "hi") + "\n")), "smsgw1");
  assert.equal(foreign.recognise(Buffer.from(smsgate.valid[0].ciphertext)), "smsgate");
  assert.equal(foreign.recognise(foreign.httpsmsEncrypt("k", "hi")), "unmarked");
  for (const other of ["", "hello world", "aGk=", "Ünïcode", "$rsa-oaep$x$y$z", "c21zZ3cx!"]) {
    assert.equal(foreign.recognise(other), "unknown", other);
  }
  assert.equal(foreign.recognise(Buffer.from([0xff, 0xfe])), "unknown");
});

test("openText takes any format with a key ring; unmarked only when named", () => {
  const ring = new KeyRing(["newest", PASSPHRASE]);
  assert.equal(foreign.openText(ring, encrypt(PASSPHRASE, "smsgw1 text")), "smsgw1 text");
  assert.equal(foreign.openText(ring, foreign.smsgateEncrypt(PASSPHRASE, "smsgate text", { iterations: 1000 })), "smsgate text");
  const sealed = foreign.httpsmsEncrypt("newest", "an httpSMS text");
  assert.equal(foreign.openText(ring, sealed, { unmarked: "httpsms" }), "an httpSMS text");
  assert.throws(() => foreign.openText(ring, sealed), (e) => e instanceof EnvelopeError && ["too_short", "bad_magic"].includes(e.reason));
  assert.throws(() => foreign.openText(ring, sealed, { unmarked: "smsgate" }), RangeError);
  assert.throws(
    () => foreign.openText(["a", "b"], foreign.smsgateEncrypt(PASSPHRASE, "x", { iterations: 10 })),
    (e) => reason("wrong_key_or_tampered")(e) && /any of 2/.test(e.message),
  );
});

test("openData: SMSGate's base64 payloads and smsgw1 bytes", () => {
  const payload = Buffer.from(Array.from({ length: 40 }, (_, i) => i));
  const sealed = foreign.smsgateEncrypt(PASSPHRASE, payload.toString("base64"), { iterations: 10 });
  assert.deepEqual(foreign.openData([PASSPHRASE], sealed), payload);
  assert.throws(() => foreign.openData([PASSPHRASE], foreign.smsgateEncrypt(PASSPHRASE, "not base64!", { iterations: 10 })), reason("not_base64"));
  assert.deepEqual(foreign.openData([PASSPHRASE], encryptBytes(PASSPHRASE, payload)), payload);
});

test("seal arguments are checked", () => {
  assert.throws(() => foreign.smsgateSeal(PASSPHRASE, Buffer.from("x"), { salt: Buffer.alloc(8) }), RangeError);
  for (const iterations of [0, 1_000_001, 1.5]) {
    assert.throws(() => foreign.smsgateSeal(PASSPHRASE, Buffer.from("x"), { iterations }), RangeError);
  }
  assert.throws(() => foreign.httpsmsSeal(PASSPHRASE, Buffer.from("x"), { iv: Buffer.alloc(12) }), RangeError);
  assert.throws(() => foreign.httpsmsEncrypt(PASSPHRASE, "lone \ud800 surrogate"), TypeError);
  assert.throws(() => foreign.smsgateDecrypt(PASSPHRASE, 42), TypeError);
  assert.notEqual(foreign.httpsmsEncrypt(PASSPHRASE, "same"), foreign.httpsmsEncrypt(PASSPHRASE, "same"));
});

test("the package exports ./foreign", async () => {
  const viaExports = await import("smsgw-envelope/foreign");
  assert.equal(viaExports.recognise, foreign.recognise);
});
