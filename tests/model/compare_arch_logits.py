#!/usr/bin/env python3
"""x86 vs aarch64: the same checkpoint and ids through two builds of cpuchat (scripts/test-aarch64.sh).

The int4 kernels are bit-exact against one reference on every ISA, but the float code around
them (attention, norms, softmax; libtorch's BLAS for fp32) may round differently per ISA. This
compares, for the fp32 and the int4 backends, on the fixture's sequences and its greedy prompt:
  - every logit of every position (`cpuchat logits --top <vocab>`): |arm - x86| <= tol;
  - the argmax of every position: equal, or a near-tie (x86 top1 - top2 < tol);
  - the greedy ids (`cpuchat generate --temperature 0 --ignore-eos`, fixture steps >= 24): equal,
    or the first divergence is a near-tie (top1 - top2 at that step below tol).
Tolerances (derived, printed with the measured values):
  fp32: the fixture's own tolerance for fp32 implementations, |d| <= 1e-4 + 1e-5 |x86| (fp32
        rounding between implementations is ~1e-5 on logits up to ~20).
  int4: the weights are the same bits and the kernels bit-exact, so float rounding-order noise
        (the fp32 size above) can change int4 results only where it flips the rounding of an
        int8 activation. A flip moves one activation by one quantization step: one of the
        thousands of half-step roundings whose combined effect is the int4 error itself,
        E_p = max_i |int4 - fp32| at position p on x86. We allow a quarter of it per position,
        tol_p = E_p / 4 + the fp32 tolerance, and require arm's int4 to be as accurate as x86's
        (RMS error against fp32 within 1 %): flips are noise, not a bias.
  A differing argmax (or greedy id) must be a near-tie: the x86 top1 - top2 margin smaller than
  twice the largest |arm - x86| measured at that position (both can move by that much).
One "ok:"/"FAIL:" line per check.
"""
import argparse
import json
import math
import os
import subprocess
import sys


def run(cmd, out_path):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-12:])}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    with open(out_path, "w") as f:
        f.write(r.stdout)
    return json.loads(r.stdout)


def rows_of(logits_json):
    """[(id, logit) by score] per position from `cpuchat logits --top vocab` (NaN/inf print as null)."""
    return [[(int(i), float("nan") if v is None else float(v)) for i, v in p["top"]] for p in logits_json["positions"]]


def non_finite_positions(rows):
    return [p for p, r in enumerate(rows) if any(not math.isfinite(v) for _, v in r)]


def margin(row):
    return row[0][1] - row[1][1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--x86", required=True, help="the x86 cpuchat")
    ap.add_argument("--arm", nargs=argparse.REMAINDER, required=True, help="command that runs the aarch64 cpuchat")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    fx = json.load(open(a.fixture))
    greedy = fx["greedy"]
    assert greedy["steps"] >= 24, "the greedy check needs at least 24 generated tokens"
    binaries = {"x86": [a.x86], "arm": a.arm}
    failures = 0

    def check(ok, what):
        nonlocal failures
        print(("ok: " if ok else "FAIL: ") + what)
        failures += 0 if ok else 1

    def logits(which, backend, ids, name):
        cmd = binaries[which] + ["logits", "--model", a.model, "--backend", backend, "--threads", "2",
                                 "--ids", ",".join(map(str, ids)), "--top", "1000"]
        return rows_of(run(cmd, os.path.join(a.work, f"logits-{which}-{backend}-{name}.json")))

    def generate(which, backend):
        cmd = binaries[which] + ["generate", "--model", a.model, "--backend", backend, "--threads", "2",
                                 "--ids", ",".join(map(str, greedy["prompt_ids"])), "--max-tokens",
                                 str(greedy["steps"]), "--temperature", "0", "--ignore-eos", "--json",
                                 "--kv-type", "fp32"]  # the cache the divergence re-check (logits) uses
        return run(cmd, os.path.join(a.work, f"greedy-{which}-{backend}.json"))["ids"]

    seqs = [(s["name"], s["token_ids"]) for s in fx["sequences"]]
    x86 = {(b, n): logits("x86", b, ids, n) for b in ("fp32", "int4") for n, ids in seqs}
    for (b, n), rows in x86.items():
        bad = non_finite_positions(rows)
        if bad:
            check(False, f"x86 {b} '{n}': non-finite logits at {len(bad)} positions, from position {bad[0]}")
            return 1
    fp32_tol = lambda ref: 1e-4 + 1e-5 * abs(ref)
    # int4: a quarter of the int4-vs-fp32 error of each position (x86), plus the fp32 tolerance.
    quant_err = {n: [max(abs(v - dict(r32)[i]) for i, v in r4) for r4, r32 in zip(x86[("int4", n)], x86[("fp32", n)])]
                 for n, _ in seqs}
    print("tolerances: fp32 1e-4 + 1e-5|x|; int4 E_p/4 + that, E_p = max |int4 - fp32| at position p on x86 "
          f"(E_p from {min(min(e) for e in quant_err.values()):.3f} to {max(max(e) for e in quant_err.values()):.3f})")

    def rms(rows_a, rows_b):
        total = sum((v - dict(rb)[i]) ** 2 for ra, rb in zip(rows_a, rows_b) for i, v in ra)
        return (total / sum(len(r) for r in rows_a)) ** 0.5

    def diffs(rows_a, rows_b):
        return [max(abs(dict(rb)[i] - v) for i, v in ra) for ra, rb in zip(rows_a, rows_b)]

    for backend in ("fp32", "int4"):
        for n, ids in seqs:
            ref, got = x86[(backend, n)], logits("arm", backend, ids, n)
            bad = non_finite_positions(got)
            if bad:
                check(False, f"arm {backend} '{n}': non-finite logits at {len(bad)} positions, from position {bad[0]}")
                continue
            if not (len(ref) == len(got) == len(ids)):
                check(False, f"{backend} '{n}': {len(got)} positions, want {len(ids)}")
                continue
            d = diffs(ref, got)
            worst_excess, argmax_bad, ties = -1.0, 0, 0
            for p, (rx, ra) in enumerate(zip(ref, got)):
                for i, v in rx:
                    tol = fp32_tol(v) + (quant_err[n][p] / 4 if backend == "int4" else 0.0)
                    worst_excess = max(worst_excess, abs(dict(ra)[i] - v) - tol)
                if rx[0][0] != ra[0][0]:
                    if margin(rx) < 2 * d[p]:
                        ties += 1
                    else:
                        argmax_bad += 1
            changed = sum(v > fp32_tol(0.0) for v in d)
            check(worst_excess <= 0, f"{backend} '{n}' ({len(ids)} positions x {len(ref[0])} logits): max |arm - x86| = "
                  f"{max(d):.3g}, {changed} positions differ by more than 1e-4"
                  + (f", max |arm - x86| / E_p = {max(x / e for x, e in zip(d, quant_err[n])):.3f}" if backend == "int4" else ""))
            check(argmax_bad == 0, f"{backend} '{n}': argmax equal at every position"
                  + (f" except {ties} near-ties (x86 margin < 2 |arm - x86|)" if ties else ""))
            if backend == "int4":
                rx, ra = rms(ref, x86[("fp32", n)]), rms(got, x86[("fp32", n)])
                check(ra <= 1.01 * rx + 1e-4, f"int4 '{n}': RMS error against fp32 {ra:.4f} on arm, {rx:.4f} on x86")
        ids_x86, ids_arm = generate("x86", backend), generate("arm", backend)
        if ids_x86 == ids_arm:
            check(len(ids_x86) == greedy["steps"], f"{backend} greedy: {len(ids_x86)} ids identical")
            continue
        step = next(i for i, (p, q) in enumerate(zip(ids_x86, ids_arm)) if p != q)
        prefix = greedy["prompt_ids"] + ids_x86[:step]
        rx = logits("x86", backend, prefix, f"divergence{step}")[-1]
        ra = logits("arm", backend, prefix, f"divergence{step}")[-1]
        d = diffs([rx], [ra])[0]
        # The perturbation itself must be within tolerance (the largest per-position int4 one).
        limit = fp32_tol(rx[0][1]) + (max(max(e) for e in quant_err.values()) / 4 if backend == "int4" else 0.0)
        check(margin(rx) < 2 * d <= 2 * limit, f"{backend} greedy: first divergence at step {step} is a near-tie "
              f"(top1 - top2 = {margin(rx):.3g}, |arm - x86| up to {d:.3g}, allowed {limit:.3g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
