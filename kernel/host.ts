/**
 * The execution host: a child process of the kernel that runs the cells, so that a cell which takes its
 * process down (a V8 out-of-memory abort, `Deno.kill(Deno.pid, "SIGKILL")`, a crash in native code) takes
 * down only this process. The kernel (kernel/main.ts) sees it exit, ends the cell with an error and starts
 * a fresh host.
 *
 * Usage (by the kernel only): deno run -A --config deno.json [--v8-flags=...] kernel/host.ts SOCKET
 * [--no-preload], with SEQLAB_HOST_TOKEN in the environment.
 *
 * Inside, it is what the kernel process used to be for its cells: the cells run in a Worker
 * (kernel/worker.ts) beside this main thread, which owns the shared control array. Interrupts set the
 * shared flag and post a message; an input line is copied into the shared buffer and the worker, blocked in
 * `Atomics.wait`, wakes. Messages to and from the kernel travel over the Unix socket SOCKET
 * (kernel/host_channel.ts), never over stdout, which belongs to the cells.
 *
 * @module
 */
import { FrameChannel } from "./host_channel.ts";
import {
  CTL_INPUT_LEN,
  CTL_INPUT_STATE,
  CTL_INTERRUPT,
  type FromHost,
  type FromWorker,
  INPUT_INTERRUPTED,
  INPUT_READY,
  type ToHost,
  type ToWorker,
} from "./messages.ts";

const enc = new TextEncoder();

function log(msg: string): void {
  console.error(`[seqlab host ${Deno.pid}] ${msg}`);
}

async function main(): Promise<void> {
  const path = Deno.args.find((a) => !a.startsWith("--"));
  const token = Deno.env.get("SEQLAB_HOST_TOKEN") ?? "";
  Deno.env.delete("SEQLAB_HOST_TOKEN"); // the cells have no use for it
  if (!path) {
    log("usage: kernel/host.ts SOCKET [--no-preload] (started by kernel/main.ts)");
    Deno.exit(2);
  }
  // Ctrl-C in a terminal reaches the whole process group: the kernel turns it into an interrupt, and this
  // process must not die of it.
  try {
    Deno.addSignalListener("SIGINT", () => {});
  } catch { /* no signals on this platform */ }

  const conn = await Deno.connect({ transport: "unix", path });
  const channel = new FrameChannel<ToHost, FromHost>(conn);
  await channel.send({ type: "hello", token, pid: Deno.pid });

  const ctl = new Int32Array(new SharedArrayBuffer(16));
  const inputBuf = new Uint8Array(new SharedArrayBuffer(4 * 1024 * 1024));
  let running = -1;
  let inputWaiting = false;
  const cancelInput = () => {
    if (!inputWaiting) return;
    inputWaiting = false;
    Atomics.store(ctl, CTL_INPUT_STATE, INPUT_INTERRUPTED);
    Atomics.notify(ctl, CTL_INPUT_STATE);
  };

  const worker = new Worker(new URL("./worker.ts", import.meta.url), {
    type: "module",
    name: "seqlab-cells",
  });
  worker.onmessage = (e: MessageEvent<FromWorker>) => {
    const m = e.data;
    if (m.type === "input") inputWaiting = true;
    if (m.type === "done" && m.seq === running) {
      running = -1;
      Atomics.store(ctl, CTL_INTERRUPT, 0);
    }
    channel.send(m);
  };
  worker.onerror = async (e) => {
    // An error that escaped the worker's own handlers leaves it in an unknown state: the kernel replaces
    // this whole process, which also ends the running cell with an error.
    e.preventDefault();
    log(`worker error: ${e.message}`);
    await channel.send({ type: "fatal", message: e.message });
    Deno.exit(70);
  };
  worker.postMessage(
    {
      type: "init",
      ctl: ctl.buffer as SharedArrayBuffer,
      input: inputBuf.buffer as SharedArrayBuffer,
      preload: !Deno.args.includes("--no-preload"),
    } satisfies ToWorker,
  );

  channel.onMessage = (m) => {
    switch (m.type) {
      case "run":
        running = m.seq;
        inputWaiting = false;
        Atomics.store(ctl, CTL_INTERRUPT, 0);
        worker.postMessage(m);
        break;
      case "complete":
      case "inspect":
        worker.postMessage(m);
        break;
      case "interrupt":
        if (m.seq !== running) break; // that cell has ended already
        Atomics.store(ctl, CTL_INTERRUPT, 1);
        worker.postMessage({ type: "interrupt" } satisfies ToWorker);
        cancelInput();
        break;
      case "input_reply": {
        if (!inputWaiting) break;
        inputWaiting = false;
        let bytes = enc.encode(m.value);
        if (bytes.length > inputBuf.length) bytes = bytes.subarray(0, inputBuf.length);
        inputBuf.set(bytes);
        Atomics.store(ctl, CTL_INPUT_LEN, bytes.length);
        Atomics.store(ctl, CTL_INPUT_STATE, INPUT_READY);
        Atomics.notify(ctl, CTL_INPUT_STATE);
        break;
      }
      case "input_cancel":
        cancelInput();
        break;
    }
  };
  // The kernel closed the channel (it exited, or was killed): nothing can reach this process any more.
  await channel.closed;
  Deno.exit(0);
}

if (import.meta.main) await main();
