/**
 * Exact attention on WebGPU: the paper's standard attention (S and P materialised in device memory),
 * FlashAttention (tiled, online softmax, forward and backward without T x S memory), a decode path for
 * one new query against a K/V cache, and `attention`, which picks one. All share the options and mask
 * semantics of {@link attentionRef} (attention_options.ts) and report the FLOPs and device-memory bytes of
 * their programs in `stats`.
 * @module
 */

import { isGradEnabled, noGrad, record } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import { itemSize } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP, type Program } from "../../runtime/webgpu.ts";
import { add, cast, contiguous, copyInto, mul, sub } from "../core/elementwise.ts";
import { stack } from "../core/layout.ts";
import { matmul } from "../core/matmul.ts";
import { sum } from "../core/reduce.ts";
import { empty, fromArray } from "../core/util.ts";
import { zeros } from "../core/creation.ts";
import {
  acquireTexture,
  checkDeferred,
  layerRows,
  type PackedTexture,
  type Step,
  submitSteps,
} from "./attention_gpu.ts";
import {
  type AttentionOptions,
  type AttentionStats,
  blockTable,
  makeStats,
  resolve,
  type Resolved,
  UNBOUNDED,
  visitedWork,
} from "./attention_options.ts";
import { attentionRef, type AttentionResult, standardBackwardModel, standardModel } from "./attention_ref.ts";
import {
  CH,
  decodeSource,
  dkdvSource,
  dqSource,
  flashForwardSource,
  packSource,
  packUniforms,
  prepSource,
  softmaxSource,
  TEX_WIDTH,
  type Variant,
  variantKey,
} from "./attention_wgsl.ts";

const MAX_Y = 65535;

/**
 * Loops in these programs run at most this many iterations: lavapipe silently ends a loop after 65535
 * (the flash loops step 4 keys; softmax one key; the dK/dV loop is split over dispatches instead, see
 * {@link dkdvLimits}).
 */
const LOOP_CAP = 65535;

function checkLoops(op: string, what: string, iterations: number): void {
  if (iterations > LOOP_CAP) {
    throw new Error(
      `${op}: ${what} needs ${iterations} iterations of one shader loop, over the ${LOOP_CAP} the software adapter runs; split the sequence`,
    );
  }
}

function variantOf(r: Resolved, sparseElem = false): Variant {
  return { alibi: !!r.alibi, sparseElem };
}

/** Uniform fields common to every program of one call. */
function baseFields(r: Resolved) {
  return {
    T: r.T,
    S: r.S,
    H: r.H,
    G: r.G,
    D: r.D,
    B: r.B,
    off: r.off,
    winL: r.window ? r.window[0] : UNBOUNDED,
    winR: r.window ? r.window[1] : UNBOUNDED,
    cR: r.causal ? 0 : UNBOUNDED,
    keepOn: r.keep ? 1 : 0,
    glob: r.globalTokens,
    scale: r.scale,
    spH: r.sparse && r.sparse.heads > 1 ? 1 : 0,
    nbr: r.sparse?.nbr ?? 0,
    nbc: r.sparse?.nbc ?? 0,
    br: r.sparse?.br ?? 1,
    bc: r.sparse?.bc ?? 1,
    Hkv: r.Hkv,
  };
}

/** Small per-call device inputs: key lengths, the block-sparse mask, ALiBi slopes. */
function auxTensors(r: Resolved): { lens: Tensor; smask: Tensor; slopes: Tensor | null; dispose(): void } {
  const lens = fromArray(r.lengths ?? new Array(r.B).fill(r.S), [r.B], "u32", "webgpu");
  // a one-word stand-in when there is no mask: every binding is present in every program variant
  const smask = fromArray(
    r.sparse ? r.sparse.mask : [0],
    [r.sparse ? r.sparse.mask.length : 1],
    "u32",
    "webgpu",
  );
  const slopes = r.alibi ? fromArray(r.alibi, [r.H], "f32", "webgpu") : null;
  return {
    lens,
    smask,
    slopes,
    dispose: () => {
      lens.dispose();
      smask.dispose();
      slopes?.dispose();
    },
  };
}

const buf = (t: Tensor): GPUBindingResource => ({ buffer: t.storage.buffer! });

/** A pack step: a 4-D view (n0, n1, n2, D) into `tex` (D4 texels per row). Null when empty. */
function packStep(
  name: string,
  t: Tensor,
  shape: number[],
  strides: number[],
  tex: PackedTexture,
): Step | null {
  const [n0, n1, n2, D] = shape;
  const D4 = Math.ceil(D / 4);
  const texels = n0 * n1 * n2 * D4;
  if (texels === 0) return null;
  const layers = layerRows();
  return {
    name,
    key: `attention pack|${t.dtype}|${D4}|${layers}`,
    source: () => packSource(t.dtype, D4, layers),
    resources: { X: buf(t), out: tex.texture.createView({ dimension: "2d-array" }) },
    uniforms: packUniforms({
      x0: n1,
      x1: n2,
      D,
      qsB: strides[0],
      qsH: strides[1],
      qsT: strides[2],
      qsD: strides[3],
      qOff: t.offset,
      kpr: tex.kpr,
      nbh: texels,
    }),
    workgroups: grid(texels, 64),
  };
}

/** Packs a 4-D tensor into a new pooled texture; returns it and its step. */
function packed(name: string, what: string, t: Tensor, steps: Step[], held: PackedTexture[]): PackedTexture {
  const [n0, n1, n2, D] = t.shape;
  const tex = acquireTexture(n0 * n1 * n2, Math.ceil(D / 4), what);
  held.push(tex);
  const s = packStep(name, t, [...t.shape], [...t.strides], tex);
  if (s) steps.push(s);
  return tex;
}

/** The (B, S) keep mask packed one key per texel (a small unused texture when there is none). */
function packedKeep(name: string, keep: Tensor | null, steps: Step[], held: PackedTexture[]): PackedTexture {
  if (!keep) {
    const t = acquireTexture(1, 1, "no key padding mask");
    held.push(t);
    return t;
  }
  const [B, S] = keep.shape;
  const tex = acquireTexture(B * S, 1, "key padding mask");
  held.push(tex);
  const s = packStep(name, keep, [B, 1, S, 1], [keep.strides[0], 0, keep.strides[1], 0], tex);
  if (s) steps.push(s);
  return tex;
}

/** The block-sparse mask written into a texture (one entry per texel, in x), or a stand-in. */
function maskTexture(r: Resolved, held: PackedTexture[]): PackedTexture {
  const n = r.sparse ? r.sparse.mask.length : 1;
  const tex = acquireTexture(n, 1, "block mask");
  held.push(tex);
  if (r.sparse) {
    const rows = Math.ceil(n / TEX_WIDTH);
    if (rows > layerRows()) throw new Error(`attention: block mask of ${n} entries is too large`);
    const data = new Float32Array(rows * TEX_WIDTH * 4);
    r.sparse.mask.forEach((m, i) => (data[4 * i] = m));
    gpu().device.queue.writeTexture({ texture: tex.texture }, data, { bytesPerRow: TEX_WIDTH * 16 }, [
      TEX_WIDTH,
      rows,
      1,
    ]);
  }
  return tex;
}

// ---------------------------------------------------------------------------------------------------------
// FlashAttention

/**
 * vec4 registers per invocation for v3's q rows (and as many for the accumulator). Measured on lavapipe
 * (B = 1, H = 8, T = 1024, D = 64): 32 -> R = 2, 486 ms; 64 -> R = 4, 216 ms; 128 -> R = 8, 238 ms.
 * Compile time (cold Mesa shader cache) grows ~3x per doubling: ~2 s at R = 2, ~6 s at R = 4, ~25 s at
 * R = 8 in a stripped-down kernel; the cache makes later runs instant.
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
 * Block sizes. Keys per block follow the paper's Bc = M / 4D with M the workgroup-memory limit in floats
 * (v2 holds its K and V tiles there; v3 uses Bc only as the skip granularity). v3's query rows per
 * workgroup are 8 invocations x R rows, R from a register budget per invocation for q and
 * the accumulator (see REG_BUDGET). With a block-sparse mask the tiles are cut to divide its blocks, so
 * that each tile is wholly inside or outside a zero block; when its block sizes do not allow that
 * (not multiples of 8 rows and 4 keys), the kernel checks the mask per element.
 */
function flashTiling(r: Resolved, opts: AttentionOptions, op: string): FlashTiling {
  const version = opts.version ?? 3;
  if (![1, 2, 3].includes(version)) throw new Error(`${op}: version must be 1, 2 or 3, got ${version}`);
  const D4 = Math.ceil(r.D / 4);
  const M = gpu().limits.maxComputeWorkgroupStorageSize / 4;
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
  if (version === 2 && 2 * BC * D4 * 16 > gpu().limits.maxComputeWorkgroupStorageSize) {
    throw new Error(
      `${op}: v2's K and V tiles of ${BC} keys x ${r.D} need ${
        2 * BC * D4 * 16
      } bytes of workgroup memory, over the adapter's ${gpu().limits.maxComputeWorkgroupStorageSize}`,
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
 * shader (see attention_wgsl.ts). Differentiable: the backward pass recomputes P from L (no T x S
 * memory either). On the cpu it computes with {@link attentionRef}.
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
  if (q.device === "cpu") {
    const res = attentionRef(q, k, v, opts);
    res.stats.impl = "reference (flashAttention on cpu)";
    return res;
  }
  checkDeferred(op);
  if (q.dtype === "f64") throw new Error(`${op}: f64 lives on the cpu only`);
  const t = flashTiling(r, opts, op);
  checkLoops(op, `S = ${r.S} keys (4 per iteration)`, Math.ceil(r.S / CH));
  if (t.version !== 3 && q.dtype !== "f32") throw new Error(`${op}: v${t.version} needs f32, got ${q.dtype}`);
  const { B, H, T, D } = r;
  const o = empty(op, [B, H, T, D], q.dtype, "webgpu");
  const lse = empty(op, [B, H, T], "f32", "webgpu");
  const tab = blockTable(r, t.BR, t.BC);
  const stats = flashForwardStats(r, t, tab, itemSize(q.dtype));
  if (o.size > 0) runFlashForward(r, t, q, k, v, o, lse, tab);
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
  const held: PackedTexture[] = [];
  const temps: Tensor[] = [aux.lens, tabT];
  const steps: Step[] = [];
  try {
    const res: Record<string, GPUBindingResource> = {
      Q: buf(q),
      tab: buf(tabT),
      lens: buf(aux.lens),
      O: buf(o),
      L: buf(lse),
    };
    let kpr = 0, x0 = 0, x1 = 0;
    if (t.version === 3) {
      const kt = packed(op, "K", k, steps, held), vt = packed(op, "V", v, steps, held);
      res.K = kt.view;
      res.V = vt.view;
      kpr = kt.kpr;
    } else {
      // v1/v2 read K and V as contiguous vec4 rows: copy when the layout or offset does not allow it
      const flat = (x: Tensor) => {
        const c = x.isContiguous && x.offset % 4 === 0 ? x : contiguous(x);
        if (c !== x) temps.push(c);
        return c;
      };
      const kc = flat(k), vc = flat(v);
      res.K = buf(kc);
      res.V = buf(vc);
      x0 = kc.offset / 4;
      x1 = vc.offset / 4;
    }
    res.smask = maskTexture(r, held).view;
    if (aux.slopes) res.slopes = buf(aux.slopes);
    res.keep = packedKeep(op, r.keep, steps, held).view;
    const BH = r.B * r.H;
    const cfg = { version: t.version, dtype: q.dtype, D4, R: t.R, WG: t.WG, BC: t.BC, layers, variant };
    steps.push({
      name: op,
      key: `attention flash v${t.version}|${q.dtype}|${D4}|${t.R}|${t.WG}|${
        t.version === 2 ? t.BC : 0
      }|${layers}|${variantKey(variant)}`,
      source: () => flashForwardSource(cfg),
      resources: res,
      uniforms: packUniforms({
        ...baseFields(r),
        tabH: tab.heads > 1 ? 1 : 0,
        nqb: tab.nqb,
        nkb: tab.nkb,
        BR: t.BR,
        BC: t.BC,
        qOff: q.offset,
        qsB: q.strides[0],
        qsH: q.strides[1],
        qsT: q.strides[2],
        qsD: q.strides[3],
        kpr,
        nbh: BH,
        x0,
        x1,
        nR: t.R,
        nD4: D4,
      }),
      workgroups: [tab.nqb, Math.min(BH, MAX_Y), Math.ceil(BH / MAX_Y)],
    });
    submitSteps(steps);
  } finally {
    for (const h of held) h.release();
    for (const x of temps) x.dispose();
    aux.smask.dispose();
    aux.slopes?.dispose();
  }
}

/**
 * Tiling of the backward programs: query rows per invocation in bwd-dq (q, dO and dq in registers) and
 * key rows per invocation in bwd-dkdv (k, v, dk and dv), from the forward's register budget; query blocks
 * of BQ rows for bwd-dkdv's table; aligned with a block-sparse mask when it allows (as the forward).
 */
function bwdTiling(r: Resolved): { Rq: number; Rk: number; BQ: number; BC: number; sparseElem: boolean } {
  const D4 = Math.ceil(r.D / 4);
  let Rq = Math.max(1, Math.min(8, Math.floor((2 * REG_BUDGET) / (3 * D4))));
  let Rk = Math.max(1, Math.min(8, Math.floor((2 * REG_BUDGET) / (4 * D4))));
  const f = flashTiling(r, {}, "flashAttention backward");
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
 * import { dkdvLimits } from "./attention.ts";
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
  checkDeferred(op);
  const { B, H, Hkv, T, S, D } = r;
  const D4 = Math.ceil(D / 4);
  const layers = layerRows();
  const bt = bwdTiling(r);
  const variant = variantOf(r, bt.sparseElem);
  const BC = bt.BC;
  const dq = empty(op, [B, H, T, D], q.dtype, "webgpu");
  const dk = empty(op, [B, Hkv, S, D], q.dtype, "webgpu");
  const dv = empty(op, [B, Hkv, S, D], q.dtype, "webgpu");
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
  if (dq.size === 0 && dk.size === 0) return { grads: [dq, dk, dv], stats };
  const aux = auxTensors(r);
  const tqT = fromArray(tq.table, [tq.table.length], "u32", "webgpu");
  const tkT = fromArray(tk.table, [tk.table.length], "u32", "webgpu");
  const gc = contiguous(g), oc = contiguous(o);
  const held: PackedTexture[] = [];
  const steps: Step[] = [];
  let dk32: Tensor | null = null, dv32: Tensor | null = null;
  try {
    const Qt = packed(op, "Q", q, steps, held), dOt = packed(op, "dO", g, steps, held);
    const Kt = packed(op, "K", k, steps, held), Vt = packed(op, "V", v, steps, held);
    const LDt = acquireTexture(rows, 1, "L and D");
    held.push(LDt);
    if (rows > 0) {
      steps.push({
        name: op,
        key: `attention bwd-prep|${q.dtype}|${layers}`,
        source: () => prepSource(q.dtype, layers),
        resources: {
          dO: buf(gc),
          O: buf(oc),
          L: buf(lse),
          out: LDt.texture.createView({ dimension: "2d-array" }),
        },
        uniforms: packUniforms({ D, nbh: rows, x0: gc.offset, x1: oc.offset }),
        workgroups: grid(rows, 64),
      });
    }
    const common: Record<string, GPUBindingResource> = {
      Q: Qt.view,
      dO: dOt.view,
      K: Kt.view,
      V: Vt.view,
      LD: LDt.view,
      lens: buf(aux.lens),
    };
    common.smask = maskTexture(r, held).view;
    if (aux.slopes) common.slopes = buf(aux.slopes);
    common.keep = packedKeep(op, keep, steps, held).view;
    const base = { ...baseFields(r), kpr: Qt.kpr, nbh: B * H };
    if (T > 0 && S > 0) {
      const cq = { dtype: q.dtype, D4, R: bt.Rq, layers, variant };
      steps.push({
        name: op,
        key: `attention bwd-dq|${q.dtype}|${D4}|${bt.Rq}|${layers}|${variantKey(variant)}`,
        source: () => dqSource(cq),
        resources: { ...common, tab: buf(tqT), dQ: buf(dq) },
        uniforms: packUniforms({
          ...base,
          tabH: tq.heads > 1 ? 1 : 0,
          nqb: tq.nqb,
          nkb: tq.nkb,
          BR: 8 * bt.Rq,
          BC,
          nR: bt.Rq,
          nD4: D4,
        }),
        workgroups: [tq.nqb, Math.min(B * H, MAX_Y), Math.ceil((B * H) / MAX_Y)],
      });
      const outType = carry ? "f32" : q.dtype;
      const ck = { dtype: q.dtype, D4, R: bt.Rk, layers, variant, out: outType };
      if (carry) {
        dk32 = empty(op, [B, Hkv, S, D], "f32", "webgpu");
        dv32 = empty(op, [B, Hkv, S, D], "f32", "webgpu");
      }
      // query rows in ranges over dispatches (one compute pass: each sees the one before's writes)
      for (const [i0, i1] of ranges) {
        steps.push({
          name: op,
          key: `attention bwd-dkdv v2|${q.dtype}|${outType}|${D4}|${bt.Rk}|${layers}|${variantKey(variant)}`,
          source: () => dkdvSource(ck),
          resources: { ...common, tab: buf(tkT), dK: buf(dk32 ?? dk), dV: buf(dv32 ?? dv) },
          uniforms: packUniforms({
            ...base,
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
      submitSteps(steps);
      if (dk32 && dv32) {
        const [a, b] = [dk32, dv32];
        noGrad(() => {
          const ck16 = cast(a, q.dtype), cv16 = cast(b, q.dtype);
          copyInto(dk, ck16);
          copyInto(dv, cv16);
          ck16.dispose();
          cv16.dispose();
        });
      }
    } else {
      // nothing to attend to (or no queries): the gradients are zero
      noGrad(() => {
        for (const t of [dq, dk, dv]) {
          if (t.size > 0) copyInto(t, zeros([1], { device: "webgpu", dtype: q.dtype }));
        }
      });
    }
  } finally {
    for (const h of held) h.release();
    for (const x of [tqT, tkT, gc, oc]) x.dispose();
    dk32?.dispose();
    dv32?.dispose();
    aux.dispose();
  }
  return { grads: [dq, dk, dv], stats };
}

// ---------------------------------------------------------------------------------------------------------
// standard attention

/**
 * Standard attention on WebGPU, the paper's baseline (its Algorithm 0): S = q k^T is written to device
 * memory (the library's matmul), read back by a masked-softmax shader that writes P and L, and
 * O = P v (matmul). S and P are materialised for all heads: scores of up to maxStorageBufferBindingSize
 * bytes per buffer, split over (batch, head) chunks; a single head's T x S scores over that limit is an
 * error (use {@link flashAttention}). Differentiable, with a backward composed from the same pieces
 * (P saved: T x S memory per head). f32 only; on the cpu it computes with {@link attentionRef}.
 *
 * Shapes: q (B, H, T, D); k, v (B, Hkv, S, D); O (B, H, T, D); L (B, H, T).
 *
 * @example
 * ```ts
 * import { randn, standardAttention } from "seqlab";
 * const q = randn([1, 2, 64, 16], { seed: 1 }), kv = randn([1, 2, 64, 16], { seed: 2 });
 * const { o, stats } = standardAttention(q, kv, kv);
 * console.log(o.shape, stats.impl); // [1, 2, 64, 16] "standard"
 * ```
 */
export function standardAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): AttentionResult {
  const op = "standardAttention";
  const r = resolve(op, q, k, v, opts, q.device === "cpu");
  if (q.device === "cpu") {
    const res = attentionRef(q, k, v, opts);
    res.stats.impl = "reference (standardAttention on cpu)";
    return res;
  }
  if (q.dtype !== "f32") throw new Error(`${op}: needs f32 on webgpu, got ${q.dtype}; use flashAttention`);
  const { B, H, Hkv, G, T, S, D } = r;
  const cap = gpu().maxBinding;
  const perHead = T * S * 4;
  if (perHead > cap) {
    throw new Error(
      `${op}: the scores of one head (T x S = ${T} x ${S}) need ${
        (perHead / 2 ** 20).toFixed(0)
      } MiB, over the adapter's maxStorageBufferBindingSize (${
        (cap / 2 ** 20).toFixed(0)
      } MiB); use flashAttention`,
    );
  }
  checkLoops(op, `a softmax row of S = ${S} keys`, S);
  const P = B * Hkv;
  const chunks: { p0: number; p1: number; g0: number; g1: number }[] = [];
  if (G * perHead <= cap) {
    const n = Math.max(1, Math.floor(cap / Math.max(1, G * perHead)));
    for (let p0 = 0; p0 < P; p0 += n) chunks.push({ p0, p1: Math.min(P, p0 + n), g0: 0, g1: G });
  } else {
    const m = Math.floor(cap / perHead);
    for (let p = 0; p < P; p++) {
      for (let g0 = 0; g0 < G; g0 += m) chunks.push({ p0: p, p1: p + 1, g0, g1: Math.min(G, g0 + m) });
    }
  }
  const variant = variantOf(r);
  const stats = standardModel(r, "standard", 4);
  const o5 = empty(op, [P, G, T, D], "f32", "webgpu");
  const lse = empty(op, [B, H, T], "f32", "webgpu");
  const needGrad = isGradEnabled() && [q, k, v].some((t) => t.requiresGrad);
  const probs: Tensor[] = [];
  noGrad(() => {
    const q5 = q.reshape([P, G, T, D]), k5 = k.reshape([P, 1, S, D]), v5 = v.reshape([P, 1, S, D]);
    const aux = auxTensors(r);
    const keepBuf = r.keep ? r.keep.cast("f32") : fromArray([1], [1], "f32", "webgpu");
    try {
      if (o5.size > 0 && S > 0) {
        // Algorithm 0: write S for every chunk, then P (each S chunk freed once its P exists), then O
        const scores = chunks.map((c) => {
          const qc = q5.slice([[c.p0, c.p1], [c.g0, c.g1]]), kc = k5.slice([[c.p0, c.p1]]);
          const kt = kc.transpose(-1, -2);
          const s = matmul(qc, kt);
          for (const x of [qc, kc, kt]) x.dispose();
          return s;
        });
        chunks.forEach((c, n) => {
          const s = scores[n];
          const p = empty(op, s.shape, "f32", "webgpu");
          const rowsN = (c.p1 - c.p0) * (c.g1 - c.g0) * T;
          const src = softmaxSource(variant);
          const inputs = [s, aux.lens, aux.smask, keepBuf, aux.slopes].filter((x): x is Tensor => x !== null);
          const prog: Program = {
            name: op,
            key: `attention softmax v1|${variantKey(variant)}`,
            source: () => src.code,
            inputs: inputs.map((x) => x.storage.buffer!),
            outputs: [p.storage.buffer!, lse.storage.buffer!],
            uniforms: packUniforms({ ...baseFields(r), bh0: c.p0 * G + c.g0, nbh: rowsN }),
            workgroups: grid(rowsN, 64),
          };
          gpu().run(prog);
          s.dispose();
          probs.push(p);
        });
        chunks.forEach((c, n) => {
          const vc = v5.slice([[c.p0, c.p1]]);
          const oc = matmul(probs[n], vc);
          const dst = o5.slice([[c.p0, c.p1], [c.g0, c.g1]]);
          copyInto(dst, oc);
          for (const x of [vc, oc, dst]) x.dispose();
        });
      } else if (o5.size > 0) {
        copyInto(o5, zeros([1], { device: "webgpu" }));
        copyInto(lse, fromArray([-Infinity], [1], "f32", "webgpu"));
      }
    } finally {
      for (const x of [q5, k5, v5]) x.dispose();
      keepBuf.dispose();
      aux.dispose();
    }
  });
  const o = o5.reshape([B, H, T, D]);
  o5.dispose();
  if (!needGrad) {
    for (const p of probs) p.dispose();
    return { o, lse, stats };
  }
  const out = record(op, o, [q, k, v], [q, k, v, o, ...probs], (g, saved) => {
    const [qs, ks, vs, os] = saved;
    const grads = standardBackward(r, chunks, g, qs, ks, vs, os, saved.slice(4));
    stats.backward = standardBackwardModel(r, "standard backward", 4);
    return grads;
  });
  for (const p of probs) p.dispose(); // the graph holds its own references
  return { o: out, lse, stats };
}

function standardBackward(
  r: Resolved,
  chunks: { p0: number; p1: number; g0: number; g1: number }[],
  g: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  probs: Tensor[],
): Tensor[] {
  const { B, Hkv, G, T, S, D } = r;
  const P = B * Hkv;
  const q5 = q.reshape([P, G, T, D]), k5 = k.reshape([P, 1, S, D]), v5 = v.reshape([P, 1, S, D]);
  const g5 = g.reshape([P, G, T, D]), o5 = o.reshape([P, G, T, D]);
  const dq = zeros([P, G, T, D], { device: "webgpu" });
  const dk = zeros([P, 1, S, D], { device: "webgpu" }), dv = zeros([P, 1, S, D], { device: "webgpu" });
  const free: Tensor[] = [q5, k5, v5, g5, o5];
  chunks.forEach((c, n) => {
    const sel = [[c.p0, c.p1], [c.g0, c.g1]] as [number, number][];
    const p = probs[n];
    const qc = q5.slice(sel), gc = g5.slice(sel), oc = o5.slice(sel);
    const kc = k5.slice([[c.p0, c.p1]]), vc = v5.slice([[c.p0, c.p1]]);
    const pt = p.transpose(-1, -2), vt = vc.transpose(-1, -2);
    const dvc = sum(matmul(pt, gc), 1, true); // (n, 1, S, D)
    const dp = matmul(gc, vt); // (n, g, T, S)
    const di = sum(mul(gc, oc), -1, true); // (n, g, T, 1)
    const ds = mul(p, sub(dp, di));
    const dqc = mul(matmul(ds, kc), r.scale);
    const dst = ds.transpose(-1, -2);
    const dkc = mul(sum(matmul(dst, qc), 1, true), r.scale);
    const qdst = dq.slice(sel);
    copyInto(qdst, dqc);
    const kdst = dk.slice([[c.p0, c.p1]]), vdst = dv.slice([[c.p0, c.p1]]);
    const ksum = add(kdst, dkc), vsum = add(vdst, dvc);
    copyInto(kdst, ksum);
    copyInto(vdst, vsum);
    free.push(qc, gc, oc, kc, vc, pt, vt, dvc, dp, di, ds, dqc, dst, dkc, qdst, kdst, vdst, ksum, vsum);
  });
  const grads = [dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)];
  for (const x of [...free, dq, dk, dv]) x.dispose();
  return grads;
}

// ---------------------------------------------------------------------------------------------------------
// decode

/** Options of {@link attentionDecode}. */
export interface DecodeOptions {
  /** Valid cached keys: one length for every batch, or one per batch (default: the cache length). */
  length?: number | readonly number[];
  /** Score scale; default 1 / sqrt(D). */
  scale?: number;
  /** ALiBi slopes (H): bias -slope * (p - j) with the query at p = length - 1. */
  alibi?: readonly number[] | Float32Array | Float64Array;
  /** Left window: the query at p sees keys p - window ... p. */
  window?: number;
  /** With `window`: keys j < globalTokens are always visible. */
  globalTokens?: number;
}

/**
 * One new query per (batch, head) against a K/V cache: q1 (B, H, 1, D), kCache and vCache
 * (B, Hkv, Smax, D) of which the first `length[b]` keys are valid; the query sits at position
 * length[b] - 1 (its own key is already in the cache), so it sees every valid key (causal is implied).
 * On WebGPU the cached keys are split over the lanes of one workgroup per (batch, head) and merged (no
 * packing: the cache changes every step). Inference only: nothing is recorded for autograd. Returns O
 * (B, H, 1, D) and L (B, H, 1).
 *
 * @example
 * ```ts
 * import { attentionDecode, randn } from "seqlab";
 * const q = randn([2, 4, 1, 16], { seed: 1 }), cache = randn([2, 2, 32, 16], { seed: 2 });
 * const { o } = attentionDecode(q, cache, cache, { length: [10, 32] });
 * console.log(o.shape); // [2, 4, 1, 16]
 * ```
 */
export function attentionDecode(
  q1: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  opts: DecodeOptions = {},
): AttentionResult {
  const op = "attentionDecode";
  if (q1.rank === 4 && q1.shape[2] !== 1) {
    throw new Error(`${op}: q must be (B, H, 1, D) (one new query), got ${fmt(q1.shape)}`);
  }
  const Smax = kCache.rank === 4 ? kCache.shape[2] : 0;
  const B = q1.rank === 4 ? q1.shape[0] : 0;
  const lens = typeof opts.length === "number" || opts.length === undefined
    ? new Array(B).fill(opts.length ?? Smax)
    : [...opts.length];
  if (lens.length !== B || lens.some((l) => !Number.isInteger(l) || l < 0 || l > Smax)) {
    throw new Error(
      `${op}: length must be B = ${B} integers in [0, ${Smax}] (the cache length), got ${opts.length}`,
    );
  }
  const base: AttentionOptions = {
    keyPadding: lens,
    scale: opts.scale,
    alibi: opts.alibi,
    window: opts.window,
    globalTokens: opts.globalTokens,
  };
  const r = resolve(op, q1, kCache, vCache, base, q1.device === "cpu");
  if (q1.device === "cpu") return noGrad(() => decodeOnCpu(q1, kCache, vCache, lens, base));
  checkDeferred(op);
  const { H, D } = r;
  const o = empty(op, [B, H, 1, D], q1.dtype, "webgpu");
  const lse = empty(op, [B, H, 1], "f32", "webgpu");
  const D4 = Math.ceil(D / 4);
  const WG = D4 * 16 * 64 + 512 <= gpu().limits.maxComputeWorkgroupStorageSize ? 64 : 32;
  const stats = makeStats("decode v1", null, [{
    name: "decode v1",
    read: (B * H * D + 2 * lens.reduce((a, l) => a + l, 0) * r.Hkv * D) * itemSize(q1.dtype),
    written: B * H * (D * itemSize(q1.dtype) + 4),
    flops: 4 * D * H * lens.reduce((a, l) => a + l, 0),
  }]);
  if (o.size === 0) return { o, lse, stats };
  const kc = kCache.isContiguous ? kCache : contiguous(kCache);
  const vc = vCache.isContiguous ? vCache : contiguous(vCache);
  const aux = auxTensors(r);
  const variant = variantOf(r);
  try {
    const src = decodeSource(q1.dtype, D4, WG, variant);
    const inputs = [q1, kc, vc, aux.lens, aux.slopes].filter((x): x is Tensor => x !== null);
    gpu().run({
      name: op,
      key: `attention decode v1|${q1.dtype}|${D4}|${WG}|${variantKey(variant)}`,
      source: () => src.code,
      inputs: inputs.map((x) => x.storage.buffer!),
      outputs: [o.storage.buffer!, lse.storage.buffer!],
      uniforms: packUniforms({
        ...baseFields(r),
        qOff: q1.offset,
        qsB: q1.strides[0],
        qsH: q1.strides[1],
        qsD: q1.strides[3],
        nbh: B * H,
        x0: kc.offset,
        x1: vc.offset,
        nD4: D4,
      }),
      workgroups: [Math.min(B * H, MAX_Y), Math.ceil((B * H) / MAX_Y), 1],
    });
  } finally {
    if (kc !== kCache) kc.dispose();
    if (vc !== vCache) vc.dispose();
    aux.dispose();
  }
  return { o, lse, stats };
}

function decodeOnCpu(
  q1: Tensor,
  k: Tensor,
  v: Tensor,
  lens: number[],
  base: AttentionOptions,
): AttentionResult {
  const os: Tensor[] = [], ls: Tensor[] = [];
  let stats: AttentionStats | null = null;
  for (let b = 0; b < lens.length; b++) {
    const qb = q1.slice([[b, b + 1]]), kb = k.slice([[b, b + 1], null, [0, lens[b]]]);
    const vb = v.slice([[b, b + 1], null, [0, lens[b]]]);
    const res = attentionRef(qb, kb, vb, { ...base, keyPadding: undefined });
    stats = res.stats;
    os.push(res.o);
    ls.push(res.lse);
    for (const x of [qb, kb, vb]) x.dispose();
  }
  const so = os.map((x) => x.squeeze(0)), sl = ls.map((x) => x.squeeze(0));
  const o = so.length ? stack(so, 0) : empty("attentionDecode", q1.shape, q1.dtype, "cpu");
  const lse = sl.length ? stack(sl, 0) : empty("attentionDecode", [0, q1.shape[1], 1], q1.dtype, "cpu");
  for (const x of [...os, ...ls, ...so, ...sl]) x.dispose();
  return {
    o,
    lse,
    stats: { ...(stats ?? makeStats("reference", null, [])), impl: "reference (decode on cpu)" },
  };
}

// ---------------------------------------------------------------------------------------------------------
// the dispatcher

/** Options of {@link attention}: the shared options plus an optional implementation choice. */
export interface AttentionChoice extends AttentionOptions {
  /** "auto" (default), or force "flash", "standard", "reference" or "decode". */
  impl?: "auto" | "flash" | "standard" | "reference" | "decode";
}

/**
 * Which implementation {@link attention} would use for these inputs and options: "reference" on the cpu;
 * on WebGPU "decode" for a single query with nothing to differentiate (no block mask or padding mask, and
 * no lengths combined with window or ALiBi, whose positions differ between the two paths), else "flash"
 * (faster than "standard" at every size measured, and without its T x S memory).
 *
 * @example
 * ```ts
 * import { attentionImpl, zeros } from "seqlab";
 * const q = zeros([1, 2, 1, 8]), kv = zeros([1, 2, 50, 8]);
 * console.log(attentionImpl(q, kv, kv)); // "decode" on webgpu, "reference" on cpu
 * ```
 */
export function attentionImpl(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): "reference" | "flash" | "decode" {
  if (q.device === "cpu") return "reference";
  const grad = isGradEnabled() && [q, k, v].some((t) => t.requiresGrad);
  const kp = opts.keyPadding;
  const keepMask = kp !== undefined && !Array.isArray(kp) && (kp as Tensor).rank === 2;
  const lengths = kp !== undefined && !keepMask;
  if (
    q.rank === 4 && q.shape[2] === 1 && !grad && !opts.blockMask && !keepMask &&
    !(lengths && (opts.window !== undefined || opts.alibi !== undefined)) && opts.blockQ === undefined &&
    opts.blockK === undefined && opts.version === undefined
  ) return "decode";
  return "flash";
}

/**
 * Attention with the best implementation for the inputs and options (see {@link attentionImpl}); the same
 * options and result as {@link flashAttention}. `impl` forces one.
 *
 * @example
 * ```ts
 * import { attention, randn } from "seqlab";
 * const q = randn([1, 8, 128, 64], { seed: 1 }), k = randn([1, 2, 128, 64], { seed: 2 });
 * const { o, stats } = attention(q, k, k, { causal: true });
 * console.log(o.shape, stats.impl); // [1, 8, 128, 64] "flash v3" (webgpu) or "reference" (cpu)
 * ```
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionChoice = {}): AttentionResult {
  const { impl = "auto", ...opts } = options;
  const pick = impl === "auto" ? attentionImpl(q, k, v, opts) : impl;
  switch (pick) {
    case "reference": {
      if (q.device !== "cpu") {
        throw new Error(`attention: impl "reference" needs cpu tensors, got ${q.describe()}`);
      }
      return attentionRef(q, k, v, opts);
    }
    case "standard":
      return standardAttention(q, k, v, opts);
    case "decode": {
      if (opts.blockMask) throw new Error(`attention: impl "decode" has no block mask`);
      const kp = opts.keyPadding;
      if (kp !== undefined && !Array.isArray(kp) && !ArrayBuffer.isView(kp) && (kp as Tensor).rank === 2) {
        throw new Error(`attention: impl "decode" takes key lengths, not a (B, S) mask`);
      }
      let length: number[] | undefined;
      if (kp !== undefined) {
        const r = resolve("attention", q, k, v, { keyPadding: kp }, false);
        length = [...r.lengths!];
      }
      return attentionDecode(q, k, v, {
        length,
        scale: opts.scale,
        alibi: opts.alibi,
        window: typeof opts.window === "number" ? opts.window : opts.window?.[0],
        globalTokens: opts.globalTokens,
      });
    }
    case "flash":
      return flashAttention(q, k, v, opts);
    default:
      throw new Error(
        `attention: unknown impl ${
          JSON.stringify(impl)
        }; expected auto, flash, standard, reference or decode`,
      );
  }
}
