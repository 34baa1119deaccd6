"""benchmarks/bench_throughput.py: its pure helpers (matmul rate, FLOP counting, figures, table), without training or
data."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_throughput import (count_flops, format_table, matmul_gflops, require_data,  # noqa: E402
                                         sets_for, throughput_figures)


def test_matmul_rate_is_a_positive_finite_rate():
    rate = matmul_gflops(64, repeats=2, inner=2, warmup=1, warmup_s=0.0)
    assert 0 < rate < float("inf")


def test_flops_of_a_linear_step_match_the_hand_count():
    b, n_in, n_out = 8, 32, 16
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(b, n_in, requires_grad=True)

    def step():
        layer(x).sum().backward()

    flops, error = count_flops(step)
    forward = 2 * b * n_in * n_out
    assert error is None
    assert flops == forward + 2 * forward  # backward: the input's gradient and the weight's gradient


def test_flops_without_input_gradient_count_the_weight_gradient_only():
    b, n_in, n_out = 4, 10, 6
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(b, n_in)
    flops, _ = count_flops(lambda: layer(x).sum().backward())
    assert flops == 2 * (2 * b * n_in * n_out)


def test_lstm_flops_are_counted_on_cpu():
    """FlopCounterMode alone counts 0 for the CPU LSTM kernel; the script's formula gives the gate products."""
    b, t, n_in, h = 3, 5, 8, 6
    lstm = nn.LSTM(n_in, h, batch_first=True, bidirectional=True)
    x = torch.randn(b, t, n_in, requires_grad=True)
    flops, error = count_flops(lambda: lstm(x)[0].sum().backward())
    forward = 2 * 2 * t * b * 4 * h * (n_in + h)  # two directions
    assert error is None
    assert flops == 3 * forward


def test_a_failing_step_is_not_available_not_an_exception():
    def step():
        raise RuntimeError("no formula\nsecond line")

    assert count_flops(step) == (None, "RuntimeError: no formula")


def test_figures_and_table():
    row = {"method": "baseline", **throughput_figures(64, 10, 2.0, 5 * 10**9, 100.0)}
    assert row["samples_per_s"] == pytest.approx(320.0)
    assert row["step_ms"] == pytest.approx(200.0)
    assert row["achieved_gflops"] == pytest.approx(25.0)
    assert row["fraction_of_matmul"] == pytest.approx(0.25)
    missing = {"method": "ssan", **throughput_figures(32, 10, 1.0, None, 100.0)}
    assert missing["fraction_of_matmul"] is None
    lines = format_table([row, missing]).splitlines()
    assert lines[0].split()[:3] == ["method", "batch", "samples/s"]
    assert "25.0%" in lines[2] and "320.0" in lines[2]
    assert lines[3].split()[-3:] == ["n/a", "n/a", "n/a"]


def test_sets_go_to_their_method():
    sets = ["ssan.train.batch_size=8", "baseline_rows.full.label=x", "nafs.train.lr=0.1"]
    assert sets_for("ssan", sets) == ["ssan.train.batch_size=8"]
    assert sets_for("baseline", sets) == ["baseline_rows.full.label=x"]


def test_missing_simpedes_names_the_dvc_stage(tmp_path):
    params = SimpleNamespace(method="baseline", data=SimpleNamespace(dataset="simpedes", root=str(tmp_path / "no")))
    with pytest.raises(SystemExit, match="dvc repro simpedes"):
        require_data(params)
