/**
 * WGSL of the fused optimizer step (SGD with momentum/Nesterov, Adam, AdamW) and of clipGradNorm's
 * kernels: programs over many tensors at once.
 *
 * Layout shared by all of them: a dispatch covers slots (a slot: a range of one tensor); the workgroups
 * of all slots lie end to end along x and each finds its slot by a binary search in the uniforms. A
 * slot's tensors are one tuple of buffers (the step: parameter and gradient), bound as b{j}_{t} (tuple t,
 * position j) among up to maxStorageBuffersPerShaderStage bindings, so nothing is concatenated or
 * copied back. The kernel switches on the slot's tuple once per invocation, each case holding the whole
 * loop with its own buffers: a switch inside the loop (a load picked per element) ran 3x slower on
 * lavapipe, which runs the cases of a divergent-looking switch one after another.
 *
 * Versions:
 * - step v1: each invocation reads p, g and the state and writes p and the state in place for
 *   OPTIM_PER_INVOCATION elements (vec4s when the slot's offsets are multiples of 4); the state is one
 *   flat tensor per slot name. Replaces a chain of ~12 elementwise ops over concatenated copies.
 * - clipGradNorm v1: a sum-of-squares pass (a partial sum per invocation), one workgroup summing the
 *   partials into the norm and the scale, and a scaled-copy pass; replaces a concatenation of every
 *   gradient, a multiply per gradient and a chain of scalar ops.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { enables, uniformDecl } from "./util.ts";

/** Invocations per workgroup of the step. */
export const OPTIM_WG = 64;
/** Elements (or vec4s) each invocation updates. */
export const OPTIM_PER_INVOCATION = 8;
/** Uniform words before the slot table: the kernel's globals (words 0 .. 6) and the slot count (word 7). */
export const OPTIM_GLOBAL_WORDS = 8;
/** Uniform words per slot: [n, tuple, the kernel's own (up to 9)], then the slot's first workgroup. */
export const OPTIM_SLOT_WORDS = 12;

/**
 * WGSL prelude of the slot kernels: `slot(w)` finds the slot that workgroup w belongs to (a binary search
 * over the slots' first workgroups) and returns its first uniform word, `chunk(w, S)` the workgroup's
 * index within its slot. Laid end to end, no workgroup is idle (a grid of slots x longest slot left
 * most of them empty, and each costs a launch on lavapipe).
 */
function slotFns(): string {
  const first = (s: string) => `U(${s} + ${OPTIM_SLOT_WORDS - 1}u)`;
  return `fn slot(w: u32) -> u32 {
  var lo = 0u; var hi = U(7u);
  loop {
    if (hi - lo <= 1u) { break; }
    let mid = (lo + hi) / 2u;
    if (${first(`${OPTIM_GLOBAL_WORDS}u + mid * ${OPTIM_SLOT_WORDS}u`)} <= w) { lo = mid; } else { hi = mid; }
  }
  return ${OPTIM_GLOBAL_WORDS}u + lo * ${OPTIM_SLOT_WORDS}u;
}
fn chunk(w: u32, S: u32) -> u32 { return w - ${first("S")}; }`;
}

/** Element type in storage and in the math, with the conversions between them. */
function types(dtype: DType, vec4: boolean) {
  const same = vec4 || dtype === "f32";
  const st = vec4 ? "vec4<f32>" : wgslType(dtype);
  return {
    st,
    load: (e: string) => (same ? e : `f32(${e})`),
    store: (e: string) => (same ? e : `${st}(${e})`),
  };
}

/**
 * Declarations of the tuple buffers b{j}_{t} (position j of tuple t, binding 1 + j * tuples + t;
 * `writable[j]` says whether position j is read_write), then `extra` named buffers after them.
 */
function tupleDecls(
  dtype: DType,
  vec4: boolean,
  tuples: number,
  writable: readonly boolean[],
  extra: [string, string, boolean][] = [],
): string {
  const { st } = types(dtype, vec4);
  const lines: string[] = [];
  writable.forEach((w, j) => {
    for (let t = 0; t < tuples; t++) {
      lines.push(
        `@group(0) @binding(${1 + j * tuples + t}) var<storage, ${
          w ? "read_write" : "read"
        }> b${j}_${t}: array<${st}>;`,
      );
    }
  });
  extra.forEach(([name, type, w], k) => {
    const at = 1 + writable.length * tuples + k;
    lines.push(
      `@group(0) @binding(${at}) var<storage, ${w ? "read_write" : "read"}> ${name}: array<${type}>;`,
    );
  });
  return lines.join("\n");
}

/** `switch k` over the tuples, case t running `body` with its buffers named B0, B1, ... replaced. */
function tupleSwitch(tuples: number, positions: number, body: string): string {
  const cases = Array.from({ length: tuples }, (_, t) => {
    let b = body;
    for (let j = 0; j < positions; j++) b = b.replaceAll(`B${j}[`, `b${j}_${t}[`);
    return `${t === tuples - 1 ? "default" : `case ${t}u`}: {${b}
    }`;
  });
  return `switch k {
    ${cases.join("\n    ")}
  }`;
}

/** What the step's shader depends on besides the dtype and the tuple count. */
export interface StepVariant {
  kind: "sgd" | "adam";
  /** Adds wd p to the gradient (SGD, Adam). */
  l2: boolean;
  /** Scales p by c3 = 1 - lr wd first (AdamW). */
  decay: boolean;
  /** SGD keeps a momentum buffer. */
  momentum: boolean;
  /** SGD's Nesterov update. */
  nesterov: boolean;
}

/**
 * The step over `tuples` (parameter, gradient) pairs: b0_t parameters (read_write), b1_t gradients, then
 * the state slots s0, s1. Globals: adam [β1, 1 - β1, β2, 1 - β2, eps, wd], sgd [μ, 1 - dampening, wd].
 * Per slot [n, tuple, pOff, gOff, sOff, first, c1, c2, c3]: c1 is lr / (1 - β1^t) (SGD: lr), c2
 * 1 / sqrt(1 - β2^t), c3 1 - lr wd; `first` reads the state as zeros (SGD: the buffer starts at g).
 * Offsets and n count elements of the storage type (vec4s when `vec4`).
 */
export function fusedStepSource(
  v: StepVariant,
  dtype: DType,
  vec4: boolean,
  tuples: number,
  slots: number,
): string {
  const { st, load, store } = types(dtype, vec4);
  const ns = v.kind === "adam" ? 2 : v.momentum ? 1 : 0;
  const state = Array.from({ length: ns }, (_, k) => [`s${k}`, st, true] as [string, string, boolean]);
  let rule: string;
  if (v.kind === "adam") {
    rule = `var g = g0;${v.l2 ? "\n        g = g0 + p * k5;" : ""}
        let pv = ${v.decay ? "p * c3" : "p"};
        var m = g * k1; var w = (g * g) * k3;
        if (!first) {
          m = ${load("s0[so + i]")} * k0 + m;
          w = ${load("s1[so + i]")} * k2 + w;
        }
        s0[so + i] = ${store("m")};
        s1[so + i] = ${store("w")};
        let denom = sqrt(w) * c2 + k4;
        let q = pv - (m / denom) * c1;`;
  } else {
    rule = `var g = g0;${v.l2 ? "\n        g = g0 + p * k2;" : ""}${
      v.momentum
        ? `
        var buf = g;
        if (!first) { buf = ${load("s0[so + i]")} * k0 + g * k1; }
        s0[so + i] = ${store("buf")};
        g = ${v.nesterov ? "g + buf * k0" : "buf"};`
        : ""
    }
        let q = p - g * c1;`;
  }
  const body = `
      for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
        let i = i0 + e * ${OPTIM_WG}u;
        if (i >= n) { break; }
        let p = ${load("B0[po + i]")};
        let g0 = ${load("B1[go + i]")};
        ${rule}
        B0[po + i] = ${store("q")};
      }`;
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${tupleDecls(dtype, vec4, tuples, [true, false], state)}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  if (i0 >= n) { return; }
  let k = U(S + 1u); let po = U(S + 2u); let go = U(S + 3u); let so = U(S + 4u);
  let first = U(S + 5u) == 1u;
  let c1 = UF(S + 6u); let c2 = UF(S + 7u); let c3 = UF(S + 8u);
  // the globals read once: inside the loop the compiler reloads them after every store (the uniform
  // block is a storage binding on lavapipe, which the stores might alias), at twice the kernel's cost
  let k0 = UF(0u); let k1 = UF(1u); let k2 = UF(2u); let k3 = UF(3u); let k4 = UF(4u); let k5 = UF(5u);
  ${tupleSwitch(tuples, 2, body)}
}`;
}

/**
 * clipGradNorm pass 1, the sum of squares over the slots of several gradients (b0_t): invocation lid of
 * workgroup w sums the squares of its OPTIM_PER_INVOCATION elements (vec4s) of its slot in f32 into
 * partial[base + w * OPTIM_WG + lid]. No workgroup barrier: on lavapipe a barrier costs more than the
 * extra partials. Globals: [base]; per slot [n, tuple, off] (in vec4s when `vec4`).
 */
export function sumSquaresSource(dtype: DType, vec4: boolean, tuples: number, slots: number): string {
  const { load } = types(dtype, vec4);
  const body = `
      for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
        let i = i0 + e * ${OPTIM_WG}u;
        if (i >= n) { break; }
        let x = ${load("B0[off + i]")};
        acc += ${vec4 ? "dot(x, x)" : "x * x"};
      }`;
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${tupleDecls(dtype, vec4, tuples, [false], [["partial", "f32", true]])}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S); let k = U(S + 1u); let off = U(S + 2u);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  var acc = 0.0;
  if (i0 < n) {
    ${tupleSwitch(tuples, 1, body)}
  }
  partial[U(0u) + wid.x * ${OPTIM_WG}u + lid] = acc;
}`;
}

/** Lanes of clipGradNorm's pass 2 (one workgroup). */
export const NORM_WG = 256;

/**
 * clipGradNorm pass 2, one workgroup: norm = sqrt(sum of partial[0 .. count)), each lane summing a
 * strided share, lane 0 the lanes' sums; writes out = [norm, min(maxNorm / (norm + 1e-6), 1)].
 * Uniforms: [count, maxNorm (f32)].
 */
export function normScaleSource(): string {
  return `${uniformDecl(4)}
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> red: array<f32, ${NORM_WG}>;
@compute @workgroup_size(${NORM_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < U(0u); i += ${NORM_WG}u) { acc += partial[i]; }
  red[lid] = acc;
  workgroupBarrier();
  if (lid == 0u) {
    var s = 0.0;
    for (var k = 0u; k < ${NORM_WG}u; k++) { s += red[k]; }
    let norm = sqrt(s);
    out[0] = norm;
    out[1] = min(UF(1u) / (norm + 1e-6), 1.0);
  }
}`;
}

/**
 * clipGradNorm pass 3, scaled copies: out (b0_t, written) = g (b1_t) * scale[U(0)] over the slots of
 * several gradients, then `scale` (f32). Per slot [n, tuple, gOff, oOff].
 */
export function scaleCopySource(dtype: DType, vec4: boolean, tuples: number, slots: number): string {
  const { load, store } = types(dtype, vec4);
  const body = `
      for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
        let i = i0 + e * ${OPTIM_WG}u;
        if (i >= n) { break; }
        B0[oo + i] = ${store(`${load("B1[go + i]")} * c`)};
      }`;
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${tupleDecls(dtype, vec4, tuples, [true, false], [["scale", "f32", false]])}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  if (i0 >= n) { return; }
  let k = U(S + 1u); let go = U(S + 2u); let oo = U(S + 3u);
  let c = scale[U(0u)];
  ${tupleSwitch(tuples, 2, body)}
}`;
}
