/**
 * seqlab's Jupyter kernel for TypeScript on Deno.
 *
 * Usage: deno run -A --config deno.json kernel/main.ts CONNECTION_FILE
 *
 * This process speaks the protocol (kernel/zmtp.ts, kernel/wire.ts) and owns the order of messages;
 * cells run in a child process, the execution host (kernel/host.ts, started by kernel/host_process.ts),
 * so that a cell can neither block the protocol nor take the kernel down with it: when the host dies
 * (out of memory, killed, crashed) the running cell ends with an error naming the variables that were
 * lost, and a fresh host runs the next cells. Shell requests are handled one at a time; control requests
 * (interrupt, shutdown, kernel_info) are answered at once, even while a cell runs.
 *
 * For each request: status busy, then every output and the reply, then status idle.
 *
 * @module
 */
import { EchoRepSocket, type Frames, PubSocket, RouterSocket, setLogger } from "./zmtp.ts";
import { decode, encode, type Header, header, type Message, PROTOCOL_VERSION, Signer } from "./wire.ts";
import type { FromHost, FromWorker, Output, ToHost } from "./messages.ts";
import { DocIndex } from "./docs.ts";
import { type HistoryEntry, HistoryLog } from "./history.ts";
import { ExecutionHost, HEAP_ENV, heapLimitMb, type HostExit, HostListener } from "./host_process.ts";

/** Contents of a Jupyter connection file. */
export interface ConnectionInfo {
  ip: string;
  transport: string;
  shell_port: number;
  iopub_port: number;
  stdin_port: number;
  control_port: number;
  hb_port: number;
  key: string;
  signature_scheme: string;
  kernel_name?: string;
}

/** Kernel version reported in kernel_info. */
export const KERNEL_VERSION = "0.1.0";
const INTERRUPT_GRACE_MS = 3000;
const enc = new TextEncoder();

function log(msg: string): void {
  console.error(`[seqlab kernel] ${msg}`);
}
/** Routine start-up and protocol notes, on stderr only with SEQLAB_KERNEL_DEBUG=1: jupyter console shows the
 * kernel's stderr in the user's terminal, so a normal start prints nothing there. */
const DEBUG = Deno.env.get("SEQLAB_KERNEL_DEBUG") === "1";
function debug(msg: string): void {
  if (DEBUG) log(msg);
}
setLogger((m) => log(`zmtp: ${m}`));

type Transform = typeof import("./transform.ts");
/** A cell's script positions back to the cell's own (null: the wrapper around the cell). */
type CellMap = { mapPosition(line: number, column: number): { line: number; column: number } | null };

/**
 * A stack frame in a cell's script (kernel/worker.ts evaluates it with `//# sourceURL=file://…/cell-N.js`):
 * V8 writes `at NAME (URL, <anonymous>:L:C)` for eval'd code, `at URL:L:C` elsewhere (a SyntaxError's
 * position, Bun). The cell's own function is named `eval`.
 */
const CELL_FRAME =
  /^(\s+at )(async )?(?:(.+?) \()?file:\/\/[^\s)]*\/cell-(\d+)\.(?:js|ts)(?:, <anonymous>)?:(\d+):(\d+)\)?$/;
/** A cell's script named in an error message (a SyntaxError's position). */
const CELL_REF = /file:\/\/[^\s)]*\/cell-(\d+)\.(?:js|ts)(?:, <anonymous>)?(?::(\d+):(\d+))?/g;

/** A cell's end: the worker's `done`, or the kernel's own when the execution process died under it. */
type Done = Extract<FromWorker, { type: "done" }> & { processDied?: boolean };

interface Running {
  seq: number;
  msg: Message;
  count: number;
  silent: boolean;
  resolve: (d: Done) => void;
  rewrite?: CellMap;
  label: string;
}

/** Requests the control channel serves (all others belong on shell). */
const CONTROL_TYPES = new Set(["shutdown_request", "interrupt_request", "kernel_info_request"]);

/** The kernel: sockets, session, execution host and request handlers. */
export class Kernel {
  readonly session = crypto.randomUUID();
  private signer: Signer;
  private shell = new RouterSocket("shell");
  private control = new RouterSocket("control");
  private stdin = new RouterSocket("stdin");
  private iopub = new PubSocket("iopub");
  private hb = new EchoRepSocket("hb");
  private executionCount = 0;
  private shellQueue: { msg: Message; socket: RouterSocket }[] = [];
  private shellBusy = false;
  private abortQueued = false;
  private host!: ExecutionHost;
  private hostListener!: HostListener;
  private heapMb = heapLimitMb();
  /** Hosts that failed to start in a row; after 3 the next cell tries again instead of a restart loop. */
  private startFailures = 0;
  private hostBroken: string | null = null;
  /** The host killed because its cell ignored an interrupt (its cell's error is an InterruptError). */
  private killedForInterrupt: ExecutionHost | null = null;
  /** Top-level names the cells run in the current host declared: what is lost when it dies. */
  private userNames = new Set<string>();
  /** The host died between cells: said on the next cell's stderr. */
  private lostWhileIdle: string | null = null;
  private seq = 0;
  private running: Running | null = null;
  private parents = new Map<number, { header: Header; label: string; count: number }>();
  private lastParent: Partial<Header> = {};
  private inputWaiting = false;
  private replyWaiters = new Map<number, (v: unknown) => void>();
  private replyId = 0;
  /** Cell files and the host's socket; the pid in its name lets the next kernel remove it if this one dies. */
  private cellDir = Deno.makeTempDirSync({ prefix: `seqlab-kernel-${Deno.pid}-` });
  /** Input history on disk in the cell directory (kernel/history.ts): memory stays flat over any run. */
  private history = new HistoryLog(this.cellDir);
  private transform: Promise<Transform> = import("./transform.ts");
  private docs = new DocIndex();
  private shuttingDown = false;
  /** Shown once, on the first cell's stderr: a user would not see the kernel's log. */
  private startupWarning: string | null = null;

  constructor(readonly conn: ConnectionInfo, readonly opts: { preload?: boolean } = {}) {
    if (conn.transport && conn.transport !== "tcp") {
      throw new Error(`transport ${conn.transport} is not supported`);
    }
    this.signer = new Signer(
      conn.key ?? "",
      conn.signature_scheme?.replace(/^$/, "hmac-sha256") ?? "hmac-sha256",
    );
  }

  /** Bind the five sockets and start the execution host. */
  start(): void {
    const ip = this.conn.ip || "127.0.0.1";
    this.conn.shell_port = this.shell.bind(ip, this.conn.shell_port);
    this.conn.control_port = this.control.bind(ip, this.conn.control_port);
    this.conn.stdin_port = this.stdin.bind(ip, this.conn.stdin_port);
    this.conn.iopub_port = this.iopub.bind(ip, this.conn.iopub_port);
    this.conn.hb_port = this.hb.bind(ip, this.conn.hb_port);
    this.shell.onMessage = (f) => this.receive(f, this.shell);
    this.control.onMessage = (f) => this.receive(f, this.control);
    this.stdin.onMessage = (f) => this.receiveStdin(f);
    removeStaleDirs(this.cellDir);
    this.hostListener = new HostListener(`${this.cellDir}/host.sock`);
    this.startHost();
    this.transform.catch((e) => log(`TypeScript failed to load: ${e}`));
    debug(
      `listening on ${ip}: shell ${this.conn.shell_port}, iopub ${this.conn.iopub_port}, session ${this.session}, ` +
        `cells in ${this.cellDir}, heap limit ${this.heapMb ?? "V8's default"} MiB`,
    );
  }

  // ---------------------------------------------------------------- execution host

  private startHost(): void {
    const host = new ExecutionHost(this.hostListener, {
      preload: this.opts.preload ?? true,
      heapMb: this.heapMb,
      // The host's stderr (Deno's own warnings, V8's out-of-memory dump) is a debugging aid: the cell's error
      // already says how the host died.
      log: debug,
    });
    this.host = host;
    host.onMessage = (m: FromHost) => {
      if (this.host !== host) return;
      if (m.type === "ready") {
        this.startFailures = 0;
        if (m.warning) log(m.warning);
        if (m.warning?.includes("not preloaded")) this.startupWarning = m.warning;
      } else if (m.type === "fatal") log(`execution worker failed: ${m.message}`);
      else if (m.type !== "hello") this.onWorker(m);
    };
    host.exited.then((x) => this.onHostExit(host, x));
  }

  /** The current host once its worker is ready, or why there is none (it keeps failing to start). */
  private async readyHost(): Promise<ExecutionHost | string> {
    if (this.hostBroken !== null) {
      this.hostBroken = null;
      this.startFailures = 0;
      this.startHost();
    }
    while (true) {
      const h = this.host;
      if (await h.ready) return h;
      await h.exited;
      await new Promise((r) => setTimeout(r, 0)); // onHostExit has run: a successor, or none
      if (this.host === h) return this.hostBroken ?? "the execution process ended";
    }
  }

  /** The host is gone: end its cell with an error that says what was lost, and start a fresh one. */
  private onHostExit(host: ExecutionHost, x: HostExit): void {
    if (this.shuttingDown || this.host !== host) return;
    const how = x.signal ? `was killed by ${x.signal}` : `exited with code ${x.code}`;
    const interrupted = this.killedForInterrupt === host;
    let why: string;
    if (x.outOfMemory) {
      why = `the execution process ${how}, probably out of memory (its JavaScript heap limit is ` +
        `${this.heapMb ?? "V8's default"} MiB, set by ${HEAP_ENV})`;
    } else if (x.killedBecause) why = x.killedBecause;
    else if (x.fatal) why = `the execution worker failed (${x.fatal}) and its process ${how}`;
    else why = `the execution process (pid ${host.pid}) ${how}`;
    const names = [...this.userNames];
    this.userNames.clear();
    const shown = names.length > 60 ? [...names.slice(0, 60), `and ${names.length - 60} more`] : names;
    const lost = names.length
      ? `all variables were lost: ${shown.join(", ")}`
      : "all variables were lost (no cell had defined any)";
    log(`${why}; ${lost}`);
    if (x.beforeReady) this.startFailures++;
    if (this.startFailures >= 3) {
      this.hostBroken = `the execution process failed to start 3 times (${how}): ${
        x.stderrTail.trim().split("\n").slice(-3).join(" | ")
      }`;
      log(`${this.hostBroken}; the next cell tries again`);
    } else this.startHost();
    this.inputWaiting = false;
    for (const w of this.replyWaiters.values()) w(null);
    this.replyWaiters.clear();

    const r = this.running;
    if (!r) {
      if (!x.beforeReady) this.lostWhileIdle = `between cells, ${why}; ${lost}`;
      return;
    }
    const ename = interrupted ? "InterruptError" : "ExecutionProcessDied";
    const evalue = `${why}; ${lost}`;
    const last = x.stderrTail.trim().split("\n").filter((l) => l.trim()).pop();
    const traceback = [
      `${ename}: ${why}`,
      `    ${lost[0].toUpperCase()}${lost.slice(1)}.`,
      ...(!x.outOfMemory && !x.killedBecause && last ? [`    Its last line on stderr: ${last}`] : []),
      `    A fresh execution process runs the next cells: run the cells that define what you need again.`,
    ];
    this.lastError = { ename, evalue, traceback };
    this.publish("error", { ...this.lastError }, r.msg.header);
    r.resolve({ type: "done", seq: r.seq, status: "error", userExpressions: {}, processDied: !interrupted });
  }

  private onWorker(m: FromWorker): void {
    if (m.type === "out") this.publishOutput(m.seq, m.out);
    else if (m.type === "done") {
      if (this.running?.seq === m.seq) this.running.resolve(m);
    } else if (m.type === "input") this.requestInput(m.prompt, m.password);
    else if (m.type === "reply") {
      this.replyWaiters.get(m.id)?.(m.value);
      this.replyWaiters.delete(m.id);
    } else if (m.type === "log") log(m.text);
  }

  private ask<T>(
    msg: { type: "complete"; object: string | null; prefix: string } | { type: "inspect"; expr: string },
    timeoutMs = 2000,
  ): Promise<T | null> {
    const id = ++this.replyId;
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.replyWaiters.delete(id);
        resolve(null);
      }, timeoutMs);
      this.replyWaiters.set(id, (v) => {
        clearTimeout(t);
        resolve(v as T);
      });
      this.host.send({ ...msg, id });
    });
  }

  // ---------------------------------------------------------------- sending

  private send(socket: RouterSocket, parent: Message, msgType: string, content: unknown): Promise<void> {
    const frames = encode(
      this.signer,
      parent.identities,
      header(msgType, this.session),
      parent.header,
      {},
      content,
    );
    return socket.send(frames);
  }

  private publish(msgType: string, content: unknown, parent: Partial<Header>, metadata = {}): Promise<void> {
    const topic = enc.encode(`kernel.${this.session}.${msgType}`);
    return this.iopub.send(
      encode(this.signer, [topic], header(msgType, this.session), parent, metadata, content),
    );
  }

  private publishOutput(seq: number, out: Output): void {
    const p = this.parents.get(seq);
    const parent = p?.header ?? this.lastParent;
    switch (out.kind) {
      case "stream":
        this.publish("stream", { name: out.name, text: out.text }, parent);
        break;
      case "display":
        this.publish(out.update ? "update_display_data" : "display_data", {
          data: out.data,
          metadata: out.metadata,
          transient: out.displayId ? { display_id: out.displayId } : {},
        }, parent);
        break;
      case "clear":
        this.publish("clear_output", { wait: out.wait }, parent);
        break;
      case "result":
        this.publish("execute_result", {
          execution_count: p?.count ?? this.executionCount,
          data: out.data,
          metadata: out.metadata,
        }, parent);
        break;
      case "error": {
        const tb = this.traceback(out.ename, out.evalue, out.stack, seq);
        // A SyntaxError's message names the cell's script file: the cell's label and line instead.
        const evalue = this.mapEvalue(out.evalue);
        this.publish("error", { ename: out.ename, evalue, traceback: tb }, parent);
        if (this.running?.seq === seq) {
          this.lastError = { ename: out.ename, evalue, traceback: tb };
        }
        break;
      }
    }
  }
  private lastError: { ename: string; evalue: string; traceback: string[] } | null = null;

  /** Traceback lines with cell positions in the cell's own lines and columns. */
  private traceback(ename: string, evalue: string, stack: string, seq: number): string[] {
    const lines = stack.split("\n");
    const frames = lines.filter((l) => /^\s+at /.test(l));
    const mapped: string[] = [];
    for (const f of frames) {
      if (f.includes("/kernel/worker.ts") || f.includes("/kernel/display.ts")) continue;
      if (/^\s+at eval \(<anonymous>\)$/.test(f)) continue; // the worker's eval of the cell
      const m = CELL_FRAME.exec(f);
      if (!m) {
        mapped.push(f);
        continue;
      }
      const [, at, async_, name, s, l, c] = m;
      const rw = this.rewrites.get(Number(s));
      const pos = rw ? rw.mapPosition(Number(l), Number(c)) : { line: Number(l), column: Number(c) };
      if (!pos) continue; // the wrapper around the cell (its call, TypeScript's helpers)
      const loc = `${this.parents.get(Number(s))?.label ?? `cell[${s}]`}:${pos.line}:${pos.column}`;
      // The cell's own function is the cell's top level, written as a module's was: `at cell[N]:L:C`.
      mapped.push(`${at}${async_ ?? ""}${name && name !== "eval" ? `${name} (${loc})` : loc}`);
    }
    void seq;
    return [`${ename}: ${this.mapEvalue(evalue)}`, ...mapped];
  }

  /** An error message with the cell scripts it names (a SyntaxError's position) as `cell[N]:L:C`. */
  private mapEvalue(evalue: string): string {
    return evalue.replace(CELL_REF, (_a, s, l, c) => {
      const label = this.parents.get(Number(s))?.label ?? `cell[${s}]`;
      if (!l) return label;
      const rw = this.rewrites.get(Number(s));
      const pos = rw ? rw.mapPosition(Number(l), Number(c)) : { line: Number(l), column: Number(c) };
      return pos ? `${label}:${pos.line}:${pos.column}` : label;
    });
  }
  private rewrites = new Map<number, CellMap>();

  // ---------------------------------------------------------------- receiving

  private receive(frames: Frames, socket: RouterSocket): void {
    const d = decode(frames, this.signer);
    if (!d.ok) {
      log(`dropped a message on ${socket.name}: ${d.reason}`);
      return;
    }
    const msg = d.msg;
    if (socket === this.control) {
      // control runs beside a busy shell: only what needs no worker and touches no cell state. Anything else
      // (an execute_request sent here would have run beside the shell's cell and taken over its outputs)
      // gets an error reply naming the channel, and the shell's cell is left alone.
      const type = msg.header.msg_type;
      if (!CONTROL_TYPES.has(type)) {
        this.refuseOnControl(msg).catch((e) => log(`control ${type} refusal failed: ${e?.stack ?? e}`));
        return;
      }
      this.handle(msg, socket).catch((e) => log(`control ${type} failed: ${e?.stack ?? e}`));
      return;
    }
    // kernel_info needs no worker: answer it at once, so clients connect even while a cell runs.
    if (msg.header.msg_type === "kernel_info_request") {
      this.handle(msg, socket).catch((e) => log(`kernel_info failed: ${e}`));
      return;
    }
    this.shellQueue.push({ msg, socket });
    this.pump();
  }

  /** An error reply to a shell-only request that came on the control channel (busy and idle around it). */
  private async refuseOnControl(msg: Message): Promise<void> {
    const type = msg.header.msg_type;
    log(`refused ${type} on control: it belongs on the shell channel`);
    this.publish("status", { execution_state: "busy" }, msg.header);
    try {
      await this.send(this.control, msg, type.replace(/_request$/, "_reply"), {
        status: "error",
        ename: "WrongChannel",
        evalue: `${type} must be sent on the shell channel; control takes ${[...CONTROL_TYPES].join(", ")}`,
        traceback: [],
      });
    } finally {
      this.publish("status", { execution_state: "idle" }, msg.header);
    }
  }

  private async pump(): Promise<void> {
    if (this.shellBusy) return;
    this.shellBusy = true;
    try {
      while (this.shellQueue.length) {
        const { msg, socket } = this.shellQueue.shift()!;
        try {
          if (this.abortQueued && msg.header.msg_type === "execute_request") await this.abort(msg, socket);
          else await this.handle(msg, socket);
        } catch (e) {
          log(`${msg.header.msg_type} failed: ${(e as Error)?.stack ?? e}`);
        }
        if (!this.shellQueue.length) this.abortQueued = false;
      }
    } finally {
      this.shellBusy = false;
    }
  }

  private async abort(msg: Message, socket: RouterSocket): Promise<void> {
    this.publish("status", { execution_state: "busy" }, msg.header);
    await this.send(socket, msg, "execute_reply", {
      status: "aborted",
      execution_count: this.executionCount,
    });
    this.publish("status", { execution_state: "idle" }, msg.header);
  }

  private async handle(msg: Message, socket: RouterSocket): Promise<void> {
    const type = msg.header.msg_type;
    this.publish("status", { execution_state: "busy" }, msg.header);
    try {
      switch (type) {
        case "kernel_info_request":
          await this.send(socket, msg, "kernel_info_reply", this.kernelInfo());
          break;
        case "execute_request":
          await this.execute(msg, socket);
          break;
        case "complete_request":
          await this.send(socket, msg, "complete_reply", await this.complete(msg.content));
          break;
        case "inspect_request":
          await this.send(socket, msg, "inspect_reply", await this.inspect(msg.content));
          break;
        case "is_complete_request": {
          const t = await this.transform;
          await this.send(socket, msg, "is_complete_reply", t.isComplete(String(msg.content.code ?? "")));
          break;
        }
        case "history_request":
          await this.send(socket, msg, "history_reply", this.historyReply(msg.content));
          break;
        case "comm_info_request":
          await this.send(socket, msg, "comm_info_reply", { status: "ok", comms: {} });
          break;
        case "comm_open":
          debug(`comm_open for target ${msg.content.target_name}: no such target, closing it`);
          this.publish("comm_close", { comm_id: msg.content.comm_id, data: {} }, msg.header);
          break;
        case "comm_msg":
        case "comm_close":
          break;
        case "connect_request":
          await this.send(socket, msg, "connect_reply", {
            status: "ok",
            shell_port: this.conn.shell_port,
            iopub_port: this.conn.iopub_port,
            stdin_port: this.conn.stdin_port,
            hb_port: this.conn.hb_port,
            control_port: this.conn.control_port,
          });
          break;
        case "interrupt_request":
          this.interrupt();
          await this.send(socket, msg, "interrupt_reply", { status: "ok" });
          break;
        case "shutdown_request":
          await this.send(socket, msg, "shutdown_reply", { status: "ok", restart: !!msg.content.restart });
          this.publish("status", { execution_state: "idle" }, msg.header);
          await this.shutdown();
          return;
        default:
          log(`unknown message type ${JSON.stringify(type)} on ${socket.name}: ignored`);
      }
    } finally {
      this.publish("status", { execution_state: "idle" }, msg.header);
    }
  }

  private kernelInfo(): Record<string, unknown> {
    return {
      status: "ok",
      protocol_version: PROTOCOL_VERSION,
      implementation: "seqlab",
      implementation_version: KERNEL_VERSION,
      language_info: {
        name: "typescript",
        version: Deno.version.typescript,
        mimetype: "text/x.typescript",
        file_extension: ".ts",
        pygments_lexer: "typescript",
        codemirror_mode: "application/typescript",
        nbconvert_exporter: "script",
      },
      banner: `seqlab kernel ${KERNEL_VERSION}: TypeScript on Deno ${Deno.version.deno}`,
      help_links: [{ text: "Deno", url: "https://docs.deno.com" }],
      debugger: false,
    };
  }

  // ---------------------------------------------------------------- execute

  private async execute(msg: Message, socket: RouterSocket): Promise<void> {
    const c = msg.content as {
      code?: string;
      silent?: boolean;
      store_history?: boolean;
      user_expressions?: Record<string, string>;
      allow_stdin?: boolean;
      stop_on_error?: boolean;
    };
    const code = String(c.code ?? "");
    const silent = !!c.silent;
    const storeHistory = silent ? false : c.store_history ?? true;
    if (storeHistory) this.executionCount++;
    const count = this.executionCount;
    this.lastParent = msg.header;
    if (!silent) this.publish("execute_input", { code, execution_count: count }, msg.header);

    const reply = async (content: Record<string, unknown>, output: string | null) => {
      if (storeHistory) this.history.add({ line: count, input: code, output });
      await this.send(socket, msg, "execute_reply", { execution_count: count, ...content });
    };

    // `exit` / `quit` ask the frontend to close (jupyter console does; notebooks ignore it).
    if (/^\s*(exit|quit)(\(\))?\s*;?\s*$/.test(code)) {
      await reply({
        status: "ok",
        payload: [{ source: "ask_exit", keepkernel: false }],
        user_expressions: {},
      }, null);
      return;
    }

    // `name?` shows help in the pager, as in IPython.
    const help = /^\s*([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\s*\?{1,2}\s*$/.exec(code);
    if (help) {
      const info = await this.inspectText(help[1]);
      const payload = info ? [{ source: "page", data: { "text/plain": info }, start: 0 }] : [];
      if (!info) this.publish("stream", { name: "stderr", text: `no object named ${help[1]}\n` }, msg.header);
      await reply({ status: "ok", payload, user_expressions: {} }, null);
      return;
    }

    const t = await this.transform;
    const seq = ++this.seq;
    const label = storeHistory ? `cell[${count}]` : `cell[silent ${seq}]`;
    this.parents.set(seq, { header: msg.header, label, count });
    if (this.parents.size > 1000) this.parents.delete(this.parents.keys().next().value!);
    const cwdUrl = new URL(`file://${Deno.cwd().replace(/\/?$/, "/")}`);
    const rw = t.compileCell(code, (s) => /^\.{0,2}\//.test(s) ? new URL(s, cwdUrl).href : s);
    if (!rw.ok) {
      const lines = code.split("\n");
      const tb = [
        `SyntaxError: ${rw.message}`,
        `    at ${label}:${rw.line}:${rw.column}`,
        `    ${lines[rw.line - 1] ?? ""}`,
        `    ${" ".repeat(Math.max(0, rw.column - 1))}^`,
      ];
      const err = {
        ename: "SyntaxError",
        evalue: `${rw.message} (${label}:${rw.line}:${rw.column})`,
        traceback: tb,
      };
      this.publish("error", err, msg.header);
      if (c.stop_on_error ?? true) this.abortQueued = true;
      await reply({ status: "error", ...err }, null);
      return;
    }
    this.rewrites.set(seq, { mapPosition: rw.mapPosition }); // not the script: it is in the file until the end
    if (this.rewrites.size > 1000) this.rewrites.delete(this.rewrites.keys().next().value!);
    this.docs.addCell(code);
    // The script, for the worker to read and eval (never to import: see kernel/worker.ts); removed after.
    const file = `${this.cellDir}/cell-${seq}.js`;
    await Deno.writeTextFile(file, rw.script);
    const host = await this.readyHost();
    if (typeof host === "string") {
      Deno.remove(file).catch(() => {});
      const err = {
        ename: "ExecutionProcessDied",
        evalue: host,
        traceback: [`ExecutionProcessDied: ${host}`, `    The cell did not run; the next cell tries again.`],
      };
      this.publish("error", err, msg.header);
      await reply({ status: "error", ...err, user_expressions: {} }, null);
      return;
    }
    if (this.startupWarning && !silent) {
      this.publish("stream", { name: "stderr", text: `warning: ${this.startupWarning}\n` }, msg.header);
      this.startupWarning = null;
    }
    if (this.lostWhileIdle) {
      this.publish("stream", { name: "stderr", text: `warning: ${this.lostWhileIdle}\n` }, msg.header);
      this.lostWhileIdle = null;
    }
    this.lastError = null;
    for (const n of rw.declared) this.userNames.add(n);
    const done = await new Promise<Done>((resolve) => {
      this.running = { seq, msg, count, silent, resolve, rewrite: rw, label };
      const run: ToHost = {
        type: "run",
        seq,
        url: `file://${file}`,
        silent,
        allowStdin: !!c.allow_stdin,
        hasResult: rw.hasResult,
        userExpressions: c.user_expressions ?? {},
      };
      host.send(run);
    });
    this.running = null;
    Deno.remove(file).catch(() => {});
    if (done.status === "ok") {
      await reply(
        { status: "ok", payload: [], user_expressions: done.userExpressions },
        done.resultText ?? null,
      );
    } else {
      // A dead execution process does not abort the queue: the cells behind it run in the fresh one.
      if ((c.stop_on_error ?? true) && !done.processDied) this.abortQueued = true;
      const err = this.lastError ?? { ename: "Error", evalue: "cell failed", traceback: [] };
      await reply({ status: "error", ...err, user_expressions: {} }, null);
    }
  }

  /** Interrupt the running cell: flag for loops, message for awaits, and a restart as the last resort. */
  interrupt(): void {
    const r = this.running;
    if (!r) return;
    const host = this.host;
    host.send({ type: "interrupt", seq: r.seq });
    this.inputWaiting = false;
    setTimeout(() => {
      if (this.running !== r || this.host !== host) return;
      // The cell is stuck where no check runs (a long native call, a loop in library code): replace the
      // execution process. Its state is lost, which the error says.
      log(
        `cell ${r.label} ignored the interrupt for ${INTERRUPT_GRACE_MS} ms: restarting the execution process`,
      );
      this.killedForInterrupt = host;
      host.kill("the cell did not stop after the interrupt, so the execution process was restarted");
    }, INTERRUPT_GRACE_MS);
  }

  // ---------------------------------------------------------------- stdin

  private requestInput(prompt: string, password: boolean): void {
    const r = this.running;
    if (!r) {
      this.host.send({ type: "input_cancel" });
      return;
    }
    this.inputWaiting = true;
    this.send(this.stdin, r.msg, "input_request", { prompt, password });
  }

  private receiveStdin(frames: Frames): void {
    const d = decode(frames, this.signer);
    if (!d.ok) {
      log(`dropped a message on stdin: ${d.reason}`);
      return;
    }
    if (d.msg.header.msg_type !== "input_reply") {
      log(`unexpected ${d.msg.header.msg_type} on stdin: ignored`);
      return;
    }
    if (!this.inputWaiting) return;
    this.inputWaiting = false;
    this.host.send({ type: "input_reply", value: String(d.msg.content.value ?? "") });
  }

  // ---------------------------------------------------------------- complete, inspect, history

  private async complete(content: Record<string, unknown>): Promise<Record<string, unknown>> {
    const code = String(content.code ?? "");
    const cp = [...code];
    const cursor = Math.min(Number(content.cursor_pos ?? cp.length), cp.length);
    const before = cp.slice(0, cursor).join("");
    const m = /((?:[A-Za-z_$][\w$]*\s*\??\.\s*)*)([A-Za-z_$][\w$]*)?$/.exec(before)!;
    const object = m[1] ? m[1].replace(/\s*\??\.\s*$/, "") : null;
    const prefix = m[2] ?? "";
    let matches: string[] = [];
    // a member of something that is not a plain identifier path (`[1, 2].fla`, `f().x`): not evaluated, so
    // no matches, and never the global names
    const member = object === null && /\.\s*$/.test(before.slice(0, before.length - prefix.length));
    if (!member && (object !== null || prefix)) {
      matches = (await this.ask<string[]>({ type: "complete", object, prefix })) ?? [];
      if (object === null) {
        // Names this cell declares but has not run yet, and keywords.
        const t = await this.transform;
        const rw = t.rewriteCell(code);
        const extra = [...(rw.ok ? rw.declared : []), ...KEYWORDS].filter((k) => k.startsWith(prefix));
        matches = [...new Set([...matches, ...extra])];
      }
    }
    return {
      status: "ok",
      matches,
      cursor_start: cursor - [...prefix].length,
      cursor_end: cursor,
      metadata: {},
    };
  }

  private async inspectText(expr: string): Promise<string | null> {
    await this.readyHost();
    const info = await this.ask<
      { found: boolean; type?: string; signature?: string; repr?: string }
    >({ type: "inspect", expr });
    // Declared docs belong to plain names (cells, preloaded seqlab names) and to seqlab.NAME.
    const parts0 = expr.split(".");
    const name = parts0.length === 1
      ? expr
      : parts0.length === 2 && parts0[0] === "seqlab"
      ? parts0[1]
      : null;
    const doc = name ? await this.docs.lookup(name).catch(() => undefined) : undefined;
    if (!info?.found && !doc) return null;
    const parts: string[] = [];
    parts.push(`${expr}: ${info?.type ?? "(not defined yet)"}`);
    if (doc?.signature) parts.push(doc.signature);
    else if (info?.signature) parts.push(info.signature);
    if (doc?.doc) parts.push("", doc.doc);
    if (info?.repr && info.type !== "function" && info.type !== "class") parts.push("", info.repr);
    return parts.join("\n");
  }

  private async inspect(content: Record<string, unknown>): Promise<Record<string, unknown>> {
    const code = String(content.code ?? "");
    const cp = [...code];
    const cursor = Math.min(Number(content.cursor_pos ?? cp.length), cp.length);
    const before = cp.slice(0, cursor).join("");
    const after = cp.slice(cursor).join("");
    const left = /[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*\.?$/.exec(before)?.[0] ?? "";
    const right = /^[\w$]*/.exec(after)?.[0] ?? "";
    let expr = (left + right).replace(/\.$/, "");
    // Cursor just after `f(`: inspect f.
    if (!expr) expr = /([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\s*\(\s*$/.exec(before)?.[1] ?? "";
    if (!expr) return { status: "ok", found: false, data: {}, metadata: {} };
    const text = await this.inspectText(expr);
    if (!text) return { status: "ok", found: false, data: {}, metadata: {} };
    return { status: "ok", found: true, data: { "text/plain": text }, metadata: {} };
  }

  private historyReply(c: Record<string, unknown>): Record<string, unknown> {
    const session = 1;
    const withOutput = !!c.output;
    const row = (h: HistoryEntry) =>
      withOutput ? [session, h.line, [h.input, h.output]] : [session, h.line, h.input];
    const type = c.hist_access_type;
    let items: HistoryEntry[] = [];
    if (type === "tail") items = this.history.tail(Number(c.n ?? 10));
    else if (type === "range") {
      items = this.history.all();
      const s = Number(c.session ?? 0);
      if (s !== 0 && s !== session && s > 0) items = [];
      else {
        const start = Number(c.start ?? 0);
        const stop = c.stop == null ? Infinity : Number(c.stop);
        items = items.filter((h) => h.line >= start && h.line < stop);
      }
    } else if (type === "search") {
      items = this.history.all();
      const pattern = String(c.pattern ?? "*");
      const re = new RegExp(
        "^" + pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$",
        "s",
      );
      items = items.filter((h) => re.test(h.input));
      if (c.unique) {
        const seen = new Set<string>();
        items = items.slice().reverse().filter((h) => !seen.has(h.input) && !!seen.add(h.input)).reverse();
      }
      const n = c.n == null ? 0 : Number(c.n);
      if (n > 0) items = items.slice(-n);
    }
    return { status: "ok", history: items.map(row) };
  }

  // ---------------------------------------------------------------- shutdown

  /** Stop the execution host and sockets, remove the cell directory and exit the process. */
  async shutdown(): Promise<never> {
    if (!this.shuttingDown) {
      this.shuttingDown = true;
      await new Promise((r) => setTimeout(r, 50)); // let the reply and idle reach the wire
      this.host?.kill("the kernel shut down");
      this.hostListener?.close();
      for (const s of [this.shell, this.control, this.stdin, this.iopub, this.hb]) s.close();
      try {
        Deno.removeSync(this.cellDir, { recursive: true });
      } catch { /* already gone */ }
    }
    Deno.exit(0);
  }
}

/**
 * Remove the cell directories of kernels that are gone (`seqlab-kernel-PID-*` beside `own`, whose PID is no
 * longer a live process): a kernel that was killed could not remove its own. Linux only (reads /proc).
 */
function removeStaleDirs(own: string): void {
  const tmp = own.replace(/\/[^/]*$/, "");
  try {
    Deno.statSync("/proc/self");
    for (const e of Deno.readDirSync(tmp)) {
      const m = /^seqlab-kernel-(\d+)-/.exec(e.name);
      if (!m || !e.isDirectory || Number(m[1]) === Deno.pid || pidAlive(Number(m[1])) !== false) continue;
      try {
        Deno.removeSync(`${tmp}/${e.name}`, { recursive: true });
        debug(`removed ${tmp}/${e.name}: its kernel (pid ${m[1]}) is gone`);
      } catch (err) {
        log(`could not remove ${tmp}/${e.name}: ${(err as Error).message}`);
      }
    }
  } catch { /* no /proc, or the folder cannot be read: leave them */ }
}

/** Whether a process lives (a zombie does not); null when /proc cannot tell. */
function pidAlive(pid: number): boolean | null {
  try {
    return !/^State:\s*Z/m.test(Deno.readTextFileSync(`/proc/${pid}/status`));
  } catch (e) {
    return e instanceof Deno.errors.NotFound ? false : null;
  }
}

const KEYWORDS = [
  "await",
  "break",
  "case",
  "catch",
  "class",
  "const",
  "continue",
  "debugger",
  "default",
  "delete",
  "do",
  "else",
  "enum",
  "export",
  "extends",
  "false",
  "finally",
  "for",
  "function",
  "if",
  "import",
  "in",
  "instanceof",
  "interface",
  "let",
  "new",
  "null",
  "return",
  "super",
  "switch",
  "this",
  "throw",
  "true",
  "try",
  "type",
  "typeof",
  "undefined",
  "var",
  "void",
  "while",
  "with",
  "yield",
];

/**
 * Exit when the process that started the kernel is gone (the kernel was re-parented, or the
 * JPY_PARENT_PID that jupyter_client sets no longer exists), so a crashed client leaves no orphan
 * behind. Linux only (reads /proc); elsewhere a no-op.
 */
function watchParent(onGone: () => void): void {
  // null: could not tell (e.g. no free descriptor to open /proc with): never read as "gone"
  const ppid = (): number | null => {
    try {
      return Number(/^PPid:\s*(\d+)/m.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]);
    } catch {
      return null;
    }
  };
  const exists = pidAlive;
  const first = ppid();
  if (first === null || !Number.isFinite(first)) return;
  const jpy = Number(Deno.env.get("JPY_PARENT_PID") ?? NaN);
  const t = setInterval(() => {
    const now = ppid();
    const gone = (first > 1 && now !== null && now !== first) || (jpy > 1 && exists(jpy) === false);
    if (gone) {
      log(`parent process ${jpy > 1 ? jpy : first} is gone: shutting down`);
      clearInterval(t);
      onGone();
    }
  }, 2000);
  Deno.unrefTimer(t);
}

if (import.meta.main) {
  const path = Deno.args.find((a) => !a.startsWith("--"));
  if (!path) {
    console.error("usage: deno run -A kernel/main.ts CONNECTION_FILE [--no-preload]");
    Deno.exit(2);
  }
  const conn = JSON.parse(Deno.readTextFileSync(path)) as ConnectionInfo;
  const anyZero = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"]
    .some((k) => !conn[k as keyof ConnectionInfo]);
  const kernel = new Kernel(conn, { preload: !Deno.args.includes("--no-preload") });
  kernel.start();
  // Ports given as 0 were chosen by the system: write them back so a client can read them.
  if (anyZero) Deno.writeTextFileSync(path, JSON.stringify(conn, null, 2));
  watchParent(() => kernel.shutdown());
  // SIGINT (a frontend using signal interrupts, or Ctrl-C in a terminal) interrupts the cell, not the kernel.
  try {
    Deno.addSignalListener("SIGINT", () => kernel.interrupt());
    Deno.addSignalListener("SIGTERM", () => kernel.shutdown());
  } catch { /* signals unsupported on this platform */ }
}
