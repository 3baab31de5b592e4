/**
 * WGSL of the fused optimizer step (SGD with momentum/Nesterov, Adam, AdamW).
 *
 * Versions:
 * - step v1: one dispatch updates the slots of several parameters (a slot: a range of one parameter, its
 *   workgroups laid end to end with the other slots'), each invocation reads p, g and the state and
 *   writes p and the state in place for
 *   OPTIM_PER_INVOCATION elements (vec4 of them when the slot's offsets are multiples of 4). The
 *   parameters and gradients are bound as up to maxStorageBuffersPerShaderStage buffers picked by a
 *   switch on the slot's buffer number, so no concatenation or copy-back is needed; the state is one flat
 *   tensor per slot name. Replaces a chain of ~12 elementwise ops over concatenated copies.
 * - clipGradNorm v1, the same slots over the gradients: a sum-of-squares pass (a partial sum per
 *   invocation), one workgroup summing the partials into the norm and the scale, and a scaled-copy pass;
 *   replaces a concatenation of every gradient, a multiply per gradient and a chain of scalar ops.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { enables, uniformDecl } from "./util.ts";

/** Invocations per workgroup of the step. */
export const OPTIM_WG = 64;
/** Elements (or vec4s) each invocation updates. */
export const OPTIM_PER_INVOCATION = 4;
/** Uniform words before the slot table: the kernel's globals (words 0 .. 6) and the slot count (word 7). */
export const OPTIM_GLOBAL_WORDS = 8;
/** Uniform words per slot: the kernel's (up to 11), then the slot's first workgroup (word 11). */
export const OPTIM_SLOT_WORDS = 12;

/**
 * WGSL prelude of the slot kernels: `slot(w)` finds the slot that workgroup w belongs to (a binary search
 * over the slots' first workgroups) and returns its first uniform word, `chunk(w, S)` the workgroup's
 * index within its slot. The workgroups of all slots lie end to end along x, so no workgroup is idle
 * (a grid of slots x longest slot left most of them empty: each costs a launch on lavapipe).
 */
function slotFns(): string {
  return `fn slot(w: u32) -> u32 {
  var lo = 0u; var hi = U(7u);
  loop {
    if (hi - lo <= 1u) { break; }
    let mid = (lo + hi) / 2u;
    if (U(${OPTIM_GLOBAL_WORDS}u + mid * ${OPTIM_SLOT_WORDS}u + ${
    OPTIM_SLOT_WORDS - 1
  }u) <= w) { lo = mid; } else { hi = mid; }
  }
  return ${OPTIM_GLOBAL_WORDS}u + lo * ${OPTIM_SLOT_WORDS}u;
}
fn chunk(w: u32, S: u32) -> u32 { return w - U(S + ${OPTIM_SLOT_WORDS - 1}u); }`;
}

/** What the step's shader depends on besides the dtype and buffer counts. */
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
 * The step over `nw` writable buffers (parameters, bound first) and `nr` read-only ones (gradients),
 * then the state slots. Globals: adam [β1, 1 - β1, β2, 1 - β2, eps, wd], sgd [μ, 1 - dampening, wd].
 * Per slot, c1 is lr / (1 - β1^t) (SGD: lr), c2 1 / sqrt(1 - β2^t), c3 1 - lr wd; `first` reads the
 * state as zeros (SGD: the buffer starts at g). Offsets and n are in units of the element type (vec4s
 * when `vec4`).
 */
export function fusedStepSource(
  v: StepVariant,
  dtype: DType,
  vec4: boolean,
  nw: number,
  nr: number,
  slots: number,
): string {
  const st = vec4 ? "vec4<f32>" : wgslType(dtype);
  const nb = nw + nr, ns = v.kind === "adam" ? 2 : v.momentum ? 1 : 0;
  const decls = [bufferDecls(dtype, vec4, nw, nb)];
  for (let k = 0; k < ns; k++) {
    decls.push(`@group(0) @binding(${nb + 1 + k}) var<storage, read_write> s${k}: array<${st}>;`);
  }
  const { load, store } = conversions(dtype, vec4);
  let rule: string;
  if (v.kind === "adam") {
    rule = `var g = g0;${v.l2 ? "\n    g = g0 + p * UF(5u);" : ""}
    let pv = ${v.decay ? "p * c3" : "p"};
    var m = g * UF(1u); var w = (g * g) * UF(3u);
    if (!first) {
      m = ${load("s0[so + i]")} * UF(0u) + m;
      w = ${load("s1[so + i]")} * UF(2u) + w;
    }
    s0[so + i] = ${store("m")};
    s1[so + i] = ${store("w")};
    let denom = sqrt(w) * c2 + UF(4u);
    let q = pv - (m / denom) * c1;`;
  } else {
    rule = `var g = g0;${v.l2 ? "\n    g = g0 + p * UF(2u);" : ""}${
      v.momentum
        ? `
    var buf = g;
    if (!first) { buf = ${load("s0[so + i]")} * UF(0u) + g * UF(1u); }
    s0[so + i] = ${store("buf")};
    g = ${v.nesterov ? "g + buf * UF(0u)" : "buf"};`
        : ""
    }
    let q = p - g * c1;`;
  }
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${decls.join("\n")}
${bufferFns(dtype, vec4, nw, nb)}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  if (i0 >= n) { return; }
  let pb = U(S + 1u); let gb = U(S + 2u); let po = U(S + 3u); let go = U(S + 4u); let so = U(S + 5u);
  let first = U(S + 6u) == 1u;
  let c1 = UF(S + 7u); let c2 = UF(S + 8u); let c3 = UF(S + 9u);
  for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
    let i = i0 + e * ${OPTIM_WG}u;
    if (i >= n) { break; }
    let p = ld(pb, po + i);
    let g0 = ld(gb, go + i);
    ${rule}
    sto(pb, po + i, q);
  }
}`;
}

/** Loads widen the stored dtype to f32 math; stores narrow it back. */
function conversions(dtype: DType, vec4: boolean) {
  const same = vec4 || dtype === "f32";
  const st = vec4 ? "vec4<f32>" : wgslType(dtype);
  return {
    load: (e: string) => (same ? e : `f32(${e})`),
    store: (e: string) => (same ? e : `${st}(${e})`),
  };
}

/** Storage declarations b0 .. b{nb - 1}, the first nw read_write. */
function bufferDecls(dtype: DType, vec4: boolean, nw: number, nb: number): string {
  const st = vec4 ? "vec4<f32>" : wgslType(dtype);
  return Array.from(
    { length: nb },
    (_, b) =>
      `@group(0) @binding(${b + 1}) var<storage, ${b < nw ? "read_write" : "read"}> b${b}: array<${st}>;`,
  ).join("\n");
}

/**
 * ld(b, i) and sto(b, i, x) over the bindings b0 .. b{nb - 1} (the first nw writable), picked by a
 * switch on the buffer number; the host keeps it the same across a workgroup (one slot per row).
 */
function bufferFns(dtype: DType, vec4: boolean, nw: number, nb: number): string {
  const T = vec4 ? "vec4<f32>" : "f32";
  const { load, store } = conversions(dtype, vec4);
  const cases = (n: number, body: (b: number) => string) =>
    Array.from({ length: n }, (_, b) => `${b === n - 1 ? "default" : `case ${b}u`}: { ${body(b)} }`).join(
      "\n    ",
    );
  const sto = `
fn sto(b: u32, i: u32, x: ${T}) {
  switch b {
    ${cases(nw, (b) => `b${b}[i] = ${store("x")};`)}
  }
}`;
  return `fn ld(b: u32, i: u32) -> ${T} {
  var r: ${T};
  switch b {
    ${cases(nb, (b) => `r = ${load(`b${b}[i]`)};`)}
  }
  return r;
}${nw > 0 ? sto : ""}`;
}

/**
 * clipGradNorm pass 1, the sum of squares over the slots of several gradients: invocation lid of
 * workgroup w sums the squares of its OPTIM_PER_INVOCATION elements (vec4s) of its slot in f32 into
 * partial[base + w * OPTIM_WG + lid]. No workgroup barrier: on lavapipe a barrier costs more than the
 * extra partials. Globals: [base]; per slot [n, buf, off] (in vec4s when `vec4`).
 */
export function sumSquaresSource(dtype: DType, vec4: boolean, nb: number, slots: number): string {
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${bufferDecls(dtype, vec4, 0, nb)}
@group(0) @binding(${nb + 1}) var<storage, read_write> partial: array<f32>;
${bufferFns(dtype, vec4, 0, nb)}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S); let b = U(S + 1u); let off = U(S + 2u);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  var acc = 0.0;
  for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
    let i = i0 + e * ${OPTIM_WG}u;
    if (i >= n) { break; }
    let x = ld(b, off + i);
    acc += ${vec4 ? "dot(x, x)" : "x * x"};
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
 * clipGradNorm's scaled copies: out = g * scale[U(0)] for the slots of several gradients. Bindings: the
 * outputs (written, first), the gradients, then scale (f32). Per slot [n, gBuf, gOff, oBuf, oOff].
 */
export function scaleCopySource(dtype: DType, vec4: boolean, nw: number, nb: number, slots: number): string {
  return `${enables(dtype)}${uniformDecl(OPTIM_GLOBAL_WORDS + slots * OPTIM_SLOT_WORDS)}
${bufferDecls(dtype, vec4, nw, nb)}
@group(0) @binding(${nb + 1}) var<storage, read> scale: array<f32>;
${bufferFns(dtype, vec4, nw, nb)}
${slotFns()}
@compute @workgroup_size(${OPTIM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let S = slot(wid.x);
  let n = U(S);
  let i0 = chunk(wid.x, S) * ${OPTIM_WG * OPTIM_PER_INVOCATION}u + lid;
  if (i0 >= n) { return; }
  let gb = U(S + 1u); let go = U(S + 2u); let ob = U(S + 3u); let oo = U(S + 4u);
  let c = scale[U(0u)];
  for (var e = 0u; e < ${OPTIM_PER_INVOCATION}u; e++) {
    let i = i0 + e * ${OPTIM_WG}u;
    if (i >= n) { break; }
    sto(ob, oo + i, ld(gb, go + i) * c);
  }
}`;
}
