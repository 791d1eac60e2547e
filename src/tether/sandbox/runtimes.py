"""Runtime detection: which host toolchains a command needs bound into the sandbox.

`detect` is pure (command + names of project files -> runtimes). `toolchain_mounts` looks at
the host: a toolchain under /usr is already visible (the sandbox binds /usr read-only); one
elsewhere (pyenv, rustup, nvm, /opt/...) is bound read-only at the same path and its bin
directory goes first on PATH (a Python venv on PATH is bound together with its base
interpreter). A toolchain root is never the home directory itself or an
ancestor of it, so binding a toolchain can never expose ~/.ssh or other dotfiles.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from tether.sandbox.profiles import Mount

# runtime -> (commands that imply it, project files that imply it, binaries to locate)
RUNTIMES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "python": (("python", "python3", "pip", "pip3", "pytest", "uv", "poetry", "hatch"),
               ("pyproject.toml", "requirements.txt", "setup.py", "setup.cfg", "Pipfile"),
               ("python3",)),
    "node": (("node", "npm", "npx", "yarn", "pnpm", "bun"), ("package.json",),
             ("node",)),
    "go": (("go", "gofmt"), ("go.mod",), ("go",)),
    "rust": (("cargo", "rustc", "rustup"), ("Cargo.toml",), ("cargo", "rustc")),
    "java": (("java", "javac", "mvn", "gradle", "jshell"),
             ("pom.xml", "build.gradle", "build.gradle.kts"), ("java",)),
}
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")


def detect(command: Sequence[str], project_files: Iterable[str]) -> list[str]:
    """Runtimes named by the command (its program or a `python -m`-style first word) or files."""
    files = set(project_files)
    words = {os.path.basename(w) for w in command[:1]}
    if command and os.path.basename(command[0]) in ("sh", "bash", "env") and len(command) > 1:
        words |= {os.path.basename(w) for w in command[1:3] if not w.startswith("-")}
        if "-c" in command[1:2] and len(command) > 2:
            words |= {os.path.basename(w) for w in command[2].split()[:1]}
    found = []
    for name, (cmds, markers, _) in RUNTIMES.items():
        if any(w == c or w.startswith(c + ".") or (c.startswith("python") and
               w.startswith("python3")) for w in words for c in cmds) or files & set(markers):
            found.append(name)
    return found


def _safe_root(root: Path, home: Path) -> bool:
    try:
        home.relative_to(root)
        return False          # root is home or above it
    except ValueError:
        return not (root / ".ssh").exists()


def _locate(binary: str, runtime: str) -> Path | None:
    """Where ``binary`` is found on PATH, symlinks not resolved (a venv's python is one)."""
    found = shutil.which(binary)
    if found and "/shims/" in found and runtime == "python":
        found = sys.executable     # pyenv shims are shell scripts needing ~/.pyenv whole
    if not found or "/shims/" in found:
        return None
    return Path(os.path.abspath(found))


def _venv_of(found: Path, runtime: str) -> Path | None:
    """The virtual environment a python on PATH belongs to: it must be bound as well, or
    the sandbox runs the bare base interpreter without the venv's packages."""
    venv = found.parent.parent
    return venv if runtime == "python" and (venv / "pyvenv.cfg").is_file() else None


def _hops(found: Path) -> list[Path]:
    """``found`` and each symlink it leads through, up to the real file. Python 3.10's venv,
    run from inside another venv, links to that venv's python: both venvs must be bound."""
    hops = [found]
    while hops[-1].is_symlink() and len(hops) < 40:
        nxt = Path(os.path.normpath(hops[-1].parent / os.readlink(hops[-1])))
        if nxt in hops:
            break
        hops.append(nxt)
    return hops


def toolchain_mounts(runtimes: Iterable[str], home: Path | None = None
                     ) -> tuple[list[Mount], list[str]]:
    """(read-only mounts, PATH entries) for toolchains outside the system directories."""
    home = Path(os.path.realpath(home or Path.home()))
    mounts: dict[Path, Mount] = {}
    path: list[str] = []
    for runtime in runtimes:
        for binary in RUNTIMES[runtime][2]:
            found = _locate(binary, runtime)
            if found is None:
                continue
            venv = _venv_of(found, runtime)
            real = Path(os.path.realpath(found))
            # the venv's bin goes first on PATH; its base interpreter is bound too, and so is
            # any other venv its python links through (bound only: not on PATH)
            tools = [((venv / "bin" / found.name) if venv else None, True), (real, True)]
            tools += [(hop, False) for hop in _hops(found)[1:] if _venv_of(hop, runtime)]
            for tool, on_path in tools:
                if tool is None or str(tool).startswith(SYSTEM_PREFIXES):
                    continue
                root = tool.parent.parent        # <prefix>/bin/<tool> -> <prefix>
                source = Path(os.path.realpath(root))
                if not (_safe_root(root, home) and _safe_root(source, home)):
                    continue
                mounts.setdefault(root, Mount(source, root, read_only=True))
                bindir = str(tool.parent)
                if on_path and bindir not in path:
                    path.append(bindir)
            if runtime == "rust" and (home / ".rustup").is_dir():
                mounts.setdefault(home / ".rustup",
                                  Mount(home / ".rustup", home / ".rustup", read_only=True))
    return list(mounts.values()), path
