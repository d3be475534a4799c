"""PyTorch peer timings for bench/gpu/check.sh, on the same GPU and at the same shapes as our kernels.

    python3 bench/gpu/torch_peer.py --out torch.jsonl [--deadline SECONDS] [--quick]

Writes one JSON object per line:
  kernels: depthwise 7x7 conv (F.conv2d, groups=C, channels_last: the cuDNN path) and
           F.scaled_dot_product_attention on q, k, v sliced from a packed [B, N, 3A] qkv (as the model does),
           forward and backward, fp32 (TF32 off) and bf16, B = 1, 64, 256;
  models:  timm caformer_s18 / convformer_s18 at 224, eager fp32, eager bf16 (weights and input in bf16),
           both channels_last, B = 1, 64, 256; torch.compile of the bf16 model at B = 256 while time allows.
Order: the eager models, the kernels, then torch.compile (each stops when the deadline nears).
Timing: CUDA events around each call after warm-up, median. TF32 is disabled for fp32 (our kernels
compute true fp32). Prints one line per figure ('PEER ...'); never fails the whole run for one figure.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

START = time.time()


def left(deadline):
    return deadline - (time.time() - START)


def time_ms(fn, min_runs=10, max_runs=100, budget_s=1.5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.time()
    fn()
    torch.cuda.synchronize()
    est = max(time.time() - t0, 1e-5)
    runs = int(min(max_runs, max(min_runs, budget_s / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def emit(out, rec):
    out.write(json.dumps(rec) + "\n")
    out.flush()
    shape = rec.get("shape", rec.get("model", ""))
    print(f"PEER {rec['kind']:<10} {rec.get('dir', ''):<4} {shape:<24} B={rec['batch']:<4} {rec['dtype']:<9} "
          f"{rec.get('variant', ''):<14} {rec['ms']:9.4f} ms", flush=True)


def kernels(out, batches, deadline):
    dev = "cuda"
    for dtype in (torch.float32, torch.bfloat16):
        dname = "float32" if dtype == torch.float32 else "bfloat16"
        for B in batches:
            for H, C in ((56, 128), (28, 256), (14, 640), (7, 1024)):
                if left(deadline) < 20:
                    return
                try:
                    x = torch.randn(B, C, H, H, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
                    w = (torch.randn(C, 1, 7, 7, device=dev, dtype=dtype) / 7)
                    b = torch.randn(C, device=dev, dtype=dtype) * 0.1
                    shape = f"[B,{H},{H},{C}]"
                    ms = time_ms(lambda: F.conv2d(x, w, b, padding=3, groups=C))
                    emit(out, dict(kind="dwconv7x7", dir="fwd", shape=shape, batch=B, dtype=dname, variant="cudnn", ms=ms))
                    xg = x.detach().requires_grad_(True)
                    wg = w.detach().requires_grad_(True)
                    y = F.conv2d(xg, wg, None, padding=3, groups=C)
                    g = torch.randn_like(y)
                    ms = time_ms(lambda: torch.autograd.grad(y, (xg, wg), g, retain_graph=True))
                    emit(out, dict(kind="dwconv7x7", dir="bwd", shape=shape, batch=B, dtype=dname, variant="cudnn", ms=ms))
                    del x, w, b, xg, wg, y, g
                except Exception as e:  # one figure must not stop the others
                    print(f"ERROR dwconv B={B} {H}x{H}x{C} {dname}: {e}", flush=True)
            for N, heads in ((196, 10), (49, 16)):
                if left(deadline) < 20:
                    return
                try:
                    A = heads * 32
                    qkv = torch.randn(B, N, 3 * A, device=dev, dtype=dtype)

                    def split(t):
                        q, k, v = t.view(B, N, 3, heads, 32).permute(2, 0, 3, 1, 4).unbind(0)
                        return q, k, v

                    def fwd():
                        q, k, v = split(qkv)
                        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, A)

                    shape = f"N={N} heads={heads}"
                    ms = time_ms(fwd)
                    emit(out, dict(kind="attention", dir="fwd", shape=shape, batch=B, dtype=dname, variant="sdpa", ms=ms))
                    qg = qkv.detach().requires_grad_(True)
                    q, k, v = split(qg)
                    o = F.scaled_dot_product_attention(q, k, v)
                    g = torch.randn_like(o)
                    ms = time_ms(lambda: torch.autograd.grad(o, qg, g, retain_graph=True))
                    emit(out, dict(kind="attention", dir="bwd", shape=shape, batch=B, dtype=dname, variant="sdpa", ms=ms))
                    del qkv, qg, q, k, v, o, g
                except Exception as e:
                    print(f"ERROR attention B={B} N={N} {dname}: {e}", flush=True)
        torch.cuda.empty_cache()


def make_model(name, dtype):
    import timm
    return timm.create_model(name, pretrained=False).cuda().eval().to(dtype).to(memory_format=torch.channels_last)


def models(out, batches, deadline, phase):
    try:
        import timm  # noqa: F401
    except Exception as e:
        print(f"SKIP models: timm is not importable ({e})", flush=True)
        return
    names = ("caformer_s18", "convformer_s18")
    for name in (names if phase == "eager" else ()):  # eager: every figure the targets need
        for dtype in (torch.float32, torch.bfloat16):
            dname = "float32" if dtype == torch.float32 else "bfloat16"
            try:
                model = make_model(name, dtype)
            except Exception as e:
                print(f"ERROR model {name}: {e}", flush=True)
                continue
            for B in batches:
                if left(deadline) < 25:
                    return
                try:
                    x = torch.randn(B, 3, 224, 224, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
                    with torch.inference_mode():
                        ms = time_ms(lambda: model(x), min_runs=5, max_runs=50, budget_s=2.0)
                    emit(out, dict(kind="model", model=name, batch=B, dtype=dname, variant="eager", ms=ms,
                                   img_per_s=B / (ms * 1e-3)))
                    del x
                except Exception as e:
                    print(f"ERROR model {name} B={B} {dname}: {e}", flush=True)
            del model
            torch.cuda.empty_cache()
    if phase != "compile":
        return
    B = batches[-1]
    for name in names:  # then torch.compile (bf16, the largest batch) while time allows
        if left(deadline) < 150:
            print(f"SKIP torch.compile {name}: {left(deadline):.0f}s left", flush=True)
            continue
        try:
            model = make_model(name, torch.bfloat16)
            t0 = time.time()
            cm = torch.compile(model)
            x = torch.randn(B, 3, 224, 224, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            with torch.inference_mode():
                cm(x)
                torch.cuda.synchronize()
                compile_s = time.time() - t0
                ms = time_ms(lambda: cm(x), min_runs=5, max_runs=50, budget_s=2.0)
            emit(out, dict(kind="model", model=name, batch=B, dtype="bfloat16", variant="compile", ms=ms,
                           img_per_s=B / (ms * 1e-3), compile_s=round(compile_s, 1)))
            del cm, x, model
        except Exception as e:
            print(f"ERROR torch.compile {name}: {str(e)[:300]}", flush=True)
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=300.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("SKIP no CUDA device visible to PyTorch", flush=True)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    batches = [1, 64] if args.quick else [1, 64, 256]
    with open(args.out, "w") as out:
        out.write(json.dumps(dict(kind="env", device=torch.cuda.get_device_name(), torch=torch.__version__,
                                  cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), batch=0,
                                  dtype="", ms=0)) + "\n")
        # the models first (the targets), then the kernels, then torch.compile while time allows
        models(out, batches, args.deadline, "eager")
        kernels(out, batches, args.deadline)
        if not args.no_compile:
            models(out, batches, args.deadline, "compile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
