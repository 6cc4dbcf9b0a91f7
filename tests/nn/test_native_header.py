"""csrc/decode.h is the kernels' interface, held once: nn/native.py's format codes, the ACT8
flag and every entry point's ctypes signature must say what the header says (a C prototype
and a Python table that drift apart pass wrong pointers silently)."""

from __future__ import annotations

import re

from scratchlm.nn import native

HEADER = native.CSRC / "decode.h"


def header_formats() -> dict[str, int]:
    text = HEADER.read_text()
    body = re.search(r"enum\s*\{([^}]*)\}", text).group(1)
    return {name: int(value) for name, value in re.findall(r"FMT_(\w+)\s*=\s*(\d+)", body)}


def header_prototypes() -> dict[str, tuple[str, list[str]]]:
    """name -> (return type, argument types as ctypes would take them: P, W, I64, F32)"""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    out = {}
    for ret, name, args in re.findall(r"^(void|int64_t)\s+(\w+)\(([^)]*)\);", text, re.M):
        kinds = []
        for arg in (a.strip() for a in args.split(",")):
            if arg == "void":
                continue
            if "Weight *" in arg:
                kinds.append("W")
            elif "*" in arg:
                kinds.append("P")
            elif arg.startswith("int64_t"):
                kinds.append("I64")
            elif arg.startswith("float"):
                kinds.append("F32")
            else:
                raise AssertionError(f"decode.h: an argument type the test does not know: {arg}")
        out[name] = (ret, kinds)
    return out


def test_format_codes_are_the_headers():
    spelled = {"F32": "f32", "INT8": "int8", "F32_PANELS": "f32_panels"}
    want = {spelled.get(k, k): v for k, v in header_formats().items()}
    assert want == native.FORMATS
    assert int(re.search(r"#define FMT_ACT8 (\d+)", HEADER.read_text()).group(1)) == native.ACT8
    assert native.ACT8 > max(native.FORMATS.values())  # a flag, above every code


def test_signatures_are_the_headers():
    kinds = {native.P: "P", native.W: "W", native.I64: "I64", native.F32: "F32"}
    protos = header_prototypes()
    assert set(protos) == set(native.SIGNATURES) | {"set_threads"}  # set_threads: parallel.h's
    for name, argtypes in native.SIGNATURES.items():
        ret, args = protos[name]
        assert [kinds[t] for t in argtypes] == args, name
        assert (native.RESULTS.get(name) is native.I64) == (ret == "int64_t"), name


def test_the_header_is_what_the_kernels_compile():
    """decode.c includes decode.h before its definitions, so a prototype that differs from its
    definition does not build; each part it includes is a file of csrc/ (which the build key
    hashes, tests/nn/test_quant.py)."""
    source = (native.CSRC / "decode.c").read_text()
    assert '#include "decode.h"' in source
    for part in re.findall(r'#include "(\w+\.h)"', source):
        assert (native.CSRC / part).is_file(), part
