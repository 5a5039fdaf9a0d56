"""A plain HTTPS file server, no WebDAV: GET and HEAD only (tests/cli/cloud.rs).

Usage: https_server.py FOLDER CERT KEY
Prints `https://127.0.0.1:PORT` once it listens on a free loopback port.
"""
import functools
import http.server
import ssl
import sys

folder, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"listening on https://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
