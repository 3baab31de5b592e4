/**
 * The FFT path of S4's convolution mode on WebGPU: y = K * u (causal, per channel) and its gradients by
 * batched FFTs of length n = nextPow2(L + Lk - 1) over storage textures (`fft_wgsl.ts`), all recorded in
 * the context's batch: copy the inputs' raw floats into a pooled texture, the forward passes (the first
 * one packing and zero-padding), the pointwise pass, the inverse passes, unpack, copy to the outputs.
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { type Binding, type GpuTexture, grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { empty, Uniforms } from "../core/util.ts";
import { nextPow2 } from "./fft_ref.ts";
import {
  FFT_SRC_WORD,
  FFT_TEX_LOG,
  FFT_WG,
  FFT_WORDS,
  fftPointwiseV1,
  type FftRadix,
  fftStageV1,
  fftUnpackV1,
} from "./fft_wgsl.ts";

/** The largest radix of a pass (8: fewest passes without spilling; measurements in `fft_wgsl.ts`). */
export const FFT_MAX_RADIX: FftRadix = 8;

const ROW = 1 << FFT_TEX_LOG; // texels per texture row
const LAYER = ROW * ROW; // texels per layer

/** The radices of the Stockham passes for length n: `max`s, then the rest (one smaller power of two); [1] for n = 1. */
export function fftPlan(n: number, max: FftRadix = FFT_MAX_RADIX): FftRadix[] {
  const rs: FftRadix[] = [];
  let m = n;
  for (; m >= max; m /= max) rs.push(max);
  if (m > 1) rs.push(m as FftRadix);
  return rs.length ? rs : [1];
}

/** The texture extent holding `texels` linear texels. */
function extent(texels: number): [number, number, number] {
  const t = Math.max(1, texels);
  return [Math.min(t, ROW), Math.min(Math.ceil(t / ROW), ROW), Math.ceil(t / LAYER)];
}

/** The twiddle table of length n, w^k = e^(-2 pi i k / n) built in float64, two per texel (a constant texture). */
function twiddles(n: number): GpuTexture {
  const texels = Math.max(1, n / 2);
  const [w, h, l] = extent(texels);
  return gpu().constantTexture(`ssmConvolution twiddles ${n}`, { width: w, height: h, layers: l }, () => {
    const data = new Float32Array(w * h * l * 4);
    for (let k = 0; k < n; k++) {
      const a = (-2 * Math.PI * k) / n;
      data[2 * k] = Math.cos(a);
      data[2 * k + 1] = Math.sin(a);
    }
    return data;
  });
}

/** Records copies of `texels` whole texels from a buffer (16-byte aligned offset) to linear texels from `start`. */
function copyIn(
  op: string,
  buf: GPUBuffer,
  byteOffset: number,
  texels: number,
  tex: GpuTexture,
  start: number,
) {
  forRows(texels, start, (bytes, x, y, layer, w, h) =>
    gpu().copyBufferToTexture(
      op,
      { buffer: buf, offset: byteOffset + bytes, bytesPerRow: ROW * 16 },
      { texture: tex, origin: [x, y, layer] },
      [w, h, 1],
    ));
}

/** Records copies of linear texels from `start` of a texture into a buffer from byte 0. */
function copyOut(op: string, tex: GpuTexture, start: number, texels: number, buf: GPUBuffer) {
  forRows(texels, start, (bytes, x, y, layer, w, h) =>
    gpu().copyTextureToBuffer(
      op,
      { texture: tex, origin: [x, y, layer] },
      { buffer: buf, offset: bytes, bytesPerRow: ROW * 16 },
      [w, h, 1],
    ));
}

/** Splits a run of texels starting on a texture row into rectangles (whole rows per layer, then the rest). */
function forRows(
  texels: number,
  start: number,
  f: (bytes: number, x: number, y: number, layer: number, w: number, h: number) => void,
) {
  let done = 0;
  while (done < texels) {
    const i = start + done, row = Math.floor(i / ROW), y = row % ROW, layer = Math.floor(row / ROW);
    const full = Math.floor((texels - done) / ROW);
    if (full > 0) {
      const h = Math.min(full, ROW - y);
      f(done * 16, 0, y, layer, ROW, h);
      done += h * ROW;
    } else {
      f(done * 16, 0, y, layer, texels - done, 1);
      done = texels;
    }
  }
}

/** A (rows, len) operand read from `t` (row r at float t.offset + r * stride). */
export interface FftSource {
  t: Tensor;
  rows: number;
  len: number;
  stride: number;
}

/** A (rows, len) result written to the fresh tensor `out`, gathered from groups starting at `group`. */
interface FftSink {
  out: Tensor;
  rows: number;
  len: number;
  group: number;
}

const groupsOf = (rows: number) => Math.ceil(rows / 4);
const alignRow = (texels: number) => Math.ceil(texels / ROW) * ROW;

/** An aligned view of a source's floats: offset a multiple of 4 and whole texels inside the buffer. */
function alignedFloats(
  op: string,
  s: FftSource,
  temps: Tensor[],
): { buf: GPUBuffer; off: number; floats: number } {
  const floats = (s.rows - 1) * s.stride + s.len;
  const buf = s.t.storage.buffer!;
  if (s.t.offset % 4 === 0 && (s.t.offset + Math.ceil(floats / 4) * 4) * 4 <= buf.size) {
    return { buf, off: s.t.offset, floats };
  }
  const c = empty(`${op} input`, [floats], "f32", "webgpu"); // pooled buffers are whole 16-byte blocks
  gpu().copy(buf, s.t.offset * 4, c.storage.buffer!, 0, floats * 4, op);
  temps.push(c);
  return { buf: c.storage.buffer!, off: 0, floats };
}

/**
 * Runs the FFT pipeline: transforms every source's rows (zero-padded to n), the pointwise pass of `mode`,
 * the inverse transforms of `outGroups` groups, and writes the sinks.
 */
function runFft(
  op: string,
  n: number,
  sources: FftSource[],
  mode: "conv" | "corr",
  dims: { Bn: number; D: number },
  outGroups: number,
  sinks: FftSink[],
): void {
  const temps: Tensor[] = [];
  const textures: GpuTexture[] = [];
  try {
    const starts: number[] = [];
    let G = 0;
    for (const s of sources) {
      starts.push(G);
      G += groupsOf(s.rows);
    }
    // flat regions: the inputs in the texture the first pass reads, the outputs in the one unpack writes
    const flatIn: number[] = [];
    let inEnd = 0;
    const views = sources.map((s) => {
      const a = alignedFloats(op, s, temps);
      flatIn.push(inEnd);
      inEnd = alignRow(inEnd + Math.ceil(a.floats / 4));
      return a;
    });
    const flatOut: number[] = [];
    let outEnd = 0;
    for (const s of sinks) {
      flatOut.push(outEnd);
      outEnd = alignRow(outEnd + Math.ceil((s.rows * s.len) / 4));
    }
    const need = Math.max(G * n, inEnd, outEnd);
    const ctx = gpu();
    const [w, h, layers] = extent(need);
    const tex = [`${op} A`, `${op} B`].map((what) => {
      const t = ctx.acquireTexture({ width: w, height: h, layers }, what);
      textures.push(t);
      return t;
    });
    const plan = fftPlan(n, FFT_MAX_RADIX);
    const tw = twiddles(n);
    let cur = 1; // the texture the next pass reads: the flat input goes to B, the first pass writes A

    views.forEach((v, i) => copyIn(op, v.buf, v.off * 4, Math.ceil(v.floats / 4), tex[cur], flatIn[i]));
    const pass = (key: string, source: () => string, u: Uint32Array, threads: number, withTw: boolean) => {
      const bindings: Binding[] = [{ texture: tex[cur], access: "read" }, {
        texture: tex[1 - cur],
        access: "write",
      }];
      if (withTw) bindings.push({ texture: tw, access: "read" });
      ctx.run({ name: op, key, source, bindings, uniforms: u, workgroups: grid(threads, FFT_WG) });
      cur = 1 - cur;
    };
    const stages = (groups: number, inverse: boolean, first: boolean) => {
      let Ns = 1;
      plan.forEach((R, i) => {
        const isFirst = first && i === 0;
        const u = new Uniforms().u32(n, groups, Ns, n / R, n / (Ns * R)).padTo(FFT_SRC_WORD);
        if (isFirst) {
          for (let s = 0; s < 3; s++) {
            const src = sources[s];
            if (src) u.u32(starts[s], src.rows, src.len, src.stride, flatIn[s] * 4);
            else u.u32(0xffffffff, 0, 0, 0, 0);
          }
        }
        pass(
          `stage v1|${R}|${isFirst}|${inverse}`,
          () => fftStageV1(R, isFirst, inverse),
          u.padTo(FFT_WORDS).build(),
          groups * (n / R),
          R > 1 && !isFirst,
        );
        Ns *= R;
      });
    };
    stages(G, false, true);
    const Gu = groupsOf(dims.Bn * dims.D), aligned = dims.D % 4 === 0;
    const [gU, gK, gG] = mode === "conv" ? [0, Gu, 0] : [Gu, 2 * Gu, 0];
    pass(
      `pointwise v1|${mode}|${aligned}`,
      () => fftPointwiseV1(mode, aligned),
      new Uniforms().u32(n, outGroups, dims.Bn * dims.D, dims.D, dims.Bn, gU, gK, gG, Gu).f32(1 / n)
        .padTo(FFT_WORDS).build(),
      outGroups * n,
      false,
    );
    stages(outGroups, true, false);
    const unpackFrom = cur;
    sinks.forEach((s, i) => {
      cur = unpackFrom;
      const count = s.rows * s.len;
      pass(
        "unpack v1",
        fftUnpackV1,
        new Uniforms().u32(n, count, s.len, s.group, flatOut[i]).padTo(FFT_WORDS).build(),
        Math.ceil(count / 4),
        false,
      );
      copyOut(op, tex[cur], flatOut[i], Math.ceil(count / 4), s.out.storage.buffer!);
    });
  } finally {
    // recorded: the textures may serve the next op of the batch (in-batch reuse is ordered)
    textures.forEach((t) => t.release());
    temps.forEach((t) => t.dispose());
  }
}

/** The u32 range the pipeline indexes (linear texels of every group) must stay below 2^32. */
function checkSize(op: string, texels: number) {
  if (texels >= 2 ** 32) throw new Error(`${op}: ${texels} texels of FFT data exceed the u32 index range`);
}

/**
 * Causal convolution by FFT on WebGPU: u (B, D, L) f32, K (D, Lk) f32 contiguous rows of length Lk <= L.
 * Returns y (B, D, L).
 */
export function fftConvGpu(u: Tensor, K: Tensor): Tensor {
  const [Bn, D, L] = u.shape, Lk = K.shape[1];
  const n = nextPow2(L + Lk - 1);
  checkSize("ssmConvolution", (groupsOf(Bn * D) + groupsOf(D)) * n);
  const out = empty("ssmConvolution", [Bn, D, L], "f32", "webgpu");
  if (out.size === 0) return out;
  runFft(
    "ssmConvolution",
    n,
    [{ t: u, rows: Bn * D, len: L, stride: L }, { t: K, rows: D, len: Lk, stride: Lk }],
    "conv",
    { Bn, D },
    groupsOf(Bn * D),
    [{ out, rows: Bn * D, len: L, group: 0 }],
  );
  return out;
}

/** Gradients of {@link fftConvGpu} for the output gradient g (B, D, L): du (B, D, L) and dK (D, Lk). */
export function fftConvBackwardGpu(g: Tensor, u: Tensor, K: Tensor): [Tensor, Tensor] {
  const [Bn, D, L] = u.shape, Lk = K.shape[1];
  const n = nextPow2(L + Lk - 1);
  if (Bn > MAX_LOOP) {
    throw new Error(`ssmConvolution backward: B = ${Bn} is over ${MAX_LOOP} (the dK pass loops over B)`);
  }
  checkSize("ssmConvolution backward", (2 * groupsOf(Bn * D) + groupsOf(D)) * n);
  const du = empty("ssmConvolution du", [Bn, D, L], "f32", "webgpu");
  const dK = empty("ssmConvolution dK", [D, Lk], "f32", "webgpu");
  if (du.size === 0) {
    ctxFill(dK);
    return [du, dK];
  }
  const Gu = groupsOf(Bn * D);
  runFft(
    "ssmConvolution backward",
    n,
    [
      { t: g, rows: Bn * D, len: L, stride: L },
      { t: u, rows: Bn * D, len: L, stride: L },
      { t: K, rows: D, len: Lk, stride: Lk },
    ],
    "corr",
    { Bn, D },
    Gu + groupsOf(D),
    [{ out: du, rows: Bn * D, len: L, group: 0 }, { out: dK, rows: D, len: Lk, group: Gu }],
  );
  return [du, dK];
}

/** Zeros a (small) tensor's buffer: dK when B = 0. */
function ctxFill(t: Tensor) {
  if (t.size > 0) gpu().write(t.storage.buffer!, new Float32Array(t.size));
}
