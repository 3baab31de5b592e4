/**
 * Reverse-mode automatic differentiation, PyTorch style: mark leaves with `t.requiresGrad = true` (or
 * `param(t)`), compute a scalar loss, call `loss.backward()`, read `t.grad`. Backward passes run the same
 * ops as the forward pass, on the same device.
 *
 * How an op becomes differentiable: after computing its output, it calls {@link record} with the tensors
 * it read, the tensors its backward needs (`save`, retained until backward has used them) and a backward
 * function mapping the output's gradient to one gradient per input (null where none flows). Ops added by
 * later issues (attention, scans, paged attention) register their backward the same way:
 *
 * ```ts ignore
 * const out = myForward(q, k, v);
 * return record("myOp", out, [q, k, v], [q, k, v, out], (g, [q, k, v, out]) => myBackward(g, q, k, v, out));
 * ```
 * @module
 */

import { hooks, keep, ops, type SliceSpec, Tensor, tidy } from "./tensor.ts";
import { fmt } from "./shape.ts";

let gradEnabled = true;

/** Whether ops currently record the graph (false inside {@link noGrad}). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Runs `fn` without recording gradients (evaluation, optimiser updates). Sync or async.
 *
 * @example
 * ```ts
 * import { noGrad, param, randn } from "seqlab";
 * const w = param(randn([3], { seed: 1 }));
 * const y = noGrad(() => w.mul(2));
 * console.log(y.requiresGrad); // false
 * ```
 */
export function noGrad<T>(fn: () => T): T {
  const was = gradEnabled;
  gradEnabled = false;
  let r: T;
  try {
    r = fn();
  } catch (e) {
    gradEnabled = was;
    throw e;
  }
  if (r instanceof Promise) {
    return r.finally(() => (gradEnabled = was)) as T;
  }
  gradEnabled = was;
  return r;
}

/** A recorded op: how to turn the output's gradient into its inputs' gradients. */
export interface GradNode {
  /** The op's name, for errors. */
  readonly name: string;
  /** The tensors the op read (graph edges; their values are not kept unless saved). */
  readonly inputs: readonly Tensor[];
  /** Gradients for each input (null or undefined where none flows). */
  backward(grad: Tensor): (Tensor | null | undefined)[];
  /** Frees the saved tensors. */
  release(): void;
  /** Adds a holder: the output tensor, or a later node that reads the output. */
  hold(): void;
  /** Drops a holder; at zero the saved tensors are freed and the inputs' nodes dropped in turn. */
  drop(): void;
  /**
   * Set on a slice's node: the output is `inputs[0].slice(specs)`, covering at most `region` ([start, end)
   * per dimension of the input). Backward then writes the gradient into one zero-initialised gradient of
   * the input shared by all its slices (a copy, or an add where regions overlap) instead of a zero-padded
   * tensor per slice summed with adds: splitting a fused projection into q, k and v costs one fill and
   * three copies in backward, not three fills, three copies and two full-size adds.
   */
  slice?: { specs: readonly SliceSpec[]; region: readonly [number, number][] };
}

/** A view over the same storage that outlives the caller's handle and any tidy scope. */
function retain(t: Tensor): Tensor {
  return keep(t.view(t.shape, t.strides, t.offset));
}

/**
 * Records `out` as produced by op `name` from `inputs`, if gradients are enabled and any input requires
 * them. `save` lists the tensors `backward` reads; they are retained (sharing storage, outliving tidy and
 * the user's dispose) until backward has used them, then freed. `resources` (e.g. pooled textures an op
 * kept for its backward) are released with them, or at once when nothing is recorded. Returns `out`.
 *
 * @example
 * ```ts
 * import { param, record, tensor, type Tensor } from "seqlab";
 * // y = x^3 with dy/dx = 3x^2, written as a custom op
 * function cube(x: Tensor): Tensor {
 *   const out = x.mul(x).mul(x).detach();
 *   return record("cube", out, [x], [x], (g, [xs]) => [g.mul(xs.mul(xs).mul(3))]);
 * }
 * const x = param(tensor([2]));
 * cube(x).sum().backward();
 * console.log(await x.grad!.toArray()); // [12]
 * ```
 */
export function record(
  name: string,
  out: Tensor,
  inputs: readonly Tensor[],
  save: readonly Tensor[],
  backward: (grad: Tensor, saved: Tensor[]) => (Tensor | null | undefined)[],
  resources: readonly { release(): void }[] = [],
): Tensor {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) {
    for (const r of resources) r.release();
    return out;
  }
  let saved: Tensor[] | null = save.map(retain);
  let held: readonly { release(): void }[] | null = resources;
  // The graph is reference-counted: a node lives while its output tensor is undisposed or a later node
  // that read the output is alive, so a graph that is never backpropagated is still freed by dispose/tidy.
  let holders = 1;
  const edges = [...inputs];
  const node: GradNode = {
    name,
    inputs: edges,
    backward: (g) => {
      if (!saved) throw new Error(`backward: the graph through ${name} was already used and freed`);
      return backward(g, saved);
    },
    release: () => {
      saved?.forEach((t) => t.dispose());
      saved = null;
      held?.forEach((r) => r.release());
      held = null;
    },
    hold: () => void holders++,
    drop: () => {
      if (--holders > 0) return;
      node.release();
      for (const t of edges) t.gradFn?.drop();
    },
  };
  for (const t of edges) t.gradFn?.hold();
  out.requiresGrad = true;
  out.gradFn = node;
  return out;
}

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const inputs = top[0].gradFn?.inputs ?? [];
    if (top[1] < inputs.length) {
      const next = inputs[top[1]++];
      if (next.requiresGrad && !seen.has(next)) {
        seen.add(next);
        stack.push([next, 0]);
      }
    } else {
      stack.pop();
      order.push(top[0]);
    }
  }
  return order.reverse(); // root first
}

/**
 * Backpropagates from `root` (a one-element loss unless `grad` is given): adds each leaf's gradient into
 * its `.grad` and frees the graph's saved tensors. Called as `loss.backward()`.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  root.check("backward");
  if (!root.requiresGrad) {
    throw new Error(
      `backward: ${root.describe()} does not require grad (no input of its graph has requiresGrad)`,
    );
  }
  if (!grad && root.size !== 1) {
    throw new Error(`backward: ${root.describe()} is not a one-element loss; pass its gradient explicitly`);
  }
  if (grad && (grad.rank !== root.rank || grad.shape.some((d, i) => d !== root.shape[i]))) {
    throw new Error(`backward: grad ${fmt(grad.shape)} does not match the output ${fmt(root.shape)}`);
  }
  noGrad(() => {
    const grads = new Map<Tensor, Tensor>();
    // gradients this pass allocated for slices to write into, with the regions written so far
    const regions = new Map<Tensor, (readonly [number, number][])[]>();
    grads.set(root, grad ?? ops.full(root.shape, 1, { dtype: root.dtype, device: root.device }));
    for (const t of topoOrder(root)) {
      const g = grads.get(t);
      grads.delete(t);
      const node = t.gradFn;
      if (!g) continue;
      if (node?.slice) {
        const inp = node.inputs[0];
        if (inp.requiresGrad) accumulateSlice(grads, regions, inp, node.slice, g);
        if (g !== grad) g.dispose();
        node.release();
        continue;
      }
      if (!node) { // a leaf
        const acc = g === grad ? ops.contiguous(g) : g;
        if (t.grad) {
          const sum = ops.add(t.grad, acc);
          t.grad.dispose();
          acc.dispose();
          t.grad = keep(sum);
        } else t.grad = keep(acc.dtype === t.dtype ? acc : castGrad(acc, t));
        continue;
      }
      // A backward may return its incoming gradient, or one tensor for several inputs: give each input
      // its own handle (a view sharing storage) so that freeing one never frees another.
      const handles = new Set<Tensor>([g]);
      // tidy: a rule's temporaries are freed even when backward runs outside any scope
      const gs = tidy(() => node.backward(g)).map((gi) => {
        if (!gi) return null;
        const own = handles.has(gi) || gi === grad ? gi.view(gi.shape, gi.strides, gi.offset) : gi;
        handles.add(own);
        return own;
      });
      if (g !== grad) g.dispose();
      node.inputs.forEach((inp, k) => {
        const gi = gs[k];
        if (!gi) return;
        if (!inp.requiresGrad) {
          gi.dispose();
          return;
        }
        if (gi.rank !== inp.rank || gi.shape.some((d, i) => d !== inp.shape[i])) {
          throw new Error(
            `backward of ${node.name}: gradient ${fmt(gi.shape)} does not match input ${fmt(inp.shape)}`,
          );
        }
        const prev = grads.get(inp);
        if (prev) {
          grads.set(inp, ops.add(prev, gi));
          prev.dispose();
          gi.dispose();
        } else grads.set(inp, gi);
      });
      node.release(); // gradFn stays: a second backward through it is a clear error
    }
  });
}

/** Whether two regions ([start, end) per dimension) share no element. */
function disjoint(a: readonly [number, number][], b: readonly [number, number][]): boolean {
  return a.some(([s, e], d) => e <= b[d][0] || b[d][1] <= s);
}

/**
 * Adds a slice's gradient `g` into the gradient of the sliced tensor `inp`: into a zero gradient this pass
 * allocated (a copy where no earlier slice wrote, an add where one did), or, when `inp` already has a
 * gradient from elsewhere, the old way (zero-padded, then added).
 */
function accumulateSlice(
  grads: Map<Tensor, Tensor>,
  regions: Map<Tensor, (readonly [number, number][])[]>,
  inp: Tensor,
  sl: NonNullable<GradNode["slice"]>,
  g: Tensor,
): void {
  const prev = grads.get(inp);
  const written = prev && regions.get(prev);
  if (prev && written) {
    const dst = prev.slice(sl.specs);
    if (written.every((r) => disjoint(r, sl.region))) ops.copyInto(dst, g);
    else {
      const sum = ops.add(dst, g);
      ops.copyInto(dst, sum);
      sum.dispose();
    }
    dst.dispose();
    written.push(sl.region);
    return;
  }
  const z = ops.zeros(inp.shape, { dtype: inp.dtype, device: inp.device });
  const dst = z.slice(sl.specs);
  ops.copyInto(dst, g);
  dst.dispose();
  if (prev) {
    // a gradient from a non-slice consumer came first: sum, and let later slices add into the sum
    const sum = ops.add(prev, z);
    prev.dispose();
    z.dispose();
    grads.set(inp, sum);
    regions.set(sum, [inp.shape.map((n) => [0, n] as [number, number])]);
  } else {
    grads.set(inp, z);
    regions.set(z, [sl.region]);
  }
}

function castGrad(g: Tensor, like: Tensor): Tensor {
  const c = ops.cast(g, like.dtype);
  g.dispose();
  return c;
}

/**
 * Marks a tensor as a trainable leaf (`requiresGrad = true`) and exempts it from tidy scopes. Returns it.
 *
 * @example
 * ```ts
 * import { param, zeros } from "seqlab";
 * const w = param(zeros([4, 4]));
 * console.log(w.requiresGrad); // true
 * ```
 */
export function param(t: Tensor): Tensor {
  t.requiresGrad = true;
  return keep(t);
}

hooks.backward = backward;
hooks.record = record;

export { Tensor };
