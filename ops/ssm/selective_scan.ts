/**
 * The selective scan (S6) op on both backends with a backward registered with autograd: cpu runs the
 * float64 reference; WebGPU runs fwd v1 (sequential) or fwd v2 (chunked parallel scan over textures) and
 * bwd v1 (see `selective_scan_wgsl.ts` for the versions and why each exists).
 * @module
 */

import { gpu, hasWebGPU } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import { keep, type Tensor, tidy } from "../../runtime/tensor.ts";
import { type Binding, type GpuTexture, grid } from "../../runtime/webgpu.ts";
import { noGrad, record } from "../../runtime/autograd.ts";
import { zeros } from "../core/creation.ts";
import { add, cast, contiguous, copyInto } from "../core/elementwise.ts";
import { concat } from "../core/layout.ts";
import { sum } from "../core/reduce.ts";
import { empty, fromArray, Uniforms } from "../core/util.ts";
import {
  checkAHost,
  checkScan,
  positiveAMessage,
  type ScanDims,
  type SelectiveScanOptions,
} from "./scan_check.ts";
import { selectiveScanBackwardRef, selectiveScanRef } from "./selective_scan_ref.ts";
import {
  carryHillisSteeleV2,
  carrySeqV2,
  MAX_LOOP,
  packSeqV2,
  packSeqV3,
  paramStride,
  SCAN_POSITIVE_A,
  SCAN_WG,
  scanChunkV2,
  scanFixupV2,
  scanV1,
  type ScanVariant,
  seqLayout,
  type SeqTexLayout,
  TEX_W,
  V2_WORDS,
  variantKey,
} from "./selective_scan_wgsl.ts";
import {
  scanBackwardV1,
  scanBackwardV2,
  scanBwdReduceV2,
  scanBwdUnpackV2,
} from "./selective_scan_bwd_wgsl.ts";
import { BWD_V3_WG, scanBackwardV3, seqAccess } from "./selective_scan_bwd_v3_wgsl.ts";
import { newSeq, seqVec4, seqWords, toLayout } from "./seq_layout.ts";

export type { SelectiveScanOptions } from "./scan_check.ts";

/** Options of {@link selectiveScan}: the reference's, plus the shader choice. */
export interface SelectiveScanGpuOptions extends SelectiveScanOptions {
  /**
   * WebGPU version: "v1" sequential, "v2" chunked parallel scan, "auto" (default): v2 unless the chunks
   * would be a single one and v1 is cheaper (L < 256) or v2's textures cannot hold the inputs. This and
   * the options below are checked on every backend (cpu refuses what webgpu would).
   */
  version?: "auto" | "v1" | "v2";
  /** v2 chunk length in steps (a multiple of 4; default: from L and B * D, see {@link scanChunkSize}). */
  chunkSize?: number;
  /** v2 carry pass: "sequential" (default, measured faster on lavapipe) or "hillis-steele". */
  carry?: "sequential" | "hillis-steele";
  /**
   * Store the output and the gradients of u, delta and z channels-last: (B, D, L) views of (B, L, D)
   * buffers, whose `.transpose(1, 2)` is contiguous (Mamba's out_proj reads y without a transposing copy).
   * Default false. The inputs may be any strided views either way: v2 reads them through their strides.
   */
  channelsLast?: boolean;
  /**
   * Backward of v2: "v2" one invocation per channel, "v3" four channels of a group per invocation (dB and
   * dC terms summed over the four before they are stored, gradients stored in their final layout, no
   * unpack pass), "auto" (default): v3 where it applies (D, D / G and L divisible by 4, B and C
   * input-dependent, an output gradient), else v2.
   */
  backward?: "auto" | "v2" | "v3";
}

/**
 * The chunk length v2 uses by default: enough chunks that B * D * chunks invocations keep the adapter busy
 * (~1024 on lavapipe's 2 threads x 8 lanes; more chunks only add summary work: the chunk pass covers all
 * but the last chunk), each at least 64 steps, a multiple of 4.
 *
 * @example
 * ```ts
 * import { scanChunkSize } from "seqlab";
 * console.log(scanChunkSize(16384, 512), scanChunkSize(16384, 16)); // 8192 256
 * ```
 */
export function scanChunkSize(L: number, BD: number): number {
  const chunks = Math.max(1, Math.ceil(1024 / BD));
  // a chunk's loop runs T / 4 texel steps: at most MAX_LOOP (lavapipe's loop limit)
  return Math.min(4 * MAX_LOOP, Math.max(64, Math.ceil(L / chunks / 4) * 4));
}

/**
 * FLOPs and bytes of one forward scan (for benchmarks): ~6 flops and one exp (counted as 1) per
 * (b, d, t, n); u, delta, out and input-dependent B, C read or written once.
 *
 * @example
 * ```ts
 * import { scanCost } from "seqlab";
 * console.log(scanCost({ Bn: 1, D: 512, N: 16, L: 16384 }).flops / 1e9); // 0.939524096
 * ```
 */
export function scanCost(
  d: { Bn: number; D: number; N: number; L: number },
): { flops: number; bytes: number } {
  const elems = d.Bn * d.D * d.L;
  return { flops: elems * d.N * 7, bytes: 4 * (3 * elems + 2 * d.Bn * d.N * d.L) };
}

// ---------------------------------------------------------------------------------------------------------
// WebGPU forward

interface Prepared {
  dims: ScanDims;
  v: ScanVariant;
  params: Tensor;
  u: Tensor;
  delta: Tensor;
  z: Tensor | null;
  B: Tensor | null;
  C: Tensor | null;
}

/** Contiguous f32 inputs and the per-channel params row (A, D, deltaBias, shared B and C). */
function prepare(
  op: string,
  dims: ScanDims,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  last: boolean,
  strided = false,
  params: Tensor | null = null,
): Prepared {
  for (const t of [u, delta, A, B, C, o.D, o.z, o.deltaBias]) {
    if (t && t.dtype !== "f32") {
      throw new Error(`${op}: the WebGPU scan computes in f32; got ${t.describe()} (cast it first)`);
    }
  }
  const ctx = gpu();
  ctx.diagnostic(SCAN_POSITIVE_A, (d, n) => positiveAMessage(op, d, n, NaN, A.shape).replace(" = NaN", ""));
  // internal copies: no graph (the op records its own backward)
  return noGrad(() => prepareCopies(dims, u, delta, A, B, C, o, last, strided, params));
}

function prepareCopies(
  dims: ScanDims,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  last: boolean,
  strided: boolean,
  given: Tensor | null,
): Prepared {
  const { D, device } = dims;
  // v2 packs the sequence operands through their strides (pack v3): own handles, no copies
  const own = (t: Tensor) => (strided && seqRows(t) ? t.view(t.shape, t.strides, t.offset) : contiguous(t));
  // the params row of a forward that kept it (a handle: the caller frees it, the owner keeps the storage)
  const params = given ? given.view(given.shape, given.strides, given.offset) : tidy(() => {
    const col = (t: Tensor | null | undefined) =>
      t ? t.reshape([D, 1]) : zeros([D, 1], { dtype: "f32", device });
    const parts = [A, col(o.D), col(o.deltaBias)];
    if (dims.bShared) parts.push(B);
    if (dims.cShared) parts.push(C);
    return concat(parts, 1); // (D, P)
  });
  return {
    dims,
    v: {
      N: dims.N,
      bShared: dims.bShared,
      cShared: dims.cShared,
      hasZ: !!o.z,
      softplus: !!o.deltaSoftplus,
      last,
    },
    params,
    u: own(u),
    delta: own(delta),
    z: o.z ? own(o.z) : null,
    B: dims.bShared ? null : own(B),
    C: dims.cShared ? null : own(C),
  };
}

function forwardV1(p: Prepared, out: Tensor, last: Tensor | null): void {
  const { Bn, D, L, G, N } = p.dims;
  const ctx = gpu();
  const inputs = [p.params, p.u, p.delta, p.B, p.C, p.z].filter((t): t is Tensor => !!t);
  const state = last ?? empty("selectiveScan state", [Bn, D, N], "f32", "webgpu");
  const v = { ...p.v, last: true };
  try {
    // time slices of MAX_LOOP steps, the state carried in `state` (lavapipe's loop limit)
    for (let t0 = 0; t0 < L; t0 += MAX_LOOP) {
      ctx.run({
        name: "selectiveScan",
        key: `v1|${variantKey(v)}`,
        source: () => scanV1(v),
        inputs: inputs.map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!, state.storage.buffer!, ctx.diagnostics],
        uniforms: new Uniforms().u32(
          Bn,
          D,
          L,
          D / G,
          G,
          p.u.offset,
          p.delta.offset,
          p.z?.offset ?? 0,
          p.B?.offset ?? 0,
          p.C?.offset ?? 0,
          t0,
          Math.min(L, t0 + MAX_LOOP),
        ).build(),
        workgroups: grid(Bn * D, SCAN_WG),
      });
    }
  } finally {
    if (!last) state.dispose();
  }
}

/** A sequence operand (B, D, L) or (B, G, N, L) as (outer, inner, L) rows with strides, or null. */
function seqRows(t: Tensor): { outer: number; inner: number; w: number[] } | null {
  const [s0, s1, s2, s3] = t.strides;
  if (t.rank === 3) return { outer: t.shape[0], inner: t.shape[1], w: [t.offset, s0, s1, s2] };
  const [Bn, G, N] = t.shape;
  // (g, n) collapse into one row index when g's stride is N n's (always for G = 1)
  if (t.rank === 4 && (G === 1 || s1 === N * s2)) {
    return { outer: Bn, inner: G * N, w: [t.offset, s0, s2, s3] };
  }
  return null;
}

/** Operands one pack v3 dispatch writes. */
const PACK_OPS = 4;

/**
 * Packs (rows, L) operands into layer ranges of a pooled texture: contiguous ones by copies when aligned,
 * the others (any strides) by pack v3 passes, up to {@link PACK_OPS} operands each. The caller releases
 * the texture once the passes that read it are recorded. `spare` leaves slots free after the operands (the
 * backward's dout); `into` packs into slots `first ...` of a texture packed before.
 */
function packSeq(
  op: string,
  what: string,
  ops: Tensor[],
  rows: number,
  lay: SeqTexLayout,
  o: { spare?: number; into?: { tex: GpuTexture; first: number } } = {},
): GpuTexture {
  const ctx = gpu();
  const tex = o.into?.tex ?? ctx.acquireTexture(
    {
      width: lay.width,
      height: lay.height,
      layers: (ops.length + (o.spare ?? 0)) * lay.rowBlocks * lay.segments,
    },
    `${op} ${what}`,
  );
  // operand k of `ops` goes to slot k0 + k of the texture
  const k0 = o.into?.first ?? 0;
  try {
    const strided: { t: Tensor; k: number }[] = []; // k: the texture slot
    ops.forEach((t, j) => {
      const k = k0 + j;
      if (!t.isContiguous || !seqRows(t)) {
        strided.push({ t, k });
        return;
      }
      if (lay.L % 64 === 0 && t.offset % 4 === 0) {
        // whole rows of 4L bytes (a multiple of 256) straight into the texture, per row block and segment
        for (let rb = 0; rb < lay.rowBlocks; rb++) {
          const r0 = rb * lay.rowsPerBlock, nr = Math.min(lay.rowsPerBlock, rows - r0);
          for (let s = 0; s < lay.segments; s++) {
            const w = Math.min(TEX_W, lay.L4 - s * TEX_W);
            ctx.copyBufferToTexture(
              op,
              {
                buffer: t.storage.buffer!,
                offset: (t.offset + r0 * lay.L + s * TEX_W * 4) * 4,
                bytesPerRow: lay.L * 4,
              },
              { texture: tex, origin: [0, 0, (k * lay.rowBlocks + rb) * lay.segments + s] },
              [w, nr, 1],
            );
          }
        }
        return;
      }
      ctx.run({
        name: op,
        key: "pack v2",
        source: packSeqV2,
        bindings: [{ buffer: t.storage.buffer!, access: "read" }, { texture: tex, access: "write" }],
        uniforms: new Uniforms()
          .u32(rows, lay.L, lay.L4, t.offset, lay.rowsPerBlock, lay.rowBlocks, lay.segments, k)
          .build(),
        workgroups: [Math.ceil(lay.L4 / SCAN_WG), Math.min(rows, 65535), Math.ceil(rows / 65535)],
      });
    });
    for (let i = 0; i < strided.length; i += PACK_OPS) {
      const group = strided.slice(i, i + PACK_OPS);
      const r = group.map(({ t }) => seqRows(t)!);
      const { outer, inner } = r[0];
      const vec4 = r.map((x) =>
        inner % 4 === 0 && x.w[2] === 1 && [x.w[0], x.w[1], x.w[3]].every((v) => v % 4 === 0)
      );
      const I4 = Math.ceil(inner / 4);
      const u = new Uniforms().u32(
        outer,
        inner,
        lay.L,
        lay.L4,
        lay.rowsPerBlock,
        lay.rowBlocks,
        lay.segments,
        I4,
      );
      group.forEach(({ k }, j) => u.u32(...r[j].w, k));
      ctx.run({
        name: op,
        key: `pack v3|${vec4.map((f) => (f ? 4 : 1)).join("")}`,
        source: () => packSeqV3(vec4),
        bindings: [
          ...group.map(({ t }): Binding => ({ buffer: t.storage.buffer!, access: "read" })),
          { texture: tex, access: "write" },
        ],
        uniforms: u.padTo(8 + 5 * group.length).build(),
        workgroups: grid(outer * lay.L4 * I4, SCAN_WG),
      });
    }
  } catch (e) {
    if (!o.into) tex.release();
    throw e;
  }
  return tex;
}

/** The most texture array layers v2 may use: the adapter's, or WebGPU's default (what the device gets). */
function maxLayers(): number {
  return hasWebGPU() ? gpu().limits.maxTextureArrayLayers : 256;
}

/** Why v2's textures cannot hold these inputs, or null when they can. */
function v2Misfit(d: ScanDims): string | null {
  if (d.N > TEX_W) return `its textures hold N <= ${TEX_W}`;
  const layers = maxLayers();
  const x = seqLayout(d.Bn * d.D, d.L, 1), bc = seqLayout(d.Bn * d.G * d.N, d.L, d.N);
  const need = Math.max(3 * x.rowBlocks * x.segments, 2 * bc.rowBlocks * bc.segments);
  return need > layers ? `its textures would need ${need} layers, over the adapter's ${layers}` : null;
}

/**
 * The textures a forward packed, kept for its backward (internal): u, delta, z and a spare slot for dout in
 * `tx`, B and C (input-dependent) in `tbc`. The backward packs only dout; `release()` returns them to the pool.
 */
export interface PackedScan {
  readonly tx: GpuTexture;
  readonly tbc: GpuTexture | null;
  /** Operands in tx before the spare slot (u, delta and z when present). */
  readonly nOps: number;
  /** (B D, L / 4, 4 ceil(N / 4)): the state entering every texel of 4 steps, saved by the fix-up pass. */
  readonly states: Tensor;
  /** The per-channel params row (A, D, deltaBias) the forward built. */
  readonly params: Tensor;
  release(): void;
}

function forwardV2(
  p: Prepared,
  out: Tensor,
  last: Tensor | null,
  chunkSize: number,
  carry: "sequential" | "hillis-steele",
  keepOperands = false,
): PackedScan | null {
  const op = "selectiveScan";
  const { Bn, D, L, G, N } = p.dims;
  const BD = Bn * D;
  const xl = seqLayout(BD, L, 1), bl = seqLayout(Bn * G * N, L, N);
  const T4 = chunkSize / 4, chunks = Math.ceil(xl.L4 / T4);
  const ctx = gpu();
  const textures: GpuTexture[] = [];
  const carryBuf = empty(`${op} carry`, [BD, chunks, N + 1], "f32", "webgpu");
  let packed: PackedScan | null = null;
  try {
    const xOps = [p.u, p.delta, ...(p.z ? [p.z] : [])];
    const tx = packSeq(op, "u, delta, z", xOps, BD, xl, { spare: keepOperands ? 1 : 0 });
    textures.push(tx);
    const bcOps = [p.B, p.C].filter((t): t is Tensor => !!t);
    const tbc = bcOps.length ? packSeq(op, "B, C", bcOps, Bn * G * N, bl) : null;
    if (tbc) textures.push(tbc);
    if (keepOperands) {
      let live = true;
      // kept out of any tidy scope around the forward: they live until release()
      const states = keep(empty(`${op} states`, [BD, xl.L4, 4 * Math.ceil(N / 4)], "f32", "webgpu"));
      const params = keep(p.params.view(p.params.shape, p.params.strides, p.params.offset));
      packed = {
        tx,
        tbc,
        nOps: xOps.length,
        states,
        params,
        release: () => {
          if (live) [tx, tbc].forEach((t) => t?.release());
          if (live) [states, params].forEach((t) => t.dispose());
          live = false;
        },
      };
    }
    const uniforms = new Uniforms().u32(
      BD,
      D,
      L,
      xl.L4,
      T4,
      chunks,
      D / G,
      G,
      xl.rowBlocks,
      bl.rowsPerBlock / N,
      bl.rowBlocks,
      xl.segments,
      out.offset,
      out.strides[0],
      out.strides[1],
      out.strides[2],
    ).padTo(V2_WORDS).build();
    const key = variantKey(p.v);
    const diag: Binding = { buffer: ctx.diagnostics, access: "read_write" };
    const params: Binding = { buffer: p.params.storage.buffer!, access: "read" };
    const read = (t: GpuTexture): Binding => ({ texture: t, access: "read" });
    const groups: [number, number, number] = [Math.ceil(BD / SCAN_WG), chunks, 1];
    if (chunks > 1) {
      const cbuf: Binding = { buffer: carryBuf.storage.buffer!, access: "read_write" };
      ctx.run({
        name: op,
        key: `chunk v2|${key}`,
        source: () => scanChunkV2(p.v),
        bindings: [params, read(tx), ...(p.v.bShared ? [] : [read(tbc!)]), cbuf, diag],
        uniforms,
        workgroups: groups,
      });
      const hs = carry === "hillis-steele";
      ctx.run({
        name: op,
        key: `carry ${hs ? "hs" : "seq"} v2|${key}`,
        source: () => (hs ? carryHillisSteeleV2(p.v) : carrySeqV2(p.v)),
        bindings: [params, cbuf, diag],
        uniforms,
        workgroups: hs ? [BD, Math.ceil(N / 4), 1] : grid(BD, SCAN_WG),
      });
    }
    // y through a texture when the copy back can take whole rows (4L bytes a multiple of 256)
    const texOut = L % 64 === 0 && out.offset % 4 === 0 && out.isContiguous;
    const ty = texOut
      ? ctx.acquireTexture(
        { width: xl.width, height: xl.height, layers: xl.rowBlocks * xl.segments },
        `${op} y`,
      )
      : null;
    if (ty) textures.push(ty);
    const bindings: Binding[] = [params, read(tx)];
    if (tbc) bindings.push(read(tbc));
    bindings.push(
      { buffer: carryBuf.storage.buffer!, access: "read" },
      ty ? { texture: ty, access: "write" } : { buffer: out.storage.buffer!, access: "read_write" },
    );
    if (last) bindings.push({ buffer: last.storage.buffer!, access: "read_write" });
    if (packed) bindings.push({ buffer: packed.states.storage.buffer!, access: "read_write" });
    bindings.push(diag);
    const save = !!packed;
    ctx.run({
      name: op,
      key: `fixup v2|${key}|${texOut}|${save}`,
      source: () => scanFixupV2(p.v, texOut, save),
      bindings,
      uniforms,
      workgroups: groups,
    });
    if (ty) {
      for (let rb = 0; rb < xl.rowBlocks; rb++) {
        const r0 = rb * xl.rowsPerBlock, nr = Math.min(xl.rowsPerBlock, BD - r0);
        for (let sg = 0; sg < xl.segments; sg++) {
          ctx.copyTextureToBuffer(
            op,
            { texture: ty, origin: [0, 0, rb * xl.segments + sg] },
            {
              buffer: out.storage.buffer!,
              offset: (out.offset + r0 * L + sg * TEX_W * 4) * 4,
              bytesPerRow: L * 4,
            },
            [Math.min(TEX_W, xl.L4 - sg * TEX_W), nr, 1],
          );
        }
      }
    }
  } catch (e) {
    packed?.states.dispose();
    packed?.params.dispose();
    packed = null; // the finally releases every texture
    throw e;
  } finally {
    // recorded: the textures may serve the next op of the batch (in-batch reuse is ordered); the packed
    // operands stay with the caller when kept
    textures.forEach((t) => {
      if (!packed || (t !== packed.tx && t !== packed.tbc)) t.release();
    });
    carryBuf.dispose();
  }
  return packed;
}

// ---------------------------------------------------------------------------------------------------------
// WebGPU backward

/** Scratch floats the backward may take per dispatch for input-dependent dB / dC terms (64 MiB each). */
const BWD_PARTIAL_CAP = 16 * 2 ** 20;

/** The scan's gradients (internal). */
export interface ScanGrads {
  du: Tensor;
  ddelta: Tensor;
  dA: Tensor;
  dB: Tensor;
  dC: Tensor;
  dD: Tensor | null;
  dz: Tensor | null;
  dDeltaBias: Tensor | null;
}

/** Channel blocks of the backward: whole groups at a time, or equal parts of one group. */
function channelBlocks(D: number, H: number, perChannel: number): number {
  const cap = Math.max(1, Math.floor(BWD_PARTIAL_CAP / Math.max(perChannel, 1)));
  if (cap >= H) return H * Math.max(1, Math.min(D / H, Math.floor(cap / H)));
  let b = Math.min(cap, H);
  while (H % b !== 0) b--;
  return b;
}

function backwardV1(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  dout: Tensor | null,
  dlast: Tensor | null,
): ScanGrads {
  const dims = checkScan("selectiveScan backward", u, delta, A, B, C, o);
  const p = prepare("selectiveScan backward", dims, u, delta, A, B, C, o, false);
  const { Bn, D, L, N, G } = dims;
  const H = D / G, P = paramStride(p.v);
  const ctx = gpu();
  const go = dout ? contiguous(dout) : null, gl = dlast ? contiguous(dlast) : null;
  const du = empty("selectiveScan du", [Bn, D, L], "f32", "webgpu");
  const ddelta = empty("selectiveScan ddelta", [Bn, D, L], "f32", "webgpu");
  const dz = p.z ? empty("selectiveScan dz", [Bn, D, L], "f32", "webgpu") : null;
  const dP = empty("selectiveScan dparams", [Bn, D, P], "f32", "webgpu");
  // segments of K steps: checkpoints O(L N / K) and one segment's states O(K N) per channel
  const K = Math.max(16, Math.ceil(Math.sqrt(L))), nS = Math.ceil(L / K);
  const varB = !dims.bShared, varC = !dims.cShared;
  const Dblk = varB || varC ? channelBlocks(D, H, Bn * N * L) : D;
  // (Bn, groups, N, L) pieces of input-dependent dB / dC in channel order (the backward runs in a tidy
  // scope, which frees every intermediate)
  const pieces: { B: Tensor[]; C: Tensor[] } = { B: [], C: [] };
  const partial: { B: Tensor | null; C: Tensor | null } = { B: null, C: null };
  const v = { ...p.v, last: false };
  for (let d0 = 0; d0 < D; d0 += Dblk) {
    const nb = Math.min(Dblk, D - d0);
    const scratch = empty("selectiveScan bwd scratch", [Bn * nb, nS + K + 1, N], "f32", "webgpu");
    const dBv = varB ? empty("selectiveScan dB terms", [Bn, nb, N, L], "f32", "webgpu") : null;
    const dCv = varC ? empty("selectiveScan dC terms", [Bn, nb, N, L], "f32", "webgpu") : null;
    const words = (sLo: number, sHi: number) =>
      new Uniforms().u32(Bn, D, L, H, G, d0, nb, K, nS, p.u.offset, p.delta.offset, p.z?.offset ?? 0)
        .u32(p.B?.offset ?? 0, p.C?.offset ?? 0, go?.offset ?? 0, gl?.offset ?? 0, sLo, sHi).padTo(20)
        .build();
    // phase 0, checkpoints, ascending; phase 1, the reverse scan, descending: segment ranges sized so that
    // no invocation loops more than MAX_LOOP times (lavapipe's limit)
    const per0 = Math.max(1, Math.floor(MAX_LOOP / (K + 1))),
      per1 = Math.max(1, Math.floor(MAX_LOOP / (2 * K + 1)));
    const in0 = [p.params, p.u, p.delta, p.B].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!);
    for (let s0 = 0; s0 < nS; s0 += per0) {
      ctx.run({
        name: "selectiveScan backward",
        key: `bwd v1 phase 0|${variantKey(v)}`,
        source: () => scanBackwardV1(v, false, false, 0),
        inputs: in0,
        outputs: [scratch.storage.buffer!],
        uniforms: words(s0, Math.min(nS, s0 + per0)),
        workgroups: grid(Bn * nb, SCAN_WG),
      });
    }
    const inputs = [p.params, p.u, p.delta, p.B, p.C, p.z, go, gl].filter((t): t is Tensor => !!t);
    const outputs = [du, ddelta, dz, dP, dBv, dCv, scratch].filter((t): t is Tensor => !!t);
    for (let s1 = nS; s1 > 0; s1 -= per1) {
      ctx.run({
        name: "selectiveScan backward",
        key: `bwd v1 phase 1|${variantKey(v)}|${!!go}|${!!gl}`,
        source: () => scanBackwardV1(v, !!go, !!gl, 1),
        inputs: inputs.map((t) => t.storage.buffer!),
        outputs: outputs.map((t) => t.storage.buffer!),
        uniforms: words(Math.max(0, s1 - per1), s1),
        workgroups: grid(Bn * nb, SCAN_WG),
      });
    }
    scratch.dispose();
    for (const [which, t] of [["B", dBv], ["C", dCv]] as const) {
      if (!t) continue;
      if (nb >= H) pieces[which].push(sum(t.reshape([Bn, nb / H, H, N, L]), 2));
      else {
        // a block inside one group: summed into the group's partial until the group is complete
        const s = sum(t, 1, true);
        partial[which] = partial[which] ? add(partial[which]!, s) : s;
        if ((d0 + nb) % H === 0) {
          pieces[which].push(partial[which]!);
          partial[which] = null;
        }
      }
      t.dispose();
    }
  }
  for (const t of [p.params, p.u, p.delta, p.B, p.C, p.z, go, gl]) t?.dispose();
  return tidy(() => {
    const dPs = sum(dP, 0); // (D, P)
    dP.dispose();
    const colRange = (a: number, b: number) => contiguous(dPs.slice([null, [a, b]]));
    let off = N + 2;
    const dBs = dims.bShared ? colRange(off, off += N) : null;
    const dCs = dims.cShared ? colRange(off, off + N) : null;
    const grouped = (which: "B" | "C", like: Tensor) => concat(pieces[which], 1).reshape(like.shape);
    return {
      du,
      ddelta,
      dA: colRange(0, N),
      dB: dBs ?? grouped("B", B),
      dC: dCs ?? grouped("C", C),
      dD: o.D ? colRange(N, N + 1).reshape([D]) : null,
      dz,
      dDeltaBias: o.deltaBias ? colRange(N + 1, N + 2).reshape([D]) : null,
    };
  });
}

/** Why bwd v2 cannot take these inputs (then bwd v1 runs), or null when it can. */
function bwdV2Misfit(d: ScanDims, hasZ: boolean, hasOut: boolean): string | null {
  if (d.N > TEX_W) return `its textures hold N <= ${TEX_W}`;
  if (2 * Math.ceil(d.L / 4) > MAX_LOOP) return `L = ${d.L} is over ${2 * MAX_LOOP} (two walks of L / 4)`;
  const terms = d.Bn * d.D * d.L * 4 * Math.ceil(d.N / 4);
  if (terms > BWD_PARTIAL_CAP) return `its per-step terms would take ${terms} floats`;
  const x = seqLayout(d.Bn * d.D, d.L, 1), bc = seqLayout(d.Bn * d.G * d.N, d.L, d.N);
  const ops = 2 + (hasZ ? 1 : 0) + (hasOut ? 1 : 0);
  const need = Math.max(ops * x.rowBlocks * x.segments, 2 * bc.rowBlocks * bc.segments);
  return need > maxLayers() ? `its textures would need ${need} layers` : null;
}

/** The reduce's store words for an input-dependent dB or dC, (B, N, L) or (B, G, N, L): off, sb, sg, sn, st. */
function bcWords(t: Tensor, shared: boolean): number[] {
  if (shared) return [0, 0, 0, 0, 0];
  const st = t.strides;
  return t.rank === 3 ? [t.offset, st[0], 0, st[1], st[2]] : [t.offset, st[0], st[1], st[2], st[3]];
}

/** Whether bwd v3 takes these dims ("auto"), or must ("v3": throws naming why not). */
function useBwdV3(d: ScanDims, hasOut: boolean, bwd: "auto" | "v2" | "v3"): boolean {
  if (bwd === "v2") return false;
  const why = d.D % 4 !== 0 || (d.D / d.G) % 4 !== 0
    ? `D = ${d.D} and D / G = ${d.D / d.G} must be multiples of 4`
    : d.L % 4 !== 0
    ? `L = ${d.L} must be a multiple of 4`
    : d.bShared || d.cShared
    ? "B and C must be input-dependent"
    : !hasOut
    ? "it needs the output's gradient"
    : null;
  if (why && bwd === "v3") throw new Error(`selectiveScan backward: version "v3" cannot run: ${why}`);
  return !why;
}

/**
 * bwd v2 / v3 (see `scanBackwardV2`, `scanBackwardV3`): one scan dispatch over textures, one reduce
 * dispatch (v2: plus an unpack into strided destinations); the gradients come out in their final shapes
 * (no slicing copies).
 */
function backwardV2(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  dout: Tensor | null,
  dlast: Tensor | null,
  channelsLast: boolean,
  dzInto: Tensor | null = null,
  packed: PackedScan | null = null,
  bcInto: { dB: Tensor; dC: Tensor } | null = null,
  bwd: "auto" | "v2" | "v3" = "auto",
): ScanGrads {
  const op = "selectiveScan backward";
  const dims = checkScan(op, u, delta, A, B, C, o);
  const v3 = useBwdV3(dims, !!dout, bwd);
  const p = prepare(op, dims, u, delta, A, B, C, o, false, true, packed?.params ?? null);
  const { Bn, D, L, N, G } = dims;
  const BD = Bn * D, H = D / G, P = paramStride(p.v), K = Math.ceil(N / 4);
  const xl = seqLayout(BD, L, 1), bl = seqLayout(Bn * G * N, L, N);
  const ctx = gpu();
  // dout is packed through its strides (v3 reads a channels-last one from its buffer)
  const go = dout
      ? (seqRows(dout) ? dout.view(dout.shape, dout.strides, dout.offset) : noGrad(() => contiguous(dout)))
      : null,
    gl = dlast ? noGrad(() => contiguous(dlast)) : null;
  const goAccess = v3 && go && seqAccess(go.offset, go.shape, go.strides.slice()) === "d4" ? "d4" : "tex";
  const f = (name: string, shape: number[]) => empty(`${op} ${name}`, shape, "f32", "webgpu");
  const du = newSeq(`${op} du`, [Bn, D, L], channelsLast),
    ddelta = newSeq(`${op} ddelta`, [Bn, D, L], channelsLast);
  // dz straight into the caller's view when given (Mamba's (B, L, 2 ED) in-projection gradient)
  const dz = p.z
    ? (dzInto
      ? dzInto.view(dzInto.shape, dzInto.strides, dzInto.offset)
      : newSeq(`${op} dz`, [Bn, D, L], channelsLast))
    : null;
  // v2 with strided destinations and L % 4 == 0: bwd v2 stores vec4s into contiguous scratch and the unpack
  // pass moves them (a storage access per value in bwd v2 itself cost more than the extra pass); v3 stores
  // 4 channels x 4 steps into any destination itself
  const unpack = !v3 && L % 4 === 0 && (channelsLast || !!dzInto);
  const [ku, kd, kz] = unpack
    ? [du, ddelta, dz].map((t, i) => (t ? f(`${["du", "ddelta", "dz"][i]} scratch`, [Bn, D, L]) : null))
    : [du, ddelta, dz];
  const dP = f("dparams", [BD, P]);
  const xOps = [p.u, p.delta, p.z].filter((t): t is Tensor => !!t);
  const bcOps = [p.B, p.C].filter((t): t is Tensor => !!t);
  // the forward's textures and saved states when they match this call (mambaInner keeps them)
  const reuse = !!packed && !!go && packed.nOps === xOps.length && !!packed.tbc === bcOps.length > 0;
  const scratch = reuse ? packed!.states : f("scratch", [BD, Math.ceil(L / 4), 4 * K]);
  const dA = f("dA", [D, N]), dD = f("dD", [D]), dBias = f("d deltaBias", [D]);
  // input-dependent dB and dC straight into the caller's views when given (the reduce stores through strides)
  const into = (t: Tensor) => t.view(t.shape, t.strides, t.offset);
  const dB = p.v.bShared ? f("dB", [D, N]) : bcInto ? into(bcInto.dB) : f("dB", [...B.shape]);
  const dC = p.v.cShared ? f("dC", [D, N]) : bcInto ? into(bcInto.dC) : f("dC", [...C.shape]);
  const textures: GpuTexture[] = []; // acquired here, released at the end
  try {
    let inputTex: GpuTexture[];
    const goTex = go && goAccess === "tex" ? [go] : [];
    if (reuse) {
      // the forward's textures hold u, delta, z (and B, C): only dout is packed, into the spare slot
      if (goTex.length) {
        packSeq(op, "dout", goTex, BD, xl, { into: { tex: packed!.tx, first: packed!.nOps } });
      }
      inputTex = packed!.tbc ? [packed!.tx, packed!.tbc] : [packed!.tx];
    } else {
      textures.push(
        packSeq(op, goTex.length ? "u, delta, z, dout" : "u, delta, z", [...xOps, ...goTex], BD, xl),
      );
      if (bcOps.length) textures.push(packSeq(op, "B, C", bcOps, Bn * G * N, bl));
      inputTex = [...textures];
    }
    // the terms of input-dependent dB, dC: written by the scan into the texture the reduce reads, one row
    // per channel (v2) or per 4 channels (v3)
    const cpr = v3 ? 4 : 1;
    const nTerms = (p.v.bShared ? 0 : 1) + (p.v.cShared ? 0 : 1);
    const tl = seqLayout(BD / cpr, 4 * L * K, 1);
    const tt = nTerms
      ? ctx.acquireTexture(
        { width: tl.width, height: tl.height, layers: nTerms * tl.rowBlocks * tl.segments },
        `${op} dB, dC terms`,
      )
      : null;
    if (tt) textures.push(tt);
    const sb = (t: Tensor | null, read = false): Binding[] =>
      t ? [{ buffer: t.storage.buffer!, access: read ? "read" : "read_write" }] : [];
    const words = new Uniforms().u32(
      BD,
      D,
      L,
      xl.L4,
      v3 ? BD / 4 : 0,
      0,
      H,
      G,
      xl.rowBlocks,
      bl.rowsPerBlock / N,
    )
      .u32(bl.rowBlocks, xl.segments, gl?.offset ?? 0, tl.rowBlocks, tl.segments, 0)
      .u32(...seqWords(ku!), ...seqWords(kd!), ...(kz ? seqWords(kz) : [0, 0, 0, 0]));
    const common: Binding[] = [
      ...sb(ku),
      ...sb(kd),
      ...sb(kz),
      ...sb(dP),
      ...(tt ? [{ texture: tt, access: "write" } as Binding] : []),
      ...sb(scratch),
      { buffer: ctx.diagnostics, access: "read_write" },
    ];
    const texIn = inputTex.map((t): Binding => ({ texture: t, access: "read" }));
    const params: Binding = { buffer: p.params.storage.buffer!, access: "read" };
    if (v3) {
      const acc = (t: Tensor | null) => (t ? seqAccess(t.offset, t.shape, t.strides.slice()) : "s");
      const w = {
        hasLast: !!gl,
        out: [acc(du), acc(ddelta), acc(dz)] as ["d4" | "t4" | "s", "d4" | "t4" | "s", "d4" | "t4" | "s"],
        dout: goAccess as "d4" | "tex",
        statesGiven: reuse,
      };
      ctx.run({
        name: op,
        key: `bwd v3|${variantKey(p.v)}|${w.hasLast}|${w.out.join(",")}|${w.dout}|${w.statesGiven}`,
        source: () => scanBackwardV3(p.v, w),
        bindings: [params, ...texIn, ...(goAccess === "d4" ? sb(go, true) : []), ...sb(gl, true), ...common],
        uniforms: words.u32(...(goAccess === "d4" ? seqWords(go!) : [0, 0, 0, 0])).build(),
        workgroups: grid(BD / 4, BWD_V3_WG),
      });
    } else {
      const w = { hasOut: !!go, hasLast: !!gl, vec4Out: L % 4 === 0, statesGiven: reuse };
      ctx.run({
        name: op,
        key: `bwd v2|${variantKey(p.v)}|${w.hasOut}|${w.hasLast}|${w.vec4Out}|${w.statesGiven}`,
        source: () => scanBackwardV2(p.v, w),
        bindings: [params, ...texIn, ...sb(gl, true), ...common],
        uniforms: words.build(),
        workgroups: [Math.ceil(BD / SCAN_WG), 1, 1],
      });
    }
    if (unpack) {
      const dst = [du, ddelta, dz].filter((t): t is Tensor => !!t);
      const src = [ku, kd, kz].filter((t): t is Tensor => !!t);
      const vec4 = dst.map(seqVec4), D4 = Math.ceil(D / 4);
      ctx.run({
        name: op,
        key: `bwd v2 unpack|${vec4.map((v) => (v ? 4 : 1)).join("")}`,
        source: () => scanBwdUnpackV2(vec4),
        inputs: src.map((t) => t.storage.buffer!),
        outputs: dst.map((t) => t.storage.buffer!),
        uniforms: new Uniforms().u32(Bn, D, L, L / 4, D4).u32(...dst.flatMap(seqWords)).build(),
        workgroups: grid(Bn * (L / 4) * D4, SCAN_WG),
      });
    }
    const nB = p.v.bShared ? 0 : Bn * G * L * K, nC = p.v.cShared ? 0 : Bn * G * L * K;
    ctx.run({
      name: op,
      key: `bwd v2 reduce|N${N}|${p.v.bShared}|${p.v.cShared}`,
      source: () => scanBwdReduceV2(p.v),
      bindings: [
        ...sb(dP, true),
        ...(tt ? [{ texture: tt, access: "read" } as Binding] : []),
        ...(p.v.bShared ? [] : sb(dB)),
        ...(p.v.cShared ? [] : sb(dC)),
        ...sb(dA),
        ...sb(dD),
        ...sb(dBias),
        ...(p.v.bShared ? sb(dB) : []),
        ...(p.v.cShared ? sb(dC) : []),
      ],
      uniforms: new Uniforms().u32(Bn, D, L, H, G, nB, nC, tl.rowBlocks, tl.segments)
        .u32(...bcWords(dB, p.v.bShared), ...bcWords(dC, p.v.cShared))
        .u32(D / cpr, H / cpr).build(),
      workgroups: grid(nB + nC + D, SCAN_WG),
    });
  } catch (e) {
    for (const t of [du, ddelta, dz, dA, dD, dBias, dB, dC]) t?.dispose();
    throw e;
  } finally {
    textures.forEach((t) => t.release());
    for (const t of [p.params, p.u, p.delta, p.B, p.C, p.z, go, gl, dP, reuse ? null : scratch]) t?.dispose();
    if (unpack) { for (const t of [ku, kd, kz]) t?.dispose(); }
  }
  if (!o.D) dD.dispose();
  if (!o.deltaBias) dBias.dispose();
  return {
    du,
    ddelta,
    dA,
    dB,
    dC,
    dD: o.D ? dD : null,
    dz,
    dDeltaBias: o.deltaBias ? dBias : null,
  };
}

// ---------------------------------------------------------------------------------------------------------
// the op

/** Gradients from the float64 reference, as tensors of the inputs' dtype (cpu). */
function backwardCpu(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  dout: Tensor | null,
  dlast: Tensor | null,
): ScanGrads {
  const r = selectiveScanBackwardRef(u, delta, A, B, C, o, { dout, dlast });
  const t = (x: Float64Array | null, like: Tensor | null | undefined) =>
    x && like ? fromArray(x, like.shape, like.dtype, "cpu") : null;
  return {
    du: t(r.du, u)!,
    ddelta: t(r.ddelta, delta)!,
    dA: t(r.dA, A)!,
    dB: t(r.dB, B)!,
    dC: t(r.dC, C)!,
    dD: t(r.dD, o.D),
    dz: t(r.dz, o.z),
    dDeltaBias: t(r.dDeltaBias, o.deltaBias),
  };
}

/** Records the scan's backward for `out` (dout) or the last state (dlast). */
function recordScan(
  name: string,
  out: Tensor,
  inputs: Tensor[],
  o: SelectiveScanOptions,
  forLast: boolean,
  useV2: boolean,
  channelsLast: boolean,
): Tensor {
  const bwd = (o as SelectiveScanGpuOptions).backward ?? "auto";
  return record(name, out, inputs, inputs, (g, saved) => {
    const [u, delta, A, B, C] = saved;
    let k = 5;
    const so: SelectiveScanOptions = {
      deltaSoftplus: o.deltaSoftplus,
      D: o.D ? saved[k++] : null,
      z: o.z ? saved[k++] : null,
      deltaBias: o.deltaBias ? saved[k++] : null,
    };
    const dout = forLast ? null : g, dlast = forLast ? g : null;
    const v2 = useV2 && !bwdV2Misfit(checkScan(name, u, delta, A, B, C, so), !!so.z, !!dout);
    const r = u.device === "cpu"
      ? backwardCpu(u, delta, A, B, C, so, dout, dlast)
      : v2
      ? backwardV2(u, delta, A, B, C, so, dout, dlast, channelsLast, null, null, null, bwd)
      : backwardV1(u, delta, A, B, C, so, dout, dlast);
    // v2 stores the gradients in the layout asked for; the others are moved there
    const lay = (t: Tensor) => (v2 ? t : toLayout(t, channelsLast));
    const grads: (Tensor | null)[] = [lay(r.du), lay(r.ddelta), r.dA, r.dB, r.dC];
    if (o.D) grads.push(r.dD);
    if (o.z) grads.push(lay(r.dz!));
    if (o.deltaBias) grads.push(r.dDeltaBias);
    return grads;
  });
}

/**
 * The scan's gradients for the output gradient `dout` without a recorded node (for fused blocks that record
 * their own): bwd v2 where it fits (du, ddelta and dz stored channels-last when asked, dz straight into
 * `dzInto`, a (B, D, L) view, when given), else bwd v1 or the cpu reference with the results moved there.
 * `packed`: the forward's textures from {@link scanPacked}, reused (the caller releases them).
 * Internal: not exported from the package.
 */
export function scanGrads(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
  dout: Tensor,
  opts: {
    channelsLast: boolean;
    dzInto?: Tensor | null;
    packed?: PackedScan | null;
    bcInto?: { dB: Tensor; dC: Tensor } | null;
    /** The backward version (see {@link SelectiveScanGpuOptions.backward}). */
    backward?: "auto" | "v2" | "v3";
  },
): ScanGrads {
  const op = "selectiveScan backward";
  const dims = checkScan(op, u, delta, A, B, C, o);
  if (dims.device !== "cpu" && !bwdV2Misfit(dims, !!o.z, true)) {
    const dzInto = o.z ? opts.dzInto ?? null : null;
    const bcInto = !dims.bShared && !dims.cShared ? opts.bcInto ?? null : null;
    return backwardV2(
      u,
      delta,
      A,
      B,
      C,
      o,
      dout,
      null,
      opts.channelsLast,
      dzInto,
      opts.packed ?? null,
      bcInto,
      opts.backward ?? "auto",
    );
  }
  const r = dims.device === "cpu"
    ? backwardCpu(u, delta, A, B, C, o, dout, null)
    : backwardV1(u, delta, A, B, C, o, dout, null);
  const lay = (t: Tensor) => toLayout(t, opts.channelsLast);
  let dz = r.dz ? lay(r.dz) : null;
  if (dz && opts.dzInto) {
    noGrad(() => copyInto(opts.dzInto!, dz!));
    dz.dispose();
    dz = opts.dzInto.view(opts.dzInto.shape, opts.dzInto.strides, opts.dzInto.offset);
  }
  return { ...r, du: lay(r.du), ddelta: lay(r.ddelta), dz };
}

/**
 * Checks the version options (the same on every backend) and picks the WebGPU version: "v2" when asked,
 * or for "auto" from L = 256 on when its textures hold the inputs.
 */
function scanPlan(
  op: string,
  dims: ScanDims,
  u: Tensor,
  o: SelectiveScanGpuOptions,
): { useV2: boolean; chunkSize: number; carry: "sequential" | "hillis-steele" } {
  const version = o.version ?? "auto";
  if (!["auto", "v1", "v2"].includes(version)) {
    throw new Error(`${op}: version must be "auto", "v1" or "v2", got ${JSON.stringify(version)}`);
  }
  const backward = o.backward ?? "auto";
  if (!["auto", "v2", "v3"].includes(backward)) {
    throw new Error(`${op}: backward must be "auto", "v2" or "v3", got ${JSON.stringify(backward)}`);
  }
  const carry = o.carry ?? "sequential";
  if (carry !== "sequential" && carry !== "hillis-steele") {
    throw new Error(`${op}: carry must be "sequential" or "hillis-steele", got ${JSON.stringify(carry)}`);
  }
  const chunkSize = o.chunkSize ?? scanChunkSize(dims.L, dims.Bn * dims.D);
  if (!Number.isInteger(chunkSize) || chunkSize < 4 || chunkSize % 4 !== 0) {
    throw new Error(`${op}: chunkSize must be a positive multiple of 4, got ${chunkSize}`);
  }
  const chunks = Math.ceil(dims.L / chunkSize);
  if (chunkSize > 4 * MAX_LOOP || chunks > MAX_LOOP) {
    throw new Error(
      `${op}: chunkSize ${chunkSize} cuts L = ${dims.L} into ${chunks} chunks; a chunk may be at most ` +
        `${4 * MAX_LOOP} steps and there may be at most ${MAX_LOOP} chunks (lavapipe's loop limit)`,
    );
  }
  const misfit = v2Misfit(dims);
  if (version === "v2" && misfit) {
    throw new Error(
      `${op}: version "v2" cannot take u ${fmt(u.shape)} with N = ${dims.N}: ${misfit}; use "v1" or "auto"`,
    );
  }
  return { useV2: version === "v2" || (version === "auto" && !misfit && dims.L >= 256), chunkSize, carry };
}

/**
 * The selective scan (S6) with `selectiveScanRef`'s signature and shapes: u, delta (B, D, L); A (D, N)
 * non-positive; B and C shared (D, N), input-dependent (B, N, L) or grouped (B, G, N, L); options D (D),
 * z (B, D, L), deltaBias (D), deltaSoftplus, returnLastState (then `[out, lastState]` with lastState
 * (B, D, N)). Differentiable in every tensor input (a second node carries the last state's gradient).
 *
 * On cpu it is the float64 reference (rounded to the inputs' dtype). On WebGPU (f32) `version` picks
 * fwd v1 (sequential, one invocation per (b, d)) or v2 (chunked parallel scan reading textures);
 * "auto" takes v2 from L = 256 on. A positive A raises a shader diagnostic, reported as an error at the
 * next readback.
 *
 * @example
 * ```ts
 * import { rand, randn, selectiveScan, tensor } from "seqlab";
 * const [Bn, D, L, N] = [1, 4, 16, 8];
 * const u = randn([Bn, D, L], { seed: 1 }), delta = rand([Bn, D, L], { seed: 2, low: 0.01, high: 0.1 });
 * const A = rand([D, N], { seed: 3, low: -2, high: -0.5 });
 * const B = randn([Bn, N, L], { seed: 4 }), C = randn([Bn, N, L], { seed: 5 });
 * const [y, last] = selectiveScan(u, delta, A, B, C, { returnLastState: true });
 * console.log(y.shape, last.shape); // [1, 4, 16] [1, 4, 8]
 * ```
 */
export function selectiveScan(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanGpuOptions & { returnLastState: true },
): [Tensor, Tensor];
/** The selective scan returning only the output (see the overload above). */
export function selectiveScan(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts?: SelectiveScanGpuOptions,
): Tensor;
export function selectiveScan(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanGpuOptions = {},
): Tensor | [Tensor, Tensor] {
  const op = "selectiveScan";
  const dims = checkScan(op, u, delta, A, B, C, opts);
  const wantLast = !!opts.returnLastState;
  const inputs = [u, delta, A, B, C, opts.D, opts.z, opts.deltaBias].filter((t): t is Tensor => !!t);
  // options are checked on every backend, before the cpu branch: what webgpu refuses, cpu refuses too
  const { useV2, chunkSize, carry } = scanPlan(op, dims, u, opts);
  let out: Tensor, last: Tensor | null = null;
  if (dims.device === "cpu") {
    checkAHost(op, A);
    const r = selectiveScanRef(u, delta, A, B, C, { ...opts, returnLastState: true });
    out = toLayout(cast(r[0], u.dtype), !!opts.channelsLast);
    last = wantLast ? cast(r[1], u.dtype) : null;
    r[0].dispose();
    r[1].dispose();
  } else {
    const p = prepare(op, dims, u, delta, A, B, C, opts, wantLast, useV2);
    try {
      // v2 stores y through its strides; v1 writes contiguous, moved into the layout after
      out = useV2
        ? newSeq(op, [dims.Bn, dims.D, dims.L], !!opts.channelsLast)
        : empty(op, [dims.Bn, dims.D, dims.L], "f32", "webgpu");
      try {
        last = wantLast ? empty(`${op} last state`, [dims.Bn, dims.D, dims.N], "f32", "webgpu") : null;
        if (useV2) forwardV2(p, out, last, chunkSize, carry);
        else {
          forwardV1(p, out, last);
          out = toLayout(out, !!opts.channelsLast);
        }
      } catch (e) {
        out.dispose();
        last?.dispose();
        throw e;
      }
    } finally {
      for (const t of [p.params, p.u, p.delta, p.z, p.B, p.C]) t?.dispose();
    }
  }
  const cl = !!opts.channelsLast;
  out = recordScan(op, out, inputs, opts, false, useV2, cl);
  if (!wantLast) return out;
  return [out, recordScan(`${op} last state`, last!, inputs, opts, true, useV2, cl)];
}

/**
 * The scan's forward for a fused block that records its own backward (internal; no graph): what
 * `selectiveScan` computes, and when version 2 runs both the forward and the backward, the packed operand
 * textures kept for {@link scanGrads} (`packed`; null otherwise). The caller releases `packed`.
 */
export function scanPacked(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanGpuOptions,
): { out: Tensor; packed: PackedScan | null } {
  const op = "selectiveScan";
  const dims = checkScan(op, u, delta, A, B, C, opts);
  const { useV2, chunkSize, carry } = scanPlan(op, dims, u, opts);
  if (dims.device === "cpu" || !useV2 || opts.returnLastState || bwdV2Misfit(dims, !!opts.z, true)) {
    const out = noGrad(() => selectiveScan(u, delta, A, B, C, { ...opts, returnLastState: false }));
    return { out, packed: null };
  }
  const p = prepare(op, dims, u, delta, A, B, C, opts, false, true);
  try {
    const out = newSeq(op, [dims.Bn, dims.D, dims.L], !!opts.channelsLast);
    try {
      return { out, packed: forwardV2(p, out, null, chunkSize, carry, true) };
    } catch (e) {
      out.dispose();
      throw e;
    }
  } finally {
    for (const t of [p.params, p.u, p.delta, p.z, p.B, p.C]) t?.dispose();
  }
}
