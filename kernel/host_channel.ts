/**
 * The private channel between the kernel process and its execution host: JSON messages in length-prefixed
 * frames (4-byte big-endian length, then UTF-8 JSON) over a Unix socket in the kernel's own 0700 directory.
 *
 * Not the host's stdout: a cell may write to its process's stdout and stderr (Deno.stdout.writeSync, a
 * subprocess that inherits them), and nothing it writes there may reach this channel.
 *
 * @module
 */

const enc = new TextEncoder();
const dec = new TextDecoder();
/** A frame larger than this is a broken peer, not a message (outputs are at most tens of MB). */
const MAX_FRAME = 1 << 30;

/** One end of the channel: ordered sends, a callback per received message, and a promise for the end. */
export class FrameChannel<In, Out> {
  /** Called for each message, in order. */
  onMessage: (m: In) => void = () => {};
  /** Resolves when the peer closed the connection or it broke (every message before that was delivered). */
  readonly closed: Promise<void>;
  private writer: WritableStreamDefaultWriter<Uint8Array>;
  private isClosed = false;

  constructor(private conn: Deno.Conn, first?: Uint8Array) {
    this.writer = conn.writable.getWriter();
    this.closed = this.readLoop(first ?? new Uint8Array(0));
  }

  /** Queue a message; writes keep their order. A send to a closed channel is dropped. */
  send(m: Out): Promise<void> {
    if (this.isClosed) return Promise.resolve();
    const body = enc.encode(JSON.stringify(m));
    const frame = new Uint8Array(4 + body.length);
    new DataView(frame.buffer).setUint32(0, body.length);
    frame.set(body, 4);
    return this.writer.write(frame).catch(() => {});
  }

  /** Close the connection (the peer sees its end). */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.writer.close().catch(() => {});
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  private async readLoop(start: Uint8Array): Promise<void> {
    let buf = start;
    const reader = this.conn.readable.getReader();
    try {
      while (true) {
        while (buf.length >= 4) {
          const n = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
          if (n > MAX_FRAME) throw new Error(`frame of ${n} bytes`);
          if (buf.length < 4 + n) break;
          const m = JSON.parse(dec.decode(buf.subarray(4, 4 + n))) as In;
          buf = buf.subarray(4 + n);
          this.onMessage(m);
        }
        const { value, done } = await reader.read();
        if (done) break;
        buf = concat(buf, value);
      }
    } catch { /* a broken connection ends the channel like a closed one */ }
    this.isClosed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (!a.length) return b;
  const c = new Uint8Array(a.length + b.length);
  c.set(a);
  c.set(b, a.length);
  return c;
}
