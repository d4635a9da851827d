"""The data directory: where it is, whether it can be written, how much room is left."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autoglm.ops.doctor.result import Result, failed, passed, warned
from autoglm.ops.doctor.runner import Context

GIB = 1 << 30
FAIL_BELOW = 1 * GIB  # the database, audit segments and a pull's partial file need room
WARN_BELOW = 10 * GIB  # one more model of a few GB
INODES_WARN_BELOW = 10_000


def _existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists (a fresh machine has no data dir yet)."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _unwritable(base: Path) -> str:
    """Why a file cannot be created in ``base`` ('' when it can): tried, not guessed from
    the mode bits (root, read-only mounts and ACLs fool those); the file is removed."""
    try:
        fd, name = tempfile.mkstemp(prefix=".autoglm-doctor-", dir=base)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return ""


def data_dir(ctx: Context) -> list[Result]:
    target = ctx.settings.data_dir.expanduser().absolute()
    base = _existing(target)
    out: list[Result] = []
    where = str(target) if base == target else f"{target} (not created yet; {base} exists)"
    if base.exists() and not base.is_dir():
        return [failed("storage.data_dir", f"{base} is a file, not a directory",
                       "set data_dir to a directory (AUTOGLM_DATA_DIR or --data-dir)",
                       path=str(target))]
    why = _unwritable(base)
    if why:
        out.append(failed("storage.data_dir", f"{where}: cannot write there ({why})",
                          f"make it writable by the service user (uid {os.getuid()}): mkdir -p "
                          f"{target} && chown $(id -u) {target}; or set data_dir elsewhere",
                          path=str(target)))
    else:
        out.append(passed("storage.data_dir", f"{where}: writable", path=str(target),
                          exists=base == target))
    st = os.statvfs(base)
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    data = {"path": str(base), "free_bytes": free, "total_bytes": total,
            "free_inodes": st.f_favail}
    gib = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB"
    fix = (f"free space on the file system of {base}, or move data_dir to a larger disk "
           "(models go to data_dir/models)")
    if free < FAIL_BELOW:
        out.append(failed("storage.disk_free", f"{gib}: too little for the database, audit "
                          "log and models", fix, **data))
    elif free < WARN_BELOW:
        out.append(warned("storage.disk_free", f"{gib}: room for little more than the "
                          "database and audit log", fix, **data))
    elif st.f_files and st.f_favail < INODES_WARN_BELOW:
        out.append(warned("storage.disk_free", f"{gib}, but only {st.f_favail} inodes free",
                          fix, **data))
    else:
        out.append(passed("storage.disk_free", gib, **data))
    return out
