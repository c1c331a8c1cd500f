// Argument checks shared by the envelope helpers (internal: not exported by the package).

// A lone UTF-16 surrogate: it has no UTF-8 form (Python refuses it; Buffer would swap in U+FFFD).
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * A text argument as UTF-8; a lone surrogate (no UTF-8 form) is refused, as in Python.
 * @param {unknown} value
 * @param {string} what
 * @returns {Buffer}
 */
export function utf8(value, what) {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string`);
  if (LONE_SURROGATE.test(value)) throw new TypeError(`${what} is not valid Unicode (lone surrogate)`);
  return Buffer.from(value, "utf8");
}

/**
 * A bytes argument as a Buffer over the same memory.
 * @param {unknown} value
 * @param {string} what
 * @returns {Buffer}
 */
export function bytes(value, what) {
  if (!(value instanceof Uint8Array)) throw new TypeError(`${what} must be a Uint8Array or Buffer`);
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}
