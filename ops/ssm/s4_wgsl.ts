/**
 * WGSL recurrent mode of a diagonal (complex) LTI SSM.
 *
 * Versions (numbers are never reused):
 * - recurrent v1: one invocation per (b, d) walks t = 0 .. L-1 with the N complex states in named
 *   registers (N is baked in and every loop over it unrolled: lavapipe keeps a private array indexed in a
 *   loop in memory); the discretized A_bar, B_bar and C (scaled by 2 for conjugate pairs) are read once.
 *   Time runs in slices of S4_MAX_LOOP steps per dispatch, the state carried in a buffer.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup. */
export const S4_WG = 64;

/** Steps one dispatch of recurrent v1 runs (lavapipe stops an invocation's loops after 65535 in total). */
export const S4_MAX_LOOP = 32768;

/**
 * recurrent v1. Uniforms: [Bn*D, D, L, uOff, t0, t1]: steps t0 .. t1 - 1 from the state in `H` (zeros
 * when t0 = 0), which is written back. Bindings: params (D, 6N: A_bar re, im, B_bar re, im, C re, im), u,
 * D skip (D), out, H (Bn*D, 2N).
 */
export function recurrentV1(N: number): string {
  const ns = [...Array(N).keys()];
  const p = (k: number, n: number) => `P[pb + ${k * N + n}u]`;
  return `// s4 recurrent v1 N=${N}
${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> P: array<f32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> SK: array<f32>;
@group(0) @binding(4) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(5) var<storage, read_write> H: array<f32>;
${flatId(S4_WG)}
  let BD = U(0u); let D = U(1u); let L = U(2u);
  if (gid >= BD) { return; }
  let d = gid % D;
  let pb = d * ${6 * N}u;
  ${
    ns.map((n) =>
      `let ar${n} = ${p(0, n)}; let ai${n} = ${p(1, n)}; let br${n} = ${p(2, n)}; let bi${n} = ${p(3, n)};
  let cr${n} = ${p(4, n)}; let ci${n} = ${p(5, n)}; var hr${n} = 0.0; var hi${n} = 0.0;`
    ).join("\n  ")
  }
  let sk = SK[d];
  let row = gid * L;
  let hb = gid * ${2 * N}u;
  if (U(4u) > 0u) {
    ${ns.map((n) => `hr${n} = H[hb + ${2 * n}u]; hi${n} = H[hb + ${2 * n + 1}u];`).join("\n    ")}
  }
  for (var t = U(4u); t < U(5u); t++) {
    let x = X[U(3u) + row + t];
    var y = sk * x;
    ${
    ns.map((n) =>
      `{ let r = ar${n} * hr${n} - ai${n} * hi${n} + br${n} * x;
      hi${n} = ar${n} * hi${n} + ai${n} * hr${n} + bi${n} * x; hr${n} = r;
      y += cr${n} * hr${n} - ci${n} * hi${n}; }`
    ).join("\n    ")
  }
    OUT[row + t] = y;
  }
  ${ns.map((n) => `H[hb + ${2 * n}u] = hr${n}; H[hb + ${2 * n + 1}u] = hi${n};`).join("\n  ")}
}`;
}
