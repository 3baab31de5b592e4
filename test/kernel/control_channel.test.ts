/**
 * An execute_request sent on the control channel while a shell cell runs (issue #16: it used to run beside
 * the cell, publish the cell's output under its own parent and wedge the shell channel for good). Driven
 * with jupyter_client, as a frontend would: the control request gets an error reply naming the channel,
 * the shell cell finishes with its own reply and outputs, and later requests run.
 */
import { expect, test } from "vitest";
import { PYTHON, run } from "./harness.ts";

const SCRIPT = `
import json, time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="seqlab", startup_timeout=90)
out = {}
try:
    msg_id = kc.execute("await new Promise((r) => setTimeout(r, 2500)); console.log('shell cell'); 40 + 2")
    time.sleep(0.8)
    c = kc.session.msg("execute_request", {"code": "console.log('from control'); 7", "silent": False,
        "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    kc.control_channel.send(c)
    creply = kc.get_control_msg(timeout=30)
    out["control_reply"] = [creply["msg_type"], creply["content"].get("status"), creply["content"].get("ename"),
                            creply["parent_header"].get("msg_id") == c["header"]["msg_id"]]
    reply = kc.get_shell_msg(timeout=60)
    out["shell_reply"] = [reply["msg_type"], reply["content"].get("status"), reply["parent_header"].get("msg_id") == msg_id]
    texts, foreign = [], []
    while True:
        m = kc.get_iopub_msg(timeout=20)
        parent = m["parent_header"].get("msg_id")
        if m["msg_type"] in ("stream", "execute_result"):
            t = m["content"].get("text") or m["content"]["data"]["text/plain"]
            (texts if parent == msg_id else foreign).append(t)
        if parent == msg_id and m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    out["shell_outputs"] = texts
    out["other_outputs"] = foreign
    later = kc.execute_interactive("[1 + 1, 'after']", timeout=60)
    out["later"] = later["content"]["status"]
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
print("RESULT " + json.dumps(out))
`;

test(
  "an execute_request on control is refused; the running shell cell keeps its reply and outputs",
  async () => {
    const r = await run(PYTHON, ["-c", SCRIPT], { timeoutMs: 150_000 });
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const at = r.stdout.lastIndexOf("RESULT ");
    expect(at, r.stdout.slice(-2000)).toBeGreaterThanOrEqual(0);
    const d = JSON.parse(r.stdout.slice(at + "RESULT ".length).split("\n")[0]);
    expect(d.control_reply).toEqual(["execute_reply", "error", "WrongChannel", true]);
    expect(d.shell_reply).toEqual(["execute_reply", "ok", true]);
    expect(d.shell_outputs.join("")).toContain("shell cell");
    expect(d.shell_outputs.join("")).toContain("42");
    expect(d.other_outputs.join("")).not.toContain("from control");
    expect(d.later).toBe("ok");
  },
  160_000,
);
