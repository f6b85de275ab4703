"""A real etcd for the cluster tests (Debian's etcd-server; skipped with a
reason when it is not installed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqbroker.testing.cluster import EtcdProcess


@pytest.fixture
def etcd_process(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd; the test may stop it (losing etcd is a case to test)."""
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def etcd_url(etcd_process: EtcdProcess) -> str:
    return etcd_process.url
