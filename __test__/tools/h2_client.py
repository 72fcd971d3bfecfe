"""An HTTP/2 client that misbehaves on purpose, for floodgate's attack tests (Python `h2`).

usage: h2_client.py MODE PORT [PATH] [STREAMS] [SECONDS]
  stall    open STREAMS GETs of PATH with a 1-byte stream window and never open it
  trickle  open STREAMS GETs of PATH, opening each window by 16 KiB every 100 ms
  silent   send the preface and SETTINGS, then nothing
  idle     one GET of PATH read to its end, then nothing
Prints one JSON line: per-stream outcome counts, GOAWAY and close times (seconds).
Bounded: gives up after SECONDS (default 20).
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    limit = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0

    sock = socket.create_connection(("127.0.0.1", port))
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


if __name__ == "__main__":
    main()
