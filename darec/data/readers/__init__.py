"""Readers: raw dataset files to canonical tables.

Every reader returns ``(interactions, items, inputs)``:

* ``interactions``: DataFrame with ``user`` and ``item`` (raw ids, ``str``), ``timestamp`` (float,
  seconds where the source says what it is) and, when the source has one, ``rating``; in source
  row order; or, from a streaming reader (``amazon``), the same rows as a
  :class:`~darec.data.coded.CodedInteractions` (integer codes and numpy columns);
* ``items``: DataFrame with ``item`` (raw id) plus one column per attribute (a string, a number,
  a list of strings or ``None``), or ``None`` when the source has no item metadata;
* ``inputs``: ``{path: sha256}`` of every file read.

Readers are looked up by name in :data:`~darec.data.readers.registry.READERS`;
:func:`~darec.data.readers.registry.register_reader` adds one, and :func:`~darec.data.readers.registry.read_source`
calls one with options from a config, checking the option names. Importing this package registers the built-in
readers: ``ml-100k`` and ``ml-1m`` (:mod:`.movielens`), ``recbole`` (:mod:`.recbole`), ``amazon`` (:mod:`.amazon`)
and ``csv`` (:mod:`.table`).
"""

from darec.data.readers import amazon, movielens, recbole, table  # noqa: F401  (each registers its readers)
