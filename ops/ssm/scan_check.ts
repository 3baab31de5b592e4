/**
 * Input validation shared by the selective scan, its reference and its single-step update: shapes,
 * layouts of B and C, dtypes and devices, with errors that name every shape involved.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";

/** Options of the selective scan, named as in mamba's `selective_scan_ref`. */
export interface SelectiveScanOptions {
  /** Skip connection (D): out += D u. */
  D?: Tensor | null;
  /** Gate (B, D, L): out *= silu(z). */
  z?: Tensor | null;
  /** Added to delta before the softplus (D). */
  deltaBias?: Tensor | null;
  /** delta = softplus(delta + deltaBias). Default false. */
  deltaSoftplus?: boolean;
  /** Also return the last state (B, D, N). Default false. */
  returnLastState?: boolean;
}

/** The sizes of validated scan inputs. */
export interface ScanDims {
  /** Batch. */
  Bn: number;
  /** Channels. */
  D: number;
  /** State size. */
  N: number;
  /** Length. */
  L: number;
  /** Groups of B and C (1 for (B, N, L); D when shared, one row per channel). */
  G: number;
  /** Whether B / C are shared (D, N) rather than input-dependent. */
  bShared: boolean;
  cShared: boolean;
  device: DeviceName;
}

/** Checks a B or C operand against (D, N) / (B, N, L) / (B, G, N, L); returns [shared, G]. */
function layoutOf(
  op: string,
  name: string,
  x: Tensor,
  Bn: number,
  D: number,
  N: number,
  L: number,
  context: string,
): [boolean, number] {
  const s = x.shape;
  const bad = () =>
    new Error(
      `${op}: ${name} must be shared (D, N) = [${D}, ${N}], input-dependent (B, N, L) = [${Bn}, ${N}, ${L}] ` +
        `or grouped (B, G, N, L) with G dividing D; got ${fmt(s)} (${context})`,
    );
  if (x.rank === 2) {
    if (s[0] !== D || s[1] !== N) throw bad();
    return [true, D];
  }
  if (x.rank === 3) {
    if (s[0] !== Bn || s[1] !== N || s[2] !== L) throw bad();
    return [false, 1];
  }
  if (x.rank === 4) {
    if (s[0] !== Bn || s[2] !== N || s[3] !== L || s[1] < 1 || D % s[1] !== 0) throw bad();
    return [false, s[1]];
  }
  throw bad();
}

/**
 * Validates the selective scan's inputs (see `selectiveScanRef` for the shapes); returns the sizes.
 * Values are not read here: a positive A is reported by the reference (cpu) or a shader diagnostic.
 */
export function checkScan(
  op: string,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
): ScanDims {
  const opt = [o.D, o.z, o.deltaBias].filter((t): t is Tensor => !!t);
  const all = [u, delta, A, B, C, ...opt];
  for (const t of all) t.check(op);
  const context = `u is ${fmt(u.shape)}, A is ${fmt(A.shape)}`;
  if (u.rank !== 3) throw new Error(`${op}: u must be (B, D, L), got ${u.describe()}`);
  const [Bn, D, L] = u.shape;
  if (L < 1 || D < 1 || Bn < 1) throw new Error(`${op}: u ${fmt(u.shape)} must have B, D and L >= 1`);
  if (delta.rank !== 3 || delta.shape.some((s, i) => s !== u.shape[i])) {
    throw new Error(`${op}: delta must have u's shape (B, D, L) = ${fmt(u.shape)}, got ${fmt(delta.shape)}`);
  }
  if (A.rank !== 2 || A.shape[0] !== D) {
    throw new Error(`${op}: A must be (D, N) with D = ${D} (from u ${fmt(u.shape)}), got ${fmt(A.shape)}`);
  }
  const N = A.shape[1];
  if (N < 1) throw new Error(`${op}: A ${fmt(A.shape)} has no states`);
  const [bShared, gB] = layoutOf(op, "B", B, Bn, D, N, L, context);
  const [cShared, gC] = layoutOf(op, "C", C, Bn, D, N, L, context);
  if (!bShared && !cShared && gB !== gC) {
    throw new Error(`${op}: B and C have different group counts: B is ${fmt(B.shape)}, C is ${fmt(C.shape)}`);
  }
  for (const [name, t] of [["D", o.D], ["deltaBias", o.deltaBias]] as const) {
    if (t && (t.rank !== 1 || t.shape[0] !== D)) {
      throw new Error(`${op}: ${name} must be (D) = [${D}] (from u ${fmt(u.shape)}), got ${fmt(t.shape)}`);
    }
  }
  if (o.z && (o.z.rank !== 3 || o.z.shape.some((s, i) => s !== u.shape[i]))) {
    throw new Error(`${op}: z must have u's shape (B, D, L) = ${fmt(u.shape)}, got ${fmt(o.z.shape)}`);
  }
  for (const t of all) {
    if (!isFloat(t.dtype)) throw new Error(`${op}: needs float tensors, got ${t.describe()}`);
    if (t.device !== u.device) {
      throw new Error(`${op}: tensors are on different devices: ${all.map((x) => x.describe()).join(", ")}`);
    }
  }
  const G = bShared ? (cShared ? 1 : gC) : gB;
  return { Bn, D, N, L, G, bShared, cShared, device: u.device };
}

/** The error for a positive entry of A (the scan would grow without bound). */
export function positiveAMessage(
  op: string,
  d: number,
  n: number,
  v: number,
  shape: readonly number[],
): string {
  return `${op}: A[${d}, ${n}] = ${v} is positive; A ${fmt(shape)} must be non-positive ` +
    `(A = -exp(A_log)) for a stable scan`;
}

/** Throws if a cpu A has a positive entry (WebGPU scans raise a shader diagnostic instead). */
export function checkAHost(op: string, A: Tensor): void {
  if (A.device !== "cpu") return;
  const c = A.contiguous();
  const data = c.storage.data!.subarray(c.offset, c.offset + c.size);
  c.dispose();
  const N = A.shape[1];
  const bad = data.findIndex((v) => v > 0);
  if (bad >= 0) throw new Error(positiveAMessage(op, Math.floor(bad / N), bad % N, data[bad], A.shape));
}
