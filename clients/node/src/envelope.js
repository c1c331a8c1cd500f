// The smsgw1 end-to-end envelope, in Node with node:crypto only.
//
//   base64( "smsgw1" | salt[16] | iv[12] | AES-256-GCM(plaintext) | tag[16] )
//   key = PBKDF2-HMAC-SHA256(passphrase, salt, 100000 iterations, 32 bytes)
//
// Byte-compatible with smsgw_client.envelope (Python) and with the SMSGate snippets people
// already run: ../vectors/smsgw1.json is the contract both test suites check. Anything that
// cannot be opened throws EnvelopeError with a `reason` (not_base64, too_short, bad_magic,
// not_utf8, wrong_key_or_tampered); nothing returns garbage. Derived keys are cached per
// (passphrase, salt) because PBKDF2 is slow on purpose.
import crypto from "node:crypto";

export const MAGIC = Buffer.from("smsgw1", "ascii");
export const ITERATIONS = 100_000;
const SALT = 16;
const IV = 12;
const TAG = 16;
const HEADER = MAGIC.length + SALT + IV;
/** Bytes the envelope adds before base64 (an empty plaintext's envelope). */
export const OVERHEAD = HEADER + TAG;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const CACHE_SIZE = 64;

/** The envelope cannot be opened (or is not one); `reason` says which check failed. */
export class EnvelopeError extends Error {
  /** @param {string} reason @param {string} message */
  constructor(reason, message) {
    super(message);
    this.name = "EnvelopeError";
    this.reason = reason;
  }
}

/** @type {Map<string, Buffer>} */
const cache = new Map();
/** How many PBKDF2 derivations ran (tests read it to see the cache work). */
export const stats = { derivations: 0 };

/** @param {string} passphrase @param {Buffer} salt @returns {Buffer} */
function deriveKey(passphrase, salt) {
  if (typeof passphrase !== "string") throw new TypeError("passphrase must be a string");
  const slot = crypto.createHash("sha256").update(passphrase, "utf8").digest("hex") + ":" + salt.toString("hex");
  const found = cache.get(slot);
  if (found) {
    cache.delete(slot);
    cache.set(slot, found);
    return found;
  }
  stats.derivations += 1;
  const key = crypto.pbkdf2Sync(Buffer.from(passphrase, "utf8"), salt, ITERATIONS, 32, "sha256");
  cache.set(slot, key);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
  return key;
}

/**
 * Seal bytes. `salt` and `iv` are for test vectors only: a fresh random pair per message is
 * what keeps AES-GCM safe.
 * @param {string} passphrase @param {Uint8Array} plaintext
 * @param {{salt?: Uint8Array, iv?: Uint8Array}} [fixed]
 * @returns {string}
 */
export function seal(passphrase, plaintext, fixed = {}) {
  const salt = Buffer.from(fixed.salt ?? crypto.randomBytes(SALT));
  const iv = Buffer.from(fixed.iv ?? crypto.randomBytes(IV));
  if (salt.length !== SALT || iv.length !== IV) throw new RangeError(`salt must be ${SALT} bytes and iv ${IV} bytes`);
  const cipher = crypto.createCipheriv("aes-256-gcm", deriveKey(passphrase, salt), iv);
  const body = Buffer.concat([cipher.update(Buffer.from(plaintext)), cipher.final()]);
  return Buffer.concat([MAGIC, salt, iv, body, cipher.getAuthTag()]).toString("base64");
}

/** @param {string} passphrase @param {string} plaintext @returns {string} */
export function encrypt(passphrase, plaintext) {
  if (typeof plaintext !== "string") throw new TypeError("plaintext must be a string (encryptBytes for bytes)");
  return seal(passphrase, Buffer.from(plaintext, "utf8"));
}

/** @param {string} passphrase @param {Uint8Array} data @returns {string} */
export function encryptBytes(passphrase, data) {
  return seal(passphrase, data);
}

/** @param {string | Uint8Array} envelope @returns {Buffer} the raw envelope, its form checked */
function raw(envelope) {
  const text = (typeof envelope === "string" ? envelope : Buffer.from(envelope).toString("latin1")).trim();
  if (!BASE64.test(text)) throw new EnvelopeError("not_base64", "not an smsgw1 envelope: not base64");
  const buf = Buffer.from(text, "base64");
  if (buf.length < OVERHEAD) {
    throw new EnvelopeError("too_short", `not an smsgw1 envelope: ${buf.length} bytes, at least ${OVERHEAD} needed`);
  }
  if (!buf.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new EnvelopeError("bad_magic", "not an smsgw1 envelope: it does not start with smsgw1");
  }
  return buf;
}

/** The plaintext's length in bytes, from the envelope's form alone (what a server can check). */
export function checkEnvelope(envelope) {
  return raw(envelope).length - OVERHEAD;
}

/** @param {string} passphrase @param {Buffer} buf @returns {Buffer} */
function open(passphrase, buf) {
  const salt = buf.subarray(MAGIC.length, MAGIC.length + SALT);
  const iv = buf.subarray(MAGIC.length + SALT, HEADER);
  const decipher = crypto.createDecipheriv("aes-256-gcm", deriveKey(passphrase, salt), iv);
  decipher.setAuthTag(buf.subarray(buf.length - TAG));
  try {
    return Buffer.concat([decipher.update(buf.subarray(HEADER, buf.length - TAG)), decipher.final()]);
  } catch {
    throw new EnvelopeError("wrong_key_or_tampered", "cannot open the envelope: wrong passphrase, or it was changed");
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** @param {Buffer} plain @returns {string} */
function text(plain) {
  try {
    return utf8.decode(plain);
  } catch {
    throw new EnvelopeError("not_utf8", "the envelope opened, but holds bytes, not UTF-8 text");
  }
}

/** @param {string} passphrase @param {string | Uint8Array} envelope @returns {Buffer} */
export function decryptBytes(passphrase, envelope) {
  return open(passphrase, raw(envelope));
}

/** @param {string} passphrase @param {string | Uint8Array} envelope @returns {string} */
export function decrypt(passphrase, envelope) {
  return text(decryptBytes(passphrase, envelope));
}

/** Passphrases tried in order, newest first (a key log); new envelopes use the first. */
export class KeyRing {
  /** @param {string[]} passphrases */
  constructor(passphrases) {
    this.passphrases = [...passphrases];
    if (this.passphrases.length === 0) throw new RangeError("a key ring needs at least one passphrase");
  }

  /** @param {string} plaintext */
  encrypt(plaintext) {
    return encrypt(this.passphrases[0], plaintext);
  }

  /** @param {Uint8Array} data */
  encryptBytes(data) {
    return encryptBytes(this.passphrases[0], data);
  }

  /** @param {string | Uint8Array} envelope @returns {Buffer} */
  decryptBytes(envelope) {
    const buf = raw(envelope);
    for (const passphrase of this.passphrases) {
      try {
        return open(passphrase, buf);
      } catch (e) {
        if (!(e instanceof EnvelopeError)) throw e;
      }
    }
    throw new EnvelopeError(
      "wrong_key_or_tampered",
      `cannot open the envelope with any of ${this.passphrases.length} passphrases`,
    );
  }

  /** @param {string | Uint8Array} envelope @returns {string} */
  decrypt(envelope) {
    return text(this.decryptBytes(envelope));
  }

  toJSON() {
    return { passphrases: this.passphrases.length };
  }
}
