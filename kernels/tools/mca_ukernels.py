#!/usr/bin/env python3
"""Static throughput model of each INT4 micro-kernel's per-group loop with llvm-mca (run by hand).

Every micro-kernel marks the body of its loop over 32-K groups with CPUCHAT_MCA_BEGIN/END
(ukernels/ukernel.h: assembler comments, emitted only with -DCPUCHAT_MCA_MARKERS, which this
script adds; the build compiles them to nothing). This script compiles each kernel
file with the compiler and the flags of the build (-O3 -ffp-contract=off and the file's ISA
flags, read from kernels/CMakeLists.txt), cuts the marked regions out of the assembly, runs
llvm-mca on each for the given cores and prints, per 32-K group:
  cycles, weight bytes per cycle (GEMV), int8 MACs per cycle (GEMM), and the busiest unit.

  python3 kernels/tools/mca_ukernels.py                    # aarch64 kernels: neoverse-v2, -v1, -n1
  python3 kernels/tools/mca_ukernels.py --x86              # x86 kernels on znver4
  python3 kernels/tools/mca_ukernels.py --mcpu neoverse-v2 --kernel 4x8_neon_dotprod --show-asm

Needs aarch64-linux-gnu-g++ (scripts/install-deps.sh --test) and Debian's llvm-22 (llvm-mca with
the Neoverse V2/V1/N1 models). A region that still contains a loop (a label and a branch back)
means the compiler did not unroll it; --inner-trips N repeats that loop body N times instead.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kernels/ (or --root)

# Packed weight bytes of one 32-K group of `cols` output columns: 32 nibbles (16 B) per column,
# plus one bf16 scale per column for q4g32 (both layouts; q4c's row scales are read once per row).
def group_bytes(scheme, cols):
    return cols * (16 + (2 if scheme == 1 else 0))


KERNELS = ("1x16_avx2", "1x16_avx512vnni", "4x8_avx2", "6x32_avx512vnni", "1x8_neon_dotprod", "4x8_neon_dotprod",
           "4x8_neon_i8mm")
FLAGS_VAR = {"avx2": "X86_AVX2", "avx512vnni": "X86_AVX512VNNI", "neon_dotprod": "ARM_DOTPROD",
             "neon_i8mm": "ARM_I8MM"}
SCHEME = {1: "q4g32", 2: "q4c"}


def kernel_files(arch):
    for f in sorted(os.listdir(os.path.join(ROOT, "src", "ukernels"))):
        m = re.match(r"matmul_q8b32_q4p\w+?_(\d+x\d+_(\w+))\.cpp$", f)
        if m and m.group(1) in KERNELS and (("neon" in f) == (arch == "aarch64")):
            yield f, m.group(1), m.group(2)


def build_flags():
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    isa = {m.group(1): m.group(2).split() for m in re.finditer(r"set\(CPUCHAT_(\w+)_FLAGS ([^)]*)\)", text)}
    common = re.search(r"target_compile_options\(cpuchat_kernels PRIVATE ([^)]*)\)", text).group(1).split()
    return common, isa


def compile_to_asm(cxx, path, flags):
    cmd = [cxx, "-std=gnu++17", "-DNDEBUG", "-DCPUCHAT_MCA_MARKERS", *flags, "-I", os.path.join(ROOT, "include"), "-I",
           os.path.join(ROOT, "src"), "-S", "-o", "-", path]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def regions(asm):
    """{name: [instruction lines]} of the first copy of each marked region."""
    out, current, lines = {}, None, []
    for line in asm.splitlines():
        m = re.search(r"LLVM-MCA-(BEGIN|END) (\S+)", line)
        if m:
            if m.group(1) == "BEGIN":
                current, lines = m.group(2), []
            elif current:
                out.setdefault(current, lines)
                current = None
            continue
        if current is not None:
            s = line.split("//")[0].rstrip() if "//" in line else line.rstrip()
            if s.strip() and not s.strip().startswith((".cfi", ".p2align", ".loc", "#")):
                # GCC prints a byte immediate of movi sign-extended (0xfffffffffffffff0); LLVM wants 0xf0
                lines.append(re.sub(r"(movi\s+v\d+\.(?:8|16)b,\s*)0xf{14}([0-9a-f]{2})$", r"\g<1>0x\2", s))
    return out


def unroll_inner_loop(lines, trips):
    """Repeats the body of a loop that the compiler left inside a region `trips` times."""
    labels = {l.strip()[:-1]: i for i, l in enumerate(lines) if re.match(r"^\.?\w+:$", l.strip())}
    for i, l in enumerate(lines):
        m = re.match(r"\s*(b\.\w+|bne|beq|blt|bgt|ble|bge|cbnz|cbz|tbnz|tbz|j\w+)\s+(?:.*,\s*)?(\.\w+)$", l)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            start = labels[m.group(2)]
            body = [x for x in lines[start + 1:i + 1] if not x.strip().endswith(":")]
            return lines[:start] + body * trips + lines[i + 1:], True
    return lines, False


def has_loop(lines):
    return any(re.match(r"^\.?\w+:$", l.strip()) for l in lines)


def run_mca(mca, triple, mcpu, lines, iterations=200):
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(l for l in lines if not l.strip().endswith(":")) + "\n")
        path = f.name
    try:
        r = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={mcpu}", f"-iterations={iterations}",
                            "-resource-pressure", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[0] if r.stderr else "llvm-mca failed")
    text = r.stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", text).group(1)) / iterations
    insts = int(re.search(r"Instructions:\s+(\d+)", text).group(1)) // iterations
    uops = int(re.search(r"Total uOps:\s+(\d+)", text).group(1)) / iterations
    # "Resource pressure per iteration:" then a header of [n] ids and a row of numbers.
    names = dict(re.findall(r"^\[(\d+(?:\.\d+)?)\]\s+-\s+(\S+)", text, re.M))
    m = re.search(r"Resource pressure per iteration:\n(.*)\n(.*)\n", text)
    ids = re.findall(r"\[([\d.]+)\]", m.group(1))
    vals = [0.0 if v == "-" else float(v) for v in m.group(2).split()]
    pressure = {names.get(i, i): v for i, v in zip(ids, vals)}
    unit, busy = max(pressure.items(), key=lambda kv: kv[1])
    return cycles, insts, uops, unit, busy, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--x86", action="store_true", help="the x86 kernels (default: the aarch64 ones)")
    ap.add_argument("--mcpu", action="append", help="llvm-mca -mcpu (repeatable)")
    ap.add_argument("--kernel", help="only this kernel, e.g. 4x8_neon_dotprod")
    ap.add_argument("--inner-trips", type=int, default=0, help="repeat a loop left inside a region N times")
    ap.add_argument("--all-tiles", action="store_true", help="also the remainder tiles (m % 4 rows, ...)")
    ap.add_argument("--show-asm", action="store_true", help="print each region's instructions")
    ap.add_argument("--root", help="another copy of kernels/ (e.g. an older commit's) to analyse")
    ap.add_argument("--mca", default=shutil.which("llvm-mca-22") or "/usr/lib/llvm-22/bin/llvm-mca")
    args = ap.parse_args()
    global ROOT
    ROOT = os.path.abspath(args.root) if args.root else ROOT

    arch = "x86_64" if args.x86 else "aarch64"
    cxx = "g++" if args.x86 else "aarch64-linux-gnu-g++"
    triple = "x86_64-linux-gnu" if args.x86 else "aarch64-linux-gnu"
    cpus = args.mcpu or (["znver4"] if args.x86 else ["neoverse-v2", "neoverse-v1", "neoverse-n1"])
    common, isa_flags = build_flags()
    print(f"{cxx} ({subprocess.run([cxx, '-dumpfullversion'], capture_output=True, text=True).stdout.strip()}), "
          f"{os.path.basename(args.mca)}; per 32-K group; tile = activation rows x output columns of the register tile")
    print(f"| kernel | scheme | tile | -mcpu | instructions | cycles / group | B / cycle | MAC / cycle | busiest unit (cycles / group) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f, kernel, isa in kernel_files(arch):
        if args.kernel and args.kernel != kernel:
            continue
        flags = common + isa_flags[FLAGS_VAR[isa]]
        found = regions(compile_to_asm(cxx, os.path.join(ROOT, "src", "ukernels", f), flags))
        for name in sorted(found):
            m = re.match(r"(\w+)_s(\d)_m(\d+)_n(\d+)_g(\d+)$", name)
            scheme, m_rows, n_cols, groups = (int(m.group(i)) for i in range(2, 6))
            if f"{m_rows}x{n_cols}" != kernel.split("_")[0] and not args.all_tiles:  # main tile only
                continue
            cols, nbytes = n_cols, groups * group_bytes(scheme, n_cols)
            lines = found[name]
            note = ""
            if has_loop(lines):
                if args.inner_trips:
                    lines, _ = unroll_inner_loop(lines, args.inner_trips)
                    note = f" (inner loop x{args.inner_trips})"
                else:
                    note = " (loop left in region: one trip counted; see --inner-trips)"
            if args.show_asm:
                print("\n".join(lines))
            for cpu in cpus:
                if isa == "neon_i8mm" and cpu == "neoverse-n1":
                    print(f"| {kernel} | {SCHEME[scheme]} | {m_rows}x{n_cols} | {cpu} | no i8mm on this core | | | | |")
                    continue
                cycles, insts, uops, unit, busy, _ = run_mca(args.mca, triple, cpu, lines)
                per_group = cycles / groups
                bpc = f"{nbytes / cycles:.1f}" if m_rows == 1 else ""
                macs = f"{m_rows * cols * 32 * groups / cycles:.1f}"
                print(f"| {kernel}{note} | {SCHEME[scheme]} | {m_rows}x{n_cols} | {cpu} | {insts // groups} | {per_group:.1f} | "
                      f"{bpc} | {macs} | {unit} ({busy / groups:.1f}) |")


if __name__ == "__main__":
    sys.exit(main())
