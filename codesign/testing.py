"""Small designs for tests and development: a random-weight model, quantised and compiled."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .emit.data import Vector, write_data_dir
from .sim.cosim import LIMIT_ARRAY
from .model.config import ModelConfig
from .model.m3vit import M3ViT
from .quant.qmodel import QuantModel
from .quant.quantize import quantize_input, quantize_model
from .schedule.isa import execute
from .schedule.program import Program, compile_program, load_input


# The uarch core's smallest array at a 128-bit bus (Q a multiple of 2*EPB): tests that cosim a
# generated project build this twin (`--rtl-array 2x32`), not the board's array (the default
# model's 17x128 on zcu104 takes minutes to build in Verilator).
RTL_TWIN = LIMIT_ARRAY
RTL_TWIN_ARG = f"{RTL_TWIN[0]}x{RTL_TWIN[1]}"


@dataclass
class TestDesign:
    model: M3ViT
    qm: QuantModel
    prog: Program
    vectors: list[Vector]


def make_test_design(cfg: ModelConfig | None = None, seed: int = 0, images: int = 1,
                     wbits: int = 8, abits: int = 8, precision=None) -> TestDesign:
    cfg = cfg or ModelConfig()
    torch.manual_seed(seed)
    model = M3ViT(cfg).eval()
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((8, cfg.in_chans, *cfg.image_hw)).astype(np.float32)
    qm = quantize_model(model, calib, wbits=wbits, abits=abits, precision=precision)
    xq = quantize_input(calib[:images], qm)
    vectors = [Vector(f"img{i}_task{t}", t, xq[i]) for i in range(images) for t in range(cfg.num_tasks)]
    return TestDesign(model, qm, compile_program(qm), vectors)


def run_program(design: TestDesign, vec: Vector) -> bytearray:
    """The act image after the ISA interpreter ran `design`'s program on one vector."""
    prog = design.prog
    act = bytearray(prog.act_bytes)
    load_input(prog, act, vec.x_q)
    execute(prog.code, prog.wgt, act, vec.task, prog.abits, prog.elem_bytes)
    return act


def write_test_data(data_dir: Path, design: TestDesign) -> Path:
    return write_data_dir(data_dir, design.prog, design.qm, design.vectors)


ACCEL_BASE = 0xA000_0000  # s_axi_control of the accelerator in the host device's overlay
REG_CTRL, AP_START, AP_DONE, AP_IDLE = 0x00, 0x1, 0x2, 0x4


def pynq_host_device(accelerator, vlnv: str = "xilinx.com:hls:codesign_top:1.0"):
    """A pynq Device for a host without a board: the layer under the real pynq.Overlay,
    pynq.allocate and pynq.MMIO (the package's own classes run on top of it).

    - The overlay (any existing .bit file) holds one IP of type `vlnv` at ACCEL_BASE.
    - Buffers are real pynq.buffer.PynqBuffer objects, not cache-coherent: the device has its own
      copy of each (64-byte aligned, like CMA), which flush() writes from the host view and
      invalidate() reads back, so a driver that skips either sees stale data, as on a board.
    - Registers are 32-bit (REGISTER_RW); writing AP_START to REG_CTRL calls
      `accelerator(device, regs)`, which works on device memory (`device.memory(address)`, a
      uint8 array) and returns; the device then reports idle and done (done clears on read).
    """
    import ctypes
    import types

    from pynq.buffer import PynqBuffer
    from pynq.pl_server.device import Device

    class HostDevice(Device):  # no _probe_: never found by pynq's own device search
        def __init__(self):
            super().__init__("codesign-host")
            self.capabilities = {"REGISTER_RW": True}
            self.regs = {ACCEL_BASE + REG_CTRL: AP_IDLE}
            self.device_memory: dict[int, np.ndarray] = {}  # physical address -> device copy
            self.starts = 0

        def get_bitfile_metadata(self, bitfile_name):
            ip = {"codesign_top_0": {"type": vlnv, "phys_addr": ACCEL_BASE, "addr_range": 0x10000,
                                     "fullpath": "codesign_top_0", "registers": {}, "parameters": {}}}
            return types.SimpleNamespace(ip_dict=ip, mem_dict={}, gpio_dict={}, interrupt_pins={},
                                         interrupt_controllers={}, hierarchy_dict={}, systemgraph=None, clock_dict={})

        def download(self, bitstream, parser=None):
            self.bitfile = bitstream.bitfile_name

        def allocate(self, shape, dtype, **kwargs):
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raw = np.zeros(nbytes + 64, np.uint8)
            address = 0x8_0000_0000 + 0x100_0000 * len(self.device_memory)  # above 4 GiB: both address words
            self.device_memory[address] = raw[-raw.ctypes.data % 64:][:nbytes]
            return PynqBuffer(shape, dtype, device=self, device_address=address, bo=address, coherent=False)

        def memory(self, address: int) -> np.ndarray:
            return self.device_memory[address]

        def flush(self, bo, offset, vaddr, nbytes):
            ctypes.memmove(self.device_memory[bo].ctypes.data + offset, vaddr, nbytes)

        def invalidate(self, bo, offset, vaddr, nbytes):
            ctypes.memmove(vaddr, self.device_memory[bo].ctypes.data + offset, nbytes)

        def read_registers(self, address, length):
            value = self.regs.get(address, 0)
            if address == ACCEL_BASE + REG_CTRL:
                self.regs[address] = value & ~AP_DONE  # clear-on-read
            return int(value).to_bytes(length, "little")

        def write_registers(self, address, data):
            self.regs[address] = int.from_bytes(data, "little")
            if address == ACCEL_BASE + REG_CTRL and self.regs[address] & AP_START:
                self.starts += 1
                accelerator(self, {a - ACCEL_BASE: v for a, v in self.regs.items() if a >= ACCEL_BASE})
                self.regs[address] = AP_IDLE | AP_DONE

    return HostDevice()


def register_address(regs: dict, offset: int) -> int:
    """A 64-bit address the driver wrote as two 32-bit registers (low word at `offset`)."""
    return regs[offset] | regs[offset + 4] << 32


def alias_bomb(field: str, levels: int = 9) -> str:
    """About 500 bytes of YAML whose `field` expands to 9**levels strings (the "billion laughs")."""
    rows = ['  - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"  - &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "anchors:\n" + "\n".join(rows) + f"\n{field}: *l{levels - 1}\n"


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str):
    """A benchmarks/ script as a module (it is not a package). Loaded once per name: the module
    must be in sys.modules while it runs, since dataclasses look their module up as the class is built."""
    name = "codesign_benchmark_" + Path(filename).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS_DIR / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
