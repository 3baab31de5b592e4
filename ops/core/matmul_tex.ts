/**
 * matmul v4/v5: both operands packed into rgba32float texture arrays, then multiplied from read-only
 * storage textures (see matmul_wgsl.ts for why: on lavapipe a texture load is ~20x cheaper than a
 * storage-buffer load). Everything is recorded in the context's batch: packing by row copies
 * (`copyBufferToTexture`) or by the pack shader, and the multiply, in one encoder with the ops around it.
 * The scratch textures come from the context's pool and go back to it when the call has recorded its
 * work; the ledger counts them as in use meanwhile.
 * @module
 */

import { gpu, hasWebGPU } from "../../runtime/device.ts";
import { numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import type { GpuTexture } from "../../runtime/webgpu.ts";
import {
  matmulPack,
  matmulPackTransposedA,
  matmulTex,
  PACK_GROUP,
  PACK_MAX_BATCH,
  PACK_UNIFORM_WORDS,
  texBlocks,
  type TexTile,
} from "./matmul_wgsl.ts";
import { Uniforms } from "./util.ts";

/** Scratch bytes one packed texture may take; larger operands are processed in row/column chunks. */
const TEX_CAP = 64 * 2 ** 20;

/** More row copies than this per operand and chunk, and the pack shader is cheaper. */
const MAX_COPIES = 64;

/** The packed texture's height limit: the adapter's, or WebGPU's guaranteed 8192 without one. */
export function texHeight(): number {
  return hasWebGPU() ? gpu().limits.maxTextureDimension2D : 8192;
}

/** Whether v4/v5 can take this K: B's packed texture is 4*ceil(K/4) texels high. */
export function texFits(K: number): boolean {
  return 4 * Math.ceil(K / 4) <= texHeight();
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

/**
 * Whether A is a transposed f32 matrix the vec4 pack can read: unit row stride (its rows are columns of a
 * row-major matrix), a column stride and every batch's offset divisible by 4.
 */
function transposedVec4(p: PackView, offs: number[]): boolean {
  return p.t.dtype === "f32" && p.rs === 1 && p.cs % 4 === 0 && p.cs > 0 && offs.every((o) => o % 4 === 0);
}

/**
 * Records out = a @ b with the texture tile `tile` (v4 or v5) into the context's batch. `out` is a fresh
 * contiguous (batch..., M, N) tensor; a and b are any strided views (broadcast over `batchShape`).
 */
export function texMatmul(
  version: "v4" | "v5",
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
  const op = `matmul ${version}`;
  const pa = packView(a, "A", batchShape), pb = packView(b, "B", batchShape);
  const batch = numel(batchShape);
  const lim = ctx.limits;
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
  const ta = ctx.acquireTexture({ width: K4, height: RB, layers: (pa.shared ? 1 : bc) * mbc }, `${op} A`);
  const tb = ctx.acquireTexture({ width: CB, height: 4 * K4, layers: (pb.shared ? 1 : bc) * nbc }, `${op} B`);
  try {
    // Packs `rows` x `cols` of operand p, from element `off`, for batches b0..b0+nb-1 (once when shared),
    // `blocks` blocks each: by row copies when the rows are aligned f32, else by the pack shader.
    const pack = (
      p: PackView,
      s: GpuTexture,
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
        const buffer = p.t.storage.buffer!;
        const at = (z: number, layer: number) => ({
          texture: s,
          origin: [0, 0, z * blocks + layer] as [number, number, number],
        });
        for (let z = 0; z < zs; z++) {
          if (role === "A") {
            // whole blocks of RB rows in one copy, the last partial block in another
            const full = Math.floor(rows / RB), tail = rows - full * RB;
            const o = offs[z] * 4, oTail = (offs[z] + full * RB * p.rs) * 4;
            const bytesPerRow = p.rs * 4;
            if (full > 0) {
              ctx.copyBufferToTexture(op, { buffer, offset: o, bytesPerRow, rowsPerImage: RB }, at(z, 0), [
                K4,
                RB,
                full,
              ]);
            }
            if (tail > 0) {
              ctx.copyBufferToTexture(op, { buffer, offset: oTail, bytesPerRow }, at(z, full), [K4, tail, 1]);
            }
          } else {
            for (let blk = 0; blk < blocks; blk++) {
              const w = Math.ceil(Math.min(4 * CB, cols - blk * 4 * CB) / 4);
              ctx.copyBufferToTexture(
                op,
                { buffer, offset: (offs[z] + blk * 4 * CB) * 4, bytesPerRow: p.rs * 4 },
                at(z, blk),
                [w, K, 1],
              );
            }
          }
        }
        return;
      }
      const u = new Uniforms().u32(rows, cols, off, p.rs, p.cs, blocks, K4, 0);
      for (const o of offs) u.u32(o - off);
      u.padTo(PACK_UNIFORM_WORDS);
      const block = role === "A" ? RB : CB;
      if (role === "A" && transposedVec4(p, offs)) {
        ctx.run({
          name: op,
          key: `packAT${block}`,
          source: () => matmulPackTransposedA(block),
          bindings: [{ buffer: p.t.storage.buffer!, access: "read" }, { texture: s, access: "write" }],
          uniforms: u.build(),
          workgroups: [Math.ceil(K4 / PACK_GROUP), (blocks * RB) / 4, zs],
        });
        return;
      }
      ctx.run({
        name: op,
        key: `pack${role}${block}|${p.t.dtype}`,
        source: () => matmulPack(p.t.dtype, role, block),
        bindings: [{ buffer: p.t.storage.buffer!, access: "read" }, { texture: s, access: "write" }],
        uniforms: u.build(),
        workgroups: role === "A"
          ? [Math.ceil(K4 / PACK_GROUP), blocks * RB, zs]
          : [Math.ceil((blocks * CB) / PACK_GROUP), 4 * K4, zs],
      });
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
          const cOff = b0 * M * N + m0 * N + n0;
          u.u32(cOff, N, M * N, mbk, nbk);
          // whole column texels (N, the row pitch and the offset divisible by 4): vec4 stores
          const v4 = out.dtype === "f32" && N % 4 === 0 && nn % 4 === 0 && cOff % 4 === 0;
          ctx.run({
            name: op,
            key: `tex${tile.R}x${tile.C}x${tile.WX}x${tile.WY}|${out.dtype}${v4 ? "|v4out" : ""}`,
            source: () => matmulTex(tile, out.dtype, v4),
            bindings: [
              { texture: ta, access: "read" },
              { texture: tb, access: "read" },
              { buffer: out.storage.buffer!, access: "read_write" },
            ],
            uniforms: u.build(),
            workgroups: [nbk, mbk, nb],
          });
        }
      }
    }
  } finally {
    ta.release();
    tb.release();
  }
}
