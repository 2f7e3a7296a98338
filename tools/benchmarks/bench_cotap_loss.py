"""Benchmark the CoTAP loss: dense (n x n, autograd) vs chunked (custom backward).

Paper: https://arxiv.org/abs/2509.09429.
Loss: ``cotap_mm/models/losses/functional/continuous_ap.py``.

What is measured, per case (n, impl, chunk size), each case in a FRESH SUBPROCESS:

* time: forward + backward of one loss call (``loss.backward()`` on random float32 scores), wall
  clock, BEST (minimum) of the warm repeats (up to ``--repeats``, stopping once ``--min-time``
  seconds were timed) that follow one cold call (CUDA: synchronised before/after). The minimum
  is used because on a shared machine interference only ever adds time; still, compare rows of
  one run only.
* peak memory: extra memory of the COLD forward+backward call over what the process held just
  before it (inputs already allocated):
    - CPU: peak resident set size. The kernel's high-water mark is reset by writing ``5`` to
      ``/proc/self/clear_refs`` right before the call and read back (``VmHWM``) after it; the
      number is ``VmHWM - VmRSS_before``. It includes allocator overhead and anything the call
      touches (e.g. thread-pool stacks), so small sizes carry a few MB of noise. Where
      ``clear_refs`` is not writable, ``ru_maxrss - VmRSS_before`` is used (can over-estimate;
      the header says so).
    - CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the call
      (tensor memory only, no caching-allocator slack).
* ratios vs dense (time and memory) use the dense row of the same n in the same run; chunked
  memory per item (``KB/item``) should be roughly constant in n for a fixed chunk size (linear
  memory), while dense grows linearly per item (quadratic total).

The loss value of every case is printed, so dense and chunked can be compared (``|dL|``).

Usage::

    python tools/benchmarks/bench_cotap_loss.py                      # CPU here, ~1-2 min
    python tools/benchmarks/bench_cotap_loss.py --device cuda --max-dense-n 16000
    python tools/benchmarks/bench_cotap_loss.py --sizes 1000,4200 --chunk-sizes 1024,256

The loss file and the peak-RSS helpers (``cotap_mm/engine/memory.py``) are loaded by path from the
checkout (they depend only on torch and the standard library), so each subprocess skips importing
the OpenMMLab stack.
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

PACKAGE = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'cotap_mm')
LOSS_FILE = osp.join(PACKAGE, 'models', 'losses', 'functional', 'continuous_ap.py')
MEMORY_FILE = osp.join(PACKAGE, 'engine', 'memory.py')  # /proc peak-RSS helpers (standard library)


def _load_file(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_loss_module():
    return _load_file('_cotap_continuous_ap', LOSS_FILE)


_memory = _load_file('_cotap_memory', MEMORY_FILE)
_status_kb, _reset_hwm = _memory.status_kb, _memory.reset_peak_rss
try:
    import torch  # noqa: F401  (the only third-party module the cases need)
except ModuleNotFoundError as err:  # not the project's environment, e.g. the system python
    sys.exit(f'tools/benchmarks/bench_cotap_loss.py: {err} in {sys.executable}: use the cotap_mm '
             'environment (`source .venv/bin/activate` after `make setup`, or .venv/bin/python)')


def worker(n: int, impl: str, chunk_size: int, device: str, repeats: int, min_time: float,
           seed: int) -> Dict:
    import torch
    mod = _load_loss_module()
    g = torch.Generator().manual_seed(seed)
    S0 = (torch.randn(n, generator=g) * 0.3).to(device)
    T = (torch.randn(n, generator=g) * 0.3).to(device)
    R = (torch.rand(n, generator=g) < 0.8).to(device)  # like the official list: 25/30 random
    cuda = device.startswith('cuda')

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        S = S0.clone().requires_grad_(True)
        loss = mod.continuous_ap_loss(S, T, R, impl=impl, chunk_size=chunk_size)
        loss.backward()
        return loss.item()

    # cold call: memory
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        method = 'cuda.max_memory_allocated'
    else:
        base = (_status_kb('VmRSS') or 0) * 1024
        method = 'VmHWM' if _reset_hwm() else 'ru_maxrss'
    t0 = time.perf_counter()
    value = step()
    sync()
    cold = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    elif method == 'VmHWM':
        peak = (_status_kb('VmHWM') or 0) * 1024 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    # warm calls: time
    times: List[float] = []
    while len(times) < repeats and (len(times) == 0 or sum(times) < min_time):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return dict(n=n, impl=impl, chunk=chunk_size, value=value, peak=peak, method=method,
                cold_ms=cold * 1e3, ms=min(times) * 1e3, reps=len(times))


def run_case(args, n: int, impl: str, chunk: int) -> Optional[Dict]:
    cmd = [
        sys.executable, osp.abspath(__file__), '--worker', f'{n},{impl},{chunk}', '--device',
        args.device, '--repeats', str(args.repeats), '--min-time', str(args.min_time), '--seed',
        str(args.seed)
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        print(f'# n={n} {impl} chunk={chunk} FAILED (rc {proc.returncode}): '
              f'{proc.stderr.strip().splitlines()[-1:] }')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--device', default='auto',
                   help="'cpu', 'cuda[:i]' or 'auto' (cuda if available)")
    p.add_argument('--sizes', default='1000,4200,16000',
                   help='n for both impls (dense up to --max-dense-n)')
    p.add_argument('--chunked-only-sizes', default='20000', help='extra n run for chunked only')
    p.add_argument('--max-dense-n', type=int, default=None,
                   help='largest n for dense (default 4200 on CPU, 16000 on CUDA)')
    p.add_argument('--chunk-sizes', default='1024,128', help='chunk sizes for the chunked impl')
    p.add_argument('--repeats', type=int, default=5, help='max timed warm repeats per case')
    p.add_argument('--min-time', type=float, default=2.0,
                   help='stop repeating once this many seconds were timed (>= 1 repeat)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        n, impl, chunk = args.worker.split(',')
        print(json.dumps(worker(int(n), impl, int(chunk), args.device, args.repeats, args.min_time,
                                args.seed)))
        return

    import torch
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    cuda = args.device.startswith('cuda')
    max_dense = args.max_dense_n or (16000 if cuda else 4200)
    sizes = [int(s) for s in args.sizes.split(',') if s]
    extra = [int(s) for s in args.chunked_only_sizes.split(',') if s]
    chunks = [int(c) for c in args.chunk_sizes.split(',') if c]

    dev_name = (torch.cuda.get_device_name(args.device)
                if cuda else f'CPU, {torch.get_num_threads()} threads')
    print(f'# CoTAP loss forward+backward, float32, device {args.device} ({dev_name}), '
          f'torch {torch.__version__}')
    print(f'# dense up to n={max_dense}; chunked chunk sizes {chunks}; one subprocess per case')

    rows = []
    for n in sorted(set(sizes + extra)):
        dense = None
        if n in sizes and n <= max_dense:
            dense = run_case(args, n, 'dense', chunks[0])
            if dense:
                rows.append((dense, dense))
        elif n in sizes:
            print(f'# n={n}: dense skipped (n > --max-dense-n={max_dense})')
        for c in chunks:
            r = run_case(args, n, 'chunked', c)
            if r:
                rows.append((r, dense))

    method = rows[0][0]['method'] if rows else '?'
    print(f'# peak = extra memory of one cold fwd+bwd call ({method}); time = best warm fwd+bwd')
    hdr = (f"{'n':>6} {'impl':>8} {'chunk':>6} {'time ms':>9} {'peak MB':>9} {'KB/item':>8} "
           f"{'t/dense':>8} {'mem/dense':>9} {'loss':>10} {'|dL|':>8}")
    print(hdr)
    print('-' * len(hdr))
    for r, d in rows:
        is_dense = r['impl'] == 'dense'
        t_ratio = f"{r['ms'] / d['ms']:.3f}" if d else '-'
        m_ratio = f"{r['peak'] / d['peak']:.4f}" if d and d['peak'] > 0 else '-'
        dl = f"{abs(r['value'] - d['value']):.1e}" if d and not is_dense else '-'
        print(f"{r['n']:>6} {r['impl']:>8} {'-' if is_dense else r['chunk']:>6} {r['ms']:>9.1f} "
              f"{r['peak'] / 2**20:>9.1f} {r['peak'] / r['n'] / 1024:>8.2f} {t_ratio:>8} "
              f"{m_ratio:>9} {r['value']:>10.6f} {dl:>8}")
    # linearity check of chunked memory: largest vs smallest n above the chunk size
    for c in chunks:
        pts = [(r['n'], r['peak']) for r, _ in rows
               if r['impl'] == 'chunked' and r['chunk'] == c and r['n'] > c]
        if len(pts) >= 2:
            (n0, m0), (n1, m1) = pts[0], pts[-1]
            print(f'# chunked (chunk {c}): n x{n1 / n0:.1f} -> peak memory x{m1 / max(m0, 1):.1f} '
                  f'(linear would be x{n1 / n0:.1f}, quadratic x{(n1 / n0) ** 2:.0f})')


if __name__ == '__main__':
    main()
