"""The remote half of a tether kernel: started over SSH, it runs one ipykernel and guards it.

This file is never installed on the remote host. The local side sends its source over the SSH
session's stdin (``python -c BOOTSTRAP`` reads and executes it), so it must stay stdlib-only and
run on any Python >= 3.8. The wire format is specified in docs/kernel-launch.md.

Why a launcher at all:
- the connection file (with the session key) arrives on stdin and is written 0600, so the key
  never appears on a command line;
- the kernel binds the remote 127.0.0.1 only, on ports picked here;
- the kernel dies when its SSH session dies (stdin EOF), or, in ``grace`` lifetime, after a
  grace period without a controller, so nothing is orphaned; ``JPY_PARENT_PID`` makes the
  kernel exit should the launcher itself be killed;
- signals (interrupt in ``signal`` mode, terminate, kill) reach the kernel's process group
  without a second SSH session;
- in ``grace`` lifetime a later SSH session re-attaches through a unix socket in the kernel's
  0700 directory and gets the connection info back.

One session can also run it as the host link's *agent* (``serve``): it then answers further
requests arriving as connections to its unix socket (or, where the host refuses unix-socket
forwarding, to a port of 127.0.0.1), each forwarded by the same OpenSSH master, and forks one
launcher per connection. A launch through the agent skips the
SSH handshake, the remote shell's rc files and the python start-up; everything else is the
same code with the connection in place of stdin/stdout.
"""

import hmac
import json
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

MARK = "TETHER-KERNEL/1 "
PROTOCOL = 1
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
KERNEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT_STATE_DIR = "~/.local/state/tether/kernels"
SOCKET_NAME = "control.sock"
STOP_WAIT_S = 3.0
AUTH_WAIT_S = 10.0  # an agent connection must send its request line within this
MAX_REQUEST = 1 << 20


class LauncherError(Exception):
    def __init__(self, code, message, **extra):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.extra = extra


class Out(object):
    """Thread-safe writer of protocol lines to one controller."""

    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()
        self.broken = False

    def send(self, obj):
        data = (MARK + json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with self.lock:
            if self.broken:
                return False
            try:
                self.stream.write(data)
                self.stream.flush()
                return True
            except (OSError, ValueError):
                self.broken = True
                return False


class Controller(object):
    """One party giving orders: the launching SSH session, or a later attach."""

    def __init__(self, reader, out, events, name, sock=None):
        self.reader = reader
        self.out = out
        self.name = name
        self.sock = sock
        self.closed = False
        self.thread = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.thread.start()

    def _read(self, events):
        while True:
            try:
                line = self.reader.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                events.put(("eof", self, None))
                return
            try:
                msg = json.loads(line.decode())
            except ValueError:
                continue  # a stray line (a shell banner) is not an order
            events.put(("msg", self, msg))

    def close(self):
        # Never close a reader another thread is blocked in: BufferedReader.close() waits for
        # that read to return, which on a silent link is never. A socket is shut down instead
        # (that wakes its reader); stdin is left to the process's exit.
        self.closed = True
        self.out.broken = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def state_base(req):
    return os.path.abspath(os.path.expanduser(req.get("state_dir") or DEFAULT_STATE_DIR))


def kernel_dir(req):
    kid = str(req.get("kernel_id", ""))
    if not KERNEL_ID_RE.match(kid):
        raise LauncherError("bad_request", "invalid kernel id %r" % kid)
    return os.path.join(state_base(req), kid)


def write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def free_ports(count):
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def resolve_argv(kernel_name, argv):
    """The kernel command: the one the local side cached, else the remote kernelspec's."""
    if not argv:
        try:
            from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
        except ImportError:
            raise LauncherError("no_jupyter_client", "jupyter_client is not importable") from None
        try:
            argv = KernelSpecManager().get_kernel_spec(kernel_name).argv
        except NoSuchKernel:
            raise LauncherError("no_kernelspec", "no kernelspec named %r" % kernel_name) from None
    argv = list(argv)
    # jupyter_client does the same: a bare "python" means the interpreter running us
    major = "python%d" % sys.version_info[0]
    minor = "python%d.%d" % sys.version_info[:2]
    if argv and argv[0] in ("python", major, minor):
        argv[0] = sys.executable
    return argv


def probe(req):
    info = {"python": sys.version.split()[0], "executable": sys.executable,
            "ipykernel": None, "kernelspec": None, "kernelspecs": []}
    # located, not imported: importing ipykernel costs ~0.5 s of every health check
    import importlib.util
    try:
        found = importlib.util.find_spec("ipykernel") is not None
    except (ImportError, ValueError) as exc:
        found, info["ipykernel_error"] = False, "%s: %s" % (type(exc).__name__, exc)
    if found:
        try:
            from importlib.metadata import version
            info["ipykernel"] = version("ipykernel")
        except Exception:  # metadata missing (a source checkout): present all the same
            info["ipykernel"] = "unknown"
    else:
        info.setdefault("ipykernel_error", "No module named 'ipykernel'")
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
        ksm = KernelSpecManager()
        info["kernelspecs"] = sorted(ksm.find_kernel_specs())
        try:
            spec = ksm.get_kernel_spec(req.get("kernel") or "python3")
            info["kernelspec"] = {"argv": resolve_argv("", spec.argv),
                                  "interrupt_mode": spec.interrupt_mode,
                                  "language": spec.language,
                                  "display_name": spec.display_name}
        except NoSuchKernel:
            pass
    except Exception as exc:
        info["jupyter_client_error"] = "%s: %s" % (type(exc).__name__, exc)
    return info


def list_kernels(req):
    base = state_base(req)
    found = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        try:
            with open(os.path.join(base, name, "launcher.json")) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            continue
        rec["alive"] = pid_alive(rec.get("launcher_pid"))
        found.append(rec)
    return found


def launcher_alive(kdir):
    try:
        with open(os.path.join(kdir, "launcher.json")) as fh:
            return pid_alive(json.load(fh).get("launcher_pid"))
    except (OSError, ValueError):
        # no record yet: a launcher may be between mkdir and writing it
        return time.time() - os.stat(kdir).st_mtime < 30


def pid_alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


class Launcher(object):
    def __init__(self, req, first):
        self.req = req
        self.events = queue.Queue()
        self.kdir = kernel_dir(req)
        self.lifetime = req.get("lifetime", "session")
        self.grace_s = float(req.get("grace_s", 0))
        self.controller = None
        self.proc = None
        self.conn = None
        self.server = None
        self.first = first

    # -- start -------------------------------------------------------------------------
    def start(self):
        base = os.path.dirname(self.kdir)
        if not os.path.isdir(base):
            os.makedirs(base, 0o700)
        try:
            os.mkdir(self.kdir, 0o700)
        except FileExistsError:
            if launcher_alive(self.kdir):
                raise LauncherError("exists", "kernel %s already runs here"
                                    % self.req["kernel_id"]) from None
            shutil.rmtree(self.kdir, ignore_errors=True)  # left by a launcher killed hard
            os.mkdir(self.kdir, 0o700)
        try:
            return self._start()
        except BaseException:
            if self.proc is not None and self.proc.poll() is None:
                self.signal_kernel(signal.SIGKILL)
            shutil.rmtree(self.kdir, ignore_errors=True)
            raise

    def _start(self):
        os.chmod(self.kdir, 0o700)
        conn = dict(self.req["connection"])
        conn.update(ip="127.0.0.1", transport="tcp")
        conn.update(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        cfile = os.path.join(self.kdir, "connection.json")
        write_private(cfile, json.dumps(conn, indent=1))
        argv = [a.replace("{connection_file}", cfile)
                for a in resolve_argv(self.req.get("kernel", "python3"), self.req.get("argv"))]
        env = dict(os.environ)
        env.update(self.req.get("env") or {})
        env["JPY_PARENT_PID"] = str(os.getpid())
        env["TETHER_KERNEL_ID"] = self.req["kernel_id"]
        cwd = os.path.expanduser(self.req.get("cwd") or "~")
        log = open(os.path.join(self.kdir, "kernel.log"), "ab")
        try:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        except OSError as exc:
            raise LauncherError("spawn_failed",
                                "could not start %s: %s" % (argv[0], exc)) from None
        finally:
            log.close()
        self.conn = conn
        record = {"v": PROTOCOL, "kernel_id": self.req["kernel_id"],
                  "launcher_pid": os.getpid(), "kernel_pid": self.proc.pid,
                  "ports": dict((n, conn[n]) for n in PORT_NAMES), "lifetime": self.lifetime,
                  "grace_s": self.grace_s, "started_at": time.time(),
                  "kernel": self.req.get("kernel", "python3"), "tag": self.req.get("tag")}
        write_private(os.path.join(self.kdir, "launcher.json"), json.dumps(record, indent=1))
        if self.lifetime == "grace":
            self.listen()
        threading.Thread(target=self._wait_kernel, daemon=True).start()
        return record

    def listen(self):
        # a relative bind keeps the path under the 108-byte sun_path limit
        os.chdir(self.kdir)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(SOCKET_NAME)
        os.chmod(SOCKET_NAME, 0o600)
        self.server.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            ctl = Controller(sock.makefile("rb"), Out(sock.makefile("wb")), self.events,
                             "attach", sock)
            self.events.put(("attach", ctl, None))

    def _wait_kernel(self):
        self.events.put(("exit", None, self.proc.wait()))

    # -- run ---------------------------------------------------------------------------
    def run(self, record):
        self.controller = self.first
        self.controller.out.send(dict(record, event="started"))
        keepalive = float(self.req.get("keepalive_s") or 0)
        # a link can die silently (no FIN reaches sshd): pings stopping count as a drop
        silence_limit = keepalive * 4 + 3 if keepalive > 0 else None
        deadline = None
        heard = time.monotonic()
        while True:
            wake = deadline
            if self.controller is not None and silence_limit is not None:
                wake = heard + silence_limit
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            try:
                kind, ctl, payload = self.events.get(timeout=timeout)
            except queue.Empty:
                if self.controller is not None:
                    kind, ctl, payload = "eof", self.controller, None
                else:
                    self.stop_kernel()  # nobody came back within the grace period
                    deadline = None
                    continue
            if kind == "exit":
                return self.finish(payload)
            if kind == "attach":
                if self.controller is not None:
                    self.controller.close()  # a half-open old link loses to the new one
                self.controller, deadline, heard = ctl, None, time.monotonic()
                ctl.out.send(dict(record, event="attached", connection=self.conn))
            elif ctl is not self.controller:
                continue
            elif kind == "eof" or payload.get("op") == "detach":
                self.controller.close()
                self.controller = None
                if self.lifetime == "grace" and self.grace_s > 0:
                    deadline = time.monotonic() + self.grace_s
                else:
                    self.stop_kernel()
            else:
                heard = time.monotonic()
                self.handle(payload)

    def handle(self, msg):
        op = msg.get("op")
        if op == "signal":
            self.signal_kernel(int(msg.get("signum", signal.SIGINT)))
        elif op == "ping":
            self.controller.out.send({"event": "pong", "t": msg.get("t")})
        elif op == "stop":
            self.stop_kernel()

    def signal_kernel(self, signum):
        try:
            os.killpg(self.proc.pid, signum)
        except OSError:
            try:
                self.proc.send_signal(signum)
            except OSError:
                pass

    def stop_kernel(self):
        if self.proc.poll() is not None:
            return
        self.signal_kernel(signal.SIGTERM)
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.signal_kernel(signal.SIGKILL)
        # the "exit" event from _wait_kernel ends the run loop

    def finish(self, code):
        self.signal_kernel(signal.SIGKILL)  # leftovers of the kernel's process group
        tail = ""
        try:
            with open(os.path.join(self.kdir, "kernel.log"), "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 2000))
                tail = fh.read().decode("utf-8", "replace")
        except OSError:
            pass
        if self.server is not None:
            self.server.close()
        shutil.rmtree(self.kdir, ignore_errors=True)
        if self.controller is not None:
            self.controller.out.send({"event": "exited", "code": code, "log_tail": tail})
        return 0


def attach(req, reader, out):
    """Relay this controller channel to the launcher that owns the kernel (grace only)."""
    kdir = kernel_dir(req)
    if not os.path.isdir(kdir):
        raise LauncherError("not_found", "no kernel %s on this host" % req["kernel_id"])
    os.chdir(kdir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(SOCKET_NAME)
    except OSError as exc:
        raise LauncherError("not_attachable",
                            "kernel %s does not accept attaches (%s)"
                            % (req["kernel_id"], exc)) from None
    sock.sendall((json.dumps({"op": "attach"}) + "\n").encode())

    def pump_in():
        try:
            while True:
                data = reader.read1(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=pump_in, daemon=True).start()
    stdout = out.stream
    while True:
        data = sock.recv(65536)
        if not data:
            return 0
        try:
            stdout.write(data)
            stdout.flush()
        except OSError:
            return 0


def handle(req, reader, out, sock=None):
    """Answer one request on one controller channel: the SSH session or an agent connection."""
    if req.get("v") != PROTOCOL:
        raise LauncherError("version", "launcher protocol %r not supported (want %d)"
                            % (req.get("v"), PROTOCOL))
    op = req.get("op")
    if op == "probe":
        out.send({"event": "probe", "info": probe(req)})
        return 0
    if op == "list":
        out.send({"event": "list", "kernels": list_kernels(req)})
        return 0
    if op == "attach":
        return attach(req, reader, out)
    if op != "launch":
        raise LauncherError("bad_request", "unknown op %r" % op)
    launcher = Launcher(req, None)
    record = launcher.start()
    launcher.first = Controller(reader, out, launcher.events, "launch", sock)
    return launcher.run(record)


class Agent(object):
    """The host link's agent: forks one launcher per authenticated connection.

    It listens on a unix socket in a fresh 0700 directory, which only this user can reach;
    asked to on stdin (the host refuses unix-socket forwarding) it also listens on an
    ephemeral port of 127.0.0.1, which every user of the host can reach. Either way a
    connection must start with the token line the agent's own session was given on stdin,
    checked byte by byte before anything is parsed, and costs no fork until then. The agent
    exits when its session ends (stdin EOF) or falls silent (no keepalive for
    4 * keepalive_s + 3 s, as a launcher does), so it never outlives its link; launchers it
    forked live on: each is tied to its own connection.
    """

    def __init__(self, req, out):
        token = req.get("token")
        if not isinstance(token, str) or len(token) < 32 or not re.match(r"^[0-9a-f]+$",
                                                                         token):
            raise LauncherError("bad_request", "serve needs a hex token of 32 digits or more")
        self.token = token.encode() + b"\n"
        keepalive = float(req.get("keepalive_s") or 0)
        self.silence_limit = keepalive * 4 + 3 if keepalive > 0 else None
        self.out = out
        self.sel = selectors.DefaultSelector()
        self.pending = {}  # connection -> [received bytes, deadline]
        self.listeners = []
        self.stdin_buf = b""
        self.dir = tempfile.mkdtemp(prefix="tether-agent-")  # 0700
        self.path = os.path.join(self.dir, "s")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        self.listen(server)

    def listen(self, server):
        server.listen(64)
        server.setblocking(False)
        self.listeners.append(server)
        self.sel.register(server, selectors.EVENT_READ, "accept")

    def listen_tcp(self):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        self.listen(server)
        return server.getsockname()[1]

    def run(self):
        stdin = sys.stdin.fileno()
        self.sel.register(stdin, selectors.EVENT_READ, "stdin")
        self.out.send({"event": "serving", "socket": self.path, "pid": os.getpid()})
        heard = time.monotonic()
        while True:
            now = time.monotonic()
            wakes = [d for _, d in self.pending.values()]
            if self.silence_limit is not None:
                wakes.append(heard + self.silence_limit)
            timeout = max(0.0, min(wakes) - now) if wakes else None
            for key, _ in self.sel.select(timeout):
                if key.data == "stdin":
                    try:
                        data = os.read(stdin, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        return self.close()  # the session ended: no more launches
                    heard = time.monotonic()
                    self.orders(data)
                elif key.data == "accept":
                    self.accept(key.fileobj)
                else:
                    try:
                        self.receive(key.fileobj)
                    except Exception:  # whatever a connection sends, the agent carries on
                        self.drop(key.fileobj)
            now = time.monotonic()
            for conn in [c for c, (_, d) in self.pending.items() if d <= now]:
                self.drop(conn)
            if self.silence_limit is not None and now - heard > self.silence_limit:
                return self.close()  # the link died without a FIN

    def orders(self, data):
        """Lines from the session: keepalives, and ``tcp`` (listen on 127.0.0.1 too)."""
        self.stdin_buf = (self.stdin_buf + data)[-65536:]
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        for line in lines:
            try:
                op = json.loads(line.decode()).get("op")
            except Exception:
                continue
            if op == "tcp" and len(self.listeners) == 1:
                self.out.send({"event": "tcp", "port": self.listen_tcp()})

    def accept(self, server):
        try:
            conn, _ = server.accept()
        except OSError:
            # out of descriptors: the oldest unauthenticated connection makes room
            if self.pending:
                self.drop(min(self.pending, key=lambda c: self.pending[c][1]))
            return
        if len(self.pending) >= 64:
            self.drop(min(self.pending, key=lambda c: self.pending[c][1]))
        conn.setblocking(False)
        self.pending[conn] = [b"", time.monotonic() + AUTH_WAIT_S]
        self.sel.register(conn, selectors.EVENT_READ, "conn")

    def receive(self, conn):
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.drop(conn)
        buf = self.pending[conn][0] + data
        # the token line first, compared in constant time before anything else is looked at
        head = buf[:len(self.token)]
        if not hmac.compare_digest(head, self.token[:len(head)]):
            return self.drop(conn)
        if len(head) < len(self.token) or b"\n" not in buf[len(self.token):]:
            if len(buf) > MAX_REQUEST:
                return self.drop(conn)
            self.pending[conn][0] = buf
            return
        line, _, rest = buf[len(self.token):].partition(b"\n")
        req = json.loads(line.decode())
        # the controller sends nothing more before the first answer: extra bytes are refused
        if not isinstance(req, dict) or rest:
            return self.drop(conn)
        self.sel.unregister(conn)
        del self.pending[conn]
        if req.get("op") == "hello":  # the host link's probe: no fork needed
            conn.setblocking(True)
            conn.sendall((MARK + json.dumps({"event": "hello"}) + "\n").encode())
            conn.close()
            return
        self.fork(req, conn)

    def drop(self, conn):
        self.pending.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def fork(self, req, conn):
        try:
            pid = os.fork()
        except OSError:  # out of processes: this launch fails, the agent carries on
            conn.close()
            return
        if pid:
            conn.close()
            os.waitpid(pid, 0)  # the child forks again and exits at once
            return
        code = 70
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            # the launcher: detached from the agent, which may end long before it does; the
            # session's pipes are let go so the session can close when the agent exits
            self.sel.close()
            for server in self.listeners:
                server.close()
            for other in list(self.pending):
                other.close()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            conn.setblocking(True)
            out = Out(conn.makefile("wb"))
            out.send({"event": "accepted"})
            try:
                code = handle(req, conn.makefile("rb"), out, conn)
            except LauncherError as exc:
                out.send(dict(exc.extra, event="error", code=exc.code, message=exc.message))
                code = 3
            except Exception as exc:  # stderr is /dev/null here: the controller is told
                out.send({"event": "error", "code": "internal",
                          "message": "%s: %s" % (type(exc).__name__, exc),
                          "traceback": traceback.format_exc()[-2000:]})
                code = 1
        finally:
            os._exit(code)

    def close(self):
        self.sel.close()
        for server in self.listeners:
            server.close()
        for conn in list(self.pending):
            conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0


def main():
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a dying session must not take the kernel
    out = Out(sys.stdout.buffer)
    stdin = sys.stdin.buffer
    try:
        req = json.loads(stdin.readline().decode() or "{}")
        if req.get("op") == "serve" and req.get("v") == PROTOCOL:
            return Agent(req, out).run()
        return handle(req, stdin, out)
    except LauncherError as exc:
        out.send(dict(exc.extra, event="error", code=exc.code, message=exc.message))
        return 3


if __name__ == "__main__":
    sys.exit(main())
