/**
 * Shared benchmark helpers: timing by batches with one readback, medians, tables, JSON results.
 * @module
 */

/** Median of numbers (NaN for none). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Timing options: trials give the median; each trial runs `reps` operations and waits once. */
export interface TimeOptions {
  /** Trials to take the median of (default 5). */
  trials?: number;
  /** Aim for about this long per trial, in ms, when choosing reps (default 300). */
  trialMs?: number;
  /** At most this many operations per trial (default 20). */
  maxReps?: number;
  /** A call slower than this (ms, default 2000) is timed in 2 trials of one call. */
  slowMs?: number;
}

/** {@link timeOp}'s options, with a hook that sees the warm-up's result (to check it) before it is freed. */
export interface TimeOpOptions<T> extends TimeOptions {
  check?: (t: T) => Promise<void>;
}

/**
 * Times `op`: one warm-up (compiles, fills pools), then `trials` trials of `reps` calls where only the
 * last call's result is awaited (`finish`), so dispatches batch as they do in real use. Returns the
 * median ms per call. An op slower than `slowMs` gets 2 trials of one call each. `op` returns something
 * `finish` waits on and `dispose` frees; `check` sees the warm-up's result.
 */
export async function timeOp<T>(
  op: () => T,
  finish: (t: T) => Promise<unknown>,
  dispose: (t: T) => void,
  opts: TimeOpOptions<T> = {},
): Promise<{ ms: number; reps: number; trials: number }> {
  let { trials = 5, trialMs = 300, maxReps = 20, slowMs = 2000 } = opts;
  const run = async (reps: number, check?: (t: T) => Promise<void>) => {
    const start = performance.now();
    let last: T | null = null;
    for (let i = 0; i < reps; i++) {
      if (last !== null) dispose(last);
      last = op();
    }
    await finish(last!);
    const ms = (performance.now() - start) / reps;
    try {
      await check?.(last!);
    } finally {
      dispose(last!);
    }
    return ms;
  };
  const warm = await run(1, opts.check); // includes compiling
  let reps = 1;
  if (warm > slowMs) trials = Math.min(trials, 2);
  else reps = Math.max(1, Math.min(maxReps, Math.round(trialMs / Math.max(await run(1), 0.01))));
  const times: number[] = [];
  for (let t = 0; t < trials; t++) times.push(await run(reps));
  return { ms: median(times), reps, trials };
}

/** Formats rows of cells as an aligned text table (first column left, others right). */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  return [line(head), w.map((n) => "-".repeat(n)).join("  "), ...rows.map(line)].join("\n");
}

/** The 1-minute load average, to judge how quiet the machine was (other processes share the CPUs). */
export function loadAverage(): number | null {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return null;
  }
}

/** Writes `bench/results/<name>.json`. */
export async function writeResult(name: string, result: unknown): Promise<string> {
  const dir = new URL("./results/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const file = new URL(`${name}.json`, dir);
  await Deno.writeTextFile(file, JSON.stringify(result, null, 2) + "\n");
  return file.pathname;
}
