/**
 * One step of the selective scan for recurrent decoding (mamba's `selective_state_update`). The composed
 * version (core ops, either device, differentiable through autograd) is the reference of the fused WebGPU
 * kernel (`step_wgsl.ts`, scan step v1), which runs when no gradient is recorded: decoding.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { isGradEnabled } from "../../runtime/autograd.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { add, contiguous, exp, mul, silu, softplus } from "../core/elementwise.ts";
import { sum } from "../core/reduce.ts";
import { empty, Uniforms } from "../core/util.ts";
import { SCAN_STEP_WORDS, scanStepV1, STEP_WG } from "./step_wgsl.ts";

/** Options of {@link selectiveScanStep}: the scan's, with z (B, D) for one step. */
export interface SelectiveScanStepOptions {
  /** Skip connection (D). */
  D?: Tensor | null;
  /** Gate (B, D). */
  z?: Tensor | null;
  /** Added to delta before the softplus (D). */
  deltaBias?: Tensor | null;
  /** delta = softplus(delta + deltaBias). Default false. */
  deltaSoftplus?: boolean;
  /**
   * "fused" (one WebGPU kernel; f32, no gradient recorded), "composed" (core ops, differentiable), or
   * "auto" (default): fused where it can run. The cpu always composes (the float64 reference).
   */
  version?: "auto" | "fused" | "composed";
}

/** (b, g, n) strides of a step's B or C: (B, N) has one group (stride 0), (B, G, N) its own. */
function groupStrides(x: Tensor): [number, number, number] {
  return x.rank === 2 ? [x.strides[0], 0, x.strides[1]] : [x.strides[0], x.strides[1], x.strides[2]];
}

/** The fused step: one dispatch; u, delta, z, B and C read through their strides. */
function fusedStep(
  state: Tensor,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanStepOptions,
): { y: Tensor; state: Tensor } {
  const [Bn, D, N] = state.shape;
  const G = B.rank === 2 ? 1 : B.shape[1], GC = C.rank === 2 ? 1 : C.shape[1];
  const st = contiguous(state), a = contiguous(A);
  const skip = opts.D ? contiguous(opts.D) : null, bias = opts.deltaBias ? contiguous(opts.deltaBias) : null;
  const y = empty("selectiveScanStep", [Bn, D], "f32", "webgpu");
  const next = empty("selectiveScanStep state", [Bn, D, N], "f32", "webgpu");
  try {
    const v = { N, hasD: !!skip, hasZ: !!opts.z, hasBias: !!bias, softplus: !!opts.deltaSoftplus };
    const z = opts.z ?? null;
    const ins = [st, u, delta, a, B, C, skip, z, bias].filter((t): t is Tensor => !!t);
    gpu().run({
      name: "selectiveScanStep",
      key: `step v1|N${N}|${v.hasD}|${v.hasZ}|${v.hasBias}|${v.softplus}`,
      source: () => scanStepV1(v),
      inputs: ins.map((t) => t.storage.buffer!),
      outputs: [y.storage.buffer!, next.storage.buffer!],
      uniforms: new Uniforms().u32(Bn, D, D / G, st.offset, u.offset, ...u.strides, delta.offset)
        .u32(...delta.strides, z?.offset ?? 0, ...(z?.strides ?? [0, 0]), B.offset, ...groupStrides(B))
        .u32(C.offset, ...groupStrides(C), a.offset, skip?.offset ?? 0, bias?.offset ?? 0, D / GC)
        .padTo(SCAN_STEP_WORDS).build(),
      workgroups: grid(Bn * D, STEP_WG),
    });
  } catch (e) {
    y.dispose();
    next.dispose();
    throw e;
  } finally {
    for (const t of [st, a, skip, bias]) t?.dispose();
  }
  return { y, state: next };
}

/** B or C of one step as (Bn, D, N) for broadcasting: (B, N) or grouped (B, G, N). */
function perChannel(op: string, name: string, x: Tensor, Bn: number, D: number, N: number): Tensor {
  const s = x.shape;
  const bad = () =>
    new Error(
      `${op}: ${name} must be (B, N) = [${Bn}, ${N}] or grouped (B, G, N) with G dividing D = ${D}; ` +
        `got ${fmt(s)}`,
    );
  if (x.rank === 2 && s[0] === Bn && s[1] === N) return x.reshape([Bn, 1, N]);
  if (x.rank === 3 && s[0] === Bn && s[2] === N && s[1] >= 1 && D % s[1] === 0) {
    const G = s[1];
    return x.reshape([Bn, G, 1, N]).expand([Bn, G, D / G, N]).reshape([Bn, D, N]);
  }
  throw bad();
}

/**
 * Advances the selective scan by one token: state (B, D, N), u and delta (B, D), A (D, N), B and C
 * (B, N) or grouped (B, G, N) (as mamba's `selective_state_update`; a shared (D, N) B is passed as
 * `B.unsqueeze(0).expand([Bn, D, N])`, G = D); options D (D), z (B, D), deltaBias (D), deltaSoftplus.
 * Returns `{ y (B, D), state (B, D, N) }` with the arithmetic of one time step of `selectiveScan`
 * (state' = exp(delta A) state + delta B u, y = <state', C> + D u, times silu(z)), so decoding token by
 * token from the scan's last state continues the scan.
 *
 * @example
 * ```ts
 * import { selectiveScanStep, tensor, zeros } from "seqlab";
 * const state = zeros([1, 1, 1]);
 * const A = tensor([[0]]), B = tensor([[1]]), C = tensor([[2]]); // (D, N), (B, N), (B, N)
 * let s = state;
 * for (const x of [1, 2, 3]) {
 *   const r = selectiveScanStep(s, tensor([[x]]), tensor([[1]]), A, B, C);
 *   console.log(await r.y.item()); // 2, 6, 12: the running sum of u, times C
 *   s = r.state;
 * }
 * ```
 */
export function selectiveScanStep(
  state: Tensor,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanStepOptions = {},
): { y: Tensor; state: Tensor } {
  const op = "selectiveScanStep";
  const all = [state, u, delta, A, B, C, opts.D, opts.z, opts.deltaBias].filter((t): t is Tensor => !!t);
  for (const t of all) {
    t.check(op);
    if (!isFloat(t.dtype)) throw new Error(`${op}: needs float tensors, got ${t.describe()}`);
    if (t.device !== state.device) {
      throw new Error(`${op}: tensors are on different devices: ${all.map((x) => x.describe()).join(", ")}`);
    }
  }
  if (state.rank !== 3) throw new Error(`${op}: state must be (B, D, N), got ${state.describe()}`);
  const [Bn, D, N] = state.shape;
  for (const [name, t] of [["u", u], ["delta", delta], ["z", opts.z]] as const) {
    if (t && (t.rank !== 2 || t.shape[0] !== Bn || t.shape[1] !== D)) {
      throw new Error(
        `${op}: ${name} must be (B, D) = [${Bn}, ${D}] (from state ${fmt(state.shape)}), got ${fmt(t.shape)}`,
      );
    }
  }
  if (A.rank !== 2 || A.shape[0] !== D || A.shape[1] !== N) {
    throw new Error(
      `${op}: A must be (D, N) = [${D}, ${N}] (from state ${fmt(state.shape)}), got ${fmt(A.shape)}`,
    );
  }
  for (const [name, t] of [["D", opts.D], ["deltaBias", opts.deltaBias]] as const) {
    if (t && (t.rank !== 1 || t.shape[0] !== D)) {
      throw new Error(`${op}: ${name} must be (D) = [${D}], got ${fmt(t.shape)}`);
    }
  }
  const version = opts.version ?? "auto";
  if (!["auto", "fused", "composed"].includes(version)) {
    throw new Error(`${op}: version must be "auto", "fused" or "composed", got ${JSON.stringify(version)}`);
  }
  const Bc0 = tidy(() => perChannel(op, "B", B, Bn, D, N)),
    Cc0 = tidy(() => perChannel(op, "C", C, Bn, D, N));
  Bc0.dispose();
  Cc0.dispose();
  const graph = isGradEnabled() && all.some((t) => t.requiresGrad);
  const fusable = state.device === "webgpu" && all.every((t) => t.dtype === "f32") && !graph;
  if (version === "fused" && !fusable) {
    throw new Error(
      `${op}: version "fused" runs on webgpu in f32 with no gradient recorded; got ${state.describe()}` +
        `${graph ? " with inputs that require grad" : ""} (use "composed" or "auto")`,
    );
  }
  if (fusable && version !== "composed") return fusedStep(state, u, delta, A, B, C, opts);
  return tidy(() => {
    const Bc = perChannel(op, "B", B, Bn, D, N), Cc = perChannel(op, "C", C, Bn, D, N); // (B, D, N) views
    let dt = opts.deltaBias ? add(delta, opts.deltaBias) : delta;
    if (opts.deltaSoftplus) dt = softplus(dt);
    const dt3 = dt.unsqueeze(-1); // (B, D, 1)
    const next = add(mul(exp(mul(dt3, A)), state), mul(mul(dt3, u.unsqueeze(-1)), Bc)); // (B, D, N)
    let y = sum(mul(next, Cc), -1); // (B, D)
    if (opts.D) y = add(y, mul(u, opts.D));
    if (opts.z) y = mul(y, silu(opts.z));
    return { y, state: next };
  });
}
