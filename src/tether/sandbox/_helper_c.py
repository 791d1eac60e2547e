"""The native in-sandbox helper: forwarder, Landlock, the stacked socket filter, then exec.

Same flags and behaviour as `_helper.py`, in C, because a Python start is 15-50 ms and this
runs before every Landlock-confined or allowlisted command. The forwarder is a forked,
non-dumpable process: it accepts on 127.0.0.1 ports and relays each connection (one forked
child each) to the host proxy's unix socket. Built once per machine with the
system C compiler (static when libc.a is there, so it also runs inside a --rootfs) and cached;
without a compiler the Python helper does the job.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define MAX_RULES 512
#define FS_WRITE_FILE (1ULL << 1)
#define FS_WRITE_ALL_V1 ((1ULL << 1) | (1ULL << 4) | (1ULL << 5) | (1ULL << 6) | (1ULL << 7) | \
                         (1ULL << 8) | (1ULL << 9) | (1ULL << 10) | (1ULL << 11) | (1ULL << 12))
#define FS_REFER (1ULL << 13)
#define FS_TRUNCATE (1ULL << 14)

struct ruleset_attr { uint64_t fs, net, scoped; };
struct path_beneath { uint64_t allowed; int32_t fd; } __attribute__((packed));

static void fail(const char *what) {
    fprintf(stderr, "tether-sandbox: %s: %s\n", what, strerror(errno));
    _exit(126);
}

static void usage(void) {
    fprintf(stderr, "tether-sandbox: usage: helper [OPTIONS] -- CMD...\n");
    _exit(126);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static void add_rule(int ruleset, const char *path, uint64_t access) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) return;                       /* nothing there: nothing to allow */
    struct path_beneath rule = { access, fd };
    if (syscall(445, ruleset, 1, &rule, 0) != 0) fail(path);
    close(fd);
}

/* abi > 0: confine writes to rw/dev; scoped: Landlock scope bits (ABI >= 6). Either alone is
   a valid ruleset (a scoped-only one handles no file access). */
static void landlock(int abi, uint64_t scoped, const char **rw, int nrw, const char **dev,
                     int ndev) {
    uint64_t handled = abi > 0 ? FS_WRITE_ALL_V1 | (abi >= 2 ? FS_REFER : 0)
                                 | (abi >= 3 ? FS_TRUNCATE : 0) : 0;
    struct ruleset_attr attr = { handled, 0, scoped };
    size_t size = scoped ? 24 : 8;            /* the scoped field exists from ABI 6 on */
    int ruleset = (int)syscall(444, &attr, size, 0);
    if (ruleset < 0) fail("landlock_create_ruleset");
    for (int i = 0; i < nrw; i++) add_rule(ruleset, rw[i], handled);
    for (int i = 0; i < ndev; i++)
        add_rule(ruleset, dev[i], FS_WRITE_FILE | (abi >= 3 ? FS_TRUNCATE : 0));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs");
    if (syscall(446, ruleset, 0) != 0) fail("landlock_restrict_self");
    close(ruleset);
}

static void stack_filter(const char *hex) {
    size_t n = strlen(hex) / 2;
    if (n == 0 || n % 8 != 0) { errno = EINVAL; fail("seccomp filter"); }
    unsigned char *buf = malloc(n);
    if (!buf) fail("malloc");
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) { errno = EINVAL; fail("seccomp filter"); }
        buf[i] = (unsigned char)(hi << 4 | lo);
    }
    struct sock_fprog prog = { (unsigned short)(n / 8), (struct sock_filter *)buf };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) fail("seccomp filter");
}

static int write_all(int fd, const char *buf, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        buf += w; n -= w;
    }
    return 0;
}

static void relay(int a, int b) {
    struct pollfd p[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };
    int open_ends = 2;
    char buf[65536];
    while (open_ends > 0) {
        if (poll(p, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        for (int k = 0; k < 2; k++) {
            if (p[k].fd < 0 || !(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            int other = k == 0 ? b : a;
            ssize_t n = read(p[k].fd, buf, sizeof buf);
            if (n <= 0 || write_all(other, buf, n) < 0) {
                shutdown(other, SHUT_WR);
                p[k].fd = -1;
                open_ends--;
            }
        }
    }
    _exit(0);
}

static void forwarder(const char *sock_path, const int *ports, int nports) {
    struct pollfd listeners[8];
    for (int k = 0; k < nports; k++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(ports[k]) };
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (s < 0) fail("socket");
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 64)) fail("listen");
        listeners[k].fd = s;
        listeners[k].events = POLLIN;
    }
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid > 0) {                 /* the command goes on; only the forwarder keeps these */
        for (int k = 0; k < nports; k++) close(listeners[k].fd);
        return;
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);     /* the command cannot open our /proc/PID/mem */
    setsid();
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; fd++) dup2(null, fd);
    signal(SIGCHLD, SIG_IGN);               /* relays reap themselves */
    struct sockaddr_un up = { .sun_family = AF_UNIX };
    strncpy(up.sun_path, sock_path, sizeof up.sun_path - 1);
    for (;;) {
        if (poll(listeners, nports, -1) < 0) continue;
        for (int k = 0; k < nports; k++) {
            if (!(listeners[k].revents & POLLIN)) continue;
            int c = accept4(listeners[k].fd, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) continue;
            if (fork() == 0) {
                for (int j = 0; j < nports; j++) close(listeners[j].fd);
                int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (u < 0 || connect(u, (struct sockaddr *)&up, sizeof up) != 0) _exit(1);
                relay(c, u);
            }
            close(c);
        }
    }
}

int main(int argc, char **argv) {
    int abi = 0, nrw = 0, ndev = 0, nports = 0, i = 1, ports[8];
    uint64_t scoped = 0;
    const char *rw[MAX_RULES], *dev[MAX_RULES], *filter = NULL, *sock = NULL;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc) usage();
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "--forward")) {
            sock = value;
            while (i + 2 < argc && argv[i + 2][0] >= '0' && argv[i + 2][0] <= '9' && nports < 8)
                ports[nports++] = atoi(argv[++i + 1]);
            continue;
        }
        if (!strcmp(flag, "--landlock")) abi = atoi(value);
        else if (!strcmp(flag, "--rw") && nrw < MAX_RULES) rw[nrw++] = value;
        else if (!strcmp(flag, "--dev") && ndev < MAX_RULES) dev[ndev++] = value;
        else if (!strcmp(flag, "--scope")) scoped = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--filter")) filter = value;
        else usage();
    }
    if (i >= argc - 1) usage();
    char **command = argv + i + 1;
    if (sock) forwarder(sock, ports, nports);
    if (abi > 0 || scoped) landlock(abi, scoped, rw, nrw, dev, ndev);
    if (filter) stack_filter(filter);
    execvp(command[0], command);
    int err = errno;
    if (err == ENOENT) {            /* the shell's convention, and the same words everywhere */
        fprintf(stderr, "tether-sandbox: command not found: %s\n", command[0]);
        _exit(127);
    }
    fprintf(stderr, "tether-sandbox: cannot run %s: %s\n", command[0], strerror(err));
    _exit(126);
}
"""


@lru_cache(maxsize=1)
def helper_binary() -> str | None:
    """Path of the built helper (building it on first use), or None without a compiler."""
    from tether import paths

    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    target = paths.cache_dir() / "sandbox" / f"helper-{os.uname().machine}-{digest}"
    if target.is_file():
        return str(target)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    paths.ensure_dir(target.parent, 0o700)   # what runs in every sandbox: only ours to write
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "helper.c", Path(tmp) / "helper"
        src.write_text(SOURCE)
        for extra in (["-static"], []):      # static runs in any rootfs; dynamic as fallback
            r = subprocess.run([cc, "-O2", "-Wall", *extra, "-o", str(out), str(src)],
                               capture_output=True, timeout=120)
            if r.returncode == 0:
                out.chmod(0o755)
                os.replace(out, target)
                return str(target)
    return None
