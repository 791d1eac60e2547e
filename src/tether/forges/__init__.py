"""Forges: GitHub, GitLab and Bitbucket Cloud accounts, their SSH key APIs, and SSH set-up.

Each adapter is a thin httpx client over the forge's documented REST API (``github``,
``gitlab``, ``bitbucket``); ``base`` maps their HTTP answers to tether errors; ``accounts``
stores tokens through ``tether.secrets``; ``setup`` writes the ssh config block, pins the
forge's host key, uploads the key and checks ``ssh -T``. See docs/forges.md.
"""

from tether.forges.accounts import (add_remote_key, delete_remote_key, list_remote_keys, login,
                                    logout, whoami)
from tether.forges.base import Credentials, ForgeUser, Provider, RemoteKey, parse_provider
from tether.forges.setup import (SetupReport, SshTarget, TestResult, default_target, setup,
                                 test_connection)

__all__ = ["Credentials", "ForgeUser", "Provider", "RemoteKey", "SetupReport", "SshTarget",
           "TestResult", "add_remote_key", "default_target", "delete_remote_key",
           "list_remote_keys", "login", "logout", "parse_provider", "setup", "test_connection",
           "whoami"]

# Names for the top-level `tether` API, where bare `setup` / `login` would be ambiguous.
setup_forge = setup
login_forge = login
