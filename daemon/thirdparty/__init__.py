"""Every use of another library's private or internal API, one small module per library.

The rest of agentd imports those names only from here (``tests/test_thirdparty_boundary.py``
fails on a private module or name of another library anywhere else in ``daemon/`` or
``control/``).
Each module's docstring says which names it touches, of which version, and why no public API
does the job; that version is pinned exactly (``==``) in ``pyproject.toml``, and the contract
tests in ``tests/test_thirdparty_contracts.py`` are the gate for upgrading it (README,
"Upgrading dependencies").

- ``hypercorn_trio``: Hypercorn's per-connection Trio server, lifespan and worker context
  (``daemon/web/listener.py`` serves each connection itself).
- ``anthropic_sdk``: the SDK's platform lookup, done once instead of in a worker thread; its
  import made lean (a type's module imported when the type is first used).
- ``prometheus``: the scrape format chosen from an ``Accept`` header.
- ``quart_body``: whether a request's body arrived whole.
"""
