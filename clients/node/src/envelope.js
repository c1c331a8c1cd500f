// The smsgw1 end-to-end envelope, for Node (only `node:` built-ins).
//
//     base64( "smsgw1" | salt[16] | iv[12] | AES-256-GCM(plaintext) | tag[16] )
//     key = PBKDF2-HMAC-SHA256(passphrase, salt, 100000 iterations, 32 bytes)
//
// Byte-compatible with the SMSGate doc's helpers and with smsgw_client.envelope (Python): the
// shared vectors in clients/vectors/smsgw1.json are the contract. Everything that cannot be
// opened throws EnvelopeError with a `reason`; nothing else escapes for a bad envelope, and no
// garbage is ever returned. Derived keys are cached per (sha256(passphrase), salt).

import crypto from "node:crypto";
import { promisify } from "node:util";

import { bytes, utf8 } from "./args.js";

const pbkdf2Async = promisify(crypto.pbkdf2);

const MAGIC_BYTES = Buffer.from("smsgw1", "ascii");
/** The envelope's first six bytes, "smsgw1" (a copy: changing it changes nothing here). */
export const MAGIC = Buffer.from(MAGIC_BYTES);
/** PBKDF2-HMAC-SHA256 iterations. */
export const ITERATIONS = 100_000;
const SALT = 16;
const IV = 12;
const TAG = 16;
const HEADER = MAGIC_BYTES.length + SALT + IV; // 34
const MIN_RAW = HEADER + TAG; // 50: an empty plaintext

/** Raw bytes an envelope adds to its plaintext (before base64, which makes (n + 50) * 4/3 characters). */
export const OVERHEAD = MIN_RAW;

const CACHE_SIZE = 64;

// Strict base64 (what Python's b64decode(validate=True) takes): the standard alphabet, `=` only
// as the final padding, length a multiple of 4. Buffer.from(s, "base64") would skip junk instead.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
// Python strips bytes, i.e. ASCII whitespace only (String.prototype.trim would also take U+00A0, U+FEFF...).
const SEAL_FOR_KEY_LABEL = Buffer.from("smsgw1/seal_for_key", "ascii");
const ASCII_SPACE = new Set([0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c]);

/** Strip ASCII whitespace at both ends, in linear time (a regex anchored at $ is quadratic). */
function stripAscii(text) {
  let start = 0;
  let end = text.length;
  while (start < end && ASCII_SPACE.has(text.charCodeAt(start))) start += 1;
  while (end > start && ASCII_SPACE.has(text.charCodeAt(end - 1))) end -= 1;
  return text.slice(start, end);
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * @typedef {"not_base64" | "too_short" | "bad_magic" | "not_utf8" | "wrong_key_or_tampered"} EnvelopeReason
 */

/** The envelope cannot be opened (or is not an envelope); `reason` says which check failed. */
export class EnvelopeError extends Error {
  /**
   * @param {EnvelopeReason} reason
   * @param {string} message
   */
  constructor(reason, message) {
    super(message);
    this.name = "EnvelopeError";
    /** @type {EnvelopeReason} */
    this.reason = reason;
  }
}


// ---------------------------------------------------------------------------------------------
// Key cache: PBKDF2 is deliberately slow; a batch pays it once per salt, not once per message.

/** @type {Map<string, Buffer>} */
const cache = new Map();
/**
 * The key cache's live counters (tests read them to see the cache work): `derivations` is how
 * many PBKDF2 runs happened, `hits`/`misses` the lookups, `size` the keys held (at most 64).
 */
export const stats = {
  hits: 0,
  misses: 0,
  derivations: 0,
  get size() {
    return cache.size;
  },
};

/**
 * @param {Buffer} secret the passphrase's UTF-8 bytes
 * @param {Buffer} salt
 */
function slotOf(secret, salt) {
  // Keyed on a digest, so the passphrase itself is not kept in the map.
  return crypto.createHash("sha256").update(secret).digest("hex") + ":" + salt.toString("hex");
}

/** @param {string} slot */
function cached(slot) {
  const found = cache.get(slot);
  if (found === undefined) {
    stats.misses += 1;
    return undefined;
  }
  stats.hits += 1;
  cache.delete(slot); // re-insert: most recently used last
  cache.set(slot, found);
  return found;
}

/**
 * @param {string} slot
 * @param {Buffer} key
 */
function remember(slot, key) {
  cache.delete(slot);
  cache.set(slot, key);
  while (cache.size > CACHE_SIZE) cache.delete(/** @type {string} */ (cache.keys().next().value));
  return key;
}

/**
 * @param {Buffer} secret
 * @param {Buffer} salt
 * @returns {Buffer}
 */
function keyFor(secret, salt) {
  const slot = slotOf(secret, salt);
  const found = cached(slot);
  if (found !== undefined) return found;
  stats.derivations += 1;
  return remember(slot, crypto.pbkdf2Sync(secret, salt, ITERATIONS, 32, "sha256"));
}

/**
 * @param {Buffer} secret
 * @param {Buffer} salt
 * @returns {Promise<Buffer>}
 */
async function keyForAsync(secret, salt) {
  const slot = slotOf(secret, salt);
  const found = cached(slot);
  if (found !== undefined) return found;
  stats.derivations += 1;
  return remember(slot, await pbkdf2Async(secret, salt, ITERATIONS, 32, "sha256"));
}

/** Forget every derived key and reset the counters. */
export function clearKeyCache() {
  cache.clear();
  stats.hits = stats.misses = stats.derivations = 0;
}

// ---------------------------------------------------------------------------------------------
// Sealing

/**
 * @param {Buffer} key
 * @param {Buffer} salt
 * @param {Buffer} iv
 * @param {Buffer} plain
 */
function sealWith(key, salt, iv, plain) {
  const cipher = crypto.createCipheriv("aes-256-gcm", key, iv, { authTagLength: TAG });
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([MAGIC_BYTES, salt, iv, body, cipher.getAuthTag()]).toString("base64");
}

/**
 * @param {{salt?: Uint8Array, iv?: Uint8Array} | undefined} options
 * @returns {{salt: Buffer, iv: Buffer}}
 */
function saltAndIv(options) {
  const salt = options?.salt === undefined ? crypto.randomBytes(SALT) : bytes(options.salt, "salt");
  const iv = options?.iv === undefined ? crypto.randomBytes(IV) : bytes(options.iv, "iv");
  if (salt.length !== SALT || iv.length !== IV) {
    throw new RangeError(`salt must be ${SALT} bytes and iv ${IV} bytes`);
  }
  return { salt, iv };
}

/**
 * Encrypt bytes into an envelope. `salt` and `iv` are for test vectors only: a fresh random
 * pair for every message is what keeps AES-GCM safe.
 * @param {string} passphrase
 * @param {Uint8Array} plaintext
 * @param {{salt?: Uint8Array, iv?: Uint8Array}} [options]
 * @returns {string}
 */
export function seal(passphrase, plaintext, options) {
  const secret = utf8(passphrase, "passphrase");
  const plain = bytes(plaintext, "plaintext");
  const { salt, iv } = saltAndIv(options);
  return sealWith(keyFor(secret, salt), salt, iv, plain);
}

/**
 * Seal for a send with an idempotency key (same as Python's seal_for_key): salt and IV come
 * from HMAC-SHA256(passphrase, idempotencyKey | 0x00 | plaintext), so the same content under
 * the same key makes the same envelope (a replay, not a conflict); a (key, IV) pair is only
 * ever reused for the very same plaintext.
 * @param {string} passphrase
 * @param {Uint8Array} plaintext
 * @param {string} idempotencyKey
 * @returns {string}
 */
export function sealForKey(passphrase, plaintext, idempotencyKey) {
  const secret = utf8(passphrase, "passphrase");
  const plain = bytes(plaintext, "plaintext");
  const idem = utf8(idempotencyKey, "idempotencyKey");
  // The HMAC key is PBKDF2-derived too, so a guessed plaintext makes guessing the passphrase
  // no cheaper; the idempotency key is length-prefixed, so (key, plaintext) is unambiguous.
  const length = Buffer.alloc(4);
  length.writeUInt32BE(idem.length);
  const digest = crypto
    .createHmac("sha256", keyFor(secret, SEAL_FOR_KEY_LABEL))
    .update(length)
    .update(idem)
    .update(plain)
    .digest();
  return seal(passphrase, plain, { salt: digest.subarray(0, SALT), iv: digest.subarray(SALT, SALT + IV) });
}

/**
 * Encrypt a text (UTF-8) into an envelope.
 * @param {string} passphrase
 * @param {string} plaintext
 * @returns {string}
 */
export function encrypt(passphrase, plaintext) {
  return seal(passphrase, utf8(plaintext, "plaintext"));
}

/**
 * Encrypt data-SMS bytes into an envelope.
 * @param {string} passphrase
 * @param {Uint8Array} data
 * @returns {string}
 */
export function encryptBytes(passphrase, data) {
  return seal(passphrase, bytes(data, "data"));
}

// ---------------------------------------------------------------------------------------------
// Opening

/**
 * The envelope's bytes after its form is checked (base64, length, magic).
 * @param {string | Uint8Array} envelope
 * @returns {Buffer}
 */
function raw(envelope) {
  let text;
  if (typeof envelope === "string") text = envelope;
  else if (envelope instanceof Uint8Array) text = bytes(envelope, "envelope").toString("latin1");
  else throw new TypeError("envelope must be a string, Uint8Array or Buffer");
  text = stripAscii(text);
  if (!BASE64.test(text)) throw new EnvelopeError("not_base64", "not an smsgw1 envelope: not base64");
  const buf = Buffer.from(text, "base64");
  if (buf.length < MIN_RAW) {
    throw new EnvelopeError("too_short", `not an smsgw1 envelope: ${buf.length} bytes, at least ${MIN_RAW} needed`);
  }
  if (!crypto.timingSafeEqual(buf.subarray(0, MAGIC_BYTES.length), MAGIC_BYTES)) {
    throw new EnvelopeError("bad_magic", "not an smsgw1 envelope: it does not start with smsgw1");
  }
  return buf;
}

/** @param {Buffer} buf */
function parts(buf) {
  return {
    salt: buf.subarray(MAGIC_BYTES.length, MAGIC_BYTES.length + SALT),
    iv: buf.subarray(MAGIC_BYTES.length + SALT, HEADER),
    body: buf.subarray(HEADER, buf.length - TAG),
    tag: buf.subarray(buf.length - TAG),
  };
}

/**
 * @param {Buffer} key
 * @param {Buffer} buf a form-checked envelope
 * @returns {Buffer}
 */
function openWith(key, buf) {
  const { iv, body, tag } = parts(buf);
  try {
    const decipher = crypto.createDecipheriv("aes-256-gcm", key, iv, { authTagLength: TAG });
    decipher.setAuthTag(tag);
    const head = decipher.update(body);
    return Buffer.concat([head, decipher.final()]); // final() throws before anything is returned
  } catch {
    throw new EnvelopeError("wrong_key_or_tampered", "cannot open the envelope: wrong passphrase, or it was changed");
  }
}

/** @param {Buffer} plain */
function text(plain) {
  try {
    return UTF8.decode(plain);
  } catch {
    throw new EnvelopeError("not_utf8", "the envelope opened, but holds bytes, not UTF-8 text");
  }
}

/**
 * Check an envelope's form without opening it (what the server can do); returns the
 * plaintext's length in bytes. Throws EnvelopeError.
 * @param {string | Uint8Array} envelope
 * @returns {number}
 */
export function checkEnvelope(envelope) {
  return raw(envelope).length - MIN_RAW;
}

/**
 * Open an envelope into bytes. Throws EnvelopeError.
 * @param {string} passphrase
 * @param {string | Uint8Array} envelope
 * @returns {Buffer}
 */
export function decryptBytes(passphrase, envelope) {
  const secret = utf8(passphrase, "passphrase");
  const buf = raw(envelope);
  return openWith(keyFor(secret, parts(buf).salt), buf);
}

/**
 * Open an envelope into text. Throws EnvelopeError (also when the bytes are not UTF-8).
 * @param {string} passphrase
 * @param {string | Uint8Array} envelope
 * @returns {string}
 */
export function decrypt(passphrase, envelope) {
  return text(decryptBytes(passphrase, envelope));
}

// ---------------------------------------------------------------------------------------------
// Async variants: PBKDF2 runs on libuv's thread pool instead of blocking the event loop.

/**
 * @param {string} passphrase
 * @param {Uint8Array} plaintext
 * @param {{salt?: Uint8Array, iv?: Uint8Array}} [options]
 * @returns {Promise<string>}
 */
export async function sealAsync(passphrase, plaintext, options) {
  const secret = utf8(passphrase, "passphrase");
  const plain = bytes(plaintext, "plaintext");
  const { salt, iv } = saltAndIv(options);
  return sealWith(await keyForAsync(secret, salt), salt, iv, plain);
}

/**
 * @param {string} passphrase
 * @param {string} plaintext
 * @returns {Promise<string>}
 */
export async function encryptAsync(passphrase, plaintext) {
  return sealAsync(passphrase, utf8(plaintext, "plaintext"));
}

/**
 * @param {string} passphrase
 * @param {Uint8Array} data
 * @returns {Promise<string>}
 */
export async function encryptBytesAsync(passphrase, data) {
  return sealAsync(passphrase, bytes(data, "data"));
}

/**
 * @param {string} passphrase
 * @param {string | Uint8Array} envelope
 * @returns {Promise<Buffer>}
 */
export async function decryptBytesAsync(passphrase, envelope) {
  const secret = utf8(passphrase, "passphrase");
  const buf = raw(envelope);
  return openWith(await keyForAsync(secret, parts(buf).salt), buf);
}

/**
 * @param {string} passphrase
 * @param {string | Uint8Array} envelope
 * @returns {Promise<string>}
 */
export async function decryptAsync(passphrase, envelope) {
  return text(await decryptBytesAsync(passphrase, envelope));
}

// ---------------------------------------------------------------------------------------------

/**
 * Passphrases to try in order, newest first: after a rotation, messages sealed with an older
 * passphrase still open ("keep a key log"). New envelopes use the first one.
 */
export class KeyRing {
  /** @type {readonly string[]} */
  #passphrases;

  /** @param {Iterable<string>} passphrases */
  constructor(passphrases) {
    if (passphrases == null || typeof passphrases === "string" || typeof passphrases[Symbol.iterator] !== "function") {
      throw new TypeError("a key ring takes an iterable of passphrases");
    }
    const list = Array.from(passphrases);
    for (const p of list) utf8(p, "each passphrase");
    if (list.length === 0) throw new RangeError("a key ring needs at least one passphrase");
    this.#passphrases = Object.freeze(list);
  }

  /** The passphrases, newest first (a frozen array; console.log and JSON show only the count). */
  get passphrases() {
    return this.#passphrases;
  }

  get size() {
    return this.#passphrases.length;
  }

  toString() {
    return `KeyRing(<${this.#passphrases.length} passphrases>)`;
  }

  toJSON() {
    return { passphrases: this.#passphrases.length };
  }

  [Symbol.for("nodejs.util.inspect.custom")]() {
    return this.toString();
  }

  /** @param {string} plaintext */
  encrypt(plaintext) {
    return encrypt(this.#passphrases[0], plaintext);
  }

  /** @param {Uint8Array} data */
  encryptBytes(data) {
    return encryptBytes(this.#passphrases[0], data);
  }

  /**
   * @param {string | Uint8Array} envelope
   * @returns {Buffer}
   */
  decryptBytes(envelope) {
    const buf = raw(envelope);
    const { salt } = parts(buf);
    for (const passphrase of this.#passphrases) {
      try {
        return openWith(keyFor(Buffer.from(passphrase, "utf8"), salt), buf);
      } catch (err) {
        if (!(err instanceof EnvelopeError)) throw err;
      }
    }
    throw new EnvelopeError(
      "wrong_key_or_tampered",
      `cannot open the envelope with any of ${this.#passphrases.length} passphrases`,
    );
  }

  /**
   * @param {string | Uint8Array} envelope
   * @returns {string}
   */
  decrypt(envelope) {
    return text(this.decryptBytes(envelope));
  }
}
