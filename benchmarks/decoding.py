"""Constrained decoding: tensor trie + batched beam search vs HF generate with a nested-dict trie.

Measures, on random unique 3x256 IDs (1e5 and 1e6) with 20 beams:
  (a) one constraint step at 20/320/2560 rows: PrefixTrie.allowed_mask + advance (what our search
      runs) and TrieLogitsProcessor (stateless, for HF generate) vs HF PrefixConstrainedLogitsProcessor
      with a GENRE-style nested-dict trie behind ``prefix_allowed_tokens_fn``;
  (b) end to end on a small random T5: constrained_beam_search(Seq2SeqStepModel) vs HF generate with
      prefix_allowed_tokens_fn (the baseline) and with TrieLogitsProcessor, batch 1 and 8; plus the
      constraint's share of one decoding step;
  (c) trie build time and bytes per ID.
Run: python -m benchmarks.decoding   (2-3 minutes on 2 shared CPU cores; --quick: a smoke run that writes
nothing without --out;
--device cuda|auto runs (b) on a GPU; (a) and (c) always run on the CPU)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers import T5Config, T5ForConditionalGeneration
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from benchmarks.decoding_report import BEAMS, markdown, targets
from benchmarks.results_files import command_line, cpu_description, write_result
from semid.beam_search import _masked_log_probs, constrained_beam_search
from semid.errors import SemidError
from semid.hf import Seq2SeqStepModel, TrieLogitsProcessor
from semid.trie import PrefixTrie
from semid.vocab import CodeVocabulary

SIZES = [256, 256, 256]
RESULTS = Path(__file__).parent / "results"


def timed(
    fns: dict[str, Callable[[], object]], min_reps: int = 5, budget_s: float = 1.0
) -> dict[str, float]:
    """Median wall time (s) of each function; repetitions are interleaved round-robin (after one
    warm-up each) so that load from other processes on this shared machine hits every side alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    while len(times[next(iter(fns))]) < min_reps or time.perf_counter() - start < budget_s:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        if len(times[next(iter(fns))]) >= 1000:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    """n unique random IDs (n, 3) over 3x256, in random order."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(256**3, generator=g)[:n]
    return torch.stack([flat // 65536, flat // 256 % 256, flat % 256], dim=1)


def dict_trie(tokens: list[list[int]]) -> dict:
    """GENRE-style nested dict of token ids."""
    root: dict = {}
    for seq in tokens:
        node = root
        for t in seq:
            node = node.setdefault(t, {})
    return root


def dict_prefix_fn(root: dict) -> Callable[[int, torch.Tensor], list[int]]:
    """prefix_allowed_tokens_fn walking the dict along the generated tokens (after the start token)."""

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for t in sent.tolist()[1:]:
            node = node.get(t)
            if node is None:
                return []
        return list(node.keys())

    return allowed


def dict_nbytes(root: dict) -> int:
    """Bytes of the dict objects themselves (a lower bound: int keys beyond the small-int cache add more)."""
    total, stack = 0, [root]
    while stack:
        node = stack.pop()
        total += sys.getsizeof(node)
        stack.extend(node.values())
    return total


def bench_build(ids: torch.Tensor) -> tuple[dict, PrefixTrie]:
    """(c) build time and bytes per ID of PrefixTrie, next to the nested-dict trie."""
    build = timed({"build": lambda: PrefixTrie.from_codes(ids, SIZES)}, min_reps=5, budget_s=1.0)[
        "build"
    ]
    trie = PrefixTrie.from_codes(ids, SIZES)
    tokens = (ids + torch.tensor([2, 258, 514])).tolist()
    t = time.perf_counter()
    root = dict_trie(tokens)
    dict_build = time.perf_counter() - t
    return {
        "trie_build_s": build,
        "trie_bytes_per_id": trie.nbytes / trie.num_ids,
        "trie_nbytes": trie.nbytes,
        "dense_levels": sum(d is not None for d in trie.dense),
        "dict_build_s": dict_build,
        "dict_bytes_per_id_lower_bound": dict_nbytes(root) / len(tokens),
    }, (trie, root)


def bench_mask_step(
    ids: torch.Tensor, trie: PrefixTrie, root: dict, vocab: CodeVocabulary, quick: bool
) -> list[dict]:
    """(a) one constraint step per level at several row counts; times summed over the 3 levels."""
    rows_list = [20, 320] if quick else [20, 320, 2560]
    hf_proc_fn = dict_prefix_fn(root)
    out = []
    g = torch.Generator().manual_seed(1)
    for rows in rows_list:
        sample = ids[torch.randint(0, ids.shape[0], (rows,), generator=g)]
        tokens = vocab.codes_to_tokens(sample)
        per_level = {
            "ours_mask_advance_s": [],
            "ours_hf_processor_s": [],
            "hf_dict_processor_s": [],
        }
        states = torch.zeros(rows, dtype=torch.int64)
        for level in range(3):
            input_ids = torch.cat(
                [torch.zeros(rows, 1, dtype=torch.int64), tokens[:, :level]], dim=1
            )
            scores = torch.randn(rows, vocab.size)
            level_scores = scores[:, vocab.level_slice(level)].contiguous()
            codes = sample[:, level]
            st = states

            def ours(st=st, level=level, level_scores=level_scores, codes=codes):
                masked = level_scores.masked_fill(~trie.allowed_mask(st, level), float("-inf"))
                return masked, trie.advance(st, level, codes)

            proc = TrieLogitsProcessor(trie, vocab, level_normalize=False)
            hf = PrefixConstrainedLogitsProcessor(hf_proc_fn, num_beams=BEAMS)
            ours_masked, _ = ours()
            hf_masked = hf(input_ids, scores.clone())
            assert torch.equal(
                torch.isfinite(hf_masked), torch.isfinite(proc(input_ids, scores.clone()))
            )
            assert torch.equal(
                torch.isfinite(hf_masked[:, vocab.level_slice(level)]), torch.isfinite(ours_masked)
            )
            medians = timed(
                {
                    "ours_mask_advance_s": ours,
                    "ours_hf_processor_s": lambda i=input_ids, s=scores, p=proc: p(i, s),
                    "hf_dict_processor_s": lambda i=input_ids, s=scores, p=hf: p(i, s),
                },
                min_reps=5,
                budget_s=0.3 if quick else 1.0,
            )
            for name, value in medians.items():
                per_level[name].append(value)
            states = trie.advance(states, level, codes)
        row = {"rows": rows, **{k: sum(v) for k, v in per_level.items()}}
        row["per_level"] = per_level
        row["speedup_mask_advance"] = row["hf_dict_processor_s"] / row["ours_mask_advance_s"]
        row["speedup_hf_processor"] = row["hf_dict_processor_s"] / row["ours_hf_processor_s"]
        out.append(row)
    return out


def tiny_t5(vocab: CodeVocabulary, d_model: int, layers: int) -> T5ForConditionalGeneration:
    """A randomly initialised T5-like model whose vocabulary is the code vocabulary (+ pad, eos)."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab.size, d_model=d_model, d_kv=d_model // 4, d_ff=4 * d_model, num_layers=layers,
        num_decoder_layers=layers, num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).eval()


def hf_generate(model: T5ForConditionalGeneration, inputs: dict[str, torch.Tensor],
                processor_or_fn: TrieLogitsProcessor | Callable[[int, torch.Tensor], list[int]]) -> torch.Tensor:  # fmt: skip
    """HF beam search with 20 beams under a constraint -> generated tokens (B * 20, 3)."""
    kwargs = {"logits_processor": [processor_or_fn]} if isinstance(processor_or_fn, TrieLogitsProcessor) else {
        "prefix_allowed_tokens_fn": processor_or_fn
    }  # fmt: skip
    with torch.no_grad():
        out = model.generate(
            **inputs, num_beams=BEAMS, num_return_sequences=BEAMS, max_new_tokens=3, length_penalty=0.0,
            do_sample=False, **kwargs,
        )  # fmt: skip
    return out[:, 1:]


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """fn followed by a device synchronisation, so wall times include the queued GPU work."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def bench_end_to_end(
    trie: PrefixTrie,
    root: dict,
    vocab: CodeVocabulary,
    model: T5ForConditionalGeneration,
    batches: list[int],
    quick: bool,
    device: torch.device,
) -> list[dict]:
    """(b) whole searches (top-20 of 20 beams, batch 1 and 8) and the constraint's share of a step."""
    model, trie = model.to(device), trie.to(device)
    step_model = Seq2SeqStepModel(model, vocab)
    fn = dict_prefix_fn(root)
    proc = TrieLogitsProcessor(trie, vocab)
    g = torch.Generator().manual_seed(2)
    out = []
    for batch in batches:
        inputs = {
            "input_ids": torch.randint(2, vocab.size, (batch, 32), generator=g).to(device),
            "attention_mask": torch.ones(batch, 32, dtype=torch.int64, device=device),
        }
        ours = constrained_beam_search(step_model, inputs, trie, BEAMS)
        hf_tokens = hf_generate(model, inputs, fn)
        hf_trie_tokens = hf_generate(model, inputs, proc)
        hf_codes = vocab.tokens_to_codes(hf_tokens)
        hf_trie_codes = vocab.tokens_to_codes(hf_trie_tokens)
        fns = {
            "ours_s": lambda i=inputs: constrained_beam_search(step_model, i, trie, BEAMS),
            "hf_dict_s": lambda i=inputs: hf_generate(model, i, fn),
            "hf_trie_processor_s": lambda i=inputs: hf_generate(model, i, proc),
        }
        medians = timed(
            {name: synced(f, device) for name, f in fns.items()},
            min_reps=3 if quick else 7,
            budget_s=1.0 if quick else 8.0,
        )
        row = {
            "batch": batch,
            "rows": batch * BEAMS,
            **medians,
            "ours_all_valid": bool(trie.contains(ours.codes.view(-1, 3)).all()),
            "hf_dict_all_valid": bool(trie.contains(hf_codes).all()),
            "hf_trie_processor_all_valid": bool(trie.contains(hf_trie_codes).all()),
            "ours_equals_hf_trie_processor": bool(
                torch.equal(ours.codes.view(-1, 3), hf_trie_codes)
            ),
            # HF's dict baseline scores with a softmax over the whole vocabulary, ours per level
            "top20_overlap_ours_vs_hf_dict": overlap(ours.codes, hf_codes.view(batch, BEAMS, 3)),
        }
        row["speedup_vs_hf_dict"] = row["hf_dict_s"] / row["ours_s"]
        row.update(constraint_share(step_model, trie, inputs, batch, device))
        out.append(row)
    return out


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of IDs shared by the top-k lists a and b (B, k, L)."""
    shared = [
        len({tuple(x) for x in p} & {tuple(x) for x in q}) / len(p)
        for p, q in zip(a.tolist(), b.tolist(), strict=True)
    ]
    return sum(shared) / len(shared)


def constraint_share(
    step_model: Seq2SeqStepModel, trie: PrefixTrie, inputs: dict, batch: int, device: torch.device
) -> dict:
    """One unconstrained decoding step (decoder forward, log-softmax, top-k, cache reorder) vs the
    constraint ops our search adds to a step (allowed_mask, masked_fill, advance; mean over levels)."""
    rows = batch * BEAMS
    _, state0 = step_model.start(inputs)
    state0 = step_model.select(state0, torch.arange(batch, device=device).repeat_interleave(BEAMS))
    g = torch.Generator().manual_seed(3)
    pick = torch.randint(0, trie.num_ids, (rows,), generator=g).to(device)
    sample = trie.all_codes()[pick]
    level_states = [torch.zeros(rows, dtype=torch.int64, device=device)]
    for level in range(trie.levels - 1):
        level_states.append(trie.advance(level_states[-1], level, sample[:, level]))
    logits = torch.randn(rows, SIZES[0], generator=g).to(device)
    reorder = torch.arange(rows, device=device)

    def fresh_state():
        state = copy.copy(state0)
        state.cache = copy.deepcopy(state0.cache)  # each rep starts from the same cache length
        return state

    def unconstrained_step():
        logits, state = step_model.step(fresh_state(), sample[:, 0], 1)
        scores = torch.log_softmax(logits.float(), -1).view(batch, -1).topk(BEAMS, dim=1)
        step_model.select(state, reorder)
        return scores

    def constraint_ops():  # what a step of constrained_beam_search adds, for each level in turn
        for level, states in enumerate(level_states):
            _masked_log_probs(logits, trie, states, level)
            trie.advance(states, level, sample[:, level])

    def log_softmax_only():
        for _ in level_states:
            torch.log_softmax(logits.float(), -1)

    # two interleaved pairs: the cheap constraint ops get many more repetitions than the model step
    t = timed(
        {"step": synced(unconstrained_step, device), "copy": synced(fresh_state, device)},
        min_reps=10,
        budget_s=2.0,
    )
    t |= timed(
        {"constraint": synced(constraint_ops, device), "softmax": synced(log_softmax_only, device)},
        min_reps=50,
        budget_s=1.0,
    )
    step = t["step"] - t["copy"]
    constraint = (t["constraint"] - t["softmax"]) / trie.levels
    return {
        "unconstrained_step_s": step,
        "constraint_ops_s": constraint,
        "constraint_overhead": constraint / step,
    }


def environment(device: torch.device) -> dict:
    """Versions and machine, for the record."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device) + (f" ({gpu})" if gpu else ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write benchmarks/results/decoding.{json,md}."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="catalog sizes"
    )
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable timings on a shared machine)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer repetitions, no 2560 rows"
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        default="cpu",
        help="where (b) runs; auto: cuda when available (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for decoding.json and decoding.md (default: benchmarks/results; with "
        "--quick, nothing is written unless given)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SemidError("--device cuda: torch sees no GPU here; use --device cpu or auto")
    vocab = CodeVocabulary(SIZES, num_special=2)
    model = tiny_t5(vocab, args.d_model, args.layers)
    result = {
        "command": command_line("decoding", argv),
        "environment": environment(device),
        "config": {
            "beams": BEAMS,
            "d_model": args.d_model,
            "layers": args.layers,
            "vocab_size": vocab.size,
        },
        "catalogs": [],
    }
    for n in args.sizes:
        print(f"[decoding] {n:,} IDs: build", flush=True)
        ids = random_ids(n)
        build, (trie, root) = bench_build(ids)
        loads = {"build": os.getloadavg()[0]}  # 1-minute load average after each phase
        print(f"[decoding] {n:,} IDs: mask step", flush=True)
        mask = bench_mask_step(ids, trie, root, vocab, args.quick)
        loads["mask_step"] = os.getloadavg()[0]
        print(f"[decoding] {n:,} IDs: end to end", flush=True)
        e2e = bench_end_to_end(trie, root, vocab, model, [1, 8], args.quick, device)
        loads["end_to_end"] = os.getloadavg()[0]
        result["catalogs"].append(
            {"num_ids": n, "build": build, "mask_step": mask, "end_to_end": e2e, "load_1min": loads}
        )
        del root
        model = model.cpu()
    result["environment"]["load_average_1min_end"] = os.getloadavg()[0]
    result["targets"], result["quick"] = targets(result), args.quick
    out = args.out or (None if args.quick else RESULTS)  # a smoke run keeps the committed table
    table = markdown(result)
    if out is not None:
        write_result(out / "decoding", result, table, show=False)
    print(table)
    return result


if __name__ == "__main__":
    main()
