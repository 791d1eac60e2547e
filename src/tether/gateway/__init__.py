"""The gateway: one ASGI app on one port for SSH-over-WebSocket, pairing, health and the IDE.

`create_app(settings)` builds the app (gateway/app.py); `serve_gateway` runs it on uvicorn.
The pure parts (tokens, codes, rate limits, request validation) are in gateway/core.py.
"""
