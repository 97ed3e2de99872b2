"""Where one GPU encode call's time goes (issue 18): sentence-transformers vs the bare model.

    python3 -m bench.gpu.encode_probe MODEL_DIR [--out probe.json]

On the device machine. Times, for one text and for small batches: the
sentence-transformers ``encode`` the embedder's torch backend used, its
cProfile top entries, and the bare transformer (tokenise, copy, forward, mean
pool, normalise, copy back) step by step, eager and replayed from a CUDA
graph; and the cosine between the bare path's vectors and ``encode``'s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.gpu.pack_weights import texts


def _ms(fn: Callable[[], object], n: int = 200) -> float:
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    out: dict[str, Any] = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    out["threads"] = torch.get_num_threads()
    st = SentenceTransformer(args.model_dir, device="cuda")
    out["dtype"] = str(next(st.parameters()).dtype)
    sample = texts(512)
    one = [sample[3]]
    for n in (1, 8, 64):
        batch = sample[:n]
        out[f"st_encode_{n}_ms"] = _ms(partial(st.encode, batch, show_progress_bar=False))

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        st.encode(one, show_progress_bar=False)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    out["st_encode_profile"] = buf.getvalue().splitlines()[:70]

    tok = st.tokenizer
    hf: Any = st[0].auto_model
    hf.eval()

    def tokenize(b: list[str]) -> Any:
        return tok(b, padding=True, truncation=True, max_length=256, return_tensors="pt")

    def bare(b: list[str]) -> Any:
        enc = tokenize(b)
        ids = enc["input_ids"].to("cuda", non_blocking=True)
        mask = enc["attention_mask"].to("cuda", non_blocking=True)
        with torch.inference_mode():
            hidden = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            vec = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return vec.cpu().numpy()

    for n in (1, 8, 64):
        batch = sample[:n]
        out[f"tokenize_{n}_ms"] = _ms(partial(tokenize, batch))
        out[f"bare_{n}_ms"] = _ms(partial(bare, batch))
    enc1 = tokenize(one)
    ids1 = enc1["input_ids"].cuda()
    mask1 = enc1["attention_mask"].cuda()

    def fwd() -> Any:
        with torch.inference_mode():
            return hf(input_ids=ids1, attention_mask=mask1).last_hidden_state

    out["forward_1_ms"] = _ms(fwd)
    out["forward_1_seq"] = int(ids1.shape[1])

    ref = st.encode(sample[:64], normalize_embeddings=True, show_progress_bar=False)
    mine = bare(sample[:64])
    cos = (ref * mine).sum(1)
    out["bare_vs_st_cosine_min"] = float(cos.min())

    # CUDA graph at padded shapes (batch, seq bucket)
    graphs: dict[str, Any] = {}
    for bsz, seq in ((1, 32), (1, 64), (8, 64), (64, 128)):
        sids = torch.zeros((bsz, seq), dtype=torch.long, device="cuda")
        smask = torch.zeros((bsz, seq), dtype=torch.long, device="cuda")
        smask[:, :4] = 1
        with torch.inference_mode():
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    hf(input_ids=sids, attention_mask=smask)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                h = hf(input_ids=sids, attention_mask=smask).last_hidden_state
                mm = smask.unsqueeze(-1).to(h.dtype)
                pooled = (h * mm).sum(1) / mm.sum(1).clamp(min=1e-9)
                gvec = torch.nn.functional.normalize(pooled.float(), dim=-1)

        def replay(g: Any = g, gvec: Any = gvec) -> Any:
            g.replay()
            return gvec.cpu()

        graphs[f"graph_{bsz}x{seq}_ms"] = _ms(replay)
        # correctness for the one-text bucket
        if bsz == 1 and seq == 64:
            e = tok(one, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            sids.copy_(e["input_ids"])
            smask.copy_(e["attention_mask"])
            g.replay()
            ref1 = st.encode(one, normalize_embeddings=True, show_progress_bar=False)
            graphs["graph_vs_st_cosine"] = float((gvec.cpu().numpy()[0] * ref1[0]).sum())
    out.update(graphs)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tp:
        for _ in range(5):
            bare(one)
        torch.cuda.synchronize()
    table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    out["torch_profile"] = table.splitlines()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
