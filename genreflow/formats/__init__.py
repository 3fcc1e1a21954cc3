"""One module per artifact genreflow writes: its file names, Arrow schema, reader and
completion marker. Every stage reads and writes its artifacts through these modules;
none of them uses Ray.

- :mod:`genreflow.formats.dataset`: token shards, error rows and the dataset manifest
  (``genreflow ingest``);
- :mod:`genreflow.formats.labels`: label partitions and their run records
  (``genreflow label``);
- :mod:`genreflow.formats.index`: index versions, the published pointer and the
  neighbours table (``genreflow index``).
"""
