"""The shared value checks: bools are not integers, NaN is not a number, kernels are odd."""

from stylenat.ops.checks import is_int, is_number, is_odd_kernel, is_power_of_two


def test_is_int_and_is_number():
    assert is_int(3) and is_int(-1)
    assert not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(0.5) and is_number(2)
    assert not is_number(float("nan")) and not is_number(float("inf")) and not is_number(False)


def test_is_power_of_two():
    assert all(is_power_of_two(v) for v in (1, 2, 4, 1024))
    assert not any(is_power_of_two(v) for v in (0, 3, 12, -4, 8.0, True))
    assert is_power_of_two(8, minimum=8) and not is_power_of_two(4, minimum=8)


def test_is_odd_kernel():
    assert all(is_odd_kernel(v) for v in (1, 3, 7))
    assert not any(is_odd_kernel(v) for v in (0, -1, 4, 7.0, True))
