#!/usr/bin/env bash
# The one command to run the day a GPU is lent (issue 20 item 6): builds the CUDA extension, runs
# the CUDA kernel tests, compute-sanitizer (memcheck, racecheck, synccheck) on a small workload,
# then the P5-P7 benchmarks, and writes one summary (device, driver, each check's verdict, each
# figure, each step's duration) to OUT/summary.json and OUT/summary.txt, with each step's log.
#
#   benchmarks/gpu_check.sh [OUT]          # OUT defaults to gpu_check-<date>
#   TROPFX_GPU_CHECK_EMULATE=1 benchmarks/gpu_check.sh OUT    # dry run through the CPU emulator
#
# Time budget: 8 minutes on an H100 in all, each step capped by `timeout` (seconds):
#   probe 10, build 170, tests 90, memcheck 50, racecheck 50, synccheck 30, bench 60  (= 460 s,
#   20 s left for the summary). A step past its cap is killed and marked "timeout"; the steps
#   after it still run (each is independent once the build is there). The dry run (no GPU) scales
#   the caps by TROPFX_GPU_CHECK_SLOWDOWN (default 1; the emulator and a loaded CPU are slower).
# Without a GPU (and without TROPFX_GPU_CHECK_EMULATE=1) it says so, writes the summary, exits 0.
# Exit status otherwise: 0 when every check passed (or was skipped, with the reason in the
# summary), 1 when one failed or timed out.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check-$(date -u +%Y%m%dT%H%M%SZ)}
PY=${PYTHON:-python}
EMULATE=${TROPFX_GPU_CHECK_EMULATE:-0}
SLOW=${TROPFX_GPU_CHECK_SLOWDOWN:-1}
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
START=$(date +%s)

# step NAME BUDGET_S COMMAND...: run it under timeout, log to OUT/NAME.log, record its verdict.
step() {
  local name=$1 budget=$(( $2 * SLOW )) t0 t1 rc verdict
  shift 2
  t0=$(date +%s.%N)
  echo "[gpu_check] $name (budget ${budget} s): $*"
  timeout --kill-after=10 "$budget" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) verdict=pass ;;
    124|137) verdict=timeout ;;
    *) verdict=fail ;;
  esac
  printf '%s\t%s\t%s\t%.1f\t%s\n' "$name" "$verdict" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" "$budget" >> "$STEPS"
  echo "[gpu_check] $name: $verdict ($(tail -n 1 "$OUT/$name.log" | cut -c1-150))"
}

# note NAME VERDICT REASON: a step that does not run here.
note() {
  printf '%s\t%s\t-\t0\t0\t%s\n' "$1" "$2" "$3" >> "$STEPS"
  echo "[gpu_check] $1: $2 ($3)"
}

HAVE_GPU=0
if command -v nvidia-smi > /dev/null 2>&1 \
   && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
  HAVE_GPU=1
fi

if [ "$HAVE_GPU" = 1 ]; then
  MODE=gpu
  step probe 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  export MAX_JOBS=${MAX_JOBS:-16}
  step build 170 "$PY" -m tropfx kernels build --cuda
  # CUDA kernels, index checks, and fp16 / bf16 autocast on the GPU (-k cuda: the CPU cases run in CI)
  step tests 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_kernels.py tests/test_kernel_indices.py \
    tests/test_autocast.py -k "cuda or not autocast"
  SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  if [ -x "$SANITIZER" ]; then
    for tool_budget in memcheck:50 racecheck:50 synccheck:30; do
      tool=${tool_budget%%:*}
      step "$tool" "${tool_budget##*:}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" benchmarks/gpu_sanitize.py
    done
  else
    for tool in memcheck racecheck synccheck; do note "$tool" skipped "compute-sanitizer not found"; done
  fi
  step bench 60 "$PY" benchmarks/bench_cuda.py --repeats 10 --json "$OUT/bench.json"
elif [ "$EMULATE" = 1 ]; then
  MODE=emulated
  note probe skipped "no GPU: dry run through the CPU emulator"
  step build 170 "$PY" -m tropfx kernels build --emulation
  step tests 90 env TROPFX_CUDA_EMULATION=1 "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/test_cuda_kernels.py tests/test_kernel_indices.py -k "emulated or every"
  # the sanitizers' workload runs once on the emulator; compute-sanitizer itself needs a GPU
  step memcheck 50 "$PY" benchmarks/gpu_sanitize.py --emulated
  note racecheck skipped "compute-sanitizer needs a GPU (its workload ran in memcheck's dry run)"
  note synccheck skipped "compute-sanitizer needs a GPU (its workload ran in memcheck's dry run)"
  note bench skipped "bench_cuda.py needs a GPU; no figure is measured without one"
else
  MODE=none
  echo "[gpu_check] no CUDA GPU visible (nvidia-smi / torch.cuda.is_available()): nothing to check."
  echo "[gpu_check] TROPFX_GPU_CHECK_EMULATE=1 dry-runs the steps through the CPU emulator."
fi

# One summary: device, driver, versions, each step's verdict and duration, each figure.
"$PY" - "$OUT" "$MODE" "$START" <<'PYEOF'
import json, os, platform, subprocess, sys, time
from pathlib import Path

out, mode, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mode": mode,
           "host": platform.node(), "steps": [], "figures": {}}
try:
    import torch
    summary["torch"], summary["torch_cuda"] = torch.__version__, torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        summary["device"] = f"{p.name} ({p.multi_processor_count} SMs, sm_{p.major}{p.minor})"
except ImportError:
    pass
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
    summary["driver"] = smi.split(",")[-1].strip() if smi else None
except (OSError, subprocess.SubprocessError):
    summary["driver"] = None
summary.setdefault("device", None if mode != "emulated" else "CPU emulator (no GPU)")
for line in (out / "steps.tsv").read_text().splitlines():
    name, verdict, rc, seconds, budget, *reason = line.split("\t")
    summary["steps"].append({"step": name, "verdict": verdict, "exit": rc, "seconds": float(seconds),
                             "budget_s": int(budget), "log": f"{name}.log" if rc != "-" else None,
                             **({"reason": reason[0]} if reason else {})})
bench = out / "bench.json"
if bench.is_file():
    b = json.loads(bench.read_text())
    f = summary["figures"]
    if "P5" in b:
        f["P5 max-plus GEMM x SGEMM (values / argmax; goal <= 2.5)"] = [
            round(b["P5"][k]["x_sgemm"], 3) for k in ("values", "argmax")]
        f["P5 T max-plus ops/s (values / argmax)"] = [round(b["P5"][k]["tops"], 2)
                                                      for k in ("values", "argmax")]
    if "P6" in b:
        for key, r in b["P6"].items():
            if isinstance(r, dict):
                f[f"P6 {key}: % of copy bandwidth (values / argmax; goal >= 70)"] = [
                    round(100 * r[k]["of_copy"], 1) for k in ("values", "argmax")]
    if "P7" in b:
        for key, r in b["P7"].items():
            f[f"P7 {key}: x faster than cuDNN fp16 (goal >= 10)"] = round(r["speedup"], 2)
    checked = [r.get("checked") for case in b.values() if isinstance(case, dict)
               for r in [case, *case.values()] if isinstance(r, dict) and "checked" in r]
    f["bench outputs equal to the CPU kernels"] = all(checked) if checked else None
summary["total_seconds"] = round(time.time() - start, 1)
verdicts = [s["verdict"] for s in summary["steps"]]
summary["verdict"] = ("no GPU: nothing checked" if mode == "none" else
                      "pass" if all(v in ("pass", "skipped") for v in verdicts) else "fail")
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"tropfx gpu_check {summary['date']}  mode: {mode}  verdict: {summary['verdict']}",
         f"device: {summary['device']}  driver: {summary['driver']}  torch {summary.get('torch')} "
         f"(CUDA {summary.get('torch_cuda')})", ""]
lines += [f"  {s['step']:<10} {s['verdict']:<8} {s['seconds']:7.1f} s of {s['budget_s']:4d} s"
          + (f"  ({s['reason']})" if "reason" in s else "") for s in summary["steps"]]
lines += ["", *(f"  {k}: {v}" for k, v in summary["figures"].items()),
          f"total {summary['total_seconds']} s (budget 480 s on an H100)"]
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if summary["verdict"] in ("pass", "no GPU: nothing checked") else 1)
PYEOF
