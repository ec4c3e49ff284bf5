"""The progress line a person reads: numbers in plain notation, the rate measured after step one."""

import io

import pytest

from vit_se import progress


@pytest.mark.parametrize(
    "per_second, text",
    [(1190.4, "1190"), (100.0, "100"), (123456.7, "123457"), (87.54, "87.5"), (0.4123, "0.412")],
)
def test_rate_figure_is_plain_notation(per_second, text):
    assert progress.rate_figure(per_second) == text


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (42.4, "42s"), (187, "3m07s"), (3720, "1h02m"), (-5, "0s")]
)
def test_duration(seconds, text):
    assert progress.duration(seconds) == text


def test_a_fast_run_prints_images_per_second_without_an_exponent(monkeypatch):
    """A CPU demo at batch 64 runs over 1000 images/s; `:.3g` used to print that as 1.19e+03."""
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    out = io.StringIO()
    p = progress.Progress(total_steps=120, start_step=0, batch_size=64, stream=out, tty=False)
    p.started(1)  # t=101
    p.update(21, {"loss": 1.5, "accuracy": 0.25})  # 20 steps in 1 s: 1280 images/s, 99 steps left
    assert out.getvalue() == "step 21/120, loss 1.5000, accuracy 0.250, 1280 images/s, ETA 5s\n"
