/**
 * WGSL selective scan (S6). Every version computes, per (batch b, channel d), the recurrence
 * h_t = exp(delta'_t A) h_t-1 + delta'_t B_t u_t, y_t = <h_t, C_t> + D u_t, out = y * silu(z) of
 * `selectiveScanRef`, in f32. The state h (N values) lives in registers as ceil(N/4) named vec4s with
 * every loop over N unrolled: a private array indexed in a loop is kept in memory by lavapipe.
 *
 * Versions (numbers are never reused):
 * - fwd v1 sequential: one invocation per (b, d) walks t = 0 .. L-1, reading u, delta, z, B and C from
 *   storage buffers. The baseline. On lavapipe every storage-buffer load is a per-lane loop with a bounds
 *   check (~7 ns per lane and component), so with N = 16 the 2N + 2 loads per step, not the N
 *   exponentials, are ~85% of its time (measured: 600 ms at B = 1, D = 512, L = 4096; 100 ms with B and C
 *   replaced by constants). Runs in slices of at most MAX_LOOP steps per dispatch, the state carried in a
 *   buffer: lavapipe stops an invocation's loops after 65535 iterations in total.
 * - fwd v2 parallel (chunked scan): time is cut into chunks of T steps and three passes run over
 *   (b, d, chunk) invocations: (1) `scanChunkV2` scans each chunk but the last from h = 0 and stores its
 *   end state X_c and the sum S_c of delta' (the chunk's product of dA is exp(A S_c), so it is not stored);
 *   (2) a carry pass combines the chunk summaries under (a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2) into each
 *   chunk's incoming state: `carrySeqV2` folds them in order per (b, d), `carryHillisSteeleV2` runs a
 *   Hillis-Steele scan over 64 chunk groups in workgroup memory; (3) `scanFixupV2` rescans every chunk
 *   from its incoming state, writing y and, for the last chunk, the last state. Inputs are read from
 *   rgba32float textures holding 4 consecutive time steps per texel (a texel fetch is a vector gather
 *   on lavapipe, ~0.34 ns per lane and component), packed once by copyBufferToTexture or `packSeqV2`;
 *   y leaves through a texture too when L is a multiple of 64. No barriers except in the Hillis-Steele
 *   carry: they are costly on lavapipe (measured: that carry makes the scan 1.5x slower than the
 *   sequential fold at L = 4K, 16 chunks). Measured against v1 at B = 1, D = 512, N = 16 (bench/ssm.ts):
 *   4.9x to 11x over L = 1K .. 64K depending on the machine's load, ~6x at 16K; the passes are bound by
 *   the exponentials and FMAs. The chunking itself costs (2 - 1 / chunks) passes: with D = 512 the
 *   adapter's 16 lanes are busy without it and one chunk is ~1.5x faster than two; with D = 16 it is
 *   what lets 16 channels use the adapter (v2 4x v1 there).
 * - pack v3 strided: v2's inputs (and bwd v2's) packed into the textures straight from strided views, 4
 *   channels x 4 steps per invocation (vec4 loads when channels are contiguous), so Mamba's channels-last
 *   u, delta, z, B and C need no transposing copies; fix-up and bwd v2 store y, du, ddelta and dz through
 *   their strides (the `channelsLast` option).
 * - bwd v1 sequential: one invocation per (b, d): a forward sweep storing the state at segment starts
 *   (every K = sqrt(L) steps), then segments in reverse, each recomputed from its checkpoint into a
 *   scratch buffer and walked backwards with the state adjoint g_t = C_t dy_t + dA_t+1 g_t+1 in
 *   registers. Memory is O(L N / K + K N) per channel instead of O(L N). Per-(b, d) partial sums of dA,
 *   dD, d deltaBias (and of dB, dC when shared) and per-(b, d, n, t) terms of input-dependent dB, dC are
 *   reduced by core ops. Storage buffers throughout: with input-dependent B and C its 4N loads and 2N
 *   stores per step make it ~3x the shared-B/C backward (measured 232 vs 68 ms at B 8, D 128, L 256);
 *   reading B, C through textures as v2 does is the next step.
 * - bwd v2 (`selective_scan_bwd_wgsl.ts`): one invocation per (b, d) over v2's textures, the state
 *   entering every texel from the forward's fix-up (or its own phase 0), per-step dB / dC terms into a
 *   texture summed over each group's channels by a reduce pass; strided destinations through an unpack.
 * - bwd v3 (`selective_scan_bwd_v3_wgsl.ts`): bwd v2 with 4 channels of one group per invocation: the dB
 *   / dC terms summed over the four in registers before they are stored, du, ddelta, dz stored as vec4s
 *   along the destination's unit-stride axis (no unpack), a channels-last dout read from its buffer (no
 *   pack). MambaLM's training step (2 layers, B 8, L 256, ED 128, N 16): the scan's backward 42 -> 25 ms
 *   of device time (`deno task bench profile detail`).
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** The diagnostic code a scan raises for a positive entry of A. */
export const SCAN_POSITIVE_A = 61;

/** Invocations per workgroup of the scan passes. */
export const SCAN_WG = 64;

/**
 * Loop iterations one invocation may run. lavapipe (gallivm) stops a shader invocation's loops after
 * 65535 iterations in total, a safety limit shared by all its loops (measured: `for` to 70000 runs 65535
 * times; 2 x 40000 nested runs 65533 inner iterations). Sequential work longer than this is split over
 * dispatches that carry their state in a buffer; chunk lengths are capped by it.
 */
export const MAX_LOOP = 32768;

/** Texture geometry of v2: 4 time steps per texel, at most TEX_W texels per row, TEX_ROWS rows per layer. */
export const TEX_W = 8192;
export const TEX_ROWS = 8192;

const COMP = ["x", "y", "z", "w"];

/** Variant flags shared by the forward versions (each is part of the pipeline key). */
export interface ScanVariant {
  /** State size (unrolled into the shader). */
  N: number;
  bShared: boolean;
  cShared: boolean;
  hasZ: boolean;
  softplus: boolean;
  /** Whether the last state is written. */
  last: boolean;
}

/** The pipeline-key part of a variant. */
export function variantKey(v: ScanVariant): string {
  return `N${v.N}|${v.bShared ? "Bs" : "Bv"}|${v.cShared ? "Cs" : "Cv"}|${v.hasZ ? "z" : ""}|` +
    `${v.softplus ? "sp" : ""}|${v.last ? "last" : ""}`;
}

/** Per-channel parameter row of the `params` buffer: A (N), D, deltaBias, then B (N) and C (N) if shared. */
export function paramStride(v: Pick<ScanVariant, "N" | "bShared" | "cShared">): number {
  return v.N + 2 + (v.bShared ? v.N : 0) + (v.cShared ? v.N : 0);
}

const ks = (N: number) => [...Array(Math.ceil(N / 4)).keys()];

/** vec4 k of a per-channel row of N values at params[base + off ...] (zeros past N). */
export function paramVec(N: number, off: number, k: number): string {
  const c = [0, 1, 2, 3].map((i) => (4 * k + i < N ? `P[pb + ${off + 4 * k + i}u]` : "0.0"));
  return `vec4<f32>(${c.join(", ")})`;
}

/** Loads A, D, deltaBias (and shared B, C) of channel d, flags a positive A, zeroes the state. */
function channelPrelude(v: ScanVariant, zeroState = true): string {
  const S = paramStride(v);
  const lines = [`let pb = d * ${S}u;`];
  for (const k of ks(v.N)) {
    lines.push(`let a${k} = ${paramVec(v.N, 0, k)};`);
    lines.push(`let l2a${k} = a${k} * 1.4426950408889634; // exp(x a) = exp2(x l2a): one multiply less`);
    lines.push(`if (any(a${k} > vec4<f32>(0.0))) { flagA(d, ${4 * k}u, a${k}); }`);
    if (zeroState) lines.push(`var h${k} = vec4<f32>(0.0);`);
    if (v.bShared) lines.push(`let bs${k} = ${paramVec(v.N, v.N + 2, k)};`);
    if (v.cShared) lines.push(`let cs${k} = ${paramVec(v.N, v.N + 2 + (v.bShared ? v.N : 0), k)};`);
  }
  lines.push(`let Dskip = P[pb + ${v.N}u]; let bias = P[pb + ${v.N + 1}u];`);
  return lines.join("\n  ");
}

/** Shared WGSL helpers: softplus with PyTorch's threshold, silu, the positive-A diagnostic. */
export function helpers(): string {
  return `
fn softplus(x: f32) -> f32 {
  if (x > 20.0) { return x; }
  let e = exp(x);
  let w = 1.0 + e;
  if (w == 1.0) { return e; }
  return log(w) * e / (w - 1.0); // log1p(e), accurate for small e
}
fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
fn flagA(d: u32, n0: u32, a: vec4<f32>) {
  var n = n0;
  if (a.x <= 0.0) { n = n + 1u; if (a.y <= 0.0) { n = n + 1u; if (a.z <= 0.0) { n = n + 1u; } } }
  atomicStore(&diag[1], d);
  atomicStore(&diag[2], n);
  atomicStore(&diag[0], ${SCAN_POSITIVE_A}u);
}`;
}

/** Declarations of `P` (params, binding 1) and the diagnostics buffer at `diagBinding`. */
export function paramDecl(diagBinding: number): string {
  return `@group(0) @binding(1) var<storage, read> P: array<f32>;
@group(0) @binding(${diagBinding}) var<storage, read_write> diag: array<atomic<u32>, 4>;`;
}

/**
 * fwd v1. Uniforms: [Bn, D, L, H (= D / G), G, uOff, dOff, zOff, bOff, cOff, t0, t1]: one dispatch runs
 * steps t0 .. t1 - 1 (see {@link MAX_LOOP}), starting from the state in `last` when t0 > 0. Bindings:
 * 1 params, 2 u, 3 delta, 4 B (unless shared), 5 C (unless shared), 6 z (if any), then out, last (the
 * state, always written), diag. One invocation per (b, d), flat.
 */
export function scanV1(v: ScanVariant): string {
  const { N } = v;
  let b = 2;
  const decl: string[] = [];
  const bind = (name: string, write = false) =>
    decl.push(
      `@group(0) @binding(${b++}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<f32>;`,
    );
  bind("U_");
  bind("DL");
  if (!v.bShared) bind("BM");
  if (!v.cShared) bind("CM");
  if (v.hasZ) bind("Z");
  bind("OUT", true);
  bind("LAST", true); // the state between time slices, and the last state
  const diagBinding = b;
  const step = ks(N).map((k) => {
    const bv = v.bShared
      ? `bs${k}`
      : `vec4<f32>(${
        [0, 1, 2, 3].map((i) => (4 * k + i < N ? `BM[bb + ${4 * k + i}u * L + t]` : "0.0")).join(", ")
      })`;
    const cv = v.cShared
      ? `cs${k}`
      : `vec4<f32>(${
        [0, 1, 2, 3].map((i) => (4 * k + i < N ? `CM[cb + ${4 * k + i}u * L + t]` : "0.0")).join(", ")
      })`;
    return `h${k} = exp(dt * a${k}) * h${k} + du * ${bv};
    y += dot(h${k}, ${cv});`;
  });
  const lastStore = ks(N).flatMap((k) =>
    [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) =>
      `LAST[gid * ${N}u + ${4 * k + i}u] = h${k}.${COMP[i]};`
    )
  );
  const resume = ks(N).map((k) =>
    `h${k} = vec4<f32>(${
      [0, 1, 2, 3].map((i) => (4 * k + i < N ? `LAST[gid * ${N}u + ${4 * k + i}u]` : "0.0")).join(", ")
    });`
  );
  return `// selective scan fwd v1 sequential
${uniformDecl(12)}
${paramDecl(diagBinding)}
${decl.join("\n")}
${helpers()}
${flatId(SCAN_WG)}
  let Bn = U(0u); let D = U(1u); let L = U(2u);
  if (gid >= Bn * D) { return; }
  let b = gid / D; let d = gid - b * D;
  let g = d / U(3u);
  ${channelPrelude(v)}
  let row = gid * L;
  let bb = U(8u) + (b * U(4u) + g) * ${N}u * L;
  let cb = U(9u) + (b * U(4u) + g) * ${N}u * L;
  let t0 = U(10u);
  if (t0 > 0u) {
    ${resume.join("\n    ")}
  }
  for (var t = t0; t < U(11u); t++) {
    var dt = DL[U(6u) + row + t] + bias;
    ${v.softplus ? "dt = softplus(dt);" : ""}
    let uu = U_[U(5u) + row + t];
    let du = dt * uu;
    var y = 0.0;
    ${step.join("\n    ")}
    y += Dskip * uu;
    ${v.hasZ ? "y *= silu(Z[U(7u) + row + t]);" : ""}
    OUT[row + t] = y;
  }
  ${lastStore.join("\n  ")}
}`;
}

// ---------------------------------------------------------------------------------------------------------
// v2: textures

/**
 * Texture layout of v2 for a (rows, L) sequence operand: texel (x, y, layer) holds t = 4 t4 .. 4 t4 + 3
 * of one row, with x = t4 mod TEX_W, segment s = t4 / TEX_W, y = the row within its row block, and
 * layer = (operand * rowBlocks + rowBlock) * segments + s. Rows are blocked `rowsPerBlock` per layer
 * (B and C: whole (b, g) groups of N rows, so a group never straddles layers).
 */
export interface SeqTexLayout {
  L: number;
  /** Texels per row: ceil(L / 4). */
  L4: number;
  segments: number;
  rowsPerBlock: number;
  rowBlocks: number;
  /** Texture width (texels) and height (rows). */
  width: number;
  height: number;
}

/** The layout for `rows` rows of length L, blocked `unit` rows at a time (N for B and C, else 1). */
export function seqLayout(rows: number, L: number, unit: number): SeqTexLayout {
  const L4 = Math.ceil(L / 4);
  const rowsPerBlock = Math.floor(TEX_ROWS / unit) * unit;
  return {
    L,
    L4,
    segments: Math.ceil(L4 / TEX_W),
    rowsPerBlock,
    rowBlocks: Math.ceil(rows / rowsPerBlock),
    width: Math.min(TEX_W, L4),
    height: Math.min(rowsPerBlock, rows),
  };
}

/**
 * Pack pass: writes rows of a contiguous f32 (rows, L) operand at element offset `off` into layer
 * range `operand` of a texture in {@link SeqTexLayout}, zero past L. For L not a multiple of 64 or
 * offsets not a multiple of 4, where copyBufferToTexture cannot be used. Uniforms: [rows, L, L4, off,
 * rowsPerBlock, rowBlocks, segments, operand]. Grid: x = t4 (workgroups of 64), y = row mod 65535 chunk,
 * z = row chunk.
 */
export function packSeqV2(): string {
  return `// selective scan pack v2
${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var T: texture_storage_2d_array<rgba32float, write>;
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let rows = U(0u); let L = U(1u); let L4 = U(2u);
  let row = g.z * 65535u + g.y; let t4 = g.x;
  if (row >= rows || t4 >= L4) { return; }
  let o = U(3u) + row * L + 4u * t4;
  var v = vec4<f32>(0.0);
  let t = 4u * t4;
  v.x = X[o];
  if (t + 1u < L) { v.y = X[o + 1u]; }
  if (t + 2u < L) { v.z = X[o + 2u]; }
  if (t + 3u < L) { v.w = X[o + 3u]; }
  let rb = row / U(4u);
  let layer = (U(7u) * U(5u) + rb) * U(6u) + t4 / ${TEX_W}u;
  textureStore(T, vec2<u32>(t4 % ${TEX_W}u, row - rb * U(4u)), layer, v);
}`;
}

/** v2 pass uniforms: the words shared by the chunk and fix-up passes. */
export const V2_WORDS = 16;

/**
 * The chunk loop of v2 (shared by the chunk and fix-up passes). Uniform words: 0 Bn*D, 1 D, 2 L, 3 L4,
 * 4 T4 (texels per chunk), 5 chunks, 6 H (= D / G), 7 G, 8 X rowBlocks, 9 BC blocks per layer (groups),
 * 10 BC layer blocks, 11 segments, 12 outOff, 13 .. 15 out's strides (sb, sd, st).
 */
function v2Body(v: ScanVariant, fixup: boolean, texOut = false): string {
  const { N } = v;
  const K = ks(N);
  const lines: string[] = [];
  // texture layers from words read once in v2Prelude (the uniform block is a storage binding on lavapipe:
  // a U() in the step loop is a load per lane and step)
  const xl = (op: number) => `(${op}u * pU8 + xrb) * pU11 + seg`;
  const bl = (op: number) => `(${op}u * pU10 + blb) * pU11 + seg`;
  lines.push(`let x = t4 % ${TEX_W}u; let seg = t4 / ${TEX_W}u;`);
  lines.push(`let u4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(0)});`);
  lines.push(`let d4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(1)});`);
  if (fixup && v.hasZ) lines.push(`let z4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(2)});`);
  // delta' for the 4 steps of the texel (steps past L, only in the last texel, get delta' = 0: dA = 1 and
  // dBu = 0 leave h unchanged)
  lines.push("var dt4 = d4 + vec4<f32>(bias);");
  if (v.softplus) {
    lines.push("dt4 = vec4<f32>(softplus(dt4.x), softplus(dt4.y), softplus(dt4.z), softplus(dt4.w));");
  }
  if (fixup) {
    lines.push(
      "dt4 = select(dt4, vec4<f32>(0.0), vec4<u32>(4u * t4) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(L));",
    );
  } else lines.push("S += dt4.x + dt4.y + dt4.z + dt4.w;");
  lines.push("let du4 = dt4 * u4;");
  if (fixup) lines.push("var y4 = Dskip * u4;");
  // states outer, steps inner: one group of 4 states' B and C texels is live at a time (measured as fast
  // as loading all 2N texels first; the pass is bound by the exponentials and FMAs at ~2 cycles per
  // (b, d, t, n) and lane)
  for (const k of K) {
    lines.push(`{ // states ${4 * k} .. ${4 * k + 3}`);
    const ns = [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => 4 * k + i);
    if (!v.bShared) {
      for (const n of ns) lines.push(`  let B${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${bl(0)});`);
    }
    if (fixup && !v.cShared) {
      for (const n of ns) {
        lines.push(`  let C${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${bl(v.bShared ? 0 : 1)});`);
      }
    }
    for (let tt = 0; tt < 4; tt++) {
      const c = COMP[tt];
      const bv = v.bShared
        ? `bs${k}`
        : `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? `B${4 * k + i}.${c}` : "0.0")).join(", ")})`;
      lines.push(`  h${k} = exp2(dt4.${c} * l2a${k}) * h${k} + du4.${c} * ${bv};`);
      if (fixup) {
        const cv = v.cShared
          ? `cs${k}`
          : `vec4<f32>(${
            [0, 1, 2, 3].map((i) => (4 * k + i < N ? `C${4 * k + i}.${c}` : "0.0")).join(", ")
          })`;
        lines.push(`  y4.${c} += dot(h${k}, ${cv});`);
      }
    }
    lines.push("}");
  }
  if (fixup && v.hasZ) lines.push("y4 = y4 * vec4<f32>(silu(z4.x), silu(z4.y), silu(z4.z), silu(z4.w));");
  if (fixup && texOut) {
    lines.push(`textureStore(TY, vec2<u32>(x, xy), xrb * pU11 + seg, y4);`);
  } else if (fixup) {
    // y through its strides (words 13 .. 15: sb, sd, st; channels-last for Mamba's out_proj)
    lines.push(`let st = pU15; let o = pU12 + b * pU13 + d * pU14 + 4u * t4 * st;
OUT[o] = y4.x;
if (4u * t4 + 1u < L) { OUT[o + st] = y4.y; }
if (4u * t4 + 2u < L) { OUT[o + 2u * st] = y4.z; }
if (4u * t4 + 3u < L) { OUT[o + 3u * st] = y4.w; }`);
  }
  return lines.join("\n    ");
}

/** Texture and parameter bindings of the v2 scan passes; returns the declarations and the next binding. */
function v2Decl(needBC: boolean): [string, number] {
  const decl = [`@group(0) @binding(2) var TX: texture_storage_2d_array<rgba32float, read>;`];
  let b = 3;
  // declared only where read: a binding the shader never uses is left out of its "auto" layout
  if (needBC) {
    decl.push(`@group(0) @binding(${b++}) var TBC: texture_storage_2d_array<rgba32float, read>;`);
  }
  return [decl.join("\n"), b];
}

/** Invocation prelude of v2 passes: (bd = b * D + d) from x, chunk c from workgroup y. */
export function v2Prelude(v: ScanVariant): string {
  return `let bd = wid.x * ${SCAN_WG}u + lid.x; let c = wid.y;
  if (bd >= U(0u)) { return; }
  let D = U(1u); let L = U(2u); let L4 = U(3u); let T4 = U(4u);
  let b = bd / D; let d = bd - b * D;
  let xrb = bd / ${TEX_ROWS}u; let xy = bd % ${TEX_ROWS}u;
  let bg = b * U(7u) + d / U(6u);
  let blb = bg / U(9u); let by = (bg - blb * U(9u)) * ${v.N}u;
  let pU8 = U(8u); let pU10 = U(10u); let pU11 = U(11u);
  let pU12 = U(12u); let pU13 = U(13u); let pU14 = U(14u); let pU15 = U(15u);
  ${channelPrelude(v)}`;
}

/** fwd v2 pass 1: chunk summaries (end state from 0, sum of delta') for chunks 0 .. chunks-2. */
export function scanChunkV2(v: ScanVariant): string {
  const [decl, b] = v2Decl(!v.bShared);
  const K = ks(v.N);
  const stores = K.flatMap((k) =>
    [0, 1, 2, 3].filter((i) => 4 * k + i < v.N).map((i) => `CARRY[cb + ${4 * k + i}u] = h${k}.${COMP[i]};`)
  );
  return `// selective scan fwd v2 chunk summaries
${uniformDecl(V2_WORDS)}
${paramDecl(b + 1)}
${decl}
@group(0) @binding(${b}) var<storage, read_write> CARRY: array<f32>;
${helpers()}
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  ${v2Prelude(v)}
  if (c + 1u >= U(5u)) { return; }
  var S = 0.0;
  for (var j = 0u; j < T4; j++) {
    let t4 = c * T4 + j;
    ${v2Body(v, false)}
  }
  let cb = (bd * U(5u) + c) * ${v.N + 1}u;
  ${stores.join("\n  ")}
  CARRY[cb + ${v.N}u] = S;
}`;
}

/**
 * fwd v2 pass 2, sequential: per (b, d), folds the chunk summaries in order and overwrites slot c with the
 * state entering chunk c (slot 0: zeros). Uniforms as the chunk pass. One invocation per (b, d).
 */
export function carrySeqV2(v: ScanVariant): string {
  const K = ks(v.N);
  const N = v.N, S = N + 1;
  const ld = (k: number) =>
    `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? `CARRY[cb + ${4 * k + i}u]` : "0.0")).join(", ")})`;
  const st = (k: number, val: string) =>
    [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => `CARRY[cb + ${4 * k + i}u] = ${val}.${COMP[i]};`)
      .join(" ");
  return `// selective scan fwd v2 carry, sequential
${uniformDecl(V2_WORDS)}
${paramDecl(3)}
@group(0) @binding(2) var<storage, read_write> CARRY: array<f32>;
${helpers()}
${flatId(SCAN_WG)}
  if (gid >= U(0u)) { return; }
  let D = U(1u); let chunks = U(5u);
  let d = gid % D;
  ${channelPrelude(v)}
  for (var c = 0u; c < chunks; c++) {
    let cb = (gid * chunks + c) * ${S}u;
    let s = CARRY[cb + ${N}u];
    ${K.map((k) => `let x${k} = ${ld(k)};`).join("\n    ")}
    ${K.map((k) => st(k, `h${k}`)).join("\n    ")}
    ${K.map((k) => `h${k} = exp2(s * l2a${k}) * h${k} + x${k};`).join("\n    ")}
  }
}`;
}

/** Chunk groups one Hillis-Steele workgroup scans (one per invocation). */
export const HS_WG = 64;

/**
 * fwd v2 pass 2, Hillis-Steele: one workgroup per (b, d, 4 states); invocation i first folds its run of
 * ceil(chunks / 64) consecutive chunk summaries in order, then log2(64) = 6 rounds combine the runs in
 * workgroup memory (inclusive scan: element i takes (a_{i-k}, x_{i-k}) o (a_i, x_i) with a = exp(A S)
 * carried as the sum S), then each invocation writes the incoming states of its chunks. Uniforms as the
 * chunk pass. Workgroups: (Bn * D, ceil(N / 4)).
 */
export function carryHillisSteeleV2(v: ScanVariant): string {
  const N = v.N, S = N + 1;
  const K = ks(N);
  const sel = K.map((k) => `if (kq == ${k}u) { a = ${paramVec(N, 0, k)}; }`).join("\n  ");
  const lane = (base: string) =>
    `vec4<f32>(${
      [0, 1, 2, 3].map((i) =>
        `select(0.0, CARRY[${base} + min(4u * kq + ${i}u, ${N - 1}u)], 4u * kq + ${i}u < ${N}u)`
      )
        .join(", ")
    })`;
  return `// selective scan fwd v2 carry, Hillis-Steele
${uniformDecl(V2_WORDS)}
${paramDecl(3)}
@group(0) @binding(2) var<storage, read_write> CARRY: array<f32>;
var<workgroup> WS: array<f32, ${HS_WG}>;
var<workgroup> WX: array<vec4<f32>, ${HS_WG}>;
${helpers()}
@compute @workgroup_size(${HS_WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let bd = wid.x; let kq = wid.y; let i = lid.x;
  let D = U(1u); let chunks = U(5u);
  let d = bd % D;
  let pb = d * ${paramStride(v)}u;
  var a = vec4<f32>(0.0);
  ${sel}
  if (any(a > vec4<f32>(0.0))) { flagA(d, 4u * kq, a); }
  let run = (chunks + ${HS_WG - 1}u) / ${HS_WG}u;
  let c0 = min(i * run, chunks); let c1 = min(c0 + run, chunks);
  // this invocation's run, folded from zero: (S, x)
  var s = 0.0; var x = vec4<f32>(0.0);
  for (var c = c0; c < c1; c++) {
    let cb = (bd * chunks + c) * ${S}u;
    let sc = CARRY[cb + ${N}u];
    x = exp(sc * a) * x + ${lane("cb")};
    s += sc;
  }
  WS[i] = s; WX[i] = x;
  workgroupBarrier();
  for (var k = 1u; k < ${HS_WG}u; k = k * 2u) {
    var ps = 0.0; var px = vec4<f32>(0.0);
    if (i >= k) { ps = WS[i - k]; px = WX[i - k]; }
    workgroupBarrier();
    if (i >= k) { x = exp(s * a) * px + x; s = s + ps; WS[i] = s; WX[i] = x; }
    workgroupBarrier();
  }
  // state entering this run: the inclusive scan of the runs before it
  var h = vec4<f32>(0.0);
  if (i > 0u) { h = WX[i - 1u]; }
  for (var c = c0; c < c1; c++) {
    let cb = (bd * chunks + c) * ${S}u;
    let sc = CARRY[cb + ${N}u];
    let xc = ${lane("cb")};
    ${
    [0, 1, 2, 3].map((q) => `if (4u * kq + ${q}u < ${N}u) { CARRY[cb + 4u * kq + ${q}u] = h.${COMP[q]}; }`)
      .join("\n    ")
  }
    h = exp(sc * a) * h + xc;
  }
}`;
}

/**
 * fwd v2 pass 3: every chunk rescanned from its incoming state; y stored, the last chunk's state too.
 * With `texOut`, y goes to a write-only texture in the layout of u (one textureStore per 4 steps, copied
 * to the output buffer after the pass: measured ~20% faster than 4 storage-buffer stores, each a
 * per-lane loop on lavapipe); used when L is a multiple of 64, which the copy's row pitch needs.
 */
export function scanFixupV2(v: ScanVariant, texOut = false, saveStates = false): string {
  const [decl, b0] = v2Decl(!v.bShared || !v.cShared);
  let b = b0;
  const K = ks(v.N), N = v.N;
  const carryB = b++, outB = b++, lastB = v.last ? b++ : -1, scrB = saveStates ? b++ : -1;
  const load = K.map((k) =>
    `h${k} = vec4<f32>(${
      [0, 1, 2, 3].map((i) => (4 * k + i < N ? `CARRY[cb + ${4 * k + i}u]` : "0.0")).join(", ")
    });`
  );
  const lastStore = K.flatMap((k) =>
    [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) =>
      `LAST[bd * ${N}u + ${4 * k + i}u] = h${k}.${COMP[i]};`
    )
  );
  return `// selective scan fwd v2 fix-up
${uniformDecl(V2_WORDS)}
${paramDecl(b)}
${decl}
@group(0) @binding(${carryB}) var<storage, read> CARRY: array<f32>;
${
    texOut
      ? `@group(0) @binding(${outB}) var TY: texture_storage_2d_array<rgba32float, write>;`
      : `@group(0) @binding(${outB}) var<storage, read_write> OUT: array<f32>;`
  }
${v.last ? `@group(0) @binding(${lastB}) var<storage, read_write> LAST: array<f32>;` : ""}
${saveStates ? `@group(0) @binding(${scrB}) var<storage, read_write> SCR: array<vec4<f32>>;` : ""}
${helpers()}
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  ${v2Prelude(v)}
  if (c > 0u) {
    let cb = (bd * U(5u) + c) * ${N + 1}u;
    ${load.join("\n    ")}
  }
  let tEnd = min(c * T4 + T4, L4);
  for (var t4 = c * T4; t4 < tEnd; t4++) {
    ${
    saveStates
      ? `// the state entering the texel, for bwd v2 (its phase 0)\n    ${
        K.map((k) => `SCR[(bd * L4 + t4) * ${K.length}u + ${k}u] = h${k};`).join(" ")
      }`
      : ""
  }
    ${v2Body(v, true, texOut)}
  }
  ${v.last ? `if (c + 1u == U(5u)) {\n    ${lastStore.join("\n    ")}\n  }` : ""}
}`;
}

/**
 * Pack pass v3 (strided): writes up to 4 (outer, inner, L) operands, each read through its strides
 * (element (o, i, t) at off + o so + i si + t st; B and C as (B, G N, L)), into their layer ranges of a
 * texture in {@link SeqTexLayout} (row o inner + i), zero past L. One invocation per (o, t4, 4 rows):
 * 4 steps x 4 rows per operand, read as 4 vec4s when the rows are channels (`vec4[j]`: si = 1, inner, off,
 * so, st multiples of 4: Mamba's (B, L, D) activations) or 16 scalars otherwise, stored as 4 texels. It
 * replaces a transposing copy plus copyBufferToTexture. Uniforms: [outer, inner, L, L4, rowsPerBlock,
 * rowBlocks, segments, inner4], then per operand [off, so, si, st, operand]. Bindings: the operands,
 * then the texture.
 */
export function packSeqV3(vec4: readonly boolean[]): string {
  const n = vec4.length;
  const decl = vec4.map((v, j) =>
    `@group(0) @binding(${j + 1}) var<storage, read> X${j}: array<${v ? "vec4<f32>" : "f32"}>;`
  );
  const body = vec4.map((v, j) => {
    const w = 8 + 5 * j;
    const base = (t: string) => `U(${w}u) + o * U(${w + 1}u) + ${t} * U(${w + 3}u)`;
    const steps = [0, 1, 2, 3].map((q) => {
      const t = `min(4u * t4 + ${q}u, L - 1u)`;
      const val = v
        ? `X${j}[(${base(t)}) / 4u + i4]`
        : `vec4<f32>(${
          [0, 1, 2, 3].map((c) => `X${j}[${base(t)} + min(4u * i4 + ${c}u, inner - 1u) * U(${w + 2}u)]`).join(
            ", ",
          )
        })`;
      return `let v${q} = select(vec4<f32>(0.0), ${val}, 4u * t4 + ${q}u < L);`;
    });
    const stores = [0, 1, 2, 3].map((c) =>
      `if (4u * i4 + ${c}u < inner) { put(U(${
        w + 4
      }u), o * inner + 4u * i4 + ${c}u, t4, vec4<f32>(v0[${c}], v1[${c}], v2[${c}], v3[${c}])); }`
    );
    return `{ // operand ${j}
    ${steps.join("\n    ")}
    ${stores.join("\n    ")}
  }`;
  });
  return `// selective scan pack v3 (strided, ${n} operands)
${uniformDecl(8 + 5 * n)}
${decl.join("\n")}
@group(0) @binding(${n + 1}) var T: texture_storage_2d_array<rgba32float, write>;
fn put(k: u32, row: u32, t4: u32, v: vec4<f32>) {
  let rb = row / U(4u);
  let layer = (k * U(5u) + rb) * U(6u) + t4 / ${TEX_W}u;
  textureStore(T, vec2<u32>(t4 % ${TEX_W}u, row - rb * U(4u)), layer, v);
}
${flatId(SCAN_WG)}
  let outer = U(0u); let inner = U(1u); let L = U(2u); let L4 = U(3u); let I4 = U(7u);
  if (gid >= outer * L4 * I4) { return; }
  let i4 = gid % I4; let r = gid / I4; let t4 = r % L4; let o = r / L4;
  ${body.join("\n  ")}
}`;
}
