"""One user-error type: every error we raise for users is a UserError, which the CLI prints as
`error: ...` with its exit code (2, or 1 for a diverged run) instead of a traceback."""

import pytest

from radial_jax import cli
from radial_jax.config import ConfigError
from radial_jax.data.sources import DataError
from radial_jax.errors import NotFoundError, UserError
from radial_jax.io.hf.common import HFError
from radial_jax.io.tensors import ExportError
from radial_jax.parallel.mesh import MeshError
from radial_jax.sweep.report import ReportError
from radial_jax.sweep.spec import SweepError
from radial_jax.train.checkpoint import CheckpointError
from radial_jax.train.nonfinite import NonFiniteError
from radial_jax.train.preflight import RunDirError


@pytest.mark.parametrize("cls", [ConfigError, MeshError, DataError, CheckpointError, RunDirError, ExportError,
                                 HFError, SweepError, ReportError, NotFoundError, NonFiniteError])
def test_user_errors_share_one_type(cls):
    assert issubclass(cls, UserError)


@pytest.mark.parametrize("error, code", [(CheckpointError("step 3 is damaged"), 2),
                                         (NotFoundError("no such folder: x"), 2),
                                         (NonFiniteError("loss is NaN at step 7"), 1)])
def test_cli_prints_a_user_error_and_exits_with_its_code(monkeypatch, capsys, error, code):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_report", fail)
    assert cli.main(["report", "somewhere"]) == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    def fail(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_cmd_report", fail)
    with pytest.raises(KeyError):
        cli.main(["report", "somewhere"])
