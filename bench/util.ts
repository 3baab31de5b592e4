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

/** A prepared measurement: `trial()` times one batch of `reps` calls (ms per call). */
export interface Timer {
  reps: number;
  /** How many trials this op should get (2 for a slow op, else the requested number). */
  trials: number;
  trial: () => Promise<number>;
}

/**
 * Prepares to time `op`: one warm-up call (compiles, fills pools; `check` sees its result), then, unless
 * the op is slower than `slowMs`, one more call to size a batch of about `trialMs`. A trial runs `reps`
 * calls and awaits only the last one's result (`finish`), so dispatches batch as they do in real use.
 * `op` returns something `finish` waits on and `dispose` frees.
 */
export async function prepareTimer<T>(
  op: () => T,
  finish: (t: T) => Promise<unknown>,
  dispose: (t: T) => void,
  opts: TimeOpOptions<T> = {},
): Promise<Timer> {
  const { trials = 5, trialMs = 300, maxReps = 20, slowMs = 2000 } = opts;
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
  if (warm > slowMs) return { reps: 1, trials: Math.min(trials, 2), trial: () => run(1) };
  const reps = Math.max(1, Math.min(maxReps, Math.round(trialMs / Math.max(await run(1), 0.01))));
  return { reps, trials, trial: () => run(reps) };
}

/** Times `op` alone: {@link prepareTimer}, then the median of its trials in ms per call. */
export async function timeOp<T>(
  op: () => T,
  finish: (t: T) => Promise<unknown>,
  dispose: (t: T) => void,
  opts: TimeOpOptions<T> = {},
): Promise<{ ms: number; reps: number; trials: number }> {
  const timer = await prepareTimer(op, finish, dispose, opts);
  const times: number[] = [];
  for (let t = 0; t < timer.trials; t++) times.push(await timer.trial());
  return { ms: median(times), reps: timer.reps, trials: timer.trials };
}

/**
 * Times several ops against each other: trials are interleaved (op 1, op 2, ..., op 1, ...), so a burst
 * of load from other processes lands on every op rather than on one. Returns the median ms per call of
 * each, in order.
 */
export async function timeInterleaved(timers: Timer[]): Promise<number[]> {
  const times: number[][] = timers.map(() => []);
  const rounds = Math.max(0, ...timers.map((t) => t.trials));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < timers.length; i++) if (r < timers[i].trials) times[i].push(await timers[i].trial());
  }
  return times.map(median);
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

/** Above this 1-minute load average at a benchmark's start, no target is called met (the CPUs are shared). */
export const LOAD_LIMIT = 1.5;

let startLoad: number | null = null;

/**
 * Records the load average at a benchmark's start (bench/main.ts calls it before each one) and prints it,
 * with a warning when the machine is not quiet.
 */
export function benchStart(name: string): number | null {
  startLoad = loadAverage();
  const quiet = startLoad === null || startLoad < 1;
  console.log(
    `load average at the start of bench ${name}: ${startLoad ?? "?"}${
      quiet
        ? ""
        : ` (not quiet: numbers are slowed by other processes${
          startLoad! > LOAD_LIMIT
            ? `; targets are not judged above ${LOAD_LIMIT} unless SEQLAB_BENCH_LOADED=1`
            : ""
        })`
    }`,
  );
  return startLoad;
}

/**
 * A target's verdict: "met", "NOT met", "not measured" (null), or "not judged" when the benchmark started
 * at a load average over {@link LOAD_LIMIT} (set SEQLAB_BENCH_LOADED=1 to judge anyway).
 */
export function verdict(met: boolean | null): string {
  if (met === null) return "not measured";
  const load = startLoad ?? loadAverage();
  if (load !== null && load > LOAD_LIMIT && Deno.env.get("SEQLAB_BENCH_LOADED") !== "1") {
    return `not judged (load average ${load} at the start, over ${LOAD_LIMIT}; ${
      met ? "would be met" : "not met"
    })`;
  }
  return met ? "met" : "NOT met";
}

/** Writes `bench/results/<name>.json`. */
export async function writeResult(name: string, result: unknown): Promise<string> {
  const dir = new URL("./results/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const file = new URL(`${name}.json`, dir);
  await Deno.writeTextFile(file, JSON.stringify(result, null, 2) + "\n");
  return file.pathname;
}
