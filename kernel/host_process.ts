/**
 * The kernel's side of its execution host (kernel/host.ts): starting the child process with its heap
 * limit, accepting its connection on the kernel's private Unix socket, and telling how it ended.
 *
 * @module
 */
import { FrameChannel } from "./host_channel.ts";
import type { FromHost, ToHost } from "./messages.ts";

/** Environment variable: the execution process's V8 heap limit in MiB ("0": V8's own default). */
export const HEAP_ENV = "SEQLAB_KERNEL_HEAP_MB";

/**
 * The heap limit for the execution process, in MiB, or null for V8's default: SEQLAB_KERNEL_HEAP_MB, else
 * half the machine's memory (12 GiB on a 24 GiB machine), at least 1 GiB. A cell that allocates past it
 * fails at once with an out-of-memory error instead of swapping the machine to a halt. Tensors' typed
 * arrays live outside this heap and do not count against it.
 */
export function heapLimitMb(env = Deno.env.get(HEAP_ENV)): number | null {
  if (env !== undefined && env.trim() !== "") {
    const n = Number(env);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${HEAP_ENV} must be a number of MiB, got "${env}"`);
    return n === 0 ? null : Math.max(16, Math.round(n));
  }
  let total = 0;
  try {
    total = Deno.systemMemoryInfo().total;
  } catch { /* unknown: V8's default */ }
  return total ? Math.max(1024, Math.floor(total / 2 / 2 ** 20)) : null;
}

/** How an execution host ended. */
export interface HostExit {
  code: number;
  signal: Deno.Signal | null;
  /** It never became ready (it failed while starting). */
  beforeReady: boolean;
  /** The V8 out-of-memory abort was in its stderr. */
  outOfMemory: boolean;
  /** Why the kernel killed it, when it did. */
  killedBecause: string | null;
  /** The worker's own fatal error, when the host reported one before exiting. */
  fatal: string | null;
  /** The last lines of its stderr. */
  stderrTail: string;
}

const START_TIMEOUT_MS = 120_000;
const OOM = /Fatal JavaScript out of memory|JavaScript heap out of memory|Fatal process out of memory/;

/** Accepts the hosts' connections on one Unix socket and hands each to the host that presents its token. */
export class HostListener {
  private listener: Deno.UnixListener;
  private waiting = new Map<string, (c: FrameChannel<FromHost, ToHost>, pid: number) => void>();

  constructor(readonly path: string) {
    this.listener = Deno.listen({ transport: "unix", path });
    this.acceptLoop();
  }

  /**
   * Call `take` with the channel of the host that says hello with `token`, synchronously, so that it sets its
   * handler before the frames that followed the hello in the same read are delivered.
   */
  expect(token: string, take: (c: FrameChannel<FromHost, ToHost>, pid: number) => void): void {
    this.waiting.set(token, take);
  }

  /** Stop waiting for `token`. */
  forget(token: string): void {
    this.waiting.delete(token);
  }

  close(): void {
    try {
      this.listener.close();
    } catch { /* closed */ }
  }

  private async acceptLoop(): Promise<void> {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await this.listener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource) return; // closed
        await new Promise((r) => setTimeout(r, 200)); // out of descriptors: try again
        continue;
      }
      const channel = new FrameChannel<FromHost, ToHost>(conn);
      // A connection that does not say hello with a token we gave out is not one of our hosts.
      const timer = setTimeout(() => channel.close(), 10_000);
      channel.onMessage = (m) => {
        clearTimeout(timer);
        const take = m.type === "hello" ? this.waiting.get(m.token) : undefined;
        if (m.type !== "hello" || !take) {
          channel.close();
          return;
        }
        this.waiting.delete(m.token);
        take(channel, m.pid);
      };
    }
  }
}

/** One execution host process: its channel, readiness and exit. */
export class ExecutionHost {
  /** Messages from the host (the worker's and the host's own), in order. */
  onMessage: (m: FromHost) => void = () => {};
  /** Resolves true once the worker is ready, false if the host ended first. */
  readonly ready: Promise<boolean>;
  /** Resolves once the process has exited and every message it sent was delivered. */
  readonly exited: Promise<HostExit>;
  readonly pid: number;
  private channel: FrameChannel<FromHost, ToHost> | null = null;
  private child: Deno.ChildProcess;
  private killedBecause: string | null = null;
  private fatal: string | null = null;
  private isReady = false;
  private stderrTail = "";

  constructor(
    listener: HostListener,
    opts: { preload: boolean; heapMb: number | null; log: (line: string) => void },
  ) {
    const token = crypto.randomUUID();
    let readyResolve!: (ok: boolean) => void;
    this.ready = new Promise((r) => (readyResolve = r));
    const config = new URL("../deno.json", import.meta.url).pathname;
    const args = ["run", "--allow-all", "--quiet", "--config", config];
    if (opts.heapMb !== null) args.push(`--v8-flags=--max-old-space-size=${opts.heapMb}`);
    args.push(new URL("./host.ts", import.meta.url).pathname, listener.path);
    if (!opts.preload) args.push("--no-preload");
    let connected!: (c: FrameChannel<FromHost, ToHost>) => void;
    const channelClosed = new Promise<void>((r) => (connected = (c) => c.closed.then(r)));
    listener.expect(token, (channel) => {
      this.channel = channel;
      channel.onMessage = (m) => {
        if (m.type === "ready") {
          this.isReady = true;
          readyResolve(true);
        }
        if (m.type === "fatal") this.fatal = m.message;
        this.onMessage(m);
      };
      connected(channel);
    });
    this.child = new Deno.Command(Deno.execPath(), {
      args,
      env: { SEQLAB_HOST_TOKEN: token },
      stdin: "null",
      // The cells' own writes to the process's stdout go where the kernel's go (the frontend's log).
      stdout: "inherit",
      stderr: "piped",
    }).spawn();
    this.pid = this.child.pid;
    const stderrDone = this.readStderr(opts.log);
    const status = this.child.status;
    status.then(() => listener.forget(token));
    // A channel that ends while the process lives (it closed its end, or broke) leaves a host nobody can
    // reach: end it.
    let gone = false;
    status.then(() => (gone = true));
    // A host that hangs while starting would hold every cell back: it gets two minutes (the seqlab preload
    // takes seconds, more on a loaded machine).
    const startTimer = setTimeout(() => {
      if (!this.isReady) {
        this.kill(`the execution process did not become ready within ${START_TIMEOUT_MS / 1000} s`);
      }
    }, START_TIMEOUT_MS);
    Deno.unrefTimer(startTimer);
    this.ready.then(() => clearTimeout(startTimer));
    channelClosed.then(() =>
      setTimeout(() => {
        if (!gone) this.kill("the execution process lost its channel to the kernel, so it was restarted");
      }, 1000)
    );
    this.exited = (async () => {
      const s = await status;
      // Everything the host sent before it died, and its last words on stderr, are read first (a host
      // that never connected has no channel to wait for).
      if (this.channel) await within(channelClosed, 1000);
      await within(stderrDone, 1000);
      const beforeReady = !this.isReady;
      readyResolve(false);
      this.channel?.close();
      return {
        code: s.code,
        signal: s.signal,
        beforeReady,
        outOfMemory: OOM.test(this.stderrTail),
        killedBecause: this.killedBecause,
        fatal: this.fatal,
        stderrTail: this.stderrTail,
      };
    })();
  }

  /** Send to the host; dropped when it is gone. */
  send(m: ToHost): void {
    this.channel?.send(m);
  }

  /** Kill the process (SIGKILL); `why` is reported by `exited`. */
  kill(why: string): void {
    this.killedBecause ??= why;
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
  }

  private async readStderr(log: (line: string) => void): Promise<void> {
    const dec = new TextDecoder();
    let partial = "";
    try {
      for await (const chunk of this.child.stderr) {
        const text = dec.decode(chunk, { stream: true });
        this.stderrTail = (this.stderrTail + text).slice(-16 * 1024);
        const lines = (partial + text).split("\n");
        partial = lines.pop()!;
        for (const l of lines) if (l.trim()) log(`host: ${l}`);
      }
    } catch { /* closed */ }
    if (partial.trim()) log(`host: ${partial}`);
  }
}

/** Whether `p` settles within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p.then(() => true, () => true),
      new Promise<false>((r) => (timer = setTimeout(() => r(false), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
