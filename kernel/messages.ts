/**
 * Messages between the kernel, its execution host and the host's cell worker, and the layout of the shared
 * control array (host and worker). Kept apart from worker.ts, whose top level installs the cell environment
 * and must only ever run inside the worker.
 *
 * @module
 */
import type { MimeBundle } from "./display.ts";

/** Indices into the shared control array. */
export const CTL_INTERRUPT = 0, CTL_INPUT_STATE = 1, CTL_INPUT_LEN = 2;
/** Input states. */
export const INPUT_WAITING = 0, INPUT_READY = 1, INPUT_INTERRUPTED = 2;

/** Messages from the host's main thread to the worker. */
export type ToWorker =
  | { type: "init"; ctl: SharedArrayBuffer; input: SharedArrayBuffer; preload: boolean }
  | {
    type: "run";
    seq: number;
    url: string;
    silent: boolean;
    allowStdin: boolean;
    hasResult: boolean;
    userExpressions: Record<string, string>;
  }
  | { type: "interrupt" }
  | { type: "complete"; id: number; object: string | null; prefix: string }
  | { type: "inspect"; id: number; expr: string };

/** Output of a cell, in order. */
export type Output =
  | { kind: "stream"; name: "stdout" | "stderr"; text: string }
  | {
    kind: "display";
    data: MimeBundle;
    metadata: Record<string, unknown>;
    displayId?: string;
    update: boolean;
  }
  | { kind: "clear"; wait: boolean }
  | { kind: "result"; data: MimeBundle; metadata: Record<string, unknown> }
  | { kind: "error"; ename: string; evalue: string; stack: string };

/** Messages from the worker to the host's main thread (most are forwarded to the kernel). */
export type FromWorker =
  | { type: "ready"; warning?: string }
  | { type: "out"; seq: number; out: Output }
  | { type: "input"; prompt: string; password: boolean }
  | {
    type: "done";
    seq: number;
    status: "ok" | "error";
    userExpressions: Record<string, unknown>;
    resultText?: string;
  }
  | { type: "reply"; id: number; value: unknown }
  | { type: "log"; text: string };

/**
 * Messages from the kernel process to the execution host (kernel/host.ts) over the private channel
 * (kernel/host_channel.ts). Cell work is forwarded to the worker as is; the rest the host does itself with the
 * shared control array: set the interrupt flag, hand over an input line, or cancel a pending prompt.
 */
export type ToHost =
  | Extract<ToWorker, { type: "run" | "complete" | "inspect" }>
  | { type: "interrupt"; seq: number }
  | { type: "input_reply"; value: string }
  | { type: "input_cancel" };

/** Messages from the execution host: the worker's, forwarded in order, plus the host's own. */
export type FromHost =
  | FromWorker
  /** First frame on a new connection: proves it is the host this kernel started. */
  | { type: "hello"; token: string; pid: number }
  /** The worker failed in a way that leaves it unusable; the host exits after sending this. */
  | { type: "fatal"; message: string };
