#!/usr/bin/env python3
"""Turns bench_int4_matmul JSON output into the tables of kernels/README.md.

    bench_int4_matmul --benchmark_out=bench.json --benchmark_out_format=json ...
    python3 kernels/bench/summarize_bench.py bench1.json [bench2.json ...]

Over all repetitions in all files, the best run (highest rate) of each benchmark is used:
the machine is shared, and slower runs measure the neighbours, not the kernel.
It also estimates Llama 3.1 8B speeds from the per-shape times (32 layers of
q,o: 4096x4096; k,v: 1024x4096; gate,up: 14336x4096; down: 4096x14336; plus the
128256x4096 head): decode tok/s = 1 / sum(m=1 times); prefill tok/s = 128 / sum(m=128 times).
"""
import json
import sys
from collections import defaultdict

LAYER_COUNTS = {"qo_4096x4096": 2 * 32, "kv_1024x4096": 2 * 32, "gate_up_14336x4096": 2 * 32,
                "down_4096x14336": 32, "head_128256x4096": 1}
SHAPES = list(LAYER_COUNTS)


def main(paths):
    benchmarks = []
    for path in paths:
        with open(path) as f:
            benchmarks += json.load(f)["benchmarks"]
    best = {}  # name -> (rate, time_s, counters)
    for b in benchmarks:
        if b.get("run_type") == "aggregate" or "error_occurred" in b and b["error_occurred"]:
            continue
        name = b.get("run_name", b["name"])
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        t = b["real_time"] * scale
        rate = b.get("GB/s", b.get("GOPS", 0.0))
        if name not in best or rate > best[name][0]:
            best[name] = (rate, t, b)

    table = defaultdict(dict)  # (kind, scheme, isa, threads) -> shape -> (rate, t)
    memory = {}
    for name, (rate, t, b) in best.items():
        parts = name.replace("/real_time", "").split("/")
        if parts[0] == "memory_read":
            memory[parts[1]] = b["GB/s"]
            continue
        kind, scheme, shape, isa, threads = parts
        metric = b["GB/s"] if kind == "gemv_m1" else b["GOPS"]
        table[(kind, scheme, isa, threads)][shape] = (metric, t)

    for threads, gbs in sorted(memory.items()):
        print(f"memory read (plain loop), {threads}: {gbs:.1f} GB/s")
    print()
    for kind, unit in (("gemv_m1", "GB/s of packed weights"), ("gemm_m128", "GOPS (2*M*N*K/s)")):
        print(f"### {kind}: {unit}\n")
        est = "decode tok/s (8B)" if kind == "gemv_m1" else "prefill tok/s (8B, 128-token chunks)"
        print("| scheme | ISA | threads | " + " | ".join(SHAPES) + f" | {est} |")
        print("|---" * (len(SHAPES) + 4) + "|")
        for key in sorted(table):
            if key[0] != kind:
                continue
            row = table[key]
            cells = [f"{row[s][0]:.1f}" if s in row else "-" for s in SHAPES]
            if all(s in row for s in SHAPES):
                total = sum(LAYER_COUNTS[s] * row[s][1] for s in SHAPES)
                tok = (1.0 if kind == "gemv_m1" else 128.0) / total
                estimate = f"{tok:.1f}"
            else:
                estimate = "-"
            small = [s for s in row if s not in SHAPES]
            if small:
                cells = [f"{row[small[0]][0]:.1f} ({small[0]})"] + ["-"] * (len(SHAPES) - 1)
            print(f"| {key[1]} | {key[2]} | {key[3].split(':')[1]} | " + " | ".join(cells) + f" | {estimate} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench.json"])
