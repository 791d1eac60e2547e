"""The laptop side of a workspace: profiles, pairing, the WebSocket transport, remote ops.

`connstring` and `profiles` are the contract with the host side (contracts.md, B).
"""
