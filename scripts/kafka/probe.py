#!/usr/bin/env python3
"""Tiny Kafka readiness probe used by scripts/services.sh (stdlib only, no kafka client libs).

Does two real protocol round trips against host:port:
  1. ApiVersions v0  -> the socket server is up and answering requests;
  2. Metadata v4     -> the broker has registered with the KRaft controller, lists itself and
                        reports a controller id, i.e. clients can actually use it.
Exit status 0 = ready, 1 = not ready (reason on stderr). Prints cluster id + broker on success
with -v.
"""
import socket
import struct
import sys


def _request(sock, api_key, api_version, corr_id, body):
    client_id = b"sj-services-probe"
    header = struct.pack(">hhih", api_key, api_version, corr_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _read(sock, 4))
    resp = _read(sock, size)
    (got_corr,) = struct.unpack(">i", resp[:4])
    if got_corr != corr_id:
        raise RuntimeError("correlation id mismatch")
    return resp[4:]


def _read(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed by broker")
        buf += chunk
    return buf


class _Cursor:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        vals = struct.unpack(fmt, self.data[self.pos:self.pos + size])
        self.pos += size
        return vals[0] if len(vals) == 1 else vals

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s


def probe(host, port, timeout):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        api = _Cursor(_request(sock, 18, 0, 1, b""))  # ApiVersions v0
        err = api.take(">h")
        if err != 0:
            raise RuntimeError(f"ApiVersions error_code={err}")
        # Metadata v4: topics = empty array (no topics), allow_auto_topic_creation = false
        md = _Cursor(_request(sock, 3, 4, 2, struct.pack(">ib", 0, 0)))
        md.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(md.take(">i")):
            node_id = md.take(">i")
            host_ = md.string()
            port_ = md.take(">i")
            md.string()  # rack
            brokers.append((node_id, host_, port_))
        cluster_id = md.string()
        controller_id = md.take(">i")
        if not any(p == port for (_, _, p) in brokers):
            raise RuntimeError(f"broker not registered yet (brokers={brokers})")
        if controller_id < 0:
            raise RuntimeError("no controller id yet")
        return cluster_id, brokers


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    host = args[0] if args else "127.0.0.1"
    port = int(args[1]) if len(args) > 1 else 9092
    timeout = float(args[2]) if len(args) > 2 else 3.0
    try:
        cluster_id, brokers = probe(host, port, timeout)
    except Exception as e:  # noqa: BLE001 - any failure just means "not ready"
        print(f"kafka probe {host}:{port}: {e}", file=sys.stderr)
        return 1
    if "-v" in sys.argv:
        print(f"cluster_id={cluster_id} brokers={brokers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
