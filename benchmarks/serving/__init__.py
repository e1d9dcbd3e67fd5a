"""``st-leap serve`` benchmarks: where a short query's time goes and the lean path (``lean``), latency and throughput
under concurrent clients (``load``), memory under steady load (``soak``), bad request bodies (``fuzz``) and a
``kill -9`` and restart (``restart``). Every server runs on 127.0.0.1 only, one at a time, and is stopped at the end.
Shared code (the server subprocess, clients, models, queries) is in :mod:`benchmarks.serving._server`."""
