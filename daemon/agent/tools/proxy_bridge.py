"""Inside a sandbox: offer the egress proxy's unix socket on 127.0.0.1, then run a command.

Not imported by the daemon: ``sandbox.py`` runs this file's text as ``python3 -I -S -c <text>
SOCKET PORT COMMAND...`` inside bubblewrap, where the network namespace is empty but for
loopback and the proxy's socket is bound in. It listens on ``127.0.0.1:PORT`` before it starts
the command, so ``HTTP_PROXY`` works from the command's first instruction; each connection gets
a unix connection of its own and two threads copying bytes. It exits with the command's status
(128 + the signal that killed it), and dies with it: the bridge is the command's parent, in its
process group and pid namespace. The standard library of the host's ``python3`` only (any 3.8+).
"""

import socket
import subprocess
import sys
import threading


def _copy(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(listener, path):
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            continue
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_copy, args=(source, sink), daemon=True).start()


def main():
    path, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, path), daemon=True).start()
    try:
        status = subprocess.call(argv)
    except OSError as exc:
        sys.stderr.write(f"agentd: cannot run {argv[0]}: {exc}\n")
        status = 127
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
