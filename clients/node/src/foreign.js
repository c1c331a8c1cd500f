// The other gateways' end-to-end formats, beside smsgw1 (the same as smsgw_client.foreign in
// Python; clients/vectors/smsgate.json and httpsms.json, made by those gateways' own clients,
// are the contract for both).
//
// SMSGate (android-sms-gateway clients with isEncrypted; the numbers are sealed too):
//     $aes-256-cbc/pbkdf2-sha1$i=<iterations>$<base64 salt[16]>$<base64 AES-256-CBC(PKCS#7(text))>
//     key = PBKDF2-HMAC-SHA1(passphrase, salt, iterations, 32 bytes); the salt is also the IV
// httpSMS (the `httpsms` package's cipher; only the content is sealed):
//     base64( iv[16] | AES-256-CFB128(text) ),  key = SHA-256(passphrase)
//
// Neither is authenticated: a wrong passphrase shows only as bad padding (SMSGate) or as bytes
// that are not UTF-8 (both), so a wrong key can, rarely, open into other valid text. Failures
// throw EnvelopeError with a reason: not_base64, too_short, bad_format, wrong_key_or_tampered.

import crypto from "node:crypto";

import { bytes, utf8 } from "./args.js";
import { EnvelopeError, KeyRing, MAGIC } from "./envelope.js";

export const SMSGATE_ALGORITHM = "aes-256-cbc/pbkdf2-sha1";
export const SMSGATE_PREFIX = `$${SMSGATE_ALGORITHM}$`;
/** SMSGate's clients' default iteration count. */
export const SMSGATE_ITERATIONS = 75_000;
/** More is refused: a sealed message must not cost a phone seconds of PBKDF2. */
export const SMSGATE_MAX_ITERATIONS = 1_000_000;
/** The formats unmarked ciphertext (strict base64, not smsgw1) may be taken to be. */
export const UNMARKED_FORMATS = Object.freeze(["httpsms"]);

const BLOCK = 16;
const SALT = 16;
const IV = 16;
const SMSGW1_B64 = Buffer.from(MAGIC).toString("base64"); // "smsgw1" is 6 bytes: 8 characters
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DIGITS = /^[0-9]{1,7}$/;
const ASCII_SPACE = new Set([0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c]);
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * @typedef {"smsgw1" | "smsgate" | "unmarked" | "unknown"} Format
 * @typedef {"httpsms"} UnmarkedFormat
 */

/** The ciphertext as text, ASCII whitespace at the ends stripped (as Python's helper does). */
function asText(ciphertext, what) {
  let text;
  if (typeof ciphertext === "string") text = ciphertext;
  else if (ciphertext instanceof Uint8Array) {
    const buf = bytes(ciphertext, "ciphertext");
    if (buf.some((b) => b > 0x7f)) throw new EnvelopeError("not_base64", `not ${what} ciphertext: not ASCII`);
    text = buf.toString("latin1");
  } else throw new TypeError("a ciphertext is a string, Uint8Array or Buffer");
  let start = 0;
  let end = text.length;
  while (start < end && ASCII_SPACE.has(text.charCodeAt(start))) start += 1;
  while (end > start && ASCII_SPACE.has(text.charCodeAt(end - 1))) end -= 1;
  return text.slice(start, end);
}

/** Strict base64 (Buffer.from(s, "base64") would skip junk instead). */
function b64(text, what) {
  if (!BASE64.test(text)) throw new EnvelopeError("not_base64", `not ${what} ciphertext: not base64`);
  return Buffer.from(text, "base64");
}

/**
 * Which format a ciphertext is in, by its form alone: "smsgw1", "smsgate", "unmarked" (other
 * strict base64 of at least 16 bytes: what httpSMS makes, but also any base64 text) or "unknown".
 * @param {string | Uint8Array} ciphertext
 * @returns {Format}
 */
export function recognise(ciphertext) {
  let text;
  try {
    text = asText(ciphertext, "any");
  } catch (e) {
    if (e instanceof EnvelopeError) return "unknown";
    throw e;
  }
  if (text.startsWith(SMSGATE_PREFIX)) return "smsgate";
  if (!BASE64.test(text)) return "unknown";
  if (text.startsWith(SMSGW1_B64)) return "smsgw1";
  const length = (text.length / 4) * 3 - (text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0);
  return length >= IV ? "unmarked" : "unknown";
}

// ---------------------------------------------------------------------------------------------
// SMSGate

/** @type {Map<string, Buffer>} PBKDF2-SHA1 keys by (sha256(passphrase), salt, iterations). */
const sha1Keys = new Map();
const SHA1_CACHE = 128;

/** @param {Buffer} secret @param {Buffer} salt @param {number} iterations */
function sha1Key(secret, salt, iterations) {
  const slot = `${crypto.createHash("sha256").update(secret).digest("hex")}:${salt.toString("hex")}:${iterations}`;
  let key = sha1Keys.get(slot);
  if (key === undefined) key = crypto.pbkdf2Sync(secret, salt, iterations, 32, "sha1");
  sha1Keys.delete(slot);
  sha1Keys.set(slot, key);
  while (sha1Keys.size > SHA1_CACHE) sha1Keys.delete(/** @type {string} */ (sha1Keys.keys().next().value));
  return key;
}

/** @returns {{iterations: number, salt: Buffer, body: Buffer}} */
function smsgateParts(ciphertext) {
  const chunks = asText(ciphertext, "SMSGate").split("$");
  // Exactly five: SMSGate's Python client reads the last two chunks, its app chunks 3 and 4.
  if (chunks.length !== 5 || chunks[0] !== "") {
    throw new EnvelopeError("bad_format", "not SMSGate ciphertext: $<algorithm>$<params>$<salt>$<data> expected");
  }
  if (chunks[1] !== SMSGATE_ALGORITHM) {
    throw new EnvelopeError("bad_format", `not SMSGate ciphertext: algorithm ${SMSGATE_ALGORITHM} expected`);
  }
  const params = new Map();
  for (const item of chunks[2].split(",")) {
    const at = item.indexOf("=");
    const name = at < 0 ? item : item.slice(0, at);
    if (at < 0 || params.has(name)) {
      throw new EnvelopeError("bad_format", "SMSGate ciphertext: parameters must be name=value, once each");
    }
    params.set(name, item.slice(at + 1));
  }
  const count = params.get("i") ?? "";
  if (!DIGITS.test(count) || Number(count) < 1 || Number(count) > SMSGATE_MAX_ITERATIONS) {
    throw new EnvelopeError("bad_format", `SMSGate ciphertext: i must be an iteration count 1..${SMSGATE_MAX_ITERATIONS}`);
  }
  const salt = b64(chunks[3], "SMSGate");
  const body = b64(chunks[4], "SMSGate");
  if (salt.length !== SALT) throw new EnvelopeError("bad_format", `SMSGate ciphertext: the salt must be ${SALT} bytes`);
  if (body.length === 0) throw new EnvelopeError("too_short", "SMSGate ciphertext: no data");
  if (body.length % BLOCK) throw new EnvelopeError("bad_format", "SMSGate ciphertext: the data must be whole AES blocks");
  return { iterations: Number(count), salt, body };
}

/**
 * Seal bytes as SMSGate's clients do. `salt` is for test vectors only: it is also the IV.
 * @param {string} passphrase
 * @param {Uint8Array} plaintext
 * @param {{iterations?: number, salt?: Uint8Array}} [options]
 * @returns {string}
 */
export function smsgateSeal(passphrase, plaintext, options) {
  const secret = utf8(passphrase, "passphrase");
  const plain = bytes(plaintext, "plaintext");
  const iterations = options?.iterations ?? SMSGATE_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > SMSGATE_MAX_ITERATIONS) {
    throw new RangeError(`iterations must be 1..${SMSGATE_MAX_ITERATIONS}`);
  }
  const salt = options?.salt === undefined ? crypto.randomBytes(SALT) : bytes(options.salt, "salt");
  if (salt.length !== SALT) throw new RangeError(`salt must be ${SALT} bytes`);
  const cipher = crypto.createCipheriv("aes-256-cbc", sha1Key(secret, salt, iterations), salt); // PKCS#7 by default
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return `${SMSGATE_PREFIX}i=${iterations}$${salt.toString("base64")}$${body.toString("base64")}`;
}

/**
 * Open an SMSGate ciphertext into bytes. Throws EnvelopeError.
 * @param {string} passphrase
 * @param {string | Uint8Array} ciphertext
 * @returns {Buffer}
 */
export function smsgateOpen(passphrase, ciphertext) {
  const secret = utf8(passphrase, "passphrase");
  const { iterations, salt, body } = smsgateParts(ciphertext);
  try {
    const decipher = crypto.createDecipheriv("aes-256-cbc", sha1Key(secret, salt, iterations), salt);
    return Buffer.concat([decipher.update(body), decipher.final()]); // final() checks the padding
  } catch {
    throw new EnvelopeError("wrong_key_or_tampered", "cannot open the SMSGate ciphertext: wrong passphrase, or it was changed");
  }
}

/**
 * Seal a text (UTF-8) as SMSGate's Encryptor does.
 * @param {string} passphrase
 * @param {string} text
 * @param {{iterations?: number}} [options]
 */
export function smsgateEncrypt(passphrase, text, options) {
  return smsgateSeal(passphrase, utf8(text, "text"), { iterations: options?.iterations });
}

/**
 * Open an SMSGate ciphertext into text. Throws EnvelopeError.
 * @param {string} passphrase
 * @param {string | Uint8Array} ciphertext
 */
export function smsgateDecrypt(passphrase, ciphertext) {
  return text(smsgateOpen(passphrase, ciphertext), "SMSGate");
}

/**
 * Check an SMSGate ciphertext's form without a key; returns the most plaintext bytes it can
 * hold (the padding takes 1 to 16). Throws EnvelopeError.
 * @param {string | Uint8Array} ciphertext
 */
export function smsgateCheck(ciphertext) {
  return smsgateParts(ciphertext).body.length - 1;
}

// ---------------------------------------------------------------------------------------------
// httpSMS

/** @param {string} passphrase */
function httpsmsKey(passphrase) {
  return crypto.createHash("sha256").update(utf8(passphrase, "passphrase")).digest();
}

function httpsmsRaw(ciphertext) {
  const raw = b64(asText(ciphertext, "httpSMS"), "httpSMS");
  if (raw.length < IV) throw new EnvelopeError("too_short", `not httpSMS ciphertext: ${raw.length} bytes, at least ${IV} needed`);
  return raw;
}

/**
 * Seal bytes as the httpsms package's cipher.encrypt does. `iv` is for test vectors only.
 * @param {string} passphrase
 * @param {Uint8Array} plaintext
 * @param {{iv?: Uint8Array}} [options]
 * @returns {string}
 */
export function httpsmsSeal(passphrase, plaintext, options) {
  const key = httpsmsKey(passphrase);
  const plain = bytes(plaintext, "plaintext");
  const iv = options?.iv === undefined ? crypto.randomBytes(IV) : bytes(options.iv, "iv");
  if (iv.length !== IV) throw new RangeError(`iv must be ${IV} bytes`);
  const cipher = crypto.createCipheriv("aes-256-cfb", key, iv);
  return Buffer.concat([iv, cipher.update(plain), cipher.final()]).toString("base64");
}

/**
 * Open an httpSMS ciphertext into bytes (any key "opens" CFB). Throws EnvelopeError.
 * @param {string} passphrase
 * @param {string | Uint8Array} ciphertext
 * @returns {Buffer}
 */
export function httpsmsOpen(passphrase, ciphertext) {
  const key = httpsmsKey(passphrase);
  const raw = httpsmsRaw(ciphertext);
  const decipher = crypto.createDecipheriv("aes-256-cfb", key, raw.subarray(0, IV));
  return Buffer.concat([decipher.update(raw.subarray(IV)), decipher.final()]);
}

/**
 * Seal a text (UTF-8) as `new HttpSms(apiKey).cipher.encrypt(passphrase, text)` does.
 * @param {string} passphrase
 * @param {string} text
 */
export function httpsmsEncrypt(passphrase, text) {
  return httpsmsSeal(passphrase, utf8(text, "text"));
}

/**
 * Open an httpSMS ciphertext into text; bytes that are not UTF-8 (the only sign of a wrong
 * passphrase) throw wrong_key_or_tampered where the httpsms package answers U+FFFD.
 * @param {string} passphrase
 * @param {string | Uint8Array} ciphertext
 */
export function httpsmsDecrypt(passphrase, ciphertext) {
  return text(httpsmsOpen(passphrase, ciphertext), "httpSMS");
}

/**
 * Check an httpSMS ciphertext's form without a key; returns its plaintext's length in bytes.
 * @param {string | Uint8Array} ciphertext
 */
export function httpsmsCheck(ciphertext) {
  return httpsmsRaw(ciphertext).length - IV;
}

// ---------------------------------------------------------------------------------------------
// Any of them, with a key ring

/** Both formats seal only text and have no tag: bytes that are not UTF-8 mean a wrong key. */
function text(plain, what) {
  try {
    return UTF8.decode(plain);
  } catch {
    throw new EnvelopeError("wrong_key_or_tampered", `cannot open the ${what} ciphertext: wrong passphrase, or it was changed`);
  }
}

/** @param {KeyRing | Iterable<string>} ring */
function ringOf(ring) {
  return ring instanceof KeyRing ? ring : new KeyRing(ring);
}

function firstThatOpens(ring, ciphertext, decrypt, what) {
  for (const passphrase of ring.passphrases) {
    try {
      return decrypt(passphrase, ciphertext);
    } catch (e) {
      if (!(e instanceof EnvelopeError) || e.reason !== "wrong_key_or_tampered") throw e; // a form error stays one
    }
  }
  throw new EnvelopeError("wrong_key_or_tampered", `cannot open the ${what} ciphertext with any of ${ring.size} passphrases`);
}

/**
 * Open a text in any format with a key ring (newest first): smsgw1 and SMSGate by their form;
 * other base64 as `unmarked` when named ("httpsms"), else refused as smsgw1 refuses it.
 * @param {KeyRing | Iterable<string>} ring
 * @param {string | Uint8Array} ciphertext
 * @param {{unmarked?: UnmarkedFormat}} [options]
 * @returns {string}
 */
export function openText(ring, ciphertext, options) {
  const keys = ringOf(ring);
  const found = recognise(ciphertext);
  const unmarked = options?.unmarked;
  if (found === "smsgate") return firstThatOpens(keys, ciphertext, smsgateDecrypt, "SMSGate");
  if (found === "unmarked" && unmarked !== undefined) {
    if (!UNMARKED_FORMATS.includes(unmarked)) throw new RangeError(`unmarked must be one of ${UNMARKED_FORMATS.join(", ")}`);
    return firstThatOpens(keys, ciphertext, httpsmsDecrypt, "httpSMS");
  }
  return keys.decrypt(ciphertext);
}

/**
 * Open a data SMS's payload: smsgw1 seals the bytes, SMSGate's clients the payload's base64
 * text (opened and decoded here). httpSMS has no data messages.
 * @param {KeyRing | Iterable<string>} ring
 * @param {string | Uint8Array} ciphertext
 * @returns {Buffer}
 */
export function openData(ring, ciphertext) {
  const keys = ringOf(ring);
  if (recognise(ciphertext) !== "smsgate") return keys.decryptBytes(ciphertext);
  const payload = asText(firstThatOpens(keys, ciphertext, smsgateDecrypt, "SMSGate"), "SMSGate");
  if (!BASE64.test(payload)) throw new EnvelopeError("not_base64", "the SMSGate data message opened, but its payload is not base64");
  return Buffer.from(payload, "base64");
}
