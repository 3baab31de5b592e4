/**
 * Gradient checking: analytic gradients (on the inputs' device) against central finite differences
 * computed in float64 on the reference (cpu) backend.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { noGrad } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { randn } from "./creation.ts";
import { cast, mul } from "./elementwise.ts";
import { sum } from "./reduce.ts";

/** Options for {@link gradcheck}. */
export interface GradcheckOptions {
  /** Finite-difference step (default 1e-6). */
  eps?: number;
  /** Absolute tolerance (default 1e-7 for f64 inputs, 1e-4 for f32 or f16). */
  atol?: number;
  /** Relative tolerance (default 1e-5 for f64 inputs, 2e-3 for f32 or f16). */
  rtol?: number;
  /** Seed of the random projection of the output. */
  seed?: number;
}

/** What {@link gradcheck} measured: the largest |analytic - numeric| per float input. */
export interface GradcheckReport {
  /** The largest |analytic - numeric| of each float input, in input order. */
  maxError: number[];
}

/**
 * Checks `fn`'s backward: L = sum(fn(...inputs) * w) for a fixed random w; dL/dx from `backward()` on the
 * inputs' own device against (L(x + eps) - L(x - eps)) / 2 eps per element, in float64 on cpu. Integer
 * inputs (indices) are passed through unchanged. Throws naming the input and element on a mismatch.
 *
 * @example
 * ```ts
 * import { gradcheck, tensor } from "seqlab";
 * const report = await gradcheck((x) => x.tanh().sum(), [tensor([0.1, -0.4, 2], { device: "cpu", dtype: "f64" })]);
 * console.log(report.maxError[0] < 1e-8); // true
 * ```
 */
export async function gradcheck(
  fn: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: GradcheckOptions = {},
): Promise<GradcheckReport> {
  const eps = opts.eps ?? 1e-6;
  const lowPrecision = inputs.some((t) => t.dtype === "f32" || t.dtype === "f16");
  const atol = opts.atol ?? (lowPrecision ? 1e-4 : 1e-7);
  const rtol = opts.rtol ?? (lowPrecision ? 2e-3 : 1e-5);
  return await tidy(async () => {
    // float64 copies on cpu for the numeric side
    const x64 = await Promise.all(inputs.map(async (t) => {
      const c = await t.to("cpu");
      return isFloat(t.dtype) ? cast(c, "f64") : c;
    }));
    const probe = noGrad(() => fn(...x64));
    const w = randn(probe.shape, { seed: opts.seed ?? 7, device: "cpu", dtype: "f64" });
    const loss = async () => await noGrad(() => sum(mul(fn(...x64), w))).item();

    // analytic, on the inputs' device
    const leaves = await Promise.all(inputs.map(async (t) => {
      // detached: a copy of an input that itself requires grad (a parameter) must be a leaf, not a node
      // that sends its gradient on to the original
      const c = await t.detach().to(t.device);
      if (isFloat(t.dtype)) c.requiresGrad = true;
      return c;
    }));
    const out = fn(...leaves);
    const wDev = await cast(w, out.dtype === "f64" ? "f64" : "f32").to(out.device);
    const L = sum(mul(out, out.dtype === "f16" ? cast(wDev, "f16") : wDev));
    L.backward();

    const maxError: number[] = [];
    for (let k = 0; k < inputs.length; k++) {
      if (!isFloat(inputs[k].dtype)) continue;
      const analytic = leaves[k].grad ? await leaves[k].grad!.toArray() : new Float64Array(inputs[k].size);
      leaves[k].zeroGrad();
      const data = x64[k].storage.data!;
      let worst = 0;
      for (let e = 0; e < inputs[k].size; e++) {
        const keepV = data[e];
        data[e] = keepV + eps;
        const up = await loss();
        data[e] = keepV - eps;
        const down = await loss();
        data[e] = keepV;
        const numeric = (up - down) / (2 * eps);
        const err = Math.abs(analytic[e] - numeric);
        worst = Math.max(worst, err);
        if (!(err <= atol + rtol * Math.abs(numeric))) {
          throw new Error(
            `gradcheck: input ${k} ${inputs[k].describe()}, element ${e}: analytic ${
              analytic[e]
            }, numeric ${numeric} ` +
              `(|error| ${err.toExponential(2)} > atol ${atol} + rtol ${rtol} x |numeric|)`,
          );
        }
      }
      maxError.push(worst);
    }
    return { maxError };
  });
}
