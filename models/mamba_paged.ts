/**
 * A {@link Mamba} layer over a ragged paged batch (what `JambaLM.forwardPaged` runs for its Mamba layers):
 * between calls each sequence's conv and SSM state lives in its slot of the layer's state pools, conv
 * (slots, ED, W - 1) and ssm (slots, ED, N). In one call:
 *
 * - sequences whose new tokens start at position 0 run the block's prompt path (`Mamba.prefill`) from a
 *   zero state, whatever their slot held;
 * - sequences with one new token after earlier ones (decode) are stepped together (`Mamba.stepResidual`,
 *   batch = their count), ordered by slot: their rows and states are gathered into fresh tensors (the
 *   fused `mambaLayerStep` takes operands at offset 0 only) unless they already sit at the start of x and
 *   of the pools, and the new states are written back as one slice per run of consecutive slots;
 * - sequences with several new tokens after earlier ones (a later chunk of a chunked prompt) run the scan
 *   from zero and add the initial state's contribution, which the selective scan has no input for:
 *   with a = softplus(delta + bias) the state after token t is h_t = h_t^0 + exp(A cumsum_t(a)) h_init, so
 *   the output gains C_t . exp(A cumsum_t(a)) h_init and the last state exp(A sum(a)) h_init; the conv
 *   continues from the slot's window (`causalConv1d`'s `initialState`).
 *
 * Every sequence's state after its last new token is written back into its slot.
 * @module
 */

import type { Tensor } from "../runtime/tensor.ts";
import { tidy } from "../runtime/tensor.ts";
import { tensor, zeros } from "../ops/core/creation.ts";
import { copyInto } from "../ops/core/elementwise.ts";
import { concat, gather } from "../ops/core/layout.ts";
import { matmul } from "../ops/core/matmul.ts";
import { causalConv1d, selectiveScan, type SelectiveScanGpuOptions } from "../ops/ssm/mod.ts";
import type { Mamba, MambaState } from "./mamba.ts";
import type { RMSNorm } from "./nn.ts";
import type { PagedBatch } from "./paged.ts";

/** One Mamba layer's state pools: row i of each is state slot i. */
export interface MambaStatePools {
  /** (slots, ED, W - 1): the conv's last inputs per slot. */
  conv: Tensor;
  /** (slots, ED, N): the selective scan's state per slot. */
  ssm: Tensor;
}

/**
 * Zero state pools of `slots` slots for a Mamba block, on its device and in its dtype (not kept: the caller
 * keeps them out of `tidy` scopes).
 */
export function mambaStatePools(m: Mamba, slots: number): MambaStatePools {
  const { ED, N, W } = m.dims;
  const o = { device: m.D.device, dtype: m.D.dtype };
  return { conv: zeros([slots, ED, W - 1], o), ssm: zeros([slots, ED, N], o) };
}

/** How a batch's sequences run through the Mamba layers; made once per call by {@link planMambaBatch}. */
export interface MambaBatchPlan {
  /** Sequences run as chunks (in batch order): first row, rows, slot, and whether they continue a state. */
  chunks: { row: number; len: number; slot: number; fromState: boolean }[];
  /** Decode sequences' rows in slot order, as an index tensor (k), or k when they are rows 0 .. k - 1. */
  stepRows: Tensor | number | null;
  /** Decode sequences' slots in slot order as an index tensor (k), or k when they are slots 0 .. k - 1. */
  stepSlots: Tensor | number | null;
  /** Decode sequences' slots as runs of consecutive slots: [first slot, count], in slot order. */
  stepRuns: [number, number][];
  /** Decode sequences in all. */
  numStep: number;
  /** (N) i32: row r of the output is row inv[r] of chunks-then-steps order; null when that is batch order. */
  inv: Tensor | null;
}

/**
 * Sorts a batch's sequences into zero-state chunks, chunks continuing a slot's state and decode steps, and
 * makes the index tensors the layers share (on `device`; made inside the caller's `tidy`).
 */
export function planMambaBatch(batch: PagedBatch, device: Tensor["device"]): MambaBatchPlan {
  const S = batch.contextLens.length, N = batch.tokens.length, qs = batch.queryStarts;
  const slots = batch.stateSlots!;
  const chunks: MambaBatchPlan["chunks"] = [];
  const steps: { row: number; slot: number }[] = [];
  for (let s = 0; s < S; s++) {
    const len = qs[s + 1] - qs[s], start = batch.contextLens[s] - len;
    if (len === 1 && start > 0) steps.push({ row: qs[s], slot: slots[s] });
    else chunks.push({ row: qs[s], len, slot: slots[s], fromState: start > 0 });
  }
  steps.sort((a, b) => a.slot - b.slot);
  const stepRuns: [number, number][] = [];
  for (const st of steps) {
    const last = stepRuns[stepRuns.length - 1];
    if (last && last[0] + last[1] === st.slot) last[1]++;
    else stepRuns.push([st.slot, 1]);
  }
  const i32 = (a: number[]) => tensor(Int32Array.from(a), { dtype: "i32", device, shape: [a.length] });
  let stepRows: MambaBatchPlan["stepRows"] = null, stepSlots: MambaBatchPlan["stepSlots"] = null;
  if (steps.length) {
    stepRows = steps.every((st, i) => st.row === i) ? steps.length : i32(steps.map((st) => st.row));
    stepSlots = steps.every((st, i) => st.slot === i) ? steps.length : i32(steps.map((st) => st.slot));
  }
  const order = [
    ...chunks.flatMap((c) => Array.from({ length: c.len }, (_, i) => c.row + i)),
    ...steps.map((st) => st.row),
  ];
  const inv = new Array<number>(N);
  order.forEach((row, i) => (inv[row] = i));
  const identity = order.every((row, i) => row === i);
  return { chunks, stepRows, stepSlots, stepRuns, numStep: steps.length, inv: identity ? null : i32(inv) };
}

/**
 * A selective Mamba block over a prompt chunk h (1, L, D) that continues `state` (conv (1, ED, W - 1), ssm
 * (1, ED, N)): `{ y (1, L, D), state }`, equal to stepping the block through the chunk from that state.
 * The scan runs from zero and the initial state's part is added in closed form (see the module comment).
 */
export function mambaChunkFromState(
  m: Mamba,
  h: Tensor,
  state: MambaState,
  scan: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry"> = {},
): { y: Tensor; state: MambaState } {
  const { ED, N, R } = m.dims;
  if (!m.xProj || !m.dtProj) throw new Error("mambaChunkFromState: the block must be selective");
  return tidy(() => {
    const xz = m.inProj.forward(h); // (1, L, 2 ED)
    const xi = xz.slice([null, null, [0, ED]]).transpose(1, 2); // (1, ED, L), a view
    const z = xz.slice([null, null, [ED, 2 * ED]]).transpose(1, 2); // (1, ED, L), a view
    const [xc, conv] = causalConv1d(xi, m.convWeight, {
      bias: m.convBias,
      activation: "silu",
      channelsLast: true,
      initialState: state.conv,
      returnFinalState: true,
    }); // (1, ED, L), (1, ED, W - 1)
    const xdbl = m.xProj!.forward(xc.transpose(1, 2)); // (1, L, R + 2N)
    let dtIn = xdbl.slice([null, null, [0, R]]); // (1, L, R)
    let b = xdbl.slice([null, null, [R, R + N]]); // (1, L, N)
    let c = xdbl.slice([null, null, [R + N, R + 2 * N]]); // (1, L, N)
    if (m.dtNorm && m.BNorm && m.CNorm) {
      [dtIn, b, c] = [m.dtNorm.forward(dtIn), m.BNorm.forward(b), m.CNorm.forward(c)];
    }
    const dt = matmul(dtIn, m.dtProj!.weight).transpose(1, 2); // (1, ED, L)
    const A = m.A(); // (ED, N)
    const [y0, last0] = selectiveScan(xc, dt, A, b.transpose(1, 2), c.transpose(1, 2), {
      ...scan,
      deltaBias: m.dtProj!.bias,
      deltaSoftplus: true,
      channelsLast: true,
      returnLastState: true,
    }); // (1, ED, L), (1, ED, N): from a zero state, without the skip and the gate
    const a = dt.add(m.dtProj!.bias!.reshape([ED, 1])).softplus(); // (1, ED, L)
    const decay = a.cumsum(-1).unsqueeze(-1).mul(A.unsqueeze(1)).exp(); // (1, ED, L, N)
    const hInit = decay.mul(state.ssm.unsqueeze(2)); // (1, ED, L, N): h_init's part of each h_t
    const y = y0.add(hInit.mul(c.unsqueeze(1)).sum(-1)); // (1, ED, L)
    const L = h.shape[1];
    const ssm = last0.add(hInit.slice([null, null, L - 1])); // (1, ED, N)
    const out = y.add(xc.mul(m.D.reshape([ED, 1]))).mul(z.silu()); // (1, ED, L)
    return { y: m.outProj.forward(out.transpose(1, 2)), state: { conv, ssm } }; // (1, L, D)
  });
}

/**
 * The residual Mamba layer x + Mamba(norm x) over a ragged batch's rows x (N, D) -> (N, D), reading each
 * sequence's state from its slot of `pools` and writing the state after its last new token back.
 */
export function mambaPagedLayer(
  m: Mamba,
  norm: RMSNorm,
  x: Tensor,
  pools: MambaStatePools,
  plan: MambaBatchPlan,
  scan: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry"> = {},
): Tensor {
  const D = x.shape[1];
  return tidy(() => {
    const pieces: Tensor[] = [];
    const put = (pool: Tensor, slot: number, n: number, src: Tensor) =>
      copyInto(pool.slice([[slot, slot + n]]), src);
    for (const c of plan.chunks) {
      const xs = x.slice([[c.row, c.row + c.len]]).unsqueeze(0); // (1, len, D)
      const h = norm.forward(xs);
      const r = c.fromState
        ? mambaChunkFromState(m, h, {
          conv: pools.conv.slice([[c.slot, c.slot + 1]]),
          ssm: pools.ssm.slice([[c.slot, c.slot + 1]]),
        }, scan)
        : m.prefill(h);
      pieces.push(xs.add(r.y).reshape([c.len, D])); // (len, D)
      put(pools.conv, c.slot, 1, r.state.conv);
      put(pools.ssm, c.slot, 1, r.state.ssm);
    }
    if (plan.stepRows !== null && plan.stepSlots !== null) {
      const pick = (t: Tensor, idx: Tensor | number) =>
        typeof idx === "number" ? t.slice([[0, idx]]) : gather(t, idx); // (k, ...) at offset 0
      const xs = pick(x, plan.stepRows); // (k, D)
      const read = (pool: Tensor) => pick(pool, plan.stepSlots!); // (k, ...)
      const r = m.stepResidual(xs, { conv: read(pools.conv), ssm: read(pools.ssm) }, norm);
      pieces.push(r.y); // (k, D)
      let off = 0;
      for (const [s, n] of plan.stepRuns) {
        put(pools.conv, s, n, r.state.conv.slice([[off, off + n]]));
        put(pools.ssm, s, n, r.state.ssm.slice([[off, off + n]]));
        off += n;
      }
    }
    const y = pieces.length === 1 ? pieces[0] : concat(pieces, 0); // (N, D), chunks then steps
    return plan.inv ? gather(y, plan.inv) : y; // (N, D), batch order
  });
}
