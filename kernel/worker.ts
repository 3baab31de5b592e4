/**
 * The cell executor. Runs in a Worker of the execution host (kernel/host.ts, a child process of the
 * kernel), so that the host's main thread can interrupt it and answer prompts through the shared control
 * array while a cell computes, and the kernel process keeps answering the protocol whatever the cell does.
 *
 * A cell arrives as a script (transform.ts's compileCell: rewritten, wrapped in an async function, types
 * stripped) that the kernel wrote to a file; the worker reads it and runs it with an indirect eval, named by
 * `//# sourceURL=` after the file, so tracebacks name the cell. It is never imported: Deno keeps every module
 * it has loaded, and a module per cell made the executor grow and each import slower (issue #16). Its
 * top-level names live on globalThis. Every output goes through one ordered outbox to the host's main
 * thread, and `done` is posted only after the cell's function has finished and every output it produced has
 * been posted: nothing a cell awaited can arrive after its `idle`.
 *
 * Interrupts: the host's main thread sets ctl[CTL_INTERRUPT]; loop bodies call `__sl_ck()`, which throws an
 * InterruptError while it is set (it stays set until the cell ends, so a `catch` cannot swallow it for
 * good). A cell that is awaiting is interrupted by an `interrupt` message instead.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { Console } from "node:console";
import { Writable } from "node:stream";
import {
  $display,
  clearOutput,
  formatValue,
  html,
  image,
  json,
  md,
  mime,
  type MimeBundle,
  plot,
  progress,
  setDisplaySink,
  svg,
} from "./display.ts";
import {
  CTL_INPUT_LEN,
  CTL_INPUT_STATE,
  CTL_INTERRUPT,
  type FromWorker,
  INPUT_INTERRUPTED,
  INPUT_WAITING,
  type Output,
  type ToWorker,
} from "./messages.ts";

/** Raised in a cell when the user interrupts it. */
export class InterruptError extends Error {
  override name = "InterruptError";
  constructor() {
    super("execution interrupted");
  }
}

const post = (m: FromWorker) => self.postMessage(m);
let ctl: Int32Array<ArrayBufferLike> = new Int32Array(4);
let inputBuf: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
let currentSeq = -1;
let allowStdin = false;
let interruptReject: ((e: unknown) => void) | null = null;
const g = globalThis as unknown as Record<string, unknown>;

// ------------------------------------------------------------------ ordered outbox

/** Outputs wait here only while an earlier asynchronous display is still being formatted. */
const pending: { ready: boolean; out?: Output; seq: number }[] = [];
let streamBuf: { name: "stdout" | "stderr"; text: string } | null = null;
let lastStreamFlush = 0;
let streamTimer: ReturnType<typeof setTimeout> | undefined;

function flushStream(): void {
  if (streamTimer !== undefined) {
    clearTimeout(streamTimer);
    streamTimer = undefined;
  }
  if (!streamBuf) return;
  const b = streamBuf;
  streamBuf = null;
  lastStreamFlush = performance.now();
  emitNow({ kind: "stream", name: b.name, text: b.text });
}

function emitNow(out: Output): void {
  if (pending.length) pending.push({ ready: true, out, seq: currentSeq });
  else post({ type: "out", seq: currentSeq, out });
}

function drain(): void {
  while (pending.length && pending[0].ready) {
    const p = pending.shift()!;
    if (p.out) post({ type: "out", seq: p.seq, out: p.out });
  }
}

/** Queue an output; streams are coalesced but never held past another output or 50 ms. */
function emit(out: Output): void {
  if (out.kind === "stream") {
    if (streamBuf && streamBuf.name !== out.name) flushStream();
    if (streamBuf) streamBuf.text += out.text;
    else streamBuf = { name: out.name, text: out.text };
    // Inside a long synchronous loop timers never fire, so time is checked on every write too.
    if (streamBuf.text.length > 64 * 1024 || performance.now() - lastStreamFlush > 50) flushStream();
    else if (streamTimer === undefined) streamTimer = setTimeout(flushStream, 20);
    return;
  }
  flushStream();
  emitNow(out);
}

/** Reserve a place for an output that is still being computed (async display formatting). */
function reserve(): (out: Output | undefined) => void {
  flushStream();
  const slot: { ready: boolean; out?: Output; seq: number } = { ready: false, seq: currentSeq };
  pending.push(slot);
  return (out) => {
    slot.out = out;
    slot.ready = true;
    drain();
  };
}

const inFlight = new Set<Promise<unknown>>();
function track<T>(p: Promise<T>): Promise<T> {
  inFlight.add(p);
  p.finally(() => inFlight.delete(p)).catch(() => {});
  return p;
}

/** Wait until every output of the cell has been posted. */
async function settle(): Promise<void> {
  for (let i = 0; i < 100 && inFlight.size; i++) await Promise.allSettled([...inFlight]);
  flushStream();
  drain();
}

// ------------------------------------------------------------------ console, display, input

function writable(name: "stdout" | "stderr"): Writable {
  return new Writable({
    write(chunk: unknown, _enc: unknown, cb: () => void) {
      emit({ kind: "stream", name, text: String(chunk) });
      cb();
    },
  });
}

const cellConsole = new Console({
  stdout: writable("stdout"),
  stderr: writable("stderr"),
  colorMode: false,
  inspectOptions: { depth: 4 },
});
g.console = cellConsole;

setDisplaySink({
  display(data, metadata, displayId, update) {
    emit({ kind: "display", data, metadata, displayId, update: !!update });
  },
  clear(wait) {
    emit({ kind: "clear", wait });
  },
});

/** `display` for cells: keeps its place in the output order even when formatting is asynchronous. */
let displayCount = 0;
function cellDisplay(
  value: unknown,
  opts: { id?: string; update?: boolean; raw?: boolean } = {},
): Promise<{ id: string; update(v: unknown): Promise<unknown> }> {
  const done = reserve();
  const update = opts.update ?? false;
  const id = opts.id ?? (update ? undefined : `seqlab-display-${displayCount++}`);
  const formatted = opts.raw
    ? Promise.resolve({ data: value as MimeBundle, metadata: {} })
    : formatValue(value);
  const p = formatted.then(
    (b) => done({ kind: "display", data: b.data, metadata: b.metadata, displayId: id, update }),
    (e) => {
      done(undefined);
      throw e;
    },
  ).then(() => ({ id: id ?? "", update: (v: unknown) => cellDisplay(v, { id, update: true }) }));
  // `display(x)` as a cell's last line shows x once, not also a pending Promise.
  return Object.assign(track(p), { [NO_RESULT]: true });
}

/** Marks values that are not shown as a cell's result. */
const NO_RESULT = Symbol.for("seqlab.noResult");

const dec = new TextDecoder();

function requestInput(promptText: string, password: boolean): string {
  if (!allowStdin) {
    throw new Error("input is not available: the frontend does not allow stdin (allow_stdin is false)");
  }
  flushStream();
  Atomics.store(ctl, CTL_INPUT_STATE, INPUT_WAITING);
  post({ type: "input", prompt: promptText, password });
  while (Atomics.load(ctl, CTL_INPUT_STATE) === INPUT_WAITING) {
    Atomics.wait(ctl, CTL_INPUT_STATE, INPUT_WAITING, 1000);
  }
  if (Atomics.load(ctl, CTL_INPUT_STATE) === INPUT_INTERRUPTED) throw new InterruptError();
  const n = Atomics.load(ctl, CTL_INPUT_LEN);
  return dec.decode(inputBuf.slice(0, n));
}

g.prompt = (message = "", defaultValue?: string) => {
  const v = requestInput(String(message), false);
  return v === "" && defaultValue !== undefined ? defaultValue : v;
};
g.confirm = (message = "") => /^y(es)?$/i.test(requestInput(`${message} [y/N] `, false).trim());
g.alert = (message = "") => {
  requestInput(`${message} [Enter] `, false);
};
/** Read a line from the frontend, optionally hidden (passwords). */
g.input = (message = "", opts: { password?: boolean } = {}) => requestInput(String(message), !!opts.password);

// A cell must not end the worker or the process behind the kernel's back: say how instead.
g.close = () => {
  throw new Error("close() would stop the kernel's execution worker; restart the kernel instead");
};
try {
  Object.defineProperty(Deno, "exit", {
    value: (code?: number) => {
      throw new Error(`Deno.exit(${code ?? ""}) in a notebook cell: restart or shut down the kernel instead`);
    },
    configurable: true,
    writable: true,
  });
} catch { /* Deno namespace frozen */ }

// Node-style writes (process.stdout.write, used by some npm packages) reach the notebook too.
try {
  // deno-lint-ignore no-explicit-any
  const proc = (globalThis as any).process;
  for (const name of ["stdout", "stderr"] as const) {
    const stream = proc?.[name];
    if (!stream) continue;
    stream.write = (chunk: unknown, ...rest: unknown[]) => {
      emit({
        kind: "stream",
        name,
        text: typeof chunk === "string" ? chunk : dec.decode(chunk as Uint8Array),
      });
      const cb = rest.find((f) => typeof f === "function") as (() => void) | undefined;
      cb?.();
      return true;
    };
  }
} catch { /* no Node compatibility layer */ }

const jupyter = {
  display: cellDisplay,
  html,
  md,
  svg,
  image,
  json,
  mime,
  plot,
  progress,
  clearOutput,
  $display,
};
Object.assign(g, { display: cellDisplay, html, md, svg, image, json, plot, progress, clearOutput, jupyter });
try {
  // Deno's kernel puts these on Deno.jupyter; do the same where the namespace allows it.
  // deno-lint-ignore no-explicit-any
  if (!(Deno as any).jupyter) Object.defineProperty(Deno, "jupyter", { value: jupyter, configurable: true });
} catch { /* Deno namespace frozen: the global `jupyter` still works */ }

// ------------------------------------------------------------------ helpers the rewritten cells call

g.__sl_ck = () => {
  if (Atomics.load(ctl, CTL_INTERRUPT) !== 0) throw new InterruptError();
};
/** The running cell's pending awaits, each with the stack where it waits (the last is the innermost). */
const awaiting = new Set<Error>();
g.__sl_aw = <T>(v: T): T => {
  // Only a native promise can keep the cell waiting; the value is returned as is, so `await` behaves as
  // before (no extra tick, a thenable's `then` called once).
  if (!(v instanceof Promise)) return v;
  const at = new Error();
  awaiting.add(at);
  const done = () => awaiting.delete(at);
  v.then(done, done);
  return v;
};
/**
 * An InterruptError whose stack is where the cell waits, if it waits: the pending await with the deepest
 * stack (`await f()` waits on f's own await, whose stack also names the line calling f).
 */
function interruptedAwait(): InterruptError {
  const e = new InterruptError();
  const depth = (x: Error) => x.stack?.split("\n").length ?? 0;
  const at = [...awaiting].reduce<Error | undefined>((a, b) => (a && depth(a) > depth(b) ? a : b), undefined);
  // at.stack: "Error", then this helper's frame (main.ts drops worker.ts frames), then the cell's.
  if (at?.stack) e.stack = `${e.name}: ${e.message}\n${at.stack.split("\n").slice(1).join("\n")}`;
  return e;
}
g.__sl_decl = (names: string[]) => {
  for (const n of names) {
    const d = Object.getOwnPropertyDescriptor(globalThis, n);
    if (!d) {
      Object.defineProperty(globalThis, n, {
        value: undefined,
        writable: true,
        configurable: true,
        enumerable: true,
      });
    } else if (!("value" in d) || !d.writable) {
      if (!d.configurable) throw new TypeError(`cannot declare ${n}: it is a read-only global`);
      Object.defineProperty(globalThis, n, {
        value: undefined,
        writable: true,
        configurable: true,
        enumerable: true,
      });
    }
  }
};
g.__sl_set = (name: string, value: unknown) => {
  const d = Object.getOwnPropertyDescriptor(globalThis, name);
  if (d && !d.configurable) {
    if (d.writable) g[name] = value;
    else throw new TypeError(`cannot declare ${name}: it is a read-only global`);
  } else {Object.defineProperty(globalThis, name, {
      value,
      writable: true,
      configurable: true,
      enumerable: true,
    });}
};
/** The executor's working directory as a directory URL: the base of a cell's relative specifiers. */
const cwdUrl = () => new URL(`file://${Deno.cwd().replace(/\/?$/, "/")}`);
/** Relative specifiers against the cwd; the rest (file URLs, `npm:`, "seqlab") through deno.json's imports. */
const resolveSpec = (spec: string) => /^\.{0,2}\//.test(spec) ? new URL(spec, cwdUrl()).href : spec;
// `import` lines arrive resolved against the kernel's cwd; `import(x)` calls resolve x when they run.
g.__sl_import = (spec: string, opts?: ImportCallOptions) => import(resolveSpec(String(spec)), opts);
/** `import.meta` in a cell (a script has none): the working directory stands for the cell's location. */
g.__sl_meta = {
  get url() {
    return cwdUrl().href;
  },
  get dirname() {
    return Deno.cwd();
  },
  filename: undefined,
  main: false,
  resolve: (spec: string) => /^\.{0,2}\//.test(spec) ? resolveSpec(spec) : import.meta.resolve(spec),
};
let result: { has: boolean; value: unknown } = { has: false, value: undefined };
g.__sl_r = (v: unknown) => {
  result = { has: true, value: v };
  return v;
};

// ------------------------------------------------------------------ running cells

function errorOutput(e: unknown): Output {
  if (e instanceof Error) {
    return {
      kind: "error",
      ename: e.name || "Error",
      evalue: e.message,
      stack: e.stack ?? `${e.name}: ${e.message}`,
    };
  }
  let s: string;
  try {
    s = typeof e === "string" ? e : Deno.inspect(e, { colors: false });
  } catch {
    s = String(e);
  }
  return { kind: "error", ename: "Uncaught", evalue: s, stack: `Uncaught ${s}` };
}

/**
 * Run the cell's script (the file at `url`) with an indirect eval: global scope, strict (the script says
 * so), no module registered. Resolves when the cell's async function ends.
 */
async function evalCell(url: string): Promise<unknown> {
  const src = await Deno.readTextFile(new URL(url));
  let p: unknown;
  try {
    p = (0, eval)(`${src}\n//# sourceURL=${url}`);
  } catch (e) {
    // Thrown by eval itself: the script did not compile (an early error TypeScript's parser lets through,
    // such as `await` in a function that is not async). V8 gives no position: find it, see syntaxErrorAt.
    if (e instanceof SyntaxError) throw await syntaxErrorAt(e, src, url);
    throw e;
  }
  return await p;
}

/**
 * A SyntaxError naming where in the script it is, as `url:line:column` (the kernel maps that to the cell's
 * line). An eval's SyntaxError has no position, a module's has one: the script is imported as a data: module
 * inside a function that is never called, only to read the position from the error. Only a cell that failed to
 * compile pays that module, and if the module does compile after all, the error is left without a position.
 */
async function syntaxErrorAt(e: SyntaxError, src: string, url: string): Promise<SyntaxError> {
  const bytes = new TextEncoder().encode(`export default function () {\n${src}\n}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  let where = "";
  try {
    await import(`data:application/javascript;base64,${btoa(bin)}`);
  } catch (m) {
    const at = /:(\d+):(\d+)\s*$/.exec(String((m as Error)?.message ?? ""));
    if (at && Number(at[1]) > 1) where = `${url}:${Number(at[1]) - 1}:${at[2]}`;
  }
  const out = new SyntaxError(where ? `${e.message} at ${where}` : `${e.message} (in ${url})`);
  out.stack = `SyntaxError: ${out.message}${where ? `\n    at ${where}` : ""}`;
  return out;
}

async function run(m: Extract<ToWorker, { type: "run" }>): Promise<void> {
  currentSeq = m.seq;
  allowStdin = m.allowStdin;
  result = { has: false, value: undefined };
  let status: "ok" | "error" = "ok";
  let resultText: string | undefined;
  const interrupted = new Promise<never>((_, rej) => (interruptReject = rej));
  interrupted.catch(() => {});
  try {
    await Promise.race([evalCell(m.url), interrupted]);
    const v = result.value as Record<symbol, unknown> | undefined;
    const hidden = v !== null && (typeof v === "object" || typeof v === "function") && v[NO_RESULT] === true;
    if (result.has && result.value !== undefined && !m.silent && !hidden) {
      const done = reserve();
      try {
        const b = await Promise.race([formatValue(result.value), interrupted]);
        resultText = String(b.data["text/plain"]);
        done({ kind: "result", data: b.data, metadata: b.metadata });
      } catch (e) {
        done(undefined);
        throw e;
      }
    }
    await Promise.race([settle(), interrupted]);
  } catch (e) {
    status = "error";
    flushStream();
    emit(errorOutput(e));
  }
  interruptReject = null;
  awaiting.clear();
  result = { has: false, value: undefined };
  // Async displays that were interrupted must not hold back the rest.
  for (const p of pending) p.ready = true;
  flushStream();
  drain();
  const userExpressions: Record<string, unknown> = {};
  if (status === "ok") {
    for (const [k, expr] of Object.entries(m.userExpressions ?? {})) {
      try {
        const b = await formatValue((0, eval)(expr));
        userExpressions[k] = { status: "ok", data: b.data, metadata: b.metadata };
      } catch (e) {
        const o = errorOutput(e) as Extract<Output, { kind: "error" }>;
        userExpressions[k] = { status: "error", ename: o.ename, evalue: o.evalue, traceback: [o.stack] };
      }
    }
  }
  post({ type: "done", seq: m.seq, status, userExpressions, resultText });
}

// ------------------------------------------------------------------ completion and inspection

const IDENT_PATH = /^[A-Za-z_$][\w$]*(\s*\??\.\s*[A-Za-z_$#][\w$]*)*$/;

function evalPath(expr: string): { ok: boolean; value?: unknown } {
  if (!IDENT_PATH.test(expr.trim())) return { ok: false };
  try {
    return { ok: true, value: (0, eval)(expr.replace(/\?\./g, ".")) };
  } catch {
    return { ok: false };
  }
}

function propertyNames(v: unknown): string[] {
  const names = new Set<string>();
  let o: unknown = v;
  if (o === null || o === undefined) return [];
  if (typeof o !== "object" && typeof o !== "function") o = Object(o);
  for (let depth = 0; o && depth < 20; depth++) {
    for (const k of Object.getOwnPropertyNames(o)) names.add(k);
    o = Object.getPrototypeOf(o);
  }
  return [...names].filter((k) => /^[A-Za-z_$][\w$]*$/.test(k));
}

function complete(object: string | null, prefix: string): string[] {
  let names: string[];
  if (object !== null) {
    const r = evalPath(object);
    names = r.ok ? propertyNames(r.value) : [];
  } else names = propertyNames(globalThis).filter((k) => !k.startsWith("__sl_"));
  return [...new Set(names)].filter((k) => k.startsWith(prefix)).sort((a, b) => {
    const pa = a.startsWith("_") ? 1 : 0, pb = b.startsWith("_") ? 1 : 0;
    return pa - pb || a.localeCompare(b);
  });
}

/** Signature line of a function from its source text. */
function signatureOf(f: (...a: unknown[]) => unknown): string {
  const src = Function.prototype.toString.call(f);
  if (/\{\s*\[native code\]\s*\}$/.test(src)) {
    return `${f.name}(${Array(f.length).fill("arg").map((a, i) => a + i).join(", ")})`;
  }
  if (src.startsWith("class")) return src.slice(0, src.indexOf("{")).trim();
  let depth = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === "(") depth++;
    else if (c === ")") {
      depth--;
      if (depth === 0) {
        const head = src.slice(0, i + 1).replace(/\s+/g, " ");
        return head.startsWith("function") || head.startsWith("async")
          ? head
          : `${f.name}${head.replace(/^[^(]*/, "")}`;
      }
    }
  }
  return `${f.name}(…)`;
}

function inspect(
  expr: string,
): { found: boolean; type?: string; signature?: string; repr?: string; doc?: string } {
  const r = evalPath(expr);
  if (!r.ok) return { found: false };
  const v = r.value;
  const type = v === null
    ? "null"
    : typeof v === "object"
    ? (Object.getPrototypeOf(v)?.constructor?.name ?? "Object")
    : typeof v === "function" && /^class\b/.test(Function.prototype.toString.call(v))
    ? "class"
    : typeof v;
  const out: { found: boolean; type?: string; signature?: string; repr?: string } = { found: true, type };
  if (typeof v === "function") out.signature = signatureOf(v as (...a: unknown[]) => unknown);
  try {
    const s = Deno.inspect(v, { colors: false, depth: 2, iterableLimit: 20 });
    out.repr = s.length > 2000 ? s.slice(0, 2000) + " …" : s;
  } catch { /* exotic value */ }
  return out;
}

// ------------------------------------------------------------------ message loop

async function preload(): Promise<string | undefined> {
  try {
    const m = await import("seqlab");
    g.seqlab = m;
    const skipped: string[] = [];
    for (const [k, v] of Object.entries(m)) {
      if (k === "default") continue;
      if (k in globalThis) skipped.push(k);
      else {Object.defineProperty(globalThis, k, {
          value: v,
          writable: true,
          configurable: true,
          enumerable: true,
        });}
    }
    return skipped.length ? `seqlab names left to seqlab.*: ${skipped.join(", ")}` : undefined;
  } catch (e) {
    return `seqlab was not preloaded (${(e as Error).message.split("\n")[0]}); cells can still import it`;
  }
}

self.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  switch (m.type) {
    case "init": {
      ctl = new Int32Array(m.ctl);
      inputBuf = new Uint8Array(m.input);
      const warning = m.preload ? await preload() : undefined;
      post({ type: "ready", warning });
      break;
    }
    case "run":
      await run(m);
      break;
    case "interrupt":
      interruptReject?.(interruptedAwait());
      break;
    case "complete":
      post({ type: "reply", id: m.id, value: complete(m.object, m.prefix) });
      break;
    case "inspect":
      post({ type: "reply", id: m.id, value: inspect(m.expr) });
      break;
  }
};

// Errors from timers or promises nobody awaited: report them on stderr instead of killing the worker.
self.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  emit({
    kind: "stream",
    name: "stderr",
    text: `Uncaught (in promise) ${String((e.reason as Error)?.stack ?? e.reason)}\n`,
  });
});
self.addEventListener("error", (e) => {
  e.preventDefault();
  emit({ kind: "stream", name: "stderr", text: `Uncaught ${String(e.error?.stack ?? e.message)}\n` });
});
