"""Builds RESULTS-gpu.md and results.json from a bench/gpu/check.sh run.

    python3 bench/gpu/report.py --out OUT

Reads OUT/env.txt, OUT/stages.tsv, OUT/ours.jsonl (checker: op checks, model fixtures, kernel and model
timings) and OUT/torch.jsonl (torch_peer.py). Ratios are PyTorch time / our time: above 1 means ours is
faster. Needs only the Python standard library.
"""
import argparse
import json
import os


def read_jsonl(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return rows


def fmt(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}"


def ratio(theirs, ours):
    return None if not theirs or not ours else theirs / ours


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = args.out
    env = open(os.path.join(out, "env.txt")).read().strip() if os.path.exists(os.path.join(out, "env.txt")) else ""
    stages = []
    if os.path.exists(os.path.join(out, "stages.tsv")):
        for line in open(os.path.join(out, "stages.tsv")):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                stages.append(dict(stage=parts[0], status=parts[1], detail=parts[2] if len(parts) > 2 else ""))
    ours = read_jsonl(os.path.join(out, "ours.jsonl"))
    torch_rows = read_jsonl(os.path.join(out, "torch.jsonl"))

    checks = [r for r in ours if "check" in r]
    failed_checks = sorted({r["check"] for r in checks if not r.get("ok")})
    fixtures = [r for r in ours if "model" in r and "output" in r]
    kern_all = [r for r in ours if r.get("bench") in ("dwconv7x7", "attention")]
    kern = [r for r in kern_all if r.get("precision", "fp32") == "fp32"]

    def ours_bf16(r):  # our bf16-precision timing of the same kernel, direction, shape and batch
        return next((k["ms"] for k in kern_all if k.get("precision") == "bf16" and k["bench"] == r["bench"]
                     and k["dir"] == r["dir"] and k["shape"] == r["shape"] and k["batch"] == r["batch"]), None)
    mods = [r for r in ours if r.get("bench") == "model"]
    node_mods = [r for r in ours if r.get("bench") == "node-model"]
    node_graphs = [r for r in ours if r.get("bench") == "node-model-graphs"]
    profiles = [r for r in ours if "profile" in r]

    def peer(kind, d, shape, batch, dtype, variant=None):
        for r in torch_rows:
            if (r.get("kind") == kind and r.get("dir") == d and r.get("shape") == shape and r.get("batch") == batch
                    and r.get("dtype") == dtype and (variant is None or r.get("variant") == variant)):
                return r["ms"]
        return None

    def peer_model(name, batch, dtype, variant):
        for r in torch_rows:
            if (r.get("kind") == "model" and r.get("model") == name and r.get("batch") == batch and r.get("dtype") == dtype
                    and r.get("variant") == variant):
                return r
        return None

    lines = ["# GPU results", "", "Produced by `bench/gpu/check.sh` (one run; medians of CUDA-event timings).", ""]
    lines += ["## Machine", "", "```", env, "```", ""]
    lines += ["## Stages", "", "| stage | status | detail |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['detail']} |" for s in stages]
    lines += ["", "## Op checks (CUDA vs the reference backend)", ""]
    n_ok = len({r["check"] for r in checks}) - len(failed_checks)
    lines.append(f"{n_ok} checks passed, {len(failed_checks)} failed (relative L2 per output; tolerances in "
                 "native/cuda/tests/check_ops.cpp).")
    for c in failed_checks:
        lines.append(f"- FAILED: {c}")
    if fixtures:
        lines += ["", "## Model fixtures on the GPU (float64 reference, per-tensor suggested tolerance)", "",
                  "bf16: the logits are judged against 2e-2; its other outputs are shown, not judged.", "",
                  "| plan | precision | output | rel L2 | tolerance | ok |", "|---|---|---|---|---|---|"]
        for r in fixtures:
            verdict = "—" if r.get("judged") is False else ("yes" if r.get("ok") else "NO")
            lines.append(f"| {r['model']} | {r.get('precision', 'fp32')} | {r.get('output', '')} | "
                         f"{r.get('rel_l2', float('nan')):.2e} | {r.get('tol', 0):.1e} | {verdict} |")
    if kern:
        lines += ["", "## Kernels: ours beside PyTorch (cuDNN depthwise conv / scaled_dot_product_attention)", "",
                  "Ratio = PyTorch ms / our ms in the same precision (above 1: ours faster). Ours in bf16: the "
                  "attention forward as bf16 plans run it (tensor cores); other kernels have no bf16 variant.", "",
                  "| kernel | dir | shape | B | ours fp32 ms | GB/s | PyTorch fp32 ms | ratio | ours bf16 ms | "
                  "PyTorch bf16 ms | ratio bf16 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in kern:
            kind = r["bench"]
            t32 = peer(kind, r["dir"], r["shape"], r["batch"], "float32")
            t16 = peer(kind, r["dir"], r["shape"], r["batch"], "bfloat16")
            o16 = ours_bf16(r)
            lines.append(f"| {kind} | {r['dir']} | {r['shape']} | {r['batch']} | {fmt(r['ms'], 4)} | {r['gbps']:.0f} | "
                         f"{fmt(t32, 4)} | {fmt(ratio(t32, r['ms']), 2)} | {fmt(o16, 4)} | {fmt(t16, 4)} | "
                         f"{fmt(ratio(t16, o16), 2)} |")
    model_names = sorted({r["name"].rsplit("_b", 1)[0] for r in mods} |
                         {r["model"] for r in torch_rows if r.get("kind") == "model"})
    if model_names:
        lines += ["", "## Models at 224x224 (inference, images/s)", "",
                  "Ours: plan replay, fp32 (true fp32) and bf16 (matrix-product operands in bfloat16, fp32 accumulation "
                  "and activations). PyTorch: timm, channels_last, TF32 off; bf16 = weights and input in bfloat16. "
                  "Ratio = ours / PyTorch eager in the same precision (above 1: ours faster). Last columns: predict() of "
                  "a { device: 'cuda' } model from Node (its plan on the device, input there, timed to completion), "
                  "step by step (METAFORMER_CUDA_GRAPHS=0) and with graphs (the default: the plan recorded once as a CUDA "
                  "graph and replayed).", "",
                  "| model | B | ours fp32 | PyTorch eager fp32 | ratio | ours bf16 | PyTorch eager bf16 | ratio | "
                  "PyTorch compile bf16 | ours from Node fp32 / bf16 | with graphs fp32 / bf16 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]

        def ours_ips(name, b, prec, rows=mods):
            o = next((r for r in rows if r["name"] == f"{name}_b{b}" and r.get("precision", "fp32") == prec), None)
            return o["img_per_s"] if o else None

        for name in model_names:
            for b in (1, 64, 256):
                o32, o16 = ours_ips(name, b, "fp32"), ours_ips(name, b, "bf16")
                e32 = peer_model(name, b, "float32", "eager")
                e16 = peer_model(name, b, "bfloat16", "eager")
                c16 = peer_model(name, b, "bfloat16", "compile")
                p32 = e32 and e32["img_per_s"]
                p16 = e16 and e16["img_per_s"]
                n32, n16 = ours_ips(name, b, "fp32", node_mods), ours_ips(name, b, "bf16", node_mods)
                g32, g16 = ours_ips(name, b, "fp32", node_graphs), ours_ips(name, b, "bf16", node_graphs)
                lines.append(f"| {name} | {b} | {fmt(o32, 1)} | {fmt(p32, 1)} | {fmt(ratio(o32, p32), 2)} | "
                             f"{fmt(o16, 1)} | {fmt(p16, 1)} | {fmt(ratio(o16, p16), 2)} | "
                             f"{fmt(c16 and c16['img_per_s'], 1)} | {fmt(n32, 1)} / {fmt(n16, 1)} | "
                             f"{fmt(g32, 1)} / {fmt(g16, 1)} |")
    if profiles:
        lines += ["", "## Where our GPU time goes (one pass, each step waited for; summed per op)", "",
                  "| plan | precision | B | top ops: ms (share) |", "|---|---|---|---|"]
        for r in profiles:
            ops = sorted(r["ops"].items(), key=lambda kv: -kv[1])
            total = sum(v for _, v in ops) or 1.0
            top = ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in ops[:6])
            lines.append(f"| {r['profile']} | {r['precision']} | {r['batch']} | {top} |")
    log = os.path.join(out, "check.log")
    ncu = [l.rstrip() for l in open(log, errors="replace")] if os.path.exists(log) else []
    ncu = [l[5:] for l in ncu if l.startswith("NCU  ")]
    if ncu:
        lines += ["", "## Hardware profile (Nsight Compute; one launch of each kernel, batch 64)", "",
                  "kernel, duration, memory and SM throughput (% of peak), achieved occupancy, registers per thread "
                  "(check.sh's ncu stage; details in ncu.txt).", "", "```"] + ncu + ["```"]
    hostcpu = os.path.join(out, "hostcpu.txt")
    if os.path.exists(hostcpu):
        lines += ["", "## This machine's CPU: bf16 mode (issue 5), caformer_s18 at 224", "",
                  "Ours fp32 and bf16 (the bench models suite) and onnxruntime's CPU EP fp32 on the ONNX file our "
                  "exporter writes, same thread count, beside the GPU stages (bench/gpu/host_cpu.sh).", "", "```",
                  open(hostcpu).read().rstrip(), "```"]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "RESULTS-gpu.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(env=env, stages=stages, failed_checks=failed_checks, fixtures=fixtures, kernels=kern,
                       models=mods, torch=torch_rows), f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
