"""Write a run's batches to a file as they come (``SemLazyFrame.sink_parquet`` and friends).

A sink receives each output batch once and keeps nothing, so writing a million rows needs no
more memory than one batch. The file appears under its name only when the run completes: batches
go to a temporary file beside it, renamed at the end (a failed or stopped run leaves no file, and
every answer it got is in the exact cache for the rerun). Parquet and IPC are written with
pyarrow (what polars' own writers use underneath); CSV and NDJSON with polars' writers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from semframe.errors import PlanError

_PARQUET_OPTIONS = ("compression", "compression_level", "statistics", "row_group_size")
_CSV_OPTIONS = ("separator", "include_header", "quote_char", "null_value", "line_terminator", "float_precision",
                "date_format", "datetime_format", "time_format", "quote_style", "include_bom")


class FileSink:
    """Base of the sinks: a temporary file renamed into place by :meth:`close`."""

    suffix = ""

    def __init__(self, path: str | os.PathLike, schema: pl.Schema, options: dict[str, Any], allowed: tuple[str, ...]):
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise PlanError(f"sink: unsupported option(s) {unknown}; supported: {', '.join(allowed) or 'none'}")
        self.path = Path(path).expanduser()
        if not self.path.parent.exists():
            raise PlanError(f"sink: the folder {str(self.path.parent)!r} does not exist")
        self.tmp = self.path.with_name(f".{self.path.name}.semframe-partial")
        self.schema = schema
        self.options = options
        self.rows = 0

    def write(self, frame: pl.DataFrame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def close(self, ok: bool) -> None:
        """Finish the file and move it into place (``ok``), or remove what was written."""
        try:
            self._finish()
        finally:
            if ok:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


class ParquetSink(FileSink):
    def __init__(self, path: str | os.PathLike, schema: pl.Schema, **options: Any):
        super().__init__(path, schema, options, _PARQUET_OPTIONS)
        import pyarrow.parquet as pq

        self._arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        self._row_group_size = options.get("row_group_size")
        self._writer = pq.ParquetWriter(
            self.tmp, self._arrow_schema, compression=options.get("compression", "zstd"),
            compression_level=options.get("compression_level"), write_statistics=options.get("statistics", True))

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if table.schema != self._arrow_schema:
            table = table.cast(self._arrow_schema)
        self._writer.write_table(table, row_group_size=self._row_group_size)
        self.rows += frame.height

    def _finish(self) -> None:
        self._writer.close()


class IpcSink(FileSink):
    def __init__(self, path: str | os.PathLike, schema: pl.Schema, **options: Any):
        super().__init__(path, schema, options, ("compression",))
        import pyarrow as pa

        self._arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        compression = options.get("compression", "zstd")
        self._writer = pa.ipc.new_file(str(self.tmp), self._arrow_schema,
                                       options=pa.ipc.IpcWriteOptions(compression=compression))

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if table.schema != self._arrow_schema:
            table = table.cast(self._arrow_schema)
        self._writer.write_table(table)
        self.rows += frame.height

    def _finish(self) -> None:
        self._writer.close()


class CsvSink(FileSink):
    def __init__(self, path: str | os.PathLike, schema: pl.Schema, **options: Any):
        super().__init__(path, schema, options, _CSV_OPTIONS)
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish
        self._header = options.pop("include_header", True)
        pl.DataFrame(schema=schema).write_csv(self._file, include_header=self._header, **options)

    def write(self, frame: pl.DataFrame) -> None:
        frame.write_csv(self._file, include_header=False, **self.options)
        self.rows += frame.height

    def _finish(self) -> None:
        self._file.close()


class NdjsonSink(FileSink):
    def __init__(self, path: str | os.PathLike, schema: pl.Schema, **options: Any):
        super().__init__(path, schema, options, ())
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish

    def write(self, frame: pl.DataFrame) -> None:
        frame.write_ndjson(self._file)
        self.rows += frame.height

    def _finish(self) -> None:
        self._file.close()


SINKS = {"sink_parquet": ParquetSink, "sink_ipc": IpcSink, "sink_csv": CsvSink, "sink_ndjson": NdjsonSink}
