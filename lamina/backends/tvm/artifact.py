"""The artifact format: a directory ``NAME.lamina/`` that runs on TVM alone.

::

    NAME.lamina/
      manifest.json   what was built, for which CPU, from what; sha256 of every other file
      model.so        the compiled library (``Executable.export_library``)
      params.bin      the weights (``tvm.runtime.save_param_dict_to_file``), shared by buckets

The manifest carries its own checksum (``manifest_sha256``, over its canonical JSON without that
field), so an edited manifest is refused like an edited library. Writing is atomic: everything
goes to a temporary directory beside the destination and is renamed into place at the end, so a
failure or Ctrl-C never leaves a half-written artifact; a write that fails for lack of space (or
any other OS error) is reported in one line. Verification happens before the library is loaded
(loading a shared object runs its code).

Trust: the checksums detect corruption and accidental edits, not malice (whoever can rewrite a
file can rewrite the manifest's checksums too). Loading an artifact runs its native code with the
loader's rights, so :func:`check_permissions` refuses an artifact that users other than its
owner could have modified; files are written without group/other write bits whatever the umask.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT = "lamina-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
PARAMS = "params.bin"
SUFFIX = ".lamina"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(manifest)).hexdigest()


def versions() -> dict[str, str]:
    """Lamina, TVM and tvm-ffi versions of this environment."""
    import tvm
    import tvm_ffi

    try:
        from lamina._version import __version__ as lamina_version
    except ImportError:  # pragma: no cover
        lamina_version = "unknown"
    return {"lamina_version": str(lamina_version), "tvm_version": str(tvm.__version__),
            "tvm_ffi_version": str(getattr(tvm_ffi, "__version__", "unknown"))}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_space(exc: BaseException, where: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    try:  # TVM's writers raise their own errors: judge by the free space left
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


def _private(path: Path) -> None:
    """Drop group/other write bits (a umask of 002 would leave them, and load() refuses them)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.chmod(path, mode & ~(stat.S_IWGRP | stat.S_IWOTH))


def write_artifact(out_path: str | os.PathLike[str], manifest: dict[str, Any],
                   writers: dict[str, Callable[[Path], None]]) -> Path:
    """Atomically create ``out_path`` with ``manifest.json`` plus one file per ``writers`` entry.

    ``writers`` maps a file name to a function writing that file at the given path. The manifest
    gets ``files`` (sha256 of each) and ``manifest_sha256``. An existing artifact at
    ``out_path`` is replaced; any other existing file or directory is left alone (error).
    """
    out = Path(out_path).absolute()
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).exists()
                                               or not any(out.iterdir()))):
        raise ArtifactError(f"{out}: exists and is not a Lamina artifact; choose another output "
                            "path or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old: Path | None = None
    try:
        files: dict[str, str] = {}
        for name, write in writers.items():
            write(tmp / name)
            _fsync(tmp / name)
            _private(tmp / name)
            files[name] = sha256_file(tmp / name)
        manifest = dict(manifest, files=files)
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        _fsync(tmp / MANIFEST)
        _private(tmp / MANIFEST)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
        os.rename(tmp, out)
    except BaseException as exc:
        if old is not None and not out.exists():
            os.rename(old / out.name, out)  # put the previous artifact back
        if isinstance(exc, Exception) and _no_space(exc, out.parent):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ArtifactError(f"{out}: cannot write the artifact, no space left on the device "
                                f"({type(exc).__name__}: {str(exc).strip()[:200]}); nothing was "
                                f"written: free space under {out.parent} or write elsewhere "
                                "with -o") from exc
        if isinstance(exc, OSError):
            raise ArtifactError(f"{out}: cannot write the artifact ({exc.strerror or exc}"
                                f"{': ' + str(exc.filename) if exc.filename else ''}); nothing "
                                "was written") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    log.info("wrote artifact %s", out)
    return out


def update_manifest(path: str | os.PathLike[str], changes: dict[str, Any]) -> dict[str, Any]:
    """Set top-level ``changes`` in a verified artifact's manifest (new checksum), atomically: a
    reader sees the old manifest or the new one. Returns the new manifest."""
    root, manifest = read_manifest(path)
    manifest = {**manifest, **changes}
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync(Path(tmp))
        _private(Path(tmp))
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def check_permissions(path: str | os.PathLike[str]) -> None:
    """Refuse an artifact that users other than its owner (and root) may have modified.

    Loading runs the library's code, so the directory and every file in it must not be group- or
    world-writable, nor owned by another (non-root) user. A missing artifact is left to
    :func:`read_manifest` to report.
    """
    root = Path(path)
    if not root.is_dir():
        return
    me = os.geteuid()
    for p in [root, *sorted(root.iterdir())]:
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{p}: is a symbolic link; an artifact's files must be its own "
                                "(copy the real file in, or recompile)")
        owner_ok = st.st_uid in (me, 0)
        if owner_ok and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            continue
        why = (f"is owned by uid {st.st_uid}, not by you (uid {me}) or root" if not owner_ok
               else f"is writable by {'other users' if st.st_mode & stat.S_IWOTH else 'its group'}"
               f" (mode {stat.filemode(st.st_mode)})")
        raise ArtifactError(
            f"{p}: {why}; loading an artifact runs its code, so it must be writable only by its "
            f"owner: run `chmod -R go-w {root}` (and chown it to yourself) if you trust it, or set "
            "LAMINA_ALLOW_WRITABLE_ARTIFACTS=1 (load(..., allow_writable=True)) in a container "
            "image whose files are writable by design")


def _recompile_hint(manifest: dict[str, Any] | None = None) -> str:
    src = (manifest or {}).get("extra", {}).get("source_model")
    what = src if src else "MODEL.onnx"
    return f"recompile it on this machine with `lamina compile {what}`"


def read_manifest(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Load and verify an artifact's manifest and files; return (directory, manifest).

    Checks, in order: the directory and manifest exist; format and version; the manifest's own
    checksum; TVM / tvm-ffi versions; every file's sha256; the host CPU's ISA features.
    """
    from .target import host_cpu, missing_features, unsupported_cpu_features

    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir() or not mpath.is_file():
        raise ArtifactError(f"{root}: not a Lamina artifact (no {MANIFEST}); build one with "
                            "`lamina compile MODEL.onnx -o NAME.lamina`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{mpath}: unreadable ({e}); {_recompile_hint()}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not a Lamina artifact manifest; {_recompile_hint()}")
    fv = manifest.get("format_version")
    if fv != FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: artifact format version {fv}, this Lamina reads version "
                            f"{FORMAT_VERSION}; {_recompile_hint(manifest)}")
    if manifest.get("manifest_sha256") != manifest_checksum(manifest):
        raise ArtifactError(f"{mpath}: checksum mismatch, the manifest was modified after it "
                            f"was written; {_recompile_hint(manifest)}")
    here = versions()
    for key, pkg in (("tvm_version", "apache-tvm"), ("tvm_ffi_version", "apache-tvm-ffi")):
        if manifest.get(key) != here[key]:
            raise ArtifactError(
                f"{mpath}: built with {pkg} {manifest.get(key)}, this environment has "
                f"{here[key]}; {_recompile_hint(manifest)}, or install "
                f"{pkg}=={manifest.get(key)}")
    for name, digest in sorted(manifest.get("files", {}).items()):
        fpath = root / name
        if not fpath.is_file():
            raise ArtifactError(f"{fpath}: missing from the artifact; {_recompile_hint(manifest)}")
        if sha256_file(fpath) != digest:
            raise ArtifactError(f"{fpath}: sha256 mismatch, the file was modified or corrupted "
                                f"after the artifact was written; {_recompile_hint(manifest)}")
    for name in (LIBRARY, PARAMS):
        if name not in manifest.get("files", {}):
            raise ArtifactError(f"{mpath}: lists no {name}; {_recompile_hint(manifest)}")
    tgt = manifest.get("target", {})
    missing = missing_features(tgt.get("required_features", []))
    if not missing:
        missing = unsupported_cpu_features(tgt.get("mcpu", "x86-64"), tgt.get("mattr", []))
    if missing:
        raise ArtifactError(
            f"{root}: built for {tgt.get('isa_level')} (mcpu {tgt.get('mcpu')}), but this host "
            f"({host_cpu()}) lacks {', '.join(missing)}; {_recompile_hint(manifest)} "
            "(target auto picks what this CPU supports)")
    return root, manifest
