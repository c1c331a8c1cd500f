// node --test: the shared vectors (the contract), every malformed case with Python's reasons,
// round trips, the key ring, the key cache, the async variants, the harness contract, and the
// SMSGate documentation's own Node code both ways.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";

import * as smsgw from "../src/envelope.js";

const { EnvelopeError, KeyRing, OVERHEAD, checkEnvelope, decryptBytes, seal, sealForKey, stats } = smsgw;

// ---- The SMSGate documentation's Node helpers, verbatim from the seed (e2e-envelope-smsgate001.txt).
import crypto from "node:crypto";
const ITER = 100_000;
const MAGIC = Buffer.from("smsgw1");
export function encrypt(passphrase, plaintext) {
const salt = crypto.randomBytes(16);
const iv = crypto.randomBytes(12);
const key = crypto.pbkdf2Sync(passphrase, salt, ITER, 32, "sha256");
const cipher = crypto.createCipheriv("aes-256-gcm", key, iv);
const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
const tag = cipher.getAuthTag();
return Buffer.concat([MAGIC, salt, iv, ct, tag]).toString("base64");
}
export function decrypt(passphrase, envelopeB64) {
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
// ---- end of the verbatim SMSGate code. Below, `encrypt`/`decrypt` are theirs, `smsgw.*` ours.

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const vectors = JSON.parse(readFileSync(here("../../vectors/smsgw1.json"), "utf8"));
const plain = (c) => ("plaintext" in c ? Buffer.from(c.plaintext, "utf8") : Buffer.from(c.data_hex, "hex"));
const reason = (r) => (e) => e instanceof EnvelopeError && e.reason === r;
const FORM_REASONS = new Set(["not_base64", "too_short", "bad_magic"]);

test("the vectors file has both kinds", () => {
  assert.ok(vectors.valid.length >= 7 && vectors.invalid.length >= 8);
});

for (const c of vectors.valid) {
  test(`vector ${c.name}: seal gives its envelope, decrypt its plaintext`, async () => {
    const salt = Buffer.from(c.salt, "hex");
    const iv = Buffer.from(c.iv, "hex");
    assert.equal(seal(c.passphrase, plain(c), { salt, iv }), c.envelope);
    assert.equal(await smsgw.sealAsync(c.passphrase, plain(c), { salt, iv }), c.envelope);
    assert.deepEqual(decryptBytes(c.passphrase, c.envelope), plain(c));
    assert.deepEqual(await smsgw.decryptBytesAsync(c.passphrase, c.envelope), plain(c));
    assert.equal(checkEnvelope(c.envelope), plain(c).length);
    if ("plaintext" in c) {
      assert.equal(smsgw.decrypt(c.passphrase, c.envelope), c.plaintext);
      assert.equal(await smsgw.decryptAsync(c.passphrase, c.envelope), c.plaintext);
      assert.equal(decrypt(c.passphrase, c.envelope), c.plaintext, "the SMSGate code opens the vector");
    } else {
      assert.throws(() => smsgw.decrypt(c.passphrase, c.envelope), reason("not_utf8"));
    }
  });
}

for (const c of vectors.invalid) {
  test(`invalid ${c.name}: EnvelopeError ${c.reason}`, async () => {
    assert.throws(() => smsgw.decrypt(c.passphrase, c.envelope), reason(c.reason));
    assert.throws(() => decryptBytes(c.passphrase, c.envelope), reason(c.reason));
    assert.throws(() => new KeyRing([c.passphrase]).decrypt(c.envelope), reason(c.reason));
    await assert.rejects(smsgw.decryptAsync(c.passphrase, c.envelope), reason(c.reason));
    if (FORM_REASONS.has(c.reason)) assert.throws(() => checkEnvelope(c.envelope), reason(c.reason));
    else assert.equal(typeof checkEnvelope(c.envelope), "number", "its form is fine; only the key can tell");
  });
}

test("bytes that are not UTF-8 are refused as text, never replaced", () => {
  for (const bad of [[0xff, 0xfe, 0x00], [0xc3], [0xed, 0xa0, 0x80], [0xe2, 0x82]]) {
    const sealed = smsgw.encryptBytes("pw", Buffer.from(bad));
    assert.deepEqual(decryptBytes("pw", sealed), Buffer.from(bad));
    assert.throws(() => smsgw.decrypt("pw", sealed), reason("not_utf8"));
  }
});

test("strict base64 and Python's whitespace rule (ASCII only, at the ends)", () => {
  const e = seal("pw", Buffer.from("hello world"), { salt: Buffer.alloc(16, 7), iv: Buffer.alloc(12, 8) });
  assert.equal(smsgw.decrypt("pw", ` \t\n${e}\r\n\v\f`), "hello world");
  assert.equal(smsgw.decrypt("pw", Buffer.from(e, "ascii")), "hello world", "bytes are taken too");
  assert.equal(smsgw.decrypt("pw", new Uint8Array(Buffer.from(`${e}\n`, "ascii"))), "hello world");
  const refused = {
    nbsp: `\u00a0${e}`, bom: `\ufeff${e}`, lineSeparator: `${e}\u2028`, innerSpace: `${e.slice(0, 8)} ${e.slice(8)}`,
    innerNewline: `${e.slice(0, 8)}\n${e.slice(8)}`, urlSafe: e.replace(/\+/g, "-").replace(/\//g, "_") + "-_",
    noPadding: e.replace(/=+$/, ""), paddingInside: `${e.slice(0, 8)}=${e.slice(8)}`, junkAppended: `${e}!`,
    threePads: "a===", lone: "=", two: "==", nonAscii: `${e}é`, nonAsciiBytes: Buffer.concat([Buffer.from(e), Buffer.of(0xe9)]),
  };
  for (const [name, bad] of Object.entries(refused)) {
    assert.throws(() => checkEnvelope(bad), reason("not_base64"), name);
    assert.throws(() => smsgw.decrypt("pw", bad), reason("not_base64"), name);
  }
  assert.throws(() => checkEnvelope("ab=="), reason("too_short"));
  assert.throws(() => checkEnvelope("   "), reason("too_short"));
});

test("checkEnvelope reads the form only: length, magic; no key", () => {
  const e = seal("pw", Buffer.alloc(123), { salt: Buffer.alloc(16), iv: Buffer.alloc(12) });
  assert.equal(checkEnvelope(e), 123);
  const raw = Buffer.from(e, "base64");
  assert.equal(checkEnvelope(raw.subarray(0, OVERHEAD).toString("base64")), 0);
  assert.throws(() => checkEnvelope(raw.subarray(0, OVERHEAD - 1).toString("base64")), reason("too_short"));
  const other = Buffer.from(raw);
  other[5] ^= 1;
  assert.throws(() => checkEnvelope(other.toString("base64")), reason("bad_magic"));
  assert.equal(OVERHEAD, 50);
});

test("ours and the SMSGate documentation's code open each other", () => {
  for (const t of ["hola mundo", "", "Ж🔐中", "Ваш код 🔐 424242 ✅", "x".repeat(700)]) {
    assert.equal(decrypt("my passphrase", smsgw.encrypt("my passphrase", t)), t);
    assert.equal(smsgw.decrypt("my passphrase", encrypt("my passphrase", t)), t);
    assert.equal(smsgw.decrypt("пароль ✓", encrypt("пароль ✓", t)), t, "non-ASCII passphrase");
  }
  assert.throws(() => smsgw.decrypt("other", encrypt("my passphrase", "x")), reason("wrong_key_or_tampered"));
});

test("random round trips (bytes and text), bounded", () => {
  const salts = Array.from({ length: 4 }, () => crypto.randomBytes(16));
  for (let i = 0; i < 300; i += 1) {
    const data = crypto.randomBytes(i % 211);
    const sealed = seal("round trip", data, { salt: salts[i % 4] });
    assert.deepEqual(decryptBytes("round trip", sealed), data);
    assert.equal(checkEnvelope(sealed), data.length);
    assert.equal(Buffer.from(sealed, "base64").length, OVERHEAD + data.length);
    // random text over the whole Unicode range (astral too, no lone surrogates)
    const text = Array.from({ length: i % 40 }, () => {
      const cp = crypto.randomInt(0x110000 - 0x800);
      return String.fromCodePoint(cp >= 0xd800 ? cp + 0x800 : cp);
    }).join("");
    assert.equal(smsgw.decrypt("round trip", seal("round trip", Buffer.from(text, "utf8"), { salt: salts[i % 4] })), text);
  }
  const fresh = new Set();
  for (let i = 0; i < 5; i += 1) {
    const e = smsgw.encrypt("pw", "same");
    assert.equal(smsgw.decrypt("pw", e), "same");
    fresh.add(Buffer.from(e, "base64").subarray(6, 34).toString("hex"));
  }
  assert.equal(fresh.size, 5, "a fresh salt and iv every time");
});

test("a flipped bit anywhere, or any truncation, is refused with an EnvelopeError", () => {
  const buf = Buffer.from(seal("pw", Buffer.from("secret"), { salt: Buffer.alloc(16, 1), iv: Buffer.alloc(12, 2) }), "base64");
  for (let i = 0; i < buf.length; i += 1) {
    for (const bit of [0x01, 0x80]) {
      const changed = Buffer.from(buf);
      changed[i] ^= bit;
      const expected = i < 6 ? "bad_magic" : "wrong_key_or_tampered";
      assert.throws(() => decryptBytes("pw", changed.toString("base64")), reason(expected), `byte ${i}`);
    }
  }
  for (let n = 0; n < buf.length; n += 1) {
    assert.throws(() => decryptBytes("pw", buf.subarray(0, n).toString("base64")), EnvelopeError, `${n} bytes`);
  }
});

test("junk never throws anything but EnvelopeError", () => {
  for (let i = 0; i < 400; i += 1) {
    const bytes = crypto.randomBytes(i % 120);
    const kinds = [bytes.toString("base64"), bytes.toString("latin1"), bytes.toString("utf8"), Buffer.concat([MAGIC, bytes]).toString("base64")];
    for (const junk of kinds) {
      try {
        smsgw.decrypt("pw", junk);
        assert.fail("junk opened");
      } catch (e) {
        assert.ok(e instanceof EnvelopeError, String(e));
        assert.ok(["not_base64", "too_short", "bad_magic", "wrong_key_or_tampered"].includes(e.reason), e.reason);
      }
    }
  }
});

test("wrong argument types are TypeErrors (not envelopes, not guesses)", () => {
  const e = smsgw.encrypt("pw", "x");
  assert.throws(() => smsgw.encrypt("pw", 42), TypeError);
  assert.throws(() => smsgw.encrypt(undefined, "x"), TypeError);
  assert.throws(() => smsgw.encryptBytes("pw", "00ff"), TypeError, "bytes must be bytes, not a string");
  assert.throws(() => smsgw.encryptBytes("pw", [0, 255]), TypeError);
  assert.throws(() => smsgw.decrypt(null, e), TypeError);
  assert.throws(() => smsgw.decrypt("pw", 42), TypeError);
  assert.throws(() => smsgw.decrypt("pw", null), TypeError);
  // A lone surrogate has no UTF-8 form: Python refuses it; Buffer would quietly make it U+FFFD.
  assert.throws(() => smsgw.encrypt("\ud800", "x"), TypeError);
  assert.throws(() => smsgw.encrypt("pw", "a\udc00b"), TypeError);
  assert.throws(() => seal("pw", Buffer.alloc(1), { salt: Buffer.alloc(15) }), RangeError);
  assert.throws(() => seal("pw", Buffer.alloc(1), { iv: Buffer.alloc(16) }), RangeError);
  assert.deepEqual(decryptBytes("pw", smsgw.encryptBytes("pw", new Uint8Array([1, 2, 3]))), Buffer.from([1, 2, 3]));
  const view = Buffer.from([9, 1, 2, 3, 9]).subarray(1, 4);
  assert.deepEqual(decryptBytes("pw", smsgw.encryptBytes("pw", view)), Buffer.from([1, 2, 3]), "a view seals its own bytes only");
});

test("key ring: tried in order, the first seals, one error when none opens", () => {
  const old = smsgw.encrypt("2025 passphrase", "old message");
  const current = smsgw.encrypt("2026 passphrase", "new message");
  const ring = new KeyRing(["2026 passphrase", "2025 passphrase"]);
  assert.equal(ring.decrypt(old), "old message");
  assert.equal(ring.decrypt(current), "new message");
  assert.equal(smsgw.decrypt("2026 passphrase", ring.encrypt("new")), "new", "encrypts with the first");
  assert.throws(() => smsgw.decrypt("2025 passphrase", ring.encrypt("new")), reason("wrong_key_or_tampered"));
  assert.deepEqual(ring.decryptBytes(ring.encryptBytes(Buffer.from([1]))), Buffer.from([1]));

  // order, seen through the key cache: a fresh salt costs one derivation per passphrase tried
  const salt = crypto.randomBytes(16);
  const byOld = seal("2025 passphrase", Buffer.from("o"), { salt });
  smsgw.clearKeyCache();
  assert.equal(ring.decrypt(byOld), "o");
  assert.equal(stats.derivations, 2, "tried 2026 first, then 2025");
  const salt2 = crypto.randomBytes(16);
  const byNew = seal("2026 passphrase", Buffer.from("n"), { salt: salt2 });
  smsgw.clearKeyCache();
  assert.equal(ring.decrypt(byNew), "n");
  assert.equal(stats.derivations, 1, "stopped at the first that opens");

  assert.throws(() => new KeyRing(["other", "another"]).decrypt(old), reason("wrong_key_or_tampered"));
  assert.throws(() => ring.decrypt("not base64!"), reason("not_base64"));
  assert.throws(() => ring.decrypt(smsgw.encryptBytes("2026 passphrase", Buffer.of(0xff))), reason("not_utf8"));
  assert.throws(() => new KeyRing([]), RangeError);
  assert.throws(() => new KeyRing("a passphrase"), TypeError, "a string is not a list of passphrases");
  assert.throws(() => new KeyRing(["ok", 3]), TypeError);
  assert.deepEqual(new KeyRing(new Set(["a", "b"])).passphrases, ["a", "b"]);
  assert.ok(Object.isFrozen(ring.passphrases));
  assert.equal(ring.size, 2);
  // never in logs
  assert.equal(JSON.stringify(ring), '{"passphrases":2}');
  assert.equal(inspect(ring), "KeyRing(<2 passphrases>)");
  assert.ok(!inspect({ ring }).includes("2026"));
  assert.equal(String(ring), "KeyRing(<2 passphrases>)");
});

test("derived keys are cached per passphrase and salt, in a bounded LRU", async () => {
  smsgw.clearKeyCache();
  const salt = crypto.randomBytes(16);
  const first = seal("batch", Buffer.from("m0"), { salt });
  assert.equal(stats.derivations, 1);
  const batch = Array.from({ length: 20 }, (_, i) => seal("batch", Buffer.from(`m${i}`), { salt }));
  for (const e of batch) smsgw.decrypt("batch", e);
  await smsgw.decryptAsync("batch", first);
  assert.equal(stats.derivations, 1, "one PBKDF2 for the whole batch, sync and async");
  assert.ok(stats.hits >= 41);
  smsgw.decrypt("other", seal("other", Buffer.from("x"), { salt }));
  assert.equal(stats.derivations, 2, "another passphrase, same salt: another key");

  // bounded: 64 keys; the least recently used goes first
  smsgw.clearKeyCache();
  const salts = Array.from({ length: 65 }, () => crypto.randomBytes(16));
  const sealed = salts.map((s) => seal("lru", Buffer.from("x"), { salt: s }));
  assert.equal(stats.derivations, 65);
  assert.equal(stats.size, 64);
  smsgw.decrypt("lru", sealed[64]); // newest: cached
  assert.equal(stats.derivations, 65);
  smsgw.decrypt("lru", sealed[0]); // the oldest was evicted
  assert.equal(stats.derivations, 66);
  assert.equal(stats.size, 64);
});

test("async variants match the sync ones", async () => {
  const e = await smsgw.encryptAsync("pw", "Ваш код 🔐");
  assert.equal(smsgw.decrypt("pw", e), "Ваш код 🔐");
  assert.equal(await smsgw.decryptAsync("pw", smsgw.encrypt("pw", "x")), "x");
  const b = await smsgw.encryptBytesAsync("pw", Buffer.of(0, 255));
  assert.deepEqual(await smsgw.decryptBytesAsync("pw", b), Buffer.of(0, 255));
  await assert.rejects(smsgw.decryptAsync("other", e), reason("wrong_key_or_tampered"));
  await assert.rejects(smsgw.decryptAsync("pw", "!!"), reason("not_base64"));
  await assert.rejects(smsgw.decryptAsync("pw", b), reason("not_utf8"));
  await assert.rejects(smsgw.encryptAsync("pw", 1), TypeError);
});

test("sealForKey matches Python's seal_for_key and repeats itself", () => {
  // Computed with smsgw_client.envelope.seal_for_key (clients/python).
  const a = sealForKey("correct horse battery staple", Buffer.from("Your code is 424242"), "idem-2026-0001");
  assert.equal(a, "c21zZ3cxoXWBbhg/HZdcpAV847swcGQiG1f4qorA7oVQ6YqmNFIXTNaaq1g+gXzV/y4JDj1miyF2j4dXYQVOgghb+DV9");
  const b = sealForKey("пароль ✓", Buffer.from([...Array(10).keys()]), "ключ");
  assert.equal(b, "c21zZ3cxQ2Fi7yPJ9hcrzjsmKUdiPS+BtRPcySXF/Sy9TTcauBCnnnUSq4ulNMVIFlLS0LCRJIl78cH1");
  // Length-prefixed key: ("a", "b\0c") and ("a\0b", "c") must not share a salt and IV.
  assert.notEqual(
    sealForKey("pw", Buffer.from("b\0c"), "a").slice(0, 60),
    sealForKey("pw", Buffer.from("c"), "a\0b").slice(0, 60),
  );
  assert.equal(sealForKey("pw", Buffer.from("m"), "k1"), sealForKey("pw", Buffer.from("m"), "k1"));
  assert.notEqual(sealForKey("pw", Buffer.from("m"), "k1"), sealForKey("pw", Buffer.from("m"), "k2"));
  assert.notEqual(sealForKey("pw", Buffer.from("m"), "k1"), sealForKey("pw", Buffer.from("n"), "k1"));
  assert.equal(smsgw.decrypt("pw", sealForKey("pw", Buffer.from("m"), "k1")), "m");
});

test("MAGIC is a copy: changing it changes nothing", () => {
  smsgw.MAGIC[0] = 0x21;
  try {
    assert.equal(smsgw.decrypt("pw", smsgw.encrypt("pw", "still fine")), "still fine");
  } finally {
    smsgw.MAGIC[0] = 0x73;
  }
});

const HARNESS = here("../bin/envelope-harness.js");
const harness = (input) => spawnSync(process.execPath, [HARNESS], { input, encoding: "utf8", timeout: 60_000 });

test("the harness speaks the cross-test contract", () => {
  const v = vectors.valid.find((c) => c.name === "data-bytes");
  const batch = [
    { op: "encrypt", passphrase: "pw", input: "héllo 🔐" },
    { op: "encrypt_bytes", passphrase: "pw", input: "00FF10" },
    { op: "decrypt", passphrase: vectors.valid[0].passphrase, input: vectors.valid[0].envelope },
    { op: "decrypt_bytes", passphrase: v.passphrase, input: v.envelope },
    { op: "encrypt_bytes", passphrase: "pw", input: "" },
    { op: "decrypt", passphrase: "pw", input: "nope!" },
    { op: "decrypt", passphrase: "pw", input: "" },
    { op: "decrypt", passphrase: "wrong", input: vectors.valid[0].envelope },
    { op: "decrypt", passphrase: v.passphrase, input: v.envelope },
    { op: "decrypt_bytes", passphrase: "pw", input: vectors.invalid.find((c) => c.reason === "bad_magic").envelope },
  ];
  const done = harness(JSON.stringify(batch));
  assert.equal(done.status, 0, done.stderr);
  const out = JSON.parse(done.stdout);
  assert.equal(out.length, batch.length);
  assert.equal(smsgw.decrypt("pw", out[0].output), "héllo 🔐");
  assert.deepEqual(decryptBytes("pw", out[1].output), Buffer.from([0, 255, 16]));
  assert.deepEqual(out[2], { output: vectors.valid[0].plaintext });
  assert.deepEqual(out[3], { output: v.data_hex }, "hex out, lowercase");
  assert.equal(checkEnvelope(out[4].output), 0);
  assert.deepEqual(out.slice(5), [
    { error: "not_base64" }, { error: "too_short" }, { error: "wrong_key_or_tampered" }, { error: "not_utf8" }, { error: "bad_magic" },
  ]);
});

test("the harness answers bad_request for items it cannot run, and exits 2 only for a bad batch", () => {
  const batch = [
    { op: "encrypt_bytes", passphrase: "pw", input: "abc" }, // odd hex: never truncated
    { op: "encrypt_bytes", passphrase: "pw", input: "zz" },
    { op: "frobnicate", passphrase: "pw", input: "x" },
    { op: "toString", passphrase: "pw", input: "x" },
    { op: "encrypt", passphrase: null, input: "x" },
    { op: "encrypt", passphrase: "pw", input: 5 },
    { op: "encrypt", passphrase: "\ud800", input: "x" },
    "not an object",
    { op: "encrypt", passphrase: "pw", input: "ok" },
  ];
  const done = harness(JSON.stringify(batch));
  assert.equal(done.status, 0, done.stderr);
  const out = JSON.parse(done.stdout);
  assert.deepEqual(out.slice(0, 8), Array(8).fill({ error: "bad_request" }));
  assert.equal(smsgw.decrypt("pw", out[8].output), "ok");
  assert.deepEqual(JSON.parse(harness("[]").stdout), []);
  for (const bad of ["", "{}", "not json"]) assert.equal(harness(bad).status, 2, bad);
});
