"""The MAC array's DSP packing (firmware/ops/dsp.h): two products that share the activation from one
27x18 multiply, B27 = w_lo + w_hi * 2^18, split back with the sign correction. Checked exhaustively
in C++ (the header as generated, compiled by the test) for every int8 triple (a, w_lo, w_hi), and for
every 9-bit triple (the widest packable case, uarch.packable: wbits <= 9, wbits + abits <= 18); one
bit more and the low product overflows its 18 bits (the rule is tight)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from codesign.emit.tcl import _template_environment
from codesign.schedule.uarch import packable

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

# Every a in [-2^(abits-1), 2^(abits-1)) (or only a_only), w_lo and w_hi in the wbits range: one
# multiply per pair, both products and their sums onto running accumulators checked exactly.
CHECK = r"""
#include <cstdio>
#include <cstdlib>
#include "dsp.h"

int main(int argc, char **argv) {
    const int abits = std::atoi(argv[1]), wbits = std::atoi(argv[2]);
    const bool one_a = argc > 3;
    const long a_lo = one_a ? std::atol(argv[3]) : -(1L << (abits - 1)), a_hi = one_a ? a_lo + 1 : 1L << (abits - 1);
    const long w_lo = -(1L << (wbits - 1)), w_hi = 1L << (wbits - 1);
    long checked = 0, bad = 0;
    int64_t run0 = 0, run1 = 0;  // running sums in 64-bit accumulators, as an ACC_W-bit register holds them
    for (long a = a_lo; a < a_hi; ++a) {
        for (long x = w_lo; x < w_hi; ++x) {
            for (long y = w_lo; y < w_hi; ++y) {
                int64_t acc0 = 0, acc1 = 0;
                packed_mac((int32_t)a, (int32_t)x, (int32_t)y, acc0, acc1);
                const int64_t s0 = run0, s1 = run1;
                dsp_accumulate(dsp_mul((int32_t)a, pack_b27((int32_t)x, (int32_t)y)), true, false, false, run0, run1);
                if (acc0 != a * x || acc1 != a * y || run0 != s0 + a * x || run1 != s1 + a * y) {
                    if (bad++ < 3) std::printf("BAD a=%ld w_lo=%ld w_hi=%ld: %lld %lld\n", a, x, y, (long long)acc0, (long long)acc1);
                }
                ++checked;
            }
        }
    }
    std::printf("CHECKED %ld BAD %ld\n", checked, bad);
    return 0;
}
"""


@pytest.fixture(scope="module")
def checker(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dsp")
    (work / "dsp.h").write_text(_template_environment().get_template("firmware/ops/dsp.h.j2").render())
    (work / "check.cpp").write_text(CHECK)
    exe = work / "check"
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-o", str(exe), str(work / "check.cpp")],
                   check=True, capture_output=True, timeout=120)
    return exe


def _run(exe: Path, *args) -> tuple[int, int]:
    out = subprocess.run([str(exe), *map(str, args)], check=True, capture_output=True, text=True, timeout=120).stdout
    checked, bad = out.strip().splitlines()[-1].split()[1::2]
    return int(checked), int(bad)


@needs_gxx
def test_every_int8_triple_packs_exactly(checker):
    assert packable(8, 8)
    assert _run(checker, 8, 8) == (1 << 24, 0)


@needs_gxx
def test_every_9_bit_triple_packs_exactly(checker):
    assert packable(9, 9) and not packable(10, 9) and not packable(9, 10)
    assert _run(checker, 9, 9) == (1 << 27, 0)


@needs_gxx
def test_one_bit_more_breaks_the_packing(checker):
    """a = -512 (10 bits) times w_lo = -256: 2^17 does not fit the 18-bit low product."""
    checked, bad = _run(checker, 10, 9, -512)
    assert checked == 1 << 18 and bad > 0
