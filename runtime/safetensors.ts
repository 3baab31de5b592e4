/**
 * Checkpoints in the `.safetensors` format (readable by Hugging Face's `safetensors`, NumPy readers and
 * others): an 8-byte little-endian header length N, N bytes of JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}` (padded with
 * spaces to a multiple of 8), then the raw little-endian row-major data; offsets are relative to the
 * data section.
 *
 * Layers:
 * - {@link encodeSafetensors} / {@link decodeSafetensors}: pure bytes <-> host arrays. Decoding validates
 *   everything (header length against the file size, UTF-8 and JSON, every entry's fields, dtype known
 *   and supported, byte count = numel x item size, offsets in range, no overlaps, no gaps) and throws a
 *   {@link SafetensorsError} naming the problem. Encoding writes a content checksum into the metadata
 *   (`seqlab.checksum`, CRC-32 over the tensor table, the other metadata and the data); decoding verifies
 *   it when present (files from other tools have none and still load).
 * - {@link saveModel} / {@link loadModel} (files) and {@link encodeModel} / {@link decodeIntoModel}
 *   (bytes): a module's parameters and, optionally, an optimiser's state. Loading checks every name,
 *   shape and dtype, the optimiser's slots (exactly those it keeps, see `Optimizer.stateKeys`) and the
 *   step counters, and uploads every tensor before the first parameter changes, so a malformed,
 *   truncated, corrupted or mismatched file never leaves a partly loaded model. Saving is atomic and
 *   durable (temporary file, fsync, rename, directory fsync) and removes temporary files of the same
 *   checkpoint left by a killed save.
 *
 * dtypes: F32, F16, F64, I32 and U32 (seqlab's); BF16, I64, U8 and the rest are refused by name.
 * @module
 */

import { type DType, dtypeOf, itemSize, type TypedArray, viewBytes } from "./dtype.ts";
import { readFile, writeFile } from "./platform.ts";
import { fmt, numel } from "./shape.ts";
import { keep, ops, type Tensor } from "./tensor.ts";
import { noGrad } from "./autograd.ts";

/** A tensor on the host: dtype, shape and row-major elements. */
export interface HostTensor {
  /** Element type. */
  dtype: DType;
  /** Dimensions. */
  shape: readonly number[];
  /** numel(shape) elements, row-major. */
  data: TypedArray;
}

/** A decoded file: its tensors (in file order) and its `__metadata__` strings. */
export interface SafetensorsFile {
  /** The tensors by name, in header order. */
  tensors: Map<string, HostTensor>;
  /** The `__metadata__` strings (empty when absent). */
  metadata: Record<string, string>;
}

/** A malformed, truncated or mismatched safetensors file (or an unencodable input). */
export class SafetensorsError extends Error {
  /** Always "SafetensorsError". */
  override name = "SafetensorsError";
}

const TO_FILE: Record<DType, string> = { f32: "F32", f16: "F16", f64: "F64", i32: "I32", u32: "U32" };
const FROM_FILE: Record<string, DType> = { F32: "f32", F16: "f16", F64: "f64", I32: "i32", U32: "u32" };
/** dtypes of the format that seqlab has no tensor type for. */
const UNSUPPORTED = new Set([
  "BOOL",
  "U8",
  "I8",
  "I16",
  "U16",
  "I64",
  "U64",
  "BF16",
  "F8_E4M3",
  "F8_E5M2",
  "F8_E8M0",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "C64",
]);
/** The reference implementation's header limit (100 MB): a larger length is a corrupt file, not a header. */
const MAX_HEADER = 100_000_000;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function fail(msg: string): never {
  throw new SafetensorsError(`safetensors: ${msg}`);
}

function isSize(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** CRC-32 tables for slicing by 8: table s maps a byte to its CRC after s more zero bytes. */
const CRC_TABLE = (() => {
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 8; s++) {
      t[s * 256 + i] = (t[(s - 1) * 256 + i] >>> 8) ^ t[t[(s - 1) * 256 + i] & 0xff];
    }
  }
  return t;
})();

/**
 * CRC-32 (IEEE 802.3, zlib's `crc32`) of bytes, or of several byte arrays read one after another.
 * Detects every single-bit flip and every burst of up to 32 flipped bits.
 *
 * @example
 * ```ts
 * import { crc32 } from "./safetensors.ts";
 * console.log(crc32(new TextEncoder().encode("123456789")).toString(16)); // "cbf43926"
 * ```
 */
export function crc32(data: Uint8Array | Iterable<Uint8Array>): number {
  const T = CRC_TABLE;
  let c = 0xffffffff;
  for (const b of data instanceof Uint8Array ? [data] : data) {
    const n = b.length;
    let i = 0;
    for (; i + 8 <= n; i += 8) {
      const lo = (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) ^ c;
      const hi = b[i + 4] | (b[i + 5] << 8) | (b[i + 6] << 16) | (b[i + 7] << 24);
      c = T[1792 + (lo & 0xff)] ^ T[1536 + ((lo >>> 8) & 0xff)] ^ T[1280 + ((lo >>> 16) & 0xff)] ^
        T[1024 + (lo >>> 24)] ^ T[768 + (hi & 0xff)] ^ T[512 + ((hi >>> 8) & 0xff)] ^
        T[256 + ((hi >>> 16) & 0xff)] ^ T[hi >>> 24];
    }
    for (; i < n; i++) c = T[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** The metadata key of the content checksum. */
const CHECKSUM_KEY = "seqlab.checksum";
/** The metadata keys seqlab writes; any other `seqlab.` key in a file is a corruption or a newer format. */
const SEQLAB_KEYS = [CHECKSUM_KEY, "seqlab.optimizer", "seqlab.step", "seqlab.paramSteps"];

/** Whether two strings of the same length differ in exactly one bit of one UTF-16 code unit. */
function oneBitApart(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a.charCodeAt(i) ^ b.charCodeAt(i);
    if (x === 0) continue;
    if ((x & (x - 1)) !== 0 || ++diff > 1) return false;
  }
  return diff === 1;
}

/**
 * The content checksum: CRC-32 of a manifest (every tensor's name, dtype and shape, sorted by name, and
 * every metadata entry but the checksum, sorted by key) followed by the tensors' bytes in name order.
 * Layout-free on purpose: offsets, header order and padding are not hashed (the decoder checks that the
 * tensors tile the data exactly), so a file re-laid by another writer that keeps the metadata verifies.
 */
function contentChecksum(
  entries: readonly (readonly [string, DType, readonly number[], Uint8Array])[],
  metadata: Record<string, string>,
): string {
  const sorted = [...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const meta = Object.keys(metadata).filter((k) => k !== CHECKSUM_KEY).sort().map((k) => [k, metadata[k]]);
  const manifest = JSON.stringify({
    tensors: sorted.map(([n, d, sh]) => [n, TO_FILE[d], sh]),
    metadata: meta,
  });
  const crc = crc32([new TextEncoder().encode(manifest), ...sorted.map((e) => e[3])]);
  return `crc32:${crc.toString(16).padStart(8, "0")}`;
}

const bytesOf = (t: TypedArray) => new Uint8Array(t.buffer, t.byteOffset, t.byteLength);

/**
 * Encodes host tensors (and optional string metadata) as safetensors bytes. Tensors are laid out by
 * item size, largest first (8, 4, 2 bytes), in insertion order within a size, so that with the header
 * padded to 8 bytes every tensor is aligned to its item size, as Hugging Face's writer does. The
 * metadata gets `seqlab.checksum` (see the module doc; a `seqlab.checksum` passed in is replaced, or
 * dropped with `checksum: false`).
 *
 * @example
 * ```ts
 * import { decodeSafetensors, encodeSafetensors } from "seqlab";
 * const bytes = encodeSafetensors({ w: { dtype: "f32", shape: [2], data: new Float32Array([1, 2]) } });
 * console.log(decodeSafetensors(bytes).tensors.get("w")!.data); // Float32Array [1, 2]
 * ```
 */
export function encodeSafetensors(
  tensors: Map<string, HostTensor> | Record<string, HostTensor>,
  metadata: Record<string, string> = {},
  o: { checksum?: boolean } = {},
): Uint8Array {
  if (!LITTLE_ENDIAN) fail("this host is big-endian; encoding is not supported");
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") fail(`metadata "${k}" must be a string, got ${typeof v}`);
  }
  metadata = { ...metadata };
  delete metadata[CHECKSUM_KEY];
  for (const [name, t] of entries) {
    if (name === "" || name === "__metadata__") fail(`invalid tensor name ${JSON.stringify(name)}`);
    if (!(t.dtype in TO_FILE)) fail(`tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!t.shape.every(isSize)) fail(`tensor "${name}": invalid shape ${JSON.stringify(t.shape)}`);
    if (t.data.length !== numel(t.shape)) {
      fail(`tensor "${name}": ${t.data.length} elements do not fill shape ${fmt(t.shape)}`);
    }
    if (dtypeOf(t.data) !== t.dtype) {
      fail(`tensor "${name}": data is a ${t.data.constructor.name}, not ${t.dtype}`);
    }
  }
  const order = entries.map((e, i) => ({ e, i })).sort((a, b) =>
    itemSize(b.e[1].dtype) - itemSize(a.e[1].dtype) || a.i - b.i
  ).map(({ e }) => e);
  if (o.checksum ?? true) {
    metadata[CHECKSUM_KEY] = contentChecksum(
      entries.map(([name, t]) => [name, t.dtype, t.shape, bytesOf(t.data)] as const),
      metadata,
    );
  }
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of order) {
    const bytes = t.data.byteLength;
    header[name] = { dtype: TO_FILE[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20); // spaces, as the format allows
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, json.length, true);
  dv.setUint32(4, Math.floor(json.length / 2 ** 32), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const [, t] of order) {
    out.set(bytesOf(t.data), at);
    at += t.data.byteLength;
  }
  return out;
}

/**
 * Decodes and validates safetensors bytes. Throws a {@link SafetensorsError} naming the first problem:
 * a file shorter than its header, a header that is not UTF-8 JSON of the right shape, an unknown or
 * unsupported dtype, a byte range that does not match numel x item size, lies outside the data, overlaps
 * another tensor or leaves bytes that belong to no tensor, a `seqlab.` metadata key seqlab does not
 * write, or contents that do not match the `seqlab.checksum` (when there is one). The returned arrays
 * are copies (aligned).
 *
 * @example
 * ```ts
 * import { decodeSafetensors } from "seqlab";
 * try {
 *   decodeSafetensors(new Uint8Array([255, 0, 0, 0, 0, 0, 0, 0, 123]));
 * } catch (e) {
 *   console.log((e as Error).message); // safetensors: header length 255 is larger than the 1 bytes after it ...
 * }
 * ```
 */
export function decodeSafetensors(bytes: Uint8Array): SafetensorsFile {
  if (!LITTLE_ENDIAN) fail("this host is big-endian; decoding is not supported");
  if (bytes.length < 8) {
    fail(`file is ${bytes.length} bytes; a safetensors file starts with an 8-byte header length`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = dv.getUint32(0, true), hi = dv.getUint32(4, true);
  const n = hi * 2 ** 32 + lo;
  if (n > bytes.length - 8) {
    fail(
      `header length ${n} is larger than the ${
        bytes.length - 8
      } bytes after it (truncated or not safetensors)`,
    );
  }
  if (n > MAX_HEADER) fail(`header length ${n} is over the format's limit of ${MAX_HEADER} bytes`);
  if (n < 2) fail(`header length ${n} is too short for a JSON object`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n));
  } catch {
    fail("header is not valid UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail(`header must be a JSON object, got ${Array.isArray(header) ? "an array" : typeof header}`);
  }
  const dataStart = 8 + n, dataLen = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number }[] = [];
  const parsed: [string, DType, number[], number, number][] = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        fail(`__metadata__ must be an object of strings`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`__metadata__ "${k}" must be a string, got ${JSON.stringify(v)}`);
        if (k.startsWith("seqlab.") && !SEQLAB_KEYS.includes(k)) {
          fail(`__metadata__ "${k}" is not a key seqlab writes (${SEQLAB_KEYS.join(", ")})`);
        }
        const near = SEQLAB_KEYS.find((s) => oneBitApart(k, s));
        if (near !== undefined) {
          // a flip in the prefix would otherwise turn seqlab's key into a user's, and the checksum into none
          fail(`__metadata__ key "${k}" is seqlab's "${near}" with one bit flipped (corrupted header)`);
        }
        metadata[k] = v;
      }
      continue;
    }
    const what = `tensor "${name}"`;
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
      fail(`${what}: entry must be an object {dtype, shape, data_offsets}`);
    }
    const { dtype, shape, data_offsets: offs } = entry as Record<string, unknown>;
    if (typeof dtype !== "string") fail(`${what}: dtype must be a string, got ${JSON.stringify(dtype)}`);
    if (UNSUPPORTED.has(dtype)) {
      fail(`${what}: dtype ${dtype} is not supported by seqlab (supported: F32, F16, F64, I32, U32)`);
    }
    const dt = FROM_FILE[dtype];
    if (!dt) fail(`${what}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isSize)) {
      fail(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isSize) || offs[0] > offs[1]) {
      fail(`${what}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as number[];
    const count = shape.reduce((a: number, d: number) => a * d, 1);
    const need = count * itemSize(dt);
    if (end - begin !== need) {
      fail(
        `${what}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape ${
          fmt(shape)
        } ${dtype} ` +
          `needs ${need}`,
      );
    }
    if (end > dataLen) {
      fail(`${what}: data_offsets [${begin}, ${end}] run past the ${dataLen} data bytes (truncated file?)`);
    }
    spans.push({ name, begin, end });
    parsed.push([name, dt, shape as number[], begin, end]);
  }
  // non-empty spans must tile [0, dataLen) exactly: no overlaps, no gaps, nothing trailing
  const sorted = spans.filter((s) => s.end > s.begin).sort((a, b) => a.begin - b.begin);
  let covered = 0;
  for (const [i, s] of sorted.entries()) {
    if (s.begin < covered) {
      fail(
        `tensor "${s.name}" [${s.begin}, ${s.end}] overlaps tensor "${sorted[i - 1].name}" ` +
          `[${sorted[i - 1].begin}, ${sorted[i - 1].end}]`,
      );
    }
    if (s.begin > covered) fail(`data bytes [${covered}, ${s.begin}) belong to no tensor`);
    covered = s.end;
  }
  if (covered !== dataLen) fail(`data bytes [${covered}, ${dataLen}) belong to no tensor (trailing data)`);
  const stored = metadata[CHECKSUM_KEY];
  if (stored !== undefined) {
    if (!/^crc32:[0-9a-f]{8}$/.test(stored)) {
      fail(
        `__metadata__ "${CHECKSUM_KEY}" is ${
          JSON.stringify(stored)
        }, not "crc32:" and 8 lowercase hex digits`,
      );
    }
    const actual = contentChecksum(
      parsed.map(([name, dt, shape, begin, end]) =>
        [name, dt, shape, bytes.subarray(dataStart + begin, dataStart + end)] as const
      ),
      metadata,
    );
    if (actual !== stored) {
      fail(`checksum mismatch: the file says ${stored}, its contents hash to ${actual} (corrupted file)`);
    }
  }
  const tensors = new Map<string, HostTensor>();
  for (const [name, dtype, shape, begin, end] of parsed) {
    const copy = bytes.slice(dataStart + begin, dataStart + end); // own, aligned buffer
    tensors.set(name, { dtype, shape, data: viewBytes(dtype, copy.buffer, 0, numel(shape)) });
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------------------------
// modules and optimisers

/** Anything with named tensors (a `Module`: its parameters and buffers). */
export interface HasParameters {
  /** [name, tensor] pairs of the trainable parameters. */
  namedParameters(): [string, Tensor][];
  /** [name, tensor] pairs of everything to checkpoint (parameters and buffers); default namedParameters. */
  namedTensors?(): [string, Tensor][];
}

function tensorsOf(model: HasParameters): [string, Tensor][] {
  return model.namedTensors ? model.namedTensors() : model.namedParameters();
}

/** Anything with checkpointable state (an `Optimizer`). */
export interface HasState {
  /** The optimiser's kind ("Adam"), stored and checked on load. */
  readonly name: string;
  /** The parameters the state belongs to (state is named by parameter index). */
  readonly params: readonly Tensor[];
  /** Steps taken, stored as metadata. */
  stepCount: number;
  /** Each parameter's own step count, stored as metadata. */
  readonly paramSteps: readonly number[];
  /** `<param index>.<slot>` -> state tensor. */
  stateTensors(): Map<string, Tensor>;
  /** Replaces the state (validating first) and the step counts. */
  loadState(tensors: Map<string, Tensor>, stepCount: number, paramSteps?: readonly number[]): void;
  /** The slots kept per parameter (Adam: m, v), or null when unknown; checked on load when present. */
  stateSlots?(): readonly string[] | null;
  /**
   * The state keys held after these per-parameter step counts, or null when unknown; when present, a
   * file's optimiser state must hold exactly these keys.
   */
  stateKeys?(paramSteps: readonly number[]): string[] | null;
}

/** Options of {@link encodeModel} and {@link saveModel}. */
export interface SaveOptions {
  /** Also store this optimiser's state (names `__optimizer__.<param index>.<slot>`) and step count. */
  optimizer?: HasState;
  /** Extra `__metadata__` strings (keys starting "seqlab." are reserved). */
  metadata?: Record<string, string>;
}

/** Options of {@link decodeIntoModel} and {@link loadModel}. */
export interface LoadOptions {
  /** Restore this optimiser's state too (the file must hold it). */
  optimizer?: HasState;
  /**
   * Strict (default): the file must hold exactly the model's parameters (plus optimiser state). Not
   * strict: parameters missing from the file keep their values and extra tensors are ignored.
   */
  strict?: boolean;
}

const OPT_PREFIX = "__optimizer__.";

/**
 * A module's parameters and buffers (and optionally an optimiser's state) as safetensors bytes. Reads
 * the tensors back from their device.
 *
 * @example
 * ```ts
 * import { decodeSafetensors, encodeModel, Linear } from "seqlab";
 * const l = new Linear(3, 2, { seed: 1 });
 * const bytes = await encodeModel(l);
 * console.log([...decodeSafetensors(bytes).tensors.keys()]); // ["weight", "bias"]
 * l.dispose();
 * ```
 */
export async function encodeModel(model: HasParameters, o: SaveOptions = {}): Promise<Uint8Array> {
  const out = new Map<string, HostTensor>();
  const add = async (name: string, t: Tensor) => {
    if (out.has(name)) fail(`two tensors are named "${name}"`);
    out.set(name, { dtype: t.dtype, shape: t.shape, data: await t.toArray() });
  };
  for (const [name, t] of tensorsOf(model)) {
    if (name.startsWith(OPT_PREFIX)) fail(`parameter name "${name}" uses the reserved prefix ${OPT_PREFIX}`);
    await add(name, t);
  }
  const metadata: Record<string, string> = { ...o.metadata };
  for (const k of Object.keys(metadata)) {
    if (k.startsWith("seqlab.")) {
      fail(`metadata key "${k}" is reserved (seqlab writes ${SEQLAB_KEYS.join(", ")})`);
    }
  }
  if (o.optimizer) {
    for (const [k, t] of o.optimizer.stateTensors()) await add(OPT_PREFIX + k, t);
    metadata["seqlab.optimizer"] = o.optimizer.name;
    metadata["seqlab.step"] = String(o.optimizer.stepCount);
    metadata["seqlab.paramSteps"] = JSON.stringify(o.optimizer.paramSteps);
  }
  return encodeSafetensors(out, metadata);
}

/**
 * Loads safetensors bytes into a module's parameters (in place, on their devices) and optionally an
 * optimiser's state; returns the file's metadata. All validation (the file itself and its checksum, then
 * every name, shape and dtype against the model; for an optimiser its kind, step counters consistent
 * with each other, and exactly the state keys it keeps after those steps, see `Optimizer.stateKeys`) and
 * every upload happen before the first parameter is written, so on any error the model and optimiser are
 * untouched.
 *
 * @example
 * ```ts
 * import { decodeIntoModel, encodeModel, Linear } from "seqlab";
 * const a = new Linear(3, 2, { seed: 1 }), b = new Linear(3, 2, { seed: 2 });
 * decodeIntoModel(await encodeModel(a), b);
 * console.log((await b.weight.toArray())[0] === (await a.weight.toArray())[0]); // true
 * a.dispose();
 * b.dispose();
 * ```
 */
export function decodeIntoModel(
  bytes: Uint8Array,
  model: HasParameters,
  o: LoadOptions = {},
): Record<string, string> {
  const file = decodeSafetensors(bytes);
  const strict = o.strict ?? true;
  const params = tensorsOf(model);
  const byName = new Map(params);
  const plan: [Tensor, HostTensor, string][] = [];
  const check = (what: string, target: Tensor, src: HostTensor) => {
    if (
      src.dtype !== target.dtype || src.shape.length !== target.rank ||
      src.shape.some((d, i) => d !== target.shape[i])
    ) {
      fail(
        `${what} is ${fmt(src.shape)} ${TO_FILE[src.dtype]} in the file but ${fmt(target.shape)} ` +
          `${TO_FILE[target.dtype]} in the model`,
      );
    }
  };
  for (const [name, p] of params) {
    const src = file.tensors.get(name);
    if (!src) {
      if (strict) fail(`the file has no tensor "${name}" (a parameter or buffer of the model)`);
      continue;
    }
    check(`tensor "${name}"`, p, src);
    plan.push([p, src, name]);
  }
  const optState = new Map<string, HostTensor>();
  for (const [name, src] of file.tensors) {
    if (name.startsWith(OPT_PREFIX)) optState.set(name.slice(OPT_PREFIX.length), src);
    else if (!byName.has(name) && strict) {
      fail(`the file's tensor "${name}" is not a parameter or buffer of the model`);
    }
  }
  const opt = o.optimizer;
  let step = 0;
  let paramSteps: number[] | undefined;
  const optPlan: [string, Tensor, HostTensor][] = [];
  if (opt) {
    const saved = file.metadata["seqlab.optimizer"];
    if (saved === undefined) fail(`the file holds no optimizer state (saved without one)`);
    if (saved !== opt.name) fail(`the file holds ${saved} state, not ${opt.name}`);
    const stepText = file.metadata["seqlab.step"];
    step = /^(0|[1-9]\d*)$/.test(stepText ?? "") ? Number(stepText) : NaN;
    if (!Number.isSafeInteger(step)) {
      fail(`metadata seqlab.step ${JSON.stringify(stepText)} is not a step count`);
    }
    const ps = file.metadata["seqlab.paramSteps"];
    if (ps !== undefined) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(ps);
      } catch {
        parsed = null;
      }
      if (
        !Array.isArray(parsed) || parsed.length !== opt.params.length ||
        !parsed.every((n) => Number.isSafeInteger(n) && n >= 0)
      ) {
        fail(`metadata seqlab.paramSteps ${JSON.stringify(ps)} is not ${opt.params.length} step counts`);
      }
      const k = parsed.findIndex((n: number) => n > step);
      if (k >= 0) {
        fail(
          `metadata seqlab.paramSteps ${ps}: parameter ${k} has taken ${parsed[k]} steps, ` +
            `more than seqlab.step ${step}`,
        );
      }
      paramSteps = parsed;
    }
    // the slots the optimiser keeps, and which parameters hold them after these step counts
    const steps = paramSteps ?? opt.params.map(() => step);
    const slots = opt.stateSlots?.() ?? null;
    const expected = opt.stateKeys?.(steps) ?? null;
    for (const [key, src] of optState) {
      const m = /^(0|[1-9]\d*)\.([A-Za-z_]\w*)$/.exec(key);
      const k = m ? Number(m[1]) : -1;
      if (!m || k >= opt.params.length) {
        fail(`optimizer state "${key}" names no parameter (${opt.params.length} parameters)`);
      }
      if (slots && !slots.includes(m[2])) {
        fail(
          `optimizer state "${key}": ${opt.name} keeps no slot "${m[2]}" (its slots: ${
            slots.join(", ") || "none"
          })`,
        );
      }
      if (expected && !expected.includes(key)) {
        fail(
          `optimizer state "${key}": by seqlab.paramSteps no parameter sharing parameter ${k}'s device ` +
            `and dtype has taken a step, so ${opt.name} would hold no state for it`,
        );
      }
      check(`optimizer state "${key}"`, opt.params[k], src);
      optPlan.push([key, opt.params[k], src]);
    }
    for (const key of expected ?? []) {
      if (!optState.has(key)) {
        const k = Number(key.slice(0, key.indexOf(".")));
        fail(
          `the file lacks optimizer state "${key}" (${opt.name} keeps ${slots!.join(", ")} for parameter ` +
            `${k}, at step ${steps[k]})`,
        );
      }
    }
  }
  // upload everything (an allocation error, e.g. f16 on an adapter without it, still changes nothing)
  const staged: Tensor[] = [];
  try {
    const upload = (src: HostTensor, like: Tensor) => {
      const t = keep(ops.fromArray(src.data, src.shape, src.dtype, like.device));
      staged.push(t);
      return t;
    };
    const uploads = plan.map(([p, src]) => upload(src, p));
    const optUploads = new Map(optPlan.map(([key, p, src]) => [key, upload(src, p)]));
    // the optimiser first: loadState validates again before it changes anything
    if (opt) opt.loadState(optUploads, step, paramSteps);
    noGrad(() => plan.forEach(([p], i) => ops.copyInto(p, uploads[i])));
  } finally {
    for (const t of staged) t.dispose();
  }
  return file.metadata;
}

/**
 * Saves a module's parameters (and optionally an optimiser's state) to a `.safetensors` file with a
 * content checksum, atomically and durably (platform `writeFile`: stale `<path>.tmp-*` files of this
 * path removed, a temporary file written and fsynced, renamed into place, the directory fsynced).
 *
 * @example
 * ```ts
 * import { Linear, loadModel, saveModel } from "seqlab";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const a = new Linear(4, 2, { seed: 1 }), b = new Linear(4, 2, { seed: 9 });
 * await saveModel(path, a);
 * await loadModel(path, b);
 * console.log((await b.bias!.toArray())[1] === (await a.bias!.toArray())[1]); // true
 * a.dispose();
 * b.dispose();
 * await Deno.remove(path);
 * ```
 */
export async function saveModel(path: string, model: HasParameters, o: SaveOptions = {}): Promise<void> {
  await writeFile(path, await encodeModel(model, o));
}

/**
 * Loads a `.safetensors` file into a module (see {@link decodeIntoModel}: all or nothing). Returns the
 * file's metadata.
 *
 * @example
 * ```ts
 * import { Linear, loadModel, saveModel } from "seqlab";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const l = new Linear(2, 2);
 * await saveModel(path, l, { metadata: { note: "demo" } });
 * console.log((await loadModel(path, l)).note); // "demo"
 * l.dispose();
 * await Deno.remove(path);
 * ```
 */
export async function loadModel(
  path: string,
  model: HasParameters,
  o: LoadOptions = {},
): Promise<Record<string, string>> {
  return decodeIntoModel(await readFile(path), model, o);
}
