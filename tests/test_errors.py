"""One base class of user errors: every kind is a SegtuneError (and still a ValueError), and
the CLI turns any of them into one line and exit code 2."""

from __future__ import annotations

import pytest

from search.compare import CompareError
from search.errors import SegtuneError
from search.soup import SoupError
from search.spec import SpecError
from search.storage import StorageError
from train_fn.datasets import DataError


@pytest.mark.parametrize("kind", [SpecError, SoupError, DataError, CompareError, StorageError])
def test_user_errors_share_one_base(kind):
    assert issubclass(kind, SegtuneError) and issubclass(kind, ValueError)


def test_cli_catches_the_base_once(monkeypatch, capsys):
    import search.cli as cli

    class NewKind(SegtuneError):
        pass

    def fail(args):
        raise NewKind("x.yaml: a new kind of user error")

    monkeypatch.setattr(cli, "_soup", fail)
    assert cli.main(["soup", "somewhere"]) == 2
    assert capsys.readouterr().err == "segtune: error: x.yaml: a new kind of user error\n"
