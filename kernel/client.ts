/**
 * A Jupyter client in TypeScript: starts seqlab's kernel and drives it over the messaging protocol (5.3) on
 * ZMTP 3.0 (kernel/zmtp.ts's `ClientSocket`), without Python. `deno task repro` runs notebooks with it.
 *
 * As jupyter_client's KernelManager does, it writes a connection file (here with ports 0: the kernel binds
 * free ports and writes them back, so no port can be taken between choosing and binding), starts the
 * kernel from this checkout's kernelspec argv, and connects DEALER sockets to shell, control and stdin (shell
 * and stdin share one identity, so the kernel can route input_request), a SUB to iopub and a REQ to the
 * heartbeat. It is ready once kernel_info_reply came and iopub delivered that request's status, which proves
 * the subscription is live before the first cell runs.
 *
 * Every message is signed and checked with the connection file's key (kernel/wire.ts). A kernel that exits
 * ends every pending request at once, with its exit status and the tail of its stderr.
 *
 * @module
 */
import { join } from "node:path";
import { ClientSocket, type Frames } from "./zmtp.ts";
import { decode, encode, header as newHeader, type Message, Signer } from "./wire.ts";
import { kernelSpec } from "./install.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Whether `p` settles within `ms` (null: no limit); its timer never outlives it. Rejects as `p` does. */
async function within(p: Promise<unknown>, ms: number | null): Promise<boolean> {
  if (ms === null) return p.then(() => true);
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p.then(() => true),
      new Promise<false>((r) => (timer = setTimeout(() => r(false), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** How to start the kernel. */
export interface StartOptions {
  /** The kernel's working directory (a notebook's folder); default this process's. */
  cwd?: string;
  /** Extra environment for the kernel (added to this process's). */
  env?: Record<string, string>;
  /** Command line with `{connection_file}`; default this checkout's kernelspec argv. */
  argv?: string[];
  /** Folder for the connection file; default a fresh temporary folder, removed at shutdown. */
  runtimeDir?: string;
  /** How long the kernel may take to bind its ports and answer kernel_info (default 120 s). */
  startTimeoutMs?: number;
}

/** What one execute_request produced. */
export interface ExecuteResult {
  /** The execute_reply; null when none came (the kernel died, or ignored the interrupt after a timeout). */
  reply: Message | null;
  /** Every iopub message whose parent is the request, in arrival order: status busy ... status idle. */
  messages: Message[];
  /** The request ran past its timeout and was interrupted (its outputs and the interrupt error are kept). */
  timedOut: boolean;
  /** Why the request did not finish normally (no reply, or no idle), if it did not. */
  failure?: string;
  /** Wall-clock seconds from sending the request to its reply and idle. */
  seconds: number;
}

/** Options of one execute_request. */
export interface ExecuteOptions {
  /** Interrupt the cell after this many milliseconds (default: no limit). */
  timeoutMs?: number;
  /** After an interrupt, how long to wait for the reply and idle before giving up (default 15 s). */
  interruptGraceMs?: number;
  /** The kernel aborts queued requests after an error (default true, as in the protocol). */
  stopOnError?: boolean;
  /** Store in history and count (default true). */
  storeHistory?: boolean;
  silent?: boolean;
  /** Called for each iopub message of this request as it arrives (progress, live display). */
  onMessage?: (m: Message) => void;
  /** Answer input_request (prompt()); without it, allow_stdin is false and prompt() gets nothing. */
  onInput?: (prompt: string, password: boolean) => string | Promise<string>;
}

/** The kernel process ended while the client still needed it. */
export class KernelDiedError extends Error {
  override name = "KernelDiedError";
}

interface Pending {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
}

/**
 * A running kernel and the client connected to it.
 *
 * @example
 * ```ts ignore
 * const kc = await KernelClient.start({ cwd: "notebooks" });
 * try {
 *   const r = await kc.execute("1 + 1", { timeoutMs: 60_000 });
 *   r.reply?.content.status; // "ok"
 *   r.messages.map((m) => m.header.msg_type); // ["status", "execute_input", "execute_result", "status"]
 * } finally {
 *   await kc.shutdown();
 * }
 * ```
 */
export class KernelClient {
  readonly session = crypto.randomUUID();
  /** The kernel_info_reply's content. */
  kernelInfo: Record<string, unknown> = {};
  /** Set once the kernel process exited. */
  exitStatus: Deno.CommandStatus | null = null;
  private signer: Signer;
  private pending = new Map<string, Pending>();
  private iopubListeners = new Map<string, (m: Message) => void>();
  private inputHandlers = new Map<string, NonNullable<ExecuteOptions["onInput"]>>();
  private pongs = new Map<string, () => void>();
  private sockets: Record<"shell" | "control" | "stdin" | "iopub" | "hb", ClientSocket> | null = null;
  private stderrTail = "";
  private stderrDone: Promise<void>;
  private exited: Promise<Deno.CommandStatus>;
  private shutDown: Promise<void> | null = null;

  private constructor(
    private child: Deno.ChildProcess,
    readonly connectionFile: string,
    private key: string,
    private ownedDir: string | null,
  ) {
    this.signer = new Signer(key);
    this.stderrDone = this.collect(child.stderr);
    this.collect(child.stdout);
    this.exited = child.status.then(async (s) => {
      this.exitStatus = s;
      await within(this.stderrDone, 500);
      const why = this.deathMessage();
      for (const p of this.pending.values()) p.reject(new KernelDiedError(why));
      this.pending.clear();
      return s;
    });
  }

  /** Start a kernel, connect, and wait for kernel_info_reply with a live iopub subscription. */
  static async start(opts: StartOptions = {}): Promise<KernelClient> {
    const ownedDir = opts.runtimeDir ? null : await Deno.makeTempDir({ prefix: "seqlab-client-" });
    const dir = opts.runtimeDir ?? ownedDir!;
    const file = join(dir, `kernel-${crypto.randomUUID()}.json`);
    const key = crypto.randomUUID();
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        ip: "127.0.0.1",
        transport: "tcp",
        shell_port: 0,
        iopub_port: 0,
        stdin_port: 0,
        control_port: 0,
        hb_port: 0,
        key,
        signature_scheme: "hmac-sha256",
        kernel_name: "seqlab",
      }),
    );
    const argv = (opts.argv ?? (kernelSpec().argv as string[])).map((a) =>
      a.replaceAll("{connection_file}", file)
    );
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(argv[0], {
        args: argv.slice(1),
        cwd: opts.cwd,
        env: { ...(opts.env ?? {}), JPY_PARENT_PID: String(Deno.pid) },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      if (ownedDir) await Deno.remove(ownedDir, { recursive: true }).catch(() => {});
      throw new Error(`cannot start the kernel (${argv.join(" ")}): ${(e as Error).message}`);
    }
    const kc = new KernelClient(child, file, key, ownedDir);
    try {
      await kc.connect(opts.startTimeoutMs ?? 120_000);
    } catch (e) {
      await kc.shutdown();
      throw e;
    }
    return kc;
  }

  /** The last lines the kernel wrote to stderr (its log). */
  stderr(): string {
    return this.stderrTail;
  }

  private async collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    const d = new TextDecoder();
    try {
      for await (const chunk of stream) {
        this.stderrTail = (this.stderrTail + d.decode(chunk, { stream: true })).slice(-16_384);
      }
    } catch { /* the process is gone */ }
  }

  private deathMessage(): string {
    const s = this.exitStatus;
    const how = !s ? "is gone" : s.signal ? `was killed by ${s.signal}` : `exited with code ${s.code}`;
    const tail = this.stderrTail.trim().split("\n").slice(-5).join("\n  ");
    return `the kernel ${how}${tail ? `; its last log lines:\n  ${tail}` : ""}`;
  }

  private async connect(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // The kernel writes the ports it bound back into the connection file once all five are listening.
    let conn: Record<string, unknown> | null = null;
    while (!conn) {
      if (this.exitStatus) throw new KernelDiedError(`kernel failed to start: ${this.deathMessage()}`);
      if (Date.now() > deadline) {
        throw new Error(`kernel did not bind its ports within ${timeoutMs / 1000} s: ${this.deathMessage()}`);
      }
      try {
        const c = JSON.parse(await Deno.readTextFile(this.connectionFile));
        if (["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"].every((k) => c[k] > 0)) {
          conn = c;
        }
      } catch { /* not rewritten yet, or half written */ }
      if (!conn) await new Promise((r) => setTimeout(r, 50));
    }
    const ip = String(conn.ip ?? "127.0.0.1");
    const identity = enc.encode(`seqlab-client-${this.session}`);
    const at = (port: string) => Number(conn![port]);
    this.sockets = {
      shell: await ClientSocket.connect("DEALER", ip, at("shell_port"), { identity, name: "shell" }),
      control: await ClientSocket.connect("DEALER", ip, at("control_port"), { name: "control" }),
      stdin: await ClientSocket.connect("DEALER", ip, at("stdin_port"), { identity, name: "stdin" }),
      iopub: await ClientSocket.connect("SUB", ip, at("iopub_port"), {
        subscribe: [new Uint8Array()],
        name: "iopub",
      }),
      hb: await ClientSocket.connect("REQ", ip, at("hb_port"), { name: "hb" }),
    };
    this.pump(this.sockets.shell, (m) => this.onReply(m));
    this.pump(this.sockets.control, (m) => this.onReply(m));
    this.pump(this.sockets.iopub, (m) => this.iopubListeners.get(String(m.parent_header.msg_id))?.(m));
    this.pump(this.sockets.stdin, (m) => this.onStdin(m));
    this.pumpHeartbeat(this.sockets.hb);

    // kernel_info until its status arrives on iopub too: then the subscription is live (ZeroMQ's slow joiner).
    for (let attempt = 0;; attempt++) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no kernel_info_reply within ${timeoutMs / 1000} s: ${this.deathMessage()}`);
      }
      let sawStatus!: () => void;
      const status = new Promise<void>((r) => (sawStatus = r));
      const msg = this.message("kernel_info_request", {});
      this.iopubListeners.set(msg.header.msg_id, () => sawStatus());
      try {
        const reply = await this.request("shell", msg, left);
        this.kernelInfo = reply.content;
        const live = await within(status, Math.min(1000 * (attempt + 1), 5000));
        if (live) return;
      } finally {
        this.iopubListeners.delete(msg.header.msg_id);
      }
    }
  }

  private async pump(socket: ClientSocket, handle: (m: Message) => void): Promise<void> {
    for (;;) {
      const frames = await socket.recv();
      if (!frames) return;
      const d = decode(frames, this.signer);
      if (!d.ok) {
        console.error(`[seqlab client] dropped a message on ${socket.name}: ${d.reason}`);
        continue;
      }
      handle(d.msg);
    }
  }

  private async pumpHeartbeat(hb: ClientSocket): Promise<void> {
    for (;;) {
      const frames = await hb.recv();
      if (!frames) return;
      const token = dec.decode(frames[0] ?? new Uint8Array());
      this.pongs.get(token)?.();
      this.pongs.delete(token);
    }
  }

  private onReply(m: Message): void {
    const id = String(m.parent_header.msg_id ?? "");
    const p = this.pending.get(id);
    if (!p) return; // a reply nobody waits for any more (its request timed out)
    this.pending.delete(id);
    p.resolve(m);
  }

  private async onStdin(m: Message): Promise<void> {
    if (m.header.msg_type !== "input_request") return;
    const handler = this.inputHandlers.get(String(m.parent_header.msg_id));
    let value = "";
    try {
      if (handler) value = await handler(String(m.content.prompt ?? ""), !!m.content.password);
    } catch { /* an answer that failed is an empty line */ }
    const reply = this.message("input_reply", { value }, m.header);
    await this.sockets?.stdin.send(this.frames(reply)).catch(() => {});
  }

  /** A new message from this client's session. */
  message(
    msgType: string,
    content: Record<string, unknown>,
    parent: Partial<Message["header"]> = {},
  ): Message {
    return {
      identities: [],
      header: { ...newHeader(msgType, this.session), username: "seqlab-client" },
      parent_header: parent,
      metadata: {},
      content,
      buffers: [],
    };
  }

  private frames(m: Message): Frames {
    return encode(this.signer, [], m.header, m.parent_header, m.metadata, m.content, m.buffers);
  }

  /**
   * Send a request on shell or control and wait for its reply. Rejects after `timeoutMs`, and at once with
   * a `KernelDiedError` if the kernel exits.
   */
  request(channel: "shell" | "control", msg: Message, timeoutMs: number | null = 30_000): Promise<Message> {
    if (!this.sockets) return Promise.reject(new Error("the client is not connected"));
    if (this.exitStatus) return Promise.reject(new KernelDiedError(this.deathMessage()));
    const id = msg.header.msg_id;
    return new Promise<Message>((resolve, reject) => {
      const timer = timeoutMs === null ? undefined : setTimeout(() => {
        this.pending.delete(id);
        reject(
          new Error(`no ${msg.header.msg_type.replace(/_request$/, "_reply")} within ${timeoutMs / 1000} s`),
        );
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sockets![channel].send(this.frames(msg)).catch((e) => {
        this.pending.get(id)?.reject(
          new Error(`cannot send ${msg.header.msg_type}: ${(e as Error).message}`),
        );
        this.pending.delete(id);
      });
    });
  }

  /**
   * Execute code: collects every iopub message of the request until status idle, and the execute_reply.
   * Past `timeoutMs` the cell is interrupted (interrupt_request on control) and `timedOut` is set; the
   * outputs up to then and the kernel's InterruptError are kept. Never throws for the cell's own failure:
   * `reply.content.status` says it, and `failure` says why there is no reply.
   */
  async execute(code: string, opts: ExecuteOptions = {}): Promise<ExecuteResult> {
    const t0 = performance.now();
    const msg = this.message("execute_request", {
      code,
      silent: opts.silent ?? false,
      store_history: opts.storeHistory ?? true,
      user_expressions: {},
      allow_stdin: !!opts.onInput,
      stop_on_error: opts.stopOnError ?? true,
    });
    const id = msg.header.msg_id;
    const messages: Message[] = [];
    let idle!: () => void;
    const gotIdle = new Promise<void>((r) => (idle = r));
    this.iopubListeners.set(id, (m) => {
      messages.push(m);
      try {
        opts.onMessage?.(m);
      } catch (e) {
        console.error(`[seqlab client] onMessage failed: ${(e as Error).message}`);
      }
      if (m.header.msg_type === "status" && m.content.execution_state === "idle") idle();
    });
    if (opts.onInput) this.inputHandlers.set(id, opts.onInput);
    let reply: Message | null = null;
    let failure: string | undefined;
    let timedOut = false;
    const replied = this.request("shell", msg, null).then((m) => (reply = m));
    const done = Promise.all([replied, gotIdle]);
    done.catch(() => {}); // a kernel that dies is reported through `failure`, below
    try {
      if (!(await within(done, opts.timeoutMs ?? null))) {
        timedOut = true;
        await this.interrupt().catch(() => {});
        const grace = opts.interruptGraceMs ?? 15_000;
        if (!(await within(done, grace))) {
          failure = reply
            ? `no status idle on iopub ${grace / 1000} s after the interrupt`
            : `the kernel did not answer ${grace / 1000} s after the interrupt`;
        }
      }
    } catch (e) {
      failure = (e as Error).message;
    } finally {
      this.iopubListeners.delete(id);
      this.inputHandlers.delete(id);
      this.pending.delete(id);
    }
    return { reply, messages, timedOut, failure, seconds: (performance.now() - t0) / 1000 };
  }

  /** interrupt_request on control (the kernelspec's interrupt_mode is "message"); waits for the reply. */
  async interrupt(timeoutMs = 5000): Promise<void> {
    const r = await this.request("control", this.message("interrupt_request", {}), timeoutMs);
    if (r.content.status !== "ok") throw new Error(`interrupt failed: ${JSON.stringify(r.content)}`);
  }

  /** Whether the heartbeat echoes within `timeoutMs`. */
  async ping(timeoutMs = 2000): Promise<boolean> {
    if (!this.sockets || this.exitStatus) return false;
    const token = crypto.randomUUID();
    const pong = new Promise<void>((r) => this.pongs.set(token, r));
    await this.sockets.hb.send([enc.encode(token)]).catch(() => {});
    const ok = await within(pong, timeoutMs);
    this.pongs.delete(token);
    return ok;
  }

  /**
   * shutdown_request on control, wait for the process to exit (SIGTERM, then SIGKILL, if it does not),
   * close the sockets and remove the connection file. Safe to call more than once.
   */
  shutdown(): Promise<void> {
    this.shutDown ??= (async () => {
      if (!this.exitStatus && this.sockets) {
        await this.request("control", this.message("shutdown_request", { restart: false }), 5000)
          .catch(() => {});
      }
      const waitExit = (ms: number) => within(this.exited, ms);
      if (!(await waitExit(5000))) {
        for (const sig of ["SIGTERM", "SIGKILL"] as const) {
          try {
            this.child.kill(sig);
          } catch { /* already gone */ }
          if (await waitExit(3000)) break;
        }
      }
      for (const s of Object.values(this.sockets ?? {})) s.close();
      await Deno.remove(this.connectionFile).catch(() => {});
      if (this.ownedDir) await Deno.remove(this.ownedDir, { recursive: true }).catch(() => {});
    })();
    return this.shutDown;
  }

  /** Kill the kernel process at once (a second Ctrl-C); then clean up as shutdown does. */
  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* gone */ }
    await this.exited;
    return this.shutdown();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}
