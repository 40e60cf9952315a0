"""A real HTTP server, on a real socket, that answers from a script.

For testing what the API client does with answers the storage-node service
gives rarely or never on purpose (503s, a proxy's HTML error page, a reset
connection, a slow answer) and for counting the requests a retry policy
actually sends. It is not a stand-in for the service: everything that is
the service's behaviour is tested against the service itself, in
tests/functional.
"""

import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse

#: an answer that resets the connection instead of answering
RESET = 'reset'


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return '<Request %s %s?%s>' % (self.method, self.path, self.query)


class CannedServer:
    """Answers ``(method, path)`` with scripted answers, in order.

    An answer is ``(status, body)`` (a dict is sent as JSON, str or bytes
    as they are), ``(status, body, seconds)`` to answer after a delay, or
    :data:`RESET`. The last answer for a path repeats; a path with no
    script gets a 404 error body.
    """

    def __init__(self):
        self.script = {}
        self.requests = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _handle(self):
                parts = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                server._record(Request(self.command, parts.path,
                                       parts.query, dict(self.headers),
                                       body))
                answer = server._next(self.command, parts.path)
                if answer == RESET:
                    # SO_LINGER 0: close() sends a RST, not a FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack('ii', 1, 0))
                    self.close_connection = True
                    return
                status, payload = answer[0], answer[1]
                if len(answer) > 2:
                    time.sleep(answer[2])
                if isinstance(payload, (dict, list)):
                    data = json.dumps(payload).encode()
                    ctype = 'application/json'
                elif isinstance(payload, str):
                    data = payload.encode()
                    ctype = 'text/html'
                else:
                    data = payload or b''
                    ctype = 'application/octet-stream'
                self.send_response(status)
                if status != 204:
                    self.send_header('Content-Type', ctype)
                    self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                if status != 204:
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass    # the client gave up (a timeout test)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        args=(0.05,), daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def answer(self, method, path, *answers):
        """Script the answers to ``method path`` (path below /v1)."""
        with self._lock:
            self.script[(method, '/v1' + path)] = list(answers)

    def _next(self, method, path):
        with self._lock:
            answers = self.script.get((method, path))
            if not answers:
                return (404, {'error': {'code': 'not_found', 'details': {},
                                        'message': 'no script for %s %s'
                                                   % (method, path)}})
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def _record(self, request):
        with self._lock:
            self.requests.append(request)

    def sent(self, method=None, path=None):
        """The requests received, optionally only ``method path``."""
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and
                    (path is None or r.path == '/v1' + path)]


def error(code, message='', **details):
    """An API error body."""
    return {'error': {'code': code, 'message': message or code,
                      'details': details}}


def closed_port():
    """A port on 127.0.0.1 where nothing listens (connections refused)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
