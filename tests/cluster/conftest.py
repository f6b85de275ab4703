"""A real etcd for the cluster tests (Debian's etcd-server; skipped with a
reason when it is not installed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqbroker.testing.cluster import EtcdProcess


@pytest.fixture
def etcd_url(tmp_path: Path) -> Iterator[str]:
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        yield etcd.url
    finally:
        etcd.stop()
