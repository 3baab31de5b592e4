/**
 * Soak (issue #16): long runs that check nothing accumulates.
 *
 * - {@link trainSoak}: the MNIST MLP of bench/train.ts (784-128-10, Adam, batch 128, a batch sliced from
 *   the MNIST training images every step) for 10,000 steps, then a small TransformerLM for 1,000, on webgpu.
 *   Every `sampleEvery` steps, right after a loss readback and a full garbage collection, it samples the
 *   device ledger (bytes in use, live buffers, pooled bytes), the process RSS and V8's heap.
 * - {@link kernelSoak}: one kernel and one client (kernel/client.ts) running 10,000 cells with outputs
 *   (stdout, stderr, HTML, Markdown and JSON displays, results, in a rotating mix), checking every reply, every
 *   output (exactly once, in order, with the cell's own token), execution_count, and sampling the RSS of the
 *   kernel's process tree from /proc and, through a cell outside history that collects garbage first, the
 *   JS heap of the kernel's cell executor.
 *
 * The pass criteria ({@link judgeTrain}, {@link judgeKernel}) and their bounds are fixed below, each with the
 * leak it would catch. Samples in the warm-up (the first 10% of a run, at least 50 steps or cells: pools
 * fill, code compiles) are not judged. "Growth" is the median of the last five samples minus the lowest
 * judged one, so a drop (the MNIST loading garbage handed back) cannot hide a leak that follows it; "slope"
 * is the least-squares slope from that lowest sample to the end.
 *
 * Run: `deno task bench soak [steps] [cells]` (defaults 10,000 and 10,000; prints a table with the load
 * average at the start and end, writes bench/results/soak.json). `test/soak.test.ts` runs the same functions:
 * a quick soak always, the full one with SEQLAB_SOAK=1 (`deno task test:soak`).
 * @module
 */

import v8 from "node:v8";
import vm from "node:vm";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { adapterInfo, gpu, hasWebGPU } from "../runtime/device.ts";
import { KernelClient } from "../kernel/client.ts";
import { type Message, REPLAY_HISTORY } from "../kernel/wire.ts";
import { BATCH, data, HIDDEN, model } from "./train.ts";
import { loadAverage, median, table, writeResult } from "./util.ts";

const MiB = 2 ** 20;

// ------------------------------------------------------------------------------------------ bounds

/**
 * JS heap in use after a full collection may grow by less than this (MiB) in training, and in the client
 * beyond its replay history ({@link DIGEST_BYTES}). Measured in training: 0.3 MiB over 9,000 steps. A leak
 * of one 128-byte object per step is 1.1 MiB over 9,000 steps.
 */
export const HEAP_BOUND_MIB = 1;
/**
 * The client remembers the digest of each of the last {@link REPLAY_HISTORY} (65,536) messages it verified,
 * to refuse replays (kernel/wire.ts): bounded, but 10,000 cells (about 59,000 messages) do not fill it, so its
 * growth is allowed at up to this many bytes per verified message (measured 113: a 64-character string, its
 * Set entry and its ring slot). A client leaking 1 KiB per cell still fails by several MiB.
 */
export const DIGEST_BYTES = 160;
/**
 * RSS outside V8's heap (RSS minus V8's heapTotal: the WebGPU driver, wgpu, Deno's native side) may grow by
 * less than this (MiB). A leak of one 4 KiB page per step (the smallest buffer lavapipe maps) is 35 MiB over
 * 9,000 steps.
 */
export const NATIVE_BOUND_MIB = 16;
/**
 * ...and its slope must stay under this many bytes per step: a leaked 1 KiB a step (a bind group, a
 * command encoder's bookkeeping) is twice the bound.
 */
export const NATIVE_SLOPE_BOUND = 512;
/**
 * Whole-process RSS may grow by less than this (MiB). Looser than the native bound because V8 grows its heap
 * reservation in steps of about 12 MiB even when the heap in use is flat (measured after a collection);
 * a leak of one 4 KiB page per step (35 MiB over 9,000 steps) still fails it.
 */
export const RSS_BOUND_MIB = 32;
/**
 * A slope over fewer steps (or cells) than this after the lowest point is not judged (the quick soak): the
 * allocator settling by a MiB over 300 steps reads as kilobytes per step. Growth is still judged.
 */
export const MIN_SLOPE_SPAN = 1000;
/**
 * The kernel's process tree: RSS slope bound, bytes per cell. Cells run as scripts (an indirect eval, not a
 * module: kernel/README.md), so the executor keeps nothing per cell; what is left is the kernel process
 * itself: the history it keeps for history_request (each cell's code and result text, about 0.3 KiB a cell
 * of live heap) with V8's headroom on top, and V8 growing its heap reservation in steps of about 10 MiB
 * while TypeScript's transpileModule makes garbage each cell. Measured 3.7 and 3.8 KiB per cell over 9,000
 * cells in two runs (bench/results/soak.json; a module per cell, before, was 12.7 KiB and fails this
 * bound); a kernel that also kept each cell's outputs (about 2 KiB a cell, copied at least twice on the way
 * out) goes past it.
 */
export const KERNEL_SLOPE_BOUND = 8 * 1024;
/**
 * The kernel's cell executor: JS heap after a collection, slope bound in bytes per cell. Flat: measured 3
 * and 4 bytes per cell over 9,000 cells in two runs (8.0 MiB from cell 1,000 to the end). A module per cell
 * was 2.46 KiB (its record and namespace stay reachable); one 256-byte object kept per cell is at the bound.
 */
export const WORKER_HEAP_SLOPE_BOUND = 256;
/**
 * ...and its growth must stay under this (MiB), judged in short runs too: one 128-byte object kept per cell
 * is 1.1 MiB over 9,000 cells. What a short run shows is the executor warming up (compiled code, type
 * feedback: about 0.1 MiB over the quick soak's cells, nothing after 2,500 cells).
 */
export const WORKER_HEAP_BOUND_MIB = 1;
/**
 * The median cell time over the last tenth of a run may be at most this many times the first tenth's
 * (judged from {@link MIN_SLOPE_SPAN} cells). Measured 3.0 ms against 7.6 ms, and 4.0 against 5.5 (the first
 * cells still compile); with a module per cell every dynamic import got slower with the number loaded: 19.0
 * against 4.8 ms.
 */
export const CELL_TIME_GROWTH_BOUND = 1.5;

// ------------------------------------------------------------------------------------------ garbage

let gcFn: (() => void) | null | undefined;

/**
 * Runs a full garbage collection of this isolate (V8's `gc`, exposed at run time through node:v8, so no
 * command-line flag is needed); false if it is not available, and then samples include garbage.
 */
export function fullGc(): boolean {
  if (gcFn === undefined) {
    try {
      v8.setFlagsFromString("--expose-gc");
      gcFn = vm.runInNewContext("gc") as () => void;
    } catch {
      gcFn = null;
    }
  }
  gcFn?.();
  return gcFn !== null;
}

// ------------------------------------------------------------------------------------------ memory

/** VmRSS of a process, bytes (null when /proc cannot be read). */
export function rssOf(pid: number | "self"): number | null {
  try {
    const kb = /^VmRSS:\s*(\d+)\s*kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1];
    return kb === undefined ? null : Number(kb) * 1024;
  } catch {
    return null;
  }
}

/** The process ids under `/proc`. */
function pids(): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) if (/^\d+$/.test(e.name)) out.push(Number(e.name));
  return out;
}

function parentOf(pid: number): number | null {
  try {
    // the command name (field 2) may hold spaces and parentheses: the fields after the last ")" are plain
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return null;
  }
}

/** The process whose command line names `connectionFile` (the kernel the client started), or null. */
export function kernelPid(connectionFile: string): number | null {
  for (const pid of pids()) {
    try {
      const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
      if (argv.includes(connectionFile)) return pid;
    } catch { /* gone */ }
  }
  return null;
}

/** RSS of `pid` and all its descendants (a kernel that runs cells in child processes counts them), bytes. */
export function treeRss(pid: number): number | null {
  const children = new Map<number, number[]>();
  for (const p of pids()) {
    const pp = parentOf(p);
    if (pp !== null) children.set(pp, [...(children.get(pp) ?? []), p]);
  }
  const root = rssOf(pid);
  if (root === null) return null;
  let total = root;
  const stack = [...(children.get(pid) ?? [])];
  while (stack.length) {
    const p = stack.pop()!;
    total += rssOf(p) ?? 0;
    stack.push(...(children.get(p) ?? []));
  }
  return total;
}

// ------------------------------------------------------------------------------------------ judging

/** One pass criterion's outcome. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** Least-squares slope of y against x. */
export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/** A series after a run's warm-up, from its lowest point. */
export interface Trend {
  /** Samples judged (those after the warm-up). */
  samples: number;
  startMiB: number;
  endMiB: number;
  lowMiB: number;
  /** The step (or cell) of the lowest judged sample. */
  lowAt: number;
  /** Median of the last five judged samples minus the lowest, MiB. */
  growthMiB: number;
  /** Least-squares slope from the lowest sample to the end, bytes per step (or cell); 0 with fewer than 5. */
  bytesPerUnit: number;
}

/**
 * Samples before this step (or cell) are warm-up: the first 10% of a run, and at least 50 steps (a short
 * run's pools are still growing to their working set at step 10).
 */
export function warmupOf(total: number): number {
  return Math.min(total, Math.max(Math.ceil(total * 0.1), 50));
}

/** The trend of `[x, bytes]` samples after the warm-up ({@link warmupOf}) of a run of `total` steps or cells. */
export function trend(points: [number, number][], total: number): Trend {
  const judged = points.filter(([x, y]) => x >= warmupOf(total) && Number.isFinite(y));
  const ys = judged.map(([, y]) => y);
  let low = 0;
  for (let k = 1; k < ys.length; k++) if (ys[k] < ys[low]) low = k;
  const after = judged.slice(low);
  return {
    samples: judged.length,
    startMiB: (ys[0] ?? NaN) / MiB,
    endMiB: (ys.at(-1) ?? NaN) / MiB,
    lowMiB: (ys[low] ?? NaN) / MiB,
    lowAt: judged[low]?.[0] ?? NaN,
    growthMiB: (median(ys.slice(-5)) - (ys[low] ?? NaN)) / MiB,
    bytesPerUnit: after.length >= 5 ? slope(after.map(([x]) => x), after.map(([, y]) => y)) : 0,
  };
}

const fmtTrend = (t: Trend) =>
  `${t.startMiB.toFixed(1)} -> ${t.endMiB.toFixed(1)} MiB, lowest ${
    t.lowMiB.toFixed(1)
  } at ${t.lowAt}, ${t.samples} samples`;

function growthCheck(what: string, t: Trend, boundMiB: number): Check {
  return {
    name: `${what}: growth < ${boundMiB} MiB`,
    ok: t.samples >= 5 && t.growthMiB < boundMiB,
    detail: `${t.growthMiB.toFixed(2)} MiB (${fmtTrend(t)})`,
  };
}

function slopeCheck(what: string, t: Trend, total: number, bound: number, unit: string): Check {
  const span = total - t.lowAt, name = `${what}: slope < ${bound} bytes/${unit}`;
  if (!(span >= MIN_SLOPE_SPAN)) {
    // a short run, or one whose lowest point is near its end, is judged by its growth alone (MIN_SLOPE_SPAN)
    return {
      name,
      ok: true,
      detail: `not judged: the lowest point is ${span} ${unit}s before the end, under ${MIN_SLOPE_SPAN}`,
    };
  }
  return {
    name,
    ok: t.bytesPerUnit < bound,
    detail: `${t.bytesPerUnit.toFixed(0)} bytes/${unit} over ${span} ${unit}s`,
  };
}

function gcCheck(gc: boolean): Check {
  return {
    name: "samples taken after a full garbage collection",
    ok: gc,
    detail: gc ? "yes" : "V8's gc could not be exposed: heap samples include garbage",
  };
}

// ------------------------------------------------------------------------------------------ training

/** A sample, taken right after a loss readback and a full garbage collection. */
export interface TrainSample {
  step: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  bytesInUse: number;
  liveBuffers: number;
  pooledBytes: number;
  loss: number;
}

/** One model's soak. */
export interface TrainPhase {
  model: string;
  steps: number;
  /** Samples before this step are warm-up (optimiser state and pools fill there). */
  warmup: number;
  sampleEvery: number;
  seconds: number;
  stepsPerSecond: number;
  firstLoss: number;
  lastLoss: number;
  samples: TrainSample[];
  rss: Trend;
  /** RSS minus V8's heapTotal. */
  native: Trend;
  heap: Trend;
}

/** Options of {@link trainSoak}. */
export interface TrainSoakOptions {
  /** MLP steps (default 10,000). */
  steps?: number;
  /** TransformerLM steps after the MLP (default a tenth of `steps`; 0 for none). */
  lmSteps?: number;
  /** Sample every this many steps (default 100). */
  sampleEvery?: number;
  /** Read the loss back every this many steps (default 10; a sample always follows a readback). */
  readEvery?: number;
  /**
   * For the negative control only: every step, keep a tensor of this many bytes (the ledger must catch it)
   * and this many bytes of host memory the ledger does not see (RSS must catch it); freed at the end.
   */
  leak?: { tensorBytes?: number; hostBytes?: number };
  /** Progress lines (default none). */
  log?: (line: string) => void;
}

interface Trainer {
  model: string;
  step(): Tensor;
  dispose(): void;
}

/** bench/train.ts's MLP on MNIST: a batch is sliced from the training images every step. */
async function mlpTrainer(): Promise<Trainer> {
  const d = await data("webgpu");
  const m = model("webgpu");
  return {
    model: `MLP 784-${HIDDEN}-10 on MNIST, Adam, B${BATCH}`,
    step: () => m.step(d),
    dispose: () => (m.dispose(), d.dispose()),
  };
}

/** A small TransformerLM (vocab 32, d 32, 2 layers, 4 heads; B 4, T 64) on a periodic sequence, AdamW. */
function lmTrainer(): Trainer {
  const device = "webgpu", V = 32, B = 4, T = 64;
  const lm = new s.TransformerLM({ vocabSize: V, dModel: 32, nLayer: 2, nHead: 4, seed: 1, device });
  const opt = new s.AdamW(lm.parameters(), { lr: 3e-3 });
  const seq = (off: number) =>
    Int32Array.from({ length: B * T }, (_, i) => ((Math.floor(i / T) * 7 + (i % T) + off) * 5) % V);
  const x = s.tensor(seq(0), { shape: [B, T], dtype: "i32", device });
  const y = s.tensor(seq(1), { shape: [B * T], dtype: "i32", device });
  return {
    model: `TransformerLM V${V} d32 L2 H4, AdamW, B${B} T${T}`,
    step: () =>
      s.tidy(() => {
        opt.zeroGrad();
        const l = s.crossEntropy(lm.forward(x).reshape([B * T, V]), y); // (B*T, V)
        l.backward();
        opt.step();
        return l;
      }),
    dispose: () => (opt.dispose(), lm.dispose(), x.dispose(), y.dispose()),
  };
}

async function runPhase(
  tr: Trainer,
  steps: number,
  o: { sampleEvery: number; readEvery: number; leak?: TrainSoakOptions["leak"]; log?: (l: string) => void },
): Promise<TrainPhase> {
  const leaked: Tensor[] = [], hostLeak: Uint8Array[] = [];
  const samples: TrainSample[] = [];
  let firstLoss = NaN, lastLoss = NaN;
  const t0 = performance.now();
  for (let i = 1; i <= steps; i++) {
    const loss = tr.step();
    if (o.leak?.tensorBytes) leaked.push(s.zeros([o.leak.tensorBytes / 4], { device: "webgpu" }));
    if (o.leak?.hostBytes) hostLeak.push(new Uint8Array(o.leak.hostBytes).fill(1 + (i & 127)));
    if (i % o.readEvery === 0 || i === 1 || i === steps) {
      lastLoss = await loss.item();
      if (i === 1) firstLoss = lastLoss;
    }
    loss.dispose();
    if (i % o.sampleEvery === 0) {
      fullGc();
      const m = s.memory("webgpu"), u = Deno.memoryUsage();
      samples.push({
        step: i,
        rss: u.rss,
        heapUsed: u.heapUsed,
        heapTotal: u.heapTotal,
        bytesInUse: m.bytesInUse,
        liveBuffers: m.liveBuffers,
        pooledBytes: m.pooledBytes,
        loss: lastLoss,
      });
      if (o.log && i % (o.sampleEvery * 10) === 0) {
        o.log(
          `  ${tr.model}: step ${i}/${steps}, loss ${lastLoss.toFixed(3)}, RSS ${
            (u.rss / MiB).toFixed(0)
          } MiB, ` +
            `heap ${(u.heapUsed / MiB).toFixed(1)} MiB, ${m.liveBuffers} buffers, ${
              (m.bytesInUse / MiB).toFixed(2)
            } MiB in use, load ${loadAverage()}`,
        );
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  for (const t of leaked) t.dispose();
  hostLeak.length = 0;
  const series = (f: (x: TrainSample) => number) => trend(samples.map((x) => [x.step, f(x)]), steps);
  return {
    model: tr.model,
    steps,
    warmup: warmupOf(steps),
    sampleEvery: o.sampleEvery,
    seconds,
    stepsPerSecond: steps / seconds,
    firstLoss,
    lastLoss,
    samples,
    rss: series((x) => x.rss),
    native: series((x) => x.rss - x.heapTotal),
    heap: series((x) => x.heapUsed),
  };
}

/** The training soak's result. */
export interface TrainSoak {
  adapter: string;
  /** Samples were taken after a full garbage collection. */
  gc: boolean;
  phases: TrainPhase[];
  /** The ledger after every trainer was disposed, against before the first was built. */
  ledgerBefore: s.MemoryInfo;
  ledgerAfter: s.MemoryInfo;
}

/** Runs the training soak: the MLP for `steps`, then the TransformerLM for `lmSteps`. Needs webgpu. */
export async function trainSoak(opts: TrainSoakOptions = {}): Promise<TrainSoak> {
  if (!hasWebGPU()) throw new Error("trainSoak: needs a WebGPU adapter (none found)");
  const steps = opts.steps ?? 10_000;
  const o = {
    sampleEvery: opts.sampleEvery ?? 100,
    readEvery: opts.readEvery ?? 10,
    leak: opts.leak,
    log: opts.log,
  };
  if (o.sampleEvery % o.readEvery !== 0) {
    throw new Error(
      `trainSoak: sampleEvery (${o.sampleEvery}) must be a multiple of readEvery (${o.readEvery})`,
    );
  }
  await gpu().sync();
  const ledgerBefore = s.memory("webgpu");
  const phases: TrainPhase[] = [];
  const plan: [() => Trainer | Promise<Trainer>, number][] = [
    [mlpTrainer, steps],
    [lmTrainer, opts.lmSteps ?? Math.floor(steps / 10)],
  ];
  for (const [make, n] of plan) {
    if (n <= 0) continue;
    const tr = await make();
    try {
      phases.push(await runPhase(tr, n, o));
    } finally {
      tr.dispose();
    }
  }
  await gpu().sync();
  return { adapter: adapterInfo(), gc: fullGc(), phases, ledgerBefore, ledgerAfter: s.memory("webgpu") };
}

/**
 * The training soak's pass criteria, per phase: the ledger exactly flat (bytes in use, live buffers,
 * pooled bytes) at every sample after the warm-up; the loss finite and lower at the end than at
 * step 1; JS heap, native and whole RSS growth under their bounds, and the native slope. After all phases,
 * the ledger back where it started.
 */
export function judgeTrain(r: TrainSoak): Check[] {
  const checks: Check[] = [gcCheck(r.gc)];
  for (const p of r.phases) {
    const judged = p.samples.filter((x) => x.step >= p.warmup);
    const ref = judged[0];
    const moved = judged.filter((x) =>
      x.bytesInUse !== ref?.bytesInUse || x.liveBuffers !== ref.liveBuffers ||
      x.pooledBytes !== ref.pooledBytes
    );
    const first = moved[0];
    checks.push(
      {
        name: `${p.model}: ledger exactly flat after step ${p.warmup}`,
        ok: ref !== undefined && moved.length === 0,
        detail: !ref
          ? "no samples"
          : first
          ? `${moved.length} of ${judged.length} samples differ; step ${first.step}: ${first.bytesInUse} bytes, ${first.liveBuffers} buffers, ${first.pooledBytes} pooled (step ${ref.step}: ${ref.bytesInUse}, ${ref.liveBuffers}, ${ref.pooledBytes})`
          : `${ref.bytesInUse} bytes in use, ${ref.liveBuffers} buffers, ${ref.pooledBytes} pooled at all ${judged.length} samples`,
      },
      {
        name: `${p.model}: loss finite and lower at the end than at step 1`,
        ok: Number.isFinite(p.lastLoss) && p.lastLoss < p.firstLoss,
        detail: `${p.firstLoss.toFixed(3)} -> ${p.lastLoss.toFixed(3)}`,
      },
      growthCheck(`${p.model}: JS heap in use`, p.heap, HEAP_BOUND_MIB),
      growthCheck(`${p.model}: RSS outside V8's heap`, p.native, NATIVE_BOUND_MIB),
      slopeCheck(`${p.model}: RSS outside V8's heap`, p.native, p.steps, NATIVE_SLOPE_BOUND, "step"),
      growthCheck(`${p.model}: RSS`, p.rss, RSS_BOUND_MIB),
    );
  }
  checks.push({
    name: "ledger back to its start once the trainers are disposed",
    ok: r.ledgerAfter.bytesInUse === r.ledgerBefore.bytesInUse &&
      r.ledgerAfter.liveBuffers === r.ledgerBefore.liveBuffers,
    detail:
      `${r.ledgerBefore.liveBuffers} -> ${r.ledgerAfter.liveBuffers} buffers, ${r.ledgerBefore.bytesInUse} -> ${r.ledgerAfter.bytesInUse} bytes`,
  });
  return checks;
}

// ------------------------------------------------------------------------------------------ kernel

/** One expected output of a soak cell. */
type Expected =
  | { type: "stream"; name: "stdout" | "stderr"; text: string }
  | { type: "display_data" | "execute_result"; mime: string; text: string };

// Cells of kinds 0 and 1 build about 2 KiB of output at run time from a short source, so a kernel that kept
// outputs would grow faster than one that keeps only each cell's code (see KERNEL_SLOPE_BOUND).
const PAD = 2000;

/** Cell `i`'s code and the outputs it must produce, in order. Five kinds rotate, so every mix recurs. */
export function soakCell(i: number): { code: string; outputs: Expected[] } {
  switch (i % 5) {
    case 0:
      return {
        code: `console.log("p${i} " + "-".repeat(${PAD}))`,
        outputs: [{ type: "stream", name: "stdout", text: `p${i} ${"-".repeat(PAD)}\n` }],
      };
    case 1:
      return {
        code: `display(html("<b>d${i}</b>" + "<i></i>".repeat(${Math.floor(PAD / 7)})))`,
        outputs: [{
          type: "display_data",
          mime: "text/html",
          text: `<b>d${i}</b>${"<i></i>".repeat(Math.floor(PAD / 7))}`,
        }],
      };
    case 2:
      return {
        code: `soakTotal += ${i};\nsoakTotal`,
        outputs: [{ type: "execute_result", mime: "text/plain", text: String(soakSum(i)) }],
      };
    case 3:
      return {
        code: `console.log("a${i}");\nconsole.error("e${i}");\ndisplay(md("m${i}"));\n"r${i}"`,
        outputs: [
          { type: "stream", name: "stdout", text: `a${i}\n` },
          { type: "stream", name: "stderr", text: `e${i}\n` },
          { type: "display_data", mime: "text/markdown", text: `m${i}` },
          { type: "execute_result", mime: "text/plain", text: `"r${i}"` },
        ],
      };
    default:
      return {
        code: `const soakRow = { cell: ${i}, xs: [${i}, ${i + 1}] };\ndisplay(json(soakRow));\nsoakRow.xs[1]`,
        outputs: [
          {
            type: "display_data",
            mime: "application/json",
            text: JSON.stringify({ cell: i, xs: [i, i + 1] }),
          },
          { type: "execute_result", mime: "text/plain", text: String(i + 1) },
        ],
      };
  }
}

/** `soakTotal` after cell `i`: the sum of the cells of kind 2 so far. */
function soakSum(i: number): number {
  let t = 0;
  for (let j = 2; j <= i; j += 5) t += j;
  return t;
}

/**
 * What is wrong with cell `i`'s result, given the execution_count it should have; null when nothing is:
 * a reply with status ok and that count, iopub busy, execute_input, exactly the expected outputs in
 * order, idle.
 */
export function cellProblem(
  i: number,
  r: { reply: Message | null; messages: Message[]; failure?: string; timedOut: boolean },
  count: number,
): string | null {
  if (r.failure) return `cell ${i}: ${r.failure}`;
  if (r.timedOut) return `cell ${i}: timed out`;
  if (r.reply?.content.status !== "ok") return `cell ${i}: reply ${JSON.stringify(r.reply?.content)}`;
  if (r.reply.content.execution_count !== count) {
    return `cell ${i}: execution_count ${r.reply.content.execution_count}, expected ${count}`;
  }
  const types = r.messages.map((m) => m.header.msg_type);
  const states = r.messages.filter((m) => m.header.msg_type === "status").map((m) =>
    m.content.execution_state
  );
  if (types[0] !== "status" || types.at(-1) !== "status" || states.join() !== "busy,idle") {
    return `cell ${i}: iopub not busy ... idle: ${types.join(", ")}`;
  }
  if (types[1] !== "execute_input" || r.messages[1].content.execution_count !== count) {
    return `cell ${i}: no execute_input with count ${count}: ${types.join(", ")}`;
  }
  const got = r.messages.slice(2, -1), want = soakCell(i).outputs;
  if (got.length !== want.length) {
    return `cell ${i}: ${got.length} outputs (${
      got.map((m) => m.header.msg_type).join(", ")
    }), expected ${want.length}`;
  }
  for (let k = 0; k < want.length; k++) {
    const m = got[k], w = want[k];
    if (m.header.msg_type !== w.type) {
      return `cell ${i}: output ${k} is ${m.header.msg_type}, expected ${w.type}`;
    }
    let text: unknown;
    if (w.type === "stream") {
      if (m.content.name !== w.name) return `cell ${i}: output ${k} on ${m.content.name}, expected ${w.name}`;
      text = m.content.text;
    } else {
      const data = m.content.data as Record<string, unknown>;
      text = w.mime === "application/json" ? JSON.stringify(data[w.mime]) : data[w.mime];
      if (w.type === "execute_result" && m.content.execution_count !== count) {
        return `cell ${i}: execute_result count ${m.content.execution_count}, expected ${count}`;
      }
    }
    if (text !== w.text) {
      return `cell ${i}: output ${k} is ${JSON.stringify(text).slice(0, 80)}, expected ${
        JSON.stringify(w.text).slice(0, 80)
      }`;
    }
  }
  return null;
}

/** A kernel sample. */
export interface KernelSample {
  cell: number;
  /** RSS of the kernel's process tree, bytes. */
  kernelRss: number;
  /** JS heap in use in the kernel's cell executor after a collection, bytes (NaN if the sample cell failed). */
  workerHeap: number;
  /** RSS and JS heap in use (after a collection) of this process, the client. */
  clientRss: number;
  clientHeap: number;
  /** Median seconds per cell over the cells since the previous sample. */
  cellSeconds: number;
  /** Messages the client has verified so far (its replay history holds the last 65,536 digests). */
  verified: number;
}

/** The kernel soak's result. */
export interface KernelSoak {
  cells: number;
  seconds: number;
  cellsPerSecond: number;
  /** Median seconds per cell (request to reply and idle) over the first and the last tenth of the cells. */
  firstTenthCellSeconds: number;
  lastTenthCellSeconds: number;
  maxCellSeconds: number;
  outputs: number;
  expectedOutputs: number;
  /** Messages the client verified (replies and iopub messages of every request, samples included). */
  verified: number;
  /** The first problems found (at most 20) and how many in all. */
  problems: string[];
  problemCount: number;
  kernelPid: number | null;
  gc: boolean;
  samples: KernelSample[];
  kernelRss: Trend;
  workerHeap: Trend;
  clientRss: Trend;
  clientHeap: Trend;
  /** The heartbeat answered after the last cell. */
  alive: boolean;
  /** The kernel's exit code after shutdown. */
  exitCode: number | null;
}

/** Options of {@link kernelSoak}. */
export interface KernelSoakOptions {
  /** Cells (default 10,000). */
  cells?: number;
  /** Sample every this many cells (default 100). */
  sampleEvery?: number;
  /** Kernel command line (default this checkout's kernelspec). */
  argv?: string[];
  log?: (line: string) => void;
}

// Outside history (store_history false: no execution_count of its own), so the soak's cells keep theirs.
const SAMPLE_CELL = [
  `import v8 from "node:v8";`,
  `import vm from "node:vm";`,
  `v8.setFlagsFromString("--expose-gc");`,
  `vm.runInNewContext("gc")();`,
  `console.log(JSON.stringify(Deno.memoryUsage()));`,
].join("\n");

/** Runs `cells` cells through one kernel and one client, checking each as it returns. */
export async function kernelSoak(opts: KernelSoakOptions = {}): Promise<KernelSoak> {
  const cells = opts.cells ?? 10_000, every = opts.sampleEvery ?? 100;
  const kc = await KernelClient.start(opts.argv ? { argv: opts.argv } : {});
  const problems: string[] = [];
  let problemCount = 0, outputs = 0, verified = 0, pid: number | null = null, alive = false;
  const problem = (p: string) => {
    problemCount++;
    if (problems.length < 20) problems.push(p);
  };
  const samples: KernelSample[] = [];
  const times: number[] = [];
  const t0 = performance.now();
  try {
    pid = kernelPid(kc.connectionFile);
    const setup = await kc.execute("var soakTotal = 0", { timeoutMs: 60_000 });
    if (setup.reply?.content.status !== "ok") {
      throw new Error(
        `kernelSoak: the setup cell failed: ${JSON.stringify(setup.reply?.content ?? setup.failure)}`,
      );
    }
    const base = Number(setup.reply.content.execution_count);
    for (let i = 1; i <= cells; i++) {
      const r = await kc.execute(soakCell(i).code, { timeoutMs: 60_000 });
      times.push(r.seconds);
      verified += r.messages.length + (r.reply ? 1 : 0);
      outputs += r.messages.filter((m) => !["status", "execute_input"].includes(m.header.msg_type)).length;
      const p = cellProblem(i, r, base + i);
      if (p) {
        problem(p);
        if (r.failure) break; // the kernel is gone or wedged: every later cell would fail the same way
      }
      if (i % every === 0) {
        const g = await kc.execute(SAMPLE_CELL, { timeoutMs: 60_000, storeHistory: false });
        verified += g.messages.length + (g.reply ? 1 : 0);
        let workerHeap = NaN;
        try {
          const line = g.messages.find((m) => m.header.msg_type === "stream")?.content.text;
          workerHeap = JSON.parse(String(line)).heapUsed;
        } catch {
          problem(`sample after cell ${i}: ${JSON.stringify(g.reply?.content ?? g.failure)}`);
        }
        fullGc();
        const u = Deno.memoryUsage();
        samples.push({
          cell: i,
          kernelRss: (pid !== null ? treeRss(pid) : null) ?? NaN,
          workerHeap,
          clientRss: u.rss,
          clientHeap: u.heapUsed,
          cellSeconds: median(times.slice(-every)),
          verified,
        });
        if (opts.log && i % (every * 10) === 0) {
          const z = samples.at(-1)!;
          opts.log(
            `  kernel: cell ${i}/${cells}, ${(z.cellSeconds * 1000).toFixed(1)} ms/cell, kernel RSS ${
              (z.kernelRss / MiB).toFixed(0)
            } MiB, its executor's heap ${(z.workerHeap / MiB).toFixed(1)} MiB, client RSS ${
              (z.clientRss / MiB).toFixed(0)
            } MiB, ${problemCount} problems, load ${loadAverage()}`,
          );
        }
      }
    }
    alive = await kc.ping(5000);
  } finally {
    await kc.shutdown();
  }
  const seconds = (performance.now() - t0) / 1000;
  const series = (f: (x: KernelSample) => number) => trend(samples.map((x) => [x.cell, f(x)]), cells);
  const tenth = Math.max(1, Math.floor(cells / 10));
  return {
    cells,
    seconds,
    cellsPerSecond: cells / seconds,
    firstTenthCellSeconds: median(times.slice(0, tenth)),
    lastTenthCellSeconds: median(times.slice(-tenth)),
    maxCellSeconds: Math.max(...times),
    outputs,
    expectedOutputs: Array.from({ length: cells }, (_, k) => soakCell(k + 1).outputs.length).reduce(
      (a, b) => a + b,
      0,
    ),
    verified,
    problems,
    problemCount,
    kernelPid: pid,
    gc: fullGc(),
    samples,
    kernelRss: series((x) => x.kernelRss),
    workerHeap: series((x) => x.workerHeap),
    clientRss: series((x) => x.clientRss),
    clientHeap: series((x) => x.clientHeap),
    alive,
    exitCode: kc.exitStatus?.code ?? null,
  };
}

/** The median cell time over the last tenth against the first's ({@link CELL_TIME_GROWTH_BOUND}). */
function cellTimeCheck(r: KernelSoak): Check {
  const name = `median cell time over the last tenth < ${CELL_TIME_GROWTH_BOUND}x the first tenth's`;
  const ratio = r.lastTenthCellSeconds / r.firstTenthCellSeconds;
  const detail = `${(r.lastTenthCellSeconds * 1000).toFixed(1)} ms against ${
    (r.firstTenthCellSeconds * 1000).toFixed(1)
  } ms (${ratio.toFixed(2)}x)`;
  if (r.cells < MIN_SLOPE_SPAN) {
    return { name, ok: true, detail: `not judged under ${MIN_SLOPE_SPAN} cells: ${detail}` };
  }
  return { name, ok: ratio < CELL_TIME_GROWTH_BOUND, detail };
}

/**
 * The kernel soak's pass criteria: no problem in any cell and every expected output counted; the kernel
 * found, alive at the end, exiting 0; its RSS within its per-cell budget; its executor's heap flat; the median
 * cell time flat; the client's heap flat but for its replay history, its RSS flat.
 */
export function judgeKernel(r: KernelSoak): Check[] {
  // the replay history's share of the client's heap growth, from its lowest sample to the end
  const low = r.samples.find((x) => x.cell === r.clientHeap.lowAt)?.verified ?? 0;
  const digests = Math.min(r.verified, REPLAY_HISTORY) - Math.min(low, REPLAY_HISTORY);
  const clientHeapBound = HEAP_BOUND_MIB + (digests * DIGEST_BYTES) / MiB;
  return [
    {
      name: "every cell ok, every output exactly once and in order, execution_count +1 per cell",
      ok: r.problemCount === 0 && r.outputs === r.expectedOutputs,
      detail: r.problemCount === 0
        ? `${r.cells} cells, ${r.outputs} of ${r.expectedOutputs} outputs`
        : `${r.problemCount} problems; first: ${r.problems[0]}`,
    },
    { name: "the kernel's process found in /proc", ok: r.kernelPid !== null, detail: `pid ${r.kernelPid}` },
    { name: "the heartbeat answers after the last cell", ok: r.alive, detail: String(r.alive) },
    { name: "the kernel exits 0 on shutdown", ok: r.exitCode === 0, detail: `exit code ${r.exitCode}` },
    gcCheck(r.gc),
    slopeCheck("kernel process tree RSS", r.kernelRss, r.cells, KERNEL_SLOPE_BOUND, "cell"),
    slopeCheck("kernel cell executor's JS heap", r.workerHeap, r.cells, WORKER_HEAP_SLOPE_BOUND, "cell"),
    growthCheck("kernel cell executor's JS heap", r.workerHeap, WORKER_HEAP_BOUND_MIB),
    cellTimeCheck(r),
    growthCheck(
      `client JS heap in use (${HEAP_BOUND_MIB} MiB + ${DIGEST_BYTES} bytes for each of ${digests} replay digests)`,
      r.clientHeap,
      +clientHeapBound.toFixed(2),
    ),
    growthCheck("client RSS", r.clientRss, RSS_BOUND_MIB),
  ];
}

// ------------------------------------------------------------------------------------------ bench

const mib = (b: number) => `${(b / MiB).toFixed(1)}`;
const checkLine = (c: Check) => `${c.ok ? "pass" : "FAIL"}  ${c.name}: ${c.detail}`;

/** `deno task bench soak [steps] [cells]`: the full soak, tables, bench/results/soak.json. */
export async function main(args: string[] = []): Promise<{ train: Check[]; kernel: Check[] }> {
  const nums = args.map(Number).filter((n) => !Number.isNaN(n));
  const steps = nums[0] ?? 10_000, cells = nums[1] ?? 10_000;
  const log = (l: string) => console.log(l);
  const loadStart = loadAverage(), started = new Date().toISOString();
  console.log(
    `soak: ${steps} MLP steps and ${Math.floor(steps / 10)} TransformerLM steps, then ${cells} kernel cells`,
  );
  const train = await trainSoak({ steps, log });
  const trainChecks = judgeTrain(train);
  const loadMid = loadAverage();
  const kernel = await kernelSoak({ cells, log });
  const kernelChecks = judgeKernel(kernel);
  const loadEnd = loadAverage();
  const text = [
    `\ntraining on webgpu (${train.adapter}); MiB; samples every 100 steps after a full collection`,
    table(
      [
        "model",
        "steps",
        "steps/s",
        "RSS",
        "outside V8 heap",
        "JS heap",
        "in use",
        "buffers",
        "pooled",
        "loss",
      ],
      train.phases.map((p) => {
        const a = p.samples.find((x) => x.step >= p.warmup), z = p.samples.at(-1);
        return [
          p.model,
          String(p.steps),
          p.stepsPerSecond.toFixed(1),
          `${p.rss.startMiB.toFixed(0)} -> ${p.rss.endMiB.toFixed(0)}`,
          `${p.native.startMiB.toFixed(0)} -> ${p.native.endMiB.toFixed(0)}`,
          `${p.heap.startMiB.toFixed(1)} -> ${p.heap.endMiB.toFixed(1)}`,
          a && z ? `${mib(a.bytesInUse)} -> ${mib(z.bytesInUse)}` : "-",
          a && z ? `${a.liveBuffers} -> ${z.liveBuffers}` : "-",
          a && z ? `${mib(a.pooledBytes)} -> ${mib(z.pooledBytes)}` : "-",
          `${p.firstLoss.toFixed(2)} -> ${p.lastLoss.toFixed(3)}`,
        ];
      }),
    ),
    `\nkernel: ${kernel.cells} cells through one client in ${kernel.seconds.toFixed(0)} s, ${
      kernel.cellsPerSecond.toFixed(1)
    } cells/s; median ${(kernel.firstTenthCellSeconds * 1000).toFixed(1)} ms per cell over the first tenth, ${
      (kernel.lastTenthCellSeconds * 1000).toFixed(1)
    } ms over the last, max ${(kernel.maxCellSeconds * 1000).toFixed(0)} ms; ${kernel.outputs} outputs`,
    table(
      ["process (MiB)", "after warm-up", "at the end", "lowest", "slope bytes/cell"],
      ([
        ["kernel tree RSS", kernel.kernelRss],
        ["kernel executor JS heap", kernel.workerHeap],
        ["client RSS", kernel.clientRss],
        ["client JS heap", kernel.clientHeap],
      ] as const).map(([who, t]) => [
        who,
        t.startMiB.toFixed(1),
        t.endMiB.toFixed(1),
        t.lowMiB.toFixed(1),
        t.bytesPerUnit.toFixed(0),
      ]),
    ),
    "",
    ...[...trainChecks, ...kernelChecks].map(checkLine),
    `\nload average (1 min): ${loadStart} at the start, ${loadMid} after training, ${loadEnd} at the end`,
  ].join("\n");
  console.log(text);
  const file = await writeResult("soak", {
    date: started,
    loadAverage: { start: loadStart, afterTraining: loadMid, end: loadEnd },
    bounds: {
      heapMiB: HEAP_BOUND_MIB,
      nativeMiB: NATIVE_BOUND_MIB,
      nativeSlopeBytesPerStep: NATIVE_SLOPE_BOUND,
      rssMiB: RSS_BOUND_MIB,
      minSlopeSpan: MIN_SLOPE_SPAN,
      kernelSlopeBytesPerCell: KERNEL_SLOPE_BOUND,
      workerHeapSlopeBytesPerCell: WORKER_HEAP_SLOPE_BOUND,
      workerHeapMiB: WORKER_HEAP_BOUND_MIB,
      cellTimeGrowth: CELL_TIME_GROWTH_BOUND,
    },
    train: {
      ...train,
      phases: train.phases.map((p) => ({
        ...p,
        samples: p.samples.map((x) => [
          x.step,
          +(x.rss / MiB).toFixed(2),
          +(x.heapUsed / MiB).toFixed(3),
          +(x.heapTotal / MiB).toFixed(2),
          x.bytesInUse,
          x.liveBuffers,
          x.pooledBytes,
          +x.loss.toFixed(4),
        ]),
      })),
      sampleColumns: [
        "step",
        "rss MiB",
        "heapUsed MiB",
        "heapTotal MiB",
        "bytesInUse",
        "liveBuffers",
        "pooledBytes",
        "loss",
      ],
      checks: trainChecks,
    },
    kernel: {
      ...kernel,
      samples: kernel.samples.map((x) => [
        x.cell,
        +(x.kernelRss / MiB).toFixed(2),
        +(x.workerHeap / MiB).toFixed(3),
        +(x.clientRss / MiB).toFixed(2),
        +(x.clientHeap / MiB).toFixed(3),
        +(x.cellSeconds * 1000).toFixed(2),
      ]),
      sampleColumns: [
        "cell",
        "kernel tree RSS MiB",
        "executor heapUsed MiB",
        "client RSS MiB",
        "client heapUsed MiB",
        "median ms/cell since the last sample",
      ],
      checks: kernelChecks,
    },
  });
  console.log(`wrote ${file}`);
  return { train: trainChecks, kernel: kernelChecks };
}

if (import.meta.main) await main(Deno.args);
