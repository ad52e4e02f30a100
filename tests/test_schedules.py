import math

import pytest

from nmtkit.schedules import LRSchedule


def test_constant_with_warmup() -> None:
    s = LRSchedule("constant", 1e-3, warmup_steps=10)
    assert s(1) == pytest.approx(1e-4)
    assert s(5) == pytest.approx(5e-4)
    assert s(10) == pytest.approx(1e-3)
    assert s(1000) == pytest.approx(1e-3)


def test_noam_peaks_at_warmup_then_inverse_sqrt() -> None:
    s = LRSchedule("noam", 2e-3, warmup_steps=100)
    assert s(50) == pytest.approx(1e-3)
    assert s(100) == pytest.approx(2e-3)
    assert s(400) == pytest.approx(2e-3 * math.sqrt(100 / 400))
    assert max(s(k) for k in range(1, 1000)) == pytest.approx(2e-3)


def test_cosine_warmup_then_decay_to_min() -> None:
    s = LRSchedule("cosine", 1e-3, warmup_steps=10, total_steps=110, min_lr=1e-5)
    assert s(5) == pytest.approx(5e-4)
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert s(110) == pytest.approx(1e-5)
    assert s(500) == pytest.approx(1e-5)


def test_plateau_reduces_after_patience_and_state_round_trips() -> None:
    s = LRSchedule("plateau", 1e-3, plateau_factor=0.5, plateau_patience=1)
    s.on_validation(10.0, higher_is_better=True)
    s.on_validation(9.0, True)  # 1 bad evaluation: within patience
    assert s(100) == pytest.approx(1e-3)
    s.on_validation(9.5, True)  # 2 bad: reduce
    assert s(100) == pytest.approx(5e-4)
    t = LRSchedule("plateau", 1e-3, plateau_factor=0.5, plateau_patience=1)
    t.load_state_dict(s.state_dict())
    assert t(100) == pytest.approx(5e-4)
    s.on_validation(11.0, True)
    assert s(100) == pytest.approx(5e-4)  # improvement keeps the reduced rate


def test_scheduled_sampling_decays_as_bengio_et_al() -> None:
    from nmtkit.schedules import teacher_forcing_ratio as eps

    assert eps(0, "linear", 1.0, 0.001) == 1.0
    assert eps(300, "linear", 1.0, 0.001) == pytest.approx(0.7)
    assert eps(5000, "linear", 1.0, 0.001, min_ratio=0.25) == 0.25  # the floor
    assert eps(10, "exponential", 0.99) == pytest.approx(0.99**10)
    assert eps(0, "inverse_sigmoid", 100.0) == pytest.approx(100 / 101)
    assert eps(1000, "inverse_sigmoid", 100.0) == pytest.approx(100 / (100 + math.exp(10)))
    assert eps(10**9, "inverse_sigmoid", 100.0) < 1e-300  # no overflow
    values = [eps(i, "inverse_sigmoid", 50.0) for i in range(0, 2000, 100)]
    assert values == sorted(values, reverse=True)  # never rises


def test_scheduled_sampling_config_checks_k_and_excludes_a_fixed_ratio() -> None:
    from nmtkit.config import config_from_dict
    from nmtkit.errors import NMTKitError

    data = {"train_src": "a", "train_tgt": "b", "valid_src": "c", "valid_tgt": "d"}
    with pytest.raises(NMTKitError, match="training.scheduled_sampling.k: must be below 1"):
        config_from_dict({"data": data, "training": {"scheduled_sampling": {"decay": "exponential", "k": 1.5}}})
    with pytest.raises(NMTKitError, match="training.teacher_forcing_ratio: .*exclude each other"):
        config_from_dict({"data": data, "training": {"teacher_forcing_ratio": 0.5, "scheduled_sampling":
                                                     {"decay": "linear", "k": 1.0, "c": 0.001}}})
