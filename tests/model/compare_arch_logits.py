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
  int4: rounding-order noise can only matter where it flips the rounding of an int8 activation
        (or an int4 weight never: weights are quantized from the same bits); a flip is one
        quantization step, part of the error that int4 already makes against fp32. So the
        difference cannot exceed the int4-vs-fp32 error of the same run: tol = max |int4 - fp32|
        over all positions on x86 (measured here), plus the fp32 tolerance.
One "ok:"/"FAIL:" line per check.
"""
import argparse
import json
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
    """[(ids_by_score, {id: logit})] per position from `cpuchat logits --top vocab`."""
    return [[(int(i), float(v)) for i, v in p["top"]] for p in logits_json["positions"]]


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
                                 str(greedy["steps"]), "--temperature", "0", "--ignore-eos", "--json"]
        return run(cmd, os.path.join(a.work, f"greedy-{which}-{backend}.json"))["ids"]

    seqs = [(s["name"], s["token_ids"]) for s in fx["sequences"]]
    x86 = {(b, n): logits("x86", b, ids, n) for b in ("fp32", "int4") for n, ids in seqs}
    # int4 tolerance: the int4-vs-fp32 error of this model on these sequences (x86).
    quant_err = 0.0
    for n, _ in seqs:
        for r4, r32 in zip(x86[("int4", n)], x86[("fp32", n)]):
            d32 = dict(r32)
            quant_err = max(quant_err, max(abs(v - d32[i]) for i, v in r4))
    tolerance = {"fp32": lambda ref: 1e-4 + 1e-5 * abs(ref), "int4": lambda ref: quant_err + 1e-4 + 1e-5 * abs(ref)}
    print(f"tolerances: fp32 1e-4 + 1e-5|x|; int4 {quant_err:.4f} (max |int4 - fp32| on x86) + the fp32 one")

    for backend in ("fp32", "int4"):
        tol = tolerance[backend]
        for n, ids in seqs:
            ref, got = x86[(backend, n)], logits("arm", backend, ids, n)
            worst, worst_excess, argmax_bad, ties = 0.0, -1.0, 0, 0
            for rx, ra in zip(ref, got):
                da = dict(ra)
                for i, v in rx:
                    d = abs(da[i] - v)
                    worst = max(worst, d)
                    worst_excess = max(worst_excess, d - tol(v))
                if rx[0][0] != ra[0][0]:
                    if margin(rx) < tol(rx[0][1]):
                        ties += 1
                    else:
                        argmax_bad += 1
            check(len(ref) == len(got) == len(ids) and worst_excess <= 0,
                  f"{backend} '{n}' ({len(ids)} positions x {len(ref[0])} logits): max |arm - x86| = {worst:.3g}")
            check(argmax_bad == 0, f"{backend} '{n}': argmax equal at every position"
                  + (f" except {ties} near-ties" if ties else ""))
        ids_x86, ids_arm = generate("x86", backend), generate("arm", backend)
        if ids_x86 == ids_arm:
            check(len(ids_x86) == greedy["steps"], f"{backend} greedy: {len(ids_x86)} ids identical")
            continue
        step = next(i for i, (p, q) in enumerate(zip(ids_x86, ids_arm)) if p != q)
        prefix = greedy["prompt_ids"] + ids_x86[:step]
        row = logits("x86", backend, prefix, f"divergence{step}")[-1]
        check(margin(row) < tol(row[0][1]),
              f"{backend} greedy: first divergence at step {step} is a near-tie (top1 - top2 = {margin(row):.3g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
