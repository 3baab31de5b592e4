/**
 * Batched matrix multiplication with NumPy semantics: 1-D operands are promoted and squeezed back, batch
 * dimensions broadcast. The WebGPU shader versions are described in matmul_wgsl.ts.
 * @module
 */

import { isFloat, promote } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { ledgerPooled } from "../../runtime/memory.ts";
import { broadcastShapes, fmt, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { MAX_LOOP, WebGPUError } from "../../runtime/webgpu.ts";
import { add, cast, contiguous } from "./elementwise.ts";
import { matmulRef } from "./matmul_ref.ts";
import { record } from "../../runtime/autograd.ts";
import { sumTo } from "./reduce.ts";
import {
  matmulPack,
  matmulTex,
  matmulV1,
  matmulV2,
  matmulV3,
  PACK_GROUP,
  PACK_MAX_BATCH,
  PACK_UNIFORM_WORDS,
  TEX_TILES,
  texBlocks,
  type TexTile,
  TILE,
} from "./matmul_wgsl.ts";
import { empty, sameDevice, Uniforms } from "./util.ts";

/**
 * Shader versions of matmul (see matmul_wgsl.ts). "auto" picks v5 for short A (M <= 16) and v4 otherwise
 * when K fits the texture limit and the product is large enough to repay the packing (and the extra
 * submit); else v3 when aligned, else v2. v1 is the naive baseline.
 */
export type MatmulVersion = "auto" | "v1" | "v2" | "v3" | "v4" | "v5";

/** Below this many multiply-adds "auto" stays on the storage-buffer versions (no packing, no extra submit). */
const TEX_MIN_WORK = 64 * 64 * 64;

/**
 * Matrix product `a @ b`. Shapes (..., M, K) @ (..., K, N) -> (..., M, N) with broadcast batch dims;
 * a 1-D `a` is a row vector and a 1-D `b` a column vector (their dim is dropped from the result).
 * Float dtypes only; mixed float dtypes promote.
 *
 * @example
 * ```ts
 * import { matmul, tensor } from "seqlab";
 * const a = tensor([[1, 2], [3, 4]]);
 * console.log(await matmul(a, tensor([[5], [6]])).toArray()); // [17, 39]
 * ```
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return recordMatmul(a, b, matmulWith(a, b, "auto"));
}

/**
 * Records matmul's backward: dA = g @ B^T and dB = A^T @ g, 1-D operands lifted to matrices as in the
 * forward pass, broadcast batch dims summed back to each operand's shape, and no product for an operand
 * that did not require grad (a Linear layer's input).
 */
function recordMatmul(a: Tensor, b: Tensor, out: Tensor): Tensor {
  const sa = a.shape, sb = b.shape, da = a.dtype, db = b.dtype;
  const needA = a.requiresGrad, needB = b.requiresGrad;
  return record("matmul", out, [a, b], [a, b], (g, [as, bs]) => {
    const a2 = sa.length === 1 ? as.reshape([1, sa[0]]) : as; // (..., M, K)
    const b2 = sb.length === 1 ? bs.reshape([sb[0], 1]) : bs; // (..., K, N)
    const lead = g.shape.slice(0, g.rank - (sa.length > 1 ? 1 : 0) - (sb.length > 1 ? 1 : 0));
    const g2 = g.reshape([...lead, a2.shape.at(-2)!, b2.shape.at(-1)!]); // (..., M, N)
    const fit = (d: Tensor, lifted: readonly number[], shape: readonly number[], dtype: Tensor["dtype"]) => {
      const r = sumTo(d, lifted).reshape(shape);
      return r.dtype === dtype ? r : cast(r, dtype);
    };
    return [
      needA ? fit(matmul(g2, b2.transpose()), a2.shape, sa, da) : null,
      needB ? fit(matmul(a2.transpose(), g2), b2.shape, sb, db) : null,
    ];
  });
}

/**
 * A product whose inner dimension is longer than one invocation may loop (lavapipe ends an invocation's
 * loops after 65535 iterations): the sum of products over K-slices of at most MAX_LOOP.
 */
function matmulSplitK(a: Tensor, b: Tensor, K: number, version: MatmulVersion): Tensor {
  let acc: Tensor | null = null;
  for (let k0 = 0; k0 < K; k0 += MAX_LOOP) {
    const k1 = Math.min(K, k0 + MAX_LOOP);
    const as = a.slice(a.shape.map((_d, i) => (i === a.rank - 1 ? [k0, k1] as [number, number] : null)));
    const bs = b.slice(
      b.shape.map((_d, i) => (i === Math.max(b.rank - 2, 0) ? [k0, k1] as [number, number] : null)),
    );
    const part = matmulWith(as, bs, version);
    as.dispose();
    bs.dispose();
    if (acc) {
      const total = add(acc, part);
      acc.dispose();
      part.dispose();
      acc = total;
    } else acc = part;
  }
  return acc!;
}

/**
 * {@link matmul} with a chosen shader version (for tests and benchmarks); "auto" is what `matmul` uses.
 * On the cpu device the version is ignored. v3 needs K, N and the operands' offsets divisible by 4 and
 * f32; v4/v5 need K within the adapter's texture height.
 *
 * @example
 * ```ts
 * import { matmulWith, randn } from "seqlab";
 * const a = randn([8, 5]), b = randn([5, 3]);
 * console.log(matmulWith(a, b, "v2").shape); // [8, 3]
 * ```
 */
export function matmulWith(a: Tensor, b: Tensor, version: MatmulVersion): Tensor {
  const device = sameDevice("matmul", a, b);
  if (a.rank === 0 || b.rank === 0) {
    throw new Error(
      `matmul: operands must have at least 1 dimension: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
    );
  }
  if (!isFloat(a.dtype) || !isFloat(b.dtype)) {
    throw new Error(
      `matmul: needs float tensors: a is ${fmt(a.shape)} ${a.dtype}, b is ${fmt(b.shape)} ${b.dtype}`,
    );
  }
  const as = a.rank === 1 ? [1, a.shape[0]] : [...a.shape];
  const bs = b.rank === 1 ? [b.shape[0], 1] : [...b.shape];
  const [M, K] = as.slice(-2), [K2, N] = bs.slice(-2);
  if (K !== K2) {
    throw new Error(`matmul: inner dimensions differ: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`);
  }
  if (device === "webgpu" && K > MAX_LOOP) return matmulSplitK(a, b, K, version);
  let batchShape: number[];
  try {
    batchShape = broadcastShapes("matmul", as.slice(0, -2), bs.slice(0, -2));
  } catch {
    throw new Error(
      `matmul: batch dimensions cannot be broadcast: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
    );
  }
  const batch = numel(batchShape);
  const outShape = [...batchShape];
  if (a.rank > 1) outShape.push(M);
  if (b.rank > 1) outShape.push(N);
  const dtype = promote(a.dtype, b.dtype);
  let v = version;
  if (device === "webgpu") {
    throwDeferred();
    const texOk = texFits(K);
    if (v === "auto") {
      if (texOk && K > 0 && batch * M * N * K >= TEX_MIN_WORK) v = M <= 16 ? "v5" : "v4";
      else v = "v2"; // refined to v3 below once the operands' layout is known
    }
    if ((v === "v4" || v === "v5") && !texOk) {
      throw new Error(
        `matmul ${v}: K = ${K} is over the packed texture's height limit ` +
          `(${gpu().limits.maxTextureDimension2D}); use v2 or v3: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
      );
    }
  }
  const out = empty("matmul", outShape, dtype, device);
  if (out.size === 0) return out;
  if (device === "webgpu" && (v === "v4" || v === "v5")) {
    if (K > 0) {
      texMatmul(TEX_TILES[v], a, b, out, batchShape, M, N, K);
      return out;
    }
    v = "v2"; // K = 0: nothing to pack; v2 writes the zeros
  }
  // Lay each operand out as contiguous (batch?, rows, cols) with a batch stride of 0 when shared.
  const prep = (t: Tensor, shape: number[]) => {
    const tb = shape.slice(0, -2);
    const shared = numel(tb) === 1;
    const c0 = t.dtype === dtype ? t : cast(t, dtype);
    const r = shared ? c0 : c0.reshape(shape); // a copy when the view cannot be reshaped in place
    const full = shared ? c0 : r.expand([...batchShape, ...shape.slice(-2)]);
    const c = contiguous(full);
    for (const tmp of new Set([full, r, c0])) if (tmp !== t) tmp.dispose();
    return { t: c, stride: shared ? 0 : shape.at(-2)! * shape.at(-1)! };
  };
  const pa = prep(a, as), pb = prep(b, bs);
  try {
    if (device === "cpu") {
      matmulRef(
        pa.t.storage.data!,
        pa.t.offset,
        pa.stride,
        pb.t.storage.data!,
        pb.t.offset,
        pb.stride,
        out.storage.data!,
        batch,
        M,
        N,
        K,
      );
      return out;
    }
    const aligned = K % 4 === 0 && N % 4 === 0 && pa.t.offset % 4 === 0 && pb.t.offset % 4 === 0 &&
      dtype === "f32";
    if (v === "v2" && version === "auto" && aligned) v = "v3";
    if (v === "v3" && !aligned) {
      out.dispose();
      throw new Error(
        `matmul v3: needs K, N and offsets divisible by 4 and f32: a is ${fmt(a.shape)} ${a.dtype}, ` +
          `b is ${fmt(b.shape)} ${b.dtype}`,
      );
    }
    const groups = v === "v1"
      ? [Math.ceil(N / 8), Math.ceil(M / 8)]
      : [Math.ceil(N / TILE), Math.ceil(M / TILE)];
    const ctx = gpu();
    for (let b0 = 0; b0 < batch; b0 += 65535) {
      ctx.run({
        name: "matmul",
        key: `${v}|${dtype}`,
        source: () => (v === "v1" ? matmulV1(dtype) : v === "v2" ? matmulV2(dtype) : matmulV3()),
        inputs: [pa.t.storage.buffer!, pb.t.storage.buffer!],
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(M, N, K, b0, pa.t.offset, pb.t.offset, pa.stride, pb.stride).build(),
        workgroups: [groups[0], groups[1], Math.min(65535, batch - b0)],
      });
    }
    return out;
  } finally {
    pa.t.dispose();
    pb.t.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------
// v4/v5: operands packed into textures.
//
// GpuContext.run binds only storage buffers, so this path records its own compute pass (pack A, pack B,
// multiply, per chunk) and submits it right after flushing the context's batch: queue order keeps it after
// every op recorded before and before every op recorded after. It costs one extra submit (no wait).

/** Scratch bytes one packed texture may take; larger operands are processed in row/column chunks. */
const TEX_CAP = 64 * 2 ** 20;
/** Scratch textures kept per role for reuse (fresh memory is ~80x slower than reused on lavapipe). */
const TEX_KEEP = 2;

interface Scratch {
  tex: GPUTexture;
  /** A 2d-array view, bound as a storage texture by the pack pass (write) and the multiply (read). */
  view: GPUTextureView;
  w: number;
  h: number;
  layers: number;
  bytes: number;
  used: number;
}

const scratch: Record<"A" | "B", Scratch[]> = { A: [], B: [] };
let useClock = 0;

/** Whether v4/v5 can take this K: B's packed texture is 4*ceil(K/4) texels high. */
function texFits(K: number): boolean {
  return 4 * Math.ceil(K / 4) <= gpu().limits.maxTextureDimension2D;
}

const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

/**
 * A scratch texture of at least w x h texels and `layers` layers: a cached one if any fits (the shaders
 * index within the packed region, so a bigger texture serves), else a new one rounded up so that nearby
 * shapes reuse it.
 */
function scratchTexture(role: "A" | "B", w: number, h: number, layers: number): Scratch {
  const list = scratch[role];
  let best: Scratch | undefined;
  for (const s of list) {
    if (s.w >= w && s.h >= h && s.layers >= layers && (!best || s.bytes < best.bytes)) best = s;
  }
  if (!best) {
    const lim = gpu().limits;
    const W = Math.min(roundUp(w, 16), lim.maxTextureDimension2D);
    const H = Math.min(roundUp(h, 16), lim.maxTextureDimension2D);
    const Lr = Math.min(2 ** Math.ceil(Math.log2(layers)), lim.maxTextureArrayLayers);
    // rgba32float storage textures: written by the pack pass (or copies), read-only by the multiply
    const tex = gpu().device.createTexture({
      label: `matmul scratch ${role} ${W}x${H}x${Lr}`,
      size: [W, H, Lr],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
    });
    best = {
      tex,
      view: tex.createView({ dimension: "2d-array" }),
      w: W,
      h: H,
      layers: Lr,
      bytes: W * H * Lr * 16,
      used: ++useClock,
    };
    ledgerPooled("webgpu", best.bytes);
    list.push(best);
    if (list.length > TEX_KEEP) {
      list.sort((x, y) => y.used - x.used);
      const old = list.pop()!;
      old.tex.destroy(); // WebGPU defers this until submitted work that uses it completes
      ledgerPooled("webgpu", -old.bytes);
    }
  }
  best.used = ++useClock;
  return best;
}

/** One operand as a strided matrix over the output batch (its element offset per batch index). */
interface PackView {
  t: Tensor;
  rows: number;
  cols: number;
  rs: number;
  cs: number;
  /** The output batch shape and this operand's strides over it (0 where it broadcasts). */
  sizes: number[];
  strides: number[];
  /** Whether every batch reads the same matrix (packed once, as one set of layers). */
  shared: boolean;
}

/** Describes `t` (its last two dims, or a vector as a row (A) or column (B)) over `batchShape`. */
function packView(t: Tensor, role: "A" | "B", batchShape: number[]): PackView {
  let rows: number, cols: number, rs: number, cs: number;
  if (t.rank === 1) {
    [rows, cols] = role === "A" ? [1, t.shape[0]] : [t.shape[0], 1];
    [rs, cs] = role === "A" ? [0, t.strides[0]] : [t.strides[0], 0];
  } else {
    [rows, cols] = t.shape.slice(-2);
    [rs, cs] = t.strides.slice(-2);
  }
  const tb = t.rank > 2 ? t.shape.slice(0, -2) : [];
  const ts = t.rank > 2 ? t.strides.slice(0, -2) : [];
  const lead = batchShape.length - tb.length;
  const strides = batchShape.map((_, d) => (d < lead || tb[d - lead] === 1 ? 0 : ts[d - lead]));
  return { t, rows, cols, rs, cs, sizes: batchShape, strides, shared: strides.every((s) => s === 0) };
}

/** Element offset (relative to the view's offset) of batch `b` of an operand. */
function batchOffset(p: PackView, b: number): number {
  let off = 0;
  for (let d = p.sizes.length - 1; d >= 0; d--) {
    off += (b % p.sizes[d]) * p.strides[d];
    b = Math.floor(b / p.sizes[d]);
  }
  return off;
}

const pipes = new Map<string, GPUComputePipeline>();

function pipeline(key: string, source: () => string): GPUComputePipeline {
  let p = pipes.get(key);
  if (!p) {
    const device = gpu().device;
    const module = device.createShaderModule({ code: source(), label: `matmul ${key}` });
    p = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label: key });
    pipes.set(key, p);
  }
  return p;
}

/** Uniform blocks for one submission: each dispatch gets its own 256-byte-aligned slot of a reused buffer. */
class UniformRing {
  private buf: GPUBuffer | null = null;
  private data = new Uint8Array(0);
  private used = 0;
  begin(bytes: number): void {
    if (!this.buf || this.buf.size < bytes) {
      this.buf?.destroy();
      this.buf = gpu().device.createBuffer({
        label: "matmul uniforms",
        size: roundUp(bytes, 4096),
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      });
      this.data = new Uint8Array(this.buf.size);
    }
    this.used = 0;
  }
  push(words: Uint32Array): GPUBufferBinding {
    const offset = this.used;
    this.data.set(new Uint8Array(words.buffer, words.byteOffset, words.byteLength), offset);
    this.used += roundUp(words.byteLength, 256);
    return { buffer: this.buf!, offset, size: Math.max(16, roundUp(words.byteLength, 16)) };
  }
  /** Writes the slots; queue order puts the write before the pass submitted next and after earlier ones. */
  upload(): void {
    gpu().device.queue.writeBuffer(this.buf!, 0, this.data, 0, this.used);
  }
}
const ring = new UniformRing();

function texMatmul(
  tile: TexTile,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  batchShape: number[],
  M: number,
  N: number,
  K: number,
): void {
  const ctx = gpu();
  ctx.checkAlive("matmul");
  // Submit what the context has recorded (closing its error scopes) before opening ours: error scopes are
  // a stack, and everything below, texture creation included, reports into ours.
  ctx.flush();
  const device = ctx.device;
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  try {
    const pa = packView(a, "A", batchShape), pb = packView(b, "B", batchShape);
    const dispatches = recordTex(device, tile, pa, pb, out, numel(batchShape), M, N, K);
    ctx.counters.dispatches += dispatches;
    ctx.counters.submits++;
  } finally {
    const validation = device.popErrorScope(), oom = device.popErrorScope();
    Promise.all([validation, oom]).then(([v, o]) => {
      const e = o ?? v;
      if (e) deferredError = `matmul ${tile.R}x${tile.C} texture pass failed: ${e.message}`;
    });
  }
}

/** Records and submits the passes of one texture matmul; returns the number of dispatches. */
function recordTex(
  device: GPUDevice,
  tile: TexTile,
  pa: PackView,
  pb: PackView,
  out: Tensor,
  batch: number,
  M: number,
  N: number,
  K: number,
): number {
  const lim = device.limits;
  const K4 = Math.ceil(K / 4);
  const { RB, CB } = texBlocks(tile);
  // Chunks of row blocks, column blocks and batches, each within the layer limit and TEX_CAP.
  const layersA = Math.max(1, Math.min(lim.maxTextureArrayLayers, Math.floor(TEX_CAP / (RB * K4 * 16))));
  const layersB = Math.max(1, Math.min(lim.maxTextureArrayLayers, Math.floor(TEX_CAP / (4 * CB * K4 * 16))));
  const mbAll = Math.ceil(M / RB), nbAll = Math.ceil(N / (4 * CB));
  const mbc = Math.min(mbAll, layersA), nbc = Math.min(nbAll, layersB);
  let bc = 1;
  if (mbc === mbAll && nbc === nbAll) {
    bc = Math.min(
      batch,
      PACK_MAX_BATCH,
      pa.shared ? Infinity : Math.floor(layersA / mbc),
      pb.shared ? Infinity : Math.floor(layersB / nbc),
    );
  }
  const mc = mbc * RB, nc = nbc * 4 * CB;
  const ta = scratchTexture("A", K4, RB, (pa.shared ? 1 : bc) * mbc);
  const tb = scratchTexture("B", CB, 4 * K4, (pb.shared ? 1 : bc) * nbc);
  const chunks = Math.ceil(batch / bc) * Math.ceil(M / mc) * Math.ceil(N / nc);
  const packA = pipeline(`packA${RB}|${pa.t.dtype}`, () => matmulPack(pa.t.dtype, "A", RB));
  const packB = pipeline(`packB${CB}|${pb.t.dtype}`, () => matmulPack(pb.t.dtype, "B", CB));
  const mm = pipeline(
    `tex${tile.R}x${tile.C}x${tile.WX}x${tile.WY}|${out.dtype}`,
    () => matmulTex(tile, out.dtype),
  );
  ring.begin(chunks * (2 * roundUp(PACK_UNIFORM_WORDS * 4, 256) + 256));
  const enc = device.createCommandEncoder({ label: "matmul texture" });
  let pass: GPUComputePassEncoder | null = null;
  const compute = () => (pass ??= enc.beginComputePass());
  const endPass = () => {
    pass?.end();
    pass = null;
  };
  let dispatches = 0;

  // Packs `rows` x `cols` of operand p, from element `off`, for batches b0..b0+nb-1 (once when shared),
  // `blocks` blocks each: by row copies when the rows are aligned f32, else by the pack shader.
  const pack = (
    p: PackView,
    s: Scratch,
    blocks: number,
    rows: number,
    cols: number,
    off: number,
    b0: number,
    nb: number,
  ) => {
    const role = p === pa ? "A" : "B";
    const zs = p.shared ? 1 : nb;
    const offs = Array.from({ length: zs }, (_, z) => off + batchOffset(p, p.shared ? 0 : b0 + z));
    if (copyable(p, cols, K, offs) && zs * (role === "A" ? 2 : blocks) <= MAX_COPIES) {
      endPass();
      const src = { buffer: p.t.storage.buffer!, bytesPerRow: p.rs * 4 };
      const at = (z: number, layer: number) => ({ texture: s.tex, origin: [0, 0, z * blocks + layer] });
      for (let z = 0; z < zs; z++) {
        if (role === "A") {
          // whole blocks of RB rows in one copy, the last partial block in another
          const full = Math.floor(rows / RB), tail = rows - full * RB;
          const o = offs[z] * 4, oTail = (offs[z] + full * RB * p.rs) * 4;
          if (full > 0) {
            enc.copyBufferToTexture({ ...src, offset: o, rowsPerImage: RB }, at(z, 0), [K4, RB, full]);
          }
          if (tail > 0) enc.copyBufferToTexture({ ...src, offset: oTail }, at(z, full), [K4, tail, 1]);
        } else {
          for (let blk = 0; blk < blocks; blk++) {
            const w = Math.ceil(Math.min(4 * CB, cols - blk * 4 * CB) / 4);
            enc.copyBufferToTexture({ ...src, offset: (offs[z] + blk * 4 * CB) * 4 }, at(z, blk), [w, K, 1]);
          }
        }
      }
      return;
    }
    const u = new Uniforms().u32(rows, cols, off, p.rs, p.cs, blocks, K4, 0);
    for (const o of offs) u.u32(o - off);
    u.padTo(PACK_UNIFORM_WORDS);
    const pipe = role === "A" ? packA : packB;
    const c = compute();
    c.setPipeline(pipe);
    c.setBindGroup(0, bindGroup(pipe, ring.push(u.build()), buf(p.t), s.view));
    if (role === "A") c.dispatchWorkgroups(Math.ceil(K4 / PACK_GROUP), blocks * RB, zs);
    else c.dispatchWorkgroups((blocks * CB) / PACK_GROUP, 4 * K4, zs);
    dispatches++;
  };

  for (let b0 = 0; b0 < batch; b0 += bc) {
    const nb = Math.min(bc, batch - b0);
    for (let n0 = 0; n0 < N; n0 += nc) {
      const nn = Math.min(nc, N - n0), nbk = Math.ceil(nn / (4 * CB));
      pack(pb, tb, nbk, K, nn, pb.t.offset + n0 * pb.cs, b0, nb);
      for (let m0 = 0; m0 < M; m0 += mc) {
        const mm0 = Math.min(mc, M - m0), mbk = Math.ceil(mm0 / RB);
        // with all rows in one chunk, A's texture still holds this batch chunk from the first n0
        if (n0 === 0 || mc < M) pack(pa, ta, mbk, mm0, K, pa.t.offset + m0 * pa.rs, b0, nb);
        const u = new Uniforms().u32(mm0, nn, K4, pa.shared ? 0 : 1, pb.shared ? 0 : 1);
        u.u32(b0 * M * N + m0 * N + n0, N, M * N, mbk, nbk);
        const c = compute();
        c.setPipeline(mm);
        c.setBindGroup(0, bindGroup(mm, ring.push(u.build()), ta.view, tb.view, buf(out)));
        c.dispatchWorkgroups(nbk, mbk, nb);
        dispatches++;
      }
    }
  }
  endPass();
  ring.upload();
  device.queue.submit([enc.finish()]);
  return dispatches;
}

/** More row copies than this per operand and chunk, and the pack shader is cheaper. */
const MAX_COPIES = 64;

/**
 * Whether an operand's rows can be copied straight into its texture: f32, unit column stride, a row
 * stride of whole 256-byte rows (copyBufferToTexture's bytesPerRow rule), 16-byte aligned starts, and
 * whole texels: `cols` and K divisible by 4 (a copied texel never reaches past its row, and B needs no
 * zero rows past K).
 */
function copyable(p: PackView, cols: number, K: number, offs: number[]): boolean {
  return p.t.dtype === "f32" && p.cs === 1 && p.rs % 64 === 0 && p.rs > 0 && cols % 4 === 0 && K % 4 === 0 &&
    offs.every((o) => o % 4 === 0);
}

const buf = (t: Tensor): GPUBufferBinding => ({ buffer: t.storage.buffer! });

/**
 * An error the device reported for an earlier texture pass (its own submission, outside the context's
 * error scopes); the next webgpu matmul throws it.
 */
let deferredError: string | null = null;

function throwDeferred(): void {
  if (!deferredError) return;
  const msg = deferredError;
  deferredError = null;
  throw new WebGPUError(`${msg}; results computed since then are invalid`);
}

function bindGroup(
  pipe: GPUComputePipeline,
  u: GPUBufferBinding,
  ...res: GPUBindingResource[]
): GPUBindGroup {
  return gpu().device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: u }, ...res.map((resource, i) => ({ binding: i + 1, resource }))],
  });
}
