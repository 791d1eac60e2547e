"""The remote half of tether's exec agent: runs commands for one warm SSH connection.

This file is never installed on the host. :mod:`tether.link.agent_link` sends its source over
one SSH session channel (``python3 -c BOOTSTRAP`` reads it from fd 3), so it must stay
stdlib-only and run on any Python >= 3.8. The protocol is specified in docs/exec-agent.md.

Why an agent: sshd runs every command as ``$SHELL -c CMD``, and Debian's bash then sources
~/.bashrc (``pyenv init`` and friends: 100-400 ms per command). The agent is started through
the login shell once, takes the environment that shell ended up with (read from
``env -0`` on fd 0, so wrappers such as pyenv's shims do not leak into it), and from then on
spawns each command as ``$SHELL -c CMD`` with that environment and the shell's rc files
skipped. Each command runs in its own session and process group (as under sshd), so signals
reach the whole group, and when the channel goes away (stdin EOF) every running command is
hung up, then killed: nothing is left behind.

Everything runs in one thread around ``poll``; output is flow-controlled per command with
credits, so one slow reader never stalls the other commands.
"""

import errno
import fcntl
import json
import os
import pwd
import select
import shlex
import signal
import struct
import subprocess
import sys
import time

VERSION = 1
MARK = b"\x00TETHER-EXEC-AGENT\x00"
HEADER = struct.Struct(">cII")
CREDIT = struct.Struct(">I")
MAX_PAYLOAD = 1 << 20
READ_CHUNK = 1 << 16
IN_WINDOW = 1 << 20
HANGUP_GRACE_S = 2.0

# local -> agent
HELLO, RUN, STDIN, SIGNAL, GRANT, CLOSE = b"V", b"R", b"I", b"S", b"W", b"K"
# agent -> local (HELLO too)
STDOUT, STDERR, EXIT, FAILED, INPUT_CREDIT, FATAL = b"O", b"E", b"X", b"F", b"C", b"Z"
KINDS_IN = frozenset([HELLO, RUN, STDIN, SIGNAL, GRANT, CLOSE])
SIGNALS = frozenset(["INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "WINCH", "CONT",
                     "STOP", "TSTP", "ALRM"])

# Variables the capturing shell set for itself, not for the commands: sshd starts each command
# shell without them and that shell sets its own.
DROP_VARS = ("_", "SHLVL")


class ProtocolFault(Exception):
    """The local side sent something this agent does not understand."""


# -- pure helpers ----------------------------------------------------------------------------


def parse_env_block(data):
    """``env -0`` output -> dict (None when empty: the host's env has no -0)."""
    if not data:
        return None
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def shell_argv(shell, command, env):
    """(argv, environment) that run ``command`` in ``shell`` without its rc files.

    bash sources $BASH_ENV even with --norc, so it is taken out of the shell's own environment
    and exported again by the command line: the command and any shell it starts see it as
    before, only the wrapper shell skips it (sshd's bash does not source it either).
    """
    name = os.path.basename(shell)
    env = dict(env)
    for var in DROP_VARS:
        env.pop(var, None)
    if name == "bash":
        bash_env = env.pop("BASH_ENV", None)
        if bash_env is not None:
            command = f"export BASH_ENV={shlex.quote(bash_env)}; {command}"
        return [name, "--norc", "--noprofile", "-c", command], env
    if name in ("zsh", "csh", "tcsh"):
        return [name, "-f", "-c", command], env
    return [name, "-c", command], env


def encode(kind, ident, payload=b""):
    return HEADER.pack(kind, ident, len(payload)) + payload


def decode(buf):
    """Complete frames at the start of ``buf`` (a bytearray, consumed) -> [(kind, id, payload)]."""
    frames = []
    while len(buf) >= HEADER.size:
        kind, ident, size = HEADER.unpack_from(buf)
        if kind not in KINDS_IN:
            raise ProtocolFault(f"unknown frame kind {kind!r}")
        if size > MAX_PAYLOAD:
            raise ProtocolFault(f"frame of {size} bytes")
        end = HEADER.size + size
        if len(buf) < end:
            break
        frames.append((kind, ident, bytes(buf[HEADER.size:end])))
        del buf[:end]
    return frames


# -- the agent -------------------------------------------------------------------------------


def _nonblock(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Command:
    """One running command: its process, pipes, credits and buffered stdin."""

    def __init__(self, ident, proc, window):
        self.id = ident
        self.proc = proc
        self.credit = window
        self.outs = {proc.stdout.fileno(): (STDOUT, proc.stdout),
                     proc.stderr.fileno(): (STDERR, proc.stderr)}
        self.stdin = proc.stdin
        self.inbuf = bytearray()
        self.in_eof = False
        self.status = None
        self.closed = False  # the local side stopped listening (CLOSE)

    def close_stdin(self):
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None

    def close_outs(self):
        for _, stream in self.outs.values():
            stream.close()
        self.outs = {}


class Agent:
    def __init__(self, rfd, wfd, env, shell):
        self.rfd = rfd
        self.wfd = wfd
        self.env = env
        self.shell = shell
        self.commands = {}
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.eof = False
        self.stop_asked = False
        self.deadline = None
        self.sig_r, sig_w = os.pipe()
        _nonblock(self.sig_r)
        _nonblock(sig_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd fires
        for signum in (signal.SIGTERM, signal.SIGHUP):  # stopped: clean up like on EOF
            signal.signal(signum, self._ask_stop)
        signal.set_wakeup_fd(sig_w)

    def _ask_stop(self, *_):
        self.stop_asked = True  # acted on by the loop: a handler must not touch its state

    def send(self, kind, ident, payload=b""):
        if not self.eof:
            self.outbuf += encode(kind, ident, payload)

    def send_json(self, kind, ident, obj):
        self.send(kind, ident, json.dumps(obj, separators=(",", ":")).encode())

    # -- frames from the local side

    def on_frame(self, kind, ident, payload):
        cmd = self.commands.get(ident)
        if kind == RUN:
            if ident == 0 or cmd is not None:
                raise ProtocolFault(f"RUN with a bad or used id {ident}")
            self.run(ident, json.loads(payload.decode()))
        elif kind == HELLO:
            version = json.loads(payload.decode()).get("v")
            if version != VERSION:
                raise ProtocolFault(f"this agent speaks v{VERSION}, the local side v{version!r}")
        elif cmd is None:
            if kind == STDIN and payload:  # the command is gone: its input is not wanted
                self.send(INPUT_CREDIT, ident, CREDIT.pack(len(payload)))
        elif kind == STDIN:
            if not payload:
                cmd.in_eof = True
            elif cmd.stdin is None:
                self.send(INPUT_CREDIT, ident, CREDIT.pack(len(payload)))
            else:
                cmd.inbuf += payload
        elif kind == SIGNAL:
            name = payload.decode("ascii", "replace")
            if name not in SIGNALS:
                raise ProtocolFault(f"cannot send signal {name!r}")
            self.killpg(cmd, getattr(signal, "SIG" + name))
        elif kind == GRANT:
            cmd.credit += CREDIT.unpack(payload)[0]
        elif kind == CLOSE:
            cmd.closed = True
            cmd.close_stdin()
            cmd.close_outs()

    def run(self, ident, req):
        argv, env = shell_argv(self.shell, str(req["cmd"]), self.env)
        try:
            proc = subprocess.Popen(argv, executable=self.shell, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            self.send_json(FAILED, ident, {"message": f"{self.shell}: {exc.strerror}"})
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            _nonblock(stream.fileno())
        self.commands[ident] = Command(ident, proc, int(req.get("window") or IN_WINDOW))

    @staticmethod
    def killpg(cmd, signum):
        try:
            os.killpg(cmd.proc.pid, signum)
        except OSError:  # the whole group has exited (or was never ours to signal)
            pass

    # -- I/O

    def poll_once(self):
        poller = select.poll()
        if not self.eof:
            poller.register(self.rfd, select.POLLIN)
        if self.outbuf:
            poller.register(self.wfd, select.POLLOUT)
        poller.register(self.sig_r, select.POLLIN)
        for cmd in self.commands.values():
            if cmd.credit > 0 or self.eof:
                for fd in cmd.outs:
                    poller.register(fd, select.POLLIN)
            if cmd.stdin is not None and cmd.inbuf:
                poller.register(cmd.stdin.fileno(), select.POLLOUT)
        timeout = None
        if self.deadline is not None:
            timeout = max(0, int((self.deadline - time.monotonic()) * 1000) + 1)
        for fd, _ in poller.poll(timeout):
            if fd == self.rfd:
                self.read_local()
            elif fd == self.wfd:
                self.write_local()
            elif fd == self.sig_r:
                while True:
                    try:
                        if not os.read(self.sig_r, 512):
                            break
                    except OSError:
                        break
            else:
                self.pump(fd)
        self.feed_stdins()
        self.reap()
        if self.stop_asked:
            self.hang_up()

    def read_local(self):
        try:
            data = os.read(self.rfd, 1 << 18)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            data = b""
        if not data:
            self.hang_up()
            return
        self.inbuf += data
        for kind, ident, payload in decode(self.inbuf):
            try:
                self.on_frame(kind, ident, payload)
            except (ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
                raise ProtocolFault(f"bad {kind!r} frame: {exc}") from exc

    def write_local(self):
        try:
            n = os.write(self.wfd, self.outbuf)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            self.hang_up()  # nobody reads us any more
            return
        del self.outbuf[:n]

    def pump(self, fd):
        for cmd in list(self.commands.values()):
            if fd in cmd.outs:
                kind, stream = cmd.outs[fd]
                limit = READ_CHUNK if self.eof else max(1, min(READ_CHUNK, cmd.credit))
                try:
                    data = os.read(fd, limit)
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        return
                    data = b""
                if not data:
                    stream.close()
                    del cmd.outs[fd]
                elif not cmd.closed:
                    cmd.credit -= len(data)
                    self.send(kind, cmd.id, data)
                return

    def feed_stdins(self):
        for cmd in self.commands.values():
            if cmd.stdin is None:
                continue
            written = 0
            while cmd.inbuf:
                try:
                    n = os.write(cmd.stdin.fileno(), cmd.inbuf[:READ_CHUNK])
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        break
                    # The command closed its stdin: what is left is dropped, and credited, so
                    # the local side never waits for room that will not come.
                    n = len(cmd.inbuf)
                    cmd.close_stdin()
                written += n
                del cmd.inbuf[:n]
                if cmd.stdin is None:
                    break
            if written:
                self.send(INPUT_CREDIT, cmd.id, CREDIT.pack(written))
            if cmd.in_eof and not cmd.inbuf:
                cmd.close_stdin()

    def reap(self):
        for ident, cmd in list(self.commands.items()):
            if cmd.status is None:
                cmd.status = cmd.proc.poll()
            if cmd.status is None or cmd.outs:
                continue
            del self.commands[ident]
            cmd.close_stdin()
            if not cmd.closed:
                if cmd.status < 0:
                    try:
                        name = signal.Signals(-cmd.status).name[3:]
                    except ValueError:
                        name = "UNKNOWN"
                    result = {"status": None, "signal": name}
                else:
                    result = {"status": cmd.status, "signal": None}
                self.send_json(EXIT, ident, result)

    def hang_up(self):
        """The channel is gone: hang up every command, kill what ignores that, then exit."""
        if self.eof:
            return
        self.eof = True
        self.outbuf = bytearray()
        for cmd in self.commands.values():
            cmd.closed = True
            cmd.close_stdin()
            self.killpg(cmd, signal.SIGHUP)
        self.deadline = time.monotonic() + HANGUP_GRACE_S

    def serve(self):
        self.outbuf += MARK
        self.send_json(HELLO, 0, {"v": VERSION, "pid": os.getpid(), "shell": self.shell,
                                  "python": ".".join(map(str, sys.version_info[:3])),
                                  "in_window": IN_WINDOW})
        try:
            while not (self.eof and not self.commands):
                self.poll_once()
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    for cmd in self.commands.values():  # shell alive, or its pipes still held
                        self.killpg(cmd, signal.SIGKILL)
                    break
        except ProtocolFault as exc:
            self.outbuf += encode(FATAL, 0, json.dumps({"message": str(exc)}).encode())
            self.eof = False
            self.flush_and_hang_up()
            return 2
        return 0

    def flush_and_hang_up(self):
        while self.outbuf:
            try:
                os.set_blocking(self.wfd, True)
                del self.outbuf[:os.write(self.wfd, self.outbuf)]
            except OSError:
                break
        self.hang_up()
        while self.commands and time.monotonic() < self.deadline:
            self.poll_once()
        for cmd in self.commands.values():
            self.killpg(cmd, signal.SIGKILL)


def login_shell():
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or os.environ.get("SHELL") or "/bin/sh"


def main(source_reader):
    """``source_reader``: the buffered fd 3 the bootstrap read this source from."""
    del source_reader  # nothing follows the source until our HELLO went out
    env = parse_env_block(sys.stdin.buffer.read())
    if env is None:
        env = dict(os.environ)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd in (3, 1):
        _nonblock(fd)
    return Agent(3, 1, env, login_shell()).serve()


if __name__ == "__main__":
    sys.exit(main(globals().get("f")))
