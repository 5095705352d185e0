"""Data-driven cocotb testbench for ``codesign_top`` inside the harness ``tb_top``.

The harness (sim/tb_top.v.j2, rendered by codesign/sim/harness.py) holds the DUT -- our generated
RTL or a Vitis-HLS-exported RTL directory, same port names -- and the memory model in Verilog: one
AXI slave (sim/tb_axi_mem_port.v) on each of the DUT's masters, ``m_axi_gmem`` and, for a kernel
with W > 1 weight ports, ``m_axi_wgt0`` .. ``m_axi_wgt{W-1}``, all on ONE memory, with a read
latency and one bandwidth budget shared by every master's reads and writes.  This testbench only
drives the clock, the active-low reset, the AXI-Lite ``s_axi_control`` port (AxiLiteMaster) and the
harness's ``tb_*`` controls; memory images go in and out through files (``tb_cmd``).  The
``wgt_addr`` pointer goes into ``wgt`` (0x1c) and every extra weight pointer register ``wgt<p>``
(0x3c + 0xc*(p-1)), as the host does.

Everything it does comes from ``$CODESIGN_COSIM_JOB/job.json``::

    {
      "mem_size": 1048576,
      "regions":  [{"name": "prog", "addr": 0, "file": "prog.bin"}],
      "prog_addr": 0, "wgt_addr": 4096, "act_addr": 65536, "task": 0,
      "outputs":  [{"name": "act", "addr": 65536, "size": 2048}],
      "timeout_cycles": 100000,
      "memory": {"latency_cycles": 50, "bytes_per_cycle": 67.2},
      "runs": [{"name": "t3", "task": 3, "regions": [...], "outputs": [...]}]
    }

``memory`` (optional; default latency 0, unlimited bandwidth): a read burst's first beat comes
``latency_cycles`` after its AR was accepted (at least 1), a write burst's B response as long after
its last W beat; all R and W beats of all masters share ``bytes_per_cycle`` (null: unlimited).

Optional ``"backpressure": true`` makes the memory model randomly stall every AXI channel of every
master (reproducible patterns) to shake out handshake bugs.

Optional ``"record_reads": true`` (or ``CODESIGN_RECORD_READS=1`` in the environment) logs every
accepted AR: each run's result then has ``read_bytes`` and ``reread_bytes`` per region name (bytes
of bus words read at all / read more than once, over all masters), ``read_bytes_by_port`` per master
(``{"gmem": .., "wgt0": .., ...}``, bytes of all beats it read), and
``<job>/out_<run>_reads.json`` maps each top-level region to ``[[offset, nbytes, times_read], ...]``
runs of words.

Top-level ``regions`` are loaded once (over a zeroed memory); each run may load extra ``regions``
and override ``task``, ``prog_addr``/``wgt_addr``/``act_addr``, ``outputs`` and
``timeout_cycles``.  Regions start on a bus word (the beat width) and are loaded as whole words
(the bytes after a region's end in its last word are zeroed).  Optional ``wgt_addrs`` (a list, one
address per weight pointer register: wgt, wgt1, ...) replaces ``wgt_addr`` register by register
(shell tests: it shows that every weight master uses its own register).  Without ``runs`` a single
run uses the top-level values.  Region files are relative to the job directory (or absolute).

Per run the output regions are dumped to ``<job>/out_<run>_<name>.bin`` (``<run>`` = the run's
``name``, else its 0-based index) and ``<job>/result.json`` is (re)written::

    {"simulator": ..., "clock_ns": 10, "memory": {...}, "beat_bytes": 8, "masters": [...],
     "runs": [{"name", "task", "status": "ok"|"timeout"|"skipped", "cycles", "wall_seconds",
               "ctrl_done", "ctrl_after"
               [, "read_bytes", "reread_bytes", "read_bytes_by_port"]}]
     [, "error": "..."]}

``cycles`` counts clock cycles from the completed ap_start write to the done interrupt (or, without
an interrupt port, to the poll that saw ap_done); for a timeout it is the cycle count reached.
``ctrl_done`` is the control register value of the poll that saw ap_done (or the last poll),
``ctrl_after`` a second read right after it (ap_done must be cleared by then: clear-on-read).
While a run goes on, ``<job>/progress.json`` ({"run", "cycles", "wall_seconds"}) is rewritten every
PROGRESS_CYCLES cycles.  A memory model error (a burst across 4 KB, outside the memory, a misplaced
WLAST) fails the test with ``error`` in result.json.  The testbench never compares data: the
Python caller does that bit-exactly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

CLOCK_NS = 10
RESET_CYCLES = 16
POLL_CYCLES = 64            # control-register poll interval while waiting
PROGRESS_CYCLES = 100_000   # progress.json interval during a run
SPEC_FILE = "tb_top.json"   # written by codesign/sim/harness.py next to the build

# s_axi_control register map (Vitis HLS layout, see rtl_templates/README.md)
REG_CTRL = 0x00
REG_GIE = 0x04
REG_IER = 0x08
REG_ISR = 0x0C
REG_PROG = 0x10
REG_WGT = 0x1C
REG_ACT = 0x28
REG_TASK = 0x34
REG_WGT_EXTRA = 0x3C      # wgt<p> (p >= 1) at REG_WGT_EXTRA + REG_WGT_STRIDE * (p - 1)
REG_WGT_STRIDE = 0x0C
AP_START = 0x1
AP_DONE = 0x2

# tb_top's tb_cmd codes and tb_error bits
CMD_LOAD, CMD_DUMP, CMD_LOG_OPEN, CMD_LOG_CLOSE = 1, 2, 3, 4
MODEL_ERRORS = ("a burst crosses a 4 KB boundary", "an access ends outside the memory",
                "WLAST does not match the burst length", "memory image file I/O failed")

# Per-run keys that fall back to the job's top-level value.
RUN_DEFAULT_KEYS = ("task", "prog_addr", "wgt_addr", "act_addr", "outputs",
                    "timeout_cycles", "wgt_addrs")


# --------------------------------------------------------------------------
# job description
# --------------------------------------------------------------------------
def load_job() -> tuple[Path, dict]:
    job_dir = Path(os.environ["CODESIGN_COSIM_JOB"]).resolve()
    return job_dir, json.loads((job_dir / "job.json").read_text())


def resolve_runs(job: dict) -> list[dict]:
    """Expand every run with the job-level defaults it does not override."""
    runs = job.get("runs") or [{}]
    resolved = []
    for index, run in enumerate(runs):
        full = {key: run.get(key, job.get(key)) for key in RUN_DEFAULT_KEYS}
        full["name"] = str(run.get("name", index))
        full["regions"] = run.get("regions", [])
        full["task"] = int(full["task"] or 0)
        full["outputs"] = full["outputs"] or []
        full["timeout_cycles"] = int(full["timeout_cycles"] or 1_000_000)
        resolved.append(full)
    return resolved


def region_bytes(job_dir: Path, region: dict) -> bytes:
    path = Path(region["file"])
    return (path if path.is_absolute() else job_dir / path).read_bytes()


def weight_ports(masters: list[str]) -> list[str]:
    """The DUT's weight masters: wgt0, wgt1, ... while m_axi_wgt<p> exists ([] = all on gmem)."""
    names = []
    while f"wgt{len(names)}" in masters:
        names.append(f"wgt{len(names)}")
    return names


def weight_pointer_regs(ports: list[str]) -> list[int]:
    """Control registers that take the weight blob's address: wgt, then wgt1 .. wgt{W-1}."""
    return [REG_WGT] + [REG_WGT_EXTRA + REG_WGT_STRIDE * (p - 1) for p in range(1, len(ports))]


def bucket_settings(memory: dict, masters: int, beat_bytes: int) -> tuple[int, int]:
    """(tb_rate, tb_cap) in 1/256 bytes: the refill per cycle (0: unlimited) and the bucket depth,
    one cycle of every master moving a beat (or one refill, if larger)."""
    bpc = memory.get("bytes_per_cycle")
    rate = max(1, round(float(bpc) * 256)) if bpc else 0
    return rate, max(rate, masters * beat_bytes * 256)


# --------------------------------------------------------------------------
# memory images: whole bus words, big-endian in the files ($fread / %h order)
# --------------------------------------------------------------------------
def to_file_words(data: bytes, lanes: int) -> bytes:
    padded = data + bytes(-len(data) % lanes)
    return np.frombuffer(padded, np.uint8).reshape(-1, lanes)[:, ::-1].tobytes()


def from_hex_words(text: str, lanes: int) -> bytes:
    try:
        raw = bytes.fromhex("".join(text.split()))
    except ValueError as exc:   # Icarus prints never-written (X) words as x
        raise AssertionError("memory dump holds undefined (X) words") from exc
    return np.frombuffer(raw, np.uint8).reshape(-1, lanes)[:, ::-1].tobytes()


def word_span(addr: int, size: int, lanes: int) -> tuple[int, int]:
    """(first word, words) covering bytes [addr, addr + size)."""
    first = addr // lanes
    return first, max(0, -(-(addr + size) // lanes) - first)


# --------------------------------------------------------------------------
# read accounting from the AR log ("<master> <address> <beats>" per accepted AR)
# --------------------------------------------------------------------------
def parse_read_log(text: str, lanes: int, mem_words: int, masters: list[str]) -> tuple[np.ndarray, dict]:
    """(times every bus word was read, bytes read per master)."""
    rows = np.array(text.split(), dtype=np.int64).reshape(-1, 3)
    first = rows[:, 1] // lanes
    diff = np.zeros(mem_words + 1, np.int64)
    np.add.at(diff, np.clip(first, 0, mem_words), 1)
    np.add.at(diff, np.clip(first + rows[:, 2], 0, mem_words), -1)
    beats = np.bincount(rows[:, 0], weights=rows[:, 2], minlength=len(masters))
    return np.cumsum(diff[:-1]), {name: int(lanes * beats[i]) for i, name in enumerate(masters)}


def region_words(start: int, size: int, lanes: int) -> slice:
    """The bus words whose address (of their first byte) lies in [start, start + size)."""
    return slice(-(-start // lanes), -(-(start + size) // lanes))


def read_totals(counts: np.ndarray, lanes: int, spans) -> tuple[dict, dict]:
    """(bytes read, bytes read more than once) per region name; a word counts for its first region."""
    read, reread = {}, {}
    free = np.ones(counts.size, bool)
    for name, start, size in spans:
        words = region_words(start, size, lanes)
        mine = counts[words] * free[words]
        free[words] = False
        read[name] = read.get(name, 0) + lanes * int(mine.sum())
        reread[name] = reread.get(name, 0) + lanes * int((mine > 1).sum())
    return read, reread


def read_map(counts: np.ndarray, lanes: int, start: int, size: int) -> list[list[int]]:
    """[[offset, nbytes, times_read], ...] over the words of one region that were read."""
    words = region_words(start, size, lanes)
    times = counts[words]
    hit = np.nonzero(times)[0]
    if not hit.size:
        return []
    cut = np.nonzero((np.diff(hit) != 1) | (np.diff(times[hit]) != 0))[0] + 1
    first = (words.start + hit) * lanes - start
    return [[int(first[a]), int(b - a) * lanes, int(times[hit[a]])]
            for a, b in zip(np.r_[0, cut], np.r_[cut, hit.size])]


def region_spans(job_dir: Path, regions: list[dict]) -> list[tuple[str, int, int]]:
    return [(r["name"], int(r["addr"]), len(region_bytes(job_dir, r))) for r in regions]


# --------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------
class Harness:
    def __init__(self, dut, job: dict, spec: dict):
        self.dut = dut
        self.lanes = int(spec["beat_bytes"])
        self.masters = list(spec["masters"])
        self.mem_words = int(spec["mem_words"])
        self.mem_bytes = int(job["mem_size"])
        if self.mem_bytes > self.mem_words * self.lanes:
            raise AssertionError(f"mem_size {self.mem_bytes} exceeds the harness memory "
                                 f"({self.mem_words} words): the build is stale")
        self.wgt_ports = weight_ports(self.masters)
        self.memory = dict(job.get("memory") or {})
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"),
                                  dut.ap_clk, dut.ap_rst_n, reset_active_level=False)
        # Vitis and our RTL both have it; polling alone still works without.
        self.irq = getattr(dut, "interrupt", None)
        self.files = Path.cwd()   # the simulator's working directory: tb_top opens its files there

    def configure(self, backpressure: bool) -> None:
        rate, cap = bucket_settings(self.memory, len(self.masters), self.lanes)
        self.dut.ap_rst_n.value = 0   # from time 0: the AXI-Lite model samples it on every clock
        self.dut.tb_cmd.value = 0
        self.dut.tb_latency.value = int(self.memory.get("latency_cycles") or 0)
        self.dut.tb_rate.value = rate
        self.dut.tb_cap.value = cap
        self.dut.tb_mem_bytes.value = self.mem_bytes
        self.dut.tb_backpressure.value = int(bool(backpressure))

    async def reset(self) -> None:
        """Hold reset (asserted since configure) for RESET_CYCLES, then enable the done interrupt."""
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, RESET_CYCLES)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)
        # Done interrupt gives an exact end timestamp without per-cycle polling.
        await self.write_reg(REG_GIE, 1)
        await self.write_reg(REG_IER, 1)

    async def command(self, code: int) -> None:
        """One tb_cmd at the next rising edge; its file work is done by the falling edge."""
        self.dut.tb_cmd.value = code
        await RisingEdge(self.dut.ap_clk)
        await FallingEdge(self.dut.ap_clk)
        self.dut.tb_cmd.value = 0
        self.check()

    def check(self) -> None:
        bits = int(self.dut.tb_error.value)
        if bits:
            raise AssertionError("memory model: " + "; ".join(m for i, m in enumerate(MODEL_ERRORS) if bits >> i & 1))

    async def load(self, job_dir: Path, regions: list[dict], zero_fill: bool = False) -> None:
        """Regions into memory (zero_fill: over an all-zero memory of mem_size bytes)."""
        spans, blobs = [], []
        if zero_fill:
            image = bytearray(self.mem_bytes + (-self.mem_bytes % self.lanes))
            for region in regions:
                data, addr = region_bytes(job_dir, region), int(region["addr"])
                image[addr: addr + len(data)] = data
            spans, blobs = [(0, len(image) // self.lanes)], [to_file_words(bytes(image), self.lanes)]
        else:
            for region in regions:
                addr = int(region["addr"])
                if addr % self.lanes:
                    raise AssertionError(f"region {region['name']} at {addr:#x} does not start on a "
                                         f"{self.lanes}-byte bus word")
                data = to_file_words(region_bytes(job_dir, region), self.lanes)
                spans.append((addr // self.lanes, len(data) // self.lanes))
                blobs.append(data)
        if not spans:
            return
        (self.files / "tb_load.txt").write_text("".join(f"{w} {n}\n" for w, n in spans))
        (self.files / "tb_load.bin").write_bytes(b"".join(blobs))
        await self.command(CMD_LOAD)
        (self.files / "tb_load.bin").unlink()   # a copy of the weights: not worth keeping

    async def dump_outputs(self, job_dir: Path, run_name: str, outputs: list[dict]) -> None:
        if not outputs:
            return
        spans = [word_span(int(o["addr"]), int(o["size"]), self.lanes) for o in outputs]
        (self.files / "tb_dump.txt").write_text("".join(f"{w} {n}\n" for w, n in spans))
        await self.command(CMD_DUMP)
        words = from_hex_words((self.files / "tb_dump.hex").read_text(), self.lanes)
        (self.files / "tb_dump.hex").unlink()
        at = 0
        for out, (first, n) in zip(outputs, spans):
            skip = int(out["addr"]) - first * self.lanes
            data = words[at + skip: at + skip + int(out["size"])]
            (job_dir / f"out_{run_name}_{out['name']}.bin").write_bytes(data)
            at += n * self.lanes

    async def write_reg(self, addr: int, value: int) -> None:
        await self.axil.write_dword(addr, value & 0xFFFFFFFF)

    async def read_reg(self, addr: int) -> int:
        return await self.axil.read_dword(addr)

    async def write_pointer(self, addr: int, value: int) -> None:
        await self.write_reg(addr, value)
        await self.write_reg(addr + 4, value >> 32)

    async def start(self, run: dict) -> float:
        """Program arguments, set ap_start; return the start time in ns."""
        await self.write_pointer(REG_PROG, int(run["prog_addr"] or 0))
        addrs = run.get("wgt_addrs") or []
        for p, reg in enumerate(weight_pointer_regs(self.wgt_ports)):
            await self.write_pointer(reg, int(addrs[p] if p < len(addrs) else run["wgt_addr"] or 0))
        await self.write_pointer(REG_ACT, int(run["act_addr"] or 0))
        await self.write_reg(REG_TASK, run["task"])
        await self.write_reg(REG_CTRL, AP_START)
        return get_sim_time("ns")

    async def wait_done(self, t_start: float, timeout_cycles: int, progress) -> tuple[str, int, int]:
        """Wait for ap_done (interrupt first, then confirm by polling); `progress(cycles)` every
        PROGRESS_CYCLES.  Returns (status, cycles, control register value that showed done)."""
        deadline = t_start + timeout_cycles * CLOCK_NS
        t_done = None
        if self.irq is not None and not int(self.irq.value):
            while not int(self.irq.value) and get_sim_time("ns") < deadline:
                step = min(PROGRESS_CYCLES * CLOCK_NS, deadline - get_sim_time("ns"))
                await First(RisingEdge(self.irq), Timer(step, "ns"))
                progress(cycles_between(t_start, get_sim_time("ns")))
            if int(self.irq.value):
                t_done = get_sim_time("ns")
        while True:
            ctrl = await self.read_reg(REG_CTRL)   # also clears COR ap_done
            now = get_sim_time("ns")
            if ctrl & AP_DONE:
                end = t_done if t_done is not None else now
                return "ok", cycles_between(t_start, end), ctrl
            if now >= deadline:
                return "timeout", cycles_between(t_start, now), ctrl
            await Timer(POLL_CYCLES * CLOCK_NS, "ns")

    async def clear_interrupt(self) -> None:
        isr = await self.read_reg(REG_ISR)
        if isr:
            await self.write_reg(REG_ISR, isr)    # toggle-on-write clears

    async def read_counts(self) -> tuple[np.ndarray, dict]:
        await self.command(CMD_LOG_CLOSE)
        return parse_read_log((self.files / "tb_reads.txt").read_text(), self.lanes, self.mem_words, self.masters)


def cycles_between(t_start_ns: float, t_end_ns: float) -> int:
    return int(round((t_end_ns - t_start_ns) / CLOCK_NS))


# --------------------------------------------------------------------------
# test
# --------------------------------------------------------------------------
class Results:
    """result.json, rewritten after every run so partial results survive a crash."""

    def __init__(self, job_dir: Path, h: Harness):
        self.path = job_dir / "result.json"
        self.head = {"simulator": cocotb.SIM_NAME, "clock_ns": CLOCK_NS, "memory": h.memory,
                     "beat_bytes": h.lanes, "masters": h.masters}
        self.runs: list[dict] = []

    def write(self, error: str | None = None) -> None:
        payload = {**self.head, "runs": self.runs, **({"error": error} if error else {})}
        self.path.write_text(json.dumps(payload, indent=2))


def write_progress(job_dir: Path, run: str, cycles: int, t0: float) -> None:
    payload = {"run": run, "cycles": cycles, "wall_seconds": round(time.monotonic() - t0, 3)}
    (job_dir / "progress.json").write_text(json.dumps(payload))


async def execute_run(h: Harness, job_dir: Path, run: dict, record: bool, shared: list) -> dict:
    await h.load(job_dir, run["regions"])
    if record:
        await h.command(CMD_LOG_OPEN)   # loading and register setup are not the kernel's reads
    t0 = time.monotonic()
    t_start = await h.start(run)
    status, cycles, ctrl_done = await h.wait_done(
        t_start, run["timeout_cycles"], lambda c: write_progress(job_dir, run["name"], c, t0))
    wall = time.monotonic() - t0
    # Second read shows the clear-on-read of ap_done (register-map check).
    ctrl_after = await h.read_reg(REG_CTRL)
    await h.dump_outputs(job_dir, run["name"], run["outputs"])
    await h.clear_interrupt()
    h.dut._log.info("run %s task=%d: %s after %d cycles (%.1f s)", run["name"], run["task"], status, cycles, wall)
    result = {"name": run["name"], "task": run["task"], "status": status, "cycles": cycles,
              "wall_seconds": round(wall, 3), "ctrl_done": ctrl_done, "ctrl_after": ctrl_after}
    if record:
        result.update(record_reads(await h.read_counts(), h.lanes, job_dir, run, shared))
    h.check()
    return result


def record_reads(counted: tuple[np.ndarray, dict], lanes: int, job_dir: Path, run: dict, shared: list) -> dict:
    """Read totals of the run for result.json; per-word maps of the shared regions to a file."""
    counts, by_port = counted
    spans = shared + region_spans(job_dir, run["regions"])
    read, reread = read_totals(counts, lanes, spans)
    maps = {name: read_map(counts, lanes, start, size) for name, start, size in shared}
    (job_dir / f"out_{run['name']}_reads.json").write_text(json.dumps(maps))
    return {"read_bytes": read, "reread_bytes": reread, "read_bytes_by_port": by_port}


@cocotb.test()
async def run_job(dut):
    """Execute every run of the job; record status and cycles, never compare."""
    job_dir, job = load_job()
    runs = resolve_runs(job)
    h = Harness(dut, job, json.loads((Path.cwd() / SPEC_FILE).read_text()))
    results = Results(job_dir, h)
    record = bool(job.get("record_reads")) or os.environ.get("CODESIGN_RECORD_READS") == "1"
    shared = region_spans(job_dir, job.get("regions", []))
    h.configure(bool(job.get("backpressure")))
    Clock(dut.ap_clk, CLOCK_NS, unit="ns").start()
    try:
        await h.load(job_dir, job.get("regions", []), zero_fill=True)
        await h.reset()
        for run in runs:
            if results.runs and results.runs[-1]["status"] != "ok":
                # A hung core leaves the bus in an unknown state: do not trust
                # anything that would run after it.
                results.runs.append({"name": run["name"], "task": run["task"],
                                     "status": "skipped", "cycles": 0})
                continue
            results.runs.append(await execute_run(h, job_dir, run, record, shared))
            results.write()
    except AssertionError as exc:
        results.write(error=str(exc))
        raise
    results.write()
