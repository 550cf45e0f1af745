"""A large natural text federation that runs offline: one client per Python source file.

``python_files(folder)``: every ``*.py`` file under ``folder`` (by default this interpreter's
``site-packages``, which ``make`` fills: about 10^4 files), in sorted path order, is one client
whose examples are next-byte windows of its UTF-8 bytes (at most ``max_client_bytes``): windows
of ``sequence_length + 1`` bytes, ``x`` the first ``sequence_length``, ``y`` the same shifted by
one, stored as ``uint8`` (256 classes). Files shorter than one window are left out. The last
``round(test_fraction * n)`` windows of a file are its test split, and the global test set pools
the test splits of ``GLOBAL_TEST_CLIENTS`` clients chosen by the seed. Client sizes are as skewed
as source files are (a few long modules, many short ones), below the cap. The federation depends
on what is installed: the client count is checked against ``data.num_clients`` (the error
gives the count found). The clients are not named by ``client_paths``: client metrics would
then be broken down by top-level package, hundreds of them.
"""

from __future__ import annotations

import pathlib
import sysconfig

import numpy as np

from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.ragged import ClientArrays

BYTE_VOCAB = 256
GLOBAL_TEST_CLIENTS = 500


def _windows(data: bytes, sequence_length: int) -> np.ndarray:
  count = len(data) // (sequence_length + 1)
  return np.frombuffer(data[: count * (sequence_length + 1)], np.uint8).reshape(
    count, sequence_length + 1
  )


def python_files(
  folder: str | None = None,
  *,
  sequence_length: int = 64,
  max_client_bytes: int = 4096,
  test_fraction: float = 0.1,
  seed: int = 0,
) -> FederatedData:
  """The federation of the Python files under ``folder`` (module docstring)."""
  root = pathlib.Path(folder or sysconfig.get_paths()["purelib"])
  clients = []
  for path in sorted(root.rglob("*.py")):
    windows = _windows(path.read_bytes()[:max_client_bytes], sequence_length)
    if len(windows):
      clients.append(windows)
  if not clients:
    raise FileNotFoundError(f"data.source_dir={str(root)!r} holds no Python file of a window")
  num_test = [round(test_fraction * len(windows)) for windows in clients]
  split = lambda part: ClientArrays(
    np.concatenate([w[part(w, t), :-1] for w, t in zip(clients, num_test)]),
    np.concatenate([w[part(w, t), 1:] for w, t in zip(clients, num_test)]),
    np.concatenate([[0], np.cumsum([len(w[part(w, t)]) for w, t in zip(clients, num_test)])]),
  )
  train = split(lambda windows, test: slice(0, len(windows) - test))
  test = split(lambda windows, test: slice(len(windows) - test, len(windows)))
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.choice(len(clients), min(len(clients), GLOBAL_TEST_CLIENTS), replace=False))
  global_x, global_y = test.gather(chosen)
  return FederatedData(train, test, global_x, global_y, BYTE_VOCAB)
