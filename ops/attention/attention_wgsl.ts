/**
 * WGSL attention programs.
 *
 * Designed for the software adapter first (lavapipe: 8-wide SIMD across invocations, 2 CPU threads). What
 * was measured there decides the versions: every storage-buffer load is a per-lane loop with a bounds
 * check, even when all lanes read the same address; workgroup-memory loads are the same loop, plus
 * barriers; a texel fetch from a sampled texture is a vector gather, about 10x cheaper. And compile time
 * matters: lavapipe's LLVM takes ~3x longer per doubling of the vec4 registers a kernel keeps (q and the
 * accumulator, R x D / 4 each), and far longer when storage accesses are unrolled (each is a per-lane
 * loop). So: register blocks sized from a budget, storage reads and writes staged through private arrays
 * in rolled loops, masks driven by uniforms (one pipeline per head width and block shape, not per mask
 * combination; only ALiBi and the per-element block-sparse lookup are compile-time variants).
 *
 * Flash forward versions (numbers are never reused; timings in bench/results/attention.json):
 * - v1 rows-buffer: one invocation per query row keeping the running max, sum and the D-vector
 *   accumulator, looping over keys read from the storage buffers (the same address in every lane). The
 *   naive baseline; all of its time goes to the K/V loads.
 * - v2 tiled-shared: the paper's tiling: the workgroup (64 rows) copies each K/V block (Bc keys,
 *   Bc = M / 4D from the workgroup-memory limit M) into workgroup memory between barriers, then each
 *   invocation runs v1's loop on the tile. Barely faster: shared loads cost what global ones do here.
 * - v3 rows-texture: K and V are first packed (one pass, linear in S D) into rgba32float texture arrays;
 *   each invocation owns R query rows (R D floats of q and of the accumulator, in named registers) and
 *   fetches each key's D / 4 texels once for its R rows. The default ("auto"). Most of its time is the
 *   K and V fetches, per lane although every lane of a workgroup reads the same texel, so only more rows
 *   per invocation amortise them (a larger blockQ runs faster, at a longer cold compile).
 * All three share the block loop: a host-computed table marks each (query block, key block) tile SKIP
 * (never touched: causal upper triangle, outside the window, zero sparse block), FULL (no mask work) or
 * PARTIAL (per-element mask), and the online softmax runs over chunks of 4 keys.
 *
 * Every program without a barrier reads its uniform block once into a private copy (see
 * {@link privateUniforms}): the masks' per-(row, key) uniform reads had cost more than the arithmetic.
 *
 * Other programs:
 * - pack v1: a strided (n0, n1, n2, D) view into a texture of D / 4 texels per row (zero-padded).
 * - bwd-prep v1: per row, L and D_i = rowsum(dO * O) into a texture.
 * - bwd-dq v1: R query rows per invocation, K/V from textures, recomputing P = exp(S - L).
 * - bwd-dkdv v1: R key rows per invocation, looping over the query blocks (and the query heads of a
 *   GQA group, so no atomics), Q/dO/L/D from textures. Looped over all T rows: past lavapipe's loop
 *   limit (G T > 65535) it stopped short.
 * - bwd-dkdv v2: v1 over a range of query rows per dispatch, adding to the partial dK, dV of the ranges
 *   before (G x rows per dispatch <= MAX_LOOP).
 * - softmax v1 (standard attention): one invocation per row of a materialised S: max, sum, write passes
 *   with the same mask predicate, writing P and L.
 * - decode v1: one workgroup per (batch, head) for a single query; lanes split the cached keys (storage
 *   buffers, no packing: the cache changes every step), partial softmax states merged in workgroup memory.
 *
 * Flash forward, dQ and dK/dV share one prelude ({@link flashPrelude}: uniforms, the operand and mask
 * bindings, the texture row mapping, the visibility predicate) and its pieces: the (batch, head) indexing
 * of a workgroup, the key-chunk loop over the block table, the key mask and the ALiBi bias.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";

/** Uniform fields shared by the attention programs, in order ("name:i" is i32, "name:f" f32, else u32). */
export const FIELDS = [
  "T",
  "S",
  "H",
  "G",
  "D",
  "B",
  "off:i",
  "winL:i",
  "winR:i",
  "glob:i",
  "scale:f",
  "spH",
  "nbr",
  "nbc",
  "br",
  "bc",
  "tabH",
  "nqb",
  "nkb",
  "BR",
  "BC",
  "qOff",
  "qsB",
  "qsH",
  "qsT",
  "qsD",
  "kpr",
  "Hkv",
  "bh0",
  "nbh",
  "x0",
  "x1",
  "nR",
  "nD4",
  "cR:i",
  "spOn",
  "keepOn",
  "osB",
  "osH",
  "osT",
  "kB",
  "kH",
  "kT",
  "qB",
  "qH",
  "qT",
  "pad",
] as const;

/** Field name without its type suffix. */
export type Field = typeof FIELDS[number] extends infer F ? F extends `${infer N}:${string}` ? N : F : never;

/** Packs the fields (missing ones are 0) into uniform words. */
export function packUniforms(v: Partial<Record<Field, number>>): Uint32Array {
  const out = new Uint32Array(FIELDS.length);
  const f = new Float32Array(out.buffer), s = new Int32Array(out.buffer);
  FIELDS.forEach((spec, i) => {
    const [name, t] = spec.split(":") as [Field, string | undefined];
    const x = v[name] ?? 0;
    if (t === "f") f[i] = x;
    else if (t === "i") s[i] = x;
    else out[i] = x;
  });
  return out;
}

const UNI = `struct Uni { ${
  FIELDS.map((spec) => {
    const [n, t] = spec.split(":");
    return `${n}: ${t === "f" ? "f32" : t === "i" ? "i32" : "u32"}`;
  }).join(", ")
} };
@group(0) @binding(0) var<uniform> u: Uni;`;

/**
 * Texture layout of a packed operand: each texture row holds `kpr = TEX_WIDTH / (D / 4)` whole rows of
 * the operand (D / 4 texels each), texture rows wrap into array layers at the `layers` rows per layer the
 * shader is compiled with (the device's maxTextureDimension2D). One-texel rows (the keep mask, L and D_i,
 * the block-sparse mask) use the same mapping with kpr = TEX_WIDTH. Operand row (b, h, i) of K and V is
 * texture row b kB + h kH + i kT, of Q and dO b qB + h qH + i qT (uniforms): (H T, T, 1) where the pack
 * program wrote them in (B, heads, rows) order, their memory order divided by D where a contiguous f32
 * tensor was copied in as it lies.
 */
export const TEX_WIDTH = 256;

/** The compile-time variant of a program (part of the pipeline key); every mask is a uniform. */
export interface Variant {
  alibi: boolean;
  /** Look the block-sparse mask up per element (tiles that do not line up with its blocks). */
  sparseElem: boolean;
}

/** Pipeline-key fragment of a variant. */
export function variantKey(v: Variant): string {
  return `${v.alibi ? "alibi" : "plain"}${v.sparseElem ? "+sparse" : ""}`;
}

/** The "texture row" mapping: row index -> (x of its first texel, y, layer). */
function texRowFn(D4: number, layers: number): string {
  return `
fn trow(r: u32, kpr: u32) -> vec3<i32> {
  let y = r / kpr;
  return vec3<i32>(i32((r % kpr) * ${D4}u), i32(y % ${layers}u), i32(y / ${layers}u));
}
fn trow1(r: u32) -> vec3<i32> {
  let y = r / ${TEX_WIDTH}u;
  return vec3<i32>(i32(r % ${TEX_WIDTH}u), i32(y % ${layers}u), i32(y / ${layers}u));
}
fn tex1(t: texture_2d_array<f32>, r: u32) -> vec4<f32> {
  let c = trow1(r);
  return textureLoad(t, vec2<i32>(c.x, c.y), c.z, 0);
}`;
}

/**
 * The element predicate of attention_options.ts's `visible` (lengths and the padding mask are checked by
 * the caller): causal as a right bound cR (0, or unbounded), window [winL, winR] (unbounded when off),
 * global tokens, and the block-sparse mask when spOn.
 */
function visFn(sparse: "texture" | "storage" | "none"): string {
  const at = "(hs * u.nbr + i / u.br) * u.nbc + j / u.bc";
  // The tiled kernels' tiles normally line up with the sparse blocks (the table skips zero blocks), so
  // they look the mask up per element only in the sparseElem variant: per-element lookups inlined at
  // every (row, key) of a chunk multiplied lavapipe's compile time (seconds per pipeline).
  const look = sparse === "texture"
    ? `ok = ok && tex1(smask, ${at}).x != 0.0;`
    : sparse === "storage"
    ? `if (u.nbc > 0u) { ok = ok && smask[${at}] != 0u; }`
    : "";
  return `
fn vis(hs: u32, i: u32, j: u32) -> bool {
  let p = i32(i) + u.off; let jj = i32(j);
  var ok = jj <= p + u.cR && ((jj >= p - u.winL && jj <= p + u.winR) || jj < u.glob || p < u.glob);
  ${look}
  return ok;
}`;
}

/**
 * Reads the uniform block once per invocation into a private copy `U` and points every `u.` at it: on
 * lavapipe the block is a storage binding (see runtime/webgpu.ts), and a storage read is a per-lane loop
 * with a bounds check that LLVM does not hoist out of the key loop, so the mask predicate's six reads per
 * (row, key) cost more than the arithmetic. Programs with a barrier (flash v2, decode) keep `u`: the
 * uniformity analysis must see their loop bounds as uniform.
 */
function privateUniforms(keep: boolean, code: string): string {
  if (keep) return code;
  const out = code.replace(/\bu\./g, "U.").replace(/(fn main\([^{]*\{)/, "$1\n  U = u;");
  return out.replace("var<uniform> u: Uni;", "var<uniform> u: Uni;\nvar<private> U: Uni;");
}

const NEG = "-1.0e30";
const NEG_INF = "bitcast<f32>(0xff800000u)";
const rng = (n: number) => [...Array(n).keys()];

/** Bindings after the uniform block, in order; returns the WGSL and the names (the host binds the same order). */
class Bindings {
  names: string[] = [];
  decl: string[] = [];
  add(name: string, decl: string): this {
    this.decl.push(`@group(0) @binding(${this.names.length + 1}) ${decl}`);
    this.names.push(name);
    return this;
  }
  storage(name: string, type: string, write = false): this {
    return this.add(name, `var<storage, ${write ? "read_write" : "read"}> ${name}: array<${type}>;`);
  }
  texture(name: string): this {
    return this.add(name, `var ${name}: texture_2d_array<f32>;`);
  }
  /** A write-only rgba32float storage texture (a pack target). */
  target(name: string): this {
    return this.add(name, `var ${name}: texture_storage_2d_array<rgba32float, write>;`);
  }
  /**
   * The mask inputs of the flash programs, after their operands: the block table, key lengths, the keep
   * mask (texture), [the block-sparse mask (texture)], [ALiBi slopes].
   */
  masks(v: Variant): this {
    this.storage("tab", "u32").storage("lens", "u32").texture("keep");
    if (v.sparseElem) this.texture("smask");
    if (v.alibi) this.storage("slopes", "f32");
    return this;
  }
  get wgsl(): string {
    return this.decl.join("\n");
  }
}

/** A generated program: its source and the order of its bindings. */
export interface Source {
  code: string;
  bindings: string[];
}

const f16 = (dtype: DType) => (dtype === "f16" ? "enable f16;" : "");

/** The top of every program: its name, f16 when needed, the uniform block, its bindings, then `decls`. */
function header(title: string, dtype: DType, b: Bindings, ...decls: string[]): string {
  return [`// attention ${title}`, f16(dtype), UNI, b.wgsl, ...decls].join("\n");
}

/**
 * The prelude of flash forward, dQ and dK/dV: {@link header}, `decls` (workgroup memory), the texture
 * row mapping for rows of D4 texels, and the visibility predicate (reading the block-sparse mask texture
 * in the sparseElem variant).
 */
function flashPrelude(
  title: string,
  dtype: DType,
  b: Bindings,
  D4: number,
  layers: number,
  v: Variant,
  decls = "",
): string {
  return header(title, dtype, b, decls, texRowFn(D4, layers), visFn(v.sparseElem ? "texture" : "none"));
}

/**
 * main() of a program with one workgroup per (query block wid.x, batch and head wid.y [+ wid.z]):
 * bh (possibly past the last head: such workgroups compute on the last one, bhc, and write nothing),
 * b, h, its kv head hk, its block-sparse head hs and its first query row q0.
 */
function queryMain(WG: number): string {
  return `@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let bh = u.bh0 + wid.y + wid.z * 65535u;
  let inRange = bh < u.nbh;
  let bhc = min(bh, u.nbh - 1u);
  let b = bhc / u.H; let h = bhc % u.H; let hk = h / u.G;
  let hs = h * u.spH;
  let q0 = wid.x * u.BR;`;
}

/** The keys a query workgroup visits: its ALiBi slope, key length, first K/V row and block-table row. */
function keyRange(v: Variant): string {
  return `${v.alibi ? "let slope = slopes[h];" : ""}
  let Seff = lens[b];
  let kvBase = (b * u.Hkv + hk) * u.S;
  let kvT = b * u.kB + hk * u.kH;
  let tb = (h * u.tabH * u.nqb + wid.x) * u.nkb;`;
}

/**
 * The loop over chunks of CH keys j .. j + CH - 1 up to Seff, entering the block table at each block of
 * u.BC keys: SKIP blocks are jumped over, `full` says the chunk needs no mask, k1 ends the block.
 */
function chunkLoop(chunk: string): string {
  return `var j = 0u; var k1 = 0u; var st = 0u;
  loop {
    if (j >= Seff) { break; }
    if (j >= k1) {
      st = tab[tb + j / u.BC];
      k1 = min(j + u.BC, Seff);
      if (st == 0u) { j = k1; continue; }
    }
    let full = st == 2u && j + ${CH}u <= k1;
    ${chunk}
    j += ${CH}u;
  }`;
}

/** Declares `name`: whether key `idx` (of batch b) exists (`cond`) and the keep mask lets it be seen. */
function keyOk(name: string, cond: string, idx: string): string {
  return `var ${name} = ${cond}; if (u.keepOn != 0u) { ${name} = ${name} && tex1(keep, b * u.S + ${idx}).x != 0.0; }`;
}

/** The ALiBi bias of query row i against key j, subtracted from score s. */
const alibiBias = (s: string, i: string, j: string) =>
  `${s} -= slope * abs(f32(i32(${i}) + u.off - i32(${j})));`;

/** The texel i of the packed row whose first texel `loc` (from trow) gives. */
const texAt = (t: string, loc: string, i: number | string) =>
  `textureLoad(${t}, vec2<i32>(${loc}.x + ${
    typeof i === "number" ? i : `i32(${i})`
  }, ${loc}.y), ${loc}.z, 0)`;

/** Keys per online-softmax chunk. */
export const CH = 4;

/** Configuration of a flash forward program. */
export interface FlashConfig {
  version: 1 | 2 | 3;
  dtype: DType;
  /** Head width rounded up to a multiple of 4, in vec4s. */
  D4: number;
  /** Query rows per invocation. */
  R: number;
  /** Invocations per workgroup. */
  WG: number;
  /** Keys per kernel block (v2: the workgroup-memory tile). */
  BC: number;
  /** Texture rows per layer (the device's maxTextureDimension2D). */
  layers: number;
  variant: Variant;
}

/**
 * Storage-buffer reads of R rows (x < u.nR) of D / 4 vec4 (i < u.nD4) into a private array, in rolled
 * loops (bounds from uniforms, so the compiler cannot unroll them). `rowAt(x)` gives the element offset
 * of row x's first element; elements are `u.qsD` apart.
 */
function stageIn(
  R: number,
  D4: number,
  arr: string,
  dst: string,
  rowAt: string,
  dstride: string,
  scale = "",
): string {
  return `var ${dst}: array<vec4<f32>, ${R * D4}>;
  for (var x = 0u; x < u.nR; x++) {
    let base = ${rowAt};
    for (var i = 0u; i < u.nD4; i++) {
      var t = vec4<f32>(0.0);
      for (var e = 0u; e < 4u; e++) { let d = i * 4u + e; if (d < u.D) { t[e] = f32(${arr}[base + d * ${dstride}]); } }
      ${dst}[x * ${D4}u + i] = t${scale};
    }
  }`;
}

/**
 * Writes R staged rows of `src` times `mul` (may use x) to `out` (rows of unit D stride from `rowAt`), rolled; where
 * `accumulate` (a WGSL condition) holds, adds to what `out` holds instead.
 */
function stageOut(
  D4: number,
  out: string,
  dtype: DType,
  src: string,
  rowAt: string,
  valid: string,
  mul: string,
  op = "*",
  accumulate = "",
): string {
  const store = accumulate
    ? `var y = t[e]; if (${accumulate}) { y += f32(${out}[ob + d]); } ${out}[ob + d] = ${dtype}(y);`
    : `${out}[ob + d] = ${dtype}(t[e]);`;
  return `for (var x = 0u; x < u.nR; x++) {
    if (!(${valid})) { continue; }
    let ob = ${rowAt};
    let f = ${mul};
    for (var i = 0u; i < u.nD4; i++) {
      let t = ${src}[x * ${D4}u + i] ${op} f;
      for (var e = 0u; e < 4u; e++) { let d = i * 4u + e; if (d < u.D) { ${store} } }
    }
  }`;
}

/** Copies staged rows into named registers `${name}${x}_${i}` (constant indices). */
function toRegs(R: number, D4: number, arr: string, name: string, kind = "let"): string {
  return rng(R).map((x) => rng(D4).map((i) => `${kind} ${name}${x}_${i} = ${arr}[${x * D4 + i}];`).join(" "))
    .join("\n  ");
}

/** Copies named registers back into a staging array. */
function fromRegs(R: number, D4: number, arr: string, name: string): string {
  return `var ${arr}: array<vec4<f32>, ${R * D4}>;
  ${
    rng(R).map((x) => rng(D4).map((i) => `${arr}[${x * D4 + i}] = ${name}${x}_${i};`).join(" ")).join("\n  ")
  }`;
}

/**
 * Flash forward, versions 1-3 (see the module header). Workgroups: (query blocks, B H [split over y, z]).
 * Bindings: Q (strided storage), K, V (textures for v3, contiguous vec4 storage for v1/v2), tab, lens,
 * keep (texture), [smask (texture)], [slopes], O, L.
 */
export function flashForwardSource(c: FlashConfig): Source {
  const { D4, R, WG, BC, version, variant: v, dtype } = c;
  const rows = rng(R), dims = rng(D4), keys = rng(CH);
  const b = new Bindings().storage("Q", dtype);
  if (version === 3) b.texture("K").texture("V");
  else b.storage("K", "vec4<f32>").storage("V", "vec4<f32>");
  b.masks(v).storage("O", dtype, true).storage("L", "f32", true);
  const row = (x: number) => `(q0 + ${x * WG}u + lid.x)`;
  // masks: evaluated only for chunks that are not FULL (a uniform branch)
  const masks = () => {
    const lines = [...rows.flatMap((x) => keys.map((k) => `var ok${x}_${k} = true;`)), "if (!full) {"];
    for (const k of keys) {
      lines.push(`  ${keyOk(`kv${k}`, `j + ${k}u < k1`, `jk${k}`)}`);
      for (const x of rows) lines.push(`  ok${x}_${k} = kv${k} && vis(hs, ${row(x)}, j + ${k}u);`);
    }
    lines.push("}");
    return lines;
  };
  const scoreFix = (x: number, k: number) =>
    `${
      v.alibi ? `${alibiBias(`s${x}_${k}`, row(x), `j + ${k}u`)} ` : ""
    }s${x}_${k} = select(${NEG}, s${x}_${k}, ok${x}_${k});`;
  const update = (x: number, rescale: string) => {
    const smax = keys.map((k) => `s${x}_${k}`).reduce((a, z) => `max(${a}, ${z})`);
    return [
      `{ let mn = max(m${x}, ${smax}); let cr = exp(m${x} - mn);`,
      ...keys.map((k) => `  p${x}_${k} = select(0.0, exp(s${x}_${k} - mn), ok${x}_${k});`),
      `  l${x} = l${x} * cr + ${keys.map((k) => `p${x}_${k}`).join(" + ")}; m${x} = mn; ${rescale} }`,
    ];
  };
  const lines: string[] = [];
  for (const k of keys) lines.push(`let jk${k} = min(j + ${k}u, k1 - 1u);`);
  lines.push(...masks());
  if (version === 3) {
    // R rows in named registers (q, accumulator): each K/V texel is fetched once for all R rows
    for (const k of keys) {
      lines.push(`let kl${k} = trow(kvT + jk${k} * u.kT, u.kpr);`);
      for (const x of rows) lines.push(`var s${x}_${k} = 0.0;`);
      for (const i of dims) {
        lines.push(
          `{ let t = ${texAt("K", `kl${k}`, i)}; ${
            rows.map((x) => `s${x}_${k} += dot(q${x}_${i}, t);`).join(" ")
          } }`,
        );
      }
      for (const x of rows) lines.push(scoreFix(x, k));
    }
    for (const x of rows) lines.push(...update(x, dims.map((i) => `a${x}_${i} *= cr;`).join(" ")));
    for (const k of keys) {
      for (const i of dims) {
        lines.push(
          `{ let t = ${texAt("V", `kl${k}`, i)}; ${
            rows.map((x) => `a${x}_${i} += p${x}_${k} * t;`).join(" ")
          } }`,
        );
      }
    }
  } else {
    // one row per invocation; q and the accumulator in private arrays, rolled loops over D / 4
    const at = (arr: "K" | "V", k: number) =>
      version === 2
        ? `${arr.toLowerCase()}s[(jk${k} - k0) * ${D4}u + i]`
        : `${arr}[u.${arr === "K" ? "x0" : "x1"} + (kvBase + jk${k}) * ${D4}u + i]`;
    for (const k of keys) {
      lines.push(`var s0_${k} = 0.0;`);
      lines.push(`for (var i = 0u; i < u.nD4; i++) { s0_${k} += dot(qa[i], ${at("K", k)}); }`);
      lines.push(scoreFix(0, k));
    }
    lines.push(...update(0, "cr0 = cr;"));
    lines.push(
      `for (var i = 0u; i < u.nD4; i++) { oa[i] = oa[i] * cr0 + ${
        keys.map((k) => `p0_${k} * ${at("V", k)}`).join(" + ")
      }; }`,
    );
  }
  const chunk = lines.join("\n    ");
  const tile = version === 2
    ? `var<workgroup> ks: array<vec4<f32>, ${BC * D4}>;
var<workgroup> vs: array<vec4<f32>, ${BC * D4}>;
var<workgroup> wstate: u32;`
    : "";
  // v2 keeps the block loop uniform (barriers): every block is visited, the state is read via
  // workgroupUniformLoad, and the tile copy happens only for blocks that run. v1 and v3 run the flat
  // loop over key chunks that reads the tile state when it enters a block.
  const loop = version === 2
    ? `for (var kb = 0u; kb < u.nkb; kb++) {
    let k0 = kb * u.BC;
    if (lid.x == 0u) { wstate = select(0u, tab[tb + kb], k0 < lens[b]); }
    let st = workgroupUniformLoad(&wstate);
    if (st == 0u) { continue; }
    for (var e = lid.x; e < u.BC * ${D4}u; e += ${WG}u) {
      let src = (kvBase + min(k0 + e / ${D4}u, u.S - 1u)) * ${D4}u + e % ${D4}u;
      ks[e] = K[u.x0 + src]; vs[e] = V[u.x1 + src];
    }
    workgroupBarrier();
    let k1 = min(k0 + u.BC, Seff);
    for (var j = k0; j < k1; j += ${CH}u) {
    let full = st == 2u && j + ${CH}u <= k1;
    ${chunk}
    }
    workgroupBarrier();
  }`
    : chunkLoop(chunk);
  const init = version === 3
    ? `${toRegs(R, D4, "qa", "q")}
  ${
      rows.map((x) =>
        `var m${x} = ${NEG}; var l${x} = 0.0; ${
          dims.map((i) => `var a${x}_${i} = vec4<f32>(0.0);`).join(" ")
        }`
      ).join("\n  ")
    }`
    : `var oa: array<vec4<f32>, ${D4}>;
  var m0 = ${NEG}; var l0 = 0.0; var cr0 = 1.0;`;
  const fin = version === 3
    ? `${fromRegs(R, D4, "oa", "a")}
  var la: array<f32, ${R}>; var ma: array<f32, ${R}>;
  ${rows.map((x) => `la[${x}] = l${x}; ma[${x}] = m${x};`).join(" ")}`
    : "var la: array<f32, 1>; var ma: array<f32, 1>; la[0] = l0; ma[0] = m0;";
  const qRow = `u.qOff + b * u.qsB + h * u.qsH + min(q0 + x * ${WG}u + lid.x, u.T - 1u) * u.qsT`;
  return {
    bindings: b.names,
    code: privateUniforms(
      version === 2,
      `${flashPrelude(`flash forward v${version}`, dtype, b, D4, c.layers, v, tile)}
${queryMain(WG)}
  ${stageIn(R, D4, "Q", "qa", qRow, "u.qsD", " * u.scale")}
  ${init}
  ${rows.map((x) => keys.map((k) => `var p${x}_${k} = 0.0;`).join(" ")).join(" ")}
  ${keyRange(v)}
  ${loop}
  ${fin}
  if (!inRange) { return; }
  ${
        stageOut(
          D4,
          "O",
          dtype,
          "oa",
          `b * u.osB + h * u.osH + (q0 + x * ${WG}u + lid.x) * u.osT`,
          `q0 + x * ${WG}u + lid.x < u.T`,
          // O = acc / l (one rounding; a row without visible keys has acc = 0: divide by 1)
          "select(1.0, la[x], la[x] > 0.0)",
          "/",
        )
      }
  for (var x = 0u; x < u.nR; x++) {
    let row = q0 + x * ${WG}u + lid.x;
    if (row < u.T) { L[bh * u.T + row] = select(${NEG_INF}, ma[x] + log(la[x]), la[x] > 0.0); }
  }
}`,
    ),
  };
}

/**
 * pack v1: elements of a strided (n0, n1, n2, D) view (uniforms x0 = n1, x1 = n2, D; strides in qsB..qsD,
 * offset qOff) into texels: row r = (a n1 + b) n2 + c holds D / 4 texels. One invocation per texel
 * (uniform nbh = texel count). The keep mask packs with D = 1.
 */
export function packSource(dtype: DType, D4: number, layers: number): Source {
  const b = new Bindings().storage("X", dtype).target("out");
  return {
    bindings: b.names,
    code: privateUniforms(
      false,
      `${header("pack v1", dtype, b, texRowFn(D4, layers))}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = (wid.y * nwg.x + wid.x) * 64u + lid.x;
  if (t >= u.nbh) { return; }
  let r = t / ${D4}u; let i = t % ${D4}u;
  let c = r % u.x1; let ab = r / u.x1; let bb = ab % u.x0; let a = ab / u.x0;
  let base = u.qOff + a * u.qsB + bb * u.qsH + c * u.qsT;
  var val = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) {
    let d = i * 4u + e;
    if (d < u.D) { val[e] = f32(X[base + d * u.qsD]); }
  }
  let loc = trow(r, u.kpr);
  textureStore(out, vec2<i32>(loc.x + i32(i), loc.y), loc.z, val);
}`,
    ),
  };
}

/**
 * bwd-prep v1: per row (bh, i) of dO (strided: qOff, qsB..qsD) and O (offset x1, strides osB..osT, unit
 * D stride): texel (L', D_i)
 * where L' is L, or 3e38 for a row without visible keys (so exp(s - L') is 0). One invocation per row.
 */
export function prepSource(dtype: DType, layers: number): Source {
  const b = new Bindings().storage("dO", dtype).storage("O", dtype).storage("L", "f32").target("out");
  return {
    bindings: b.names,
    code: privateUniforms(
      false,
      `${header("bwd-prep v1", dtype, b, texRowFn(1, layers))}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = (wid.y * nwg.x + wid.x) * 64u + lid.x;
  if (r >= u.nbh) { return; }
  let bh = r / u.T; let i = r % u.T; let b = bh / u.H; let h = bh % u.H;
  let gb = u.qOff + b * u.qsB + h * u.qsH + i * u.qsT; let ob = u.x1 + b * u.osB + h * u.osH + i * u.osT;
  var s = 0.0;
  for (var d = 0u; d < u.D; d++) { s += f32(dO[gb + d * u.qsD]) * f32(O[ob + d]); }
  let l = L[r];
  let lp = select(3.0e38, l, l > -3.0e38);
  let loc = trow1(r);
  textureStore(out, vec2<i32>(loc.x, loc.y), loc.z, vec4<f32>(lp, s, 0.0, 0.0));
}`,
    ),
  };
}

/** Configuration of the backward programs. */
export interface BwdConfig {
  dtype: DType;
  D4: number;
  R: number;
  layers: number;
  variant: Variant;
  /** bwd-dkdv: element type of dK and dV (default dtype; f32 when partial sums are carried across dispatches). */
  out?: DType;
}

/** The operands of both backward programs, all packed: Q, dO, K, V, and (L, D_i) per query row. */
const bwdOperands = () => new Bindings().texture("Q").texture("dO").texture("K").texture("V").texture("LD");

/**
 * bwd-dq v1: R query rows per invocation (8 per workgroup); Q, dO, K, V, LD from textures. Per key:
 * s = scale q.k + bias, p = exp(s - L), dp = dO.v, ds = p (dp - D_i), dq += ds k; dQ = scale dq.
 * Workgroups (query blocks, B H). Bindings: Q, dO, K, V, LD, tab, lens, keep, [smask], [slopes], dQ.
 */
export function dqSource(c: BwdConfig): Source {
  const { D4, R, variant: v, dtype } = c;
  const rows = rng(R), dims = rng(D4), keys = rng(CH);
  const b = bwdOperands().masks(v).storage("dQ", dtype, true);
  const row = (x: number) => `(q0 + ${x * 8}u + lid.x)`;
  const lines: string[] = [];
  for (const k of keys) {
    lines.push(`{ let jk = min(j + ${k}u, k1 - 1u); let kl = trow(kvT + jk * u.kT, u.kpr);`);
    lines.push(...rows.map((x) => `var ok${x} = true;`));
    lines.push(
      `if (!full) { ${keyOk("kv", `j + ${k}u < k1`, "jk")} ${
        rows.map((x) => `ok${x} = kv && vis(hs, ${row(x)}, j + ${k}u);`).join(" ")
      } }`,
    );
    lines.push(dims.map((i) => `let k${i} = ${texAt("K", "kl", i)};`).join(" "));
    for (const x of rows) {
      lines.push(`var s${x} = ${dims.map((i) => `dot(q${x}_${i}, k${i})`).join(" + ")};`);
      if (v.alibi) lines.push(alibiBias(`s${x}`, row(x), `j + ${k}u`));
    }
    lines.push(dims.map((i) => `let v${i} = ${texAt("V", "kl", i)};`).join(" "));
    for (const x of rows) {
      lines.push(`let p${x} = select(0.0, exp(s${x} - L${x}), ok${x});`);
      lines.push(`let ds${x} = p${x} * (${dims.map((i) => `dot(g${x}_${i}, v${i})`).join(" + ")} - D${x});`);
      lines.push(dims.map((i) => `dq${x}_${i} += ds${x} * k${i};`).join(" "));
    }
    lines.push("}");
  }
  const load = (x: number) =>
    `let rl${x} = trow(b * u.qB + h * u.qH + min(${row(x)}, u.T - 1u) * u.qT, u.kpr);
  ${
      dims.map((i) =>
        `let q${x}_${i} = ${texAt("Q", `rl${x}`, i)} * u.scale; let g${x}_${i} = ${texAt("dO", `rl${x}`, i)};`
      )
        .join(" ")
    }
  let ld${x} = tex1(LD, bhc * u.T + min(${row(x)}, u.T - 1u)); let L${x} = ld${x}.x; let D${x} = ld${x}.y;
  ${dims.map((i) => `var dq${x}_${i} = vec4<f32>(0.0);`).join(" ")}`;
  return {
    bindings: b.names,
    code: privateUniforms(
      false,
      `${flashPrelude("bwd-dq v1", dtype, b, D4, c.layers, v)}
${queryMain(8)}
  ${rows.map(load).join("\n  ")}
  ${keyRange(v)}
  ${chunkLoop(lines.join("\n    "))}
  ${fromRegs(R, D4, "da", "dq")}
  if (!inRange) { return; }
  ${
        stageOut(
          D4,
          "dQ",
          dtype,
          "da",
          `b * u.osB + h * u.osH + (q0 + x * 8u + lid.x) * u.osT`,
          `q0 + x * 8u + lid.x < u.T`,
          "u.scale",
        )
      }
}`,
    ),
  };
}

/**
 * bwd-dkdv v2: R key rows per invocation (8 per workgroup, so BC = 8 R keys per workgroup) of kv head
 * (b, hk); loops over the G query heads of the group and over the query rows x0 .. x1 - 1 (uniforms) in
 * blocks of BR rows (table over (query block, this key block)), then per query row: s = scale q.k + bias,
 * p = exp(s - L), dv += p dO, ds = p (dO.v - D_i), dk += ds q. dK = scale dk, added to what dK and dV
 * hold when x0 > 0: the host splits the query rows over dispatches so that one invocation runs at most
 * G (x1 - x0) iterations (v1 looped over all T rows and stopped short past lavapipe's loop limit).
 * Workgroups (key blocks, B Hkv). Bindings: Q, dO, K, V, LD, tab, lens, keep, [smask], [slopes], dK, dV.
 */
export function dkdvSource(c: BwdConfig): Source {
  const { D4, R, variant: v } = c;
  const out = c.out ?? c.dtype;
  const keysR = rng(R), dims = rng(D4);
  const b = bwdOperands().masks(v).storage("dK", out, true).storage("dV", out, true);
  const key = (x: number) => `(c0 + ${x * 8}u + lid.x)`;
  const body: string[] = [];
  body.push(`let ql = trow(qT0 + i * u.qT, u.kpr); let ld = tex1(LD, qBase + i);`);
  body.push(...keysR.map((x) => `var ok${x} = true;`));
  body.push(`if (!full) { ${keysR.map((x) => `ok${x} = kok${x} && vis(hs, i, ${key(x)});`).join(" ")} }`);
  body.push(dims.map((d) => `let q${d} = ${texAt("Q", "ql", d)};`).join(" "));
  for (const x of keysR) {
    body.push(`var s${x} = (${dims.map((d) => `dot(q${d}, k${x}_${d})`).join(" + ")}) * u.scale;`);
    if (v.alibi) body.push(alibiBias(`s${x}`, "i", key(x)));
    body.push(`let p${x} = select(0.0, exp(s${x} - ld.x), ok${x});`);
  }
  body.push(dims.map((d) => `let g${d} = ${texAt("dO", "ql", d)};`).join(" "));
  for (const x of keysR) {
    body.push(`let ds${x} = p${x} * (${dims.map((d) => `dot(g${d}, v${x}_${d})`).join(" + ")} - ld.y);`);
    body.push(dims.map((d) => `dv${x}_${d} += p${x} * g${d}; dk${x}_${d} += ds${x} * q${d};`).join(" "));
  }
  const load = (x: number) =>
    `let kl${x} = trow(kvT + min(${key(x)}, u.S - 1u) * u.kT, u.kpr);
  ${keyOk(`kok${x}`, `${key(x)} < Seff`, `min(${key(x)}, u.S - 1u)`)}
  ${
      dims.map((d) =>
        `let k${x}_${d} = ${texAt("K", `kl${x}`, d)}; let v${x}_${d} = ${texAt("V", `kl${x}`, d)};`
      ).join(" ")
    }
  ${dims.map((d) => `var dk${x}_${d} = vec4<f32>(0.0); var dv${x}_${d} = vec4<f32>(0.0);`).join(" ")}`;
  const store = (arr: string, dst: string, scale: string) =>
    stageOut(
      D4,
      dst,
      out,
      arr,
      `b * u.osB + hk * u.osH + (c0 + x * 8u + lid.x) * u.osT`,
      `c0 + x * 8u + lid.x < u.S`,
      scale,
      "*",
      "u.x0 > 0u",
    );
  return {
    bindings: b.names,
    code: privateUniforms(
      false,
      `${flashPrelude("bwd-dkdv v2", out, b, D4, c.layers, v)}
@compute @workgroup_size(8)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let bk = u.bh0 + wid.y + wid.z * 65535u;
  let inRange = bk < u.nbh;
  let bkc = min(bk, u.nbh - 1u);
  let b = bkc / u.Hkv; let hk = bkc % u.Hkv;
  let Seff = lens[b];
  let c0 = wid.x * u.BC;
  let kvT = b * u.kB + hk * u.kH;
  ${keysR.map(load).join("\n  ")}
  let blockFull = c0 + u.BC <= Seff;
  for (var g = 0u; g < u.G; g++) {
    let h = hk * u.G + g;
    let hs = h * u.spH;
    ${v.alibi ? "let slope = slopes[h];" : ""}
    let qBase = (b * u.H + h) * u.T;
    let qT0 = b * u.qB + h * u.qH;
    let tb = h * u.tabH * u.nqb * u.nkb + wid.x;
    var i = u.x0; var i1 = u.x0; var full = false;
    loop {
      if (i >= u.x1) { break; }
      if (i >= i1) {
        let st = tab[tb + (i / u.BR) * u.nkb];
        i1 = min((i / u.BR + 1u) * u.BR, u.x1);
        if (st == 0u) { i = i1; continue; }
        full = st == 2u && blockFull;
      }
      ${body.join("\n      ")}
      i++;
    }
  }
  ${fromRegs(R, D4, "ka", "dk")}
  ${fromRegs(R, D4, "va", "dv")}
  if (!inRange) { return; }
  ${store("ka", "dK", "u.scale")}
  ${store("va", "dV", "1.0")}
}`,
    ),
  };
}

/**
 * softmax v1 for standard attention: one invocation per row of a contiguous score block S
 * (rows = heads bh0 .. bh0 + n of T rows each, S keys): P = softmax(scale S + bias) over visible keys
 * (0 elsewhere; a row with none is all 0) and L into the full (B, H, T) buffer. Three passes.
 * Uniforms: the shared fields; nbh = rows in this block. Bindings: S, lens, smask, keepBuf, [slopes], P, L.
 */
export function softmaxSource(v: Variant): Source {
  const b = new Bindings().storage("Sc", "f32").storage("lens", "u32").storage("smask", "u32")
    .storage("keepBuf", "f32");
  if (v.alibi) b.storage("slopes", "f32");
  b.storage("P", "f32", true).storage("L", "f32", true);
  const ok = "vis(hs, i, j) && (u.keepOn == 0u || keepBuf[b * u.S + j] != 0.0)";
  const score = `var s = Sc[base + j] * u.scale;${v.alibi ? ` ${alibiBias("s", "i", "j")}` : ""}`;
  return {
    bindings: b.names,
    code: privateUniforms(
      false,
      `${header("softmax v1 (standard)", "f32", b, visFn("storage"))}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = (wid.y * nwg.x + wid.x) * 64u + lid.x;
  if (row >= u.nbh) { return; }
  let bh = u.bh0 + row / u.T; let i = row % u.T;
  let b = bh / u.H; let h = bh % u.H; let hs = h * u.spH;
  let Seff = lens[b];
  let base = row * u.S;
  ${v.alibi ? "let slope = slopes[h];" : ""}
  var m = ${NEG};
  for (var j = 0u; j < Seff; j++) {
    if (!(${ok})) { continue; }
    ${score}
    m = max(m, s);
  }
  var z = 0.0;
  for (var j = 0u; j < Seff; j++) {
    if (!(${ok})) { continue; }
    ${score}
    z += exp(s - m);
  }
  let inv = select(0.0, 1.0 / z, z > 0.0);
  for (var j = 0u; j < u.S; j++) {
    var pj = 0.0;
    if (j < Seff && ${ok}) {
      ${score}
      pj = exp(s - m) * inv;
    }
    P[base + j] = pj;
  }
  L[bh * u.T + i] = select(${NEG_INF}, m + log(z), z > 0.0);
}`,
    ),
  };
}

/**
 * decode v1: one query per (b, h) against cached K/V (B, Hkv, Smax, D) with per-batch lengths (lens).
 * WG lanes take keys lane, lane + WG, ...; each keeps (m, l, acc) for its keys; the WG partial states are
 * merged in workgroup memory (one barrier). q strided (qOff, qsB, qsH, qsD); K, V contiguous at offsets
 * x0, x1. The query is at position len - 1: window [winL] and global tokens apply, ALiBi bias
 * -slope (p - j). Rolled loops over D (storage loads). Workgroups (B H). Bindings: q, K, V, lens,
 * [slopes], O, L.
 */
export function decodeSource(dtype: DType, D4: number, WG: number, v: Variant): Source {
  const b = new Bindings().storage("Qd", dtype).storage("K", dtype).storage("V", dtype).storage(
    "lens",
    "u32",
  );
  if (v.alibi) b.storage("slopes", "f32");
  b.storage("O", dtype, true).storage("L", "f32", true);
  const load = (arr: string, base: string) =>
    `vec4<f32>(f32(${arr}[${base} + min(i * 4u, u.D - 1u)]), f32(${arr}[${base} + min(i * 4u + 1u, u.D - 1u)]), f32(${arr}[${base} + min(i * 4u + 2u, u.D - 1u)]), f32(${arr}[${base} + min(i * 4u + 3u, u.D - 1u)])) * mask4(i)`;
  return {
    bindings: b.names,
    code: `${header("decode v1", dtype, b)}
var<workgroup> wm: array<f32, ${WG}>;
var<workgroup> wl: array<f32, ${WG}>;
var<workgroup> wa: array<vec4<f32>, ${WG * D4}>;
fn mask4(i: u32) -> vec4<f32> {
  return vec4<f32>(select(0.0, 1.0, i * 4u < u.D), select(0.0, 1.0, i * 4u + 1u < u.D),
                   select(0.0, 1.0, i * 4u + 2u < u.D), select(0.0, 1.0, i * 4u + 3u < u.D));
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let bh = wid.x + wid.y * 65535u;
  let bhc = min(bh, u.nbh - 1u);
  let b = bhc / u.H; let h = bhc % u.H; let hk = h / u.G;
  let qb = u.qOff + b * u.qsB + h * u.qsH;
  var qa: array<vec4<f32>, ${D4}>;
  var acc: array<vec4<f32>, ${D4}>;
  for (var i = 0u; i < u.nD4; i++) {
    var t = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { if (i * 4u + e < u.D) { t[e] = f32(Qd[qb + (i * 4u + e) * u.qsD]); } }
    qa[i] = t * u.scale;
    acc[i] = vec4<f32>(0.0);
  }
  var m = ${NEG}; var l = 0.0;
  let len = lens[b];
  let p = i32(len) - 1;
  ${v.alibi ? "let slope = slopes[h];" : ""}
  let kvBase = (b * u.Hkv + hk) * u.S;
  var jStart = lid.x;
  if (u.glob == 0) { jStart = lid.x + u32(max(p - u.winL, 0)) / ${WG}u * ${WG}u; }
  for (var j = jStart; j < len; j += ${WG}u) {
    if (!(i32(j) >= p - u.winL || i32(j) < u.glob || p < u.glob)) { continue; }
    let kb = u.x0 + (kvBase + j) * u.D; let vb = u.x1 + (kvBase + j) * u.D;
    var s = 0.0;
    for (var i = 0u; i < u.nD4; i++) { s += dot(qa[i], ${load("K", "kb")}); }
    ${v.alibi ? "s -= slope * f32(p - i32(j));" : ""}
    let mn = max(m, s); let cr = exp(m - mn); let pj = exp(s - mn);
    l = l * cr + pj; m = mn;
    for (var i = 0u; i < u.nD4; i++) { acc[i] = acc[i] * cr + pj * ${load("V", "vb")}; }
  }
  wm[lid.x] = m; wl[lid.x] = l;
  for (var i = 0u; i < u.nD4; i++) { wa[lid.x * ${D4}u + i] = acc[i]; }
  workgroupBarrier();
  if (bh >= u.nbh) { return; }
  var M = ${NEG};
  for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { M = max(M, wm[w]); } }
  var Z = 0.0;
  for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { Z += exp(wm[w] - M) * wl[w]; } }
  let inv = select(0.0, 1.0 / Z, Z > 0.0);
  for (var t = lid.x; t < u.nD4; t += ${WG}u) {
    var a = vec4<f32>(0.0);
    for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { a += exp(wm[w] - M) * wa[w * ${D4}u + t]; } }
    a *= inv;
    for (var e = 0u; e < 4u; e++) { if (t * 4u + e < u.D) { O[bh * u.D + t * 4u + e] = ${dtype}(a[e]); } }
  }
  if (lid.x == 0u) { L[bh] = select(${NEG_INF}, M + log(Z), Z > 0.0); }
}`,
  };
}
