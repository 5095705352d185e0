"""Data-driven cocotb testbench for ``codesign_top``.

Drives either our generated RTL or a Vitis-HLS-exported RTL directory (same
port names): clock on ap_clk, active-low reset on ap_rst_n, an AxiLiteMaster on
``s_axi_control`` and one AxiRam per AXI master, all sharing ONE memory: the
``m_axi_gmem`` master and, for a kernel with W > 1 weight ports, the weight
masters ``m_axi_wgt0`` .. ``m_axi_wgt{W-1}`` (discovered from the DUT's ports:
W = the number of consecutive ``m_axi_wgt<p>`` masters, none: W = 1).  The
``wgt_addr`` pointer goes into ``wgt`` (0x1c) and every extra weight pointer
register ``wgt<p>`` (0x3c + 0xc*(p-1)), as the host does.

Everything it does comes from ``$CODESIGN_COSIM_JOB/job.json``::

    {
      "mem_size": 1048576,
      "regions":  [{"name": "prog", "addr": 0, "file": "prog.bin"}],
      "prog_addr": 0, "wgt_addr": 4096, "act_addr": 65536, "task": 0,
      "outputs":  [{"name": "act", "addr": 65536, "size": 2048}],
      "timeout_cycles": 100000,
      "runs": [{"name": "t3", "task": 3, "regions": [...], "outputs": [...]}]
    }

Optional ``"backpressure": true`` makes the memory model randomly stall
every AXI channel of every master (seeded, reproducible) to shake out
handshake bugs.

Optional ``"record_reads": true`` (or ``CODESIGN_RECORD_READS=1`` in the
environment) counts the AXI read beats of every master: each run's result then
has ``read_bytes`` and ``reread_bytes`` per region name (bytes of bus words read
at all / read more than once, over all masters), ``read_bytes_by_port`` per
master (``{"gmem": .., "wgt0": .., ...}``, bytes of all beats it returned), and
``<job>/out_<run>_reads.json`` maps each top-level region to
``[[offset, nbytes, times_read], ...]`` runs of words.

Top-level ``regions`` are loaded once; each run may load extra ``regions`` and
override ``task``, ``prog_addr``/``wgt_addr``/``act_addr``, ``outputs`` and
``timeout_cycles``.  Optional ``wgt_addrs`` (a list, one address per weight
pointer register: wgt, wgt1, ...) replaces ``wgt_addr`` register by register
(shell tests: it shows that every weight master uses its own register).
Without ``runs`` a single run uses the top-level values.  Region files are
relative to the job directory (or absolute).

Per run the output regions are dumped to ``<job>/out_<run>_<name>.bin``
(``<run>`` = the run's ``name``, else its 0-based index) and
``<job>/result.json`` is (re)written::

    {"simulator": ..., "clock_ns": 10,
     "runs": [{"name", "task", "status": "ok"|"timeout"|"skipped", "cycles",
               "ctrl_done", "ctrl_after"
               [, "read_bytes", "reread_bytes", "read_bytes_by_port"]}]}

``cycles`` counts clock cycles from the completed ap_start write to the done
interrupt (or, without an interrupt port, to the poll that saw ap_done); for a
timeout it is the cycle count reached.  ``ctrl_done`` is the control register
value of the poll that saw ap_done (or the last poll), ``ctrl_after`` a second
read right after it (ap_done must be cleared by then: clear-on-read).  The testbench never compares data:
the Python caller does that bit-exactly.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

CLOCK_NS = 10
RESET_CYCLES = 16
POLL_CYCLES = 64          # control-register poll interval while waiting
STALL_PROBABILITY = 0.3   # per-cycle pause chance in backpressure mode

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


# --------------------------------------------------------------------------
# DUT harness
# --------------------------------------------------------------------------
def axi_bus(dut, prefix: str) -> AxiBus:
    """AxiBus for one m_axi master, tolerating Vitis HLS's AXI3-style 2-bit LOCK.

    cocotbext-axi insists on 1-bit AxLOCK; the RAM model ignores LOCK anyway,
    so a wider one is simply left unconnected.
    """
    bus = AxiBus.from_prefix(dut, prefix)
    for channel, name in ((bus.write.aw, "awlock"), (bus.read.ar, "arlock")):
        handle = getattr(channel, name, None)
        if handle is not None and len(handle) != 1:
            delattr(channel, name)
            channel._signals.pop(name, None)
    return bus


def weight_ports(dut) -> list[str]:
    """Names of the DUT's weight masters: wgt0, wgt1, ... while m_axi_wgt<p> exists ([] = all on gmem)."""
    names = []
    while hasattr(dut, f"m_axi_wgt{len(names)}_ARVALID"):
        names.append(f"wgt{len(names)}")
    return names


def weight_pointer_regs(ports: list[str]) -> list[int]:
    """Control registers that take the weight blob's address: wgt, then wgt1 .. wgt{W-1}."""
    return [REG_WGT] + [REG_WGT_EXTRA + REG_WGT_STRIDE * (p - 1) for p in range(1, len(ports))]


def random_pauses(seed: int):
    rng = random.Random(seed)
    while True:
        yield rng.random() < STALL_PROBABILITY


def enable_backpressure(ram: AxiRam, index: int = 0) -> None:
    """Randomly drop AW/W/AR READY and R/B VALID on the memory side (`index`: the
    master's position, so every master gets its own stall pattern)."""
    channels = (ram.write_if.aw_channel, ram.write_if.w_channel,
                ram.write_if.b_channel, ram.read_if.ar_channel,
                ram.read_if.r_channel)
    for seed, channel in enumerate(channels):
        channel.set_pause_generator(random_pauses(seed + len(channels) * index))


def quiet_bus_models(dut) -> None:
    """The AXI models log every burst at INFO; that floods logs and costs time."""
    prefix = f"cocotb.{dut._name}."
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(prefix):
            logging.getLogger(name).setLevel(logging.WARNING)


class ReadRecorder:
    """Counts AXI read beats per bus word (over every master) and per master; installed only when
    asked for (it costs a call per beat)."""

    def __init__(self, rams: dict[str, AxiRam]):
        self.lanes = next(iter(rams.values())).read_if.byte_lanes
        self.words: collections.Counter = collections.Counter()
        self.beats: collections.Counter = collections.Counter({name: 0 for name in rams})
        for name, ram in rams.items():
            ram.read_if._read = self._counted(name, ram.read_if._read)

    def _counted(self, name: str, inner):
        async def counted(address, length):
            self.words[address] += 1
            self.beats[name] += 1
            return await inner(address, length)
        return counted

    def take(self) -> tuple[collections.Counter, dict[str, int]]:
        """(beats per word address, beats per master) since the last take."""
        words, self.words = self.words, collections.Counter()
        beats = dict(self.beats)
        self.beats = collections.Counter({name: 0 for name in beats})
        return words, beats


def region_spans(job_dir: Path, regions: list[dict]) -> list[tuple[str, int, int]]:
    return [(r["name"], int(r["addr"]), len(region_bytes(job_dir, r))) for r in regions]


def read_totals(words: collections.Counter, lanes: int, spans) -> tuple[dict, dict]:
    """(bytes read, bytes read more than once) per region name."""
    read = {name: 0 for name, _, _ in spans}
    reread = dict(read)
    for addr, times in words.items():
        for name, start, size in spans:
            if start <= addr < start + size:
                read[name] += lanes * times
                reread[name] += lanes * (times > 1)
                break
    return read, reread


def read_map(words: collections.Counter, lanes: int, start: int, size: int) -> list[list[int]]:
    """[[offset, nbytes, times_read], ...] over the words of one region that were read."""
    runs: list[list[int]] = []
    for addr in sorted(a for a in words if start <= a < start + size):
        offset, times = addr - start, words[addr]
        if runs and runs[-1][0] + runs[-1][1] == offset and runs[-1][2] == times:
            runs[-1][1] += lanes
        else:
            runs.append([offset, lanes, times])
    return runs


class Harness:
    def __init__(self, dut, mem_size: int):
        self.dut = dut
        self.ram = AxiRam(axi_bus(dut, "m_axi_gmem"), dut.ap_clk, dut.ap_rst_n,
                          reset_active_level=False, size=mem_size)
        # Weight masters see the same memory (the host passes one blob to every port).
        self.wgt_ports = weight_ports(dut)
        self.rams = {"gmem": self.ram}
        for name in self.wgt_ports:
            self.rams[name] = AxiRam(axi_bus(dut, f"m_axi_{name}"), dut.ap_clk, dut.ap_rst_n,
                                     reset_active_level=False, size=mem_size, mem=self.ram.mem)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"),
                                  dut.ap_clk, dut.ap_rst_n,
                                  reset_active_level=False)
        # Vitis and our RTL both have it; polling alone still works without.
        self.irq = getattr(dut, "interrupt", None)
        quiet_bus_models(dut)

    async def reset(self) -> None:
        Clock(self.dut.ap_clk, CLOCK_NS, unit="ns").start()
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, RESET_CYCLES)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)
        # Done interrupt gives an exact end timestamp without per-cycle polling.
        await self.write_reg(REG_GIE, 1)
        await self.write_reg(REG_IER, 1)

    async def write_reg(self, addr: int, value: int) -> None:
        await self.axil.write_dword(addr, value & 0xFFFFFFFF)

    async def read_reg(self, addr: int) -> int:
        return await self.axil.read_dword(addr)

    async def write_pointer(self, addr: int, value: int) -> None:
        await self.write_reg(addr, value)
        await self.write_reg(addr + 4, value >> 32)

    def load_regions(self, job_dir: Path, regions: list[dict]) -> None:
        for region in regions:
            self.ram.write(int(region["addr"]), region_bytes(job_dir, region))

    def dump_outputs(self, job_dir: Path, run_name: str, outputs: list[dict]) -> None:
        for out in outputs:
            data = self.ram.read(int(out["addr"]), int(out["size"]))
            (job_dir / f"out_{run_name}_{out['name']}.bin").write_bytes(data)

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

    async def wait_done(self, t_start: float, timeout_cycles: int) -> tuple[str, int, int]:
        """Wait for ap_done (interrupt first, then confirm by polling).

        Returns (status, cycles, control register value that showed done).
        """
        deadline = t_start + timeout_cycles * CLOCK_NS
        t_done = None
        if self.irq is not None and not int(self.irq.value):
            await First(RisingEdge(self.irq), Timer(timeout_cycles * CLOCK_NS, "ns"))
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


def cycles_between(t_start_ns: float, t_end_ns: float) -> int:
    return int(round((t_end_ns - t_start_ns) / CLOCK_NS))


# --------------------------------------------------------------------------
# test
# --------------------------------------------------------------------------
def write_results(job_dir: Path, results: list[dict]) -> None:
    payload = {"simulator": cocotb.SIM_NAME, "clock_ns": CLOCK_NS, "runs": results}
    (job_dir / "result.json").write_text(json.dumps(payload, indent=2))


async def execute_run(h: Harness, job_dir: Path, run: dict, recorder: ReadRecorder | None = None,
                      shared: list | None = None) -> dict:
    h.load_regions(job_dir, run["regions"])
    if recorder is not None:
        recorder.take()   # loading and register setup are not the kernel's reads
    t_start = await h.start(run)
    status, cycles, ctrl_done = await h.wait_done(t_start, run["timeout_cycles"])
    # Second read shows the clear-on-read of ap_done (register-map check).
    ctrl_after = await h.read_reg(REG_CTRL)
    h.dump_outputs(job_dir, run["name"], run["outputs"])
    await h.clear_interrupt()
    h.dut._log.info("run %s task=%d: %s after %d cycles",
                    run["name"], run["task"], status, cycles)
    result = {"name": run["name"], "task": run["task"], "status": status,
              "cycles": cycles, "ctrl_done": ctrl_done, "ctrl_after": ctrl_after}
    if recorder is not None:
        result.update(record_reads(recorder, job_dir, run, shared))
    return result


def record_reads(recorder: ReadRecorder, job_dir: Path, run: dict, shared: list) -> dict:
    """Read totals of the run for result.json; per-word maps of the shared regions to a file."""
    words, beats = recorder.take()
    spans = shared + region_spans(job_dir, run["regions"])
    read, reread = read_totals(words, recorder.lanes, spans)
    maps = {name: read_map(words, recorder.lanes, start, size) for name, start, size in shared}
    (job_dir / f"out_{run['name']}_reads.json").write_text(json.dumps(maps))
    by_port = {name: recorder.lanes * n for name, n in beats.items()}
    return {"read_bytes": read, "reread_bytes": reread, "read_bytes_by_port": by_port}


@cocotb.test()
async def run_job(dut):
    """Execute every run of the job; record status and cycles, never compare."""
    job_dir, job = load_job()
    runs = resolve_runs(job)
    h = Harness(dut, int(job["mem_size"]))
    if job.get("backpressure"):
        for index, ram in enumerate(h.rams.values()):
            enable_backpressure(ram, index)
    h.load_regions(job_dir, job.get("regions", []))
    recorder = None
    if job.get("record_reads") or os.environ.get("CODESIGN_RECORD_READS") == "1":
        recorder = ReadRecorder(h.rams)
    shared = region_spans(job_dir, job.get("regions", []))
    await h.reset()

    results: list[dict] = []
    for run in runs:
        if results and results[-1]["status"] != "ok":
            # A hung core leaves the bus in an unknown state: do not trust
            # anything that would run after it.
            results.append({"name": run["name"], "task": run["task"],
                            "status": "skipped", "cycles": 0})
            continue
        results.append(await execute_run(h, job_dir, run, recorder, shared))
        write_results(job_dir, results)   # partial results survive a crash
    write_results(job_dir, results)
