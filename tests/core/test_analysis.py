"""The closed forms of ``wd_lightning.core.analysis`` against independent solves and real runs."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.fits import WeightRecorder, fit_book
from wd_lightning.core import analysis
from wd_lightning.core.errors import InvalidArgumentError


def _problem(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = X @ torch.randn(d, generator=generator, dtype=torch.float64) + 0.3
    return X, y + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)


def _augmented_solve(X: torch.Tensor, y: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """(w, b) from the (d+1)×(d+1) normal equations, with the bias column unpenalised."""
    n, d = X.shape
    A = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], dim=1)
    penalty = torch.diag(torch.tensor([1.0] * d + [0.0], dtype=X.dtype))
    return torch.linalg.solve(A.T @ A + n * weight_decay * penalty, A.T @ y)


@given(
    n=st.integers(2, 30),
    d=st.integers(1, 40),
    weight_decay=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_ridge_matches_the_augmented_normal_equations(n, d, weight_decay, seed):
    X, y = _problem(n, d, seed)
    solution = analysis.ridge_solution(X, y, weight_decay)
    expected = _augmented_solve(X, y, weight_decay)
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(solution.weight, expected[:-1], rtol=1e-7, atol=1e-9 * scale)
    torch.testing.assert_close(solution.bias, expected[-1], rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize(("n", "d"), [(20, 200), (200, 20), (50, 50)])
def test_ridge_zeroes_the_gradient_of_the_trained_objective(n, d):
    X, y = _problem(n, d, seed=1)
    weight_decay = 3.0
    solution = analysis.ridge_solution(X, y, weight_decay)
    w = solution.weight.clone().requires_grad_(True)
    b = solution.bias.clone().requires_grad_(True)
    objective = 0.5 * ((X @ w + b - y) ** 2).mean() + 0.5 * weight_decay * w.square().sum()
    objective.backward()
    assert w.grad.abs().max() < 1e-10 and abs(b.grad.item()) < 1e-10


def test_ridge_of_the_book_is_about_0_034_at_lambda_3():
    from wd_lightning import SyntheticRegressionDataModule

    data = SyntheticRegressionDataModule()
    data.setup()
    assert 0.025 < analysis.ridge_solution(data.X_train, data.y_train, 3.0).weight_norm < 0.045


def test_lambda_zero_is_the_least_squares_fit_of_smallest_norm():
    X, y = _problem(10, 30, seed=2)
    solution = analysis.ridge_solution(X, y, 0.0)
    torch.testing.assert_close(X @ solution.weight + solution.bias, y)
    # Any other exact fit differs by a null-space vector of the centred X and is longer.
    null = analysis.RowSpace(X - X.mean(0)).split(torch.randn(30, dtype=torch.float64)).null
    other = solution.weight + null
    assert solution.weight_norm < other.norm().item()


def test_interpolant_fits_exactly_and_moves_only_in_the_row_space():
    X, y = _problem(8, 25, seed=3)
    w0 = torch.randn(25, dtype=torch.float64)
    fit = analysis.interpolant_from(X, y, w0, 0.7)
    torch.testing.assert_close(X @ fit.weight + fit.bias, y)
    A = torch.cat([X, torch.ones(8, 1, dtype=X.dtype)], dim=1)
    moved = torch.cat([fit.weight - w0, (fit.bias - 0.7).reshape(1)])
    assert analysis.RowSpace(A).split(moved).null.norm() < 1e-7 * moved.norm()


def test_row_space_split_is_orthogonal_and_the_null_part_is_invisible_to_X():
    X, _ = _problem(20, 200, seed=4)
    w = torch.randn(200, dtype=torch.float64)
    space = analysis.RowSpace(X)
    split = space.split(w)
    assert space.dim == 20
    torch.testing.assert_close(split.row + split.null, w)
    assert abs(split.row @ split.null) < 1e-9
    assert (X @ split.null).abs().max() < 1e-10


def test_bad_shapes_name_the_argument():
    with pytest.raises(InvalidArgumentError, match="targets"):
        analysis.ridge_solution(torch.zeros(3, 2), torch.zeros(4), 1.0)
    with pytest.raises(InvalidArgumentError, match="weight"):
        analysis.RowSpace(torch.zeros(3, 2)).split(torch.zeros(5))
    with pytest.raises(InvalidArgumentError, match="weight_decay"):
        analysis.ridge_solution(torch.zeros(3, 2), torch.zeros(3), -1.0)


@pytest.mark.parametrize("weight_decay", [0.0, 3.0])
def test_null_space_decays_by_exactly_one_minus_lr_lambda_per_step(weight_decay):
    recorder = WeightRecorder()
    model, data, trainer = fit_book(weight_decay, max_epochs=5, callbacks=[recorder])
    steps = trainer.global_step
    assert steps == 20
    # The initial weights: the seed's draw, rebuilt as the fit did.
    from lightning.pytorch import seed_everything

    from wd_lightning import LinearRegression

    seed_everything(0, verbose=False)
    w0 = LinearRegression(weight_decay=weight_decay).model.weight.detach().reshape(-1)
    space = analysis.RowSpace(data.X_train)
    expected = (1 - 0.003 * weight_decay) ** steps * space.split(w0).null
    measured = space.split(model.model.weight.detach().reshape(-1)).null
    relative = ((measured - expected).norm() / expected.norm()).item()
    assert relative < 1e-5, relative
    # ... while the row-space part moved by much more than rounding: the test can tell.
    assert (space.split(model.model.weight.detach()).row - space.split(w0).row).norm() > 0.1
    predicted = analysis.predicted_null_space_norm(
        space.split(w0).null.norm().item(), 0.003, weight_decay, steps
    )
    assert math.isclose(predicted, measured.norm().item(), rel_tol=1e-5)
