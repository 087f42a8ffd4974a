"""A stand-in for `trioraft serve` in the cluster lifecycle tests (stdlib only).

usage: fake_node.py NODE_ID PORT MODE
  MODE ok        serve /status (node1 is the leader) until SIGTERM/SIGINT, then exit 0
  MODE die       serve for 0.5 s, then exit with status 3
  MODE clean     serve for 0.5 s, then stop as on SIGTERM: exit status 0
  MODE killed    serve for 0.5 s, then SIGKILL itself
  MODE stubborn  like ok, but ignore SIGTERM and SIGINT (only SIGKILL stops it)
"""

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

node_id, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/status":
            self.send_error(404)
            return
        body = json.dumps(
            {
                "id": node_id,
                "role": "leader" if node_id == "node1" else "follower",
                "term": 1,
                "leader": "node1",
                "commit_index": 0,
                "applied_index": 0,
                "last_log_index": 0,
                "snapshot_index": 0,
                "members": {},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def stop(signum: int, frame: object) -> None:
    sys.exit(0)


if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
if mode == "die":
    threading.Timer(0.5, lambda: __import__("os")._exit(3)).start()
if mode == "clean":
    threading.Timer(0.5, lambda: __import__("os").kill(__import__("os").getpid(),
                                                       signal.SIGTERM)).start()
if mode == "killed":
    threading.Timer(0.5, lambda: __import__("os").kill(__import__("os").getpid(),
                                                       signal.SIGKILL)).start()

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"fake {node_id} listening on {port}", flush=True)
server.serve_forever()
