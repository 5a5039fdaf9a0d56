"""The SMTP server report alerts are mailed to in the tests (aiosmtpd).

STARTTLS is required before MAIL and AUTH, and the login is checked, so a message arrives only
over an upgraded, authenticated session. Each message is appended to OUT as one JSON line
(tls, login, envelope, subject and decoded body). Prints its port, then serves until killed.

usage: smtp_server.py CERT KEY OUT USER PASSWORD
"""
import email
import email.policy
import json
import socket
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

cert, key, out, user, password = sys.argv[1:6]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        record = {
            "tls": session.ssl is not None,
            "login": session.auth_data,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
        }
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record["subject"] = str(message["subject"])
        record["body"] = message.get_content()
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login.decode() == user and auth_data.password.decode() == password
    return AuthResult(success=ok, auth_data=auth_data.login.decode() if ok else None)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()

controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_required=True,
)
controller.start()
print(port, flush=True)
while True:
    time.sleep(3600)
