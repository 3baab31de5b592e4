import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, expectThrowsNamed, GPU, leakCheck, scoped, testOp } from "../../test/helpers.ts";
import { patchifyRef, unpatchifyRef } from "./patch_ref.ts";
import { strided4 } from "./pool.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const DEVICES = GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const;

// [N, C, H, W, PH, PW]
const CASES: [number, number, number, number, number, number][] = [
  [2, 3, 8, 12, 4, 4], // a grid of 2x3 patches
  [1, 5, 6, 9, 3, 3], // odd channel count and width
  [3, 2, 10, 6, 5, 2], // rectangular patches
  [1, 1, 7, 7, 7, 7], // one patch
  [2, 4, 5, 3, 1, 1], // 1x1 patches: every pixel a token
  [1, 3, 16, 16, 16, 8], // few tokens, wide features
];

describe("patchify / unpatchify", () => {
  test(
    "hand-computed: 2x2 patches of a 4x4, token order row-major, features (c, ki, kj)",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.arange(0, 32, 1, { device }).reshape([1, 2, 4, 4]);
        const t = s.patchify(x, 2);
        expect(t.shape).toEqual([1, 4, 8]);
        expect((await arr(t)).slice(0, 16)).toEqual([0, 1, 4, 5, 16, 17, 20, 21, 2, 3, 6, 7, 18, 19, 22, 23]);
      }
    }),
  );

  for (const [N, C, H, W, PH, PW] of CASES) {
    test(
      `values and gradients equal the reference both ways: x ${N}x${C}x${H}x${W}, patch ${PH}x${PW}`,
      scoped(async () => {
        const o = { device: "cpu" as const, dtype: "f64" as const };
        const g = s.patchGeometry([N, C, H, W], [PH, PW]);
        const L = g.GH * g.GW, D = C * PH * PW;
        const x0 = s.randn([N, C, H, W], { seed: 1, ...o });
        const t0 = s.randn([N, L, D], { seed: 2, ...o });
        const s3 = (t: Tensor) => ({ data: t.storage.data!, off: t.offset, s: t.strides });
        const tokRef = patchifyRef(g, strided4(x0)), imgRef = unpatchifyRef(g, s3(t0));
        // the adjoint of a permutation is its inverse: the references give each other's gradients
        const dxRef = unpatchifyRef(g, s3(t0)), dtRef = patchifyRef(g, strided4(x0));
        // v2 (vec4) where the patch width allows it, on a contiguous x; v1 on a transposed view
        const versions = PW % 4 === 0 ? ["v1", "v2"] as const : ["v1"] as const;
        for (const device of DEVICES) {
          for (const dtype of device === "cpu" ? ["f64", "f32"] as const : ["f32"] as const) {
            for (const version of versions) {
              const leaf = async (t: Tensor, transposed: boolean) => {
                const src = transposed ? t.transpose(2, 3).contiguous().transpose(2, 3) : t;
                const l = (await s.cast(src, dtype).to(device)).detach();
                l.requiresGrad = true;
                return l;
              };
              const x = await leaf(x0, version === "v1"), t = await leaf(t0, false);
              const tok = s.patchify(x, [PH, PW], { version });
              const img = s.unpatchify(t, [PH, PW], [H, W], { version });
              tok.mul(await s.cast(t0, dtype).to(device)).sum().backward(); // dx = unpatchify(t0)
              img.mul(await s.cast(x0, dtype).to(device)).sum().backward(); // dt = patchify(x0)
              const what = `${device} ${dtype} ${version}`;
              try {
                expect(tok.shape).toEqual([N, L, D]);
                expect(img.shape).toEqual([N, C, H, W]);
                // a rearrangement: exact in every dtype (f32 holds the rounded f64 values exactly)
                const f32 = (a: ArrayLike<number>) => Array.from(dtype === "f64" ? a : Float32Array.from(a));
                expect(await arr(tok)).toEqual(f32(tokRef));
                expect(await arr(img)).toEqual(f32(imgRef));
                expect(await arr(x.grad!)).toEqual(f32(dxRef));
                expect(await arr(t.grad!)).toEqual(f32(dtRef));
              } catch (e) {
                throw new Error(`${what}: ${(e as Error).message}`);
              } finally {
                x.zeroGrad();
                t.zeroGrad();
              }
            }
          }
        }
      }),
    );
  }

  test(
    "patchify times the flattened stem weight equals ViT's patch-embedding conv2d (kernel = stride = patch)",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.randn([2, 3, 12, 8], { seed: 3, device });
        const w = s.randn([5, 3, 4, 4], { seed: 4, device });
        const viaTokens = s.matmul(s.patchify(x, 4), w.reshape([5, 48]).transpose(0, 1)); // (N, L, O)
        const viaConv = s.conv2d(x, w, { stride: 4 }).reshape([2, 5, 6]).transpose(1, 2); // (N, L, O)
        assertClose(await arr(viaTokens), await arr(viaConv.contiguous()), { atol: 1e-5, rtol: 1e-5 });
      }
    }),
  );

  test(
    "equals the view composition reshape -> permute -> reshape, and unpatchify undoes it",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.randn([2, 3, 6, 10], { seed: 5, device });
        const views = x.reshape([2, 3, 2, 3, 5, 2]).permute([0, 2, 4, 1, 3, 5]).reshape([2, 10, 18]);
        expect(await arr(s.patchify(x, [3, 2]))).toEqual(await arr(views));
        expect(await arr(s.unpatchify(s.patchify(x, [3, 2]), [3, 2], [6, 10]))).toEqual(await arr(x));
      }
    }),
  );

  test(
    "testOp: both backends and finite differences, on transposed inputs",
    scoped(async () => {
      await testOp([[1, 2, 4, 6]], (x) => s.patchify(x.transpose(2, 3), [3, 2]));
      await testOp([[2, 8, 6]], (t) => s.unpatchify(t.transpose(1, 2), 2, [4, 6]));
    }),
  );

  test(
    "bad input throws a ConvError naming what is wrong",
    scoped(() => {
      const bad: [() => unknown, string][] = [
        [() => s.patchify(s.zeros([1, 3, 30, 32]), 16), "the patch 16x16 does not divide the image 30x32"],
        [() => s.patchify(s.zeros([1, 3, 32, 30]), [8, 4]), "the patch 8x4 does not divide the image 32x30"],
        [() => s.patchify(s.zeros([3, 32, 32]), 4), "patchify: x must be (N, C, H, W), got [3, 32, 32]"],
        [() => s.patchify(s.zeros([1, 3, 8, 8]), 0), "patch must be an integer >= 1 or two of them, got 0"],
        [() => s.unpatchify(s.zeros([1, 3, 12]), 2, [4, 4]), "3 tokens (tokens [1, 3, 12]) do not tile"],
        [() => s.unpatchify(s.zeros([1, 5, 12]), 2, [4, 4]), "do not tile the image 4x4"],
        [() => s.unpatchify(s.zeros([1, 4, 10]), 2, [4, 4]), "the token width 10"],
        [() => s.unpatchify(s.zeros([4, 12]), 2, [4, 4]), "tokens must be (N, L, D), got [4, 12]"],
        [() => s.unpatchify(s.zeros([1, 4, 12]), 2, [5, 4]), "the patch 2x2 does not divide the image 5x4"],
        [
          () => s.patchify(s.zeros([1, 3, 8, 8]), 2, { version: "v2" }),
          "v2 reads vec4s: it needs a contiguous source at an offset divisible by 4 and a patch width divisible by 4",
        ],
        [
          () => s.patchify(s.zeros([1, 3, 8, 8]).transpose(2, 3), 4, { version: "v2" }),
          "contiguous false) and PW 4",
        ],
        [
          () => s.patchify(s.zeros([1, 3, 8, 8]), 4, { version: "v3" as unknown as "v1" }),
          'version must be "auto", "v1" or "v2"',
        ],
      ];
      for (const [f, msg] of bad) expectThrowsNamed(f, s.ConvError, msg);
    }),
  );
});
