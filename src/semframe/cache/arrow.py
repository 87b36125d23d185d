"""Float vectors to and from Arrow list columns (how embeddings go in and out of DuckDB)."""

from __future__ import annotations

from typing import Any


def vectors_array(vecs: Any) -> Any:
    """An Arrow ``list<float>`` array with one row per row of the 2-D float32 array ``vecs``.

    Examples
    --------
    >>> import numpy as np
    >>> vectors_array(np.eye(2, dtype=np.float32)).to_pylist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    import numpy as np
    import pyarrow as pa

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n, d = vecs.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vecs.reshape(-1)))


def vectors_from(column: Any) -> Any:
    """The 2-D float32 array of an Arrow ``list<float>`` column (all rows the same length).

    Examples
    --------
    >>> import pyarrow as pa
    >>> vectors_from(pa.chunked_array([[[1.0, 2.0], [3.0, 4.0]]])).shape
    (2, 2)
    """
    import numpy as np

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(n, -1)
