#!/usr/bin/env python3
"""A real SMTP server for the e-mail tests: aiosmtpd (written by nobody here) on 127.0.0.1.

Usage: smtp_sink.py [PORT] [--refuse] [--starttls CERT KEY | --tls CERT KEY] [--auth USER PASS]
Prints {"port": N} once listening, then one JSON line per message received:
{"mail_from": ..., "rcpt_tos": [...], "data": "<the message as received>"}.
With --refuse every message is answered "550 5.7.1" (a permanent refusal). With --starttls
the server requires STARTTLS before MAIL; with --tls it speaks TLS from the first byte (SMTPS);
both with the given PEM certificate chain and key. With --auth (and --starttls) it requires
SMTP AUTH with that user name and password before MAIL.
Exits when its standard input closes, so it never outlives the test that started it.
"""
import asyncio
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult


class Handler:
    def __init__(self, refuse):
        self.refuse = refuse

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "550 5.7.1 refused by the test sink"
        content = envelope.content
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": content,
        }), flush=True)
        return "250 2.0.0 OK"


def option(name):
    """The two values after --name (certificate, key) as an SSL context, or None."""
    if name not in sys.argv:
        return None
    i = sys.argv.index(name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[i + 1], sys.argv[i + 2])
    return context


async def main():
    argv = sys.argv[1:]
    for name in ("--starttls", "--tls", "--auth"):
        if name in argv:
            i = argv.index(name)
            del argv[i:i + 3]
    args = [a for a in argv if not a.startswith("--")]
    port = int(args[0]) if args else 0
    handler = Handler("--refuse" in sys.argv)
    starttls = option("--starttls")
    implicit = option("--tls")
    loop = asyncio.get_running_loop()
    auth = None
    if "--auth" in sys.argv:
        i = sys.argv.index("--auth")
        user, password = sys.argv[i + 1].encode(), sys.argv[i + 2].encode()

        def auth(server, session, envelope, mechanism, data):
            ok = (data.login, data.password) == (user, password)
            # handled=False: aiosmtpd answers a refusal with 535 itself.
            return AuthResult(success=ok, handled=False)

    if starttls is not None and auth is not None:
        factory = lambda: SMTP(
            handler, tls_context=starttls, require_starttls=True, authenticator=auth,
            auth_required=True,
        )
    elif starttls is not None:
        factory = lambda: SMTP(handler, tls_context=starttls, require_starttls=True)
    else:
        factory = lambda: SMTP(handler)
    server = await loop.create_server(factory, "127.0.0.1", port, ssl=implicit)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
