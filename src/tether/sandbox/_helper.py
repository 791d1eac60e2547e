"""The in-sandbox helper: runs first inside bwrap, then execs the user command.

Executed by the sandbox's own python3 with -I -S, so it may use the standard library only
and must never import tether; it avoids json/re too (they double its start-up time).
argv: helper.py [--forward SOCKET PORT...] [--landlock ABI] [--rw PATH]... [--dev PATH]...
[--scope BITS] [--filter HEX] -- CMD...

It does up to three things, in this order:
1. forwarder (allowlist network): listens on 127.0.0.1:3128 (HTTP) and :1080 (SOCKS) inside
   the sandbox's empty network namespace and copies each connection to the host proxy's unix
   socket. It runs in a forked child that is not dumpable (the command cannot open its
   /proc/PID/mem) and outside the command's Landlock domain (which, from ABI 6, cannot signal
   it).
2. Landlock: with --landlock, filesystem writes only beneath the writable mounts, /tmp,
   /var/tmp, the home and /dev; with --scope (ABI >= 6), abstract unix sockets and/or
   signals scoped to the command. Either alone is a valid ruleset.
3. a stacked seccomp filter (given as hex) refusing new non-inet sockets for the command.
"""

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 4, 22, 2
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
RULE_PATH_BENEATH = 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
FS_EXECUTE, FS_WRITE_FILE = 1 << 0, 1 << 1
FS_WRITE_ALL_V1 = sum(1 << i for i in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def fail(message):
    sys.stderr.write("tether-sandbox: " + message + "\n")
    os._exit(126)


def pump(src, dst):
    import socket

    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listener, unix_path):
    import socket
    import threading

    while True:
        conn, _ = listener.accept()
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.connect(unix_path)
        except OSError:
            conn.close()
            up.close()
            continue
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()


def start_forwarder(ports, unix_path):
    import socket
    import threading

    listeners = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        listeners.append(s)
    pid = os.fork()
    if pid == 0:
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(os.open("/dev/null", os.O_RDWR), fd)
        threads = [threading.Thread(target=serve, args=(s, unix_path), daemon=True)
                   for s in listeners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os._exit(0)
    for s in listeners:
        s.close()


class RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


def landlock(abi, scoped, writable, dev_writable):
    handled = 0
    if abi:
        handled = (FS_WRITE_ALL_V1 | (FS_REFER if abi >= 2 else 0)
                   | (FS_TRUNCATE if abi >= 3 else 0))
    attr = RulesetAttr(handled, 0, scoped)
    size = 24 if scoped else 8      # the scoped field exists from ABI 6 on
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        fail("landlock_create_ruleset failed: " + os.strerror(ctypes.get_errno()))
    rules = [(p, handled) for p in writable]
    rules += [(p, FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)) for p in dev_writable]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rule = PathBeneath(access, fd)
        if libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), RULE_PATH_BENEATH,
                        ctypes.byref(rule), 0) < 0:
            fail("landlock_add_rule %s failed: %s" % (path, os.strerror(ctypes.get_errno())))
        os.close(fd)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), 0) < 0:
        fail("landlock_restrict_self failed: " + os.strerror(ctypes.get_errno()))
    os.close(ruleset)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def stack_seccomp(program):
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        fail("seccomp filter failed: " + os.strerror(ctypes.get_errno()))


def parse(args):
    config = {"ports": [], "writable": [], "dev_writable": []}
    i = 0
    while i < len(args) and args[i] != "--":
        flag = args[i]
        if flag == "--forward":
            config["socket"] = args[i + 1]
            i += 2
            while i < len(args) and args[i].isdigit():
                config["ports"].append(int(args[i]))
                i += 1
            continue
        value = args[i + 1]
        if flag == "--landlock":
            config["landlock"] = int(value)
        elif flag == "--rw":
            config["writable"].append(value)
        elif flag == "--dev":
            config["dev_writable"].append(value)
        elif flag == "--scope":
            config["scope"] = int(value)
        elif flag == "--filter":
            config["socket_filter"] = value
        else:
            fail("unknown helper flag " + flag)
        i += 2
    if i >= len(args) - 1:
        fail("usage: helper.py [OPTIONS] -- CMD...")
    return config, args[i + 1:]


def main(argv):
    config, command = parse(argv[1:])
    if config.get("socket"):
        start_forwarder(config["ports"], config["socket"])
    if config.get("landlock") or config.get("scope"):
        landlock(config.get("landlock", 0), config.get("scope", 0), config["writable"],
                 config["dev_writable"])
    if config.get("socket_filter"):
        stack_seccomp(bytes.fromhex(config["socket_filter"]))
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        sys.stderr.write("tether-sandbox: command not found: %s\n" % command[0])
        os._exit(127)
    except OSError as e:
        sys.stderr.write("tether-sandbox: cannot run %s: %s\n" % (command[0], e.strerror))
        os._exit(126)


if __name__ == "__main__":
    main(sys.argv)
