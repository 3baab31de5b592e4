"""Compare executed notebooks with each cell's metadata.seqlab.expect. Prints JSON.

Usage: check_outputs.py EXECUTED.ipynb...
A cell whose outputs differ counts as misplaced (wrong order or an output from another cell) or lost
(an expected output missing); progress bars are matched by their final text's prefix.
"""
import json
import sys


def normalize(cell):
    out = []
    for o in cell.get("outputs", []):
        t = o["output_type"]
        if t == "stream":
            text = o["text"] if isinstance(o["text"], str) else "".join(o["text"])
            if out and out[-1][0] == "stream" and out[-1][1] == o["name"]:
                out[-1][2] += text
            else:
                out.append(["stream", o["name"], text])
        elif t in ("display_data", "execute_result"):
            data = o.get("data", {})
            key = "text/markdown" if "text/markdown" in data else "text/plain"
            v = data.get(key, "")
            out.append([t, key, v if isinstance(v, str) else "".join(v)])
        else:
            out.append([t, o.get("ename", ""), o.get("evalue", "")])
    return out


def matches(got, want):
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g[0] != w[0] or g[1] != w[1]:
            return False
        if "##" in w[2]:  # progress bar: the elapsed time at the end varies
            if not g[2].startswith(w[2]):
                return False
        elif g[2] != w[2]:
            return False
    return True


report = {"notebooks": 0, "cells": 0, "bad_cells": 0, "lost": 0, "extra": 0, "examples": []}
for path in sys.argv[1:]:
    nb = json.load(open(path))
    report["notebooks"] += 1
    for cell in nb["cells"]:
        want = cell.get("metadata", {}).get("seqlab", {}).get("expect")
        if want is None:
            continue
        report["cells"] += 1
        got = normalize(cell)
        if not matches(got, want):
            report["bad_cells"] += 1
            report["lost"] += max(0, len(want) - len(got))
            report["extra"] += max(0, len(got) - len(want))
            if len(report["examples"]) < 5:
                report["examples"].append({"notebook": path, "cell": cell.get("id"), "want": want, "got": got})
print(json.dumps(report))
