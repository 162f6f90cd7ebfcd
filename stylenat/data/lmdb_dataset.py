"""The rosinality / StyleNAT reference LMDB layout as a data set (see ``datasets`` for the policy).

Keys ``f"{R}-{i:05d}"`` -> encoded R x R image bytes, ``b"length"`` -> ascii count. One environment per
path and process is shared by every data set on that path (py-lmdb refuses a second one).
"""

from __future__ import annotations

import os

from stylenat.data.datasets import _EncodedImageDataset
from stylenat.data.errors import DatasetError
from stylenat.data.images import check_max_images


def lmdb_key(resolution: int, index: int) -> bytes:
    """Key of image ``index`` at ``resolution`` in the reference LMDB layout."""
    return f"{resolution}-{str(index).zfill(5)}".encode()


# One environment per LMDB path and process: py-lmdb refuses to open the same environment twice in a
# process, so data sets on one path (e.g. training and metrics) share it. After a fork the inherited
# entry is closed in the child (safe for readonly, lock=False) and the child opens its own.
_LMDB_ENVS: dict[str, tuple[int, object]] = {}


def _shared_lmdb_env(key: str):
    entry = _LMDB_ENVS.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    try:
        import lmdb
    except ImportError:
        raise DatasetError(
            "reading LMDB data sets needs the lmdb package: pip install 'stylenat[lmdb]'"
        ) from None
    if entry is not None:
        entry[1].close()
    env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
    _LMDB_ENVS[key] = (os.getpid(), env)
    return env


class LMDBDataset(_EncodedImageDataset):
    """A rosinality / StyleNAT reference LMDB (opened lazily per process, readonly, lock=False)."""

    format = "lmdb"
    _key = None  # the environment's key (the real path), once data.mdb is found

    def _labels_json(self) -> tuple[None, str]:
        return None, str(self.path)  # an LMDB holds no labels

    def _index(self, max_images: int | None) -> None:
        if not (self.path / "data.mdb").is_file():
            raise DatasetError(f"{self.path} is not an LMDB directory (no data.mdb inside)")
        self._key = os.path.realpath(self.path)
        with self._env().begin(buffers=True) as txn:
            if self.resolution is None:
                self.resolution = self._only_stored_resolution(txn)
            self._n, self._value_sizes = self._read_index(txn, check_max_images(max_images))

    def _read_index(self, txn, max_images: int | None) -> tuple[int, list[int]]:
        """Image count and stored value sizes (for the fingerprint), with clear layout errors."""
        raw = txn.get(b"length")
        if raw is None:
            raise DatasetError(f"{self.path} has no b'length' key: not an LMDB in the reference layout")
        try:
            n = int(bytes(raw).decode("ascii"))
        except ValueError:
            raise DatasetError(
                f"{self.path}: b'length' holds {bytes(raw)[:32]!r}, not an ascii count"
            ) from None
        if max_images is not None:
            n = min(n, max_images)
        if n <= 0:
            raise DatasetError(f"no images found under {self.path}")
        if txn.get(lmdb_key(self.resolution, 0)) is None:
            found = self._stored_resolutions(txn)
            raise DatasetError(
                f"{self.path} has no images at resolution {self.resolution} (key "
                f"{lmdb_key(self.resolution, 0)!r} missing; stored resolutions: {found or 'none'})"
            )
        return n, [len(txn.get(lmdb_key(self.resolution, i)) or b"") for i in range(n)]

    def _only_stored_resolution(self, txn) -> int:
        """The resolution of an LMDB holding one (opened "as stored"); several need a choice."""
        found = self._stored_resolutions(txn)
        if len(found) != 1:
            raise DatasetError(
                f"{self.path} holds images at resolutions {found or 'none'}: choose one (resolution=R)"
            )
        return found[0]

    @staticmethod
    def _stored_resolutions(txn) -> list[int]:
        """Distinct ``R`` of ``R-xxxxx`` keys, jumping over each prefix instead of reading every key."""
        found = []
        cur = txn.cursor()
        ok = cur.first()
        while ok:
            key = bytes(cur.key())
            prefix, sep, _ = key.partition(b"-")
            if sep and prefix.isdigit():
                found.append(int(prefix))
            ok = cur.set_range(prefix + b"." if sep else key + b"\x00")
        return sorted(found)

    def _env(self):
        return _shared_lmdb_env(self._key)

    def close(self) -> None:
        """Close this process's environment for this path (shared by every data set on it; it
        re-opens on the next read)."""
        entry = _LMDB_ENVS.pop(self._key, None)
        if entry is not None:
            entry[1].close()

    @property
    def num_images(self) -> int:
        return self._n

    def image_name(self, raw_index: int) -> str:
        return lmdb_key(self.resolution, raw_index).decode()

    def _read_bytes(self, raw_index: int) -> bytes:
        with self._env().begin(write=False) as txn:
            data = txn.get(lmdb_key(self.resolution, raw_index))
        if data is None:
            raise DatasetError(
                f"{self.path} has no key {lmdb_key(self.resolution, raw_index)!r} (length says {self._n})"
            )
        return data

    def _fingerprint_payload(self) -> dict:
        return {"count": self._n, "value_sizes": self._value_sizes}
