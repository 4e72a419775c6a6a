# Vendored from the project's shared material (shared/gpu/workloads.py) so that a GPU machine
# given only this repository can run scripts/gpu-check.sh; keep it identical to the original.
"""Real PyTorch workloads on a GPU, for measuring a GPU memory allocator end to end.

Usage:
  python3 workloads.py WORKLOAD MODE [--out DIR] [--steps N]

WORKLOAD: gpt2_train | resnet50_train | llama_generate | all
MODE:
  native            PyTorch's own caching allocator (also records a trace under --out)
  expandable        PyTorch with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  async             PyTorch with the cudaMallocAsync backend
  pluggable:PATH    the shared library at PATH installed with
                    torch.cuda.memory.CUDAPluggableAllocator(PATH, 'coalesce_malloc', 'coalesce_free')

For pluggable mode the library must also export
  size_t coalesce_stats_json(int device, char *buf, size_t len)
which writes a JSON object (at least "peak_reserved_bytes" and "peak_allocated_bytes")
into buf and returns its length (or the length needed, if len is too small).

Prints one JSON line per workload: wall time, peak allocated, peak reserved, OOMs.
The modes need separate processes (the allocator is chosen before CUDA starts):
run this script once per mode, and in pluggable mode once per workload (the
library's peaks are per process).
"""
import argparse, ctypes, gzip, json, os, sys, time

WORKLOADS = ['gpt2_train', 'resnet50_train', 'llama_generate']


def set_mode(mode):
    if mode == 'expandable':
        os.environ['PYTORCH_CUDA_ALLOC_CONF'] = 'expandable_segments:True'
    elif mode == 'async':
        os.environ['PYTORCH_CUDA_ALLOC_CONF'] = 'backend:cudaMallocAsync'
    import torch
    lib = None
    if mode.startswith('pluggable:'):
        path = os.path.abspath(mode.split(':', 1)[1])
        alloc = torch.cuda.memory.CUDAPluggableAllocator(path, 'coalesce_malloc', 'coalesce_free')
        torch.cuda.memory.change_current_allocator(alloc)
        lib = ctypes.CDLL(path)
        lib.coalesce_stats_json.restype = ctypes.c_size_t
        lib.coalesce_stats_json.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    return torch, lib


def run(torch, name, steps):
    import torch.nn as nn
    dev = 'cuda'
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ri = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))
    if name == 'gpt2_train':
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
        m = GPT2LMHeadModel(cfg).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        for _ in range(steps or 30):
            x = torch.randint(0, cfg.vocab_size, (ri(2, 17), ri(64, 1025)), device=dev)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = m(input_ids=x, labels=x).loss
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    elif name == 'resnet50_train':
        import torchvision
        m = torchvision.models.resnet50().to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(steps or 15):
            bs = ri(16, 129)
            x = torch.randn(bs, 3, 224, 224, device=dev)
            y = torch.randint(0, 1000, (bs,), device=dev)
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    elif name == 'llama_generate':
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                          num_attention_heads=16, num_key_value_heads=16, vocab_size=32000,
                          max_position_embeddings=4096)
        m = LlamaForCausalLM(cfg).to(dev, dtype=torch.bfloat16).eval()
        with torch.no_grad():
            for _ in range(steps or 10):
                x = torch.randint(0, cfg.vocab_size, (ri(1, 9), ri(16, 1024)), device=dev)
                nt = ri(16, 200)
                m.generate(x, max_new_tokens=nt, min_new_tokens=nt, do_sample=False, pad_token_id=0)
    else:
        raise SystemExit('unknown workload ' + name)
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('workload')
    ap.add_argument('mode')
    ap.add_argument('--out', default=os.environ.get('OUT', '.'))
    ap.add_argument('--steps', type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    torch, lib = set_mode(a.mode)
    torch.cuda.init()
    names = WORKLOADS if a.workload == 'all' else [a.workload]
    for name in names:
        record = a.mode == 'native'
        if record:
            torch.cuda.memory._record_memory_history(max_entries=5_000_000)
        if lib is None:
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        err = None
        try:
            run(torch, name, a.steps)
        except torch.cuda.OutOfMemoryError as e:
            err = 'OOM: ' + str(e).splitlines()[0]
        wall = time.time() - t
        res = dict(workload=name, mode=a.mode.split(':')[0], wall_s=round(wall, 3), error=err)
        if lib is None:
            st = torch.cuda.memory_stats()
            res.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                       peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                       num_alloc_retries=st.get('num_alloc_retries'), num_ooms=st.get('num_ooms'))
        else:
            buf = ctypes.create_string_buffer(1 << 16)
            n = lib.coalesce_stats_json(0, buf, len(buf))
            res['allocator_stats'] = json.loads(buf.raw[:n].decode())
        if record:
            trace = torch.cuda.memory._snapshot()['device_traces'][0]
            torch.cuda.memory._record_memory_history(enabled=None)
            with gzip.open(os.path.join(a.out, f'{name}.trace.csv.gz'), 'wt') as f:
                f.write('action,addr,size,stream\n')
                for e in trace:
                    f.write(f"{e['action']},{e.get('addr', 0)},{e.get('size', 0)},{e.get('stream', 0)}\n")
        print(json.dumps(res), flush=True)


if __name__ == '__main__':
    main()
