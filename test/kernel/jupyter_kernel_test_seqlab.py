"""jupyter_kernel_test's KernelTests against the seqlab kernel: every check has a sample, none skips.

Run by test/kernel/protocol.test.ts with Debian's python3 and JUPYTER_PATH pointing at a fresh
kernelspec; runnable by hand the same way:
    JUPYTER_PATH=<prefix>/share/jupyter /usr/bin/python3 -m unittest -v test/kernel/jupyter_kernel_test_seqlab.py
"""
import unittest

import jupyter_kernel_test as jkt


class SeqlabKernelTests(jkt.KernelTests):
    kernel_name = "seqlab"
    language_name = "typescript"
    file_extension = ".ts"

    code_hello_world = 'console.log("hello, world")'
    code_stderr = 'console.error("something went wrong")'

    completion_samples = [
        {"text": "Math.ma", "matches": ["max"]},
        {"text": "const zzqLongName = 1; zzqLong", "matches": ["zzqLongName"]},
        {"text": "[1, 2].fla", "matches": []},  # only identifier paths are evaluated: no side effects
        {"text": "JSON.str", "matches": ["stringify"]},
    ]

    complete_code_samples = ["1", "const x = 1", "function f() { return 1 }", "`a ${1} b`"]
    incomplete_code_samples = ["function f() {", "const xs = [1,", "`abc ${", "if (true) {\n  1"]
    invalid_code_samples = ["const x = )", "}", "let y = ];"]

    code_page_something = "Math.max?"

    code_generate_error = 'throw new Error("boom")'

    code_execute_result = [
        {"code": "6 * 7", "result": "42"},
        {"code": '"a" + "b"', "result": '"ab"'},
        {"code": "[1, 2, 3]", "result": "[ 1, 2, 3 ]"},
        {"code": "({ a: 1 })", "result": "{ a: 1 }"},
    ]

    code_display_data = [
        {"code": 'display(html("<b>hi</b>"))', "mime": "text/html"},
        {"code": 'display(md("# title"))', "mime": "text/markdown"},
        {"code": 'display(svg("<svg xmlns=\'http://www.w3.org/2000/svg\'></svg>"))', "mime": "image/svg+xml"},
        {"code": "display(json({ a: [1, 2] }))", "mime": "application/json"},
        {"code": "display(image(new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0])))", "mime": "image/png"},
        {"code": "display(plot([{ type: 'bar', x: [1, 2], y: [3, 4] }]))", "mime": "application/vnd.plotly.v1+json"},
    ]

    code_history_pattern = "6 * 7"
    supported_history_operations = ("tail", "range", "search")

    code_inspect_sample = "Math.max"

    code_clear_output = "clearOutput()"


if __name__ == "__main__":
    unittest.main()
