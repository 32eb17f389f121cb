"""Test-wide setup: 8 fake CPU devices (before jax is imported) and parsed absl flags."""
import os

# Must happen before the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"


def pytest_configure(config):
    # Grain's multiprocessing reads absl flags; outside absl.app.run they must be marked parsed.
    from absl import flags

    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    return PARITY
