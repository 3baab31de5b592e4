"""Drive the seqlab kernel through Debian's jupyter_client and report what came back, as JSON.

Input (stdin, JSON): {"steps": [step, ...]}, each step one of
  {"execute": CODE, "allow_stdin": bool, "answers": [str...], "interrupt_after": seconds, "timeout": s}
  {"complete": CODE, "cursor": int}        cursor in code points, default len(CODE)
  {"inspect": CODE, "cursor": int}
  {"is_complete": CODE}
  {"history": {...history_request args...}}
  {"kernel_info": true}
  {"restart": true}                         restart through the kernel manager
Output (stdout, JSON): {"results": [...]} with, for execute steps, the reply content, the outputs
(iopub messages between busy and idle, in order) and timing; `order_ok` says whether busy came first,
idle last, and nothing for this request arrived after idle within a short grace period.
"""
import json
import queue
import sys
import time

from jupyter_client.manager import start_new_kernel


def main():
    spec = json.load(sys.stdin)
    km, kc = start_new_kernel(kernel_name=spec.get("kernel", "seqlab"), startup_timeout=60)
    results = []
    try:
        for step in spec["steps"]:
            results.append(run_step(km, kc, step))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    json.dump({"results": results}, sys.stdout)


def shell_reply(kc, msg_id, timeout):
    deadline = time.time() + timeout
    while True:
        m = kc.get_shell_msg(timeout=max(0.1, deadline - time.time()))
        if m["parent_header"].get("msg_id") == msg_id:
            return m


def run_step(km, kc, step):
    if "execute" in step:
        return execute(km, kc, step)
    if "complete" in step:
        code = step["complete"]
        mid = kc.complete(code, step.get("cursor", len(code)))
        return shell_reply(kc, mid, 20)["content"]
    if "inspect" in step:
        code = step["inspect"]
        mid = kc.inspect(code, step.get("cursor", len(code)))
        return shell_reply(kc, mid, 20)["content"]
    if "is_complete" in step:
        mid = kc.is_complete(step["is_complete"])
        return shell_reply(kc, mid, 20)["content"]
    if "history" in step:
        mid = kc.history(**step["history"])
        return shell_reply(kc, mid, 20)["content"]
    if "restart" in step:
        km.restart_kernel(now=False)  # shutdown_request(restart=True) on control, then a new process
        kc.wait_for_ready(timeout=60)
        return {"restarted": True}
    if "kernel_info" in step:
        mid = kc.kernel_info()
        return shell_reply(kc, mid, 20)["content"]
    raise ValueError(f"unknown step {step}")


def execute(km, kc, step):
    timeout = step.get("timeout", 30)
    t0 = time.time()
    mid = kc.execute(step["execute"], allow_stdin=step.get("allow_stdin", False),
                     stop_on_error=step.get("stop_on_error", True))
    answers = list(step.get("answers", []))
    prompts = []
    interrupt_at = step.get("interrupt_after")
    interrupted_at = None
    outputs = []
    states = []
    reply = None
    idle = False
    deadline = t0 + timeout
    while time.time() < deadline and not (idle and reply is not None):
        if interrupt_at is not None and interrupted_at is None and time.time() - t0 >= interrupt_at:
            km.interrupt_kernel()
            interrupted_at = time.time()
        try:
            m = kc.get_iopub_msg(timeout=0.05)
            if m["parent_header"].get("msg_id") == mid:
                t = m["msg_type"]
                if t == "status":
                    states.append(m["content"]["execution_state"])
                    if m["content"]["execution_state"] == "idle":
                        idle = True
                elif t != "execute_input":
                    if idle:
                        outputs.append({"type": t, "content": m["content"], "after_idle": True})
                    else:
                        outputs.append({"type": t, "content": m["content"]})
        except queue.Empty:
            pass
        try:
            m = kc.get_stdin_msg(timeout=0.01)
            if m["msg_type"] == "input_request":
                prompts.append(m["content"]["prompt"])
                if answers:
                    kc.input(answers.pop(0))
        except queue.Empty:
            pass
        if reply is None:
            try:
                m = kc.get_shell_msg(timeout=0.01)
                if m["parent_header"].get("msg_id") == mid:
                    reply = m["content"]
            except queue.Empty:
                pass
    done_at = time.time()
    # Anything for this request after idle is a misplaced output.
    late = []
    end = time.time() + 0.3
    while time.time() < end:
        try:
            m = kc.get_iopub_msg(timeout=0.05)
            if m["parent_header"].get("msg_id") == mid:
                late.append(m["msg_type"])
        except queue.Empty:
            pass
    return {
        "reply": reply,
        "outputs": outputs,
        "prompts": prompts,
        "states": states,
        "late": late,
        "order_ok": states[:1] == ["busy"] and states[-1:] == ["idle"] and not late
        and not any(o.get("after_idle") for o in outputs),
        "seconds": done_at - t0,
        "stop_seconds": (done_at - interrupted_at) if interrupted_at else None,
        "timed_out": not (idle and reply is not None),
    }


if __name__ == "__main__":
    main()
