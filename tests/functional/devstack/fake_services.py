"""Stand-ins for the Cinder services the devstack stub starts
(tests/functional/devstack/devstack_stub.py), for
storage-engine-with-connectors, and for a storage node where a real one
cannot run (one serving AoE):

    fake_cinder_service.py PROGRAM [ARGUMENT ...]

Each says on stdout (its unit's journal) what it was run as, then runs
until SIGTERM. As ``cinder-volume --config-file CONF`` it first does what
matters to our backends when the real one starts: each backend of
CONF's enabled_backends that has an engine_api_url asks its node for its
pool with its token, and the answer's status is printed as
``backend NAME: STATUS``. As ``storage-engine-with-connectors PROGRAM
...`` it says so and then runs as PROGRAM, the way the real wrapper runs
the program's own entry point in its process. As ``storage-engine serve
--config-file CONF`` it answers 200 to every GET on CONF's [api] address
(/v1/ready included), and nothing else.
"""

import configparser
import http.server
import signal
import sys
import threading
import time
import urllib.error
import urllib.request


def check_backends(conf_path: str) -> None:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(conf_path)
    names = conf.get('DEFAULT', 'enabled_backends', fallback='')
    for name in filter(None, (n.strip() for n in names.split(','))):
        if not conf.has_option(name, 'engine_api_url'):
            continue
        url = '%s/v1/pools/%s' % (conf.get(name, 'engine_api_url'),
                                  conf.get(name, 'engine_pool',
                                           fallback='default'))
        request = urllib.request.Request(url, headers={
            'X-Auth-Token': conf.get(name, 'engine_api_token',
                                     fallback='')})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            status = type(exc).__name__
        print('backend %s: %s' % (name, status), flush=True)


def serve_api(conf_path: str) -> None:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(conf_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.end_headers()
            self.wfile.write(b'{"ready": true}')

    server = http.server.ThreadingHTTPServer(
        (conf.get('api', 'host'), conf.getint('api', 'port')), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main(argv):
    program, args = argv[0], argv[1:]
    if program == 'storage-engine-with-connectors':
        print('storage-engine-with-connectors: running %s with the '
              'connectors registered' % args[0], flush=True)
        program, args = args[0], args[1:]
    print('%s started: %s' % (program, ' '.join(args)), flush=True)
    if program == 'cinder-volume':
        check_backends(args[args.index('--config-file') + 1])
    elif program == 'storage-engine' and args[:1] == ['serve']:
        serve_api(args[args.index('--config-file') + 1])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(0.1)
    print('%s stopping' % program, flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
