/**
 * Messages between the kernel's main thread and its cell worker, and the layout of their shared
 * control array. Kept apart from worker.ts, whose top level installs the cell environment and must
 * only ever run inside the worker.
 *
 * @module
 */
import type { MimeBundle } from "./display.ts";

/** Indices into the shared control array. */
export const CTL_INTERRUPT = 0, CTL_INPUT_STATE = 1, CTL_INPUT_LEN = 2;
/** Input states. */
export const INPUT_WAITING = 0, INPUT_READY = 1, INPUT_INTERRUPTED = 2;

/** Messages from the main thread. */
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

/** Messages to the main thread. */
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
