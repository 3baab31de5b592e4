/**
 * ZeroMQ wire protocol (ZMTP 3.0, NULL mechanism) over TCP, for the Jupyter kernel and its client.
 *
 * The npm `zeromq` binding cannot serve from Deno (a bound ROUTER never hears another process), so the
 * kernel speaks the wire protocol itself. Only what a Jupyter kernel needs is here: ROUTER (shell,
 * control, stdin), PUB (iopub) and REP (heartbeat), each bound to one TCP port and accepting any
 * number of peers; and, for kernel/client.ts, the connecting side: DEALER, SUB and REQ
 * (`ClientSocket`), one connection each.
 *
 * Wire layout, per connection:
 *   greeting  64 bytes: 0xFF, 8 pad, 0x7F, version 3.0, mechanism "NULL" padded to 20, as-server, 31 filler
 *   READY     command frame: name "READY", properties Socket-Type (and Identity from DEALER/REQ peers)
 *   frames    flags (bit0 MORE, bit1 LONG, bit2 COMMAND), size in 1 or 8 bytes (big endian), body
 *
 * PUB subscriptions arrive either as ZMTP 3.0 data messages (first byte 1 = subscribe, 0 = cancel) or as
 * ZMTP 3.1 SUBSCRIBE / CANCEL commands; both are honoured. Nothing is ever dropped for a slow subscriber:
 * a kernel must not lose outputs, so each peer has an unbounded, ordered write queue.
 *
 * @module
 */

/** One multipart message: a list of frames. */
export type Frames = Uint8Array[];

/** The socket types this module serves. */
export type SocketType = "ROUTER" | "PUB" | "REP";

/** Peers a bound socket accepts, per ZMTP's socket compatibility table. */
const COMPATIBLE: Record<SocketType, string[]> = {
  ROUTER: ["DEALER", "REQ", "ROUTER"],
  PUB: ["SUB", "XSUB"],
  REP: ["REQ", "DEALER"],
};

/**
 * Open connections a bound socket keeps at most (a guard against one client exhausting descriptors: five
 * sockets at this cap stay under the usual limit of 1024).
 */
export const MAX_CONNECTIONS = 128;

/** Time a new connection has to complete the ZMTP handshake before it is closed. */
export const HANDSHAKE_MS = 10_000;

/** Largest message a peer may send before its connection is closed (a guard, not a protocol limit). */
export const MAX_MESSAGE_BYTES = 1 << 30;

const FLAG_MORE = 1;
const FLAG_LONG = 2;
const FLAG_COMMAND = 4;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Log sink; the kernel points it at stderr with a prefix. */
export let log: (msg: string) => void = (msg) => console.error(`[zmtp] ${msg}`);
/** Replace the log sink (tests silence it). */
export function setLogger(f: (msg: string) => void): void {
  log = f;
}

/** The 64-byte ZMTP 3.0 greeting for the NULL mechanism. */
export function greeting(asServer = true): Uint8Array {
  const g = new Uint8Array(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3; // major
  g[11] = 0; // minor: 3.0, so libzmq peers fall back to subscription messages rather than commands
  g.set(enc.encode("NULL"), 12);
  g[32] = asServer ? 1 : 0;
  return g;
}

/** Encode a frame header: flags plus a 1-byte or 8-byte size. */
export function frameHeader(size: number, flags: number): Uint8Array {
  if (size < 256) return Uint8Array.of(flags, size);
  const h = new Uint8Array(9);
  h[0] = flags | FLAG_LONG;
  new DataView(h.buffer).setBigUint64(1, BigInt(size));
  return h;
}

/** Encode a command frame body: name length, name, data. */
export function commandBody(name: string, data: Uint8Array = new Uint8Array()): Uint8Array {
  const n = enc.encode(name);
  const out = new Uint8Array(1 + n.length + data.length);
  out[0] = n.length;
  out.set(n, 1);
  out.set(data, 1 + n.length);
  return out;
}

/** Encode ZMTP metadata properties (name length byte, name, value length u32 BE, value). */
export function encodeProperties(props: Record<string, Uint8Array | string>): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [k, v] of Object.entries(props)) {
    const name = enc.encode(k);
    const value = typeof v === "string" ? enc.encode(v) : v;
    const head = new Uint8Array(1 + name.length + 4);
    head[0] = name.length;
    head.set(name, 1);
    new DataView(head.buffer).setUint32(1 + name.length, value.length);
    parts.push(head, value);
  }
  return concat(parts);
}

/** Decode ZMTP metadata properties; throws on a truncated property list. */
export function decodeProperties(data: Uint8Array): Map<string, Uint8Array> {
  const props = new Map<string, Uint8Array>();
  let i = 0;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  while (i < data.length) {
    const nlen = data[i];
    if (i + 1 + nlen + 4 > data.length) throw new Error("truncated property name");
    const name = dec.decode(data.subarray(i + 1, i + 1 + nlen));
    const vlen = dv.getUint32(i + 1 + nlen);
    const vstart = i + 1 + nlen + 4;
    if (vstart + vlen > data.length) throw new Error(`truncated property ${name}`);
    props.set(name.toLowerCase(), data.subarray(vstart, vstart + vlen));
    i = vstart + vlen;
  }
  return props;
}

/** Concatenate byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Buffered reader over a Deno connection: exact-length reads without re-copying large frames. */
class Reader {
  private chunks: Uint8Array[] = [];
  private avail = 0;
  private buf = new Uint8Array(256 * 1024);
  constructor(private conn: Deno.Conn) {}

  /** Read exactly n bytes; null at a clean end of stream. */
  async read(n: number): Promise<Uint8Array | null> {
    while (this.avail < n) {
      const got = await this.conn.read(this.buf);
      if (got === null) return null;
      this.chunks.push(this.buf.slice(0, got));
      this.avail += got;
    }
    const first = this.chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.avail -= n;
      return out;
    }
    const out = new Uint8Array(n);
    let o = 0;
    while (o < n) {
      const c = this.chunks[0];
      const take = Math.min(c.length, n - o);
      out.set(c.subarray(0, take), o);
      o += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    this.avail -= n;
    return out;
  }
}

/** One frame as read from the wire. */
interface Frame {
  more: boolean;
  command: boolean;
  body: Uint8Array;
}

/** Read one frame; null at a clean end of stream. Throws on bad flags or a frame over the limit. */
async function readFrame(r: Reader): Promise<Frame | null> {
  const h = await r.read(1);
  if (!h) return null;
  const flags = h[0];
  if (flags & ~7) throw new Error(`bad frame flags 0x${flags.toString(16)}`);
  let size: number;
  if (flags & FLAG_LONG) {
    const s = await r.read(8);
    if (!s) return null;
    const big = new DataView(s.buffer, s.byteOffset, 8).getBigUint64(0);
    if (big > BigInt(MAX_MESSAGE_BYTES)) throw new Error(`frame of ${big} bytes is over the limit`);
    size = Number(big);
  } else {
    const s = await r.read(1);
    if (!s) return null;
    size = s[0];
  }
  const body = size === 0 ? new Uint8Array() : await r.read(size);
  if (!body) return null;
  return { more: (flags & FLAG_MORE) !== 0, command: (flags & FLAG_COMMAND) !== 0, body };
}

let nextGeneratedId = (Math.random() * 0xffffffff) >>> 0;

/** One accepted connection on a bound socket. */
export class Peer {
  /** Routing identity: the peer's Identity property, or a generated 5-byte id starting with 0. */
  identity: Uint8Array = new Uint8Array();
  /** Hex form of identity, the key in the ROUTER table. */
  key = "";
  /** Socket type the peer announced in READY. */
  peerType = "";
  /** PUB only: subscription prefixes. */
  subscriptions: Uint8Array[] = [];
  closed = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly conn: Deno.Conn, readonly owner: BoundSocket) {}

  /** Queue a multipart message; writes stay in order, a failed write closes the peer. */
  send(frames: Frames): Promise<void> {
    if (this.closed) return Promise.resolve();
    const parts: Uint8Array[] = [];
    frames.forEach((f, i) => {
      parts.push(frameHeader(f.length, i < frames.length - 1 ? FLAG_MORE : 0), f);
    });
    return this.writeParts(parts);
  }

  /** Queue a command frame. */
  sendCommand(name: string, data?: Uint8Array): Promise<void> {
    const body = commandBody(name, data);
    return this.writeParts([frameHeader(body.length, FLAG_COMMAND), body]);
  }

  /** Queue raw bytes (the greeting). */
  writeRaw(b: Uint8Array): Promise<void> {
    return this.writeParts([b]);
  }

  private writeParts(parts: Uint8Array[]): Promise<void> {
    // Small frames are coalesced into one write; large bodies go out as they are, without a copy.
    const batches: Uint8Array[] = [];
    let small: Uint8Array[] = [];
    let smallBytes = 0;
    for (const p of parts) {
      if (p.length > 64 * 1024) {
        if (small.length) batches.push(concat(small));
        small = [];
        smallBytes = 0;
        batches.push(p);
      } else {
        small.push(p);
        smallBytes += p.length;
      }
    }
    if (small.length) batches.push(concat(small));
    this.writing = this.writing.then(async () => {
      if (this.closed) return;
      try {
        for (const b of batches) {
          let off = 0;
          while (off < b.length) off += await this.conn.write(b.subarray(off));
        }
      } catch (e) {
        this.close(`write failed: ${(e as Error).message}`);
      }
    });
    return this.writing;
  }

  /** Close the connection and leave the owner's tables. */
  close(why?: string): void {
    if (this.closed) return;
    this.closed = true;
    if (why) log(`${this.owner.name}: closing peer ${this.key || "(handshake)"}: ${why}`);
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.owner.removePeer(this);
    this.owner.forget(this);
  }

  /** Handshake, then read messages until the connection ends. */
  async run(): Promise<void> {
    const r = new Reader(this.conn);
    // a connection that does not finish the handshake in time is closed: idle sockets cannot hold descriptors
    const timer = setTimeout(() => {
      if (!this.key) this.close(`no handshake within ${HANDSHAKE_MS / 1000} s`);
    }, HANDSHAKE_MS);
    Deno.unrefTimer(timer);
    try {
      await this.writeRaw(greeting(true));
      const g = await r.read(64);
      if (!g) return this.close("closed during greeting");
      if (g[0] !== 0xff || g[9] !== 0x7f) return this.close("not a ZMTP greeting");
      if (g[10] < 3) return this.close(`unsupported ZMTP version ${g[10]}.${g[11]}`);
      const mech = dec.decode(g.subarray(12, 32)).replace(/\0+$/, "");
      if (mech !== "NULL") return this.close(`unsupported mechanism ${mech}`);
      const props: Record<string, Uint8Array | string> = { "Socket-Type": this.owner.type };
      if (this.owner.type === "ROUTER") props["Identity"] = new Uint8Array();
      await this.sendCommand("READY", encodeProperties(props));
      const ready = await readFrame(r);
      if (!ready) return this.close("closed before READY");
      if (!ready.command) return this.close("expected READY command");
      const { name, data } = parseCommand(ready.body);
      if (name !== "READY") return this.close(`expected READY, got ${name}`);
      const p = decodeProperties(data);
      this.peerType = dec.decode(p.get("socket-type") ?? new Uint8Array());
      if (!COMPATIBLE[this.owner.type].includes(this.peerType)) {
        const reason = enc.encode("invalid socket type");
        await this.sendCommand("ERROR", Uint8Array.of(reason.length, ...reason));
        return this.close(`incompatible peer socket type ${this.peerType}`);
      }
      const id = p.get("identity");
      if (id && id.length > 0 && id[0] !== 0) this.identity = id.slice();
      else {
        nextGeneratedId = (nextGeneratedId + 1) >>> 0;
        const gen = new Uint8Array(5);
        new DataView(gen.buffer).setUint32(1, nextGeneratedId);
        this.identity = gen;
      }
      this.key = hex(this.identity);
      clearTimeout(timer);
      this.owner.addPeer(this);
      let msg: Frames = [];
      let msgBytes = 0;
      for (;;) {
        const f = await readFrame(r);
        if (!f) return this.close();
        if (f.command) {
          this.onCommand(f.body);
          continue;
        }
        msg.push(f.body);
        msgBytes += f.body.length;
        if (msgBytes > MAX_MESSAGE_BYTES) return this.close(`message over ${MAX_MESSAGE_BYTES} bytes`);
        if (!f.more) {
          const m = msg;
          msg = [];
          msgBytes = 0;
          this.owner.onPeerMessage(this, m);
        }
      }
    } catch (e) {
      this.close(`read failed: ${(e as Error).message}`);
    }
  }

  private onCommand(body: Uint8Array): void {
    const { name, data } = parseCommand(body);
    if (name === "SUBSCRIBE") this.owner.onSubscribe(this, data, true);
    else if (name === "CANCEL") this.owner.onSubscribe(this, data, false);
    else if (name === "PING") {
      // PING: ttl (2 bytes) + context; PONG echoes the context.
      this.sendCommand("PONG", data.subarray(2));
    } else if (name === "ERROR") this.close(`peer error: ${dec.decode(data.subarray(1))}`);
    // PONG and unknown commands are ignored, as the spec allows.
  }
}

function parseCommand(body: Uint8Array): { name: string; data: Uint8Array } {
  if (body.length < 1 || body.length < 1 + body[0]) throw new Error("truncated command");
  return { name: dec.decode(body.subarray(1, 1 + body[0])), data: body.subarray(1 + body[0]) };
}

/** Lower-case hex of bytes. */
export function hex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** A bound socket: a TCP listener plus its peers. Subclasses give the socket-type behaviour. */
export abstract class BoundSocket {
  abstract readonly type: SocketType;
  protected peers = new Map<string, Peer>();
  private listener?: Deno.Listener;
  /** Called with the peer and the message; what it means depends on the socket type. */
  onMessage: (frames: Frames, peer: Peer) => void = () => {};

  constructor(readonly name: string) {}

  /** Open connections (handshaking or not); at {@link MAX_CONNECTIONS} new ones are closed at once. */
  private open = new Set<Peer>();
  private closing = false;

  /**
   * Bind and start accepting; returns the port (useful with port 0). A failed accept (e.g. "Too many open
   * files" during a burst of connections) does not stop the listener: it retries with a backoff up to 1 s
   * until descriptors free up, and logs once per episode.
   */
  bind(hostname: string, port: number): number {
    this.listener = Deno.listen({ hostname, port, transport: "tcp" });
    const l = this.listener;
    (async () => {
      let backoff = 10, failing = false;
      while (!this.closing) {
        let conn: Deno.Conn;
        try {
          conn = await l.accept();
        } catch (e) {
          if (this.closing || e instanceof Deno.errors.BadResource) return;
          if (!failing) log(`${this.name}: accept failed: ${(e as Error).message}; retrying`);
          failing = true;
          await new Promise((r) => setTimeout(r, backoff));
          backoff = Math.min(1000, 2 * backoff);
          continue;
        }
        if (failing) log(`${this.name}: accepting again`);
        failing = false;
        backoff = 10;
        if (this.open.size >= MAX_CONNECTIONS) {
          // one client cannot starve the others of descriptors: refuse past the cap
          log(`${this.name}: ${MAX_CONNECTIONS} connections open: refusing another`);
          try {
            conn.close();
          } catch { /* closed */ }
          continue;
        }
        try {
          (conn as Deno.TcpConn).setNoDelay(true);
        } catch { /* not TCP */ }
        const peer = new Peer(conn, this);
        this.open.add(peer);
        peer.run().finally(() => this.open.delete(peer));
      }
    })();
    return (l.addr as Deno.NetAddr).port;
  }

  /** A closed peer leaves the count of open connections. */
  forget(p: Peer): void {
    this.open.delete(p);
  }

  /** Stop listening and drop every peer. */
  close(): void {
    this.closing = true;
    try {
      this.listener?.close();
    } catch { /* closed */ }
    for (const p of [...this.peers.values()]) p.close();
  }

  /** Number of connected peers that finished the handshake. */
  get peerCount(): number {
    return this.peers.size;
  }

  addPeer(p: Peer): void {
    const old = this.peers.get(p.key);
    // A reconnecting client keeps its identity: the new connection takes over (ZMQ_ROUTER_HANDOVER).
    if (old && old !== p) old.close("identity taken over by a new connection");
    this.peers.set(p.key, p);
  }

  removePeer(p: Peer): void {
    if (this.peers.get(p.key) === p) this.peers.delete(p.key);
  }

  onPeerMessage(p: Peer, frames: Frames): void {
    this.onMessage(frames, p);
  }

  onSubscribe(_p: Peer, _topic: Uint8Array, _on: boolean): void {}
}

/** ROUTER: incoming messages get the sender's identity prepended; outgoing ones are routed by it. */
export class RouterSocket extends BoundSocket {
  readonly type = "ROUTER" as const;

  override onPeerMessage(p: Peer, frames: Frames): void {
    this.onMessage([p.identity, ...frames], p);
  }

  /** Send to the peer named by frames[0]; a message to an unknown identity is dropped, as in ZeroMQ. */
  send(frames: Frames): Promise<void> {
    const peer = this.peers.get(hex(frames[0]));
    if (!peer) return Promise.resolve();
    return peer.send(frames.slice(1));
  }
}

/** PUB: every message goes to each peer whose subscription is a prefix of its first frame. */
export class PubSocket extends BoundSocket {
  readonly type = "PUB" as const;

  override onPeerMessage(p: Peer, frames: Frames): void {
    // ZMTP 3.0 subscriptions: a one-frame message, first byte 1 (subscribe) or 0 (cancel).
    const f = frames[0];
    if (frames.length === 1 && f.length >= 1 && (f[0] === 0 || f[0] === 1)) {
      this.onSubscribe(p, f.subarray(1), f[0] === 1);
    }
  }

  override onSubscribe(p: Peer, topic: Uint8Array, on: boolean): void {
    const t = topic.slice();
    const i = p.subscriptions.findIndex((s) => equal(s, t));
    if (on && i < 0) p.subscriptions.push(t);
    if (!on && i >= 0) p.subscriptions.splice(i, 1);
  }

  /** Publish to matching subscribers; resolves when every write is queued and flushed. */
  send(frames: Frames): Promise<void> {
    const writes: Promise<void>[] = [];
    const topic = frames[0] ?? new Uint8Array();
    for (const p of this.peers.values()) {
      if (p.subscriptions.some((s) => startsWith(topic, s))) writes.push(p.send(frames));
    }
    return Promise.all(writes).then(() => {});
  }

  /** Number of peers with at least one subscription. */
  get subscriberCount(): number {
    let n = 0;
    for (const p of this.peers.values()) if (p.subscriptions.length) n++;
    return n;
  }
}

/** REP used as a heartbeat: each request is echoed back to its sender, envelope included. */
export class EchoRepSocket extends BoundSocket {
  readonly type = "REP" as const;

  override onPeerMessage(p: Peer, frames: Frames): void {
    p.send(frames);
  }
}

function startsWith(a: Uint8Array, prefix: Uint8Array): boolean {
  if (prefix.length > a.length) return false;
  for (let i = 0; i < prefix.length; i++) if (a[i] !== prefix[i]) return false;
  return true;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && startsWith(a, b);
}

// ------------------------------------------------------------------------------------------ client side

/** The socket types a client connects with: DEALER (shell, control, stdin), SUB (iopub), REQ (heartbeat). */
export type ClientSocketType = "DEALER" | "SUB" | "REQ";

/** Peers a connecting socket accepts, per ZMTP's socket compatibility table. */
const CLIENT_COMPATIBLE: Record<ClientSocketType, string[]> = {
  DEALER: ["ROUTER", "DEALER", "REP"],
  SUB: ["PUB", "XPUB"],
  REQ: ["REP", "ROUTER"],
};

/**
 * One connecting socket over one TCP connection (a Jupyter client needs no more: each channel talks to one
 * kernel). DEALER sends and receives frames as they are; REQ adds and strips the empty delimiter frame;
 * SUB subscribes with ZMTP 3.0 subscription messages, which 3.0 and 3.1 publishers both accept.
 *
 * Received messages queue until `recv()` takes them: nothing is dropped, in the same spirit as the server
 * side. There is no reconnection: if the connection ends, `recv()` returns null and `closedReason` says why.
 *
 * @example
 * ```ts ignore
 * const shell = await ClientSocket.connect("DEALER", "127.0.0.1", conn.shell_port);
 * await shell.send([delimiter, signature, header, parent, metadata, content]);
 * const reply = await shell.recv(); // Frames, or null once closed
 * shell.close();
 * ```
 */
export class ClientSocket {
  /** Why the connection ended (null while open). */
  closedReason: string | null = null;
  /** Socket type the peer announced in READY. */
  peerType = "";
  private queue: Frames[] = [];
  private waiters: ((m: Frames | null) => void)[] = [];
  private writing: Promise<void> = Promise.resolve();

  private constructor(readonly type: ClientSocketType, private conn: Deno.Conn, readonly name: string) {}

  /**
   * Connect, exchange greetings and READY; resolves once the peer's READY arrived, so a SUB's
   * subscriptions (sent right after) are on the wire before anything else is sent on other sockets.
   */
  static async connect(
    type: ClientSocketType,
    hostname: string,
    port: number,
    opts: { identity?: Uint8Array; subscribe?: Uint8Array[]; name?: string } = {},
  ): Promise<ClientSocket> {
    const name = opts.name ?? `${type} ${hostname}:${port}`;
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname, port, transport: "tcp" });
    } catch (e) {
      throw new Error(`${name}: cannot connect to ${hostname}:${port}: ${(e as Error).message}`);
    }
    try {
      conn.setNoDelay(true);
    } catch { /* not TCP */ }
    const s = new ClientSocket(type, conn, name);
    const r = new Reader(conn);
    try {
      await s.writeRaw(greeting(false));
      const g = await r.read(64);
      if (!g) throw new Error("closed during greeting");
      if (g[0] !== 0xff || g[9] !== 0x7f) throw new Error("not a ZMTP greeting");
      if (g[10] < 3) throw new Error(`unsupported ZMTP version ${g[10]}.${g[11]}`);
      const mech = dec.decode(g.subarray(12, 32)).replace(/\0+$/, "");
      if (mech !== "NULL") throw new Error(`unsupported mechanism ${mech}`);
      const props: Record<string, Uint8Array | string> = { "Socket-Type": type };
      if (type !== "SUB") props["Identity"] = opts.identity ?? new Uint8Array();
      const body = commandBody("READY", encodeProperties(props));
      await s.writeRaw(concat([frameHeader(body.length, FLAG_COMMAND), body]));
      const ready = await readFrame(r);
      if (!ready) throw new Error("closed before READY");
      if (!ready.command) throw new Error("expected READY command");
      const cmd = parseCommand(ready.body);
      if (cmd.name === "ERROR") throw new Error(`peer error: ${dec.decode(cmd.data.subarray(1))}`);
      if (cmd.name !== "READY") throw new Error(`expected READY, got ${cmd.name}`);
      s.peerType = dec.decode(decodeProperties(cmd.data).get("socket-type") ?? new Uint8Array());
      if (!CLIENT_COMPATIBLE[type].includes(s.peerType)) {
        throw new Error(`incompatible peer socket type ${s.peerType || "(none)"} for ${type}`);
      }
      for (const topic of opts.subscribe ?? []) await s.sendRaw([concat([Uint8Array.of(1), topic])]);
    } catch (e) {
      s.close();
      throw new Error(`${name}: handshake failed: ${(e as Error).message}`);
    }
    s.readLoop(r);
    return s;
  }

  /** Send one multipart message (REQ adds the empty delimiter frame). Rejects once the socket is closed. */
  send(frames: Frames): Promise<void> {
    if (this.closedReason !== null) {
      return Promise.reject(new Error(`${this.name}: send on a closed socket (${this.closedReason})`));
    }
    return this.sendRaw(this.type === "REQ" ? [new Uint8Array(), ...frames] : frames);
  }

  /** The next message, in arrival order; null once the connection is closed and the queue is empty. */
  recv(): Promise<Frames | null> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.closedReason !== null) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Close the connection; pending and later `recv()` calls get null. */
  close(why = "closed by this side"): void {
    if (this.closedReason !== null) return;
    this.closedReason = why;
    try {
      this.conn.close();
    } catch { /* already closed */ }
    for (const w of this.waiters.splice(0)) w(null);
  }

  private sendRaw(frames: Frames): Promise<void> {
    const parts: Uint8Array[] = [];
    frames.forEach((f, i) => parts.push(frameHeader(f.length, i < frames.length - 1 ? FLAG_MORE : 0), f));
    return this.writeRaw(concat(parts));
  }

  private writeRaw(b: Uint8Array): Promise<void> {
    const w = this.writing.then(async () => {
      let off = 0;
      while (off < b.length) off += await this.conn.write(b.subarray(off));
    });
    // A failed write closes the socket; the caller's promise still rejects with the cause.
    this.writing = w.catch((e) => this.close(`write failed: ${(e as Error).message}`));
    return w;
  }

  private async readLoop(r: Reader): Promise<void> {
    let msg: Frames = [];
    let bytes = 0;
    try {
      for (;;) {
        const f = await readFrame(r);
        if (!f) return this.close("closed by the peer");
        if (f.command) {
          const { name, data } = parseCommand(f.body);
          if (name === "PING") await this.writeRaw(pongFrame(data));
          else if (name === "ERROR") return this.close(`peer error: ${dec.decode(data.subarray(1))}`);
          continue;
        }
        msg.push(f.body);
        bytes += f.body.length;
        if (bytes > MAX_MESSAGE_BYTES) return this.close(`message over ${MAX_MESSAGE_BYTES} bytes`);
        if (f.more) continue;
        let m = msg;
        msg = [];
        bytes = 0;
        if (this.type === "REQ") {
          if (m.length === 0 || m[0].length !== 0) {
            log(`${this.name}: dropped a reply without the empty delimiter frame`);
            continue;
          }
          m = m.slice(1);
        }
        const w = this.waiters.shift();
        if (w) w(m);
        else this.queue.push(m);
      }
    } catch (e) {
      if (this.closedReason === null) this.close(`read failed: ${(e as Error).message}`);
    }
  }
}

function pongFrame(pingData: Uint8Array): Uint8Array {
  // PING: ttl (2 bytes) + context; PONG echoes the context.
  const body = commandBody("PONG", pingData.subarray(2));
  return concat([frameHeader(body.length, FLAG_COMMAND), body]);
}
