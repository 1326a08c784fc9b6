"""Measured peak memory of one generator pass against travel.inference.memory.forward_bytes, each row in a fresh process.

    python benchmarks/forward_memory.py > benchmarks/results/forward-memory-calibration-DATE.txt

Random weights (memory does not depend on them); the peak is VmHWM above the resident set before the pass, after a
64 x 64 warm-up. "estimate(no margin)" is forward_bytes / MARGIN; the rule plans with forward_bytes itself.
"""
import sys, json, subprocess
CFGS = {
 'emoji3d': dict(base_channels=16, max_channels=256, depth=4, attention_levels=(1,2,3,4), norm_groups=8, padding='replicate', warp=False),
 'kaishu': dict(base_channels=16, max_channels=256, depth=4, attention_levels=(1,2,3,4), norm_groups=8, padding='replicate', warp=True),
 'c32': dict(base_channels=32, max_channels=256, depth=4, attention_levels=(2,3,4), norm_groups=8, padding='replicate', warp=True),
 'c32a1': dict(base_channels=32, max_channels=256, depth=4, attention_levels=(1,2,3,4), norm_groups=8, warp=True),
 'styles': dict(base_channels=16, max_channels=256, depth=4, attention_levels=(1,2,3,4), norm_groups=8, num_styles=3, warp=True),
 'tiny': dict(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, warp=False),
 'tinyatt': dict(base_channels=8, max_channels=16, depth=2, attention_levels=(1,2), norm_groups=4, warp=False),
}
CHILD = r'''
import sys, json, torch
cfgkw, n, h, w, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
from travel.config import GeneratorConfig
from travel.nets.generator import Generator
from travel.inference import inference_layout, run_generator
from travel.inference.memory import forward_bytes, MARGIN
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) * 1024
cfg = GeneratorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfgkw.items()})
torch.manual_seed(0)
g = inference_layout(Generator(cfg))
for p in g.parameters(): p.data.normal_(0, 0.05)
x = torch.rand(n, 3, h, w) * 2 - 1
with torch.no_grad():
    run_generator(g, x[:, :, :64, :64])
    open('/proc/self/clear_refs','w').write('5')
    before = status('VmRSS'); run_generator(g, x); peak = status('VmHWM') - before
print(json.dumps([peak, forward_bytes(cfg, h, w, n) / MARGIN]))
'''
rows = []
for name, kw in CFGS.items():
    for (n, h, w) in ((1, 256, 256), (1, 720, 368), (1, 1024, 1024), (2, 512, 512), (1, 2048, 1536)):
        for threads in (1, 2):
            if name in ('tiny','tinyatt') and h > 1024: continue
            out = subprocess.run([sys.executable, '-c', CHILD, json.dumps([kw, n, h, w, threads])], capture_output=True, text=True)
            if out.returncode: print(name, out.stderr[-500:]); continue
            peak, est = json.loads(out.stdout)
            rows.append((name, n, h, w, threads, peak, est))
            print(f"{name:8s} n{n} {w}x{h} t{threads}: measured {peak/1e6:7.0f} MB  estimate(no margin) {est/1e6:7.0f} MB  ratio {peak/est:.2f}", flush=True)
