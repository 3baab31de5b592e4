/**
 * FlashAttention on WebGPU, forward and backward: tiled, with an online softmax, and never anything
 * T x S in memory. Every step is a program recorded with `gpu().run` in the context's batch: K and V
 * (and in the backward Q, dO, the keep mask, L and D_i) are packed into pooled rgba32float textures by a
 * pack program (the layout is in attention_wgsl.ts), the block-sparse mask is copied into an r32float
 * texture with a recorded `copyBufferToTexture`, then the forward (or dQ and dK/dV) programs read them.
 * The textures go back to the pool once the call has recorded its work; the ledger counts them as in use
 * until then. On the cpu, flashAttention validates its options exactly as on WebGPU and then computes
 * with the float64 reference.
 * @module
 */

import { noGrad, record } from "../../runtime/autograd.ts";
import { gpu, hasWebGPU } from "../../runtime/device.ts";
import { type DType, itemSize } from "../../runtime/dtype.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { type Binding, type GpuTexture, grid, MAX_LOOP, WebGPUError } from "../../runtime/webgpu.ts";
import { zeros } from "../core/creation.ts";
import { cast, contiguous, copyInto } from "../core/elementwise.ts";
import { empty, fromArray } from "../core/util.ts";
import {
  auxTensors,
  baseFields,
  checkLoops,
  MAX_Y,
  readOf,
  sampledOf,
  variantOf,
  writeOf,
} from "./attention_gpu.ts";
import {
  type AttentionOptions,
  type AttentionStats,
  blockTable,
  headStrides,
  headsView,
  layoutShape,
  makeStats,
  resolve,
  type Resolved,
  visitedWork,
} from "./attention_options.ts";
import { attentionRef, type AttentionResult } from "./attention_ref.ts";
import {
  CH,
  dkdvSource,
  dqSource,
  flashForwardSource,
  packSource,
  packUniforms,
  prepSource,
  TEX_WIDTH,
  variantKey,
} from "./attention_wgsl.ts";

// ---------------------------------------------------------------------------------------------------------
// options and tiling: the same checks on every backend

/** The values of the `version` option (see attention_wgsl.ts); "auto" is v3. */
const VERSIONS = ["auto", "v1", "v2", "v3"] as const;

/**
 * Workgroup memory in bytes: the adapter's limit, or WebGPU's guaranteed 16384 where there is no
 * adapter (so that the cpu refuses what the smallest adapter would).
 */
function workgroupBytes(): number {
  return hasWebGPU() ? gpu().limits.maxComputeWorkgroupStorageSize : 16384;
}

/**
 * vec4 registers per invocation for v3's q rows (and as many for the accumulator): R = 64 / (D / 4)
 * rows. Halving it doubled the forward's time on lavapipe; doubling it gained nothing at ~4x the cold
 * compile time (which grows ~3x per doubling; Mesa's shader cache makes later runs instant).
 */
const REG_BUDGET = 64;

/** Resolved tiling of a flash call. */
interface FlashTiling {
  version: 1 | 2 | 3;
  WG: number;
  R: number;
  BR: number;
  BC: number;
  /** Tiles do not line up with the block-sparse mask: the kernel looks the mask up per element. */
  sparseElem: boolean;
}

/** The largest c in [1, max] with (unit c) dividing n, or 0. */
function aligned(n: number, unit: number, max: number): number {
  for (let c = max; c >= 1; c--) if (n % (unit * c) === 0) return c;
  return 0;
}

/**
 * Validates the flash options (version, blockQ, blockK, and for v1/v2 D divisible by 4, f32 and v2's
 * workgroup memory) and picks the block sizes. Keys per block follow the paper's Bc = M / 4D with M the
 * workgroup-memory limit in floats (v2 holds its K and V tiles there; v3 uses Bc only as the skip
 * granularity). v3's query rows per workgroup are 8 invocations x R rows, R from a register budget per
 * invocation for q and the accumulator (see REG_BUDGET). With a block-sparse mask the tiles are cut to
 * divide its blocks, so that each tile is wholly inside or outside a zero block; when its block sizes do
 * not allow that (not multiples of 8 rows and 4 keys), the kernel checks the mask per element.
 */
function flashTiling(r: Resolved, opts: AttentionOptions, dtype: DType, op: string): FlashTiling {
  const name = opts.version ?? "auto";
  if (!VERSIONS.includes(name)) {
    throw new Error(
      `${op}: version must be one of ${VERSIONS.join(", ")}, got ${JSON.stringify(opts.version)}`,
    );
  }
  const version = name === "auto" ? 3 : Number(name.slice(1)) as 1 | 2 | 3;
  const D4 = Math.ceil(r.D / 4);
  const wgBytes = workgroupBytes();
  const M = wgBytes / 4;
  let BC = Math.max(16, Math.min(256, Math.floor(M / (4 * D4 * 4) / 4) * 4));
  let sparseElem = false;
  const sp = r.sparse;
  if (sp) {
    const c = aligned(sp.bc, CH, Math.floor(Math.max(BC, 64) / CH));
    if (c) BC = CH * c;
    else sparseElem = true;
  }
  if (opts.blockK !== undefined) {
    if (!Number.isInteger(opts.blockK) || opts.blockK < CH || opts.blockK % CH !== 0 || opts.blockK > 4096) {
      throw new Error(`${op}: blockK must be a multiple of ${CH} in [${CH}, 4096], got ${opts.blockK}`);
    }
    BC = opts.blockK;
    if (sp && sp.bc % BC !== 0) sparseElem = true;
  }
  if (version === 2 && 2 * BC * D4 * 16 > wgBytes) {
    throw new Error(
      `${op}: v2's K and V tiles of ${BC} keys x ${r.D} need ${
        2 * BC * D4 * 16
      } bytes of workgroup memory, over the adapter's ${wgBytes}`,
    );
  }
  const checkQ = (max: number) => {
    const bq = opts.blockQ!;
    if (!Number.isInteger(bq) || bq < 8 || bq % 8 !== 0 || bq > max) {
      throw new Error(`${op}: blockQ for v${version} must be a multiple of 8 in [8, ${max}], got ${bq}`);
    }
    return bq;
  };
  if (version !== 3) {
    if (r.D % 4 !== 0) throw new Error(`${op}: v${version} needs D divisible by 4, got D = ${r.D}; use v3`);
    let WG = 64;
    if (sp) {
      const c = aligned(sp.br, 8, 8);
      if (c) WG = 8 * c;
      else sparseElem = true;
    }
    if (opts.blockQ !== undefined) WG = checkQ(256);
    if (sp && sp.br % WG !== 0) sparseElem = true;
    if (dtype !== "f32") throw new Error(`${op}: v${version} needs f32, got ${dtype}; use v3`);
    return { version, WG, R: 1, BR: WG, BC, sparseElem };
  }
  let R = Math.max(1, Math.min(16, Math.floor(REG_BUDGET / D4)));
  if (sp) {
    const c = aligned(sp.br, 8, R);
    if (c) R = c;
    else sparseElem = true;
  }
  if (opts.blockQ !== undefined) R = checkQ(256) / 8;
  if (sp && sp.br % (8 * R) !== 0) sparseElem = true;
  return { version: 3, WG: 8, R, BR: 8 * R, BC, sparseElem };
}

/**
 * Checks q, k, v and the options as {@link flashAttention} does on every backend (for callers that
 * compute elsewhere, e.g. `attention` on the cpu); throws the same errors.
 */
export function checkFlashOptions(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): void {
  const op = "flashAttention";
  flashTiling(resolve(op, q, k, v, opts, false), opts, q.dtype, op);
}

// ---------------------------------------------------------------------------------------------------------
// packed textures

/** Texture rows per layer: the device's 2-D limit (the shaders wrap rows into layers at this count). */
function layerRows(): number {
  return gpu().limits.maxTextureDimension2D;
}

/** Operand rows per texture row for rows of D4 texels. */
function keysPerRow(D4: number): number {
  return Math.max(1, Math.floor(TEX_WIDTH / D4));
}

/**
 * A pooled rgba32float texture for `rows` rows of D4 texels: TEX_WIDTH texels wide, keysPerRow(D4) rows
 * per texture row, texture rows wrapping into layers at layerRows(). Added to `held` (released by the
 * caller's `finally`).
 */
function acquirePacked(rows: number, D4: number, what: string, held: GpuTexture[]): GpuTexture {
  const ctx = gpu();
  const LR = layerRows();
  const texRows = Math.max(1, Math.ceil(rows / keysPerRow(D4)));
  const layers = Math.ceil(texRows / LR);
  if (layers > ctx.limits.maxTextureArrayLayers) {
    throw new WebGPUError(
      `${what}: ${rows} rows of ${
        D4 * 4
      } floats need ${layers} texture layers, over the adapter's ${ctx.limits.maxTextureArrayLayers}`,
    );
  }
  const t = ctx.acquireTexture({ width: TEX_WIDTH, height: Math.min(texRows, LR), layers }, what);
  held.push(t);
  return t;
}

/** Records the pack program: a strided 4-D view (n0, n1, n2, D) of `t` into `tex`'s rows. */
function recordPack(op: string, t: Tensor, shape: number[], strides: number[], tex: GpuTexture): void {
  const [n0, n1, n2, D] = shape;
  const D4 = Math.ceil(D / 4);
  const texels = n0 * n1 * n2 * D4;
  if (texels === 0) return;
  const layers = layerRows();
  gpu().run({
    name: op,
    key: `attention pack|${t.dtype}|${D4}|${layers}`,
    source: () => packSource(t.dtype, D4, layers),
    bindings: { X: readOf(t), out: { texture: tex, access: "write" } },
    uniforms: packUniforms({
      x0: n1,
      x1: n2,
      D,
      qsB: strides[0],
      qsH: strides[1],
      qsT: strides[2],
      qsD: strides[3],
      qOff: t.offset,
      kpr: keysPerRow(D4),
      nbh: texels,
    }),
    workgroups: grid(texels, 64),
  });
}

/** Packs a 4-D tensor into a new pooled texture. */
function packed(op: string, what: string, t: Tensor, held: GpuTexture[]): GpuTexture {
  const [n0, n1, n2, D] = t.shape;
  const tex = acquirePacked(n0 * n1 * n2, Math.ceil(D / 4), `${op} ${what}`, held);
  recordPack(op, t, [...t.shape], [...t.strides], tex);
  return tex;
}

/** The texture row of operand row (b, h, i) is b rB + h rH + i rT (the kB..kT and qB..qT uniforms). */
type RowMap = { B: number; H: number; T: number };

/**
 * Whether a contiguous tensor's rows can be copied into a texture as they lie: f32, whole texels (D a
 * multiple of 4), whole rows per texture row (D / 4 divides TEX_WIDTH) and a 16-byte aligned start.
 */
function copyable(t: Tensor, D: number): boolean {
  return t.dtype === "f32" && t.isContiguous && t.size > 0 && D % 4 === 0 && TEX_WIDTH % (D / 4) === 0 &&
    t.offset % 4 === 0;
}

/**
 * Records copies of a copyable tensor's rows (in memory order) into a new pooled texture: one copy per
 * layer of whole texture rows, one for the last, partial texture row.
 */
function copiedRows(op: string, what: string, t: Tensor, D: number, held: GpuTexture[]): GpuTexture {
  const ctx = gpu();
  const D4 = D / 4, rows = t.size / D;
  const tex = acquirePacked(rows, D4, `${op} ${what}`, held);
  const LR = layerRows(), rowBytes = TEX_WIDTH * 16;
  const texels = rows * D4, full = Math.floor(texels / TEX_WIDTH), tail = texels % TEX_WIDTH;
  const src = (row: number) => ({
    buffer: t.storage.buffer!,
    offset: t.offset * 4 + row * rowBytes,
    bytesPerRow: rowBytes,
  });
  for (let r0 = 0; r0 < full; r0 += LR) {
    ctx.copyBufferToTexture(op, src(r0), { texture: tex, origin: [0, 0, r0 / LR] }, [
      TEX_WIDTH,
      Math.min(LR, full - r0),
      1,
    ]);
  }
  if (tail > 0) {
    ctx.copyBufferToTexture(op, src(full), { texture: tex, origin: [0, full % LR, Math.floor(full / LR)] }, [
      tail,
      1,
      1,
    ]);
  }
  return tex;
}

/**
 * Two operands of one shape (K and V, or Q and dO) in textures with one row map: copied as they lie when
 * both are contiguous f32 tensors with the same strides (no pack program: a recorded copy each), else
 * packed in (B, heads, rows) order. `views` are their (B, heads, rows, D) views, `origs` the tensors.
 */
function texturePair(
  op: string,
  what: [string, string],
  origs: [Tensor, Tensor],
  views: [Tensor, Tensor],
  held: GpuTexture[],
): { a: GpuTexture; b: GpuTexture; map: RowMap } {
  const [va, vb] = views;
  const D = va.shape[3];
  const same = va.strides.every((x, i) => x === vb.strides[i]);
  if (same && copyable(origs[0], D) && copyable(origs[1], D)) {
    return {
      a: copiedRows(op, what[0], origs[0], D, held),
      b: copiedRows(op, what[1], origs[1], D, held),
      map: { B: va.strides[0] / D, H: va.strides[1] / D, T: va.strides[2] / D },
    };
  }
  const [oa, ob] = origs;
  const ca = copyable(oa, D), cb = copyable(ob, D);
  if ((ca || cb) && oa.rank === 4 && oa.shape.every((n, i) => n === ob.shape[i])) {
    // one copied as it lies, the other packed in the same row order (its rows in the copied one's memory
    // order): e.g. K from RoPE and V a view of a fused q/k/v projection cost a copy and one pack program
    const c = ca ? 0 : 1;
    const copied = copiedRows(op, what[c], origs[c], D, held);
    const other = origs[1 - c];
    const tex = acquirePacked(other.size / D, Math.ceil(D / 4), `${op} ${what[1 - c]}`, held);
    recordPack(op, other, [...other.shape], [...other.strides], tex);
    const vs = views[c].strides;
    return {
      a: c === 0 ? copied : tex,
      b: c === 0 ? tex : copied,
      map: { B: vs[0] / D, H: vs[1] / D, T: vs[2] / D },
    };
  }
  const [, n1, n2] = va.shape;
  return {
    a: packed(op, what[0], va, held),
    b: packed(op, what[1], vb, held),
    map: { B: n1 * n2, H: n2, T: 1 },
  };
}

/** The (B, S) keep mask packed one key per texel, or a constant stand-in (keepOn = 0) when there is none. */
function packedKeep(op: string, keep: Tensor | null, held: GpuTexture[]): GpuTexture {
  if (!keep) {
    return gpu().constantTexture(
      "attention: no key padding mask",
      { width: 1, height: 1 },
      () => new Float32Array(4),
    );
  }
  const [B, S] = keep.shape;
  const tex = acquirePacked(B * S, 1, `${op} key padding mask`, held);
  recordPack(op, keep, [B, 1, S, 1], [keep.strides[0], 0, keep.strides[1], 0], tex);
  return tex;
}

/**
 * The block-sparse mask in an r32float texture, one entry per texel in rows of TEX_WIDTH (read by the
 * sparseElem variant): uploaded as a tensor and copied in by a recorded copy.
 */
function maskTexture(op: string, r: Resolved, held: GpuTexture[], temps: Tensor[]): GpuTexture {
  const mask = r.sparse!.mask;
  const rows = Math.ceil(mask.length / TEX_WIDTH);
  if (rows > layerRows()) {
    throw new Error(
      `${op}: a block mask of ${mask.length} entries is over the ${
        layerRows() * TEX_WIDTH
      } one texture holds`,
    );
  }
  const data = new Float32Array(rows * TEX_WIDTH);
  data.set(mask);
  const t = fromArray(data, [data.length], "f32", "webgpu");
  temps.push(t);
  const ctx = gpu();
  const tex = ctx.acquireTexture({ width: TEX_WIDTH, height: rows, format: "r32float" }, `${op} block mask`);
  held.push(tex);
  ctx.copyBufferToTexture(op, { buffer: t.storage.buffer!, offset: 0, bytesPerRow: TEX_WIDTH * 4 }, {
    texture: tex,
    origin: [0, 0, 0],
  }, [TEX_WIDTH, rows, 1]);
  return tex;
}

/** Uniform strides of an output written by the programs (a fresh tensor in the call's layout, unit D stride). */
function outStrides(t: Tensor, r: Resolved): { osB: number; osH: number; osT: number } {
  const [osB, osH, osT] = headStrides(t, r.layout);
  return { osB, osH, osT };
}

// ---------------------------------------------------------------------------------------------------------
// forward

/** The IO/FLOP model of a flash forward: K/V blocks loaded once per visited (query block, key block). */
function flashForwardStats(
  r: Resolved,
  t: FlashTiling,
  tab: ReturnType<typeof blockTable>,
  bytes: number,
): AttentionStats {
  const w = visitedWork(r, tab, t.BR, t.BC);
  const total = r.B * r.H * tab.nqb * tab.nkb;
  const kvElems = r.B * r.Hkv * r.S * r.D;
  const kvBytes = t.version === 3 ? 16 * Math.ceil(r.D / 4) / r.D : 4; // textures hold f32 texels
  const programs: AttentionStats["programs"] = [];
  if (t.version === 3) {
    programs.push({ name: "pack K, V", read: 2 * kvElems * bytes, written: 2 * kvElems * kvBytes, flops: 0 });
  }
  // each visited tile reads its keys' K and V rows once for the whole workgroup of BR rows
  const tileKeys = w.pairs / Math.max(1, Math.min(t.BR, r.T));
  programs.push({
    name: `flash forward v${t.version}`,
    read: r.B * r.H * r.T * r.D * bytes + 2 * tileKeys * r.D * kvBytes + w.tiles * 4,
    written: r.B * r.H * r.T * (r.D * bytes + 4),
    flops: 4 * r.D * w.pairs + 6 * w.pairs,
  });
  return makeStats(`flash v${t.version}`, [t.BR, t.BC], programs, {
    visited: w.tiles,
    skipped: total - w.tiles,
  });
}

/**
 * FlashAttention on WebGPU: for each block of query rows, one pass over the K/V blocks with an online
 * softmax (running max m, sum l and unnormalised output in registers); returns O and the log-sum-exp L
 * (f32) and never allocates anything T x S. Tiles a mask makes empty (causal upper triangle, outside a
 * sliding window, zero blocks of a block-sparse mask) are skipped, not multiplied by zero. Key padding,
 * GQA/MQA (kv heads dividing query heads), ALiBi and global tokens are handled in the same kernels.
 * Block sizes come from the adapter's limits (override with `blockQ`, `blockK`); `version` picks the
 * shader ("auto" = "v3"; see attention_wgsl.ts). Differentiable: the backward pass recomputes P from L
 * (no T x S memory either). On the cpu it validates the same options, then computes with
 * {@link attentionRef}.
 *
 * Shapes: q (B, H, T, D); k, v (B, Hkv, S, D); O (B, H, T, D); L (B, H, T).
 *
 * @example
 * ```ts
 * import { flashAttention, randn } from "seqlab";
 * const q = randn([1, 4, 100, 32], { seed: 1 }), kv = randn([1, 2, 100, 32], { seed: 2 });
 * const { o, lse, stats } = flashAttention(q, kv, kv, { causal: true });
 * console.log(o.shape, lse.shape); // [1, 4, 100, 32] [1, 4, 100]
 * console.log(stats.tilesSkipped > 0); // true on webgpu: the causal upper triangle is skipped
 * ```
 */
export function flashAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): AttentionResult {
  const op = "flashAttention";
  const r = resolve(op, q, k, v, opts, q.device === "cpu");
  // validated before the cpu returns the reference: an option refused on webgpu is refused on the cpu
  const t = flashTiling(r, opts, q.dtype, op);
  if (q.device === "cpu") {
    const res = attentionRef(q, k, v, opts);
    res.stats.impl = "reference (flashAttention on cpu)";
    return res;
  }
  if (q.dtype === "f64") throw new Error(`${op}: f64 lives on the cpu only`);
  checkLoops(op, `S = ${r.S} keys (4 per iteration)`, Math.ceil(r.S / CH));
  const { B, H, T, D } = r;
  const o = empty(op, layoutShape(r.layout, B, H, T, D), q.dtype, "webgpu");
  const lse = empty(op, [B, H, T], "f32", "webgpu");
  const tab = blockTable(r, t.BR, t.BC);
  const stats = flashForwardStats(r, t, tab, itemSize(q.dtype));
  if (o.size > 0) {
    try {
      runFlashForward(r, t, q, k, v, o, lse, tab);
    } catch (e) {
      o.dispose();
      lse.dispose();
      throw e;
    }
  }
  const keep = r.keep;
  const save = keep ? [q, k, v, o, lse, keep] : [q, k, v, o, lse];
  const out = record(op, o, [q, k, v], save, (g, saved) => {
    const res = flashBackward(r, g, saved[0], saved[1], saved[2], saved[3], saved[4], keep ? saved[5] : null);
    stats.backward = res.stats;
    return res.grads;
  });
  return { o: out, lse, stats };
}

function runFlashForward(
  r: Resolved,
  t: FlashTiling,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  tab: ReturnType<typeof blockTable>,
): void {
  const op = "flashAttention";
  const variant = variantOf(r, t.sparseElem);
  const D4 = Math.ceil(r.D / 4);
  const layers = layerRows();
  const aux = auxTensors(r);
  const tabT = fromArray(tab.table, [tab.table.length], "u32", "webgpu");
  const held: GpuTexture[] = [];
  // (B, H, T, D) views of the operands in either layout (strides carry the layout)
  const [qv, kv, vv] = [q, k, v].map((x) => headsView(x, r.layout));
  const temps: Tensor[] = [tabT, qv, kv, vv];
  try {
    const bind: Record<string, Binding> = {
      Q: readOf(q),
      tab: readOf(tabT),
      lens: readOf(aux.lens),
      O: writeOf(o),
      L: writeOf(lse),
    };
    let kpr = 0, x0 = 0, x1 = 0;
    let kmap: RowMap = { B: 0, H: 0, T: 0 };
    if (t.version === 3) {
      const kvTex = texturePair(op, ["K", "V"], [k, v], [kv, vv], held);
      bind.K = sampledOf(kvTex.a);
      bind.V = sampledOf(kvTex.b);
      kmap = kvTex.map;
      kpr = keysPerRow(D4);
    } else {
      // v1/v2 read K and V as contiguous vec4 rows: copy when the layout or offset does not allow it
      const flat = (x: Tensor) => {
        const c = x.isContiguous && x.offset % 4 === 0 ? x : contiguous(x);
        if (c !== x) temps.push(c);
        return c;
      };
      const kc = flat(kv), vc = flat(vv);
      bind.K = readOf(kc);
      bind.V = readOf(vc);
      x0 = kc.offset / 4;
      x1 = vc.offset / 4;
    }
    if (variant.sparseElem) bind.smask = sampledOf(maskTexture(op, r, held, temps));
    if (aux.slopes) bind.slopes = readOf(aux.slopes);
    bind.keep = sampledOf(packedKeep(op, r.keep, held));
    const BH = r.B * r.H;
    const cfg = { version: t.version, dtype: q.dtype, D4, R: t.R, WG: t.WG, BC: t.BC, layers, variant };
    gpu().run({
      name: op,
      key: `attention flash v${t.version}|${q.dtype}|${D4}|${t.R}|${t.WG}|${
        t.version === 2 ? t.BC : 0
      }|${layers}|${variantKey(variant)}`,
      source: () => flashForwardSource(cfg),
      bindings: bind,
      uniforms: packUniforms({
        ...baseFields(r),
        tabH: tab.heads > 1 ? 1 : 0,
        nqb: tab.nqb,
        nkb: tab.nkb,
        BR: t.BR,
        BC: t.BC,
        qOff: qv.offset,
        qsB: qv.strides[0],
        qsH: qv.strides[1],
        qsT: qv.strides[2],
        qsD: qv.strides[3],
        ...outStrides(o, r),
        kB: kmap.B,
        kH: kmap.H,
        kT: kmap.T,
        kpr,
        nbh: BH,
        x0,
        x1,
        nR: t.R,
        nD4: D4,
      }),
      workgroups: [tab.nqb, Math.min(BH, MAX_Y), Math.ceil(BH / MAX_Y)],
    });
  } finally {
    for (const h of held) h.release();
    for (const x of temps) x.dispose();
    aux.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------
// backward

/**
 * Tiling of the backward programs: query rows per invocation in bwd-dq (q, dO and dq in registers) and
 * key rows per invocation in bwd-dkdv (k, v, dk and dv), from the forward's register budget; query blocks
 * of BQ rows for bwd-dkdv's table; aligned with a block-sparse mask when it allows (as the forward).
 */
function bwdTiling(r: Resolved): { Rq: number; Rk: number; BQ: number; BC: number; sparseElem: boolean } {
  const D4 = Math.ceil(r.D / 4);
  let Rq = Math.max(1, Math.min(8, Math.floor((2 * REG_BUDGET) / (3 * D4))));
  let Rk = Math.max(1, Math.min(8, Math.floor((2 * REG_BUDGET) / (4 * D4))));
  const f = flashTiling(r, {}, "f32", "flashAttention backward");
  let BQ = 64, sparseElem = f.sparseElem;
  const sp = r.sparse;
  if (sp) {
    BQ = sp.br;
    const cq = aligned(sp.br, 8, Rq), ck = aligned(sp.bc, 8, Rk);
    if (cq) Rq = cq;
    else sparseElem = true;
    if (ck) Rk = ck;
    else sparseElem = true;
  }
  return { Rq, Rk, BQ, BC: f.BC, sparseElem };
}

/**
 * The dK/dV program's loop budget, a knob for tests: one dispatch covers at most `loopBudget / G` query
 * rows (G query heads per kv head), so that one invocation's loops stay under lavapipe's limit of 65535
 * iterations in all; longer sequences take several dispatches that add to the partial sums.
 *
 * @example
 * ```ts
 * import { dkdvLimits } from "./flash.ts";
 * console.log(dkdvLimits.loopBudget); // 32768 (MAX_LOOP)
 * ```
 */
export const dkdvLimits: { loopBudget: number } = { loopBudget: MAX_LOOP };

/** The query-row ranges of the dK/dV dispatches: G x rows <= the loop budget each. */
function dkdvRanges(T: number, G: number): [number, number][] {
  const span = Math.max(1, Math.floor(dkdvLimits.loopBudget / Math.max(1, G)));
  const out: [number, number][] = [];
  for (let i0 = 0; i0 < T; i0 += span) out.push([i0, Math.min(T, i0 + span)]);
  return out;
}

function flashBackward(
  r: Resolved,
  g: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  keep: Tensor | null,
): { grads: Tensor[]; stats: AttentionStats } {
  const op = "flashAttention backward";
  const { B, H, Hkv, T, S, D } = r;
  const D4 = Math.ceil(D / 4);
  const bt = bwdTiling(r);
  const variant = variantOf(r, bt.sparseElem);
  const BC = bt.BC;
  const tq = blockTable(r, 8 * bt.Rq, BC);
  const tk = blockTable(r, bt.BQ, 8 * bt.Rk);
  const bytes = itemSize(q.dtype);
  const wq = visitedWork(r, tq, 8 * bt.Rq, BC), wk = visitedWork(r, tk, bt.BQ, 8 * bt.Rk);
  const rows = B * H * T, kvRows = B * Hkv * S;
  const tex = 16 * D4;
  const ranges = dkdvRanges(T, r.G);
  // partial sums carried across dispatches stay in f32 (an f16 result is cast once at the end)
  const carry = ranges.length > 1 && q.dtype !== "f32";
  const extra = (ranges.length - 1) * 2 * kvRows * D * (carry ? 4 : bytes);
  const stats = makeStats("flash v3 backward", [8 * bt.Rq, BC], [
    {
      name: "pack Q, dO, K, V",
      read: 2 * (rows + kvRows) * D * bytes,
      written: 2 * (rows + kvRows) * tex,
      flops: 0,
    },
    {
      name: "bwd-prep (L, rowsum(dO O))",
      read: rows * (2 * D * bytes + 4),
      written: rows * 16,
      flops: 2 * rows * D,
    },
    {
      name: "bwd-dq",
      read: rows * (2 * tex + 16) + 2 * (wq.pairs / Math.max(1, Math.min(8 * bt.Rq, T))) * tex,
      written: rows * D * bytes,
      flops: 8 * D * wq.pairs,
    },
    {
      name: `bwd-dkdv (${ranges.length} dispatch${ranges.length > 1 ? "es" : ""})`,
      read: ranges.length * 2 * kvRows * tex +
        (wk.pairs / Math.max(1, Math.min(8 * bt.Rk, S))) * (2 * tex + 16) + extra,
      written: 2 * kvRows * D * (carry ? 4 : bytes) + extra,
      flops: 8 * D * wk.pairs,
    },
    ...(carry
      ? [{ name: "cast dK, dV", read: 2 * kvRows * D * 4, written: 2 * kvRows * D * bytes, flops: 0 }]
      : []),
  ], { visited: wq.tiles + wk.tiles, skipped: 0 });
  const dq = empty(op, layoutShape(r.layout, B, H, T, D), q.dtype, "webgpu");
  const dk = empty(op, layoutShape(r.layout, B, Hkv, S, D), q.dtype, "webgpu");
  const dv = empty(op, layoutShape(r.layout, B, Hkv, S, D), q.dtype, "webgpu");
  const grads = [dq, dk, dv];
  if (dq.size === 0 && dk.size === 0) return { grads, stats };
  if (T === 0 || S === 0) {
    // nothing to attend to (or no queries): the gradients are zero
    noGrad(() => {
      for (const t of grads) if (t.size > 0) copyInto(t, zeros([1], { device: "webgpu", dtype: q.dtype }));
    });
    return { grads, stats };
  }
  try {
    recordBackward(r, bt, variant, g, q, k, v, o, lse, keep, grads, tq, tk, ranges, carry);
  } catch (e) {
    for (const t of grads) t.dispose();
    throw e;
  }
  return { grads, stats };
}

/** Records the backward's programs: pack Q, dO, K, V (and the keep mask), bwd-prep, bwd-dq, bwd-dkdv. */
function recordBackward(
  r: Resolved,
  bt: ReturnType<typeof bwdTiling>,
  variant: ReturnType<typeof variantOf>,
  g: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  keep: Tensor | null,
  [dq, dk, dv]: Tensor[],
  tq: ReturnType<typeof blockTable>,
  tk: ReturnType<typeof blockTable>,
  ranges: [number, number][],
  carry: boolean,
): void {
  const op = "flashAttention backward";
  const ctx = gpu();
  const { B, H, Hkv, D } = r;
  const D4 = Math.ceil(D / 4);
  const layers = layerRows();
  const rows = B * H * r.T;
  const aux = auxTensors(r);
  const tqT = fromArray(tq.table, [tq.table.length], "u32", "webgpu");
  const tkT = fromArray(tk.table, [tk.table.length], "u32", "webgpu");
  // (B, heads, rows, D) views in either layout; o is the forward's own output (unit D stride)
  const [qv, kv, vv, gv, ov] = [q, k, v, g, o].map((x) => headsView(x, r.layout));
  const held: GpuTexture[] = [];
  const temps: Tensor[] = [tqT, tkT, qv, kv, vv, gv, ov];
  try {
    const qTex = texturePair(op, ["Q", "dO"], [q, g], [qv, gv], held);
    const kTex = texturePair(op, ["K", "V"], [k, v], [kv, vv], held);
    const [Qt, dOt, Kt, Vt] = [qTex.a, qTex.b, kTex.a, kTex.b];
    const LDt = acquirePacked(rows, 1, `${op} L and D`, held);
    ctx.run({
      name: op,
      key: `attention bwd-prep|${q.dtype}|${layers}`,
      source: () => prepSource(q.dtype, layers),
      bindings: { dO: readOf(g), O: readOf(o), L: readOf(lse), out: { texture: LDt, access: "write" } },
      uniforms: packUniforms({
        T: r.T,
        H,
        D,
        nbh: rows,
        qOff: gv.offset,
        qsB: gv.strides[0],
        qsH: gv.strides[1],
        qsT: gv.strides[2],
        qsD: gv.strides[3],
        x1: ov.offset,
        osB: ov.strides[0],
        osH: ov.strides[1],
        osT: ov.strides[2],
      }),
      workgroups: grid(rows, 64),
    });
    const common: Record<string, Binding> = {
      Q: sampledOf(Qt),
      dO: sampledOf(dOt),
      K: sampledOf(Kt),
      V: sampledOf(Vt),
      LD: sampledOf(LDt),
      lens: readOf(aux.lens),
      keep: sampledOf(packedKeep(op, keep, held)),
    };
    if (variant.sparseElem) common.smask = sampledOf(maskTexture(op, r, held, temps));
    if (aux.slopes) common.slopes = readOf(aux.slopes);
    const base = {
      ...baseFields(r),
      kpr: keysPerRow(D4),
      nbh: B * H,
      kB: kTex.map.B,
      kH: kTex.map.H,
      kT: kTex.map.T,
      qB: qTex.map.B,
      qH: qTex.map.H,
      qT: qTex.map.T,
    };
    const cq = { dtype: q.dtype, D4, R: bt.Rq, layers, variant };
    ctx.run({
      name: op,
      key: `attention bwd-dq|${q.dtype}|${D4}|${bt.Rq}|${layers}|${variantKey(variant)}`,
      source: () => dqSource(cq),
      bindings: { ...common, tab: readOf(tqT), dQ: writeOf(dq) },
      uniforms: packUniforms({
        ...base,
        ...outStrides(dq, r),
        tabH: tq.heads > 1 ? 1 : 0,
        nqb: tq.nqb,
        nkb: tq.nkb,
        BR: 8 * bt.Rq,
        BC: bt.BC,
        nR: bt.Rq,
        nD4: D4,
      }),
      workgroups: [tq.nqb, Math.min(B * H, MAX_Y), Math.ceil((B * H) / MAX_Y)],
    });
    const outType = carry ? "f32" : q.dtype;
    const ck = { dtype: q.dtype, D4, R: bt.Rk, layers, variant, out: outType };
    const dk32 = carry ? empty(op, dk.shape, "f32", "webgpu") : null;
    const dv32 = carry ? empty(op, dv.shape, "f32", "webgpu") : null;
    if (dk32 && dv32) temps.push(dk32, dv32);
    // query rows in ranges over dispatches (in order in the batch: each sees the one before's writes)
    for (const [i0, i1] of ranges) {
      ctx.run({
        name: op,
        key: `attention bwd-dkdv v2|${q.dtype}|${outType}|${D4}|${bt.Rk}|${layers}|${variantKey(variant)}`,
        source: () => dkdvSource(ck),
        bindings: { ...common, tab: readOf(tkT), dK: writeOf(dk32 ?? dk), dV: writeOf(dv32 ?? dv) },
        uniforms: packUniforms({
          ...base,
          ...outStrides(dk, r),
          nbh: B * Hkv,
          tabH: tk.heads > 1 ? 1 : 0,
          nqb: tk.nqb,
          nkb: tk.nkb,
          BR: bt.BQ,
          BC: 8 * bt.Rk,
          nR: bt.Rk,
          nD4: D4,
          x0: i0,
          x1: i1,
        }),
        workgroups: [tk.nkb, Math.min(B * Hkv, MAX_Y), Math.ceil((B * Hkv) / MAX_Y)],
      });
    }
    if (dk32 && dv32) {
      noGrad(() => {
        const ck16 = cast(dk32, q.dtype), cv16 = cast(dv32, q.dtype);
        copyInto(dk, ck16);
        copyInto(dv, cv16);
        ck16.dispose();
        cv16.dispose();
      });
    }
  } finally {
    for (const h of held) h.release();
    for (const x of temps) x.dispose();
    aux.dispose();
  }
}
