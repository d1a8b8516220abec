"""Fixtures for every test: the CPU vendor that ``--backend auto`` sees is pinned, so no test depends on the
machine it runs on.

``auto`` picks OpenVINO for ONNX graphs on an Intel CPU and ONNX Runtime on an AMD one
(``aaclip.runtime.backends.machine``). Every test runs as the ``--cpu-vendor`` machine (default ``amd``;
``$AACLIP_CPU_VENDOR`` carries it into the commands tests start as subprocesses), and a test marked
``both_cpus`` runs twice, once as an Intel and once as an AMD machine would resolve ``auto``, so neither
vendor branch can rot. Tests that compare numbers name their backend instead of relying on ``auto``.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fixture modules beside the tests

VENDOR_ENV = "AACLIP_CPU_VENDOR"  # aaclip.runtime.backends.machine.VENDOR_ENV (not imported: keep conftest light)
VENDORS = {"intel": "GenuineIntel", "amd": "AuthenticAMD"}


def pytest_addoption(parser):
    parser.addoption("--cpu-vendor", choices=tuple(VENDORS), default="amd",
                     help="the CPU vendor --backend auto sees in tests not marked both_cpus (default: amd)")


def pytest_configure(config):
    config.addinivalue_line("markers", "both_cpus: runs once as an Intel and once as an AMD CPU would resolve "
                                       "--backend auto (the cpu_vendor fixture names which)")
    os.environ[VENDOR_ENV] = VENDORS[config.getoption("--cpu-vendor")]  # for module/session fixtures too


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_cpus") and "cpu_vendor" in metafunc.fixturenames:
        metafunc.parametrize("cpu_vendor", list(VENDORS), indirect=True)


@pytest.fixture
def cpu_vendor(request) -> str:
    """'intel' or 'amd': the vendor --backend auto sees in this test."""
    return getattr(request, "param", request.config.getoption("--cpu-vendor"))


@pytest.fixture(autouse=True)
def _pinned_cpu_vendor(cpu_vendor, monkeypatch):
    monkeypatch.setenv(VENDOR_ENV, VENDORS[cpu_vendor])
    yield
