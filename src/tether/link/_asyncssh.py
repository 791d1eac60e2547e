"""The one place tether imports asyncssh: ``from tether.link._asyncssh import asyncssh``.

asyncssh 2.24 names cryptography's DSA classes in annotations at import time, and
cryptography >= 44 deprecates DSA, so a bare ``import asyncssh`` prints five
``CryptographyDeprecationWarning: DSA is deprecated`` lines on the stderr of every command that
opens a link. The warning is about asyncssh's source, not anything tether does (tether only
makes and pins ed25519 keys), so exactly that category, raised from asyncssh's own modules, is
ignored here before the import; the same warning from any other module still shows.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                        module=r"asyncssh(\.|$)")

import asyncssh  # noqa: E402 - the filter has to be in place first

__all__ = ["asyncssh"]
