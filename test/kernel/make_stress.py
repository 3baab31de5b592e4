"""Write notebooks/99_stress.ipynb: 50 cells mixing top-level await, timers, display, display updates,
progress bars and console output. Each cell's metadata.seqlab.expect lists the outputs it must end
with (after nbclient merges streams and applies display updates), so a checker can find any output
that was lost or landed in the wrong cell.

Run: /usr/bin/python3 test/kernel/make_stress.py
"""
import json
import os

cells = []


def code(src, expect):
    cells.append({"cell_type": "code", "execution_count": None, "id": f"stress-{len(cells):02d}",
                  "metadata": {"seqlab": {"expect": expect}}, "outputs": [], "source": src})


code("const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));\nconsole.log('ready')",
     [["stream", "stdout", "ready\n"]])
for i in range(1, 50):
    k = i % 5
    if k == 0:
        code(f'console.log("c{i} a");\nawait sleep(4);\nconsole.log("c{i} b");\n{i}',
             [["stream", "stdout", f"c{i} a\nc{i} b\n"], ["execute_result", "text/plain", f"{i}"]])
    elif k == 1:
        code(f'setTimeout(() => console.log("c{i} timer"), 3);\nawait sleep(15);\ndisplay(md("**c{i}**"));\n'
             f'console.error("c{i} err")',
             [["stream", "stdout", f"c{i} timer\n"], ["display_data", "text/markdown", f"**c{i}**"],
              ["stream", "stderr", f"c{i} err\n"]])
    elif k == 2:
        code(f'const h{i} = await display(md("c{i} v1"), {{ id: "d{i}" }});\nawait sleep(3);\n'
             f'await h{i}.update(md("c{i} v2"));\nconsole.log("c{i} after")',
             [["display_data", "text/markdown", f"c{i} v2"], ["stream", "stdout", f"c{i} after\n"]])
    elif k == 3:
        code(f'let acc{i} = 0;\nfor (const k of progress(20, {{ label: "c{i}", intervalMs: 2 }})) {{\n'
             f'  acc{i} += k;\n  await sleep(1);\n}}\nacc{i}',
             [["display_data", "text/plain", ""],
              ["display_data", "text/plain", f"c{i} [##############################] 20/20 100%"],
              ["execute_result", "text/plain", "190"]])
    else:
        code(f'await Promise.all([1, 2, 3].map(async (k) => {{\n  await sleep(k * 3);\n  console.log("c{i} k" + k);\n}}));\n'
             f'console.log("c{i} done");\n"r{i}"',
             [["stream", "stdout", f"c{i} k1\nc{i} k2\nc{i} k3\nc{i} done\n"],
              ["execute_result", "text/plain", f'"r{i}"']])

nb = {
    "cells": [{"cell_type": "markdown", "id": "stress-title", "metadata": {},
               "source": "# Kernel stress: 50 cells\n\nTop-level await, timers, display, display updates, "
                         "progress bars and console output. Executed repeatedly by test/kernel/notebooks.test.ts; "
                         "each cell's `metadata.seqlab.expect` is what it must show."}] + cells,
    "metadata": {"kernelspec": {"display_name": "seqlab (TypeScript)", "language": "typescript", "name": "seqlab"},
                 "language_info": {"file_extension": ".ts", "mimetype": "text/x.typescript", "name": "typescript"}},
    "nbformat": 4, "nbformat_minor": 5,
}
out = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "99_stress.ipynb")
with open(out, "w") as f:
    json.dump(nb, f, indent=1)
    f.write("\n")
print(f"wrote {os.path.normpath(out)} with {len(cells)} code cells")
