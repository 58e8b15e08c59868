"""Runs a guest build (componentize-py) in a sandbox of its own.

componentize-py runs the app's top level at build time, and a user function's top level is untrusted
code. componentize-py gives it the build's Python path, by default including the host's
site-packages, read-write: a ``.pth`` file written there runs in every later Python on the host. So
every build runs as a child in new user, mount, PID, network, IPC and UTS namespaces:

- its root is an empty tmpfs holding only what the build needs, bound read-only: ``/usr`` (and the
  ``/bin``, ``/lib`` links), the Python installation running componentize-py, the app, the WIT
  files and any extra Python path; ``/etc``, ``/home``, ``/root`` and the rest of the host are absent;
- the only writable places are the build's own scratch directory (its output) and a private
  ``/tmp``; componentize-py's guest sees an empty ``site-packages`` (``VIRTUAL_ENV``), not the host's;
- no network, its own ``/proc``, all capabilities dropped and no new privileges before the build
  starts (``setpriv``), and limits: CPU seconds, data segment, file size, and a wall-clock timeout
  that kills the whole PID namespace.

Needs ``unshare``, ``mount`` and ``setpriv`` (util-linux) and the right to create user namespaces
(root, or unprivileged user namespaces). Where namespaces cannot be made at all (an agent pod under
the default seccomp profile) the build keeps the empty site-packages and the limits, and the pod's
read-only, unprivileged file system is the sandbox; that is logged once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Generous for componentize-py on a busy node (it takes seconds to a minute), small against abuse.
BUILD_CPU_S = 300
BUILD_DATA_BYTES = 4 * 1024**3
BUILD_FILE_BYTES = 512 * 1024**2
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


log = logging.getLogger(__name__)


class BuildSandboxUnavailable(RuntimeError):
    """This host cannot make the build sandbox (no unshare, or no user namespaces)."""


@dataclass(frozen=True)
class Jail:
    """What the build may see: ``readable`` paths read-only, ``writable`` ones read-write, nothing else."""

    readable: list[str]
    writable: list[str]
    root: str  # an empty directory the sandbox's root is mounted on
    cwd: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cpu_s: int = BUILD_CPU_S
    data_bytes: int = BUILD_DATA_BYTES
    file_bytes: int = BUILD_FILE_BYTES


def python_roots() -> list[str]:
    """The running Python's installation: the interpreter, its stdlib and site-packages (componentize-py)."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(roots)


def componentize_py_command(args: Sequence[str]) -> list[str]:
    """componentize-py run by this Python (no shell shims, which would need more of the host).

    sys.executable is kept as it is, not resolved: in a virtual environment (the image's) it is a link
    whose location tells Python where the environment's site-packages, and componentize-py, are."""
    launcher = "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())"
    return [sys.executable, "-I", "-c", launcher, *args]


_NAMESPACES = ["--user", "--map-root-user", "--mount", "--pid", "--fork", "--net", "--ipc", "--uts"]
_SETUP_FAILED = 97


@functools.cache
def namespaces_available() -> bool:
    """Whether this process may make the sandbox's namespaces (not in a pod under a default seccomp
    profile without CAP_SYS_ADMIN, for example)."""
    tools = [shutil.which(t) for t in ("unshare", "mount", "setpriv")]
    if None in tools:
        return False
    probe = subprocess.run([str(tools[0]), *_NAMESPACES, "true"], capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def run_sandboxed(
    args: Sequence[str],
    *,
    readable: Sequence[Path],
    scratch: Path,
    timeout_s: float,
    command: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs componentize-py ``args`` (or another build's whole ``command``, e.g. componentize-js under
    Node.js) in the build sandbox; ``scratch`` (the cwd) is its one writable place.

    Where namespaces cannot be made (an agent pod: non-root, no capabilities, a read-only root file
    system, which is itself the sandbox) the build runs with the empty site-packages and the limits
    only, and says so once in the log."""
    venv = scratch / ".venv"
    (venv / "lib" / "python" / "site-packages").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tars-build-root-") as root:
        jail = Jail(
            readable=sorted({*python_roots(), *(os.path.realpath(p) for p in readable)}),
            writable=[os.path.realpath(scratch)],
            root=root,
            cwd=os.path.realpath(scratch),
            command=list(command) if command is not None else componentize_py_command(args),
            # An empty site-packages for the guest's Python path instead of the host's.
            env={"HOME": "/tmp", "PATH": "/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "LANG": "C.UTF-8"},
        )
        if not namespaces_available():
            _warn_unconfined()
            return subprocess.run(
                jail.command,
                capture_output=True,
                text=True,
                cwd=scratch,
                env=jail.env,
                check=False,
                timeout=timeout_s,
                preexec_fn=lambda: _limit(jail),
            )
        inside = [os.path.realpath(sys.executable), "-c", "from tars_guests.buildjail import inside; inside()"]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TARS_BUILD_JAIL": json.dumps(asdict(jail))}
        result = subprocess.run(
            ["unshare", *_NAMESPACES, "--kill-child", *inside],
            capture_output=True,
            text=True,
            cwd=scratch,
            env={**env, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            check=False,
            timeout=timeout_s,
        )
    if result.returncode == _SETUP_FAILED:
        raise BuildSandboxUnavailable(f"the build sandbox could not be made: {result.stderr.strip()[-500:]}")
    return result


@functools.cache
def _warn_unconfined() -> None:
    log.warning(
        "guest builds run without their namespace sandbox here (no user namespaces): confined by the "
        "container, an empty site-packages and resource limits only"
    )


def _limit(jail: Jail) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (jail.cpu_s, jail.cpu_s))
    resource.setrlimit(resource.RLIMIT_DATA, (jail.data_bytes, jail.data_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (jail.file_bytes, jail.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _bind(source: str, root: str, writable: bool, device: bool = False) -> None:
    target = root + source
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount("--rbind", source, target)
    # A remount inside a user namespace must keep the flags the host's mount has (they are locked).
    host = os.statvfs(source).f_flag
    flags = ["remount", "bind", "nosuid"]
    flags += [] if device and not host & os.ST_NODEV else ["nodev"]
    flags += ["noexec"] if host & os.ST_NOEXEC else []
    flags += [] if writable and not host & os.ST_RDONLY else ["ro"]
    _mount("-o", ",".join(flags), target)


def _build_root(jail: Jail, root: str) -> None:
    _mount("--make-rprivate", "/")
    _mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "tars-build-root", root)
    # A private /tmp first: paths bound below may lie under the host's /tmp and must stay visible.
    os.makedirs(root + "/tmp", exist_ok=True)
    _mount("-t", "tmpfs", "-o", "size=256m,mode=1777,nosuid,nodev", "tars-build-tmp", root + "/tmp")
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind(path, root, writable=False)
    for path in jail.readable:
        _bind(path, root, writable=False)
    for path in jail.writable:
        _bind(path, root, writable=True)
    for device in _DEVICES:
        if os.path.exists(device):
            _bind(device, root, writable=True, device=True)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", root + "/proc")
    _mount("-o", "remount,ro,bind", root)


def inside() -> None:
    """Runs in the new namespaces (as PID 1): builds the root, confines itself, then runs the build."""
    jail = Jail(**json.loads(os.environ["TARS_BUILD_JAIL"]))
    root = jail.root
    try:
        _build_root(jail, root)
        os.chroot(root)
        os.chdir(jail.cwd)
        _limit(jail)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"build sandbox setup failed: {exc} {detail}".strip(), file=sys.stderr)
        os._exit(_SETUP_FAILED)
    setpriv = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
    # PID 1 of the namespace must wait for the build, so the build is a child, not an exec.
    result = subprocess.run([*setpriv, *jail.command], env=jail.env, check=False)
    os._exit(result.returncode)
