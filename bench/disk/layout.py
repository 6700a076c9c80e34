"""A test file laid out like a journal (for the probes beside it): `sparse` (`set_len`, as
fjall makes its journals), `fallocated`, or `written` (zeros first, as a reused journal)."""
import os


def open_laid_out(path, layout, size):
    """Creates `path` of `size` bytes laid out as `layout`, synced; returns its descriptor at 0."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if layout == "written":
        for _ in range(size >> 20):
            os.write(fd, b"\0" * (1 << 20))
        os.lseek(fd, 0, os.SEEK_SET)
    elif layout == "fallocated":
        os.posix_fallocate(fd, 0, size)
    elif layout == "sparse":
        os.ftruncate(fd, size)
    else:
        raise SystemExit(f"unknown layout {layout}: sparse, fallocated or written")
    os.fsync(fd)
    return fd
