"""``wd-lightning check-optimizer``: the report, the exit code, and one-line errors."""

from __future__ import annotations

import pytest

from wd_lightning.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(["check-optimizer", *args])
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def test_prints_the_contract_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "torch.optim:AdamW", "--examples", "5")
    assert code == 0
    assert out.startswith("AdamW: weight decay is decoupled\n")


def test_kwargs_reach_the_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        "torch.optim:Adam",
        "--kwargs",
        '{"decoupled_weight_decay": true}',
        "--examples",
        "5",
    )
    assert (code, out.splitlines()[0]) == (0, "Adam: weight decay is decoupled")


def test_no_contract_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "torch.optim:Rprop")
    assert code == 1
    assert "does not accept weight_decay" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["torch.optim.SGD"], "optimizer='torch.optim.SGD' is not allowed: expected PACKAGE."),
        (["no_such_package.optim:SGD"], "expected an importable module (ModuleNotFoundError"),
        (["torch.optim:NoSuchOptimizer"], "expected a class that exists in torch.optim"),
        (
            ["torch.optim:SGD", "--kwargs", "{bad"],
            "--kwargs='{bad' is not allowed: expected a JSON",
        ),
        (["torch.optim:SGD", "--kwargs", "[1]"], "expected a JSON object"),
        (["torch.optim:SGD", "--kwargs", '{"lr": 1}'], "no params, lr or weight_decay"),
        (["torch.optim:SGD", "--examples", "0"], "--examples=0 is not allowed"),
        (["torch.optim:SGD", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: optimizer"),
    ],
)
def test_mistakes_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _run(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("wd-lightning: error: ")
    assert message in err
