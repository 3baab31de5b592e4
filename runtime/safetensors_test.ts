// safetensors: round trips of every dtype; files from an independent encoder written here; our files read
// by an independent reader (Python's standard library); every malformed, truncated or mismatched file
// gives a clear error and leaves the model and optimiser untouched.
import { describe, expect, test } from "vitest";
// node: APIs, not Deno.*, where a test only needs a temporary directory: it then runs under Bun too
import { readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { leakCheck, requireDevice, scoped } from "../test/helpers.ts";
import { crc32 } from "./safetensors.ts";

leakCheck();

const DEVICES = ["cpu", "webgpu"] as const;
const CRC = /^crc32:[0-9a-f]{8}$/;

/**
 * An independent encoder: a header given as an object or raw text (no padding unless asked), the data
 * bytes as given, and an optional wrong header length.
 */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(), headerLen?: number): Uint8Array {
  const h = typeof header === "string"
    ? new TextEncoder().encode(header)
    : header instanceof Uint8Array
    ? header
    : new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  const dv = new DataView(out.buffer);
  const n = headerLen ?? h.length;
  dv.setUint32(0, n % 2 ** 32, true);
  dv.setUint32(4, Math.floor(n / 2 ** 32), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** Little-endian bytes of values written with DataView (independent of typed-array layout). */
function le(kind: "F32" | "F64" | "I32" | "U32" | "F16", values: number[]): Uint8Array<ArrayBuffer> {
  const size = kind === "F64" ? 8 : kind === "F16" ? 2 : 4;
  const out = new Uint8Array(values.length * size), dv = new DataView(out.buffer);
  values.forEach((v, i) => {
    if (kind === "F32") dv.setFloat32(i * size, v, true);
    else if (kind === "F64") dv.setFloat64(i * size, v, true);
    else if (kind === "I32") dv.setInt32(i * size, v, true);
    else if (kind === "U32") dv.setUint32(i * size, v, true);
    else dv.setUint16(i * size, f16bits(v), true);
  });
  return out;
}

/** IEEE half-precision bits of values exactly representable in it (the test uses only those). */
function f16bits(v: number): number {
  if (v === 0) return Object.is(v, -0) ? 0x8000 : 0;
  const sign = v < 0 ? 0x8000 : 0, a = Math.abs(v);
  const e = Math.floor(Math.log2(a));
  return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
}

const cat = (...parts: Uint8Array[]): Uint8Array<ArrayBuffer> => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

describe("encode/decode", () => {
  test("round trip of every dtype, scalars, empty tensors, special values and metadata", () => {
    const tensors = {
      "w.f32": {
        dtype: "f32" as const,
        shape: [2, 3],
        data: new Float32Array([1.5, -0, NaN, Infinity, -3e38, 1e-45]),
      },
      "h.f16": { dtype: "f16" as const, shape: [3], data: new Float16Array([0.5, -2, 65504]) },
      "d.f64": { dtype: "f64" as const, shape: [], data: new Float64Array([Math.PI]) },
      "i.i32": {
        dtype: "i32" as const,
        shape: [2, 2],
        data: new Int32Array([-(2 ** 31), 2 ** 31 - 1, 0, -7]),
      },
      "u.u32": { dtype: "u32" as const, shape: [2], data: new Uint32Array([2 ** 32 - 1, 3]) },
      "empty": { dtype: "f32" as const, shape: [0, 4], data: new Float32Array(0) },
    };
    const bytes = s.encodeSafetensors(tensors, { note: "hello", step: "3" });
    const back = s.decodeSafetensors(bytes);
    expect(back.metadata).toEqual({
      note: "hello",
      step: "3",
      "seqlab.checksum": expect.stringMatching(CRC),
    });
    expect([...back.tensors.keys()].sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, t] of Object.entries(tensors)) {
      const got = back.tensors.get(name)!;
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual(t.shape);
      expect(new Uint8Array(got.data.buffer, got.data.byteOffset, got.data.byteLength)).toEqual(
        new Uint8Array(t.data.buffer),
      ); // bit-exact, NaN and -0 included
    }
  });

  test("layout: header padded to 8 bytes, tensors by item size so each is aligned", () => {
    const bytes = s.encodeSafetensors({
      a: { dtype: "f16", shape: [3], data: new Float16Array(3) },
      b: { dtype: "f32", shape: [1], data: new Float32Array(1) },
      c: { dtype: "f64", shape: [1], data: new Float64Array(1) },
    });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    expect(header.c.data_offsets).toEqual([0, 8]);
    expect(header.b.data_offsets).toEqual([8, 12]);
    expect(header.a.data_offsets).toEqual([12, 18]);
    expect(Object.keys(header.__metadata__)).toEqual(["seqlab.checksum"]);
    const plain = s.encodeSafetensors({ a: { dtype: "f16", shape: [1], data: new Float16Array(1) } }, {}, {
      checksum: false,
    });
    expect(JSON.parse(new TextDecoder().decode(plain.subarray(8, 8 + plain[0]))).__metadata__)
      .toBeUndefined();
  });

  test("a file from an independent encoder: unpadded header, unsorted entries, every dtype", () => {
    const data = cat(
      le("I32", [-5, 6]),
      le("F64", [0.1, -1e300]),
      le("F16", [1.5, -0.25]),
      le("U32", [4000000000]),
      le("F32", [0.25, -8, 3]),
    );
    const header = `{"f": {"dtype":"F32","shape":[3],"data_offsets":[36,48]},` +
      `"__metadata__":{"format":"pt"},` +
      `"d":{"shape":[2,1],"dtype":"F64","data_offsets":[8,24]},` +
      `"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},` +
      `"h":{"dtype":"F16","shape":[2],"data_offsets":[24,28]},` +
      `"u":{"dtype":"U32","shape":[],"data_offsets":[28,32]}}`;
    // 4 stray bytes at [32, 36) would be a gap: fill them with a zero-size-safe tensor instead
    const withPad = header.replace(`"u":`, `"p":{"dtype":"I32","shape":[1],"data_offsets":[32,36]},"u":`);
    const f = s.decodeSafetensors(
      rawFile(withPad, cat(data.subarray(0, 32), le("I32", [9]), data.subarray(32))),
    );
    expect(f.metadata).toEqual({ format: "pt" });
    const vals = (k: string) => Array.from(f.tensors.get(k)!.data);
    expect(vals("i")).toEqual([-5, 6]);
    expect(vals("d")).toEqual([0.1, -1e300]);
    expect(f.tensors.get("d")!.shape).toEqual([2, 1]);
    expect(vals("h")).toEqual([1.5, -0.25]);
    expect(vals("u")).toEqual([4000000000]);
    expect(f.tensors.get("u")!.shape).toEqual([]);
    expect(vals("p")).toEqual([9]);
    expect(vals("f")).toEqual([0.25, -8, 3]);
  });

  test("our files read by an independent reader (Python's json and struct)", async () => {
    const bytes = s.encodeSafetensors({
      w: { dtype: "f32", shape: [2, 2], data: new Float32Array([1, -2.5, 3.25, 1e-3]) },
      h: { dtype: "f16", shape: [2], data: new Float16Array([0.5, -4]) },
      d: { dtype: "f64", shape: [1], data: new Float64Array([Math.E]) },
      i: { dtype: "i32", shape: [3], data: new Int32Array([-1, 0, 1]) },
      u: { dtype: "u32", shape: [1], data: new Uint32Array([123456789]) },
    }, { who: "seqlab" });
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    await Deno.writeFile(path, bytes);
    const py = `
import json, struct, sys, zlib
b = open(sys.argv[1], "rb").read()
n, = struct.unpack("<Q", b[:8])
h = json.loads(b[8:8 + n])
out = {"__metadata__": h.pop("__metadata__", {})}
fmt = {"F32": "f", "F16": "e", "F64": "d", "I32": "i", "U32": "I"}
for k, v in h.items():
    a, z = v["data_offsets"]
    c = struct.calcsize(fmt[v["dtype"]])
    out[k] = {"shape": v["shape"], "values": list(struct.unpack("<%d%s" % ((z - a) // c, fmt[v["dtype"]]), b[8 + n + a:8 + n + z]))}
# the checksum from its definition: zlib's CRC-32 of the manifest, then the data in name order
meta = sorted((k, v) for k, v in out["__metadata__"].items() if k != "seqlab.checksum")
names = sorted(h)
manifest = json.dumps({"tensors": [[k, h[k]["dtype"], h[k]["shape"]] for k in names], "metadata": meta}, separators=(",", ":"))
crc = zlib.crc32(manifest.encode())
for k in names:
    crc = zlib.crc32(b[8 + n + h[k]["data_offsets"][0]:8 + n + h[k]["data_offsets"][1]], crc)
out["checksum"] = "crc32:%08x" % crc
print(json.dumps(out))
`;
    const r = await new Deno.Command("python3", { args: ["-c", py, path], stdout: "piped", stderr: "piped" })
      .output();
    await Deno.remove(path);
    expect(r.success, new TextDecoder().decode(r.stderr)).toBe(true);
    const got = JSON.parse(new TextDecoder().decode(r.stdout));
    expect(got.__metadata__).toEqual({ who: "seqlab", "seqlab.checksum": got.checksum });
    expect(got.w).toEqual({ shape: [2, 2], values: [1, -2.5, 3.25, Math.fround(1e-3)] });
    expect(got.h.values).toEqual([0.5, -4]);
    expect(got.d.values).toEqual([Math.E]);
    expect(got.i.values).toEqual([-1, 0, 1]);
    expect(got.u.values).toEqual([123456789]);
  });

  test("unencodable inputs throw", () => {
    expect(() => s.encodeSafetensors({ a: { dtype: "f32", shape: [3], data: new Float32Array(2) } })).toThrow(
      /tensor "a": 2 elements do not fill shape \[3\]/,
    );
    expect(() =>
      s.encodeSafetensors({ __metadata__: { dtype: "f32", shape: [], data: new Float32Array(1) } })
    )
      .toThrow(/invalid tensor name "__metadata__"/);
    expect(() => s.encodeSafetensors({ a: { dtype: "f32", shape: [1], data: new Int32Array(1) } })).toThrow(
      /data is a Int32Array, not f32/,
    );
  });
});

// ---- malformed files: each is [name, bytes, expected message] ------------------------------------------------

const W = le("F32", [1, 2, 3, 4, 5, 6]), B = le("F32", [7, 8]);
const GOOD = {
  weight: { dtype: "F32", shape: [3, 2], data_offsets: [0, 24] },
  bias: { dtype: "F32", shape: [2], data_offsets: [24, 32] },
};
const good = () => rawFile(GOOD, cat(W, B));
const withEntry = (name: string, entry: unknown, data = cat(W, B)) =>
  rawFile({ ...GOOD, [name]: entry }, data);

const MALFORMED: [string, () => Uint8Array, RegExp][] = [
  [
    "empty file",
    () => new Uint8Array(),
    /file is 0 bytes; a safetensors file starts with an 8-byte header length/,
  ],
  ["5 bytes", () => good().slice(0, 5), /file is 5 bytes/],
  [
    "truncated inside the header",
    () => good().slice(0, 40),
    /header length \d+ is larger than the 32 bytes after it/,
  ],
  [
    "truncated inside the data",
    () => good().slice(0, good().length - 3),
    /tensor "bias": data_offsets \[24, 32\] run past the 29 data bytes \(truncated file\?\)/,
  ],
  [
    "header length past the end",
    () => rawFile(GOOD, cat(W, B), 10_000),
    /header length 10000 is larger than/,
  ],
  [
    "header length 2^40",
    () => rawFile(GOOD, cat(W, B), 2 ** 40),
    /header length 1099511627776 is larger than/,
  ],
  ["header not UTF-8", () => rawFile(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), /header is not valid UTF-8/],
  ["header not JSON", () => rawFile("{weight: 1}   "), /header is not valid JSON/],
  ["header a JSON array", () => rawFile("[1, 2]"), /header must be a JSON object, got an array/],
  [
    "entry not an object",
    () => withEntry("x", 3),
    /tensor "x": entry must be an object \{dtype, shape, data_offsets\}/,
  ],
  [
    "unknown dtype",
    () => withEntry("weight", { ...GOOD.weight, dtype: "F33" }),
    /tensor "weight": unknown dtype "F33"/,
  ],
  [
    "unsupported dtype",
    () => withEntry("weight", { ...GOOD.weight, dtype: "BF16" }),
    /dtype BF16 is not supported by seqlab \(supported: F32, F16, F64, I32, U32\)/,
  ],
  [
    "dtype not a string",
    () => withEntry("weight", { ...GOOD.weight, dtype: 4 }),
    /tensor "weight": dtype must be a string, got 4/,
  ],
  [
    "negative dim",
    () => withEntry("weight", { ...GOOD.weight, shape: [3, -2] }),
    /shape must be an array of non-negative integers, got \[3,-2\]/,
  ],
  [
    "fractional dim",
    () => withEntry("weight", { ...GOOD.weight, shape: [2.5] }),
    /shape must be an array of non-negative integers/,
  ],
  [
    "offsets of length 1",
    () => withEntry("weight", { ...GOOD.weight, data_offsets: [0] }),
    /data_offsets must be \[begin, end\] with 0 <= begin <= end, got \[0\]/,
  ],
  [
    "offsets reversed",
    () => withEntry("weight", { ...GOOD.weight, data_offsets: [24, 0] }),
    /data_offsets must be \[begin, end\]/,
  ],
  [
    "byte count differs from numel x itemsize",
    () => withEntry("weight", { ...GOOD.weight, data_offsets: [0, 20] }),
    /tensor "weight": data_offsets \[0, 20\] hold 20 bytes but shape \[3, 2\] F32 needs 24/,
  ],
  [
    "overlapping tensors",
    () => withEntry("bias", { ...GOOD.bias, data_offsets: [16, 24] }, W),
    /tensor "bias" \[16, 24\] overlaps tensor "weight" \[0, 24\]|tensor "weight" \[0, 24\] overlaps tensor "bias" \[16, 24\]/,
  ],
  [
    "a gap between tensors",
    () => withEntry("bias", { ...GOOD.bias, data_offsets: [28, 36] }, cat(W, le("F32", [0]), B)),
    /data bytes \[24, 28\) belong to no tensor/,
  ],
  [
    "trailing bytes",
    () => rawFile(GOOD, cat(W, B, le("F32", [9]))),
    /data bytes \[32, 36\) belong to no tensor \(trailing data\)/,
  ],
  [
    "metadata value not a string",
    () => rawFile({ ...GOOD, __metadata__: { step: 3 } }, cat(W, B)),
    /__metadata__ "step" must be a string, got 3/,
  ],
];

/** A model and an Adam with state, with their values snapshotted. */
async function fixture(device: s.DeviceName) {
  const model = new s.Linear(3, 2, { seed: 1, device });
  const opt = new s.Adam(model.parameters(), { lr: 0.1 });
  s.tidy(() => {
    model.forward(s.ones([1, 3], { device })).sum().backward();
    opt.step();
  });
  model.zeroGrad();
  const snapshot = async () => ({
    params: await Promise.all(model.parameters().map(async (p) => Array.from(await p.toArray()))),
    state: await Promise.all(
      [...opt.stateTensors().values()].map(async (t) => Array.from(await t.toArray())),
    ),
    step: opt.stepCount,
  });
  return { model, opt, snapshot, before: await snapshot(), done: () => (opt.dispose(), model.dispose()) };
}

describe("malformed and truncated files", () => {
  for (const [name, bytes, message] of MALFORMED) {
    test(`${name}: a clear error`, () => {
      let err: unknown;
      try {
        s.decodeSafetensors(bytes());
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(s.SafetensorsError);
      expect((err as Error).message).toMatch(message);
    });
  }

  test("the independent encoder's good file is accepted (the cases above differ from it in one thing)", () => {
    expect([...s.decodeSafetensors(good()).tensors.keys()]).toEqual(["weight", "bias"]);
  });

  for (const device of DEVICES) {
    test(`every malformed file leaves the model and the optimiser untouched (${device})`, async () => {
      requireDevice(device);
      const f = await fixture(device);
      const mem = s.memory(device).bytesInUse;
      for (const [, bytes, message] of MALFORMED) {
        expect(() => s.decodeIntoModel(bytes(), f.model, { optimizer: f.opt })).toThrow(message);
      }
      expect(await f.snapshot()).toEqual(f.before);
      expect(s.memory(device).bytesInUse).toBe(mem);
      f.done();
    });
  }
});

describe("loading into a model", () => {
  for (const device of DEVICES) {
    test(`mismatched files are refused whole; the model is untouched (${device})`, async () => {
      requireDevice(device);
      const f = await fixture(device);
      const mem = s.memory(device).bytesInUse;
      const cases: [Uint8Array, s.LoadOptions, RegExp][] = [
        [
          rawFile({ ...GOOD, weight: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] } }, cat(W, B)),
          {},
          /tensor "weight" is \[2, 3\] F32 in the file but \[3, 2\] F32 in the model/,
        ],
        [
          rawFile({
            weight: { dtype: "F64", shape: [3, 2], data_offsets: [0, 48] },
            bias: { dtype: "F32", shape: [2], data_offsets: [48, 56] },
          }, cat(le("F64", [1, 2, 3, 4, 5, 6]), B)),
          {},
          /tensor "weight" is \[3, 2\] F64 in the file but \[3, 2\] F32 in the model/,
        ],
        [
          rawFile({ weight: GOOD.weight }, W),
          {},
          /the file has no tensor "bias" \(a parameter or buffer of the model\)/,
        ],
        [
          withEntry("extra", { dtype: "F32", shape: [1], data_offsets: [32, 36] }, cat(W, B, le("F32", [1]))),
          {},
          /the file's tensor "extra" is not a parameter or buffer of the model/,
        ],
        [good(), { optimizer: f.opt }, /the file holds no optimizer state \(saved without one\)/],
        [
          rawFile({ ...GOOD, __metadata__: { "seqlab.optimizer": "SGD", "seqlab.step": "1" } }, cat(W, B)),
          { optimizer: f.opt },
          /the file holds SGD state, not Adam/,
        ],
        [
          rawFile({
            ...GOOD,
            __metadata__: { "seqlab.optimizer": "Adam", "seqlab.step": "1", "seqlab.paramSteps": "[1]" },
          }, cat(W, B)),
          { optimizer: f.opt },
          /metadata seqlab.paramSteps "\[1\]" is not 2 step counts/,
        ],
        [
          rawFile({
            ...GOOD,
            "__optimizer__.0.m": { dtype: "F32", shape: [2], data_offsets: [32, 40] },
            __metadata__: { "seqlab.optimizer": "Adam", "seqlab.step": "1" },
          }, cat(W, B, B)),
          { optimizer: f.opt },
          /optimizer state "0.m" is \[2\] F32 in the file but \[3, 2\] F32 in the model/,
        ],
      ];
      for (const [bytes, o, message] of cases) {
        expect(() => s.decodeIntoModel(bytes, f.model, o)).toThrow(message);
      }
      expect(await f.snapshot()).toEqual(f.before);
      expect(s.memory(device).bytesInUse).toBe(mem);
      // not strict: a partial file loads what it has, ignores the rest
      s.decodeIntoModel(rawFile({ bias: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, B), f.model, {
        strict: false,
      });
      expect(Array.from(await f.model.bias!.toArray())).toEqual([7, 8]);
      expect(Array.from(await f.model.weight.toArray())).toEqual(f.before.params[0]);
      f.done();
    });

    test(`save and load files with optimiser state; nothing but the file is left (${device})`, async () => {
      requireDevice(device);
      const dir = await mkdtemp(`${tmpdir()}/seqlab-`);
      const path = `${dir}/ckpt.safetensors`;
      const a = await fixture(device);
      await s.saveModel(path, a.model, { optimizer: a.opt, metadata: { run: "test" } });
      expect(readdirSync(dir)).toEqual(["ckpt.safetensors"]);
      const b = new s.Linear(3, 2, { seed: 99, device });
      const opt = new s.Adam(b.parameters(), { lr: 0.1 });
      const meta = await s.loadModel(path, b, { optimizer: opt });
      expect(meta).toEqual({
        run: "test",
        "seqlab.optimizer": "Adam",
        "seqlab.step": "1",
        "seqlab.paramSteps": "[1,1]",
        "seqlab.checksum": expect.stringMatching(CRC),
      });
      expect(opt.paramSteps).toEqual([1, 1]);
      expect(await Promise.all(b.parameters().map(async (p) => Array.from(await p.toArray())))).toEqual(
        a.before.params,
      );
      expect(
        await Promise.all([...opt.stateTensors().values()].map(async (t) => Array.from(await t.toArray()))),
      )
        .toEqual(a.before.state);
      expect(opt.stepCount).toBe(1);
      expect([...opt.stateTensors().values()].every((t: Tensor) => t.device === device)).toBe(true);
      await expect(s.loadModel(`${dir}/missing.safetensors`, b)).rejects.toThrow(/No such file|not found/i);
      opt.dispose();
      b.dispose();
      a.done();
      await rm(dir, { recursive: true });
    });
  }

  test(
    "buffers (tensor fields without requiresGrad) are saved and loaded with the parameters",
    scoped(async () => {
      class WithTable extends s.Module {
        proj = new s.Linear(2, 2, { device: "cpu" });
        table = s.tensor([1, 2, 3], { device: "cpu" });
        forward(x: Tensor): Tensor {
          return this.proj.forward(x);
        }
      }
      const a = new WithTable(), b = new WithTable();
      s.copyInto(a.table, s.tensor([7, 8, 9], { device: "cpu" }));
      const bytes = await s.encodeModel(a);
      expect([...s.decodeSafetensors(bytes).tensors.keys()].sort()).toEqual([
        "proj.bias",
        "proj.weight",
        "table",
      ]);
      s.decodeIntoModel(bytes, b);
      expect(Array.from(await b.table.toArray())).toEqual([7, 8, 9]);
      a.dispose();
      b.dispose();
    }),
  );

  test(
    "f16 parameters round-trip through a file on cpu",
    scoped(async () => {
      const a = new s.Linear(2, 2, { seed: 3, device: "cpu", dtype: "f16" });
      const b = new s.Linear(2, 2, { seed: 4, device: "cpu", dtype: "f16" });
      s.decodeIntoModel(await s.encodeModel(a), b);
      expect(await b.weight.toArray()).toEqual(await a.weight.toArray());
      expect(s.decodeSafetensors(await s.encodeModel(a)).tensors.get("weight")!.dtype).toBe("f16");
      a.dispose();
      b.dispose();
    }),
  );
});

// ---- checksum, optimiser structure, bit-flip fuzz, durable saves (issue #16) ---------------------------------

/** CRC-32 bit by bit, straight from the polynomial: the oracle for the sliced version. */
function crcRef(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** A seeded uniform in [0, 1) (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), seed | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const hex = (t: ArrayBufferView) =>
  Array.from(new Uint8Array(t.buffer, t.byteOffset, t.byteLength), (b) => b.toString(16).padStart(2, "0"))
    .join("");

/** Everything a load may change, bit for bit: parameters, state by key, step counters. */
async function stateOf(model: s.Module, opt: s.Optimizer): Promise<string> {
  const params = await Promise.all(
    model.namedParameters().map(async ([n, p]) => [n, hex(await p.toArray())]),
  );
  const state = await Promise.all(
    [...opt.stateTensors()].sort(([a], [b]) => (a < b ? -1 : 1)).map(async (
      [k, t],
    ) => [k, hex(await t.toArray())]),
  );
  return JSON.stringify({ params, state, step: opt.stepCount, paramSteps: opt.paramSteps });
}

/** Two linear layers and an Adam stepped `steps` times on cpu (seeded). */
function trained(seed: number, steps: number) {
  const model = new s.Sequential(
    new s.Linear(4, 3, { seed, device: "cpu" }),
    new s.Linear(3, 2, { seed: seed + 1, device: "cpu" }),
  );
  const opt = new s.Adam(model.parameters(), { lr: 0.01 });
  for (let i = 0; i < steps; i++) {
    s.tidy(() => {
      opt.zeroGrad();
      const y = model.forward(s.randn([5, 4], { seed: seed + 10 + i, device: "cpu" }));
      y.mul(y).sum().backward();
      opt.step();
    });
  }
  model.zeroGrad();
  return { model, opt, done: () => (opt.dispose(), model.dispose()) };
}

describe("content checksum", () => {
  test("crc32 equals the bit-by-bit reference and zlib's check value; parts hash as their concatenation", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(crc32(new Uint8Array())).toBe(0);
    const r = rng(7);
    const bytes = Uint8Array.from({ length: 1037 }, () => Math.floor(r() * 256));
    expect(crc32(bytes)).toBe(crcRef(bytes));
    expect(crc32([bytes.subarray(0, 3), bytes.subarray(3, 10), bytes.subarray(10)])).toBe(crcRef(bytes));
  });

  test("a flipped data bit, a wrong or malformed checksum, an unknown seqlab. key: named errors", () => {
    const t = { w: { dtype: "f32" as const, shape: [2], data: new Float32Array([1, 2]) } };
    const bytes = s.encodeSafetensors(t, { note: "x" });
    const sum = s.decodeSafetensors(bytes).metadata["seqlab.checksum"];
    const flipped = bytes.slice();
    flipped[flipped.length - 1] ^= 0x01;
    expect(() => s.decodeSafetensors(flipped)).toThrow(
      new RegExp(
        `checksum mismatch: the file says ${sum}, its contents hash to crc32:[0-9a-f]{8} \\(corrupted`,
      ),
    );
    const meta = (m: Record<string, string>) =>
      rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, __metadata__: m }, le("F32", [1, 2]));
    expect(() => s.decodeSafetensors(meta({ note: "y", "seqlab.checksum": sum }))).toThrow(
      /checksum mismatch/,
    );
    expect(() => s.decodeSafetensors(meta({ note: "x", "seqlab.checksum": sum.toUpperCase() }))).toThrow(
      /"seqlab.checksum" is "CRC32:[0-9A-F]{8}", not "crc32:" and 8 lowercase hex digits/,
    );
    expect(() => s.decodeSafetensors(meta({ note: "x", "seqlab.checksun": sum }))).toThrow(
      /__metadata__ "seqlab.checksun" is not a key seqlab writes/,
    );
    // the same contents laid out by another writer (reversed order, unpadded, metadata first) verify
    const relaid = rawFile(
      `{"__metadata__":{"seqlab.checksum":"${sum}","note":"x"},"w":{"shape":[2],"dtype":"F32","data_offsets":[0,8]}}`,
      le("F32", [1, 2]),
    );
    expect(s.decodeSafetensors(relaid).tensors.get("w")!.data).toEqual(new Float32Array([1, 2]));
    // files without a checksum (other tools) load
    expect(s.decodeSafetensors(meta({ note: "x" })).metadata).toEqual({ note: "x" });
  });

  test("what the checksum adds: a step count flipped 2 -> 3 loads silently without one, is refused with one", async () => {
    const src = trained(1, 2), dst = trained(5, 3);
    const withSum = await s.encodeModel(src.model, { optimizer: src.opt });
    const f = s.decodeSafetensors(withSum);
    const without = s.encodeSafetensors(f.tensors, f.metadata, { checksum: false });
    const flipStep = (b: Uint8Array) => {
      const at = new TextDecoder().decode(b).indexOf('"seqlab.step":"2"') + '"seqlab.step":"'.length;
      const out = b.slice();
      out[at] ^= 0x01; // "2" (0x32) -> "3" (0x33): still a consistent counter (paramSteps [2,2,2,2] <= 3)
      return out;
    };
    expect(() => s.decodeIntoModel(flipStep(withSum), dst.model, { optimizer: dst.opt })).toThrow(
      /checksum mismatch/,
    );
    s.decodeIntoModel(flipStep(without), dst.model, { optimizer: dst.opt });
    expect(dst.opt.stepCount).toBe(3);
    src.done();
    dst.done();
  });

  test(
    "encodeModel refuses user metadata in the seqlab. namespace",
    scoped(async () => {
      const l = new s.Linear(2, 2, { device: "cpu" });
      await expect(s.encodeModel(l, { metadata: { "seqlab.step": "3" } })).rejects.toThrow(
        /metadata key "seqlab.step" is reserved/,
      );
      l.dispose();
    }),
  );
});

describe("optimiser state must be exactly what the optimiser keeps", () => {
  /** The trained fixture's file, decoded, edited by `edit`, re-encoded without a checksum. */
  async function edited(
    src: { model: s.Module; opt: s.Optimizer },
    edit: (t: Map<string, s.HostTensor>, m: Record<string, string>) => void,
  ): Promise<Uint8Array> {
    const f = s.decodeSafetensors(await s.encodeModel(src.model, { optimizer: src.opt }));
    edit(f.tensors, f.metadata);
    return s.encodeSafetensors(f.tensors, f.metadata, { checksum: false });
  }
  const rename = (t: Map<string, s.HostTensor>, from: string, to: string) => {
    t.set(to, t.get(from)!);
    t.delete(from);
  };

  test("renamed, missing, unknown or unstepped slots and inconsistent step counters are refused whole", async () => {
    const src = trained(1, 2), dst = trained(5, 3);
    const before = await stateOf(dst.model, dst.opt);
    const mem = s.memory("cpu").bytesInUse;
    const cases: [(t: Map<string, s.HostTensor>, m: Record<string, string>) => void, RegExp][] = [
      // the issue's case: "0.v" renamed "0.w" loaded, left v at zero, and the next step moved a weight 1.66e4
      [
        (t) => rename(t, "__optimizer__.0.v", "__optimizer__.0.w"),
        /optimizer state "0.w": Adam keeps no slot "w" \(its slots: m, v\)/,
      ],
      [
        (t) => t.delete("__optimizer__.3.m"),
        /the file lacks optimizer state "3.m" \(Adam keeps m, v for parameter 3, at step 2\)/,
      ],
      [
        (t) => rename(t, "__optimizer__.1.m", "__optimizer__.01.m"),
        /optimizer state "01.m" names no parameter \(4 parameters\)/,
      ],
      [
        (t) => rename(t, "__optimizer__.1.m", "__optimizer__.4.m"),
        /optimizer state "4.m" names no parameter/,
      ],
      [
        (_, m) => (m["seqlab.paramSteps"] = "[0,0,0,0]"),
        /optimizer state "0.m": by seqlab.paramSteps no parameter sharing parameter 0's device and dtype has/,
      ],
      [
        (_, m) => (m["seqlab.paramSteps"] = "[2,3,2,2]"),
        /seqlab.paramSteps \[2,3,2,2\]: parameter 1 has taken 3 steps, more than seqlab.step 2/,
      ],
      [(_, m) => (m["seqlab.paramSteps"] = "[2,2,2]"), /seqlab.paramSteps "\[2,2,2\]" is not 4 step counts/],
      [(_, m) => (m["seqlab.paramSteps"] = "[2,2,-1,2]"), /is not 4 step counts/],
      [(_, m) => (m["seqlab.step"] = "02"), /metadata seqlab.step "02" is not a step count/],
      [(_, m) => (m["seqlab.step"] = ""), /metadata seqlab.step "" is not a step count/],
      [(_, m) => (m["seqlab.step"] = "1"), /parameter 0 has taken 2 steps, more than seqlab.step 1/],
      [(t) => t.delete("layers.1.bias"), /the file has no tensor "layers.1.bias"/],
      [
        (t) => t.set("__optimizer__.0.m", { dtype: "f64", shape: [4, 3], data: new Float64Array(12) }),
        /optimizer state "0.m" is \[4, 3\] F64 in the file but \[4, 3\] F32 in the model/,
      ],
    ];
    for (const [edit, message] of cases) {
      let err: unknown;
      try {
        s.decodeIntoModel(await edited(src, edit), dst.model, { optimizer: dst.opt });
      } catch (e) {
        err = e;
      }
      expect(err, String(message)).toBeInstanceOf(s.SafetensorsError);
      expect((err as Error).message).toMatch(message);
    }
    expect(await stateOf(dst.model, dst.opt)).toBe(before); // bit-identical after every refusal
    expect(s.memory("cpu").bytesInUse).toBe(mem);
    // the unedited file (no checksum either) loads
    s.decodeIntoModel(await edited(src, () => {}), dst.model, { optimizer: dst.opt });
    expect(await stateOf(dst.model, dst.opt)).toBe(await stateOf(src.model, src.opt));
    src.done();
    dst.done();
  });

  test(
    "SGD: plain SGD keeps no slot, momentum SGD keeps momentum",
    scoped(async () => {
      const a = new s.Linear(2, 2, { seed: 1, device: "cpu" });
      const mom = new s.SGD(a.parameters(), { lr: 0.1, momentum: 0.9 });
      a.forward(s.ones([1, 2], { device: "cpu" })).sum().backward();
      mom.step();
      const bytes = await s.encodeModel(a, { optimizer: mom });
      const plain = new s.SGD(a.parameters(), { lr: 0.1 });
      plain.step(); // no state, only counters
      expect(() => s.decodeIntoModel(bytes, a, { optimizer: plain })).toThrow(
        /optimizer state "0.momentum": SGD keeps no slot "momentum" \(its slots: none\)/,
      );
      const again = new s.SGD(a.parameters(), { lr: 0.1, momentum: 0.9 });
      s.decodeIntoModel(bytes, a, { optimizer: again });
      expect([...again.stateTensors().keys()]).toEqual(["0.momentum", "1.momentum"]);
      for (const o of [mom, plain, again]) o.dispose();
      a.zeroGrad();
      a.dispose();
    }),
  );

  test(
    "state kept per (device, dtype) group: a group that never stepped holds none, and the file must agree",
    scoped(async () => {
      const w32 = s.param(s.tensor([1, 2], { device: "cpu" }));
      const w16 = s.param(s.tensor([3], { device: "cpu", dtype: "f16" }));
      const model = { namedParameters: (): [string, s.Tensor][] => [["a", w32], ["b", w16]] };
      const opt = new s.Adam([w32, w16], { lr: 0.1 });
      w32.mul(w32).sum().backward(); // only the f32 parameter has a gradient
      opt.step();
      expect([...opt.stateTensors().keys()]).toEqual(opt.stateKeys());
      expect(opt.stateKeys()).toEqual(["0.m", "0.v"]);
      const bytes = await s.encodeModel(model, { optimizer: opt });
      const fresh = new s.Adam([w32, w16], { lr: 0.1 });
      s.decodeIntoModel(bytes, model, { optimizer: fresh });
      expect(fresh.paramSteps).toEqual([1, 0]);
      expect([...fresh.stateTensors().keys()]).toEqual(["0.m", "0.v"]);
      const f = s.decodeSafetensors(bytes);
      f.tensors.set("__optimizer__.1.m", { dtype: "f16", shape: [1], data: new Float16Array(1) });
      f.tensors.set("__optimizer__.1.v", { dtype: "f16", shape: [1], data: new Float16Array(1) });
      expect(() => s.decodeIntoModel(s.encodeSafetensors(f.tensors, f.metadata), model, { optimizer: fresh }))
        .toThrow(/optimizer state "1.m": by seqlab.paramSteps no parameter sharing parameter 1's device/);
      w32.zeroGrad();
      for (const t of [opt, fresh, w32, w16]) t.dispose();
    }),
  );
});

describe("bit flips: refused with a named error or loaded identically, never a silent change", () => {
  /** The header text around byte k, for reports. */
  const context = (b: Uint8Array, k: number) =>
    JSON.stringify(new TextDecoder().decode(b.subarray(Math.max(0, k - 12), k + 4)));

  /**
   * Flips `n` seeded bits, one per try, in bytes [lo, hi) of `bytes` and loads each into `dst`. Counts
   * refusals (each a SafetensorsError that left `dst` bit-identical) and identical loads (`dst` then
   * equals the source, and is restored); anything else is a silent change, returned with its bit.
   */
  async function fuzz(
    bytes: Uint8Array,
    [lo, hi]: [number, number],
    n: number,
    seed: number,
    dst: { model: s.Module; opt: s.Optimizer },
    source: string,
  ) {
    const restore = await s.encodeModel(dst.model, { optimizer: dst.opt });
    const before = await stateOf(dst.model, dst.opt);
    const r = rng(seed);
    const out = {
      refused: 0,
      identical: 0,
      same: [] as string[],
      silent: [] as string[],
      otherErrors: [] as string[],
    };
    for (let i = 0; i < n; i++) {
      const bit = lo * 8 + Math.floor(r() * (hi - lo) * 8);
      const b = bytes.slice();
      b[bit >> 3] ^= 1 << (bit & 7);
      try {
        s.decodeIntoModel(b, dst.model, { optimizer: dst.opt });
      } catch (e) {
        if (!(e instanceof s.SafetensorsError)) out.otherErrors.push(`bit ${bit}: ${e}`);
        else if ((await stateOf(dst.model, dst.opt)) !== before) {
          out.silent.push(`bit ${bit}: refused but changed`);
        } else out.refused++;
        continue;
      }
      const now = await stateOf(dst.model, dst.opt);
      if (now === source) {
        out.identical++;
        out.same.push(`${context(bytes, bit >> 3)} -> ${context(b, bit >> 3)}`);
      } else {
        const tensorsOnly = (x: string) => JSON.stringify({ ...JSON.parse(x), step: 0, paramSteps: [] });
        out.silent.push(
          `bit ${bit} (byte ${bit >> 3} ${JSON.stringify(String.fromCharCode(bytes[bit >> 3]))}` +
            `${tensorsOnly(now) === tensorsOnly(source) ? ", step counters only" : ", TENSORS"})`,
        );
      }
      s.decodeIntoModel(restore, dst.model, { optimizer: dst.opt });
    }
    return out;
  }

  test("500 header flips and 500 data flips of a checkpoint with its checksum", async () => {
    const src = trained(1, 2), dst = trained(5, 3);
    const bytes = await s.encodeModel(src.model, { optimizer: src.opt });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const source = await stateOf(src.model, src.opt);
    const header = await fuzz(bytes, [0, 8 + n], 500, 16, dst, source);
    const data = await fuzz(bytes, [8 + n, bytes.length], 500, 17, dst, source);
    console.log(
      `header flips (${8 + n} bytes): ${header.refused} refused, ${header.identical} loaded identically (${
        header.same.join(", ")
      }); ` +
        `data flips (${bytes.length - 8 - n} bytes): ${data.refused} refused, ${data.identical} identical`,
    );
    for (const r of [header, data]) {
      expect(r.otherErrors).toEqual([]);
      expect(r.silent).toEqual([]);
      expect(r.refused + r.identical).toBe(500);
    }
    expect(data.refused).toBe(500); // CRC-32 detects every single-bit flip
    src.done();
    dst.done();
  });

  test("a flip in the checksum's key never turns the checksum off: every bit of the key, each with a data flip", async () => {
    const src = trained(1, 2);
    const bytes = await s.encodeModel(src.model, { optimizer: src.opt });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const key = new TextEncoder().encode('"seqlab.checksum"');
    const at = bytes.subarray(8, 8 + n).findIndex((_, i) => key.every((c, j) => bytes[8 + i + j] === c)) + 8 +
      1;
    expect(at).toBeGreaterThan(8);
    const loaded: string[] = [];
    for (let bit = 0; bit < 8 * (key.length - 2); bit++) {
      const b = bytes.slice();
      b[at + (bit >> 3)] ^= 1 << (bit & 7);
      b[8 + n + 5] ^= 4; // and one data bit
      try {
        s.decodeSafetensors(b);
        loaded.push(new TextDecoder().decode(b.subarray(at, at + key.length - 2)));
      } catch (e) {
        expect(e).toBeInstanceOf(s.SafetensorsError);
      }
    }
    // before, a flip in the "seqlab." prefix made the key a user's: no checksum, the data flip loaded
    expect(loaded).toEqual([]);
    src.done();
  });

  test("500 header flips without a checksum: structure checks alone (counts reported, slots never renamed)", async () => {
    const src = trained(1, 2), dst = trained(5, 3);
    const f = s.decodeSafetensors(await s.encodeModel(src.model, { optimizer: src.opt }));
    const bytes = s.encodeSafetensors(f.tensors, f.metadata, { checksum: false });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const r = await fuzz(bytes, [0, 8 + n], 500, 18, dst, await stateOf(src.model, src.opt));
    console.log(
      `header flips without checksum (${8 + n} bytes): ${r.refused} refused, ${r.identical} identical (${
        r.same.join(", ")
      }), ` +
        `${r.silent.length} changed: ${r.silent.join("; ")}`,
    );
    expect(r.otherErrors).toEqual([]);
    expect(r.refused + r.identical + r.silent.length).toBe(500);
    // without a checksum only a step-count digit can change silently (see "what the checksum adds")
    expect(r.silent.filter((x) => !x.endsWith("step counters only)"))).toEqual([]);
    src.done();
    dst.done();
  });
});

describe("atomic, durable saves", () => {
  const names = (dir: string) => readdirSync(dir).sort();

  test(
    "a save removes stale temporary files of its own checkpoint, and only those",
    scoped(async () => {
      const dir = await mkdtemp(`${tmpdir()}/seqlab-`);
      const path = `${dir}/ckpt.safetensors`;
      const junk = new Uint8Array(1000);
      for (
        const n of ["ckpt.safetensors.tmp-4fz9q1", "ckpt.safetensors.tmp-x", "other.safetensors.tmp-4fz9q1"]
      ) {
        await writeFile(`${dir}/${n}`, junk);
      }
      await writeFile(`${dir}/ckpt.safetensors.tmp-notes.txt`, junk); // not a name a save makes
      await writeFile(`${dir}/my.ckpt.safetensors.tmp-4fz9q1`, junk); // another checkpoint's
      const l = new s.Linear(2, 2, { seed: 1, device: "cpu" });
      await s.saveModel(path, l);
      expect(names(dir)).toEqual([
        "ckpt.safetensors",
        "ckpt.safetensors.tmp-notes.txt",
        "my.ckpt.safetensors.tmp-4fz9q1",
        "other.safetensors.tmp-4fz9q1",
      ]);
      await s.loadModel(path, l);
      l.dispose();
      await rm(dir, { recursive: true });
    }),
  );

  test(
    "a save killed mid-write leaves the previous checkpoint loadable; the next save cleans up",
    async () => {
      const dir = await Deno.makeTempDir();
      const path = `${dir}/ckpt.safetensors`;
      const small = new s.Linear(3, 2, { seed: 1, device: "cpu" });
      await s.saveModel(path, small);
      const previous = await Deno.readFile(path);
      // the child saves one 128 MB tensor to the same path; it is killed once its temporary file has bytes
      const script = `${dir}/save_big.ts`;
      await Deno.writeTextFile(
        script,
        `import * as s from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)};
const w = s.full([32 * 2 ** 20], 0.5, { device: "cpu" });
await s.saveModel(Deno.args[0], { namedParameters: () => [["w", w]] });
`,
      );
      const config = new URL("../deno.json", import.meta.url).pathname;
      const isTmp = (n: string) => /^ckpt\.safetensors\.tmp-[0-9a-z]+$/.test(n);
      let killedMidWrite = false;
      for (let attempt = 0; attempt < 3 && !killedMidWrite; attempt++) {
        const child = new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "--config", config, script, path],
          stdout: "null",
          stderr: "null",
        }).spawn();
        let exited = false;
        const status = child.status.then((st) => ((exited = true), st));
        while (!exited) {
          const tmp = names(dir).find(isTmp);
          const size = tmp ? (await Deno.stat(`${dir}/${tmp}`).catch(() => null))?.size : 0;
          if (size) {
            child.kill("SIGKILL");
            killedMidWrite = (await status).signal === "SIGKILL";
            console.log(
              `attempt ${attempt + 1}: killed the save with ${size} bytes of about ${2 ** 27} written`,
            );
            break;
          }
          await new Promise((r) => setTimeout(r, 2));
        }
        await status;
        if (!killedMidWrite) await Deno.writeFile(path, previous); // the child finished first: try again
      }
      expect(killedMidWrite, "never caught the child while it was writing").toBe(true);
      expect(names(dir).filter(isTmp).length).toBe(1); // what the killed save left
      expect(await Deno.readFile(path)).toEqual(previous);
      const back = new s.Linear(3, 2, { seed: 2, device: "cpu" });
      await s.loadModel(path, back);
      expect(await back.weight.toArray()).toEqual(await small.weight.toArray());
      await s.saveModel(path, back);
      expect(names(dir)).toEqual(["ckpt.safetensors", "save_big.ts"]);
      back.dispose();
      small.dispose();
      await Deno.remove(dir, { recursive: true });
    },
    120_000,
  );
});
