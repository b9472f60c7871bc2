"""Ahead-of-time sm_90 (H100/H200) checks of every Triton kernel and config — no GPU needed.

The CPU tests run the kernels under Triton's interpreter, which is lenient where the compiler is not and blind to
how the code runs: a tile that falls back from wgmma to mma.sync, spills registers to local memory or overflows
shared memory shows only on a Hopper GPU, as a slow or failing launch (and autotuning just hides a slow config).
So every (kernel, variant, dtype, config) the host functions can launch — after the same pruning — is compiled here
for GPUTarget("cuda", 90, 32) with the JIT's specialisation for aligned channels_last tensors, and its PTX is run
through Triton's bundled ptxas (-v: registers, spill bytes) and the cubin through nvdisasm (where the spills are).
A check fails when a 16-bit or TF32 tl.dot does not use wgmma, a loop spills, a tensor-core (wgmma) GEMM spills at
all, shared memory passes 227 KB, or the compile fails. Other spills outside every loop pass (with --strict they fail
too): ptxas parks a few loop-invariant values (epilogue offsets) in local memory by itself to reach an occupancy
step, a handful of accesses per thread.

    python -m kernels.triton.sm90 [--jobs N] [--json FILE] [--dtype bf16 fp16 tf32 fp32 fp64] [--quick] [--strict]
                                  [--triton VERSION]

dtypes: bf16, fp16, tf32 (fp32 tensors, input_precision 'tf32'), fp32 (IEEE: FMA dots), fp64 (DMMA). Compiles run
in spawned worker processes with TRITON_INTERPRET=0 (the interpreter is chosen when triton is imported, so a
process that already runs it — the test suite — cannot compile).

What compiles well depends on the triton (its code generator and bundled ptxas), so CI checks two: the installed one
(tests/test_sm90.py, --quick) and the GPU machine's, 3.6.0 (``nox -s sm90 [-- VERSION]``, run by .ci/run: that
wheel in .nox/triton-VERSION, first on PYTHONPATH for that one command; ``--triton`` makes the check exit 2 when
another triton is the one imported, here or in a worker). Measured on a 2-vCPU VM with --jobs 2: 497 compiles with
--quick, 1065 without; every one passes with triton 3.6.0 (ptxas 12.8) and 3.8.0 (ptxas 12.9). --quick took
138–227 s, the full set 420–490 s (the triton and the VM's other load vary).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

#: H100/H200 shared memory per block (the opt-in maximum, 227 KB)
SMEM_LIMIT = 232448
DTYPES = ("bf16", "fp16", "tf32", "fp32", "fp64")
#: dtypes whose tl.dot must run on Hopper's warpgroup tensor cores
WGMMA_DTYPES = ("bf16", "fp16", "tf32")
_ELEM = {"bf16": "bf16", "fp16": "fp16", "tf32": "fp32", "fp32": "fp32", "fp64": "fp64"}
R = S = 3  # kernel size of every conv check (constexpr; 3×3 has the most general tap loops)


def parse_ptxas(log: str) -> dict:
    """Registers (the most of any function) and spill bytes (summed) from a ``ptxas -v`` log."""
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    return {"regs": max(regs, default=0),
            "spill_stores": sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log)),
            "spill_loads": sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", log))}


def hot_spills(sass: str) -> int:
    """Local-memory accesses (STL/LDL: in these kernels only spills) inside a loop of an ``nvdisasm`` listing, a
    loop being the address range a backward branch jumps over."""
    labels, insts, pending = {}, [], []
    for ln in sass.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", ln):
            pending.append(m.group(1))
        elif m := re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*)", ln):
            addr = int(m.group(1), 16)
            labels.update(dict.fromkeys(pending, addr))
            pending = []
            insts.append((addr, m.group(2)))
    loops = [(labels[t], a) for a, op in insts for t in re.findall(r"BRA\s+`\((\.L_x_\d+)\)", op)
             if labels.get(t, a + 1) <= a]
    return sum(1 for a, op in insts if re.match(r"(@!?U?P\w+\s+)?(STL|LDL)\b", op)
               and any(lo <= a <= hi for lo, hi in loops))


def tool_path(name: str) -> str | None:
    """Triton's bundled ptxas / nvdisasm for sm_90, found the way its NVIDIA backend finds them (3.4+: knobs
    tools, older: _path_to_binary); None when this triton has no NVIDIA backend or not that tool."""
    try:
        import triton
        from triton.backends.nvidia import compiler as nv
    except ImportError:
        return None
    finds = [lambda: getattr(triton.knobs.nvidia, name).path, lambda: nv._path_to_binary(name)[0]]
    if name == "ptxas":
        finds[:0] = [lambda: nv.get_ptxas(90).path, lambda: nv.get_ptxas().path]
    for find in finds:
        try:
            path = find()
        except Exception:  # noqa: BLE001 - another triton version's API; try the next
            continue
        if path and os.path.isfile(path):
            return path
    return None


# ---- what the host functions can launch ---------------------------------------------------------------------------
def _names(s: str) -> tuple:
    return tuple(s.split())


# Specialisation per kernel for NHWC/KRSC tensors whose channel counts are multiples of 16 (what the JIT derives for
# such tensors): (channel strides, 1 and so constexpr; ints that get tt.divisibility 16). The flat-reduction variants
# exist for small, unaligned Cg (an RGB stem): they lose the facts that follow from Cg (_FLAT_UNALIGNED, per kernel).
_SPECS = {
    "conv._conv_fwd_gemm_kernel": (_names("sxc swc syk"), _names(
        "GEMM_N GEMM_RED Cg syn syp syq sxn sxh sxw swk swr sws")),
    "conv._conv_fwd_direct_kernel": (_names("sxc swc syk"), _names("K sxn sxh sxw syn syp syq")),
    "conv._conv_dgrad_gemm_kernel": (_names("sdk swc sxc"), _names(
        "GEMM_N GEMM_RED Kg sdn sdp sdq swk swr sws sxn sxh sxw")),
    "conv._conv_dgrad_direct_kernel": (_names("sdk swc sxc"), _names("C sdn sdp sdq sxn sxh sxw")),
    "conv._conv_wgrad_gemm_kernel": (_names("sdk sxc sos"), _names(
        "GEMM_M GEMM_N sdn sdp sdq s_split sb_split sok Cg sxn sxh sxw")),
    "conv._conv_wgrad_direct_kernel": (_names("sdk sxc sos"), _names("K sdn sdp sdq sxn sxh sxw s_split sb_split")),
    "conv._split_reduce_kernel": ((), _names("numel")),
    # the 1×1 GEMM: which strides are 1 depends on the part (jobs carry their own 'ones' and 'div16')
    "conv._pointwise_kernel": ((), ()),
    "conv._pointwise_wgrad_kernel": ((), ()),
    "pool._max_pool_fwd_kernel": (_names("sxc syc sic"), _names("NC C sxn sxh sxw syn syp syq sin sip siq")),
    "pool._max_pool_bwd_kernel": (_names("sdc sic sxc"), _names("NC C sdn sdp sdq sin sip siq sxn sxh sxw")),
    "pool._avg_pool_fwd_kernel": (_names("sxc syc"), _names("NC C sxn sxh sxw syn syp syq")),
    "pool._avg_pool_bwd_kernel": (_names("sdc sxc"), _names("NC C sdn sdp sdq sxn sxh sxw")),
}
_FLAT_UNALIGNED = {"conv._conv_fwd_gemm_kernel": _names("Cg sxn sxh sxw swk swr sws GEMM_RED"),
                   "conv._conv_wgrad_gemm_kernel": _names("Cg sxn sxh sxw GEMM_N sok")}


def enumerate_jobs(dtypes=DTYPES, quick: bool = False) -> list[dict]:
    """Every compile to check (needs the compiled-mode config lists: call it where TRITON_INTERPRET is off).
    ``quick``: fp16 (bf16's code path) and fp32/fp64 (no tensor-core requirement) check each kernel variant with its
    first fitting config only; bf16 and tf32 keep every config."""
    from . import conv as tc
    from . import pool as tp
    assert not tc.INTERPRETED, "enumerate_jobs needs TRITON_INTERPRET=0 (the interpreter has one config per kernel)"
    jobs = []
    for dt in dtypes:
        elem = _ELEM[dt]
        itemsize = 8 if dt == "fp64" else 2 if elem in ("bf16", "fp16") else 4
        acc = "fp64" if dt == "fp64" else "fp32"
        part = "*" + acc  # split-K partial buffers
        gemm = dict(R=R, S=S, PRECISION="tf32" if dt == "tf32" else "ieee", UPCAST=False, ACC=acc)
        direct = dict(R=R, S=S, ACC=acc)
        few = quick and dt not in ("bf16", "tf32")

        def add(kernel, variant, consts, configs, ptrs=None, dot=False, dt=dt, elem=elem, few=few):
            for c in (configs[:1] if few else configs):
                jobs.append(dict(kernel=kernel, variant=variant, dtype=dt, elem=elem, consts=consts,
                                 config=tc._config_facts(c) if c is not None else {}, ptrs=ptrs or {},
                                 wgmma_required=dot and dt in WGMMA_DTYPES))

        prec = gemm["PRECISION"]

        def tiles(configs, flat, wgrad=False, mask=False, itemsize=itemsize, prec=prec):  # what _prune_gemm can
            return [c for c in configs if tc.fits(c, itemsize, prec, flat, wgrad, mask)]  # keep for a big problem

        def direct_tiles(configs, itemsize=itemsize):
            return [c for c in configs if tc.fits_direct(c, itemsize)]

        for flat in (False, True):
            for fused in (False, True):
                add("conv._conv_fwd_gemm_kernel", ("flat" if flat else "gemm") + ("+bias+relu" if fused else ""),
                    dict(gemm, FLAT_K=flat, HAS_BIAS=fused, RELU=fused), tiles(tc.FWD_CONFIGS, flat), dot=True)
        for mask in (False, True):
            add("conv._conv_dgrad_gemm_kernel", "gemm+relu_mask" if mask else "gemm", dict(gemm, RELU_MASK=mask),
                tiles(tc.DGRAD_CONFIGS, False), dot=True)
        for flat in (False, True):
            for bias in (False, True):
                add("conv._conv_wgrad_gemm_kernel", ("flat" if flat else "gemm") + ("+bias+relu_mask" if bias else ""),
                    dict(gemm, FLAT=flat, HAS_BIAS=bias, RELU_MASK=bias), tiles(tc.WGRAD_CONFIGS, flat, True, bias),
                    ptrs={"dw_ptr": part, "db_ptr": part}, dot=True)
        # the 1×1 GEMM, per part: (variant, strides that are 1, ints divisible by 16, flags, configs, pointers);
        # fits_pointwise prunes by exactly these facts (conv.pointwise_facts), as the autotuner does at run time
        pw = dict(PRECISION=gemm["PRECISION"], UPCAST=False, ACC=acc, RELU=False, HAS_BIAS=False, MASK_A=False,
                  BIAS_SUM=False)
        fwd = ("sak sbk scn", "GEMM_N GEMM_RED rows_per_split sam sbn scm")
        dgrad = ("sak sbn scn", "GEMM_N GEMM_RED rows_per_split sam sbk scm")
        wgrad = ("sam sbn scn", "GEMM_M GEMM_N rows_per_split sak sbk scm s_split sb_split")
        split = {"c_ptr": part, "bias_ptr": part}
        for even in (True, False):
            tail = "" if even else "+k_tail"
            for name, (ones, div16), flags, configs, ptrs in [
                    ("forward", fwd, {}, tc.FWD_CONFIGS, {}),
                    ("forward+bias+relu", fwd, dict(HAS_BIAS=True, RELU=True), tc.FWD_CONFIGS, {}),
                    ("dgrad", dgrad, {}, tc.DGRAD_CONFIGS, {}),
                    ("dgrad+relu_mask", dgrad, dict(MASK_A=True), tc.DGRAD_CONFIGS, {}),
                    ("wgrad", wgrad, {}, tc.WGRAD_CONFIGS, split),
                    ("wgrad+bias", wgrad, dict(BIAS_SUM=True), tc.WGRAD_CONFIGS, split),
                    ("wgrad+bias+relu_mask", wgrad, dict(MASK_A=True, BIAS_SUM=True), tc.WGRAD_CONFIGS, split)]:
                kernel = "conv._pointwise_wgrad_kernel" if name.startswith("wgrad") else "conv._pointwise_kernel"
                consts = dict(pw, EVEN_K=even, **flags)
                facts = tc.pointwise_facts({a: 1 if a in ones.split() else 0 for a in ("sam", "sbn")}, consts)
                before = len(jobs)
                add(kernel, name + tail, consts, [c for c in configs if tc.fits_pointwise(c, itemsize, prec, **facts)],
                    ptrs=ptrs, dot=True, few=few or (quick and not even))  # quick: the k-tail with its first config
                for j in jobs[before:]:
                    j["ones"], j["div16"] = _names(ones), _names(div16)
        if dt == "tf32":
            continue  # no dots below: fp32 covers them
        for fused in (False, True):
            add("conv._conv_fwd_direct_kernel", "direct+bias+relu" if fused else "direct",
                dict(direct, HAS_BIAS=fused, RELU=fused), direct_tiles(tc.DIRECT_CONFIGS))
        for mask in (False, True):
            add("conv._conv_dgrad_direct_kernel", "direct+relu_mask" if mask else "direct",
                dict(direct, RELU_MASK=mask), direct_tiles(tc.DIRECT_CONFIGS))
        for bias in (False, True):
            add("conv._conv_wgrad_direct_kernel", "direct+bias+relu_mask" if bias else "direct",
                dict(direct, HAS_BIAS=bias, RELU_MASK=bias), direct_tiles(tc.WGRAD_DIRECT_CONFIGS),
                ptrs={"dw_ptr": part, "db_ptr": part})
        add("conv._split_reduce_kernel", "reduce", dict(ACC=acc, BLOCK=1024), [None], ptrs={"src_ptr": part})
        pool = dict(KH=3, KW=3, ACC=acc)
        add("pool._max_pool_fwd_kernel", "max+index", dict(pool, STORE_INDEX=True), tp.POOL_CONFIGS,
            ptrs={"i_ptr": "*i64"})
        add("pool._max_pool_bwd_kernel", "max", pool, tp.POOL_CONFIGS, ptrs={"i_ptr": "*i64"})
        avg = dict(pool, COUNT_PAD=False, OVERRIDE=False)
        add("pool._avg_pool_fwd_kernel", "avg", avg, tp.POOL_CONFIGS)
        add("pool._avg_pool_bwd_kernel", "avg", avg, tp.POOL_CONFIGS)
    return jobs


# ---- one compile (in a worker) ------------------------------------------------------------------------------------
def compile_job(job: dict) -> dict:
    """Compile one job for sm_90 and check it; the job's dict plus regs, spills, smem, wgmma/mma.sync, ok, reason."""
    t0 = time.perf_counter()
    res = dict(job, regs=None, spill_stores=None, spill_loads=None, hot_spills=None, smem=None, wgmma=False,
               mma_sync=False, triton=None)
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget

        res["triton"] = triton.__version__
        if triton.knobs.runtime.interpret:
            raise RuntimeError("TRITON_INTERPRET is on in this worker")
        from . import conv, pool
        mod, name = job["kernel"].split(".")
        fn = getattr({"conv": conv, "pool": pool}[mod], name)
        fn = fn if isinstance(fn, triton.runtime.jit.JITFunction) else fn.fn  # an autotuner's JITFunction
        ones, div16 = _SPECS[job["kernel"]]
        ones, div16 = job.get("ones", ones), job.get("div16", div16)
        flat = job["consts"].get("FLAT_K") or job["consts"].get("FLAT")
        if flat:
            div16 = tuple(n for n in div16 if n not in _FLAT_UNALIGNED[job["kernel"]])
        consts = {k: (getattr(tl, {"fp32": "float32", "fp64": "float64"}[v]) if k == "ACC" else v)
                  for k, v in {**job["consts"], **job["config"]}.items() if k not in ("num_warps", "num_stages")}
        sig, cx = {}, {}
        for a in fn.arg_names:
            if a in consts or a in ones:
                sig[a], cx[a] = "constexpr", consts.get(a, 1)
            elif a.endswith("_ptr"):
                sig[a] = job["ptrs"].get(a, "*" + job["elem"])
            else:
                sig[a] = "i32"
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if sig[a].startswith("*") or (sig[a] == "i32" and a in div16)}
        opts = {k: job["config"][k] for k in ("num_warps", "num_stages") if k in job["config"]}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
        ptx = k.asm["ptx"]
        res.update(smem=k.metadata.shared, wgmma="wgmma.mma_async" in ptx, mma_sync="mma.sync" in ptx)
        log, sass = _ptxas(ptx)
        res.update(parse_ptxas(log))
        spilled = res["spill_stores"] or res["spill_loads"]
        res["hot_spills"] = hot_spills(sass) if sass else int(bool(spilled))  # no nvdisasm: every spill counts
    except Exception as exc:  # noqa: BLE001 - reported as this job's failure
        msg = str(exc).strip().splitlines()
        res.update(ok=False, reason=f"{type(exc).__name__}: {msg[0][:200] if msg else ''}".strip(),
                   seconds=round(time.perf_counter() - t0, 2))
        return res
    why = []
    if job["wgmma_required"] and not res["wgmma"]:
        why.append("no wgmma" + (" (mma.sync)" if res["mma_sync"] else ""))
    spilled = res["spill_stores"] or res["spill_loads"]
    if res["hot_spills"] or spilled and (job.get("strict") or job["wgmma_required"]):
        why.append(f"spills {res['spill_stores']}/{res['spill_loads']} B" +
                   (f", {res['hot_spills']} in loops" if res["hot_spills"] else ""))
    if res["smem"] > SMEM_LIMIT:
        why.append(f"smem {res['smem']} > {SMEM_LIMIT}")
    res.update(ok=not why, reason="; ".join(why), seconds=round(time.perf_counter() - t0, 2))
    return res


def _ptxas(ptx: str) -> tuple[str, str]:
    """(``ptxas -v`` log, nvdisasm listing or '') of the PTX assembled for sm_90a as Triton does (with the
    register-allocation flag Triton passes when its ptxas needs it: same allocation, same spills)."""
    ptxas, nvdisasm = tool_path("ptxas"), tool_path("nvdisasm")
    if ptxas is None:
        raise RuntimeError("no ptxas in this triton")
    from triton.backends.nvidia import compiler as nv
    extra = ["--regAllocOptLevel=2"] if "regAllocOptLevel=2" in _source(nv.CUDABackend.make_cubin) else []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", *extra, "--gpu-name=sm_90a", path, "-o", path + ".o"],
                             capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError(f"ptxas failed: {out.stderr.strip()[:300]}")
        sass = subprocess.run([nvdisasm, "-c", path + ".o"], capture_output=True, text=True,
                              timeout=600).stdout if nvdisasm else ""
    return out.stdout + out.stderr, sass


def _source(fn) -> str:
    import inspect
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


# ---- driver -------------------------------------------------------------------------------------------------------
def _pool(jobs: int):
    """Spawned workers with the interpreter off: the environment is set while they start (Pool starts them all at
    once) and restored after, so the calling process's triton is untouched."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        return multiprocessing.get_context("spawn").Pool(jobs)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def check_all(jobs: int | None = None, dtypes=DTYPES, quick: bool = False, strict: bool = False,
              progress=None) -> list[dict]:
    """Compile and check everything (see enumerate_jobs) on ``jobs`` worker processes (default: one per CPU);
    ``strict``: any spill fails, not only one inside a loop; ``progress(result)`` is called as each finishes.
    Results in enumeration order."""
    with _pool(jobs or os.cpu_count() or 1) as pool:
        todo = pool.apply(enumerate_jobs, (tuple(dtypes), quick))
        todo = [dict(j, index=i, strict=strict) for i, j in enumerate(todo)]
        done = []
        for res in pool.imap_unordered(compile_job, todo):
            done.append(res)
            if progress:
                progress(res)
    return sorted(done, key=lambda r: r["index"])


def config_label(cfg: dict) -> str:
    blocks = "x".join(str(cfg[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C", "BLOCK_K") if k in cfg) or "1024"
    return f"{blocks} w{cfg.get('num_warps', 4)} s{cfg.get('num_stages', 3)}"


def line(r: dict) -> str:
    """One plain line per compile: what, registers, spill stores/loads (bytes, and spill instructions in loops),
    shared memory (bytes), wgmma, verdict."""
    spills = "-" if r["spill_stores"] is None else f"{r['spill_stores']}/{r['spill_loads']} B {r['hot_spills']} hot"
    return (f"{r['kernel'].split('.')[1]:<27} {r['variant']:<21} {r['dtype']:<4} {config_label(r['config']):<19} "
            f"regs {r['regs'] if r['regs'] is not None else '-':>3}  spills {spills:>13}  "
            f"smem {r['smem'] if r['smem'] is not None else '-':>6}  wgmma {'yes' if r['wgmma'] else 'no ':<3}  "
            + ("OK" if r["ok"] else f"FAIL {r['reason']}"))


def toolchain() -> str:
    """'triton VERSION (its directory), ptxas VERSION (its path)': what this process compiles with."""
    try:
        import triton
    except ImportError as exc:
        return f"no triton ({exc})"
    ptxas = tool_path("ptxas")
    version = "?"
    if ptxas:
        try:
            out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=60).stdout
            version = next((m.group(1) for m in re.finditer(r"release ([\d.]+)", out)), "?")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"triton {triton.__version__} ({os.path.dirname(triton.__file__)}), ptxas {version} ({ptxas})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.triton.sm90", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes (default: CPU count)")
    ap.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    ap.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    ap.add_argument("--quick", action="store_true", help="first config only for fp16, fp32 and fp64")
    ap.add_argument("--strict", action="store_true", help="fail on any spill, also one outside the loops")
    ap.add_argument("--triton", metavar="VERSION",
                    help="the triton version that must be the one imported, here and in every worker (exit 2 "
                         "otherwise): nox -s sm90 passes the version it put first on PYTHONPATH")
    args = ap.parse_args(argv)
    print(f"compiling with {toolchain()}", flush=True)
    if args.triton:
        import triton
        if triton.__version__ != args.triton:
            print(f"triton {triton.__version__} is imported, not {args.triton}", file=sys.stderr)
            return 2
    if tool_path("ptxas") is None:
        print("triton has no NVIDIA backend or no ptxas: nothing to check", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = check_all(args.jobs, args.dtype, args.quick, args.strict, progress=lambda r: print(line(r), flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    bad = [r for r in results if not r["ok"]]
    versions = sorted({str(r["triton"]) for r in results})
    print(f"{len(results)} compiles for sm_90 with triton {', '.join(versions)} in {time.perf_counter() - t0:.0f} s: "
          f"{len(results) - len(bad)} OK, {len(bad)} FAIL")
    if args.triton and versions != [args.triton]:
        print(f"the workers compiled with triton {', '.join(versions)}, not {args.triton}", file=sys.stderr)
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
