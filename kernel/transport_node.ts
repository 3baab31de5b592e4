/**
 * The kernel's network surface on `node:net`, for Bun (and Node), which have no `Deno.listen`/`Deno.connect`.
 * A prototype for issue #15: the shapes are Deno's (a listener whose `accept()` resolves to a connection,
 * a connection with `read(buffer)` / `write(bytes)` / `close()` / `setNoDelay()` and `readable` /
 * `writable` streams), so kernel/zmtp.ts and
 * kernel/host_channel.ts could take these in place of `Deno.*` with one import changed; until then
 * {@link installDenoNet} puts them on a `Deno` global where none exists, and zmtp.ts runs unchanged.
 * TCP and Unix-domain sockets; `bind()` stays synchronous because Bun's `node:net` knows the port as soon
 * as `listen()` returns.
 * @module
 */

import net from "node:net";

/** Thrown by a closed listener's `accept()` and by reads and writes on a closed connection. */
export class BadResource extends Error {
  override name = "BadResource";
}

/** What `Deno.listen`/`Deno.connect` take here: TCP on a host and port, or a Unix socket path. */
export type Address =
  | { transport?: "tcp"; hostname?: string; port: number }
  | { transport: "unix"; path: string };

/** A byte stream over a `net.Socket`, with the subset of `Deno.Conn` the kernel uses. */
export class NodeConn {
  private chunks: Uint8Array[] = [];
  private queued = 0;
  private ended = false;
  private failure: Error | null = null;
  private waiting: (() => void) | null = null;
  private closed = false;

  constructor(readonly socket: net.Socket) {
    socket.on("data", (d: Uint8Array) => {
      this.chunks.push(d);
      this.queued += d.length;
      if (this.queued > 1 << 20) socket.pause(); // the reader is behind: let TCP push back
      this.wake();
    });
    socket.on("end", () => {
      this.ended = true;
      this.wake();
    });
    socket.on("error", (e: Error) => {
      this.failure = e;
      this.wake();
    });
    socket.on("close", () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }

  /** The local address: `{ port }` for TCP. */
  get localAddr(): { hostname?: string; port?: number } {
    return { hostname: this.socket.localAddress, port: this.socket.localPort };
  }

  /** Reads up to `p.length` bytes into `p`; the count, or null at the end of the stream (as Deno). */
  async read(p: Uint8Array): Promise<number | null> {
    while (this.queued === 0) {
      if (this.closed) throw new BadResource("the connection is closed");
      if (this.failure) throw this.failure;
      if (this.ended) return null;
      await new Promise<void>((r) => (this.waiting = r));
    }
    let n = 0;
    while (n < p.length && this.chunks.length) {
      const c = this.chunks[0];
      const take = Math.min(c.length, p.length - n);
      p.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    this.queued -= n;
    if (this.queued <= 1 << 19 && this.socket.isPaused()) this.socket.resume();
    return n;
  }

  /** Writes all of `p` (resolved once the socket has taken it, so a caller's loop sees no short write). */
  write(p: Uint8Array): Promise<number> {
    if (this.closed || this.socket.destroyed) {
      return Promise.reject(new BadResource("the connection is closed"));
    }
    const copy = p.slice(); // the caller may reuse its buffer before the socket flushes
    return new Promise((resolve, reject) => {
      this.socket.write(copy, (e) => (e ? reject(e) : resolve(p.length)));
    });
  }

  private streams: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> } | null =
    null;

  /** Deno's stream views of the connection, over read() and write() (so the two styles can be mixed). */
  get readable(): ReadableStream<Uint8Array> {
    return this.webStreams().readable;
  }

  get writable(): WritableStream<Uint8Array> {
    return this.webStreams().writable;
  }

  private webStreams() {
    this.streams ??= {
      readable: new ReadableStream<Uint8Array>({
        pull: async (c) => {
          const buf = new Uint8Array(1 << 16);
          const n = await this.read(buf).catch(() => null);
          if (n === null) c.close();
          else c.enqueue(buf.subarray(0, n));
        },
      }),
      writable: new WritableStream<Uint8Array>({
        write: async (chunk) => void await this.write(chunk),
        close: () => void this.socket.end(),
      }),
    };
    return this.streams;
  }

  setNoDelay(on = true): void {
    this.socket.setNoDelay(on);
  }

  close(): void {
    if (this.closed) throw new BadResource("the connection is closed");
    this.closed = true;
    this.socket.destroy();
    this.wake();
  }
}

/** A listening socket with the subset of `Deno.Listener` the kernel uses. */
export class NodeListener {
  private ready: NodeConn[] = [];
  private waiting: { resolve: (c: NodeConn) => void; reject: (e: Error) => void }[] = [];
  private closed = false;

  constructor(readonly server: net.Server) {
    server.on("connection", (s: net.Socket) => {
      const c = new NodeConn(s);
      const w = this.waiting.shift();
      if (w) w.resolve(c);
      else this.ready.push(c);
    });
    server.on("error", (e: Error) => {
      for (const w of this.waiting.splice(0)) w.reject(e);
    });
  }

  /** `{ hostname, port }` for TCP, `{ path }` for a Unix socket. */
  get addr(): { transport: string; hostname?: string; port?: number; path?: string } {
    const a = this.server.address();
    if (typeof a === "string") return { transport: "unix", path: a };
    return { transport: "tcp", hostname: a?.address, port: a?.port };
  }

  accept(): Promise<NodeConn> {
    if (this.closed) return Promise.reject(new BadResource("the listener is closed"));
    const c = this.ready.shift();
    if (c) return Promise.resolve(c);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<NodeConn> {
    while (true) {
      try {
        yield await this.accept();
      } catch (e) {
        if (e instanceof BadResource) return;
        throw e;
      }
    }
  }

  close(): void {
    if (this.closed) throw new BadResource("the listener is closed");
    this.closed = true;
    this.server.close();
    for (const c of this.ready.splice(0)) c.socket.destroy();
    for (const w of this.waiting.splice(0)) w.reject(new BadResource("the listener is closed"));
  }
}

/** Like `Deno.listen`: binds now (the port is known when this returns under Bun). */
export function listen(a: Address): NodeListener {
  const server = net.createServer({ noDelay: true, pauseOnConnect: false });
  if (a.transport === "unix") server.listen(a.path);
  else server.listen(a.port, a.hostname ?? "0.0.0.0");
  return new NodeListener(server);
}

/** Like `Deno.connect`: resolves once connected. */
export function connect(a: Address): Promise<NodeConn> {
  return new Promise((resolve, reject) => {
    const s = a.transport === "unix"
      ? net.connect({ path: a.path })
      : net.connect({ host: a.hostname ?? "127.0.0.1", port: a.port });
    s.once("error", reject);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(new NodeConn(s));
    });
  });
}

/** Like `Deno.unrefTimer`: the timer does not keep the process alive. */
export function unrefTimer(t: number | { unref?: () => void }): void {
  if (typeof t === "object" && t?.unref) t.unref();
}

/**
 * Where there is no `Deno` global (Bun, Node), defines one holding only what kernel/zmtp.ts calls
 * (`listen`, `connect`, `unrefTimer`, `errors.BadResource`), so zmtp.ts runs unchanged. Does nothing under
 * Deno. Returns a function that removes the shim again (a no-op where none was installed).
 */
export function installDenoNet(): () => void {
  // deno-lint-ignore no-explicit-any
  const g = globalThis as any;
  if (g.Deno) return () => {};
  const shim = { listen, connect, unrefTimer, errors: { BadResource } };
  g.Deno = shim;
  return () => {
    if (g.Deno === shim) delete g.Deno;
  };
}
