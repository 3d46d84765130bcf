"""A model of the PTX instructions the kernels' inline asm uses: the interpreter's and the tests'.

Triton's interpreter (TRITON_INTERPRET=1) cannot run inline asm. Most kernels here take a plain
Triton path there instead (USE_ASM=False); the 2:4 sparse tensor-core path of kernels/nm_int4.py
cannot, because its asm is one warp-wide `mma.sp`, nor can kernels/bitmask_int4.py's batch 1-16 path
(a warp-wide dense `mma`). So, under the interpreter, `install()` makes
`tl.inline_asm_elementwise` run the asm text on this model: every `pack` consecutive elements of
the operands (row-major) are one thread's registers, thread i is lane i % 32 of warp i // 32 (the
layout kernels.static_report checks the compiled kernel gives the asm), and each instruction runs
on all threads at once, so `mma.sp` and `mma` see the whole warp's registers.

It covers what the kernels' asm uses (OPS below; the tests run every asm string on it): 32-bit
registers, integer and bit operations (prmt in its default mode), f16x2 / bf16x2 arithmetic and
fma.rn.f32 (exact products and sums, one rounding), `@p` predicates,
mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 and its bf16 form (A 16 × 16 in a0-a3 as
mma.sp's kept values below, B 16 × 8 in b0, b1 as below, C and D the same), and
mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 with sparsity selector 0, with the PTX ISA's
fragment layouts (section "Matrix fragments for sparse mma.m16n8k32 with .f16"):
  A (16 × 32, 2:4, held as its 16 × 16 kept values): lane (g, t) = (lane >> 2, lane & 3) holds
    in a0 row g, kept values 2t, 2t + 1; a1 row g + 8, same; a2 row g, kept 2t + 8, 2t + 9; a3 row
    g + 8, same (the kept values of a 4-column group are consecutive, in column order);
  metadata: lanes with t = 0 and t = 1 of each quad, bits 15:0 for row g and 31:16 for row
    g + 8, groups 4t … 4t + 3 of the 8, one nibble each, low 2 bits the first kept value's column
    in the group, high 2 bits the second's (they must differ: 0b0000, 0b0101, 0b1010, 0b1111 are
    undefined, and this model requires first < second);
  B (32 × 8): b_i holds rows 2t + 8i, 2t + 8i + 1 of column g (low half first);
  C, D (16 × 8): c0, c1 row g, columns 2t, 2t + 1; c2, c3 row g + 8.
The model sums in float64 and rounds once to fp32; the tensor cores round their fp32 sums as they
go, so results agree to fp32 rounding, not bit for bit.
"""

from __future__ import annotations

import re

import numpy as np

WARP = 32
MMA_SP = "mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32"
MMA = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
MMA_BF16 = MMA.replace("f16.f16", "bf16.bf16")
_GROUP = re.compile(r"\{([^{}]*)\}")


def prmt(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """prmt.b32 default mode: result byte i = byte (sel >> 4i) & 7 of b:a, sign-replicated when bit 3 is set."""
    pool = (a.astype(np.uint64) | b.astype(np.uint64) << np.uint64(32))
    out = np.zeros_like(a)
    for i in range(4):
        nib = (sel >> np.uint32(4 * i)) & np.uint32(15)
        byte = ((pool >> ((nib & np.uint32(7)).astype(np.uint64) * np.uint64(8))) & np.uint64(255)).astype(np.uint32)
        byte = np.where(nib & np.uint32(8), np.where(byte & np.uint32(128), np.uint32(255), np.uint32(0)), byte)
        out |= byte << np.uint32(8 * i)
    return out


def lop3(a: np.ndarray, b: np.ndarray, c: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    for bit in range(8):  # the truth table: output bit i of f(a, b, c) is lut bit (a_i b_i c_i)
        term = np.where(lut >> np.uint32(bit) & np.uint32(1), np.uint32(0xFFFFFFFF), np.uint32(0))
        for src, on in ((a, bit >> 2 & 1), (b, bit >> 1 & 1), (c, bit & 1)):
            term &= src if on else ~src
        out |= term
    return out


def halves(reg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two fp16 values of f16x2 registers (low half first), as float64."""
    lo = (reg & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (reg >> np.uint32(16)).astype(np.uint16).view(np.float16).astype(np.float64)
    return lo, hi


def bf16_halves(reg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two bf16 values of bf16x2 registers (low half first), as float64."""
    return tuple(((reg >> np.uint32(s)) << np.uint32(16)).view(np.float32).astype(np.float64) for s in (16, 0))[::-1]


def pair(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """f16x2 registers from two float64 arrays, each rounded once to fp16."""
    bits = lambda v: v.astype(np.float16).view(np.uint16).astype(np.uint32)  # noqa: E731
    return bits(lo) | bits(hi) << np.uint32(16)


def f32(reg: np.ndarray) -> np.ndarray:
    return reg.view(np.float32).astype(np.float64)


def f32_bits(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32).view(np.uint32)


LANE = np.arange(WARP)
G, T = LANE >> 2, LANE & 3  # lane (g, t) = (lane >> 2, lane & 3)


def a_matrix(a: list, warps: int, split=halves) -> np.ndarray:
    """(warps, 16, 16) from four A-fragment registers (16 × 16: mma's A, mma.sp's kept values)."""
    m = np.zeros((warps, 16, 16))
    for reg, (row_add, col_add) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
        lo, hi = (h.reshape(warps, WARP) for h in split(a[reg]))
        m[:, G + row_add, 2 * T + col_add] = lo
        m[:, G + row_add, 2 * T + col_add + 1] = hi
    return m


def b_matrix(b: list, warps: int, split=halves) -> np.ndarray:
    """(warps, 8·len(b), 8) from B-fragment registers: b_i holds rows 2t + 8i, 2t + 8i + 1 of column g."""
    m = np.zeros((warps, 8 * len(b), 8))
    for reg, word in enumerate(b):
        lo, hi = (h.reshape(warps, WARP) for h in split(word))
        m[:, 2 * T + 8 * reg, G] = lo
        m[:, 2 * T + 8 * reg + 1, G] = hi
    return m


def d_registers(prod: np.ndarray, c: list, warps: int) -> list:
    """D's four registers: prod (warps, 16, 8) + C, rounded once to fp32."""
    out = []
    for reg, (row_add, col_add) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1))):
        acc = f32(c[reg]).reshape(warps, WARP)
        out.append(f32_bits((prod[:, G + row_add, 2 * T + col_add] + acc).reshape(-1)))
    return out


def mma_sp(a: list, b: list, c: list, e: np.ndarray) -> list:
    """D = A·B + C for every warp: a, b four f16x2 registers, c four fp32 registers (uint32 bits),
    e the metadata; each (threads,) with threads a multiple of 32. Returns D's four registers."""
    warps = e.shape[0] // WARP
    kept = a_matrix(a, warps)  # A's kept values, row × position among the row's kept values
    dense = np.zeros((warps, 16, 32))
    meta = e.reshape(warps, WARP)
    for tq in (0, 1):  # the metadata lanes of sparsity selector 0
        for half, row_add in ((0, 0), (1, 8)):
            bits = meta[:, LANE[T == tq]] >> np.uint32(16 * half)  # (warps, 8): the quads' lanes tq
            for j in range(4):
                group = 4 * tq + j
                nib = (bits >> np.uint32(4 * j)) & np.uint32(15)
                first, second = nib & np.uint32(3), nib >> np.uint32(2)
                if np.any(first >= second):
                    raise ValueError(f"mma.sp metadata: nibble with first column ≥ second ({int(nib.flat[0]):#x} …)")
                for q in range(8):  # the quad (rows q, q + 8)
                    rows = q + row_add
                    w_idx = np.arange(warps)
                    dense[w_idx, rows, 4 * group + first[:, q]] = kept[w_idx, rows, 2 * group]
                    dense[w_idx, rows, 4 * group + second[:, q]] = kept[w_idx, rows, 2 * group + 1]
    return d_registers(dense @ b_matrix(b, warps), c, warps)


def mma(a: list, b: list, c: list, split=halves) -> list:
    """Dense D = A·B + C for every warp: a four f16x2 registers (bf16x2 with split=bf16_halves), b
    two, c four fp32 (uint32 bits), each (threads,) with threads a multiple of 32. Returns D's four
    registers."""
    warps = c[0].shape[0] // WARP
    return d_registers(a_matrix(a, warps, split) @ b_matrix(b, warps, split), c, warps)


def _operand(regs: dict, text: str, threads: int) -> np.ndarray:
    text = text.strip()
    if text in regs:
        return regs[text]
    if text.startswith("0f"):  # PTX's hex float: the fp32 bits
        value = int(text[2:], 16)
    else:
        value = int(text, 0)
    return np.full(threads, value & 0xFFFFFFFF, dtype=np.uint32)


def _bf16_pairs(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    """A bf16x2 operation in fp32, rounded to nearest even (no NaN handling: the kernels make none)."""
    out = np.zeros_like(a)
    for shift in (0, 16):
        x, y = (((v >> np.uint32(shift)) & np.uint32(0xFFFF)) << np.uint32(16) for v in (a, b))
        bits = op(x.view(np.float32), y.view(np.float32)).astype(np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out |= bits << np.uint32(shift)
    return out


MASK = np.uint64(0xFFFFFFFF)
OPS = {  # op → f(operand arrays) for the one-destination instructions
    "mov.b32": lambda a: a, "mov.f32": lambda a: a,
    "and.b32": np.bitwise_and, "or.b32": np.bitwise_or, "xor.b32": np.bitwise_xor,
    "shl.b32": lambda a, b: np.where(b >= 32, np.uint32(0), a << np.minimum(b, np.uint32(31))),
    "shr.b32": lambda a, b: np.where(b >= 32, np.uint32(0), a >> np.minimum(b, np.uint32(31))),
    "shf.r.wrap.b32": lambda lo, hi, n: ((hi.astype(np.uint64) << np.uint64(32) | lo)
                                         >> (n & np.uint32(31)).astype(np.uint64) & MASK).astype(np.uint32),
    "shf.r.clamp.b32": lambda lo, hi, n: ((hi.astype(np.uint64) << np.uint64(32) | lo)
                                          >> np.minimum(n, np.uint32(32)).astype(np.uint64) & MASK).astype(np.uint32),
    "add.u32": lambda a, b: ((a.astype(np.uint64) + b) & MASK).astype(np.uint32),
    "mul.lo.u32": lambda a, b: ((a.astype(np.uint64) * b) & MASK).astype(np.uint32),
    "mad.lo.u32": lambda a, b, c: ((a.astype(np.uint64) * b + c) & MASK).astype(np.uint32),
    "setp.lt.u32": lambda a, b: (a < b).astype(np.uint32), "setp.eq.u32": lambda a, b: (a == b).astype(np.uint32),
    "selp.b32": lambda a, b, p: np.where(p != 0, a, b),
    "prmt.b32": prmt, "lop3.b32": lop3,
    "sub.f16x2": lambda a, b: pair(*(x - y for x, y in zip(halves(a), halves(b)))),
    "fma.rn.f16x2": lambda a, b, c: pair(*(x * y + z for x, y, z in zip(halves(a), halves(b), halves(c)))),
    "sub.rn.bf16x2": lambda a, b: _bf16_pairs(a, b, np.subtract),
    "fma.rn.f32": lambda a, b, c: f32_bits(f32(a) * f32(b) + f32(c)),
}
_UNPACK = re.compile(r"\{\s*(\S+),\s*(\S+)\s*\},\s*(\S+)")  # mov.b32 {lo, hi}, r: its two halves


def run(asm: str, regs: dict, threads: int) -> dict:
    """Execute straight-line PTX on registers {"$0": (threads,) uint32, …}; returns all registers.
    `{`, `}` around statements are blocks (ignored); `@p` predicates an instruction per thread."""
    regs = dict(regs)
    for statement in asm.split(";"):
        statement = statement.strip().lstrip("{} \t\n")
        while statement.endswith("}") and statement.count("}") > statement.count("{"):  # a block's end
            statement = statement[:-1].rstrip()
        if not statement or statement.startswith(".reg"):
            continue
        pred = None
        if statement.startswith("@"):
            name, _, statement = statement[1:].partition(" ")
            pred = (regs[name.lstrip("!")] != 0) ^ name.startswith("!")
        op, _, rest = statement.partition(" ")
        if op == MMA_SP:
            groups = [[r.strip() for r in g.split(",")] for g in _GROUP.findall(rest)]
            tail = [p.strip() for p in _GROUP.sub("", rest).split(",") if p.strip()]
            d, a, b, c = groups
            if tail[1] not in ("0", "0x0"):
                raise NotImplementedError(f"ptx_model: mma.sp sparsity selector {tail[1]}")
            value = lambda names: [_operand(regs, n, threads) for n in names]  # noqa: E731
            results = dict(zip(d, mma_sp(value(a), value(b), value(c), _operand(regs, tail[0], threads))))
        elif op in (MMA, MMA_BF16):
            d, a, b, c = ([_operand(regs, r.strip(), threads) if i else r.strip() for r in g.split(",")]
                          for i, g in enumerate(_GROUP.findall(rest)))
            results = dict(zip(d, mma(a, b, c, halves if op == MMA else bf16_halves)))
        elif op == "mov.b32" and _UNPACK.match(rest):
            lo, hi, src = _UNPACK.match(rest).groups()
            word = _operand(regs, src, threads)
            results = {lo: word & np.uint32(0xFFFF), hi: word >> np.uint32(16)}
        elif op in OPS:
            dest, *args = [p.strip() for p in rest.split(",")]
            results = {dest: OPS[op](*(_operand(regs, a, threads) for a in args)).astype(np.uint32)}
        else:
            raise NotImplementedError(f"ptx_model: no model for PTX instruction {op}")
        for name, value in results.items():
            regs[name] = value if pred is None else np.where(pred, value, regs.get(name, np.zeros(threads, np.uint32)))
    return regs


def run_scalar(asm: str, regs: dict) -> dict:
    """run() on one thread, with Python ints for registers (the asm tests' form)."""
    out = run(asm, {k: np.array([v & 0xFFFFFFFF], dtype=np.uint32) for k, v in regs.items()}, 1)
    return {k: int(v[0]) for k, v in out.items()}


class _Call:
    def __init__(self, results):
        self.results = results

    def get_result(self, i):
        return self.results[i]


def inline_asm(builder, asm, constraints, values, types, is_pure, pack):
    """InterpreterBuilder.create_inline_asm on this model (see the module docstring)."""
    from triton.runtime.interpreter import TensorHandle

    kinds = [c.strip() for c in constraints.split(",")]
    outs = [k for k in kinds if k.startswith("=")]
    if any(v.data.dtype.itemsize != 4 for v in values) or any(t.element_ty.primitive_bitwidth != 32 for t in types):
        raise NotImplementedError("ptx_model: only 32-bit operands (one register per element)")
    if len(outs) != pack * len(types) or len(kinds) != pack * (len(types) + len(values)):
        raise ValueError(f"ptx_model: {len(kinds)} constraints for {len(types)} outputs and {len(values)} inputs "
                         f"of {pack} registers each")
    shape = values[0].data.shape
    threads = values[0].data.size // pack
    if threads % WARP:
        raise ValueError(f"ptx_model: {threads} threads, not whole warps")
    regs = {}
    for i, v in enumerate(values):
        words = np.ascontiguousarray(v.data).reshape(threads, pack).view(np.uint32)
        for j in range(pack):
            regs[f"${pack * (len(types) + i) + j}"] = words[:, j].copy()
    regs = run(asm, regs, threads)
    results = []
    for i, ty in enumerate(types):
        words = np.stack([regs[f"${pack * i + j}"] for j in range(pack)], axis=1)
        np_type = np.float32 if ty.element_ty.is_floating() else np.int32
        results.append(TensorHandle(words.view(np_type).reshape(shape), ty.element_ty))
    return _Call(results)


def install() -> None:
    """Route the interpreter's inline asm through this model (idempotent)."""
    from triton.runtime.interpreter import InterpreterBuilder

    InterpreterBuilder.create_inline_asm = inline_asm
