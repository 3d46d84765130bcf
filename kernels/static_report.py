"""What the compiled kernels will cost on Hopper, read from their SASS on the CPU (no GPU needed).

    .venv/bin/python -m kernels.static_report                  # every kernel → bench/results/kernels-sm90.json
    .venv/bin/python -m kernels.static_report --kernel int4    # one format's rows updated in that file
    .venv/bin/python -m kernels.static_report --path "batch 1-16" --out /tmp/r.json

Each kernel module declares its `STATIC` specs (kernels._common.CompileSpec: the kernel, pointer
types, constexprs, production configs per launch path, packed bytes per thread per iteration, CTAs
per shape); the report finds them through kernels.FORMATS. For every production config it:

1. compiles for sm_90 with Triton's ahead-of-time path (the ptxas bundled in the triton wheel),
   specialised as a real LLM call would be: 16-byte aligned pointers, ints multiples of 16;
2. finds the packed-data loads in the PTX by data flow: a global load (ld.global, cp.async) whose
   address derives, by arithmetic, from a packed pointer parameter (`spec.packed`; a value loaded
   from packed data carries no pointer: a table lookup indexed by mask bytes is not packed data);
   source line info cannot tell, LLVM moves a load's line to its first use. Inline-asm blocks
   (`{ .reg …; @p ld.global.nc.b16 …; }`, kernels/bitmask.py's gathers) are read statement by
   statement, their local registers renamed per block. The PTX main loop is the backward branch
   holding the most packed loads; their widths are those of the SASS (ptxas keeps vector widths);
3. disassembles the cubin with the wheel's nvdisasm; the SASS main loop is the backward branch
   holding the most global loads (the smallest on ties); counts its instructions (NOPs aside):
   one thread, one iteration, as long as ptxas does not unroll it;
4. reads, in the TTGIR, the layout of every inline-asm call with pack > 1 (see asm_layout_problems):
   the kernels' asm assumes each call gets `pack` consecutive elements of one row, which Triton
   does not promise (its lowering takes the thread's next `pack` registers, whatever they hold);
   the interpreter runs the asm's torch twin, so only the compiled layout can tell;
5. writes one row per config: instr_per_byte = loop instructions / packed bytes that thread loads
   per iteration (the spec's count of bytes streamed from memory; `ptx_packed_bytes` is what the
   PTX loop loads, gathers under an inline-asm predicate weighted by the kept fraction `spec.kept`;
   it must equal `ptx_expected_bytes`, the spec's count or, where the loop rereads bytes, its
   declared `spec.ptx_bytes`: a spec that overstates its bytes would flatter instr_per_byte),
   l1_bytes_per_byte = the bytes the loop's loads, stores and wgmma operands move through the
   SM's L1 / shared-memory data path per packed byte (`l1_bytes`; the dot operands' staging through
   shared memory counts, a lower bound: perfect coalescing, no bank conflicts),
   load_bits = the narrowest packed load in the loop, registers / spill_bytes (local memory per
   thread) / shared_bytes, resident_ctas per SM (registers, shared memory, threads), ctas = CTAs
   launched at batch 1 on each target shape (the launchers' split over K at that occupancy),
   waves (those CTAs over the ones the SMs hold at once) and inflight_kb: the packed KB one
   iteration of the CTAs on an SM has in flight at batch 1 (DESIGN.md asks ≈ 25-30 KB to cover
   DRAM latency; reported, not tested), asm_calls / asm_layout: the inline-asm calls checked and
   what would hand any of them other than runs of one row (a wrong answer on the GPU: the report exits 1),
   bytes_per_weight (streamed per weight: packed data, scales and zeros) and, on the batch 1-16
   path, ceiling_vs_fp16: the speedup over cuBLAS fp16 that bytes, instruction issue and the L1 /
   shared-memory data path leave possible (`ceiling`; a bound to hold the GPU figures against, not
   a forecast).

A run narrowed by --kernel or --path updates its rows in an existing report (the same Triton's;
another's is refused, so nothing is lost) and leaves the other rows as they were.

The limits the batch 1-16 path must meet (tests/test_static_report.py): 128-bit packed loads,
≤ MAX_INSTR_PER_BYTE instructions per packed byte, ≥ MIN_CTAS CTAs at batch 1 on every shape.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from multiprocessing import Pool
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The JIT's default, said out loud (Triton 3.9 warns when it is unset).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from kernels._common import MIN_CTAS, SMS, resident_ctas  # noqa: E402  (imports Triton: after its default)

# params.yaml's benchmark.shapes, (N, K); tests/test_static_report.py keeps the two in step.
TARGET_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (28672, 8192), (8192, 28672))
LOAD_BITS = 128
# H200: 3.3e13 thread-instructions/s over 4.27 TB/s is 7.8 per byte at perfect issue, ≈ 5 in practice.
PEAK_INSTR_PER_BYTE = 7.8
# Each SM's L1 / shared-memory data path moves 128 B per clock (132 SMs at 1.98 GHz: 33 TB/s), 7.8
# times the copy bandwidth: the bytes a loop's loads, stores and wgmma operands move through it,
# per packed byte streamed, past 7.8 cap the stream as instruction issue does.
PEAK_L1_BYTES_PER_BYTE = 7.8
MAX_INSTR_PER_BYTE = 6.0
FP16_BYTES_PER_WEIGHT = 2  # what cuBLAS streams for the dense fp16 weight
OUT = Path(__file__).resolve().parent.parent / "bench" / "results" / "kernels-sm90.json"
PATHS = ("batch 1-16", "large batch")  # kernels._common.BATCH_1_16, LARGE_BATCH


@dataclass
class Row:
    kernel: str  # the spec's name
    path: str
    config: str
    instr_per_byte: float | None = None
    l1_bytes_per_byte: float | None = None  # through L1 / shared memory per packed byte (see l1_bytes)
    load_bits: int | None = None
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    ctas: dict = field(default_factory=dict)  # "NxK" → CTAs at batch 1 (kernels._common.plan_split_k)
    resident_ctas: int | None = None  # per SM, as registers, shared memory and threads allow
    waves: dict = field(default_factory=dict)  # "NxK" → ctas / (resident_ctas · SMS): whole waves keep every SM busy
    inflight_kb: dict = field(default_factory=dict)  # "NxK" → packed KB one iteration keeps in flight per SM
    loop_instructions: int | None = None
    packed_bytes: int | None = None  # declared by the spec, per thread per iteration
    ptx_packed_bytes: float | None = None  # what the PTX main loop loads: its packed loads' bytes, the
    #   predicated gathers weighted by the kept fraction the spec assumes (spec.kept)
    ptx_gather_bytes: int | None = None  # of those, the gathers' bytes were every predicate true
    ptx_expected_bytes: int | None = None  # what the spec says the PTX loads (= packed_bytes unless it rereads)
    bytes_per_weight: float | None = None  # bytes streamed per weight: packed data, scales and zeros
    ceiling_vs_fp16: float | None = None  # batch 1-16: the most it can gain on cuBLAS fp16 (see ceiling)
    asm_calls: int | None = None  # inline-asm calls with pack > 1 whose element grouping the report checked
    asm_layout: list = field(default_factory=list)  # what would hand them other than runs of one row
    error: str | None = None


def tool(name: str) -> Path:
    """A CUDA binary shipped inside the triton wheel (ptxas, nvdisasm, cuobjdump)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this triton wheel does not bundle {name}")
    return path


def config_label(config) -> str:
    """e.g. "16x64x64 w4 s3 r128 SPLIT=1": BLOCK_M x BLOCK_N x BLOCK_K, warps, stages, the register cap
    (maxnreg) where there is one, other constexprs."""
    blocks = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in config.kwargs)
    cap = f" r{config.maxnreg}" if config.maxnreg else ""
    others = " ".join(f"{k}={v}" for k, v in sorted(config.kwargs.items()) if not k.startswith("BLOCK_"))
    return " ".join(p for p in (f"{blocks} w{config.num_warps} s{config.num_stages}{cap}", others) if p)


def specs(kernel: str | None = None) -> list[tuple[str, object]]:
    """(format, spec) for every spec reachable from kernels.FORMATS; spec None: the module has no STATIC."""
    from kernels import FORMATS

    found, seen = [], set()
    for fmt, module_name in FORMATS.items():
        if kernel is not None and fmt != kernel:
            continue
        module = importlib.import_module(f"kernels.{module_name}")
        declared = getattr(module, "STATIC", None)
        if not declared:
            found.append((fmt, None))
        for spec in declared or ():
            if spec.name not in seen:
                seen.add(spec.name)
                found.append((fmt, spec))
    return found


def jobs(kernel: str | None, paths: tuple[str, ...]) -> list[tuple]:
    return [(fmt, spec.name, path, i) for fmt, spec in specs(kernel) if spec is not None
            for path in paths for i in range(len(spec.paths.get(path, ())))]


def find_spec(fmt: str, name: str):
    return next(spec for f, spec in specs(fmt) if spec is not None and spec.name == name)


def compile_config(spec, config, path: str | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.kernel
    constexprs = dict(spec.constexprs, **config.kwargs)
    pointers = dict(spec.pointers, **((spec.path_pointers or {}).get(path, {})))
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*" + pointers[arg.removesuffix("_ptr")]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if arg not in spec.unaligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages,
                                       maxnreg=config.maxnreg))


def packed_params(fn, constexprs: dict, packed: tuple[str, ...]) -> set[int]:
    """PTX parameter numbers of the packed pointers (PTX numbers the non-constexpr arguments)."""
    runtime = [arg for arg in fn.arg_names if arg not in constexprs]
    return {runtime.index(f"{p}_ptr") for p in packed}


PTX_LINE = re.compile(r"^(@!?%\w+\s+)?([a-z][\w.]*)\s*(.*);$")
PTX_NO_DEST = ("st.", "cp.async", "bar", "bra", "red.", "ret", "fence", "prefetch", "mbarrier", "exit")
ASM_REG = re.compile(r"\.reg\s+\.\w+\s+([^;]+)")


@dataclass
class PtxInstr:
    op: str
    dests: tuple  # registers written
    sources: tuple  # registers read
    params: tuple  # kernel parameter numbers read (ld.param)
    address: tuple  # registers of the global address (loads only)
    bits: int  # bits one thread loads (global loads only)
    target: str | None  # branch target label
    gather: bool = False  # a load under a predicate of an inline-asm block (kernels/bitmask.py's gathers)


def ptx_statements(ptx: str):
    """(statement, inline) per PTX statement. An inline-asm block `{ .reg … ; a; b; }` sits on one
    line: it is split into its statements, and its local registers (no `%`) get a `%` name unique
    to the block, so data flow and predicates inside it read like the compiler's own."""
    for n, raw in enumerate(ptx.splitlines()):
        line = raw.split("//")[0].strip()
        if not (line.startswith("{") and line.endswith("}")):
            yield line, False
            continue
        body = line[1:-1]
        local = {name.strip() for decl in ASM_REG.findall(body) for name in decl.split(",")}
        rename = lambda m: f"%asm{n}_{m.group(0)}" if m.group(0) in local else m.group(0)  # noqa: E731
        for part in body.split(";"):
            part = part.strip()
            if part and not part.startswith(".reg"):
                yield re.sub(r"(?<![%\w.$])[A-Za-z_]\w*", rename, part) + ";", True


def parse_ptx(ptx: str) -> tuple[list, dict[str, int]]:
    """PTX instructions (and label → index) in program order, with what each reads and writes."""
    instrs, labels = [], {}
    for line, inline in ptx_statements(ptx):
        if re.match(r"^\$L\w+:$", line):
            labels[line[:-1]] = len(instrs)
            continue
        m = PTX_LINE.match(line)
        if not m:
            continue
        guard, op, operands = m.groups()
        parts = [p.strip() for p in re.split(r",(?![^{]*})", operands)] if operands else []
        has_dest = parts and not op.startswith(PTX_NO_DEST)
        regs = lambda text: tuple(re.findall(r"%\w+", text))  # noqa: E731
        dests = regs(parts[0]) if has_dest else ()
        sources = tuple(r for p in parts[1 if has_dest else 0:] for r in regs(p))
        params = tuple(int(n) for n in re.findall(r"_param_(\d+)\]", operands))
        address, bits = (), 0
        if op.startswith("ld.global"):
            address = regs(re.search(r"\[(.*?)\]", operands).group(1))
            width = int(re.search(r"\.[bsuf](8|16|32|64)\b", op).group(1))
            vector = re.search(r"\.v(\d)", op)
            bits = width * (int(vector.group(1)) if vector else 1)
        elif op.startswith("cp.async.") and "shared.global" in op:
            address = regs(re.findall(r"\[(.*?)\]", operands)[1])
            bits = int(parts[2], 0) * 8
        target = re.search(r"\$L\w+", operands) if op.startswith("bra") else None
        instrs.append(PtxInstr(op, dests, sources, params, address, bits, target and target.group(0),
                               gather=bool(bits) and inline and guard is not None))
    return instrs, labels


def reaches(instrs: list, regs: tuple, params: set[int]) -> bool:
    """Does an address computed from `regs` derive from one of the pointer parameters `params`?
    Pointer provenance flows through arithmetic, not through global loads: an address computed
    from a loaded packed value (a table lookup indexed by mask bytes) points elsewhere."""
    defs: dict[str, list] = {}
    for ins in instrs:
        for reg in ins.dests:
            defs.setdefault(reg, []).append(ins)
    todo, seen = list(regs), set(regs)
    while todo:
        for ins in defs.get(todo.pop(), ()):
            if params.intersection(ins.params):
                return True
            if ins.bits:
                continue
            fresh = [r for r in ins.sources if r not in seen]
            seen.update(fresh)
            todo.extend(fresh)
    return False


@dataclass
class PtxLoads:
    """The packed-data global loads of the PTX main loop."""

    bits: list  # per load, gathers included
    plain_bits: int  # summed over the loads every thread issues (a Triton mask aside)
    gather_bits: int  # summed over the predicated inline-asm gathers, as if every predicate held


def ptx_loop_loads(ptx: str, packed: set[int]) -> PtxLoads:
    """Packed-data global loads in the PTX loop that encloses the most of them."""
    instrs, labels = parse_ptx(ptx)
    is_packed = [bool(ins.bits) and reaches(instrs, ins.address, packed) for ins in instrs]
    spans = [(labels[ins.target], i) for i, ins in enumerate(instrs)
             if ins.target in labels and labels[ins.target] <= i]
    if not spans:
        return PtxLoads([], 0, 0)
    first, last = max(spans, key=lambda s: (sum(is_packed[s[0]:s[1] + 1]), s[0] - s[1]))
    loads = [instrs[i] for i in range(first, last + 1) if is_packed[i]]
    return PtxLoads([ins.bits for ins in loads], sum(ins.bits for ins in loads if not ins.gather),
                    sum(ins.bits for ins in loads if ins.gather))


@dataclass
class Instr:
    addr: int
    op: str  # opcode with its modifiers, predicate dropped
    target: str | None  # branch target label
    args: str = ""  # the operands, as nvdisasm prints them


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+):")


def disassemble(cubin: bytes) -> tuple[list[Instr], dict[str, int]]:
    """SASS instructions and label → address."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
    instrs, labels = [], {}
    for line in text.splitlines():
        if m := INSTR.search(line):
            target = re.search(r"(\.L_x_\d+)", m.group(3)) if m.group(2).startswith("BRA") else None
            instrs.append(Instr(int(m.group(1), 16), m.group(2), target and target.group(1), m.group(3)))
        elif m := LABEL.match(line.strip()):
            labels[m.group(1)] = instrs[-1].addr + 16 if instrs else 0
    return instrs, labels


def is_global_load(op: str) -> bool:
    return op.split(".")[0] in ("LDG", "LDGSTS")


WIDTHS = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}  # SASS width modifiers, bytes
MEMORY = ("LDG", "LDGSTS", "LDS", "STS", "LDSM", "STSM")  # what uses the SM's L1 / shared data path
WGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")


def l1_bytes(instr: Instr) -> float:
    """Bytes one thread's share of `instr` moves through the SM's L1 / shared-memory data path:
    a load or store its width (LDSM / STSM: .N 8x8 matrices, N registers per thread); a wgmma its
    shared-memory operands (B, and A where A is a descriptor too: m×k and k×n fp16 per 128
    threads). A lower bound on the traffic: perfect coalescing, no bank conflicts, no L1 fills;
    constant-cache loads (LDC) go elsewhere."""
    base, *mods = instr.op.split(".")
    if base in ("LDSM", "STSM"):
        return 4 * (int(mods[-1]) if mods[-1].isdigit() else 1)
    if base in MEMORY:
        return next((WIDTHS[m] for m in mods if m in WIDTHS), 4)
    if m := WGMMA.match(instr.op):
        rows, cols, depth = map(int, m.groups())
        operands = instr.args.split(",")
        from_shared = cols * depth + (rows * depth if "gdesc" in operands[1] else 0)
        return 2 * from_shared / 128
    return 0


def sass_main_loop(instrs: list[Instr], labels: dict[str, int]) -> list[Instr]:
    """Body of the backward branch that encloses the most global loads (the smallest on ties)."""
    bodies = [[i for i in instrs if labels[b.target] <= i.addr <= b.addr] for b in instrs
              if b.target in labels and labels[b.target] <= b.addr]
    return max(bodies, key=lambda body: (sum(is_global_load(i.op) for i in body), -len(body)), default=[])


def resources(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local memory per thread) from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return int(re.search(r"REG:(\d+)", text).group(1)), int(re.search(r"LOCAL:(\d+)", text).group(1))


# Inline asm with pack > 1: Triton's lowering hands each call the next `pack` registers of the
# thread, in the order its layout keeps them (and pads a short tail with undef). Nothing makes
# those consecutive elements of one row, yet the kernels' asm assumes it: a quad of 2:4 groups
# reads its index halfword and zero point once, the GEMV sums a run of 64 columns. The report
# reads every such call's layout in the TTGIR, as Triton's linear layouts: register i holds the
# XOR of the register bases of i's set bits, plus the lane, warp and block bases of the thread.
ASM_OP = re.compile(r'tt\.elementwise_inline_asm "((?:[^"\\]|\\.)*)".*?packed_element = (\d+)')
TENSOR = re.compile(r"tensor<([\dx]+)x\w+, (#[\w.]+)>")
LAYOUT = re.compile(r"^(#[\w.]+) = #ttg\.(\w+)<\{(.*)\}>$", re.M)


def mlir_string(text: str) -> str:
    """An MLIR string literal's contents, its \\XX escapes decoded."""
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def layout_fields(body: str) -> dict:
    """`sizePerThread = [1, 16], order = [1, 0]` (a #ttg layout's fields) → a dict."""
    return json.loads("{" + re.sub(r"(\w+) = ", r'"\1": ', body) + "}")


def blocked_bases(size: list, threads: list, warps: list, order: list, shape: list) -> tuple[list, list]:
    """A #ttg.blocked layout over `shape` as linear-layout bases: (register bases, lane + warp
    bases). Per dimension, fastest first: the thread's own elements, then lanes, then warps; a
    shape larger than the CTA tile repeats it (more registers, fastest dimension first), a smaller
    one drops the registers past it and broadcasts the lanes and warps past it (bases 0). What
    Triton's blockedToLinearLayout gives (tests/test_static_report.py compares the two)."""
    rank = len(shape)
    step = [1] * rank
    bases = {"register": [], "lane": [], "warp": []}
    for kind, counts in (("register", size), ("lane", threads), ("warp", warps)):
        for d in order:
            for _ in range(counts[d].bit_length() - 1):
                bases[kind].append([step[d] if i == d else 0 for i in range(rank)])
                step[d] *= 2
    for d in order:
        while step[d] < shape[d]:
            bases["register"].append([step[d] if i == d else 0 for i in range(rank)])
            step[d] *= 2
    inside = lambda b: all(v < n for v, n in zip(b, shape))  # noqa: E731
    return ([b for b in bases["register"] if inside(b)],
            [b if inside(b) else [0] * rank for b in bases["lane"] + bases["warp"]])


def layout_bases(kind: str, fields: dict, shape: list) -> tuple[list, list] | None:
    """(register bases, the thread's other bases) of a blocked or linear layout; None for others."""
    if kind == "blocked":
        return blocked_bases(fields["sizePerThread"], fields["threadsPerWarp"], fields["warpsPerCTA"],
                             fields["order"], shape)
    if kind == "linear":
        return fields["register"], fields["lane"] + fields["warp"] + fields["block"]
    return None


def run_problem(pack: int, registers: list, others: list) -> str | None:
    """Why calls of `pack` registers would not see runs of `pack` consecutive elements of one row
    starting at a multiple of `pack` (None: they do). Registers i … i + pack − 1 (i a multiple of
    pack) differ only in the bits of the first log2(pack) register bases, so those must be the
    unit steps 1, 2, … along the last dimension, and every other base a multiple of pack there."""
    if pack & (pack - 1):
        return f"pack {pack} is not a power of two"
    k = pack.bit_length() - 1
    run = [[0] * (len(registers[0]) - 1 if registers else 0) + [1 << j] for j in range(k)]
    if len(registers) < k or registers[:k] != run:
        return f"its first registers step by {registers[:k]}, not {run}"
    off = [b for b in registers[k:] + others if b[-1] % pack]
    if off:
        return f"bases {off} start runs off a multiple of {pack}"
    return None


WARP_WIDE = re.compile(r"\b(mma|shfl|vote|ldmatrix)\.")  # PTX that reads other lanes' registers


def lane_problem(registers: list, others: list) -> str | None:
    """Why a warp-wide asm would not run with thread i holding row i (lane i % 32 of warp i // 32)
    and only that row: no register base may step along the rows, and lane and warp bases must be
    1, 2, 4, … rows (None: they do)."""
    rows = [[1 << j] + [0] * (len(others[0]) - 1) for j in range(len(others))] if others else []
    if others != rows:
        return f"its lane and warp bases are {others}, not {rows}"
    if any(b[0] for b in registers):
        return f"a thread holds several rows (register bases {registers})"
    return None


def asm_layout_problems(ttgir: str, free: tuple = ()) -> tuple[int, list[str]]:
    """(inline-asm calls checked, what is wrong with their layouts) in a TTGIR module: every
    tt.elementwise_inline_asm with pack > 1 whose PTX is not in `free`, on each of its tensors;
    warp-wide ones (mma, shfl, …) must also give thread i row i (lane_problem)."""
    layouts = {name: (kind, layout_fields(body)) for name, kind, body in LAYOUT.findall(ttgir)}
    checked, problems = 0, []
    for line in ttgir.splitlines():
        op = ASM_OP.search(line)
        if not op:
            continue
        ptx, pack = mlir_string(op.group(1)), int(op.group(2))
        if pack == 1 or ptx in free:
            continue
        checked += 1
        for dims, name in sorted(set(TENSOR.findall(line[op.end():]))):
            shape = [int(d) for d in dims.split("x")]
            kind, fields = layouts.get(name, ("undefined", {}))
            bases = layout_bases(kind, fields, shape)
            why = (f"the report reads blocked and linear layouts, not {kind}" if bases is None
                   else run_problem(pack, *bases) or (lane_problem(*bases) if WARP_WIDE.search(ptx) else None))
            if why:
                problems.append(f"asm (pack {pack}) `{ptx[:48]}…` on tensor<{dims}, {name}>: {why}")
    return checked, problems


def analyse(job: tuple) -> Row:
    fmt, name, path, index = job
    spec = find_spec(fmt, name)
    config = spec.paths[path][index]
    row = Row(kernel=name, path=path, config=config_label(config), packed_bytes=spec.packed_bytes(config))
    try:
        compiled = compile_config(spec, config, path)
    except Exception as e:  # report and go on: one bad config should not hide the others
        row.error = f"compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        return row
    cubin = compiled.asm["cubin"]
    row.asm_calls, row.asm_layout = asm_layout_problems(compiled.asm["ttgir"], spec.free_asm)
    row.registers, row.spill_bytes = resources(cubin)
    row.shared_bytes = compiled.metadata.shared
    threads = 32 * config.num_warps
    row.resident_ctas = resident_ctas(row.registers, row.shared_bytes, threads)
    row.ctas = {f"{n}x{k}": spec.ctas(config, n, k, 1, row.resident_ctas) for n, k in TARGET_SHAPES}
    row.waves = {shape: round(n / (row.resident_ctas * SMS), 2) for shape, n in row.ctas.items()}
    row.inflight_kb = {shape: round(min(row.resident_ctas, n / SMS) * threads * row.packed_bytes / 1024, 1)
                       for shape, n in row.ctas.items()}
    loads = ptx_loop_loads(compiled.asm["ptx"],
                           packed_params(spec.kernel, dict(spec.constexprs, **config.kwargs), spec.packed))
    body = sass_main_loop(*disassemble(cubin))
    if not loads.bits or not body:
        row.error = "no loop loading packed data found"
        return row
    row.loop_instructions = sum(i.op != "NOP" for i in body)
    row.load_bits = min(loads.bits)
    row.ptx_gather_bytes = loads.gather_bits // 8
    row.ptx_packed_bytes = round((loads.plain_bits + spec.kept * loads.gather_bits) / 8, 2)
    row.ptx_expected_bytes = spec.ptx_bytes(config) if spec.ptx_bytes else row.packed_bytes
    row.instr_per_byte = round(row.loop_instructions / row.packed_bytes, 2)
    row.l1_bytes_per_byte = round(sum(map(l1_bytes, body)) / row.packed_bytes, 2)
    row.bytes_per_weight = round(row.packed_bytes * threads / (config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"])
                                 + side_bytes(spec.constexprs.get("GROUP")), 4)
    if path == PATHS[0]:  # large batches are bound by the math, not by streaming the weights
        row.ceiling_vs_fp16 = ceiling(row.bytes_per_weight, row.instr_per_byte, row.l1_bytes_per_byte)
    return row


def side_bytes(group: int | None) -> float:
    """Bytes per weight of the scales and zeros (fp16 + uint8 per group of g columns, every
    quantized format): 3 / g; none for fp16 values (no GROUP) and ≈ 0 for one group per row (0)."""
    return 3 / group if group else 0.0


def ceiling(bytes_per_weight: float, instr_per_byte: float, l1_bytes_per_byte: float) -> float:
    """The speedup over cuBLAS fp16 a weight-streaming kernel cannot pass: both stream their
    weights at the same bandwidth (fp16: 2 bytes per weight), unless instruction issue or the
    L1 / shared-memory data path caps the kernel first (past PEAK_INSTR_PER_BYTE instructions or
    PEAK_L1_BYTES_PER_BYTE bytes per packed byte). A bound, not a forecast: no latency,
    occupancy or cache effects, and cuBLAS taken at full bandwidth."""
    slowest = max(1.0, instr_per_byte / PEAK_INSTR_PER_BYTE, l1_bytes_per_byte / PEAK_L1_BYTES_PER_BYTE)
    return round(FP16_BYTES_PER_WEIGHT / bytes_per_weight / slowest, 2)


def violations(row: Row) -> list[str]:
    """What a batch 1-16 row breaks of the limits (empty: it meets them all)."""
    if row.error:
        return [row.error]
    found = []
    if row.load_bits != LOAD_BITS:
        found.append(f"packed loads of {row.load_bits} bits, not {LOAD_BITS}")
    if row.instr_per_byte > MAX_INSTR_PER_BYTE:
        found.append(f"{row.instr_per_byte} instructions per packed byte > {MAX_INSTR_PER_BYTE}")
    if row.ptx_packed_bytes != row.ptx_expected_bytes:
        found.append(f"the PTX loads {row.ptx_packed_bytes} packed bytes per iteration, the spec says "
                     f"{row.ptx_expected_bytes}")
    few = {shape: n for shape, n in row.ctas.items() if n < MIN_CTAS}
    if few:
        found.append(f"fewer than {MIN_CTAS} CTAs at batch 1: {few}")
    return found


def report(kernel: str | None = None, paths: tuple[str, ...] = PATHS, workers: int | None = None) -> dict:
    import triton

    rows = []
    # Ctrl-C reaches the workers too: they ignore it, main() says what happened, and leaving the
    # pool terminates them.
    with Pool(workers or os.cpu_count() or 1, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        for row in pool.imap(analyse, jobs(kernel, paths)):
            rows.append(asdict(row))
    missing = [fmt for fmt, spec in specs(kernel) if spec is None]
    return {"triton": triton.__version__, "target": "sm_90",
            "limits": {"path": PATHS[0], "load_bits": LOAD_BITS, "max_instr_per_byte": MAX_INSTR_PER_BYTE,
                       "min_ctas": MIN_CTAS},
            "shapes": [list(s) for s in TARGET_SHAPES], "formats_without_spec": missing, "rows": rows}


def previous_report(out: Path, triton_version: str) -> dict | None:
    """The report a narrowed run (--kernel / --path) updates in place: None when `out` does not
    exist; exits with a message when it cannot be read or holds another Triton's figures (a merge
    would mix versions, and overwriting would lose the other rows)."""
    if not out.exists():
        return None
    try:
        previous = json.loads(out.read_text())
        if not isinstance(previous["rows"], list):
            raise TypeError("its rows are not a list")
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"{out} is not a report this tool can update ({type(e).__name__}: {e}): pass --out for a new file")
    if previous.get("triton") != triton_version:
        sys.exit(f"{out} holds Triton {previous.get('triton')}'s figures and this is Triton {triton_version}: pass "
                 "--out for a report of its own")
    return previous


def merged(previous: dict, result: dict) -> dict:
    """`result`'s rows in place of `previous`'s for the same kernel and path, in the full run's order
    (rows of specs that no longer exist are dropped)."""
    ran = {(r["kernel"], r["path"]) for r in result["rows"]}
    order = {}
    for _, name, path, _ in jobs(None, PATHS):
        order.setdefault((name, path), len(order))
    rows = [r for r in previous["rows"] if (r["kernel"], r["path"]) not in ran] + result["rows"]
    rows = [r for r in rows if (r["kernel"], r["path"]) in order]
    return dict(result, rows=sorted(rows, key=lambda r: order[r["kernel"], r["path"]]),
                formats_without_spec=[fmt for fmt, spec in specs() if spec is None])


def main(argv: list[str] | None = None) -> int:
    from kernels import FORMATS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=sorted(FORMATS), help="one packed format (default: all)")
    parser.add_argument("--path", choices=PATHS, action="append", help="launch path (default: both)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this report compiles")
    import triton

    narrowed = args.kernel is not None or args.path is not None
    previous = previous_report(args.out, triton.__version__) if narrowed else None
    try:
        result = report(args.kernel, tuple(args.path or PATHS), args.jobs)
    except KeyboardInterrupt:
        sys.exit(f"interrupted: {args.out} left as it was")
    written = merged(previous, result) if previous else result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")  # a run killed while writing leaves `out` whole
    partial.write_text(json.dumps(written, indent=1) + "\n")
    partial.replace(args.out)
    for row in result["rows"]:
        limits = violations(Row(**row)) if row["path"] == PATHS[0] else [row["error"]] if row["error"] else []
        bad = "; ".join(limits + row["asm_layout"])
        print(f"{row['kernel']:16s} {row['path']:11s} {row['config']:34s} "
              f"{row['instr_per_byte'] or '-':>6} instr/B {row['l1_bytes_per_byte'] or '-':>6} L1 B/B "
              f"{row['load_bits'] or '-':>4} bit "
              f"{str(row['ceiling_vs_fp16']) + 'x' if row['ceiling_vs_fp16'] else '-':>6} fp16 "
              f"{row['registers'] or '-':>4} regs {row['spill_bytes'] if row['spill_bytes'] is not None else '-':>4} "
              f"spill {row['resident_ctas'] or '-':>2}/SM  min {min(row['ctas'].values(), default='-'):>5} CTAs  "
              f"{bad}", flush=True)
    for fmt in result["formats_without_spec"]:
        print(f"{fmt}: its kernel module declares no STATIC specs: not compiled")
    print(f"updated {len(result['rows'])} of the {len(written['rows'])} rows of {args.out}" if previous
          else f"wrote {args.out}")
    return 1 if any(row["error"] or row["asm_layout"] for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
