"""The browser IDE: code-server behind the gateway, for `tether up --ide`.

`install` puts code-server (and the Node it needs) into tether's tools dir through the npm
registry; `server` runs it on 127.0.0.1 with its own folders and stops its whole process group;
`password` keeps the login password in tether.secrets and hands code-server only its argon2
hash. `api` is what the CLI and `tether.host` call. See docs/ide.md.
"""

from tether.ide.api import IdeSession, install_code_server, open_ide, password_info
from tether.ide.server import IdeOptions, IdeServer, component

__all__ = ["IdeOptions", "IdeServer", "IdeSession", "component", "install_code_server",
           "open_ide", "password_info"]
