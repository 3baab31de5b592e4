/** Shapes, strides and broadcasting (NumPy rules). */

/** A tensor shape: one non-negative integer per dimension. */
export type Shape = readonly number[];

/** Formats a shape for error messages: `[2, 3, 4]`. */
export function fmt(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

/** Number of elements of a shape (1 for a scalar). */
export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a contiguous tensor of `shape`. */
export function contiguousStrides(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** Checks that every entry is a non-negative integer. */
export function checkShape(op: string, shape: unknown): number[] {
  if (!Array.isArray(shape)) {
    throw new Error(`${op}: shape must be an array of integers, got ${String(shape)}`);
  }
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new Error(
        `${op}: shape ${fmt(shape)} has an invalid dimension ${d}; dimensions are integers >= 0`,
      );
    }
  }
  return [...shape];
}

/** The broadcast shape of two shapes, or a clear error naming the op and both shapes. */
export function broadcastShapes(op: string, ...shapes: Shape[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (let i = 0; i < rank; i++) {
    for (const s of shapes) {
      const d = s[s.length - rank + i] ?? 1;
      if (d === 1) continue;
      if (out[i] !== 1 && out[i] !== d) {
        throw new Error(
          `${op}: shapes cannot be broadcast together: ${
            shapes.map(fmt).join(" and ")
          } (dimension ${i} of the result: ${out[i]} vs ${d})`,
        );
      }
      out[i] = d;
    }
  }
  return out;
}

/** Normalises a possibly negative axis against `rank`, or throws naming the op. */
export function normAxis(op: string, axis: number, rank: number): number {
  if (!Number.isInteger(axis) || axis < -Math.max(rank, 1) || axis >= Math.max(rank, 1)) {
    throw new Error(`${op}: axis ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}

/** Whether two shapes are equal. */
export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
